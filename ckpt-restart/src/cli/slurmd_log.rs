//! What `ckpt slurm-task` says, also in the slurmd log of its node.
//!
//! The plugin hands the task the write end of a pipe that slurmstepd reads
//! (`CKPT_SLURMD_LOG_FD`, spank-plugin's `log_relay`; docs/slurm.md). Each
//! message is one write of one line, `E task N: ...` for a problem and
//! `I task N: ...` otherwise, at most [`MAX_LINE`] bytes, so that lines of
//! several tasks never interleave (a pipe write of up to 4096 bytes is
//! atomic). The descriptor is close-on-exec and nonblocking: the program
//! never inherits it, and a full pipe drops a line rather than stopping a
//! checkpoint.

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::sync::{Mutex, OnceLock};

/// The variable the plugin sets.
pub const ENV_FD: &str = "CKPT_SLURMD_LOG_FD";
/// Longest line written (the relay cuts at 4000 too).
pub const MAX_LINE: usize = 3900;

struct Sink {
    fd: OwnedFd,
    rank: u32,
}

static SINK: OnceLock<Sink> = OnceLock::new();
static LAST_PROBLEM: Mutex<String> = Mutex::new(String::new());

/// Takes the descriptor from the environment (before any thread starts)
/// and removes the variable, so that the program does not see it.
pub fn init(rank: u32) {
    let Some(v) = std::env::var_os(ENV_FD) else {
        return;
    };
    // SAFETY: single-threaded: called before any thread is started.
    unsafe { std::env::remove_var(ENV_FD) };
    let Some(fd) = v.to_str().and_then(|s| s.parse::<i32>().ok()) else {
        return;
    };
    // SAFETY: a zeroed stat is a valid buffer for fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if fd < 3 {
        return;
    }
    // SAFETY: fstat of a descriptor number into a local buffer.
    let r = unsafe { libc::fstat(fd, &mut st) };
    if r != 0 || st.st_mode & libc::S_IFMT != libc::S_IFIFO {
        return;
    }
    // SAFETY: the plugin handed this descriptor to us alone; from here it is owned.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let raw = fd.as_raw_fd();
    // SAFETY: fcntl on our own descriptor.
    unsafe {
        libc::fcntl(raw, libc::F_SETFD, libc::FD_CLOEXEC);
        let fl = libc::fcntl(raw, libc::F_GETFL);
        if fl >= 0 {
            libc::fcntl(raw, libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
    }
    let _ = SINK.set(Sink { fd, rank });
}

/// The line written for `msg` (one line, cut at [`MAX_LINE`] bytes).
fn format_line(problem: bool, rank: u32, msg: &str) -> Vec<u8> {
    let mut text = format!("{} task {rank}: ", if problem { 'E' } else { 'I' });
    for c in msg.chars() {
        if text.len() + c.len_utf8() > MAX_LINE {
            break;
        }
        text.push(if c == '\n' || c == '\r' { ' ' } else { c });
    }
    text.push('\n');
    text.into_bytes()
}

/// Sends `msg` to the slurmd log, when the plugin gave a descriptor. A
/// problem repeated word for word (a periodic checkpoint failing the same
/// way each time) is sent once.
pub fn line(problem: bool, msg: &str) {
    let Some(sink) = SINK.get() else { return };
    if problem {
        let mut last = LAST_PROBLEM.lock().unwrap_or_else(|e| e.into_inner());
        if *last == msg {
            return;
        }
        msg.clone_into(&mut last);
    }
    let bytes = format_line(problem, sink.rank, msg);
    // SAFETY: one write from a local buffer to our pipe.
    let _ = unsafe { libc::write(sink.fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_cut_and_tagged() {
        assert_eq!(
            format_line(true, 3, "checkpoint failed:\nfd 4"),
            b"E task 3: checkpoint failed: fd 4\n"
        );
        let long = "é".repeat(4000);
        let l = format_line(false, 0, &long);
        assert!(l.len() <= MAX_LINE + 1 && l.ends_with(b"\n"));
        assert!(std::str::from_utf8(&l).is_ok());
        assert_eq!(l.iter().filter(|&&b| b == b'\n').count(), 1);
    }
}
