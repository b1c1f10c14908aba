//! The environment a checkpointed task starts with.
//!
//! | variable        | value                                                       |
//! |-----------------|-------------------------------------------------------------|
//! | `LD_PRELOAD`    | `libckpt=` path, then whatever the task already preloaded    |
//! | `CKPT_DIR`      | the expanded, absolute checkpoint directory                 |
//! | `CKPT_INTERVAL` | periodic interval in seconds, `0` = none                    |
//! | `CKPT_SIGNAL`   | name of the "checkpoint now" signal, without `SIG` (`USR1`) |
//! | `CKPT_BIN`      | path of the `ckpt` binary                                   |
//!
//! A job that did not ask for checkpointing gets none of these.

use std::ffi::{CString, OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// Checkpoint directory of the task.
pub const ENV_DIR: &str = "CKPT_DIR";
/// Periodic checkpoint interval, seconds; `0` means none.
pub const ENV_INTERVAL: &str = "CKPT_INTERVAL";
/// Signal name (without `SIG`) that asks for a checkpoint now.
pub const ENV_SIGNAL: &str = "CKPT_SIGNAL";
/// Path of the `ckpt` binary.
pub const ENV_BIN: &str = "CKPT_BIN";
/// The dynamic loader's preload list.
pub const ENV_PRELOAD: &str = "LD_PRELOAD";

/// ld.so separates `LD_PRELOAD` entries with ':' or white space.
fn preload_separator(c: &u8) -> bool {
    *c == b':' || c.is_ascii_whitespace()
}

/// `LD_PRELOAD` with `lib` first, keeping every library already listed
/// byte for byte (a library path need not be UTF-8). Idempotent: a step
/// started from a checkpointed batch script inherits `LD_PRELOAD` with `lib`
/// in it already, and keeps it as is.
pub fn preload_with(existing: Option<&OsStr>, lib: &str) -> OsString {
    let existing = existing
        .map(OsStr::as_bytes)
        .unwrap_or_default()
        .trim_ascii();
    if existing
        .split(preload_separator)
        .any(|entry| entry == lib.as_bytes())
    {
        return OsStr::from_bytes(existing).to_owned();
    }
    let mut out = lib.as_bytes().to_vec();
    if !existing.is_empty() {
        out.push(b':');
        out.extend_from_slice(existing);
    }
    OsString::from_vec(out)
}

/// `LD_PRELOAD` without `lib` (`None` when nothing else is left): what
/// `ckpt` itself starts with, since `ckpt launch` prepends `lib` for the
/// program (the program then sees exactly [`preload_with`]).
pub fn preload_without(existing: Option<&OsStr>, lib: &str) -> Option<OsString> {
    let kept: Vec<&[u8]> = existing
        .map(OsStr::as_bytes)
        .unwrap_or_default()
        .split(preload_separator)
        .filter(|entry| !entry.is_empty() && *entry != lib.as_bytes())
        .collect();
    if kept.is_empty() {
        None
    } else {
        Some(OsString::from_vec(kept.join(&b':')))
    }
}

/// Step id of a batch script (`SLURM_BATCH_SCRIPT` in slurm.h, 22.05).
pub const BATCH_STEP: u32 = 0xffff_fffb;
/// Step id of the extern step (`SLURM_EXTERN_CONT`).
pub const EXTERN_STEP: u32 = 0xffff_fffc;
/// Step id of an interactive step (`SLURM_INTERACTIVE_STEP`).
pub const INTERACTIVE_STEP: u32 = 0xffff_fffa;

/// The directory of one task inside the job's checkpoint directory: `batch`
/// for the batch script, `<step dir>/task<rank>` for a task of an srun step
/// ([`step_dir`]), so that a requeued job or a rerun of the same step finds
/// its images.
pub fn task_dir(dir: &Path, step: u32, rank: u32, step_dir: &str) -> PathBuf {
    if step == BATCH_STEP {
        dir.join("batch")
    } else {
        dir.join(step_dir).join(format!("task{rank}"))
    }
}

/// Set by the batch step in the environment of an `srun` it started again
/// after a requeue: the directory of the step it is resuming.
pub const ENV_STEP_DIR: &str = "CKPT_STEP_DIR";
/// Written by a batch step that resumed from an image (its
/// `SLURM_RESTART_COUNT`): see [`step_dir`].
pub const EPOCH_FILE: &str = "epoch";

/// The directory of step `step` (docs/batch-jobs.md): the one named by
/// `CKPT_STEP_DIR` when the batch step started this step's srun again;
/// otherwise `step<id>`, or `r<N>.step<id>` once the batch step has resumed
/// from an image at its N-th restart (step ids start again from 0 after a
/// requeue: a new step must not take the images of the run before). The
/// same rule is in `ckpt-restart/src/cli/job.rs`.
pub fn step_dir(step: u32, env_dir: Option<&str>, epoch: Option<&str>) -> String {
    if let Some(d) = env_dir.filter(|d| valid_step_dir(d)) {
        return d.to_owned();
    }
    match epoch.and_then(|e| e.trim().parse::<u32>().ok()) {
        Some(e) => format!("r{e}.step{step}"),
        None => format!("step{step}"),
    }
}

/// A step directory name as [`step_dir`] makes them: one component.
fn valid_step_dir(d: &str) -> bool {
    !d.is_empty()
        && d.len() < 64
        && !d.starts_with('.')
        && d.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'.')
}

/// What the task execs instead of its command.
#[derive(Debug)]
pub struct TaskExec<'a> {
    /// The `ckpt` binary.
    pub ckpt_bin: &'a str,
    /// The task's own directory ([`task_dir`]).
    pub task_dir: &'a Path,
    /// Periodic interval, seconds.
    pub interval: u64,
    /// The "checkpoint now" signal name.
    pub signal: &'a str,
    /// This is the batch step (requeue after a signal checkpoint).
    pub batch: bool,
    /// Keep the images after success.
    pub keep_images: bool,
    /// Periodic checkpoints may be incremental (the site's `incremental=`).
    pub incremental: bool,
    /// Compress images (the site's `compress=zstd`).
    pub compress: bool,
    /// The site's `max_file_copy=`.
    pub max_file_copy: Option<&'a str>,
    /// The preload library.
    pub libckpt: &'a str,
}

fn c(s: &str) -> CString {
    c_bytes(s.as_bytes())
}

/// A C string of arbitrary bytes (a path): kept byte for byte, NUL bytes
/// (impossible in a path) dropped.
fn c_bytes(b: &[u8]) -> CString {
    CString::new(b.iter().copied().filter(|&x| x != 0).collect::<Vec<u8>>()).unwrap_or_default()
}

/// `ckpt slurm-task --dir TASKDIR ... -- ARGV`.
pub fn exec_argv(e: &TaskExec<'_>, argv: &[CString]) -> Vec<CString> {
    let mut out = vec![
        c(e.ckpt_bin),
        c("slurm-task"),
        c("--dir"),
        c_bytes(e.task_dir.as_os_str().as_bytes()),
        c("--interval"),
        c(&e.interval.to_string()),
        c("--signal"),
        c(e.signal),
        c("--lib"),
        c(e.libckpt),
    ];
    if e.batch {
        out.push(c("--batch"));
    }
    if e.keep_images {
        out.push(c("--keep-images"));
    }
    if !e.incremental {
        out.push(c("--incremental"));
        out.push(c("off"));
    }
    if e.compress {
        out.push(c("--compress"));
    }
    if let Some(max) = e.max_file_copy {
        out.push(c("--max-file-copy"));
        out.push(c(max));
    }
    out.push(c("--"));
    out.extend(argv.iter().cloned());
    out
}

/// The environment `ckpt` starts with: the task's, with `LD_PRELOAD` set to
/// `preload` (or removed when `None`).
pub fn exec_env(env: &[CString], preload: Option<&OsStr>) -> Vec<CString> {
    let prefix = format!("{ENV_PRELOAD}=");
    let mut out: Vec<CString> = env
        .iter()
        .filter(|v| !v.as_bytes().starts_with(prefix.as_bytes()))
        .cloned()
        .collect();
    if let Some(p) = preload {
        out.push(c_bytes(&[prefix.as_bytes(), p.as_bytes()].concat()));
    }
    out
}

/// Everything [`vars`] needs.
#[derive(Debug)]
pub struct TaskSettings<'a> {
    /// Expanded checkpoint directory.
    pub dir: &'a Path,
    /// Interval, seconds.
    pub interval: u64,
    /// Signal name.
    pub signal: &'a str,
    /// Path of the `ckpt` binary.
    pub ckpt_bin: &'a str,
    /// Path of `libckpt.so`.
    pub libckpt: &'a str,
}

/// The variables to set in the task, given its current `LD_PRELOAD`; values
/// byte for byte (the directory need not be UTF-8).
pub fn vars(
    settings: &TaskSettings<'_>,
    existing_preload: Option<&OsStr>,
) -> Vec<(&'static str, OsString)> {
    vec![
        (
            ENV_PRELOAD,
            preload_with(existing_preload, settings.libckpt),
        ),
        (ENV_DIR, settings.dir.as_os_str().to_owned()),
        (ENV_INTERVAL, settings.interval.to_string().into()),
        (ENV_SIGNAL, settings.signal.into()),
        (ENV_BIN, settings.ckpt_bin.into()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIB: &str = "/usr/local/lib/ckpt/libckpt.so";

    fn os(s: &str) -> Option<&OsStr> {
        Some(OsStr::new(s))
    }

    fn text(v: OsString) -> String {
        v.into_string().unwrap()
    }

    #[test]
    fn preload_is_prepended_never_replaced() {
        assert_eq!(preload_with(None, LIB), LIB);
        assert_eq!(preload_with(os(""), LIB), LIB);
        assert_eq!(
            text(preload_with(os("/x/a.so"), LIB)),
            format!("{LIB}:/x/a.so")
        );
        assert_eq!(
            text(preload_with(os("/x/a.so /y/b.so"), LIB)),
            format!("{LIB}:/x/a.so /y/b.so")
        );
    }

    #[test]
    fn preload_is_idempotent() {
        let once = preload_with(os("/x/a.so"), LIB);
        assert_eq!(preload_with(Some(&once), LIB), once);
        assert_eq!(
            preload_with(os("/x/a.so /usr/local/lib/ckpt/libckpt.so"), LIB),
            "/x/a.so /usr/local/lib/ckpt/libckpt.so"
        );
        // A different library whose name merely contains ours is kept and ours added.
        assert_eq!(
            text(preload_with(os("/usr/local/lib/ckpt/libckpt.so.old"), LIB)),
            format!("{LIB}:/usr/local/lib/ckpt/libckpt.so.old")
        );
    }

    #[test]
    fn ckpt_starts_without_libckpt_and_the_program_gets_it_once() {
        assert_eq!(preload_without(None, LIB), None);
        assert_eq!(preload_without(os(LIB), LIB), None);
        let with = preload_with(os("/x/a.so /y/b.so"), LIB);
        let without = preload_without(Some(&with), LIB);
        assert_eq!(without.as_deref(), os("/x/a.so:/y/b.so"));
        // What ckpt launch then gives the program.
        assert_eq!(
            format!("{LIB}:{}", text(without.unwrap())),
            format!("{LIB}:/x/a.so:/y/b.so")
        );
    }

    #[test]
    fn task_dirs() {
        let d = Path::new("/ck/42");
        assert_eq!(task_dir(d, BATCH_STEP, 0, "x"), Path::new("/ck/42/batch"));
        assert_eq!(task_dir(d, 3, 1, "step3"), Path::new("/ck/42/step3/task1"));
        assert_eq!(step_dir(3, None, None), "step3");
        assert_eq!(step_dir(0, None, Some("2\n")), "r2.step0");
        assert_eq!(step_dir(0, Some("step4"), Some("2")), "step4");
        assert_eq!(step_dir(0, Some("../../etc"), None), "step0");
        assert_eq!(step_dir(0, Some(".."), None), "step0");
    }

    #[test]
    fn exec_line_and_env() {
        let e = TaskExec {
            ckpt_bin: "/b/ckpt",
            task_dir: Path::new("/ck/batch"),
            interval: 60,
            signal: "USR1",
            batch: true,
            keep_images: false,
            incremental: true,
            compress: false,
            max_file_copy: None,
            libckpt: LIB,
        };
        let argv = exec_argv(&e, &[c("/home/u/job.sh"), c("arg")]);
        let text: Vec<&str> = argv.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            text,
            [
                "/b/ckpt",
                "slurm-task",
                "--dir",
                "/ck/batch",
                "--interval",
                "60",
                "--signal",
                "USR1",
                "--lib",
                LIB,
                "--batch",
                "--",
                "/home/u/job.sh",
                "arg"
            ]
        );
        let full = TaskExec {
            incremental: false,
            compress: true,
            max_file_copy: None,
            ..e
        };
        let argv = exec_argv(&full, &[c("job")]);
        let text: Vec<&str> = argv.iter().map(|a| a.to_str().unwrap()).collect();
        assert!(
            text.windows(2).any(|w| w == ["--incremental", "off"]),
            "{text:?}"
        );
        assert!(text.contains(&"--compress"), "{text:?}");
        let env = exec_env(&[c("A=1"), c("LD_PRELOAD=x"), c("B=2")], os("/x/a.so"));
        assert_eq!(env, vec![c("A=1"), c("B=2"), c("LD_PRELOAD=/x/a.so")]);
        assert_eq!(exec_env(&[c("LD_PRELOAD=x")], None), Vec::<CString>::new());
    }

    #[test]
    fn all_settings_are_exported() {
        let s = TaskSettings {
            dir: Path::new("/ck/42"),
            interval: 300,
            signal: "USR1",
            ckpt_bin: "/usr/local/bin/ckpt",
            libckpt: LIB,
        };
        let v: Vec<(&str, String)> = vars(&s, os("/x/a.so"))
            .into_iter()
            .map(|(k, v)| (k, text(v)))
            .collect();
        assert_eq!(
            v,
            vec![
                ("LD_PRELOAD", format!("{LIB}:/x/a.so")),
                ("CKPT_DIR", "/ck/42".to_owned()),
                ("CKPT_INTERVAL", "300".to_owned()),
                ("CKPT_SIGNAL", "USR1".to_owned()),
                ("CKPT_BIN", "/usr/local/bin/ckpt".to_owned()),
            ]
        );
    }

    fn latin1(b: &[u8]) -> OsString {
        OsString::from_vec(b.to_vec())
    }

    #[test]
    fn non_utf8_dirs_arguments_and_preloads_keep_their_bytes() {
        let dir = PathBuf::from(latin1(b"/ck/caf\xe9"));
        let task = task_dir(&dir, 3, 1, "step3");
        assert_eq!(task, PathBuf::from(latin1(b"/ck/caf\xe9/step3/task1")));
        let e = TaskExec {
            ckpt_bin: "/b/ckpt",
            task_dir: &task,
            interval: 0,
            signal: "USR1",
            batch: false,
            keep_images: false,
            incremental: true,
            compress: false,
            max_file_copy: None,
            libckpt: LIB,
        };
        let arg = CString::new(b"caf\xe9".to_vec()).unwrap();
        let argv = exec_argv(&e, &[c("/bin/echo"), arg.clone()]);
        assert_eq!(argv[3].as_bytes(), b"/ck/caf\xe9/step3/task1");
        assert_eq!(argv.last(), Some(&arg));
        // The user's own preload with a Latin-1 path stays as it was.
        let theirs = latin1(b"/l/\xe9.so");
        let with = preload_with(Some(&theirs), LIB);
        assert_eq!(with.as_bytes(), [LIB.as_bytes(), b":/l/\xe9.so"].concat());
        let without = preload_without(Some(&with), LIB);
        assert_eq!(without.as_deref(), Some(theirs.as_os_str()));
        let env = exec_env(&[], without.as_deref());
        assert_eq!(env[0].as_bytes(), b"LD_PRELOAD=/l/\xe9.so");
        let s = TaskSettings {
            dir: &dir,
            interval: 0,
            signal: "USR1",
            ckpt_bin: "/b/ckpt",
            libckpt: LIB,
        };
        let v = vars(&s, None);
        assert!(v.contains(&("CKPT_DIR", latin1(b"/ck/caf\xe9"))), "{v:?}");
    }
}
