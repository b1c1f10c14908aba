//! A safe handle over the SPANK API of the host process.
//!
//! The `spank_*` and `slurm_*` functions are resolved when Slurm `dlopen`s
//! the plugin (srun, sbatch, salloc, slurmd, slurmstepd export them); nothing
//! here links libslurm. Every raw call of the plugin is in this file.

use std::ffi::{CStr, CString, OsStr, OsString, c_char, c_int};
use std::fmt;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use slurm_headers::sys;

/// Where the plugin is running (`spank_context()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    /// srun (`S_CTX_LOCAL`).
    Local,
    /// slurmstepd (`S_CTX_REMOTE`).
    Remote,
    /// sbatch or salloc (`S_CTX_ALLOCATOR`).
    Allocator,
    /// slurmd itself (`S_CTX_SLURMD`).
    Slurmd,
    /// prolog/epilog (`S_CTX_JOB_SCRIPT`).
    JobScript,
    /// `S_CTX_ERROR` or a value this build does not know.
    Unknown,
}

/// The context of the calling process.
pub fn context() -> Context {
    // SAFETY: spank_context takes no arguments and only reads Slurm's global
    // state; it is exported by every process that loads SPANK plugins.
    let raw = unsafe { sys::spank_context() };
    match raw {
        sys::spank_context::S_CTX_LOCAL => Context::Local,
        sys::spank_context::S_CTX_REMOTE => Context::Remote,
        sys::spank_context::S_CTX_ALLOCATOR => Context::Allocator,
        sys::spank_context::S_CTX_SLURMD => Context::Slurmd,
        sys::spank_context::S_CTX_JOB_SCRIPT => Context::JobScript,
        _ => Context::Unknown,
    }
}

/// A SPANK call that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpankError {
    /// The call and its main argument, e.g. `spank_getenv(LD_PRELOAD)`.
    pub call: String,
    /// Slurm's error code.
    pub code: u32,
}

impl fmt::Display for SpankError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // SAFETY: spank_strerror accepts any code and returns a pointer to a
        // static NUL-terminated string (or NULL for codes it does not know).
        let text = unsafe { sys::spank_strerror(self.code) };
        let text = if text.is_null() {
            format!("error {}", self.code)
        } else {
            // SAFETY: non-null, NUL-terminated and static (see above).
            unsafe { CStr::from_ptr(text) }
                .to_string_lossy()
                .into_owned()
        };
        write!(f, "{} failed: {text}", self.call)
    }
}

impl std::error::Error for SpankError {}

fn check(call: impl FnOnce() -> String, code: sys::spank_err_t) -> Result<(), SpankError> {
    if code == sys::ESPANK_SUCCESS {
        Ok(())
    } else {
        Err(SpankError { call: call(), code })
    }
}

/// A C string for Slurm: interior NUL bytes (impossible in what Slurm hands
/// us, possible in what we format) are replaced rather than failing.
fn c_string(s: &str) -> CString {
    CString::new(s.replace('\0', "\\0")).unwrap_or_default()
}

/// A C string of arbitrary bytes (a path, an environment value): kept byte
/// for byte; NUL bytes, which no C string can hold, are dropped.
fn c_bytes(b: &[u8]) -> CString {
    let kept: Vec<u8> = b.iter().copied().filter(|&c| c != 0).collect();
    CString::new(kept).unwrap_or_default()
}

/// A log message made safe for one log line: control characters (newline,
/// carriage return, the other C0 ones, DEL and C1) are written as escapes
/// (`\n`, `\r`, `\t`, `\xNN`, `\u{NN}`), so that a user's path or job
/// name cannot start a new line in slurmd's log or a terminal sequence.
pub fn escape_controls(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for ch in message.chars() {
        match ch {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() && u32::from(c) < 0x80 => {
                out.push_str(&format!("\\x{:02x}", u32::from(c)));
            }
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

/// An option the plugin registers with `spank_option_register`.
#[derive(Debug)]
pub struct OptionSpec {
    /// Long option name, without `--`.
    pub name: &'static CStr,
    /// One word describing the argument; `None` for a flag.
    pub arginfo: Option<&'static CStr>,
    /// Usage text shown by `--help`.
    pub usage: &'static CStr,
    /// Value passed back to the callback.
    pub val: c_int,
}

impl OptionSpec {
    fn raw(&self, cb: sys::spank_opt_cb_f) -> sys::spank_option {
        sys::spank_option {
            // Slurm copies these strings and never writes through them; the
            // header only lacks `const`.
            name: self.name.as_ptr().cast_mut(),
            arginfo: self
                .arginfo
                .map_or(std::ptr::null_mut(), |a| a.as_ptr().cast_mut()),
            usage: self.usage.as_ptr().cast_mut(),
            has_arg: c_int::from(self.arginfo.is_some()),
            val: self.val,
            cb,
        }
    }
}

/// The handle Slurm passes to a callback, valid for that callback only.
#[derive(Debug)]
pub struct Spank {
    raw: sys::spank_t,
}

impl Spank {
    /// Wraps the handle of the current callback.
    ///
    /// # Safety
    /// `raw` must be the handle Slurm passed to the running callback, and the
    /// `Spank` must not outlive that callback.
    pub unsafe fn from_raw(raw: sys::spank_t) -> Self {
        Self { raw }
    }

    /// Registers an option (valid in `slurm_spank_init` only).
    pub fn register_option(
        &self,
        spec: &OptionSpec,
        cb: sys::spank_opt_cb_f,
    ) -> Result<(), SpankError> {
        // Leaked once per process and option: Slurm's copy semantics differ
        // between versions, so the struct must outlive the plugin.
        let opt: &'static mut sys::spank_option = Box::leak(Box::new(spec.raw(cb)));
        // SAFETY: `self.raw` is the live handle (from_raw contract); `opt` is
        // a valid, 'static spank_option whose strings are 'static C strings.
        let rc = unsafe { sys::spank_option_register(self.raw, opt) };
        check(
            || format!("spank_option_register(--{})", spec.name.to_string_lossy()),
            rc,
        )
    }

    /// Whether the user gave the option and its value: `None` when not given,
    /// `Some(None)` for a given flag, `Some(Some(v))` for a given value.
    /// The value is returned byte for byte (a directory need not be UTF-8).
    pub fn getopt(&self, spec: &OptionSpec) -> Result<Option<Option<OsString>>, SpankError> {
        let mut opt = spec.raw(None);
        let mut value: *mut c_char = std::ptr::null_mut();
        // SAFETY: live handle; `opt` and `value` are valid for the call; Slurm
        // only reads `opt` and stores a pointer to its own string in `value`.
        let rc = unsafe { sys::spank_option_getopt(self.raw, &mut opt, &mut value) };
        if rc == sys::slurm_err_t_ESPANK_ERROR {
            return Ok(None);
        }
        check(
            || format!("spank_option_getopt(--{})", spec.name.to_string_lossy()),
            rc,
        )?;
        if spec.arginfo.is_none() || value.is_null() {
            return Ok(Some(None));
        }
        // SAFETY: on success Slurm points `value` at the option's argument, a
        // NUL-terminated string it owns for the life of the step.
        let text = unsafe { CStr::from_ptr(value) };
        Ok(Some(Some(OsString::from_vec(text.to_bytes().to_vec()))))
    }

    /// A `uint32_t` job item (`S_JOB_ID`, `S_JOB_UID`, …).
    pub fn item_u32(&self, item: sys::spank_item_t, name: &str) -> Result<u32, SpankError> {
        let mut value: u32 = 0;
        // SAFETY: live handle; the items passed here all take one `uint32_t *`
        // (uid_t is a u32 on Linux), and `value` outlives the call.
        let rc = unsafe { sys::spank_get_item(self.raw, item, &mut value as *mut u32) };
        check(|| format!("spank_get_item({name})"), rc)?;
        Ok(value)
    }

    /// The task's command line (`S_JOB_ARGV`, in a task callback).
    pub fn job_argv(&self) -> Result<Vec<CString>, SpankError> {
        let mut argc: c_int = 0;
        let mut argv: *mut *mut c_char = std::ptr::null_mut();
        // SAFETY: live handle; S_JOB_ARGV takes an `int *` and a `char ***`,
        // both valid for the call; Slurm stores its own array in `argv`.
        let rc = unsafe {
            sys::spank_get_item(
                self.raw,
                sys::spank_item::S_JOB_ARGV,
                &mut argc as *mut c_int,
                &mut argv as *mut *mut *mut c_char,
            )
        };
        check(|| "spank_get_item(S_JOB_ARGV)".to_owned(), rc)?;
        // SAFETY: Slurm's array holds `argc` entries (contract of S_JOB_ARGV).
        Ok(unsafe { c_strings(argv, usize::try_from(argc).ok()) })
    }

    /// The task's environment (`S_JOB_ENV`), as `NAME=value` strings.
    pub fn job_env(&self) -> Result<Vec<CString>, SpankError> {
        let mut env: *mut *mut c_char = std::ptr::null_mut();
        // SAFETY: live handle; S_JOB_ENV takes one `char ***`, valid for the
        // call; Slurm stores its NULL-terminated array in `env`.
        let rc = unsafe {
            sys::spank_get_item(
                self.raw,
                sys::spank_item::S_JOB_ENV,
                &mut env as *mut *mut *mut c_char,
            )
        };
        check(|| "spank_get_item(S_JOB_ENV)".to_owned(), rc)?;
        // SAFETY: the array is NULL-terminated (contract of S_JOB_ENV).
        Ok(unsafe { c_strings(env, None) })
    }

    /// A variable of the job's (task's) environment, as text (invalid UTF-8
    /// replaced): for variables that are not paths; see [`Self::getenv_os`].
    pub fn getenv(&self, name: &str) -> Result<Option<String>, SpankError> {
        Ok(self
            .getenv_os(name)?
            .map(|v| v.to_string_lossy().into_owned()))
    }

    /// A variable of the job's (task's) environment, byte for byte (paths,
    /// job names); `None` when unset.
    pub fn getenv_os(&self, name: &str) -> Result<Option<OsString>, SpankError> {
        let cname = c_string(name);
        let mut len: usize = 4096;
        loop {
            let mut buf = vec![0u8; len];
            let c_len = c_int::try_from(len).unwrap_or(c_int::MAX);
            // SAFETY: live handle; `cname` is NUL-terminated; `buf` holds
            // `c_len` writable bytes and outlives the call.
            let rc = unsafe {
                sys::spank_getenv(self.raw, cname.as_ptr(), buf.as_mut_ptr().cast(), c_len)
            };
            if rc == sys::slurm_err_t_ESPANK_ENV_NOEXIST {
                return Ok(None);
            }
            if rc == sys::slurm_err_t_ESPANK_NOSPACE && len < (1 << 20) {
                len *= 4;
                continue;
            }
            check(|| format!("spank_getenv({name})"), rc)?;
            let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
            buf.truncate(end);
            return Ok(Some(OsString::from_vec(buf)));
        }
    }

    /// Sets a variable in the job's (task's) environment, overwriting it.
    pub fn setenv(&self, name: &str, value: &str) -> Result<(), SpankError> {
        self.setenv_os(name, OsStr::new(value))
    }

    /// Sets a variable to a value of arbitrary bytes (a path), overwriting it.
    pub fn setenv_os(&self, name: &str, value: &OsStr) -> Result<(), SpankError> {
        let cname = c_string(name);
        let cvalue = c_bytes(value.as_bytes());
        // SAFETY: live handle; both strings are NUL-terminated and outlive
        // the call; Slurm copies them.
        let rc = unsafe { sys::spank_setenv(self.raw, cname.as_ptr(), cvalue.as_ptr(), 1) };
        check(|| format!("spank_setenv({name})"), rc)
    }
}

/// Copies a C array of strings: `count` entries, or up to the first null
/// entry when `count` is `None`.
///
/// # Safety
/// `array` is null, or points to `count` valid pointers (or to a
/// NULL-terminated array when `count` is `None`); each non-null entry is a
/// NUL-terminated string valid for the call.
unsafe fn c_strings(array: *mut *mut c_char, count: Option<usize>) -> Vec<CString> {
    let mut out = Vec::new();
    if array.is_null() {
        return out;
    }
    let mut i = 0;
    loop {
        if count.is_some_and(|n| i >= n) {
            break;
        }
        // SAFETY: i is below `count`, or every earlier entry was non-null so
        // the NULL terminator has not been passed: the slot is in the array.
        let slot = unsafe { array.add(i) };
        // SAFETY: `slot` points at an initialized entry (see above).
        let ptr = unsafe { *slot };
        if ptr.is_null() {
            if count.is_none() {
                break;
            }
        } else {
            // SAFETY: non-null entries are NUL-terminated strings (contract).
            out.push(unsafe { CStr::from_ptr(ptr) }.to_owned());
        }
        i += 1;
    }
    out
}

/// The one place every message leaves the plugin: prefixed, with control
/// characters escaped ([`escape_controls`]), as a C string.
fn log_text(message: &str) -> CString {
    c_string(&escape_controls(&format!("ckpt: {message}")))
}

/// Logs an error through Slurm: on srun/sbatch/salloc it is printed on their
/// stderr (`sbatch: error: ckpt: …`), in daemons it goes to their log.
pub fn log_error(message: &str) {
    let text = log_text(message);
    // SAFETY: the format is a literal "%s" and its one argument is a valid
    // NUL-terminated string, as slurm_error's printf contract requires.
    unsafe { sys::slurm_error(c"%s".as_ptr(), text.as_ptr()) };
}

/// Prints a note on the stderr of srun/sbatch/salloc, at the level of an
/// error but without the `error:` prefix (`slurm_spank_log`).
pub fn log_note(message: &str) {
    let text = log_text(message);
    // SAFETY: as in log_error.
    unsafe { sys::slurm_spank_log(c"%s".as_ptr(), text.as_ptr()) };
}

/// Logs an informational line (daemon logs; srun -v).
pub fn log_info(message: &str) {
    let text = log_text(message);
    // SAFETY: as in log_error.
    unsafe { sys::slurm_info(c"%s".as_ptr(), text.as_ptr()) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_cannot_be_split_or_carry_terminal_sequences() {
        let name = "job\nslurmd: error: forged\r\u{1b}[2J\u{7f}\u{9b}\0end\tx";
        let text = log_text(&format!("cannot use /ck/{name}"));
        let bytes = text.as_bytes();
        assert!(!bytes.iter().any(|&b| b < 0x20 || b == 0x7f), "{text:?}");
        assert_eq!(
            text.to_str().unwrap(),
            "ckpt: cannot use /ck/job\\nslurmd: error: forged\\r\\x1b[2J\\x7f\\u{9b}\\x00end\\tx"
        );
        // Ordinary text, including non-ASCII letters, is unchanged.
        assert_eq!(escape_controls("café /a b"), "café /a b");
    }

    #[test]
    fn values_keep_their_bytes() {
        assert_eq!(c_bytes(b"/ck/caf\xe9").as_bytes(), b"/ck/caf\xe9");
        assert_eq!(c_bytes(b"a\0b").as_bytes(), b"ab");
    }
}
