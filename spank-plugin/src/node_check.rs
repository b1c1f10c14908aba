//! The node check when slurmd loads the plugin: `ckpt check` (the
//! `ckpt=` of plugstack.conf) runs once, as the unprivileged user `nobody`
//! (a probe run as root would always find user namespaces allowed), and
//! each problem it reports becomes one line of the slurmd log; a node that
//! cannot run checkpointed jobs says so at once, not at the first job.
//!
//! It never stops slurmd from starting: a check that cannot run, fails or
//! takes longer than [`DEADLINE`] is logged and slurmd goes on.

use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// Longest wait for `ckpt check`.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// uid and gid the check runs as when slurmd is root (`nobody`).
const NOBODY: u32 = 65534;

/// One line for the slurmd log.
#[derive(Debug, PartialEq, Eq)]
pub struct Finding {
    /// An error (the node cannot run checkpointed jobs) or information.
    pub error: bool,
    /// The text, without the `ckpt:` prefix the logger adds.
    pub text: String,
}

/// The log lines of `ckpt check`'s output: one per `missing` or `degraded`
/// feature (with its explanation), then the verdict.
pub fn summarize(output: &str, exit_ok: bool) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut lines = output.lines().peekable();
    while let Some(line) = lines.next() {
        let mut words = line.split_whitespace();
        let (Some(status), Some(name)) = (words.next(), words.next()) else {
            continue;
        };
        if status != "missing" && status != "degraded" {
            continue;
        }
        // The explanation is on the indented line below.
        let why = lines
            .next_if(|l| l.starts_with(' '))
            .map(str::trim)
            .unwrap_or_default();
        out.push(Finding {
            error: status == "missing",
            text: format!("node check: {status} {name}: {why}"),
        });
    }
    let verdict = output
        .lines()
        .rev()
        .find(|l| l.starts_with("this node"))
        .unwrap_or(if exit_ok {
            "this node can run checkpointed jobs"
        } else {
            "ckpt check failed without a verdict"
        });
    out.push(Finding {
        error: !exit_ok,
        text: format!("node check: {verdict}"),
    });
    out
}

/// Runs `ckpt_bin check` as described in the module comment.
pub fn run(ckpt_bin: &str) -> Vec<Finding> {
    match run_check(ckpt_bin) {
        Ok((output, ok)) => summarize(&output, ok),
        Err(e) => vec![Finding {
            error: true,
            text: format!("node check: cannot run `{ckpt_bin} check`: {e}"),
        }],
    }
}

fn run_check(ckpt_bin: &str) -> Result<(String, bool), String> {
    let path = CString::new(ckpt_bin).map_err(|_| "the path holds a NUL byte".to_owned())?;
    let argv = [c"ckpt".as_ptr(), c"check".as_ptr(), std::ptr::null()];
    let envp = [c"PATH=/usr/bin:/bin".as_ptr(), std::ptr::null()];
    let mut fds = [0i32; 2];
    // SAFETY: fds has room for the two descriptors pipe2 returns.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: pipe2 returned two new descriptors that nothing else owns.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    // SAFETY: the child calls only async-signal-safe functions (setgroups,
    // setgid, setuid, dup2, execve, _exit) on memory prepared before fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: see above; every pointer was built before fork and stays
        // valid in the child's copy of the address space.
        unsafe {
            if root
                && (libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(NOBODY) != 0
                    || libc::setuid(NOBODY) != 0)
            {
                libc::_exit(126);
            }
            libc::dup2(wr.as_raw_fd(), 1);
            libc::dup2(wr.as_raw_fd(), 2);
            libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
            libc::_exit(127);
        }
    }
    drop(wr);
    let output = read_until(rd, Instant::now() + DEADLINE);
    let mut status = 0;
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        // SAFETY: waiting for our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            break;
        }
        if r < 0 || Instant::now() > deadline {
            // SAFETY: our own child; reaped right after.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return Err(format!("it did not finish within {} s", DEADLINE.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 127 {
        return Err("it could not be executed".into());
    }
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 126 {
        return Err("cannot switch to the user nobody".into());
    }
    Ok((
        output,
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
    ))
}

/// Reads `fd` to its end or until `deadline`, at most 64 KiB.
fn read_until(fd: OwnedFd, deadline: Instant) -> String {
    let mut file = std::fs::File::from(fd);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while out.len() < 1 << 16 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let mut p = libc::pollfd {
            fd: file.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut p, 1, left.as_millis().min(i32::MAX as u128) as i32) };
        if r <= 0 {
            if r < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            break;
        }
        match file.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(buf.get(..n).unwrap_or_default()),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIMULATED: &str = r"ckpt check: Linux 6.18.44
ok        pidns               pid and mount namespaces inside it
missing   userns              unprivileged user namespaces (Linux 3.8)
                              cannot create a user namespace: disabled (user.max_user_namespaces)
degraded  incremental         written-page tracking (incremental checkpoints; Linux 6.7)
                              every checkpoint is full
this node cannot run checkpointed jobs (missing: userns)
";

    #[test]
    fn each_problem_is_one_line_then_the_verdict() {
        let f = summarize(SIMULATED, false);
        assert_eq!(
            f,
            vec![
                Finding {
                    error: true,
                    text: "node check: missing userns: cannot create a user namespace: disabled \
                           (user.max_user_namespaces)"
                        .into()
                },
                Finding {
                    error: false,
                    text: "node check: degraded incremental: every checkpoint is full".into()
                },
                Finding {
                    error: true,
                    text: "node check: this node cannot run checkpointed jobs (missing: userns)"
                        .into()
                },
            ]
        );
    }

    #[test]
    fn a_good_node_is_one_line() {
        let f = summarize(
            "ok        userns              x\nthis node can run checkpointed jobs\n",
            true,
        );
        assert_eq!(
            f,
            vec![Finding {
                error: false,
                text: "node check: this node can run checkpointed jobs".into()
            }]
        );
    }

    #[test]
    fn a_missing_binary_is_reported() {
        let f = run("/nonexistent/ckpt");
        assert_eq!(f.len(), 1);
        assert!(
            f[0].error && f[0].text.contains("could not be executed"),
            "{f:?}"
        );
    }
}
