//! The job's process tree, read from the host's /proc.
//!
//! Every process of a job descends from its init (pid 1 of the job's pid
//! namespace). The coordinator walks `/proc/<pid>/task/*/children` from the
//! init's host pid, and reads each process's namespace pid (`NSpid`), state,
//! and whether it catches the stop signal (`SigCgt`), which tells whether
//! libckpt is loaded in it.

use std::fs;

use ckpt::coord::STOP_SIGNAL;

/// One process of the job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Pid on the host.
    pub host_pid: i32,
    /// Pid in the job's namespace.
    pub pid: i32,
    /// Parent pid in the job's namespace.
    pub ppid: i32,
    /// Exited but not waited for.
    pub zombie: bool,
    /// Its exit status (zombies), as waitpid reports it.
    pub exit_status: i32,
    /// It catches the stop signal (libckpt is loaded and initialised).
    pub catches: bool,
    /// Executable (for messages).
    pub exe: String,
}

/// Parse the parts of `/proc/PID/status` we use: (ns pid, ns ppid, zombie, catches).
pub fn parse_status(text: &str) -> Option<(i32, i32, bool, bool)> {
    let mut nspid = None;
    let mut zombie = false;
    let mut catches = false;
    let mut ppid = 0;
    for l in text.lines() {
        if let Some(v) = l.strip_prefix("NSpid:") {
            nspid = v.split_whitespace().last().and_then(|x| x.parse().ok());
        } else if let Some(v) = l.strip_prefix("State:") {
            zombie = v.trim_start().starts_with('Z');
        } else if let Some(v) = l.strip_prefix("SigCgt:") {
            let mask = u64::from_str_radix(v.trim(), 16).unwrap_or(0);
            catches = mask & (1u64 << (STOP_SIGNAL - 1)) != 0;
        } else if let Some(v) = l.strip_prefix("PPid:") {
            ppid = v.trim().parse().unwrap_or(0);
        }
    }
    Some((nspid?, ppid, zombie, catches))
}

fn children(host_pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(format!("/proc/{host_pid}/task")) else {
        return out;
    };
    for t in rd.flatten() {
        if let Ok(s) = fs::read_to_string(t.path().join("children")) {
            out.extend(s.split_whitespace().filter_map(|x| x.parse::<i32>().ok()));
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// All descendants of `init_host_pid` (not the init itself).
pub fn members(init_host_pid: i32) -> Vec<Member> {
    let mut out: Vec<Member> = Vec::new();
    let mut stack = children(init_host_pid);
    let mut host_to_ns = std::collections::HashMap::new();
    host_to_ns.insert(init_host_pid, 1);
    // parents first: process children after their parent is known
    let mut parent_of: std::collections::HashMap<i32, i32> =
        stack.iter().map(|&c| (c, init_host_pid)).collect();
    while let Some(h) = stack.pop() {
        let Ok(text) = fs::read_to_string(format!("/proc/{h}/status")) else {
            continue;
        };
        let Some((pid, _host_ppid, zombie, catches)) = parse_status(&text) else {
            continue;
        };
        host_to_ns.insert(h, pid);
        let ppid = parent_of
            .get(&h)
            .and_then(|p| host_to_ns.get(p))
            .copied()
            .unwrap_or(1);
        let exit_status = if zombie { zombie_status(h) } else { 0 };
        let exe = fs::read_link(format!("/proc/{h}/exe"))
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| {
                fs::read_to_string(format!("/proc/{h}/comm"))
                    .unwrap_or_default()
                    .trim()
                    .to_string()
            });
        out.push(Member {
            host_pid: h,
            pid,
            ppid,
            zombie,
            exit_status,
            catches,
            exe,
        });
        for c in children(h) {
            parent_of.insert(c, h);
            stack.push(c);
        }
    }
    out.sort_by_key(|m| m.pid);
    out
}

/// A zombie's wait status from `/proc/PID/stat` field 52 (exit_code).
fn zombie_status(host_pid: i32) -> i32 {
    let Ok(s) = fs::read(format!("/proc/{host_pid}/stat")) else {
        return 0;
    };
    ckpt::signal_safe::procfs::stat_field(&s, 52)
        .map(|v| v as i32)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_parsing() {
        let t = "Name:\tbash\nState:\tS (sleeping)\nPPid:\t7\nNSpid:\t4242\t2\nSigCgt:\t2000000000010002\n";
        assert_eq!(parse_status(t), Some((2, 7, false, true)));
        let z = "State:\tZ (zombie)\nNSpid:\t5\t3\nSigCgt:\t0000000000000000\n";
        assert_eq!(parse_status(z), Some((3, 0, true, false)));
        assert_eq!(parse_status("State:\tR\n"), None);
    }

    #[test]
    fn finds_own_children() {
        let mut c = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        // SAFETY: getpid has no preconditions.
        let me = unsafe { libc::getpid() };
        let m = members(me);
        assert!(
            m.iter().any(|x| x.host_pid == c.id() as i32 && !x.zombie),
            "{m:?}"
        );
        c.kill().unwrap();
        c.wait().unwrap();
    }
}
