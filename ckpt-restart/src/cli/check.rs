//! `ckpt check`: can this node run checkpointed jobs? One line per kernel
//! feature the engine uses: `ok`, `missing` (required: jobs cannot be
//! checkpointed or restarted here) or `degraded` (optional: one feature is
//! off), with the kernel version that has it and what to change
//! (`docs/kernel.md` has the table). Exits 1 when something required is
//! missing.
//!
//! Each probe runs in a child process (namespaces are created there, never
//! in `ckpt` itself). `CKPT_SIMULATE_MISSING=name,name` makes the named
//! probes fail, so that the messages of a kernel without a feature can be
//! tested on one that has it (the names are the first column of the output).

use std::fmt::Write as _;

use super::Failure;

/// How much a feature matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Without it nothing can be checkpointed or restarted.
    Required,
    /// Without it one feature is off.
    Optional,
}

/// One probe's result.
#[derive(Debug)]
pub struct Finding {
    /// Short name (also for `CKPT_SIMULATE_MISSING`).
    pub name: &'static str,
    /// Required or optional.
    pub need: Need,
    /// Whether the feature works here.
    pub ok: bool,
    /// What it is for.
    pub what: &'static str,
    /// Why it failed and what to do (empty when ok).
    pub fix: String,
}

impl Finding {
    /// `ok`, `missing` or `degraded`.
    pub fn state(&self) -> &'static str {
        match (self.ok, self.need) {
            (true, _) => "ok",
            (false, Need::Required) => "missing",
            (false, Need::Optional) => "degraded",
        }
    }
}

fn simulated_missing(name: &str) -> bool {
    std::env::var("CKPT_SIMULATE_MISSING").is_ok_and(|v| v.split(',').any(|n| n.trim() == name))
}

fn errno_text() -> String {
    std::io::Error::last_os_error().to_string()
}

/// Runs `f` in a forked child; `Ok(())` when it returned 0.
fn in_child(f: impl FnOnce() -> i32) -> Result<(), String> {
    // SAFETY: fork in a process that is single-threaded at this point (the
    // check runs before any thread is started); the child only makes
    // system calls and exits with _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", errno_text()));
    }
    if pid == 0 {
        let code = f();
        // SAFETY: leaving the child without running destructors or atexit.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    if unsafe { libc::waitpid(pid, &mut status, 0) } != pid {
        return Err(format!("waitpid: {}", errno_text()));
    }
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        Ok(())
    } else if libc::WIFEXITED(status) {
        Err(std::io::Error::from_raw_os_error(libc::WEXITSTATUS(status)).to_string())
    } else {
        Err("the probe died".into())
    }
}

fn errno_code() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
        .clamp(1, 255)
}

fn sysctl(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

/// Why unprivileged user namespaces fail here, and the setting to change.
fn userns_fix(err: &str) -> String {
    let mut s = format!("cannot create a user namespace ({err}): ");
    if sysctl("/proc/sys/user/max_user_namespaces").as_deref() == Some("0") {
        s.push_str("user.max_user_namespaces is 0; set it above 0 (sysctl -w user.max_user_namespaces=15000)");
    } else if sysctl("/proc/sys/kernel/apparmor_restrict_unprivileged_userns").as_deref()
        == Some("1")
    {
        s.push_str(
            "AppArmor restricts unprivileged user namespaces \
             (kernel.apparmor_restrict_unprivileged_userns=1, Ubuntu 23.10 and later): give the \
             ckpt binary an AppArmor profile with `userns,`, or set the sysctl to 0",
        );
    } else if sysctl("/proc/sys/kernel/unprivileged_userns_clone").as_deref() == Some("0") {
        s.push_str(
            "kernel.unprivileged_userns_clone is 0 (Debian kernels before 5.10): set it to 1",
        );
    } else {
        s.push_str(
            "unprivileged user namespaces are disabled (user.max_user_namespaces, a security \
             module, or a kernel built without CONFIG_USER_NS)",
        );
    }
    s
}

/// Runs one probe: `run` says why it failed; `fix` turns that into the
/// line an admin reads (what is missing and what to change). A simulated
/// failure goes through `fix` too, so that it reads like the real one.
fn probe(
    name: &'static str,
    need: Need,
    what: &'static str,
    run: impl FnOnce() -> Result<(), String>,
    fix: impl FnOnce(&str) -> String,
) -> Finding {
    let r = if simulated_missing(name) {
        Err("simulated by CKPT_SIMULATE_MISSING".to_owned())
    } else {
        run()
    };
    Finding {
        name,
        need,
        ok: r.is_ok(),
        what,
        fix: r.err().map(|e| fix(&e)).unwrap_or_default(),
    }
}

/// Every probe, in the order the engine needs them.
pub fn findings() -> Vec<Finding> {
    let mut v = Vec::new();
    v.push(probe(
        "userns",
        Need::Required,
        "unprivileged user namespaces (the job's own ids and capabilities; Linux 3.8)",
        || {
            in_child(|| {
                // SAFETY: unshare in the probe child.
                if unsafe { libc::unshare(libc::CLONE_NEWUSER) } != 0 {
                    return errno_code();
                }
                0
            })
        },
        userns_fix,
    ));
    v.push(probe(
        "pidns",
        Need::Required,
        "pid and mount namespaces inside it (the same pids after a restart)",
        || {
            in_child(|| {
                // SAFETY: unshare in the probe child.
                if unsafe {
                    libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWPID | libc::CLONE_NEWNS)
                } != 0
                {
                    return errno_code();
                }
                0
            })
        },
        |e| format!("cannot create pid and mount namespaces in a user namespace ({e})"),
    ));
    v.push(set_tid_probe());
    v.push(probe(
        "checkpoint_restore",
        Need::Required,
        "CONFIG_CHECKPOINT_RESTORE: prctl(PR_SET_MM_MAP), ARCH_MAP_VDSO_64, kcmp",
        || {
            let mut size: u32 = 0;
            // SAFETY: PR_SET_MM_MAP_SIZE writes one unsigned int.
            let r = unsafe {
                libc::prctl(
                    libc::PR_SET_MM,
                    libc::PR_SET_MM_MAP_SIZE,
                    &mut size as *mut u32,
                    0,
                    0,
                )
            };
            if r != 0 || size == 0 {
                return Err(format!(
                    "prctl(PR_SET_MM_MAP) is not available ({})",
                    errno_text()
                ));
            }
            // SAFETY: getpid has no preconditions; kcmp compares our own fd 0.
            let me = unsafe { libc::getpid() };
            // SAFETY: kcmp only compares kernel objects.
            let k = unsafe { libc::syscall(libc::SYS_kcmp, me, me, 0, 0, 0) };
            if k < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS) {
                return Err("no kcmp system call".into());
            }
            Ok(())
        },
        |e| {
            format!(
                "{e}: the kernel was built without CONFIG_CHECKPOINT_RESTORE (or CONFIG_KCMP); \
                 use a kernel built with them (every major distribution's is)"
            )
        },
    ));
    v.push(probe(
        "timens",
        Need::Optional,
        "time namespaces (CLOCK_MONOTONIC and CLOCK_BOOTTIME never go backwards after a \
         restart; Linux 5.6)",
        || {
            in_child(|| {
                // SAFETY: unshare in the probe child.
                if unsafe { libc::unshare(libc::CLONE_NEWUSER) } != 0 {
                    return errno_code();
                }
                // SAFETY: as above; CLONE_NEWTIME is 0x80.
                if unsafe { libc::unshare(0x80) } != 0 {
                    return errno_code();
                }
                0
            })
        },
        |e| {
            format!(
                "no time namespace ({e}; Linux 5.6, CONFIG_TIME_NS): restarted programs see the \
                 monotonic clocks of the new boot"
            )
        },
    ));
    v.push(probe(
        "incremental",
        Need::Optional,
        "written-page tracking (incremental checkpoints; Linux 6.7)",
        || ckpt::preload::track::probe().map_err(str::to_owned),
        incremental_fix,
    ));
    v
}

fn kernel_version() -> (u32, u32) {
    let rel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut it = rel.trim().split(['.', '-']);
    let major = it.next().and_then(|x| x.parse().ok()).unwrap_or(0);
    let minor = it.next().and_then(|x| x.parse().ok()).unwrap_or(0);
    (major, minor)
}

/// The report, one line per feature.
pub fn report(f: &[Finding]) -> String {
    let mut s = String::new();
    let rel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let _ = writeln!(s, "ckpt check: Linux {}", rel.trim());
    for x in f {
        let _ = writeln!(s, "{:<9} {:<19} {}", x.state(), x.name, x.what);
        if !x.ok {
            let _ = writeln!(s, "{:<29} {}", "", x.fix);
        }
    }
    let missing: Vec<&str> = f
        .iter()
        .filter(|x| !x.ok && x.need == Need::Required)
        .map(|x| x.name)
        .collect();
    if missing.is_empty() {
        let _ = writeln!(s, "this node can run checkpointed jobs");
    } else {
        let _ = writeln!(
            s,
            "this node cannot run checkpointed jobs (missing: {})",
            missing.join(", ")
        );
    }
    s
}

/// The required features that are missing, as one message (empty when
/// none): what `ckpt launch` and `ckpt restart` say before giving up.
pub fn required_problems() -> Option<String> {
    let f = findings();
    let bad: Vec<String> = f
        .iter()
        .filter(|x| !x.ok && x.need == Need::Required)
        .map(|x| format!("{}: {}", x.what, x.fix))
        .collect();
    (!bad.is_empty()).then(|| {
        format!(
            "this node cannot run checkpointed jobs: {} (run `ckpt check` for the full report)",
            bad.join("; ")
        )
    })
}

/// Whether written pages can be tracked here (incremental checkpoints), as
/// the one line to print when they cannot.
pub fn incremental_unavailable() -> Option<String> {
    findings_named("incremental")
        .filter(|f| !f.ok)
        .map(|f| format!("incremental checkpoints are off on this node: {}", f.fix))
}

fn findings_named(name: &str) -> Option<Finding> {
    if name == "incremental" {
        return Some(probe(
            "incremental",
            Need::Optional,
            "written-page tracking (incremental checkpoints; Linux 6.7)",
            || ckpt::preload::track::probe().map_err(str::to_owned),
            incremental_fix,
        ));
    }
    if name == "set_tid" {
        return Some(set_tid_probe());
    }
    findings().into_iter().find(|f| f.name == name)
}

/// clone3 with set_tid: optional, ns_last_pid replaces it.
fn set_tid_probe() -> Finding {
    probe(
        "set_tid",
        Need::Optional,
        "clone3 with set_tid (processes and threads get their ids back; Linux 5.5)",
        || {
            // SAFETY: clone3 with a null argument only validates it: EINVAL
            // when the call exists, ENOSYS when it does not.
            let r = unsafe { libc::syscall(libc::SYS_clone3, 0usize, 0usize) };
            let e = std::io::Error::last_os_error().raw_os_error();
            if r == -1 && e == Some(libc::ENOSYS) {
                return Err("no clone3 system call".into());
            }
            let (major, minor) = kernel_version();
            if (major, minor) < (5, 5) {
                return Err(format!("Linux {major}.{minor} has clone3 without set_tid"));
            }
            Ok(())
        },
        set_tid_fix,
    )
}

fn set_tid_fix(e: &str) -> String {
    format!(
        "{e}: a restart sets process and thread ids through /proc/sys/kernel/ns_last_pid \
         instead, one at a time under a lock (Linux 5.5 has clone3 with set_tid)"
    )
}

/// Why a restart chooses ids through `ns_last_pid`, when it does
/// ([`crate::restore::pids`]).
pub fn set_tid_unavailable() -> Option<String> {
    findings_named("set_tid").filter(|f| !f.ok).map(|f| f.fix)
}

fn incremental_fix(e: &str) -> String {
    format!(
        "{e}: every checkpoint is full (--incremental and plugstack incremental= have no \
         effect; Linux 6.7 has it)"
    )
}

/// The job's namespaces (`ns::fork_into_namespaces`), or, when they cannot
/// be made, a message naming each missing kernel feature and the setting
/// to change. `CKPT_SIMULATE_MISSING` is honoured here too.
pub fn namespaces_or_diagnosis() -> Result<Option<nix::unistd::Pid>, Failure> {
    let simulated = std::env::var_os("CKPT_SIMULATE_MISSING").is_some();
    if simulated && let Some(p) = required_problems() {
        return Err(Failure { msg: p, code: 1 });
    }
    crate::ns::fork_into_namespaces().map_err(|e| Failure {
        msg: required_problems().unwrap_or_else(|| e.to_string()),
        code: 1,
    })
}

/// `ckpt check`.
pub fn run(args: &[std::ffi::OsString]) -> Result<i32, Failure> {
    if let Some(a) = args.first() {
        return Err(Failure {
            msg: format!("check takes no arguments (got {})", a.to_string_lossy()),
            code: 2,
        });
    }
    let f = findings();
    print!("{}", report(&f));
    Ok(if f.iter().any(|x| !x.ok && x.need == Need::Required) {
        1
    } else {
        0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_machine_passes_and_states_read_right() {
        let f = findings();
        let text = report(&f);
        for name in [
            "userns",
            "pidns",
            "set_tid",
            "checkpoint_restore",
            "timens",
            "incremental",
        ] {
            assert!(text.contains(name), "{text}");
        }
        let x = Finding {
            name: "x",
            need: Need::Optional,
            ok: false,
            what: "w",
            fix: "f".into(),
        };
        assert_eq!(x.state(), "degraded");
    }
}
