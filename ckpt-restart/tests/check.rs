//! `ckpt check` and what a node without a kernel feature says (simulated
//! with `CKPT_SIMULATE_MISSING`): the report, the exit status, and the
//! refusal of `ckpt launch` before the program runs.

use std::path::PathBuf;
use std::process::Command;

fn ckpt() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ckpt"))
}

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ckpt-check-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("ck")).expect("scratch directory");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.join("ck"), std::fs::Permissions::from_mode(0o700))
        .expect("chmod scratch directory");
    d
}

#[test]
fn this_node_passes() {
    let o = ckpt().arg("check").output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("this node can run checkpointed jobs"), "{out}");
    for name in [
        "userns",
        "pidns",
        "set_tid",
        "checkpoint_restore",
        "timens",
        "incremental",
    ] {
        assert!(
            out.lines().any(|l| l.starts_with("ok") && l.contains(name)),
            "{name}: {out}"
        );
    }
}

#[test]
fn a_missing_required_feature_fails_the_check_and_the_launch() {
    let o = ckpt()
        .arg("check")
        .env("CKPT_SIMULATE_MISSING", "userns")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("missing   userns"), "{out}");
    assert!(out.contains("cannot create a user namespace"), "{out}");
    assert!(
        out.contains("this node cannot run checkpointed jobs (missing: userns)"),
        "{out}"
    );

    let d = scratch("launch");
    let marker = d.join("ran");
    let o = ckpt()
        .args(["launch", "--dir"])
        .arg(d.join("ck"))
        .args(["--", "/bin/touch"])
        .arg(&marker)
        .env("CKPT_SIMULATE_MISSING", "pidns")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("this node cannot run checkpointed jobs"),
        "{err}"
    );
    assert!(
        err.contains("cannot create pid and mount namespaces"),
        "{err}"
    );
    assert!(!marker.exists(), "the program must not run");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_missing_optional_feature_is_one_line_and_the_job_runs() {
    let o = ckpt()
        .arg("check")
        .env("CKPT_SIMULATE_MISSING", "incremental")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("degraded  incremental"), "{out}");
    assert!(out.contains("every checkpoint is full"), "{out}");

    // A launch asking for incremental checkpoints says once that they are
    // off, and runs; its checkpoints are full.
    let d = scratch("incr");
    let o = ckpt()
        .args(["launch", "--incremental", "on", "--dir"])
        .arg(d.join("ck"))
        .args(["--", "/bin/true"])
        .env("CKPT_SIMULATE_MISSING", "incremental")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert_eq!(
        err.matches("incremental checkpoints are off on this node")
            .count(),
        1,
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn without_set_tid_the_node_is_degraded_and_restarts_use_ns_last_pid() {
    let o = ckpt()
        .arg("check")
        .env("CKPT_SIMULATE_MISSING", "set_tid")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("degraded  set_tid"), "{out}");
    assert!(out.contains("/proc/sys/kernel/ns_last_pid"), "{out}");
    assert!(out.contains("this node can run checkpointed jobs"), "{out}");
}
