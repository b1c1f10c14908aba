//! Parsing and validation of everything a user or an administrator writes:
//! the user options (`--checkpoint`, `--checkpoint-dir=DIR`,
//! `--checkpoint-interval=SECONDS`), the plugin arguments of `plugstack.conf`,
//! and the expansion of a directory pattern for one job.
//!
//! Pure functions only (no SPANK, no file system): every rule has a unit test
//! below, and the option callbacks run exactly this code in srun, sbatch and
//! salloc, so a bad value is refused before anything is queued.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

/// Name of the bare opt-in option (no argument).
pub const OPT_ENABLE: &str = "checkpoint";
/// Name of the directory option.
pub const OPT_DIR: &str = "checkpoint-dir";
/// Name of the interval option.
pub const OPT_INTERVAL: &str = "checkpoint-interval";

/// Accepted forms of an interval, quoted in error messages.
pub const INTERVAL_FORMS: &str =
    "SECONDS, or a number with a suffix s, m or h (30s, 5m, 2h); 0 means no periodic checkpoint";
/// Accepted `%` escapes of a directory pattern, quoted in error messages.
pub const DIR_ESCAPES: &str = "%j (job id), %u (user), %x (job name), %A (array job id), %a (array task id), %% (a literal %)";

/// Default path of the preload library.
pub const DEFAULT_LIBCKPT: &str = "/usr/local/lib/ckpt/libckpt.so";
/// Default path of the `ckpt` binary.
pub const DEFAULT_CKPT_BIN: &str = "/usr/local/bin/ckpt";
/// Default signal that asks a task for a checkpoint now.
pub const DEFAULT_SIGNAL: &str = "USR1";

/// Longest interval accepted: one year. Anything longer is almost certainly a
/// typo (an interval in milliseconds, say).
pub const MAX_INTERVAL_SECS: u64 = 365 * 24 * 3600;

/// Signals a site may choose as "checkpoint now": those `ckpt slurm-task`
/// catches (the signals `ckpt` forwards to a job, `ns::FORWARDED`), except
/// `ALRM`, which drives its periodic checkpoints, and `CONT`. `KILL` and
/// `STOP` cannot be caught; `SEGV`, `BUS`, `CHLD`, … mean something else.
const SIGNALS: &[&str] = &["USR1", "USR2", "HUP", "INT", "QUIT", "TERM", "WINCH"];

/// A value a user or an administrator wrote, refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptionError {
    /// `--checkpoint-interval` (or an interval argument) that does not parse.
    BadInterval {
        /// How the value was given (`--checkpoint-interval` or `default_interval`).
        what: String,
        /// The value as written.
        value: String,
        /// Why it was refused.
        why: &'static str,
    },
    /// An interval below the site's `min_interval`.
    IntervalTooShort {
        /// How the value was given.
        what: String,
        /// The interval, in seconds.
        secs: u64,
        /// The site's minimum, in seconds.
        min: u64,
    },
    /// A directory pattern that cannot be used.
    BadDir {
        /// How the value was given (`--checkpoint-dir` or `default_dir`).
        what: String,
        /// The value as written.
        value: String,
        /// Why it was refused.
        why: String,
    },
    /// The job asked for checkpointing but neither the user nor the site
    /// named a directory.
    NoDir,
    /// A `plugstack.conf` argument that is not `key=value`.
    MalformedArg(String),
    /// A `plugstack.conf` argument with an unknown key.
    UnknownArg(String),
    /// A `plugstack.conf` key given twice.
    DuplicateArg(String),
    /// A `signal=` value that is not a usable signal.
    BadSignal(String),
    /// A `libckpt=`/`ckpt=` value that is not a usable absolute path, or a
    /// `keep_images=` value that is not yes or no.
    BadPath {
        /// The key (`libckpt` or `ckpt`).
        key: &'static str,
        /// The value as written.
        value: String,
        /// Why it was refused.
        why: &'static str,
    },
    /// A `%` escape the expansion needs a value for is unknown for this job.
    MissingJobValue {
        /// The escape (`%x`, …).
        escape: char,
        /// What is missing.
        what: &'static str,
    },
    /// A relative directory and no submit directory to resolve it against.
    NoSubmitDir(String),
    /// A value that must be text (a number, a name, a program's path) is
    /// not valid UTF-8: refused rather than silently changed.
    NotText {
        /// How the value was given.
        what: String,
        /// The value, invalid bytes shown as U+FFFD.
        value: String,
    },
}

const ARG_KEYS: &str = "default_dir=PATTERN, default_interval=SECONDS, min_interval=SECONDS, signal=NAME, libckpt=PATH, ckpt=PATH, keep_images=yes|no, incremental=yes|no, compress=zstd|no, max_file_copy=SIZE";

impl fmt::Display for OptionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadInterval { what, value, why } => {
                write!(f, "{what}={value}: {why}; use {INTERVAL_FORMS}")
            }
            Self::IntervalTooShort { what, secs, min } => write!(
                f,
                "{what}={secs}: must be 0 (no periodic checkpoint) or at least {min} seconds \
                 (min_interval of this site)"
            ),
            Self::BadDir { what, value, why } => write!(f, "{what}={value}: {why}"),
            Self::NoDir => write!(
                f,
                "no checkpoint directory: add --{OPT_DIR}=DIR (this site sets no default_dir)"
            ),
            Self::MalformedArg(arg) => write!(
                f,
                "plugstack.conf argument '{arg}' is not key=value; accepted: {ARG_KEYS}"
            ),
            Self::UnknownArg(arg) => write!(
                f,
                "unknown plugstack.conf argument '{arg}'; accepted: {ARG_KEYS}"
            ),
            Self::DuplicateArg(key) => {
                write!(f, "plugstack.conf argument {key}= is given twice: keep one")
            }
            Self::BadSignal(value) => write!(
                f,
                "plugstack.conf argument signal={value}: not a signal that can mean \
                 'checkpoint now'; use one of {}",
                SIGNALS.join(", ")
            ),
            Self::BadPath { key, value, why } => {
                write!(f, "plugstack.conf argument {key}={value}: {why}")
            }
            Self::MissingJobValue { escape, what } => write!(
                f,
                "cannot expand %{escape} in the checkpoint directory: {what}"
            ),
            Self::NoSubmitDir(dir) => write!(
                f,
                "checkpoint directory {dir} is relative and the job has no SLURM_SUBMIT_DIR: \
                 give an absolute --{OPT_DIR}"
            ),
            Self::NotText { what, value } => write!(
                f,
                "{what}={value}: not valid UTF-8 (only a directory may hold other bytes)"
            ),
        }
    }
}

impl std::error::Error for OptionError {}

/// Parses an interval: `N`, `Ns`, `Nm` or `Nh` with a decimal `N`; `0` means
/// no periodic checkpoint. `what` names the option in the error message.
pub fn parse_interval(what: &str, value: &str) -> Result<u64, OptionError> {
    let bad = |why| OptionError::BadInterval {
        what: what.to_owned(),
        value: value.to_owned(),
        why,
    };
    if value.is_empty() {
        return Err(bad("empty value"));
    }
    if value.starts_with('-') {
        return Err(bad("negative"));
    }
    let (digits, unit) = match value.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        None => (value, 1),
        Some((i, _)) => {
            let unit = match &value[i..] {
                "s" => 1,
                "m" => 60,
                "h" => 3600,
                _ if i == 0 => return Err(bad("not a number")),
                _ => return Err(bad("unknown suffix")),
            };
            (&value[..i], unit)
        }
    };
    if digits.is_empty() {
        return Err(bad("not a number"));
    }
    let n: u64 = digits.parse().map_err(|_| bad("too large"))?;
    let secs = n.checked_mul(unit).ok_or_else(|| bad("too large"))?;
    if secs > MAX_INTERVAL_SECS {
        return Err(bad("longer than a year"));
    }
    Ok(secs)
}

/// A value that must be text, refused (not mangled) when it is not UTF-8.
pub fn text<'a>(what: &str, value: &'a OsStr) -> Result<&'a str, OptionError> {
    value.to_str().ok_or_else(|| OptionError::NotText {
        what: what.to_owned(),
        value: value.to_string_lossy().into_owned(),
    })
}

/// Checks a directory pattern without expanding it: not empty, no NUL, and
/// only the known `%` escapes. The pattern is bytes (a directory need not be
/// UTF-8); the escapes are ASCII, so they are checked on its text form.
pub fn validate_dir_pattern(what: &str, value: impl AsRef<OsStr>) -> Result<(), OptionError> {
    let value = value.as_ref().to_string_lossy();
    let value = &*value;
    let bad = |why: String| OptionError::BadDir {
        what: what.to_owned(),
        value: value.to_owned(),
        why,
    };
    if value.is_empty() {
        return Err(bad("empty directory".to_owned()));
    }
    if value.contains('\0') {
        return Err(bad("contains a NUL byte".to_owned()));
    }
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '%' {
            match chars.next() {
                Some('j' | 'u' | 'x' | 'A' | 'a' | '%') => {}
                Some(other) => {
                    return Err(bad(format!(
                        "unknown escape %{other}; accepted: {DIR_ESCAPES}"
                    )));
                }
                None => {
                    return Err(bad(format!("a lone % at the end; accepted: {DIR_ESCAPES}")));
                }
            }
        }
    }
    Ok(())
}

/// What a directory pattern is expanded with, for one job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobValues {
    /// Slurm job id (`%j`).
    pub job_id: u32,
    /// User name of the job's owner (`%u`), byte for byte; `None` when the
    /// uid has no name on this node.
    pub user: Option<OsString>,
    /// Job name (`%x`), from `SLURM_JOB_NAME`, byte for byte.
    pub job_name: Option<OsString>,
    /// Array job id and task id (`%A`, `%a`) when the job is part of an array.
    pub array: Option<(u32, u32)>,
    /// The directory the job was submitted from (`SLURM_SUBMIT_DIR`).
    pub submit_dir: Option<PathBuf>,
}

/// An expanded pattern, with which bytes came from a substituted value.
struct Expansion {
    bytes: Vec<u8>,
    from_value: Vec<bool>,
}

impl Expansion {
    fn literal(&mut self, b: u8) {
        self.bytes.push(b);
        self.from_value.push(false);
    }

    fn value(&mut self, v: &[u8]) {
        self.bytes.extend_from_slice(v);
        self.from_value.extend(v.iter().map(|_| true));
    }

    /// A component that is exactly `.` or `..` and holds a byte of a
    /// substituted value (a job named `..`, or `.%x` with a job named `.`)
    /// gets `_` for each dot: a value must not move the directory up or
    /// merge levels. A `..` the user wrote in the pattern is kept.
    fn neutralize_dot_components(&mut self) {
        let mut start = 0;
        for end in 0..=self.bytes.len() {
            if end < self.bytes.len() && self.bytes[end] != b'/' {
                continue;
            }
            let component = &self.bytes[start..end];
            if (component == b"." || component == b"..")
                && self.from_value[start..end].iter().any(|&v| v)
            {
                self.bytes[start..end].fill(b'_');
            }
            start = end + 1;
        }
    }
}

/// Expands `%j %u %x %A %a %%` and makes the result absolute against the
/// submit directory. For a job that is not part of an array, `%A` is the job
/// id and `%a` is `0`. The pattern must have passed [`validate_dir_pattern`].
/// Works on bytes: a directory or job name that is not UTF-8 is kept as it
/// is. A component that a value turns into `.` or `..` becomes `_` or `__`.
pub fn expand_dir(pattern: impl AsRef<OsStr>, job: &JobValues) -> Result<PathBuf, OptionError> {
    let pattern = pattern.as_ref();
    let shown = || pattern.to_string_lossy().into_owned();
    let mut out = Expansion {
        bytes: Vec::with_capacity(pattern.len() + 16),
        from_value: Vec::with_capacity(pattern.len() + 16),
    };
    let mut bytes = pattern.as_bytes().iter().copied();
    while let Some(b) = bytes.next() {
        if b != b'%' {
            out.literal(b);
            continue;
        }
        match bytes.next() {
            Some(b'j') => out.value(job.job_id.to_string().as_bytes()),
            Some(b'u') => match &job.user {
                Some(user) => out.value(user.as_bytes()),
                None => {
                    return Err(OptionError::MissingJobValue {
                        escape: 'u',
                        what: "the job's uid has no user name on this node",
                    });
                }
            },
            Some(b'x') => match &job.job_name {
                // A job name may contain '/', which would add levels.
                Some(name) => {
                    let name: Vec<u8> = name
                        .as_bytes()
                        .iter()
                        .map(|&c| if c == b'/' { b'_' } else { c })
                        .collect();
                    out.value(&name);
                }
                None => {
                    return Err(OptionError::MissingJobValue {
                        escape: 'x',
                        what: "the job has no SLURM_JOB_NAME",
                    });
                }
            },
            Some(b'A') => out.value(
                job.array
                    .map_or(job.job_id, |(a, _)| a)
                    .to_string()
                    .as_bytes(),
            ),
            Some(b'a') => out.value(job.array.map_or(0, |(_, t)| t).to_string().as_bytes()),
            Some(b'%') => out.literal(b'%'),
            Some(other) => {
                return Err(OptionError::BadDir {
                    what: format!("--{OPT_DIR}"),
                    value: shown(),
                    why: format!(
                        "unknown escape %{}; accepted: {DIR_ESCAPES}",
                        char::from(other)
                    ),
                });
            }
            None => {
                return Err(OptionError::BadDir {
                    what: format!("--{OPT_DIR}"),
                    value: shown(),
                    why: format!("a lone % at the end; accepted: {DIR_ESCAPES}"),
                });
            }
        }
    }
    out.neutralize_dot_components();
    let path = PathBuf::from(OsString::from_vec(out.bytes));
    let absolute = if path.is_absolute() {
        path
    } else {
        match &job.submit_dir {
            Some(base) if base.is_absolute() => base.join(path),
            _ => {
                return Err(OptionError::NoSubmitDir(
                    path.to_string_lossy().into_owned(),
                ));
            }
        }
    };
    Ok(normalize(&absolute))
}

/// Removes `.` components and repeated slashes; keeps `..` (resolving it
/// lexically would be wrong across symlinks).
fn normalize(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

/// The site's settings, from the plugin arguments in `plugstack.conf`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginConfig {
    /// `default_dir=PATTERN`: directory used when the user gives none
    /// (bytes: a directory need not be UTF-8).
    pub default_dir: Option<OsString>,
    /// `default_interval=`: interval used when the user gives none.
    pub default_interval: u64,
    /// `min_interval=`: smallest non-zero interval a user may ask for.
    pub min_interval: u64,
    /// `signal=`: the signal that means "checkpoint now", without `SIG`.
    pub signal: String,
    /// `libckpt=`: absolute path of the preload library.
    pub libckpt: String,
    /// `ckpt=`: absolute path of the `ckpt` binary.
    pub ckpt_bin: String,
    /// `keep_images=yes`: keep a job's checkpoints after it finished
    /// successfully (default: removed).
    pub keep_images: bool,
    /// `incremental=no`: every checkpoint is full (default: periodic
    /// checkpoints track written pages and write only what changed).
    pub incremental: bool,
    /// `compress=zstd`: snapshot children compress the memory they write
    /// after the release (default `no`; `ckpt slurm-task --compress`).
    pub compress: bool,
    /// `max_file_copy=SIZE`: the largest file a job writes that a
    /// checkpoint keeps (passed to `ckpt slurm-task --max-file-copy`).
    pub max_file_copy: Option<String>,
}

impl Default for PluginConfig {
    fn default() -> Self {
        Self {
            default_dir: None,
            default_interval: 0,
            min_interval: 0,
            signal: DEFAULT_SIGNAL.to_owned(),
            libckpt: DEFAULT_LIBCKPT.to_owned(),
            ckpt_bin: DEFAULT_CKPT_BIN.to_owned(),
            keep_images: false,
            incremental: true,
            compress: false,
            max_file_copy: None,
        }
    }
}

/// A size as `ckpt --max-file-copy` takes it: bytes, a number with `K`,
/// `M`, `G` or `T`, or `unlimited`.
fn parse_size(key: &'static str, value: &str) -> Result<String, OptionError> {
    let digits = value.trim_end_matches(['K', 'M', 'G', 'T', 'k', 'm', 'g', 't']);
    let suffix = value.len() - digits.len();
    let ok = value == "unlimited"
        || (suffix <= 1
            && !digits.is_empty()
            && digits.bytes().all(|c| c.is_ascii_digit())
            && digits
                .parse::<u64>()
                .is_ok_and(|n| n.checked_mul(1 << 40).is_some()));
    if ok {
        Ok(value.to_owned())
    } else {
        Err(OptionError::BadPath {
            key,
            value: value.to_owned(),
            why: "must be a size: bytes, or a number with K, M, G or T (512M, 4G), or unlimited",
        })
    }
}

/// `yes`/`no` (also `true`/`false`, `1`/`0`) of a plugin argument.
fn parse_compress(value: &str) -> Result<bool, OptionError> {
    match value {
        "zstd" | "yes" => Ok(true),
        "no" => Ok(false),
        _ => Err(OptionError::BadPath {
            key: "compress",
            value: value.to_owned(),
            why: "must be zstd or no",
        }),
    }
}

fn parse_yes_no(key: &'static str, value: &str) -> Result<bool, OptionError> {
    match value {
        "yes" | "true" | "1" => Ok(true),
        "no" | "false" | "0" => Ok(false),
        _ => Err(OptionError::BadPath {
            key,
            value: value.to_owned(),
            why: "must be yes or no",
        }),
    }
}

impl PluginConfig {
    /// Parses the plugin arguments of the `plugstack.conf` line. Any unknown,
    /// repeated or malformed argument is an error: a typo must not silently
    /// change what users get. The arguments are bytes: `default_dir=` is
    /// kept as it is; every other value must be UTF-8 (refused otherwise,
    /// never changed).
    pub fn parse<I, S>(args: I) -> Result<Self, OptionError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut config = Self::default();
        let mut seen: Vec<String> = Vec::new();
        let mut default_interval_raw = false;
        for arg in args {
            let arg = arg.as_ref();
            let bytes = arg.as_bytes();
            let Some(eq) = bytes.iter().position(|&b| b == b'=') else {
                return Err(OptionError::MalformedArg(
                    arg.to_string_lossy().into_owned(),
                ));
            };
            let Ok(key) = std::str::from_utf8(&bytes[..eq]) else {
                return Err(OptionError::UnknownArg(arg.to_string_lossy().into_owned()));
            };
            let raw = OsStr::from_bytes(&bytes[eq + 1..]);
            if seen.iter().any(|k| k == key) {
                return Err(OptionError::DuplicateArg(key.to_owned()));
            }
            if key == "default_dir" {
                validate_dir_pattern("default_dir", raw)?;
                config.default_dir = Some(raw.to_owned());
                seen.push(key.to_owned());
                continue;
            }
            let known = [
                "default_interval",
                "min_interval",
                "signal",
                "libckpt",
                "ckpt",
                "keep_images",
                "incremental",
                "compress",
                "max_file_copy",
            ];
            if !known.contains(&key) {
                return Err(OptionError::UnknownArg(arg.to_string_lossy().into_owned()));
            }
            let value = text(key, raw)?;
            match key {
                "default_interval" => {
                    config.default_interval = parse_interval("default_interval", value)?;
                    default_interval_raw = true;
                }
                "min_interval" => config.min_interval = parse_interval("min_interval", value)?,
                "signal" => config.signal = parse_signal(value)?,
                "libckpt" => config.libckpt = parse_path("libckpt", value, true)?,
                "ckpt" => config.ckpt_bin = parse_path("ckpt", value, false)?,
                "keep_images" => config.keep_images = parse_yes_no("keep_images", value)?,
                "incremental" => config.incremental = parse_yes_no("incremental", value)?,
                "compress" => config.compress = parse_compress(value)?,
                "max_file_copy" => config.max_file_copy = Some(parse_size("max_file_copy", value)?),
                _ => return Err(OptionError::UnknownArg(arg.to_string_lossy().into_owned())),
            }
            seen.push(key.to_owned());
        }
        if default_interval_raw {
            config.check_interval("default_interval", config.default_interval)?;
        }
        Ok(config)
    }

    /// Refuses a non-zero interval below `min_interval`.
    pub fn check_interval(&self, what: &str, secs: u64) -> Result<u64, OptionError> {
        if secs != 0 && secs < self.min_interval {
            return Err(OptionError::IntervalTooShort {
                what: what.to_owned(),
                secs,
                min: self.min_interval,
            });
        }
        Ok(secs)
    }

    /// Validates a `--checkpoint-interval` value against the site's rules.
    pub fn user_interval(&self, value: &str) -> Result<u64, OptionError> {
        let what = format!("--{OPT_INTERVAL}");
        let secs = parse_interval(&what, value)?;
        self.check_interval(&what, secs)
    }

    /// What a task gets once the user's options are known: `None` when the
    /// job did not ask for checkpointing.
    pub fn resolve(&self, user: &UserOptions) -> Result<Option<Resolved>, OptionError> {
        if !user.any() {
            return Ok(None);
        }
        let pattern = match (&user.dir, &self.default_dir) {
            (Some(dir), _) => {
                validate_dir_pattern(&format!("--{OPT_DIR}"), dir)?;
                dir.clone()
            }
            (None, Some(dir)) => dir.clone(),
            (None, None) => return Err(OptionError::NoDir),
        };
        let interval = match &user.interval {
            Some(value) => self.user_interval(value)?,
            None => self.default_interval,
        };
        Ok(Some(Resolved { pattern, interval }))
    }
}

/// The options a user gave (values as written).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserOptions {
    /// `--checkpoint` was given.
    pub enable: bool,
    /// `--checkpoint-dir=` value, byte for byte.
    pub dir: Option<OsString>,
    /// `--checkpoint-interval=` value.
    pub interval: Option<String>,
}

impl UserOptions {
    /// True when the job asked for checkpointing in any way.
    pub fn any(&self) -> bool {
        self.enable || self.dir.is_some() || self.interval.is_some()
    }
}

/// The checkpoint settings of a job, before per-job expansion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Directory pattern (from the user or `default_dir`), byte for byte.
    pub pattern: OsString,
    /// Periodic interval in seconds, 0 = none.
    pub interval: u64,
}

/// Whether an sbatch submission asks for a warning signal: `--signal` on
/// the command line (`args`, without argv\[0\]), `SBATCH_SIGNAL` in the
/// environment, or `#SBATCH --signal` in the script (`script`, when known).
pub fn sbatch_has_signal(args: &[String], env_signal: Option<&str>, script: Option<&str>) -> bool {
    let is_signal = |a: &str| a == "--signal" || a.starts_with("--signal=");
    if env_signal.is_some_and(|v| !v.trim().is_empty()) {
        return true;
    }
    // Options end at the script name; its own arguments do not count, but
    // telling them apart needs sbatch's option table: any --signal counts.
    if args.iter().any(|a| is_signal(a)) {
        return true;
    }
    let Some(script) = script else {
        return false;
    };
    for line in script.lines().skip(1) {
        let line = line.trim_start();
        let Some(rest) = line.strip_prefix("#SBATCH") else {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            // sbatch stops reading #SBATCH lines at the first command.
            break;
        };
        if rest.split_whitespace().any(is_signal) {
            return true;
        }
    }
    false
}

fn parse_signal(value: &str) -> Result<String, OptionError> {
    let upper = value.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if SIGNALS.contains(&name) {
        Ok(name.to_owned())
    } else {
        Err(OptionError::BadSignal(value.to_owned()))
    }
}

fn parse_path(key: &'static str, value: &str, preload: bool) -> Result<String, OptionError> {
    let bad = |why| OptionError::BadPath {
        key,
        value: value.to_owned(),
        why,
    };
    if !value.starts_with('/') {
        return Err(bad("must be an absolute path"));
    }
    if value.contains('\0') {
        return Err(bad("contains a NUL byte"));
    }
    // ld.so splits LD_PRELOAD at ':' and white space.
    if preload && value.contains(|c: char| c == ':' || c.is_whitespace()) {
        return Err(bad(
            "must not contain ':' or white space (LD_PRELOAD separators)",
        ));
    }
    Ok(value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interval(v: &str) -> Result<u64, OptionError> {
        parse_interval("--checkpoint-interval", v)
    }

    #[test]
    fn intervals_in_every_accepted_form() {
        assert_eq!(interval("0"), Ok(0));
        assert_eq!(interval("45"), Ok(45));
        assert_eq!(interval("30s"), Ok(30));
        assert_eq!(interval("5m"), Ok(300));
        assert_eq!(interval("2h"), Ok(7200));
        assert_eq!(interval("0h"), Ok(0));
    }

    #[test]
    fn bad_intervals_are_refused_with_the_option_and_the_forms() {
        for (value, why) in [
            ("", "empty value"),
            ("-5", "negative"),
            ("abc", "not a number"),
            ("s", "not a number"),
            ("5d", "unknown suffix"),
            ("5ms", "unknown suffix"),
            ("1.5h", "unknown suffix"),
            (" 5", "not a number"),
            ("99999999999999999999", "too large"),
            ("9999999999999999h", "too large"),
            ("8761h", "longer than a year"),
        ] {
            let err = interval(value).unwrap_err();
            let text = err.to_string();
            assert!(
                text.starts_with(&format!("--checkpoint-interval={value}: {why};")),
                "{text}"
            );
            assert!(text.contains("30s, 5m, 2h"), "{text}");
        }
    }

    #[test]
    fn dir_patterns() {
        for ok in ["/a/%j", "ck/%u/%x-%A_%a", "100%%", "/plain"] {
            validate_dir_pattern("--checkpoint-dir", ok).unwrap();
        }
        for (bad, why) in [
            ("", "empty directory"),
            ("/a/%q", "unknown escape %q"),
            ("/a/%", "a lone %"),
        ] {
            let text = validate_dir_pattern("--checkpoint-dir", bad)
                .unwrap_err()
                .to_string();
            assert!(
                text.starts_with(&format!("--checkpoint-dir={bad}: {why}")),
                "{text}"
            );
        }
    }

    fn job() -> JobValues {
        JobValues {
            job_id: 42,
            user: Some("alice".into()),
            job_name: Some("my/job".into()),
            array: None,
            submit_dir: Some("/home/alice/run".into()),
        }
    }

    #[test]
    fn expansion_of_every_escape() {
        let mut j = job();
        assert_eq!(
            expand_dir("/s/%u/%j/%x/%A_%a/100%%", &j).unwrap(),
            PathBuf::from("/s/alice/42/my_job/42_0/100%")
        );
        j.array = Some((40, 3));
        assert_eq!(
            expand_dir("/s/%A_%a-%j", &j).unwrap(),
            PathBuf::from("/s/40_3-42")
        );
    }

    #[test]
    fn relative_dirs_are_taken_against_the_submit_dir() {
        let mut j = job();
        assert_eq!(
            expand_dir("./ckpt/./%j", &j).unwrap(),
            PathBuf::from("/home/alice/run/ckpt/42")
        );
        j.submit_dir = None;
        assert_eq!(
            expand_dir("ckpt", &j).unwrap_err(),
            OptionError::NoSubmitDir("ckpt".into())
        );
        assert_eq!(expand_dir("/abs", &j).unwrap(), PathBuf::from("/abs"));
    }

    fn latin1(b: &[u8]) -> OsString {
        OsString::from_vec(b.to_vec())
    }

    #[test]
    fn a_job_name_cannot_leave_or_merge_the_job_directory() {
        let mut j = job();
        for (name, pattern, want) in [
            ("..", "/s/%x/ck", "/s/__/ck"),
            (".", "/s/%x/ck", "/s/_/ck"),
            ("..", "/s/%x", "/s/__"),
            (".", "/s/.%x", "/s/__"),
            (".", "/s/%x%x/ck", "/s/__/ck"),
            ("../..", "/s/%x", "/s/.._.."),
            ("..", "rel/%x", "/home/alice/run/rel/__"),
            // Names that merely contain dots are kept.
            ("...", "/s/%x", "/s/..."),
            ("..x", "/s/%x", "/s/..x"),
            (".hidden", "/s/%x", "/s/.hidden"),
            ("x", "/s/..%x", "/s/..x"),
            // The user's own `..` and `.` in the pattern are theirs.
            ("job", "/s/../%x", "/s/../job"),
            ("job", "/s/./%x", "/s/job"),
        ] {
            j.job_name = Some(name.into());
            assert_eq!(
                expand_dir(pattern, &j).unwrap(),
                PathBuf::from(want),
                "{name:?} in {pattern}"
            );
        }
        // A user name cannot either.
        j.user = Some("..".into());
        assert_eq!(expand_dir("/s/%u", &j).unwrap(), PathBuf::from("/s/__"));
    }

    #[test]
    fn non_utf8_dirs_and_names_keep_their_bytes() {
        let mut j = job();
        j.job_name = Some(latin1(b"\xe9t\xe9/a"));
        j.submit_dir = Some(PathBuf::from(latin1(b"/home/caf\xe9")));
        let pattern = latin1(b"ck/r\xe9p/%x");
        validate_dir_pattern("--checkpoint-dir", &pattern).unwrap();
        assert_eq!(
            expand_dir(&pattern, &j).unwrap(),
            PathBuf::from(latin1(b"/home/caf\xe9/ck/r\xe9p/\xe9t\xe9_a"))
        );
        let c = PluginConfig::parse([latin1(b"default_dir=/s/\xe9/%j")]).unwrap();
        assert_eq!(c.default_dir, Some(latin1(b"/s/\xe9/%j")));
        let user = UserOptions {
            dir: Some(latin1(b"/u/\xff")),
            ..UserOptions::default()
        };
        assert_eq!(
            c.resolve(&user).unwrap().map(|r| r.pattern),
            Some(latin1(b"/u/\xff"))
        );
        // Values that are used as text are refused, never changed.
        for arg in [
            latin1(b"libckpt=/l/\xe9.so"),
            latin1(b"ckpt=/b/\xe9"),
            latin1(b"default_interval=5\xe9"),
        ] {
            let e = PluginConfig::parse([arg]).unwrap_err();
            assert!(matches!(e, OptionError::NotText { .. }), "{e}");
            assert!(e.to_string().contains("not valid UTF-8"), "{e}");
        }
        // A bad escape after a non-UTF-8 byte is still found.
        assert!(validate_dir_pattern("--checkpoint-dir", latin1(b"/\xe9%q")).is_err());
    }

    #[test]
    fn missing_job_name() {
        let mut j = job();
        j.job_name = None;
        assert!(matches!(
            expand_dir("/x/%x", &j),
            Err(OptionError::MissingJobValue { escape: 'x', .. })
        ));
    }

    #[test]
    fn plugin_args() {
        let c = PluginConfig::parse([
            "default_dir=/scratch/%u/%j",
            "default_interval=1h",
            "min_interval=5m",
            "signal=SIGusr2",
            "libckpt=/opt/ckpt/lib/libckpt.so",
            "ckpt=/opt/ckpt/bin/ckpt",
            "keep_images=yes",
            "incremental=no",
        ])
        .unwrap();
        assert!(c.keep_images);
        assert!(!c.incremental);
        assert!(PluginConfig::default().incremental);
        assert!(!c.compress);
        assert!(PluginConfig::parse(["compress=zstd"]).unwrap().compress);
        assert!(!PluginConfig::parse(["compress=no"]).unwrap().compress);
        let m = PluginConfig::parse(["max_file_copy=8G"]).unwrap();
        assert_eq!(m.max_file_copy.as_deref(), Some("8G"));
        let m = PluginConfig::parse(["max_file_copy=unlimited"]).unwrap();
        assert_eq!(m.max_file_copy.as_deref(), Some("unlimited"));
        assert_eq!(c.default_dir.as_deref(), Some(OsStr::new("/scratch/%u/%j")));
        assert_eq!(c.default_interval, 3600);
        assert_eq!(c.min_interval, 300);
        assert_eq!(c.signal, "USR2");
        assert_eq!(c.libckpt, "/opt/ckpt/lib/libckpt.so");
        assert_eq!(c.ckpt_bin, "/opt/ckpt/bin/ckpt");
        assert_eq!(
            PluginConfig::parse(Vec::<&str>::new()).unwrap(),
            PluginConfig::default()
        );
    }

    #[test]
    fn bad_plugin_args() {
        let cases: &[(&[&str], &str)] = &[
            (&["bogus=1"], "unknown plugstack.conf argument 'bogus=1'"),
            (&["default_dir"], "'default_dir' is not key=value"),
            (&["signal=KILL"], "signal=KILL: not a signal"),
            (&["signal=USR1", "signal=USR2"], "signal= is given twice"),
            (
                &["libckpt=lib.so"],
                "libckpt=lib.so: must be an absolute path",
            ),
            (&["libckpt=/a b.so"], "must not contain ':'"),
            (
                &["ckpt=bin/ckpt"],
                "ckpt=bin/ckpt: must be an absolute path",
            ),
            (&["min_interval=5x"], "min_interval=5x: unknown suffix"),
            (
                &["keep_images=maybe"],
                "keep_images=maybe: must be yes or no",
            ),
            (&["incremental=2"], "incremental=2: must be yes or no"),
            (&["compress=gzip"], "compress=gzip: must be zstd or no"),
            (&["max_file_copy=4X"], "max_file_copy=4X: must be a size"),
            (&["max_file_copy=G"], "max_file_copy=G: must be a size"),
            (
                &["default_dir=/x/%z"],
                "default_dir=/x/%z: unknown escape %z",
            ),
            (
                &["min_interval=10m", "default_interval=1m"],
                "default_interval=60: must be 0 (no periodic checkpoint) or at least 600 seconds",
            ),
        ];
        for (args, want) in cases {
            let text = PluginConfig::parse(args.iter().copied())
                .unwrap_err()
                .to_string();
            assert!(text.contains(want), "{args:?}: {text}");
        }
        // The order of the arguments does not matter for the minimum.
        assert!(PluginConfig::parse(["default_interval=1m", "min_interval=10m"]).is_err());
    }

    #[test]
    fn min_interval_applies_to_users_but_zero_is_always_allowed() {
        let c = PluginConfig::parse(["min_interval=60"]).unwrap();
        assert_eq!(c.user_interval("0"), Ok(0));
        assert_eq!(c.user_interval("1m"), Ok(60));
        let text = c.user_interval("59").unwrap_err().to_string();
        assert_eq!(
            text,
            "--checkpoint-interval=59: must be 0 (no periodic checkpoint) or at least 60 seconds \
             (min_interval of this site)"
        );
    }

    #[test]
    fn warning_signal_detection() {
        let a = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(sbatch_has_signal(
            &a(&["--signal=B:USR1@60", "job.sh"]),
            None,
            None
        ));
        assert!(sbatch_has_signal(
            &a(&["--signal", "USR1@60", "job.sh"]),
            None,
            None
        ));
        assert!(sbatch_has_signal(&a(&["job.sh"]), Some("B:USR1@60"), None));
        let script = "#!/bin/bash\n#SBATCH -t 5\n#SBATCH --signal=B:USR1@90\nsrun x\n";
        assert!(sbatch_has_signal(&a(&["job.sh"]), None, Some(script)));
        let late = "#!/bin/bash\necho hi\n#SBATCH --signal=B:USR1@90\n";
        assert!(!sbatch_has_signal(&a(&["job.sh"]), None, Some(late)));
        assert!(!sbatch_has_signal(
            &a(&["--time=5", "job.sh"]),
            Some(""),
            None
        ));
    }

    #[test]
    fn resolve_uses_site_defaults() {
        let none = PluginConfig::default();
        assert_eq!(none.resolve(&UserOptions::default()), Ok(None));
        let bare = UserOptions {
            enable: true,
            ..UserOptions::default()
        };
        assert_eq!(none.resolve(&bare), Err(OptionError::NoDir));

        let site = PluginConfig::parse(["default_dir=/s/%j", "default_interval=10m"]).unwrap();
        assert_eq!(
            site.resolve(&bare),
            Ok(Some(Resolved {
                pattern: "/s/%j".into(),
                interval: 600
            }))
        );
        let user = UserOptions {
            enable: false,
            dir: Some("mine".into()),
            interval: Some("0".into()),
        };
        assert_eq!(
            site.resolve(&user),
            Ok(Some(Resolved {
                pattern: "mine".into(),
                interval: 0
            }))
        );
    }
}
