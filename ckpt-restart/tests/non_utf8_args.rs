//! The built `ckpt` binary takes arguments and directories that are not
//! UTF-8 and passes them to the program byte for byte (a job with such an
//! argument must start: `std::env::args()` would panic, exit 101).

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const CKPT: &str = env!("CARGO_BIN_EXE_ckpt");

fn latin1(b: &[u8]) -> OsString {
    OsString::from_vec(b.to_vec())
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ckpt-non-utf8-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create scratch dir");
    d
}

#[test]
fn slurm_exec_passes_a_latin1_argument_unchanged() {
    let out = Command::new(CKPT)
        .args(["slurm-exec", "--", "/bin/printf", "%s"])
        .arg(latin1(b"caf\xe9"))
        .output()
        .expect("run ckpt");
    assert!(
        out.status.success(),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"caf\xe9");
}

#[test]
fn slurm_task_check_accepts_a_latin1_dir() {
    let base = scratch("check");
    let dir = base.join(latin1(b"caf\xe9"));
    std::fs::create_dir(&dir).expect("create dir");
    let out = Command::new(CKPT)
        .args(["slurm-task", "--check", "--dir"])
        .arg(&dir)
        .output()
        .expect("run ckpt");
    assert!(
        out.status.success(),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(base);
}

#[test]
fn slurm_task_runs_a_program_with_a_latin1_argument_in_a_latin1_dir() {
    // Needs the preload library beside the binary (a workspace build).
    if !Path::new(CKPT).with_file_name("libckpt.so").exists() {
        eprintln!("skipped: no libckpt.so beside {CKPT} (build the workspace first)");
        return;
    }
    let base = scratch("task");
    let dir = base.join(latin1(b"t\xe2che"));
    let out = Command::new(CKPT)
        .args(["slurm-task", "--dir"])
        .arg(&dir)
        .args(["--", "/bin/printf", "%s"])
        .arg(latin1(b"caf\xe9"))
        .env_remove("SLURM_RESTART_COUNT")
        .output()
        .expect("run ckpt");
    assert!(
        out.status.success(),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"caf\xe9");
    assert!(
        dir.is_dir(),
        "the task directory was created under its own name"
    );
    let _ = std::fs::remove_dir_all(base);
}
