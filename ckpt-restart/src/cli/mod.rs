//! Command-line parsing and the subcommands (one file per verb).

pub mod check;
pub mod checkpoint;
pub mod job;
pub mod launch;
pub mod mpi;
pub mod multi_prog;
pub mod outputs;
pub mod restart;
pub mod slurm;
pub mod slurmd_log;
pub mod status;
pub mod task_prolog;

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

/// A failure of a subcommand: the message for stderr and the exit code.
#[derive(Debug)]
pub struct Failure {
    /// What went wrong and what to do.
    pub msg: String,
    /// Exit status.
    pub code: i32,
}

impl<T: std::fmt::Display> From<T> for Failure {
    fn from(e: T) -> Self {
        Failure {
            msg: e.to_string(),
            code: 1,
        }
    }
}

/// Parsed options shared by the subcommands.
#[derive(Debug, Default)]
pub struct Opts {
    /// `--dir`.
    pub dir: Option<PathBuf>,
    /// `--interval` in seconds (0 = none).
    pub interval: u64,
    /// `--keep N` generations.
    pub keep: usize,
    /// `--no-verify`.
    pub no_verify: bool,
    /// `--incremental`.
    pub incremental: Incremental,
    /// `--compress`: snapshot children write private memory as zstd
    /// frames (`docs/image-format.md`, "Compressed images").
    pub compress: bool,
    /// `--generation N` (restart): start from generation N (or an older
    /// one when N cannot be used), not the newest.
    pub generation: Option<u64>,
    /// With `generation`: that generation and no other (a task resuming
    /// as part of a job checkpoint, `slurm::run`).
    pub exact_generation: bool,
    /// The batch script as it is now (a batch step's restart): the
    /// generation's descriptors of the same job's script elsewhere refer
    /// to it (`restore::names::follow_moved_script`).
    pub batch_script: Option<PathBuf>,
    /// `--max-file-copy`: the largest file the job writes that a
    /// checkpoint keeps (None: the default).
    pub max_file_copy: Option<u64>,
    /// Files the coordinator does not keep (`(device, inode)`), set by
    /// `slurm-task` for the task's output files.
    pub exclude_files: Vec<(u64, u64)>,
    /// Command after `--`, byte for byte (arguments need not be UTF-8).
    pub command: Vec<OsString>,
}

/// Parse a size: `N` bytes, or with `K`, `M`, `G`, `T` (powers of 1024);
/// `unlimited`.
pub fn parse_size(name: &str, s: &str) -> Result<u64, String> {
    if s == "unlimited" {
        return Ok(u64::MAX);
    }
    let bad = || {
        format!(
            "{name}={s}: expected a size: bytes, or a number with K, M, G or T (e.g. 512M, 4G), or unlimited"
        )
    };
    let (num, shift) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 30),
        Some('T' | 't') => (&s[..s.len() - 1], 40),
        Some(c) if c.is_ascii_digit() => (s, 0),
        _ => return Err(bad()),
    };
    if num.is_empty() || !num.bytes().all(|c| c.is_ascii_digit()) {
        return Err(bad());
    }
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1u64 << shift))
        .ok_or_else(bad)
}

/// When to track written pages for incremental checkpoints.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Incremental {
    /// With periodic checkpoints only (where a next checkpoint is coming).
    #[default]
    Auto,
    /// Always.
    On,
    /// Never: every checkpoint is full.
    Off,
}

impl Incremental {
    /// Whether to track, given the periodic interval.
    pub fn tracking(self, interval: u64) -> bool {
        match self {
            Incremental::Auto => interval > 0,
            Incremental::On => true,
            Incremental::Off => false,
        }
    }
}

/// Parse `--incremental` values.
pub fn parse_incremental(s: &str) -> Result<Incremental, String> {
    match s {
        "auto" => Ok(Incremental::Auto),
        "on" | "yes" | "1" => Ok(Incremental::On),
        "off" | "no" | "0" => Ok(Incremental::Off),
        _ => Err(format!(
            "--incremental={s}: expected auto (track written pages when --interval is set), on or off"
        )),
    }
}

/// Parse a `--compress=` value.
pub fn parse_compress(s: &str) -> Result<bool, String> {
    match s {
        "zstd" | "on" | "yes" | "1" => Ok(true),
        "off" | "no" | "0" => Ok(false),
        _ => Err(format!(
            "--compress={s}: expected zstd (or on) to compress images, or off"
        )),
    }
}

/// Parse an interval: `N`, `Ns`, `Nm`, `Nh`.
pub fn parse_interval(s: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "--interval={s}: expected seconds, or a number with s, m or h (e.g. 90, 30s, 5m, 2h)"
        )
    };
    let (num, mult) = match s.chars().last() {
        Some('s') => (&s[..s.len() - 1], 1),
        Some('m') => (&s[..s.len() - 1], 60),
        Some('h') => (&s[..s.len() - 1], 3600),
        Some(c) if c.is_ascii_digit() => (s, 1),
        _ => return Err(bad()),
    };
    if num.is_empty() || !num.bytes().all(|c| c.is_ascii_digit()) {
        return Err(bad());
    }
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(bad)
}

/// Splits `--key=value` into the key (for matching and messages) and the
/// value, byte for byte; any other argument is returned as the key.
pub fn split_option(a: &OsStr) -> (String, Option<OsString>) {
    let b = a.as_bytes();
    if b.starts_with(b"--")
        && let Some(eq) = b.iter().position(|&c| c == b'=')
    {
        let key = String::from_utf8_lossy(&b[..eq]).into_owned();
        let value = OsString::from_vec(b[eq + 1..].to_vec());
        return (key, Some(value));
    }
    (a.to_string_lossy().into_owned(), None)
}

/// An option value that must be text (a number, a name).
pub fn text_value(name: &str, v: OsString) -> Result<String, String> {
    v.into_string()
        .map_err(|v| format!("{name}={}: not valid UTF-8", v.to_string_lossy()))
}

/// Parse the options after the subcommand name.
pub fn parse(args: &[OsString], want_command: bool) -> Result<Opts, String> {
    let mut o = Opts {
        keep: ckpt::image::generation::DEFAULT_KEEP,
        ..Opts::default()
    };
    let mut i = 0;
    while i < args.len() {
        let (key, inline) = split_option(&args[i]);
        let mut value = |name: &str| -> Result<OsString, String> {
            if let Some(v) = inline.clone() {
                return Ok(v);
            }
            i += 1;
            args.get(i)
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match key.as_str() {
            "--dir" | "-d" => o.dir = Some(PathBuf::from(value("--dir")?)),
            "--interval" | "-i" => {
                o.interval = parse_interval(&text_value("--interval", value("--interval")?)?)?
            }
            "--keep" => {
                let v = text_value("--keep", value("--keep")?)?;
                o.keep = v.parse().ok().filter(|k| *k >= 1).ok_or(format!(
                    "--keep={v}: expected a number of generations, at least 1"
                ))?;
            }
            "--no-verify" => o.no_verify = true,
            "--generation" => {
                let v = text_value("--generation", value("--generation")?)?;
                o.generation = Some(v.parse().map_err(|_| {
                    format!("--generation={v}: expected a generation number (see ckpt status)")
                })?);
            }
            "--max-file-copy" => {
                let v = text_value("--max-file-copy", value("--max-file-copy")?)?;
                o.max_file_copy = Some(parse_size("--max-file-copy", &v)?);
            }
            "--incremental" => {
                o.incremental =
                    parse_incremental(&text_value("--incremental", value("--incremental")?)?)?
            }
            "--compress" => {
                o.compress = match inline.as_ref().map(|v| v.to_string_lossy().into_owned()) {
                    None => true,
                    Some(v) => parse_compress(&v)?,
                }
            }
            "--" if want_command => {
                o.command = args[i + 1..].to_vec();
                break;
            }
            s if want_command && !s.starts_with('-') => {
                o.command = args[i..].to_vec();
                break;
            }
            other => return Err(format!("unknown option {other}; see `ckpt help`")),
        }
        i += 1;
    }
    // An empty CKPT_DIR counts as unset (it would name no directory).
    if o.dir.is_none()
        && let Some(d) = std::env::var_os("CKPT_DIR").filter(|d| !d.is_empty())
    {
        o.dir = Some(PathBuf::from(d));
    }
    Ok(o)
}

/// The directory option or a clear error.
pub fn need_dir(o: &Opts) -> Result<PathBuf, Failure> {
    o.dir.clone().ok_or(Failure {
        msg: "missing --dir DIR (the checkpoint directory)".into(),
        code: 2,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("x", "4096"), Ok(4096));
        assert_eq!(parse_size("x", "512M"), Ok(512 << 20));
        assert_eq!(parse_size("x", "4G"), Ok(4 << 30));
        assert_eq!(parse_size("x", "unlimited"), Ok(u64::MAX));
        for bad in ["", "G", "1.5G", "-1", "4X", "99999999999T"] {
            assert!(parse_size("--max-file-copy", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("90"), Ok(90));
        assert_eq!(parse_interval("30s"), Ok(30));
        assert_eq!(parse_interval("5m"), Ok(300));
        assert_eq!(parse_interval("2h"), Ok(7200));
        assert_eq!(parse_interval("0"), Ok(0));
        for bad in ["", "-5", "5x", "m", "1.5m", "abc"] {
            assert!(parse_interval(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn options() {
        let v: Vec<OsString> = ["--dir", "/x", "--interval=5m", "--", "prog", "--dir"]
            .iter()
            .map(OsString::from)
            .collect();
        let o = parse(&v, true).unwrap();
        assert_eq!(o.dir, Some(PathBuf::from("/x")));
        assert_eq!(o.interval, 300);
        assert_eq!(o.command, vec!["prog", "--dir"]);
        assert!(parse(&["--bogus".into()], false).is_err());
    }

    #[test]
    fn non_utf8_paths_and_arguments_are_kept_byte_for_byte() {
        let latin1 = |b: &[u8]| OsString::from_vec(b.to_vec());
        let v = vec![
            latin1(b"--dir=/ck/caf\xe9"),
            "--".into(),
            "/bin/echo".into(),
            latin1(b"caf\xe9"),
        ];
        let o = parse(&v, true).unwrap();
        assert_eq!(o.dir, Some(PathBuf::from(latin1(b"/ck/caf\xe9"))));
        assert_eq!(o.command, vec!["/bin/echo".into(), latin1(b"caf\xe9")]);
        // Separate value, and a command without `--`.
        let v = vec!["-d".into(), latin1(b"/\xff"), latin1(b"\xfeprog")];
        let o = parse(&v, true).unwrap();
        assert_eq!(o.dir, Some(PathBuf::from(latin1(b"/\xff"))));
        assert_eq!(o.command, vec![latin1(b"\xfeprog")]);
        // A number that is not text is refused, not mangled.
        let e = parse(&["--interval".into(), latin1(b"5\xe9")], false).unwrap_err();
        assert!(e.contains("not valid UTF-8"), "{e}");
    }
}
