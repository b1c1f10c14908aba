//! The slurmd log for what `ckpt slurm-task` says: a pipe from the task to
//! slurmstepd.
//!
//! A refused checkpoint is found out by `ckpt slurm-task`, a process of the
//! job's user: it says so on the job's stderr, but it cannot write to the
//! slurmd log, and slurmstepd must not read a file the user controls. So in
//! slurmstepd (root), once the options say the step is checkpointed, the
//! plugin makes a pipe and a thread that reads it; the write end is handed
//! to the task (`CKPT_SLURMD_LOG_FD`, inherited across the task's `execve`,
//! close-on-exec everywhere else) and `ckpt slurm-task` writes one line per
//! message: `E text` (a problem) or `I text`. The thread logs each line as
//! `ckpt: job J step S: text`, as an error or as information, with control
//! characters escaped ([`crate::spank`]); a line is at most [`MAX_LINE`]
//! bytes, and after [`MAX_LINES`] lines of one step the rest are counted,
//! not logged. Nothing is read but this pipe. See docs/slurm.md.

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};
use std::sync::Mutex;
use std::thread::JoinHandle;

use crate::spank;

/// The variable naming the write end in the task's environment.
pub const ENV_FD: &str = "CKPT_SLURMD_LOG_FD";
/// Longest line relayed (longer ones are cut).
pub const MAX_LINE: usize = 4000;
/// Lines relayed per step.
pub const MAX_LINES: usize = 200;

struct Relay {
    write: OwnedFd,
    stop: OwnedFd,
    thread: JoinHandle<()>,
}

static RELAY: Mutex<Option<Relay>> = Mutex::new(None);

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two descriptors into a local array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just made and are owned here.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Starts the relay of step `step` of job `job` (slurmstepd, once); the
/// write end's number, for [`task_fd`].
pub fn start(job: u32, step: u32) -> std::io::Result<RawFd> {
    let mut relay = RELAY.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(r) = relay.as_ref() {
        return Ok(r.write.as_raw_fd());
    }
    let (read, write) = pipe()?;
    let (stop_read, stop) = pipe()?;
    let fd = write.as_raw_fd();
    let prefix = if step == crate::task_env::BATCH_STEP {
        format!("job {job} batch step")
    } else {
        format!("job {job} step {step}")
    };
    let thread = std::thread::Builder::new()
        .name("ckpt-log".into())
        .spawn(move || run(&read, &stop_read, &prefix, &mut log_line))?;
    *relay = Some(Relay {
        write,
        stop,
        thread,
    });
    Ok(fd)
}

/// The write end for a task (in the forked task, before its `execve`): made
/// inheritable there only.
pub fn task_fd() -> Option<RawFd> {
    let relay = RELAY.lock().unwrap_or_else(|e| e.into_inner());
    let fd = relay.as_ref()?.write.as_raw_fd();
    // SAFETY: clearing FD_CLOEXEC on our own descriptor, in the task only.
    (unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } == 0).then_some(fd)
}

/// Stops the relay once what is in the pipe was logged (step end).
pub fn stop() {
    let relay = RELAY.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(r) = relay {
        drop(r.write);
        // SAFETY: one byte from a local buffer into our own pipe.
        let _ = unsafe { libc::write(r.stop.as_raw_fd(), b"x".as_ptr().cast(), 1) };
        let _ = r.thread.join();
    }
}

fn log_line(error: bool, text: &str) {
    if error {
        spank::log_error(text);
    } else {
        spank::log_info(text);
    }
}

/// What is read from the pipe once the step ends, at most: a writer that
/// keeps writing cannot hold slurmstepd.
const DRAIN_MAX: usize = 64 * 1024;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(1);

/// Reads lines from `read` until `stop` is readable (then what is left in
/// the pipe, up to [`DRAIN_MAX`] bytes and [`DRAIN_TIME`]) or every writer
/// is gone, and logs them through `log`.
fn run(read: &OwnedFd, stop: &OwnedFd, prefix: &str, log: &mut dyn FnMut(bool, &str)) {
    let mut lines = Lines::new(prefix);
    let mut buf = [0u8; 4096];
    let mut stopping: Option<std::time::Instant> = None;
    let mut drained = 0usize;
    loop {
        if stopping.is_some_and(|t0| drained >= DRAIN_MAX || t0.elapsed() >= DRAIN_TIME) {
            break;
        }
        let mut fds = [
            libc::pollfd {
                fd: read.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let timeout = if stopping.is_some() { 0 } else { -1 };
        // SAFETY: poll on a local array of two pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            break;
        }
        if fds[1].revents != 0 && stopping.is_none() {
            stopping = Some(std::time::Instant::now());
        }
        if fds[0].revents & (libc::POLLIN | libc::POLLHUP) == 0 {
            if stopping.is_some() {
                break;
            }
            continue;
        }
        // SAFETY: reading into a local buffer from our pipe.
        let got = unsafe { libc::read(read.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if got <= 0 {
            break;
        }
        if stopping.is_some() {
            drained += got as usize;
        }
        lines.feed(buf.get(..got as usize).unwrap_or(&[]), log);
    }
    lines.finish(log);
}

/// Splits the byte stream into lines, cuts and counts them.
struct Lines<'a> {
    prefix: &'a str,
    partial: Vec<u8>,
    logged: usize,
    dropped: usize,
}

impl<'a> Lines<'a> {
    fn new(prefix: &'a str) -> Self {
        Lines {
            prefix,
            partial: Vec::new(),
            logged: 0,
            dropped: 0,
        }
    }

    fn feed(&mut self, bytes: &[u8], log: &mut dyn FnMut(bool, &str)) {
        for &b in bytes {
            if b == b'\n' {
                let line = std::mem::take(&mut self.partial);
                self.emit(&line, log);
            } else if self.partial.len() < MAX_LINE {
                self.partial.push(b);
            }
        }
    }

    fn emit(&mut self, line: &[u8], log: &mut dyn FnMut(bool, &str)) {
        if line.is_empty() {
            return;
        }
        if self.logged >= MAX_LINES {
            self.dropped += 1;
            return;
        }
        self.logged += 1;
        let (error, text) = match line {
            [b'E', b' ', rest @ ..] => (true, rest),
            [b'I', b' ', rest @ ..] => (false, rest),
            other => (false, other),
        };
        log(
            error,
            &format!("{}: {}", self.prefix, String::from_utf8_lossy(text)),
        );
    }

    fn finish(&mut self, log: &mut dyn FnMut(bool, &str)) {
        let line = std::mem::take(&mut self.partial);
        self.emit(&line, log);
        if self.dropped > 0 {
            log(
                false,
                &format!(
                    "{}: {} more lines of ckpt not logged (at most {MAX_LINES} per step)",
                    self.prefix, self.dropped
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_cut_counted_and_classified() {
        let mut got: Vec<(bool, String)> = Vec::new();
        let mut log = |e: bool, t: &str| got.push((e, t.to_owned()));
        let mut l = Lines::new("job 5 step 0");
        l.feed(
            b"E task 0: checkpoint failed: fd 3\nI task 0: SIGUSR1 rec",
            &mut log,
        );
        l.feed(b"eived: checkpointing\n\nplain\n", &mut log);
        let long = vec![b'x'; MAX_LINE + 100];
        l.feed(&long, &mut log);
        l.feed(b"\n", &mut log);
        for _ in 0..MAX_LINES {
            l.feed(b"I more\n", &mut log);
        }
        l.feed(b"E unfinished", &mut log);
        l.finish(&mut log);
        assert_eq!(
            got[0],
            (true, "job 5 step 0: task 0: checkpoint failed: fd 3".into())
        );
        assert_eq!(
            got[1],
            (
                false,
                "job 5 step 0: task 0: SIGUSR1 received: checkpointing".into()
            )
        );
        assert_eq!(got[2], (false, "job 5 step 0: plain".into()));
        assert_eq!(got[3].1.len(), "job 5 step 0: ".len() + MAX_LINE);
        assert_eq!(got.len(), MAX_LINES + 1);
        assert_eq!(
            got.last().map(|g| g.1.as_str()),
            Some("job 5 step 0: 5 more lines of ckpt not logged (at most 200 per step)")
        );
    }

    #[test]
    fn a_writer_that_never_stops_cannot_hold_the_step_end() {
        let (read, write) = pipe().expect("pipe");
        let (stop_read, stop) = pipe().expect("pipe");
        let writer = std::thread::spawn(move || {
            let line = b"I spam\n";
            // SAFETY: writing a local buffer into our pipe, until its reader is gone.
            while unsafe { libc::write(write.as_raw_fd(), line.as_ptr().cast(), line.len()) } > 0 {}
        });
        // SAFETY: one byte into our own pipe.
        unsafe { libc::write(stop.as_raw_fd(), b"x".as_ptr().cast(), 1) };
        let t0 = std::time::Instant::now();
        let mut n = 0usize;
        run(&read, &stop_read, "job 1 step 0", &mut |_, _| n += 1);
        assert!(t0.elapsed() < std::time::Duration::from_secs(3));
        assert!(n <= MAX_LINES + 1, "{n}");
        drop(read);
        let _ = writer.join();
    }

    #[test]
    fn a_pipe_is_relayed_until_stopped() {
        let (read, write) = pipe().expect("pipe");
        let (stop_read, stop) = pipe().expect("pipe");
        let msg = b"E task 1: refused\nI task 1: fine\n";
        // SAFETY: writing a local buffer into our pipe.
        let n = unsafe { libc::write(write.as_raw_fd(), msg.as_ptr().cast(), msg.len()) };
        assert_eq!(n, msg.len() as isize);
        // SAFETY: as above.
        unsafe { libc::write(stop.as_raw_fd(), b"x".as_ptr().cast(), 1) };
        let mut got: Vec<(bool, String)> = Vec::new();
        run(&read, &stop_read, "job 1 step 2", &mut |e, t| {
            got.push((e, t.to_owned()))
        });
        assert_eq!(
            got,
            vec![
                (true, "job 1 step 2: task 1: refused".to_owned()),
                (false, "job 1 step 2: task 1: fine".to_owned())
            ]
        );
    }
}
