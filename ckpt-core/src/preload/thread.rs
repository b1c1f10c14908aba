//! The checkpoint thread: talks to the coordinator and runs checkpoints.
//!
//! It is created by the constructor with every signal blocked, so the
//! program's signals never land on it. A checkpoint:
//! 1. sends [`STOP_SIGNAL`] to every other thread (re-scanning
//!    `/proc/self/task` until no new thread appears) and waits until all
//!    are parked in the stop handler, or fails after a timeout;
//! 2. sends the stop signal to itself: its handler records its own frame and
//!    writes the image (so this thread restores like every other);
//! 3. releases the threads and answers the coordinator.
//!
//! After a restore this thread wakes up inside step 2, sees that
//! [`RESTORE_INFO`]'s counter moved, and reconnects to the new coordinator
//! instead of answering the old one.
//!
//! Steps 1–3 are **async-signal-safe** (the stopped threads may hold any
//! glibc lock); the connection setup before the first checkpoint is not
//! on that path but uses the same raw calls anyway.

use core::fmt::Write as _;
use core::sync::atomic::{AtomicI32, AtomicU64, Ordering};

use super::capture;
use super::stop::{self, CKPT_TID, NSLOTS, PARKED, RELEASE, STOPPING};
use crate::coord::{MAX_MSG, STOP_SIGNAL};
use crate::signal_safe::buf::StackBuf;
use crate::signal_safe::procfs;
use crate::signal_safe::raw::{self, Errno};

/// Written by the restorer: tells the restored checkpoint thread that it was
/// restored and where its new coordinator listens.
#[repr(C)]
pub struct RestoreInfo {
    /// Incremented by every restore.
    pub counter: AtomicU64,
    /// NUL-terminated socket path of the new coordinator.
    pub socket: [u8; 256],
}

/// The restore hand-over block (its address is recorded in every manifest).
#[unsafe(no_mangle)]
pub static mut CKPT_RESTORE_INFO: RestoreInfo = RestoreInfo { counter: AtomicU64::new(0), socket: [0; 256] };

fn restore_info() -> &'static RestoreInfo {
    // SAFETY: only the restorer (while no program code runs) writes the
    // socket bytes; the counter is atomic. A shared reference is sound.
    unsafe { &*core::ptr::addr_of!(CKPT_RESTORE_INFO) }
}

/// Socket path of the coordinator (NUL-terminated), set by the constructor.
pub static mut SOCKET_PATH: [u8; 256] = [0; 256];
/// Our connection to the coordinator.
pub static CONN_FD: AtomicI32 = AtomicI32::new(-1);

/// Target directory of the checkpoint in progress (NUL-terminated).
static mut TARGET_DIR: [u8; MAX_MSG] = [0; MAX_MSG];
/// Result of the write done in the handler: bytes, or negative errno-like code.
static WRITE_RESULT: AtomicU64 = AtomicU64::new(0);
static WRITE_ERR_STEP: AtomicU64 = AtomicU64::new(0);

const STOP_TIMEOUT_NS: u64 = 10_000_000_000;

fn connect(path: &[u8]) -> Result<i32, Errno> {
    // SAFETY: plain socket creation.
    let fd = unsafe {
        raw::syscall3(raw::nr::SOCKET, libc::AF_UNIX as usize, (libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC) as usize, 0)
    }? as i32;
    let mut addr: libc::sockaddr_un = libc_zeroed_sockaddr();
    addr.sun_family = libc::AF_UNIX as u16;
    let n = path.iter().position(|&c| c == 0).unwrap_or(path.len());
    if n >= addr.sun_path.len() {
        raw::close(fd);
        return Err(Errno(libc::ENAMETOOLONG));
    }
    for (d, s) in addr.sun_path.iter_mut().zip(path.iter().take(n)) {
        *d = *s as libc::c_char;
    }
    // SAFETY: addr is a valid sockaddr_un of the given size.
    let r = unsafe {
        raw::syscall3(raw::nr::CONNECT, fd as usize, &addr as *const libc::sockaddr_un as usize,
            core::mem::size_of::<libc::sockaddr_un>())
    };
    if let Err(e) = r {
        raw::close(fd);
        return Err(e);
    }
    Ok(fd)
}

fn libc_zeroed_sockaddr() -> libc::sockaddr_un {
    // SAFETY: sockaddr_un is plain old data; all-zero is a valid value.
    unsafe { core::mem::zeroed() }
}

fn send(fd: i32, msg: &[u8]) {
    // SAFETY: msg is valid for its length.
    let _ = unsafe {
        raw::syscall6(raw::nr::SENDTO, fd as usize, msg.as_ptr() as usize, msg.len(), libc::MSG_NOSIGNAL as usize, 0, 0)
    };
}

fn hello(fd: i32) {
    let mut m = StackBuf::<512>::new();
    let mut exe = [0u8; 400];
    let n = raw::readlink(b"/proc/self/exe\0", &mut exe).unwrap_or(0);
    let _ = write!(m, "HELLO {} ", raw::getpid());
    m.push(exe.get(..n).unwrap_or(&[]));
    send(fd, m.as_bytes());
}

/// Body of the checkpoint thread.
pub extern "C" fn main(_arg: *mut libc::c_void) -> *mut libc::c_void {
    CKPT_TID.store(raw::gettid(), Ordering::Release);
    // SAFETY: SOCKET_PATH is written once by the constructor before this
    // thread starts, and afterwards only by this thread.
    let mut path: [u8; 256] = unsafe { *core::ptr::addr_of!(SOCKET_PATH) };
    loop {
        let fd = match connect(&path) {
            Ok(fd) => fd,
            Err(_) => return core::ptr::null_mut(), // no coordinator: stay inert
        };
        CONN_FD.store(fd, Ordering::Release);
        hello(fd);
        let mut buf = [0u8; MAX_MSG];
        loop {
            // SAFETY: buf is valid for its length.
            let n = match unsafe { raw::syscall6(raw::nr::RECVFROM, fd as usize, buf.as_mut_ptr() as usize, buf.len(), 0, 0, 0) } {
                Ok(0) => break,
                Ok(n) => n,
                Err(Errno(libc::EINTR)) => continue,
                Err(_) => break,
            };
            let msg = buf.get(..n).unwrap_or(&[]);
            if let Some(dir) = msg.strip_prefix(b"CKPT ") {
                let before = restore_info().counter.load(Ordering::Acquire);
                let outcome = checkpoint(dir);
                if restore_info().counter.load(Ordering::Acquire) != before {
                    // We are the restored copy: the old connection is gone.
                    break;
                }
                reply(fd, outcome);
            }
        }
        raw::close(fd);
        CONN_FD.store(-1, Ordering::Release);
        // Restored (or coordinator went away): reconnect where the restorer says.
        let ri = restore_info();
        if ri.socket[0] == 0 {
            return core::ptr::null_mut();
        }
        path = ri.socket;
    }
}

enum Outcome {
    Done { bytes: u64, pause_us: u64 },
    Fail(StackBuf<512>),
}

fn reply(fd: i32, o: Outcome) {
    let mut m = StackBuf::<1024>::new();
    match o {
        Outcome::Done { bytes, pause_us } => {
            let _ = write!(m, "DONE {} {} {}", raw::getpid(), bytes, pause_us);
        }
        Outcome::Fail(why) => {
            let _ = write!(m, "FAIL {} ", raw::getpid());
            m.push(why.as_bytes());
        }
    }
    send(fd, m.as_bytes());
}

fn list_tasks(out: &mut [i32; stop::MAX_THREADS], n: &mut usize) -> Result<(), Errno> {
    *n = 0;
    let fd = raw::open(b"/proc/self/task\0", libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC, 0)?;
    let mut buf = [0u8; 8192];
    loop {
        let len = match raw::getdents64(fd, &mut buf) {
            Ok(0) => break,
            Ok(l) => l,
            Err(e) => {
                raw::close(fd);
                return Err(e);
            }
        };
        let mut off = 0usize;
        while off + 19 < len {
            let reclen = u16::from_le_bytes([buf.get(off + 16).copied().unwrap_or(0), buf.get(off + 17).copied().unwrap_or(0)]) as usize;
            if reclen == 0 {
                break;
            }
            let name = buf.get(off + 19..off + reclen).unwrap_or(&[]);
            let name = name.split(|&c| c == 0).next().unwrap_or(&[]);
            if let Some(tid) = procfs::dec(name) {
                if let Some(slot) = out.get_mut(*n) {
                    *slot = tid as i32;
                    *n += 1;
                }
            }
            off += reclen;
        }
    }
    raw::close(fd);
    Ok(())
}

fn fail(msg: &str, tid: i32) -> Outcome {
    let mut b = StackBuf::<512>::new();
    let _ = write!(b, "{msg}");
    if tid != 0 {
        let _ = write!(b, " (thread {tid})");
    }
    Outcome::Fail(b)
}

fn release_all() {
    STOPPING.store(0, Ordering::Release);
    RELEASE.fetch_add(1, Ordering::AcqRel);
    raw::futex_wake_all(&RELEASE);
}

/// Run one checkpoint into `dir`. **Async-signal-safe** once threads are stopped.
fn checkpoint(dir: &[u8]) -> Outcome {
    let t0 = raw::clock_ns(libc::CLOCK_MONOTONIC);
    // SAFETY: only this thread touches TARGET_DIR, and never concurrently.
    let target = unsafe { &mut *core::ptr::addr_of_mut!(TARGET_DIR) };
    if dir.len() + 1 > target.len() {
        return fail("checkpoint directory path too long", 0);
    }
    target.fill(0);
    if let Some(t) = target.get_mut(..dir.len()) {
        t.copy_from_slice(dir);
    }

    stop::reset();
    STOPPING.store(1, Ordering::Release);
    let me = raw::gettid();
    let pid = raw::getpid();
    let mut signaled = [0i32; stop::MAX_THREADS];
    let mut nsig = 0usize;
    let mut tasks = [0i32; stop::MAX_THREADS];
    let mut ntasks = 0usize;
    loop {
        if list_tasks(&mut tasks, &mut ntasks).is_err() {
            release_all();
            return fail("cannot list /proc/self/task", 0);
        }
        let mut new = 0;
        for &t in tasks.iter().take(ntasks) {
            if t == me || signaled.iter().take(nsig).any(|&s| s == t) {
                continue;
            }
            if nsig >= stop::MAX_THREADS {
                release_all();
                return fail("too many threads (more than 1024) to checkpoint", 0);
            }
            if raw::tgkill(pid, t, STOP_SIGNAL).is_ok() {
                if let Some(s) = signaled.get_mut(nsig) {
                    *s = t;
                }
                nsig += 1;
                new += 1;
            }
        }
        // Wait for everybody signalled so far.
        loop {
            let parked = PARKED.load(Ordering::Acquire);
            if parked as usize >= nsig {
                break;
            }
            if raw::clock_ns(libc::CLOCK_MONOTONIC).saturating_sub(t0) > STOP_TIMEOUT_NS {
                // Find one that did not park, for the message.
                let mut missing = 0;
                for &t in signaled.iter().take(nsig) {
                    let seen = stop::SLOTS.iter().take(NSLOTS.load(Ordering::Acquire) as usize).any(|s| s.tid.load(Ordering::Relaxed) == t);
                    if !seen {
                        missing = t;
                        break;
                    }
                }
                release_all();
                return fail("a thread did not stop within 10 s; it blocks the checkpoint signal (62) or is stuck in uninterruptible sleep; the checkpoint was cancelled and the program keeps running", missing);
            }
            let _ = raw::futex_wait(&PARKED, parked, Some(10_000_000));
        }
        if new == 0 {
            break;
        }
        // Threads may have been created meanwhile: scan again.
    }
    if NSLOTS.load(Ordering::Acquire) as usize > stop::MAX_THREADS {
        release_all();
        return fail("too many threads (more than 1024) to checkpoint", 0);
    }
    let t_stopped = raw::clock_ns(libc::CLOCK_MONOTONIC);

    // Stop ourselves: the handler writes the image.
    WRITE_RESULT.store(0, Ordering::Release);
    WRITE_ERR_STEP.store(0, Ordering::Release);
    let bit = 1u64 << (STOP_SIGNAL - 1);
    let _ = raw::sigprocmask(libc::SIG_UNBLOCK, bit);
    let _ = raw::tgkill(pid, me, STOP_SIGNAL);
    let _ = raw::sigprocmask(libc::SIG_BLOCK, bit);

    let restored = restore_info().counter.load(Ordering::Acquire);
    let _ = restored;
    let t_end = raw::clock_ns(libc::CLOCK_MONOTONIC);
    release_all();
    let _ = t_stopped;
    let mut step = WRITE_ERR_STEP.load(Ordering::Acquire);
    if step == 0 {
        // SAFETY: TARGET_DIR is only written by this thread.
        let target = unsafe { &*core::ptr::addr_of!(TARGET_DIR) };
        if let Err((st, e)) = capture::sync_image(target.get(..dir.len()).unwrap_or(&[])) {
            WRITE_RESULT.store(e.raw() as u64, Ordering::Release);
            step = st;
        }
    }
    if step != 0 {
        let errno = WRITE_RESULT.load(Ordering::Acquire);
        let mut b = StackBuf::<512>::new();
        let _ = write!(b, "writing the image failed while {}: ", capture::step_name(step));
        let _ = write!(b, "{}", ErrnoText(errno as i32));
        return Outcome::Fail(b);
    }
    Outcome::Done { bytes: WRITE_RESULT.load(Ordering::Acquire), pause_us: t_end.saturating_sub(t0) / 1000 }
}

/// Called from the stop handler on the checkpoint thread.
pub fn write_from_handler(uc: u64) {
    let _ = stop::record_self(uc);
    // SAFETY: TARGET_DIR was filled by checkpoint() before the signal; nobody writes it now.
    let dir = unsafe { &*core::ptr::addr_of!(TARGET_DIR) };
    let n = dir.iter().position(|&c| c == 0).unwrap_or(dir.len());
    match capture::write_image(dir.get(..n).unwrap_or(&[]), CONN_FD.load(Ordering::Acquire)) {
        Ok(bytes) => WRITE_RESULT.store(bytes, Ordering::Release),
        Err((step, e)) => {
            WRITE_RESULT.store(e.raw() as u64, Ordering::Release);
            WRITE_ERR_STEP.store(step, Ordering::Release);
        }
    }
}

/// Formats an errno as text without allocating.
pub struct ErrnoText(pub i32);

impl core::fmt::Display for ErrnoText {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let s = match self.0 {
            libc::ENOSPC => "no space left on device",
            libc::EDQUOT => "disk quota exceeded",
            libc::EACCES => "permission denied",
            libc::EROFS => "read-only file system",
            libc::ENOENT => "no such file or directory (was the checkpoint directory removed?)",
            libc::ENOMEM => "out of memory",
            libc::EIO => "input/output error",
            libc::EEXIST => "file exists",
            libc::EFAULT => "bad address",
            _ => "",
        };
        if s.is_empty() { write!(f, "errno {}", self.0) } else { write!(f, "{s} (errno {})", self.0) }
    }
}
