//! A batch job that ran to its end is not run again when Slurm starts it
//! once more (`ckpt slurm-task --batch`, `cli/slurm.rs`): Slurm 25.11
//! requeues a job that completed after it had been requeued during a
//! preemption's grace time, and a rerun from the beginning would write its
//! output and its files a second time. The task leaves a `completed` record
//! and a copy of its output files; started again as the same job with
//! `SLURM_RESTART_COUNT` set, it puts the output files back (Slurm truncates
//! them on requeue) and exits with the recorded status without running the
//! program. Another job using the same directory runs normally.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const CKPT: &str = env!("CARGO_BIN_EXE_ckpt");

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ckpt-completed-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).expect("create scratch dir");
    d
}

/// Runs the batch task as job `job` (restart count `count`) with its
/// stdout and stderr appended to `out` and `err`; the program appends a
/// line to `runs` and prints "work done".
fn task(base: &Path, job: &str, count: Option<u32>) -> Output {
    task_exiting(base, job, count, 0)
}

/// [`task`] whose program exits with `code`.
fn task_exiting(base: &Path, job: &str, count: Option<u32>, code: i32) -> Output {
    let open = |name: &str| {
        File::options()
            .create(true)
            .append(true)
            .open(base.join(name))
            .expect("open output")
    };
    let script = format!(
        "echo run >> {}; echo 'work done'; echo 'to stderr' >&2; exit {code}",
        base.join("runs").display()
    );
    let mut cmd = Command::new(CKPT);
    cmd.args(["slurm-task", "--batch", "--dir"])
        .arg(base.join("ck"))
        .args(["--", "/bin/sh", "-c", &script])
        .env("SLURM_JOB_ID", job)
        .env_remove("SLURM_RESTART_COUNT")
        .stdout(open("job.out"))
        .stderr(open("job.err"));
    if let Some(n) = count {
        cmd.env("SLURM_RESTART_COUNT", n.to_string());
    }
    cmd.output().expect("run ckpt")
}

/// Whether the preload library is beside the binary (a workspace build);
/// under CI its absence fails the test.
fn have_libckpt() -> bool {
    let there = Path::new(CKPT).with_file_name("libckpt.so").exists();
    if !there {
        assert!(
            std::env::var("CI").is_err(),
            "no libckpt.so beside {CKPT}: build the workspace first"
        );
        eprintln!("skipped: no libckpt.so beside {CKPT} (build the workspace first)");
    }
    there
}

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_default()
}

#[test]
fn a_completed_batch_job_started_again_is_not_rerun() {
    if !have_libckpt() {
        return;
    }
    let base = scratch("rerun");
    let first = task(&base, "4242", None);
    assert!(first.status.success(), "first run: {first:?}");
    assert_eq!(read(&base.join("runs")), "run\n");
    let out_after = read(&base.join("job.out"));
    let err_after = read(&base.join("job.err"));
    assert_eq!(out_after, "work done\n");
    assert!(base.join("ck/completed").is_file(), "no completion record");

    // Slurm starts it again and truncates its output files (open-mode
    // truncate, the default).
    for f in ["job.out", "job.err"] {
        File::create(base.join(f)).expect("truncate");
    }
    let again = task(&base, "4242", Some(1));
    assert!(again.status.success(), "second start: {again:?}");
    assert_eq!(read(&base.join("runs")), "run\n", "the program ran again");
    assert_eq!(
        read(&base.join("job.out")),
        out_after,
        "stdout not put back"
    );
    let err = read(&base.join("job.err"));
    assert!(
        err.starts_with(&err_after) && err.contains("already ran to its end (exit status 0)"),
        "stderr: {err:?}"
    );

    // Another job with the same directory is a new run.
    let other = task(&base, "4343", None);
    assert!(other.status.success(), "another job: {other:?}");
    assert_eq!(read(&base.join("runs")), "run\nrun\n");
    let _ = fs::remove_dir_all(base);
}

#[test]
fn a_failed_batch_job_started_again_runs_again() {
    if !have_libckpt() {
        return;
    }
    let base = scratch("failed");
    let first = task_exiting(&base, "5000", None, 3);
    assert_eq!(first.status.code(), Some(3), "first run: {first:?}");
    assert!(
        !base.join("ck/completed").exists(),
        "a failed run was recorded"
    );
    let again = task_exiting(&base, "5000", Some(1), 0);
    assert!(again.status.success(), "second start: {again:?}");
    assert_eq!(
        read(&base.join("runs")),
        "run\nrun\n",
        "the program did not run again"
    );
    let _ = fs::remove_dir_all(base);
}
