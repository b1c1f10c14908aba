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

use std::ffi::CString;
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

/// `LD_PRELOAD` with `lib` first, keeping every library already listed.
/// Idempotent: a step started from a checkpointed batch script inherits
/// `LD_PRELOAD` with `lib` in it already, and keeps it as is.
pub fn preload_with(existing: Option<&str>, lib: &str) -> String {
    let existing = existing.map(str::trim).unwrap_or_default();
    // ld.so separates entries with ':' or white space.
    if existing
        .split(|c: char| c == ':' || c.is_whitespace())
        .any(|entry| entry == lib)
    {
        return existing.to_owned();
    }
    if existing.is_empty() {
        lib.to_owned()
    } else {
        format!("{lib}:{existing}")
    }
}

/// `LD_PRELOAD` without `lib` (`None` when nothing else is left): what
/// `ckpt` itself starts with, since `ckpt launch` prepends `lib` for the
/// program (the program then sees exactly [`preload_with`]).
pub fn preload_without(existing: Option<&str>, lib: &str) -> Option<String> {
    let kept: Vec<&str> = existing
        .unwrap_or_default()
        .split(|c: char| c == ':' || c.is_whitespace())
        .filter(|entry| !entry.is_empty() && *entry != lib)
        .collect();
    if kept.is_empty() {
        None
    } else {
        Some(kept.join(":"))
    }
}

/// Step id of a batch script (`SLURM_BATCH_SCRIPT` in slurm.h, 22.05).
pub const BATCH_STEP: u32 = 0xffff_fffb;
/// Step id of the extern step (`SLURM_EXTERN_CONT`).
pub const EXTERN_STEP: u32 = 0xffff_fffc;
/// Step id of an interactive step (`SLURM_INTERACTIVE_STEP`).
pub const INTERACTIVE_STEP: u32 = 0xffff_fffa;

/// The directory of one task inside the job's checkpoint directory: `batch`
/// for the batch script, `step<id>/task<rank>` for a task of an srun step,
/// so that a requeued job or a rerun of the same step finds its images.
pub fn task_dir(dir: &Path, step: u32, rank: u32) -> PathBuf {
    if step == BATCH_STEP {
        dir.join("batch")
    } else {
        dir.join(format!("step{step}")).join(format!("task{rank}"))
    }
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
    /// The preload library.
    pub libckpt: &'a str,
}

fn c(s: &str) -> CString {
    CString::new(s.replace('\0', "")).unwrap_or_default()
}

/// `ckpt slurm-task --dir TASKDIR ... -- ARGV`.
pub fn exec_argv(e: &TaskExec<'_>, argv: &[CString]) -> Vec<CString> {
    let mut out = vec![
        c(e.ckpt_bin),
        c("slurm-task"),
        c("--dir"),
        c(&e.task_dir.display().to_string()),
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
    out.push(c("--"));
    out.extend(argv.iter().cloned());
    out
}

/// The environment `ckpt` starts with: the task's, with `LD_PRELOAD` set to
/// `preload` (or removed when `None`).
pub fn exec_env(env: &[CString], preload: Option<&str>) -> Vec<CString> {
    let prefix = format!("{ENV_PRELOAD}=");
    let mut out: Vec<CString> = env
        .iter()
        .filter(|v| !v.as_bytes().starts_with(prefix.as_bytes()))
        .cloned()
        .collect();
    if let Some(p) = preload {
        out.push(c(&format!("{prefix}{p}")));
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

/// The variables to set in the task, given its current `LD_PRELOAD`.
pub fn vars(
    settings: &TaskSettings<'_>,
    existing_preload: Option<&str>,
) -> Vec<(&'static str, String)> {
    vec![
        (
            ENV_PRELOAD,
            preload_with(existing_preload, settings.libckpt),
        ),
        (ENV_DIR, settings.dir.display().to_string()),
        (ENV_INTERVAL, settings.interval.to_string()),
        (ENV_SIGNAL, settings.signal.to_owned()),
        (ENV_BIN, settings.ckpt_bin.to_owned()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIB: &str = "/usr/local/lib/ckpt/libckpt.so";

    #[test]
    fn preload_is_prepended_never_replaced() {
        assert_eq!(preload_with(None, LIB), LIB);
        assert_eq!(preload_with(Some(""), LIB), LIB);
        assert_eq!(preload_with(Some("/x/a.so"), LIB), format!("{LIB}:/x/a.so"));
        assert_eq!(
            preload_with(Some("/x/a.so /y/b.so"), LIB),
            format!("{LIB}:/x/a.so /y/b.so")
        );
    }

    #[test]
    fn preload_is_idempotent() {
        let once = preload_with(Some("/x/a.so"), LIB);
        assert_eq!(preload_with(Some(&once), LIB), once);
        assert_eq!(
            preload_with(Some("/x/a.so /usr/local/lib/ckpt/libckpt.so"), LIB),
            "/x/a.so /usr/local/lib/ckpt/libckpt.so"
        );
        // A different library whose name merely contains ours is kept and ours added.
        assert_eq!(
            preload_with(Some("/usr/local/lib/ckpt/libckpt.so.old"), LIB),
            format!("{LIB}:/usr/local/lib/ckpt/libckpt.so.old")
        );
    }

    #[test]
    fn ckpt_starts_without_libckpt_and_the_program_gets_it_once() {
        assert_eq!(preload_without(None, LIB), None);
        assert_eq!(preload_without(Some(LIB), LIB), None);
        let with = preload_with(Some("/x/a.so /y/b.so"), LIB);
        let without = preload_without(Some(&with), LIB);
        assert_eq!(without.as_deref(), Some("/x/a.so:/y/b.so"));
        // What ckpt launch then gives the program.
        assert_eq!(
            format!("{LIB}:{}", without.unwrap()),
            format!("{LIB}:/x/a.so:/y/b.so")
        );
    }

    #[test]
    fn task_dirs() {
        let d = Path::new("/ck/42");
        assert_eq!(task_dir(d, BATCH_STEP, 0), Path::new("/ck/42/batch"));
        assert_eq!(task_dir(d, 3, 1), Path::new("/ck/42/step3/task1"));
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
            ..e
        };
        let argv = exec_argv(&full, &[c("job")]);
        let text: Vec<&str> = argv.iter().map(|a| a.to_str().unwrap()).collect();
        assert!(
            text.windows(2).any(|w| w == ["--incremental", "off"]),
            "{text:?}"
        );
        let env = exec_env(&[c("A=1"), c("LD_PRELOAD=x"), c("B=2")], Some("/x/a.so"));
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
        let v = vars(&s, Some("/x/a.so"));
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
}
