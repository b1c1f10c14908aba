//! The per-process checkpoint leader.
//!
//! There is no helper thread in the program. The coordinator sends
//! [`STOP_SIGNAL`] to the *process* (`kill`); the kernel picks one thread
//! that does not block it, and that thread's handler becomes the leader:
//! 1. it stops every other thread of the process (`tgkill`, re-scanning
//!    `/proc/self/task` until no new thread appears) and waits until all are
//!    parked, or gives up after a timeout;
//! 2. it connects to the coordinator and says `STOPPED`; once every process
//!    of the job is stopped the coordinator says `WRITE <dir>`;
//! 3. it writes this process's image and says `DONE` (or `FAIL why`);
//! 4. on `RELEASE` it lets the threads go, fsyncs the image, says `SYNCED`
//!    and returns from the handler.
//!
//! The leader's own registers are those of the frame the coordinator's
//! signal created, so on restore it resumes where the program was
//! interrupted, like every other thread.
//!
//! Everything here is **async-signal-safe**.

use core::fmt::Write as _;
use core::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};

use super::capture;
use super::fork_advice;
use super::stop::{self, NSLOTS, PARKED, RELEASE, STOPPING};
use crate::coord::{MAX_MSG, STOP_SIGNAL};
use crate::signal_safe::buf::{MmapBuf, StackBuf};
use crate::signal_safe::procfs;
use crate::signal_safe::raw::{self, Errno};

/// Written by the restorer: tells the restored program where its new
/// coordinator listens.
#[repr(C)]
pub struct RestoreInfo {
    /// Incremented by every restore.
    pub counter: AtomicU64,
    /// NUL-terminated socket path of the new coordinator.
    pub socket: [u8; 256],
}

/// The restore hand-over block (its address is recorded in every manifest).
#[unsafe(no_mangle)]
pub static mut CKPT_RESTORE_INFO: RestoreInfo = RestoreInfo {
    counter: AtomicU64::new(0),
    socket: [0; 256],
};

/// Socket path of the coordinator (NUL-terminated), set by the constructor.
pub static mut SOCKET_PATH: [u8; 256] = [0; 256];

/// 0: no leader runs in this process; 1: one runs; 2: one runs, and the
/// coordinator's signal came meanwhile: that request is led as soon as the
/// running one is done ([`lead`]). One word, so that no request is lost
/// between a leader's last look and its exit.
static LEADING: AtomicU32 = AtomicU32::new(0);

const STOP_TIMEOUT_NS: u64 = 10_000_000_000;
/// How long a stopped process waits for the coordinator's next word.
const COORD_TIMEOUT_S: i64 = 900;

/// The coordinator socket of the current run (NUL-terminated).
pub fn current_socket() -> [u8; 256] {
    socket_path()
}

fn socket_path() -> [u8; 256] {
    // SAFETY: the restorer writes CKPT_RESTORE_INFO.socket while no program
    // code runs; SOCKET_PATH is written once by the constructor. Plain reads.
    unsafe {
        let ri = &*core::ptr::addr_of!(CKPT_RESTORE_INFO);
        if ri.counter.load(Ordering::Acquire) != 0 && ri.socket[0] != 0 {
            return ri.socket;
        }
        *core::ptr::addr_of!(SOCKET_PATH)
    }
}

fn connect(path: &[u8]) -> Result<i32, Errno> {
    // SAFETY: plain socket creation.
    let fd = unsafe {
        raw::syscall3(
            raw::nr::SOCKET,
            libc::AF_UNIX as usize,
            (libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC) as usize,
            0,
        )
    }? as i32;
    let n = path.iter().position(|&c| c == 0).unwrap_or(path.len());
    let path = path.get(..n).unwrap_or(&[]);
    let r = connect_path(fd, path).and_then(|()| check_peer(fd));
    if let Err(e) = r {
        raw::close(fd);
        return Err(e);
    }
    let tv = libc::timeval {
        tv_sec: COORD_TIMEOUT_S,
        tv_usec: 0,
    };
    // SAFETY: setsockopt(SO_RCVTIMEO) reads a timeval (nr 54 = setsockopt).
    let _ = unsafe {
        raw::syscall6(
            54,
            fd as usize,
            libc::SOL_SOCKET as usize,
            libc::SO_RCVTIMEO as usize,
            &tv as *const libc::timeval as usize,
            core::mem::size_of::<libc::timeval>(),
            0,
        )
    };
    Ok(fd)
}

/// Connect `fd` to the socket at `path`; a path too long for `sun_path` is
/// reached through a descriptor of its directory (`/proc/self/fd/N/name`).
fn connect_path(fd: i32, path: &[u8]) -> Result<(), Errno> {
    // SAFETY: sockaddr_un is plain old data; all-zero is valid.
    let mut addr: libc::sockaddr_un = unsafe { core::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as u16;
    if path.is_empty() {
        return Err(Errno(libc::ENOENT));
    }
    let mut dir_fd = -1;
    let mut short = StackBuf::<128>::new();
    let name: &[u8] = if path.len() < addr.sun_path.len() {
        path
    } else {
        let slash = path
            .iter()
            .rposition(|&c| c == b'/')
            .ok_or(Errno(libc::ENAMETOOLONG))?;
        let mut dir = StackBuf::<4096>::new();
        dir.push(path.get(..slash.max(1)).unwrap_or(b"/"));
        dir_fd = raw::open(
            dir.as_cstr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            0,
        )?;
        let _ = write!(short, "/proc/self/fd/{dir_fd}/");
        short.push(path.get(slash + 1..).unwrap_or(&[]));
        short.as_bytes()
    };
    if name.len() >= addr.sun_path.len() {
        if dir_fd >= 0 {
            raw::close(dir_fd);
        }
        return Err(Errno(libc::ENAMETOOLONG));
    }
    for (d, s) in addr.sun_path.iter_mut().zip(name.iter()) {
        *d = *s as libc::c_char;
    }
    // SAFETY: addr is a valid sockaddr_un of the given size.
    let r = unsafe {
        raw::syscall3(
            raw::nr::CONNECT,
            fd as usize,
            &addr as *const libc::sockaddr_un as usize,
            core::mem::size_of::<libc::sockaddr_un>(),
        )
    };
    if dir_fd >= 0 {
        raw::close(dir_fd);
    }
    r.map(|_| ())
}

/// The coordinator must run as our own user: a socket planted by someone
/// else gets no `STOPPED` and never tells us where to write.
fn check_peer(fd: i32) -> Result<(), Errno> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: u32::MAX,
        gid: u32::MAX,
    };
    let mut len = core::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt (55) writes at most len bytes into cred.
    unsafe {
        raw::syscall6(
            55,
            fd as usize,
            libc::SOL_SOCKET as usize,
            libc::SO_PEERCRED as usize,
            &mut cred as *mut libc::ucred as usize,
            &mut len as *mut libc::socklen_t as usize,
            0,
        )
    }?;
    // SAFETY: getuid (102) takes no arguments.
    let me = unsafe { raw::syscall3(102, 0, 0, 0) }? as u32;
    if cred.uid != me {
        return Err(Errno(libc::EPERM));
    }
    Ok(())
}

fn send(fd: i32, msg: &[u8]) {
    // SAFETY: msg is valid for its length.
    let _ = unsafe {
        raw::syscall6(
            raw::nr::SENDTO,
            fd as usize,
            msg.as_ptr() as usize,
            msg.len(),
            libc::MSG_NOSIGNAL as usize,
            0,
            0,
        )
    };
}

fn recv(fd: i32, buf: &mut [u8; MAX_MSG]) -> Option<&[u8]> {
    match raw::recv(fd, buf, 0) {
        Ok(0) | Err(_) => None,
        Ok(n) => buf.get(..n),
    }
}

/// Receive one message and the descriptor that may come with it
/// (`SCM_RIGHTS`, close-on-exec); -1 when none came.
fn recv_with_fd(fd: i32, buf: &mut [u8; MAX_MSG]) -> Option<(&[u8], i32)> {
    // Room for one cmsghdr and one int, 8-byte aligned.
    let mut control = [0u64; 4];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    loop {
        // SAFETY: msghdr is plain old data; all-zero is valid.
        let mut msg: libc::msghdr = unsafe { core::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = core::mem::size_of_val(&control);
        // SAFETY: recvmsg (47) writes into buf and control, both valid for
        // the lengths msg gives.
        match unsafe {
            raw::syscall3(
                47,
                fd as usize,
                &mut msg as *mut libc::msghdr as usize,
                libc::MSG_CMSG_CLOEXEC as usize,
            )
        } {
            Ok(0) => return None,
            Ok(n) => {
                let mut passed = -1;
                let hdr = core::mem::size_of::<libc::cmsghdr>();
                if msg.msg_controllen >= hdr + 4 {
                    // SAFETY: control is 8-byte aligned and holds at least
                    // one cmsghdr followed by its data (checked above).
                    let c = unsafe { &*(control.as_ptr() as *const libc::cmsghdr) };
                    if c.cmsg_level == libc::SOL_SOCKET
                        && c.cmsg_type == libc::SCM_RIGHTS
                        && c.cmsg_len >= hdr + 4
                    {
                        // SAFETY: the int follows the header inside control.
                        passed = unsafe {
                            core::ptr::read_unaligned(
                                (control.as_ptr() as *const u8).add(hdr) as *const i32
                            )
                        };
                    }
                }
                return buf.get(..n).map(|m| (m, passed));
            }
            Err(Errno(libc::EINTR)) => continue,
            Err(_) => return None,
        }
    }
}

/// The generation directory descriptor the coordinator passed with
/// `WRITE` (-1 outside a checkpoint): the writer's own, never saved.
pub static GEN_DIR_FD: AtomicI32 = AtomicI32::new(-1);

/// Called by the restorer before any thread runs: the image was taken while
/// a leader was active, so its flags must be cleared. **Async-signal-safe.**
pub fn reset_after_restore() {
    LEADING.store(0, Ordering::Release);
    // The snapshot child of the image's checkpoint does not exist here (and
    // its pid may belong to one of the program's children now).
    SNAP_CHILD.store(0, Ordering::Release);
    STOPPING.store(0, Ordering::Release);
    super::track::reset_after_restore();
}

/// 1 when images are written by a copy-on-write snapshot child (the
/// default), 0 to write while the job stands still (`CKPT_SNAPSHOT=0`).
pub static SNAPSHOT: AtomicU32 = AtomicU32::new(1);
/// The previous snapshot child, reaped at the next checkpoint.
static SNAP_CHILD: AtomicI32 = AtomicI32::new(0);

fn reap_previous_snapshot() {
    let prev = SNAP_CHILD.swap(0, Ordering::AcqRel);
    if prev > 0 {
        // SAFETY: wait4 (61) on our own clone child; no status wanted.
        let _ = unsafe {
            raw::syscall6(61, prev as usize, 0, 0x4000_0000 /* __WALL */, 0, 0, 0)
        };
    }
}

/// Why a process is written while the job stands still.
#[derive(Clone, Copy)]
enum InPlace {
    /// No snapshot was asked for or could be made (memory limit,
    /// `CKPT_SNAPSHOT=0`, no process to fork).
    NoSnapshot,
    /// The snapshot lacks memory the program advised `MADV_DONTFORK` or
    /// `MADV_WIPEONFORK` (`fork_advice`).
    Advice,
}

/// Write while every thread stands still, then release and fsync.
fn write_in_place(
    dir: &[u8],
    fd: i32,
    pre: &capture::Pre,
    t0: u64,
    buf: &mut [u8; MAX_MSG],
    why: InPlace,
) {
    let pid = pre.pid;
    let mut r = StackBuf::<1024>::new();
    let mut ok = false;
    match capture::write_image(dir, fd, pre, -1) {
        Ok(bytes) => {
            let t1 = raw::clock_ns(libc::CLOCK_MONOTONIC);
            let _ = write!(
                r,
                "DONE {pid} {bytes} {} {}",
                t1.saturating_sub(t0) / 1000,
                match why {
                    InPlace::NoSnapshot => "inplace",
                    InPlace::Advice => "inplace=advice",
                }
            );
            ok = true;
        }
        Err((step, e)) => {
            let _ = write!(
                r,
                "FAIL {pid} writing the image failed while {}: {}",
                capture::step_name(step),
                ErrnoText(e.raw())
            );
        }
    }
    send(fd, r.as_bytes());
    // Wait for the coordinator to release the whole job.
    let _ = recv(fd, buf);
    release_all();
    if !ok {
        return;
    }
    let mut s = StackBuf::<1024>::new();
    match capture::sync_image(dir, pid) {
        Ok(()) => {
            let t2 = raw::clock_ns(libc::CLOCK_MONOTONIC);
            let _ = write!(s, "SYNCED {pid} 0 {}", t2.saturating_sub(t0) / 1000);
        }
        Err((step, e)) => {
            let _ = write!(
                s,
                "FAIL {pid} {}: {}",
                capture::step_name(step),
                ErrnoText(e.raw())
            );
        }
    }
    send(fd, s.as_bytes());
    capture::drop_image_cache(dir, pid);
}

/// Fork a copy-on-write snapshot of the stopped process; the child writes
/// the image while the job runs on. The job is released as soon as the
/// child has saved what other processes can change (pipes, shared memory):
/// the pause is the fork, not the write.
///
/// With `defer`, the child writes the private memory only once the parent
/// has been released (a byte on a second pipe, or its end of file): while
/// the job stands still, the children of processes that are done do not take
/// the CPUs from the processes still being stopped (many processes on few
/// cores; `bench/results.md`, "Scale").
fn write_forked(
    dir: &[u8],
    fd: i32,
    pre: &capture::Pre,
    t0: u64,
    buf: &mut [u8; MAX_MSG],
    defer: bool,
) {
    let mut lifted = MmapBuf::new_inherited();
    write_forked_lifting(dir, fd, pre, t0, buf, defer, (&mut lifted, false));
    lifted.free();
}

/// Give the program the advice lifted from the regions of `lifted` back
/// (nothing when it is empty) and forget the list: the parent's copy of
/// the buffer must not reach an image it writes itself.
fn give_back(lifted: &mut MmapBuf) -> Result<(), Errno> {
    let r = fork_advice::give_back(lifted.as_slice());
    lifted.free();
    r
}

/// The write in place a snapshot falls back to, once the advice lifted for
/// it was given back (`gave_back`); when that failed, the checkpoint fails
/// instead and says so: the program runs on without advice it gave, and
/// an image of it would not have it either.
fn in_place_after(
    dir: &[u8],
    fd: i32,
    pre: &capture::Pre,
    (t0, buf): (u64, &mut [u8; MAX_MSG]),
    why: InPlace,
    gave_back: Result<(), Errno>,
) {
    match gave_back {
        Ok(()) => write_in_place(dir, fd, pre, t0, buf, why),
        Err(e) => {
            let mut r = StackBuf::<1024>::new();
            let _ = write!(
                r,
                "FAIL {} {GAVE_BACK_FAILED}: {}",
                pre.pid,
                ErrnoText(e.raw())
            );
            send(fd, r.as_bytes());
            let _ = recv(fd, buf);
            release_all();
        }
    }
}

/// Why a checkpoint failed after lifting the program's fork advice.
const GAVE_BACK_FAILED: &str = "giving the program's MADV_DONTFORK/MADV_WIPEONFORK advice back after \
                                the snapshot's fork failed (the process now runs without it)";

/// [`write_forked`]; `lifted` empty and `second` false at first. A
/// snapshot child that lacks regions the program advised `MADV_DONTFORK`,
/// or finds its `MADV_WIPEONFORK` regions zeroed, lists them ('L'); they
/// go into `lifted`, the advice is lifted from them, and a second snapshot
/// is forked (`second`), after which the advice is given back at once
/// (`fork_advice`). A second child that still lacks something ('D'),
/// like one that cannot tell ('N'), has the process write its own image.
fn write_forked_lifting(
    dir: &[u8],
    fd: i32,
    pre: &capture::Pre,
    t0: u64,
    buf: &mut [u8; MAX_MSG],
    defer: bool,
    (lifted, second): (&mut MmapBuf, bool),
) {
    let pid = pre.pid;
    reap_previous_snapshot();
    let mut p = [0i32; 2];
    // SAFETY: pipe2 (293) into a valid array.
    if unsafe { raw::syscall3(293, p.as_mut_ptr() as usize, libc::O_CLOEXEC as usize, 0) }.is_err()
    {
        let gave_back = give_back(lifted);
        in_place_after(dir, fd, pre, (t0, buf), InPlace::NoSnapshot, gave_back);
        return;
    }
    let mut go = [-1i32; 2];
    if defer {
        // SAFETY: pipe2 (293) into a valid array; without it the child does
        // not wait.
        let made =
            unsafe { raw::syscall3(293, go.as_mut_ptr() as usize, libc::O_CLOEXEC as usize, 0) };
        if made.is_err() {
            go = [-1, -1];
        }
    }
    let close_go = |end: i32| {
        if end >= 0 {
            raw::close(end);
        }
    };
    let mappings = count_mappings();
    let mut parent = fork_advice::ParentView::open();
    // SAFETY: clone (56) with no flags and no stack is fork() whose child
    // signals nobody on exit (so the program's wait() never sees it). The
    // child only runs fence code on its private copy of this stack.
    let child = unsafe { raw::syscall6(56, 0, 0, 0, 0, 0, 0) };
    // The parent gives the lifted advice back before anything else.
    let gave_back = if !matches!(child, Ok(0)) {
        parent.close();
        give_back(lifted)
    } else {
        Ok(())
    };
    match child {
        Ok(0) => {
            raw::close(p[0]);
            close_go(go[1]);
            capture::GO_FD.store(go[0], Ordering::Release);
            // Regions marked MADV_DONTFORK (V8's heap in Node.js, RDMA
            // buffers) are missing from this copy, and those marked
            // MADV_WIPEONFORK (TLS libraries' fork-detection pages) are
            // zeroed in it: the child lists them for the parent to lift
            // their advice ('L' and the list), unless it already did
            // ('D'); 'N': the mappings could not be counted.
            let mut lift = MmapBuf::new();
            let verdict = match mappings {
                None => Err(b'N'),
                Some(n) => match parent.verdict(count_mappings() != Some(n), &mut lift) {
                    fork_advice::Verdict::Whole => Ok(()),
                    fork_advice::Verdict::Lift if !second && lift.len() <= MAX_LIFTED => Err(b'L'),
                    _ => Err(b'D'),
                },
            };
            parent.close();
            if let Err(why) = verdict {
                let _ = raw::write_all(p[1], &[why]);
                if why == b'L' {
                    let _ = raw::write_all(p[1], lift.as_slice());
                }
                raw::exit_group(0);
            }
            lift.free();
            let pre = capture::Pre {
                // SAFETY: this child never frees or changes its copy of
                // `lifted` (only the parent gives it back), and exits
                // before anything else could.
                lifted: unsafe { fork_advice::Lifted::of(lifted) },
                ..*pre
            };
            let r = capture::write_image(dir, fd, &pre, p[1]);
            let mut m = StackBuf::<1024>::new();
            let mut synced = false;
            match r {
                Ok(bytes) => match capture::sync_image(dir, pid) {
                    Ok(()) => {
                        let _ = write!(m, "SYNCED {pid} {bytes}");
                        synced = true;
                    }
                    Err((step, e)) => {
                        let _ = write!(
                            m,
                            "FAIL {pid} {}: {}",
                            capture::step_name(step),
                            ErrnoText(e.raw())
                        );
                    }
                },
                Err((step, e)) => {
                    if capture::PHASE_SENT.load(Ordering::Acquire) == 0 {
                        // Before the job was released: tell the parent.
                        let eb = e.raw().to_le_bytes();
                        let b = [b'F', step as u8, 0, 0, eb[0], eb[1], eb[2], eb[3]];
                        let _ = raw::write(p[1], &b);
                        raw::exit_group(1);
                    }
                    let _ = write!(
                        m,
                        "FAIL {pid} writing the image failed while {}: {}",
                        capture::step_name(step),
                        ErrnoText(e.raw())
                    );
                }
            }
            send(fd, m.as_bytes());
            if synced {
                capture::drop_image_cache(dir, pid);
            }
            raw::exit_group(0);
        }
        Ok(c) => {
            raw::close(p[1]);
            close_go(go[0]);
            let mut b = [0u8; 8];
            let n = loop {
                match raw::read_into(p[0], &mut b) {
                    Err(Errno(libc::EINTR)) => continue,
                    r => break r.unwrap_or(0),
                }
            };
            if n >= 1 && b[0] == b'L' && !second {
                // The list: what came with the 'L', then up to the end.
                let listed = lifted
                    .push(b.get(1..n).unwrap_or(&[]))
                    .and_then(|()| lifted.append_fd(p[0]));
                raw::close(p[0]);
                close_go(go[1]);
                SNAP_CHILD.store(c as i32, Ordering::Release);
                reap_previous_snapshot();
                // Each region lifted may be split from its neighbours when
                // given back: room for that under vm.max_map_count.
                let count = lifted.len() / 24;
                let room = count_mappings()
                    .zip(max_map_count())
                    .is_some_and(|(now, most)| now + 2 * count + 64 <= most);
                if listed.is_ok()
                    && count > 0
                    && lifted.len() <= MAX_LIFTED
                    && lifted.len().is_multiple_of(24)
                    && room
                    && !holds_dma_device()
                    && fork_advice::lift(lifted.as_slice()).is_ok()
                {
                    write_forked_lifting(dir, fd, pre, t0, buf, defer, (lifted, true));
                } else {
                    // Nothing lifted (`lift` gives back what it did on a
                    // failure): only forget the list.
                    lifted.free();
                    write_in_place(dir, fd, pre, t0, buf, InPlace::Advice);
                }
                return;
            }
            raw::close(p[0]);
            if n >= 1 && (b[0] == b'D' || b[0] == b'N' || b[0] == b'L') {
                close_go(go[1]);
                SNAP_CHILD.store(c as i32, Ordering::Release);
                reap_previous_snapshot();
                let why = if b[0] == b'N' {
                    InPlace::NoSnapshot
                } else {
                    InPlace::Advice
                };
                in_place_after(dir, fd, pre, (t0, buf), why, gave_back);
                return;
            }
            let mut r = StackBuf::<1024>::new();
            let ok = n >= 1 && b[0] == b'S' && gave_back.is_ok();
            if ok {
                let t1 = raw::clock_ns(libc::CLOCK_MONOTONIC);
                let _ = write!(r, "DONE {pid} 0 {} snap={c}", t1.saturating_sub(t0) / 1000);
            } else if let Err(e) = gave_back {
                // The program runs on without advice it gave: say so rather
                // than count on a checkpoint of a process that changed.
                let _ = write!(r, "FAIL {pid} {GAVE_BACK_FAILED}: {}", ErrnoText(e.raw()));
            } else {
                let errno = i32::from_le_bytes([b[4], b[5], b[6], b[7]]);
                let _ = write!(
                    r,
                    "FAIL {pid} writing the image failed while {}: {}",
                    capture::step_name(u64::from(b[1])),
                    if n >= 8 {
                        ErrnoText(errno)
                    } else {
                        ErrnoText(libc::ECHILD)
                    }
                );
            }
            send(fd, r.as_bytes());
            let _ = recv(fd, buf);
            release_all();
            if go[1] >= 0 {
                let _ = raw::write(go[1], b"G");
                raw::close(go[1]);
            }
            SNAP_CHILD.store(c as i32, Ordering::Release);
            if !ok {
                if gave_back.is_err() {
                    // Its image is of no use now: do not wait for it.
                    let _ = raw::tgkill(c as i32, c as i32, libc::SIGKILL);
                }
                reap_previous_snapshot();
            }
        }
        Err(_) => {
            raw::close(p[0]);
            raw::close(p[1]);
            close_go(go[0]);
            close_go(go[1]);
            in_place_after(dir, fd, pre, (t0, buf), InPlace::NoSnapshot, gave_back);
        }
    }
}

/// Whether the process holds an RDMA or GPU device (`/dev/infiniband/*`,
/// `/dev/nvidia*`), whose drivers keep memory the program advised
/// `MADV_DONTFORK` pinned for DMA: such advice is never lifted (a `fork`
/// would share those pages copy-on-write with the snapshot). The process
/// is then written in place, where the device itself is refused.
/// **Async-signal-safe.**
fn holds_dma_device() -> bool {
    let Ok(dir) = raw::open(
        b"/proc/self/fd\0",
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        0,
    ) else {
        return true;
    };
    let mut found = false;
    let r = raw::for_each_numeric_entry(dir, |fd| {
        let mut path = StackBuf::<64>::new();
        let _ = write!(path, "/proc/self/fd/{fd}\0");
        let mut target = [0u8; 64];
        if let Ok(n) = raw::readlink(path.as_bytes(), &mut target) {
            let t = target.get(..n).unwrap_or(&[]);
            found |= t.starts_with(b"/dev/infiniband/") || t.starts_with(b"/dev/nvidia");
        }
    });
    raw::close(dir);
    found || r.is_err()
}

/// The most regions a snapshot child lists for lifting their advice
/// (24 bytes each): beyond, the process is written in place.
const MAX_LIFTED: usize = 65_536 * 24;

/// `vm.max_map_count`. **Async-signal-safe.**
fn max_map_count() -> Option<usize> {
    super::memlimit::number_at(b"/proc/sys/vm/", b"max_map_count").map(|v| v as usize)
}

/// Number of mappings of this process (lines of `/proc/self/maps`), to
/// tell whether a fork child has them all. **Async-signal-safe.**
fn count_mappings() -> Option<usize> {
    let fd = raw::open(b"/proc/self/maps\0", libc::O_RDONLY | libc::O_CLOEXEC, 0).ok()?;
    let mut b = [0u8; 4096];
    let mut lines = 0usize;
    let r = loop {
        match raw::read_into(fd, &mut b) {
            Ok(0) => break Some(lines),
            Ok(n) => {
                lines += b
                    .get(..n)
                    .unwrap_or(&[])
                    .iter()
                    .filter(|&&c| c == b'\n')
                    .count()
            }
            Err(Errno(libc::EINTR)) => continue,
            Err(_) => break None,
        }
    };
    raw::close(fd);
    r
}

/// Whether the job's memory cgroup has room for copy-on-write copies of
/// every resident page (the worst case while the snapshot is written).
/// **Async-signal-safe.**
fn memory_allows_snapshot() -> bool {
    let mut b = [0u8; 512];
    let rss_pages = {
        let Ok(fd) = raw::open(b"/proc/self/statm\0", libc::O_RDONLY | libc::O_CLOEXEC, 0) else {
            return true;
        };
        let n = raw::read_into(fd, &mut b).unwrap_or(0);
        raw::close(fd);
        let text = b.get(..n).unwrap_or(&[]);
        text.split(|&c| c == b' ')
            .nth(1)
            .and_then(procfs::dec)
            .unwrap_or(0)
    };
    let rss = rss_pages.saturating_mul(4096);
    match super::memlimit::headroom() {
        Some(room) => room >= rss,
        None => true,
    }
}

/// What a `WRITE` asks for besides the page tracking.
#[derive(Clone, Copy)]
struct WriteFlags {
    /// [`crate::coord::WRITE_DEFER`].
    defer: bool,
    /// [`crate::coord::WRITE_COMPRESS`].
    compress: bool,
}

/// Parse `WRITE <generation> <base> <flags> <dir>`: flags bit 0 = track
/// written pages, bit 1 = a snapshot child writes private memory only once
/// the job is released ([`crate::coord::WRITE_DEFER`]), bit 2 = it
/// compresses it ([`crate::coord::WRITE_COMPRESS`]).
fn parse_write(msg: &[u8]) -> Option<(super::track::Request, WriteFlags, &[u8])> {
    let rest = msg.strip_prefix(b"WRITE ")?;
    let mut parts = rest.splitn(4, |&c| c == b' ');
    let generation = procfs::dec(parts.next()?)?;
    let base = procfs::dec(parts.next()?)?;
    let flags = procfs::dec(parts.next()?)?;
    let dir = parts.next()?;
    if dir.is_empty() {
        return None;
    }
    Some((
        super::track::Request {
            generation,
            base,
            track: flags & crate::coord::WRITE_TRACK == crate::coord::WRITE_TRACK,
        },
        WriteFlags {
            defer: flags & crate::coord::WRITE_DEFER == crate::coord::WRITE_DEFER,
            compress: flags & crate::coord::WRITE_COMPRESS == crate::coord::WRITE_COMPRESS,
        },
        dir,
    ))
}

/// Entry from the stop handler when the signal came from outside the
/// process (the coordinator): this thread leads the checkpoint.
///
/// A leader runs on after the coordinator has its last word (it drops the
/// image from the page cache, ends the tracking round, closes its
/// descriptors), and the coordinator may ask for the next checkpoint in
/// that time: a periodic checkpoint followed at once by the warning
/// signal's, or two `ckpt checkpoint` in a row. Such a request is not
/// dropped (the coordinator would wait for the process to stop until its
/// timeout, and the checkpoint would fail): the thread it reaches marks it,
/// and the leader leads it once done, still in its own handler, where its
/// thread's state (`uc`) is what it was.
pub fn lead(uc: u64) {
    let was = LEADING.fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
        Some(if s == 0 { 1 } else { 2 })
    });
    if was != Ok(0) {
        // A checkpoint is already running in this process: marked for it.
        return;
    }
    loop {
        lead_once(uc);
        // Done unless a request was marked meanwhile (2): then lead it.
        match LEADING.compare_exchange(1, 0, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return,
            Err(_) => LEADING.store(1, Ordering::Release),
        }
    }
}

/// One checkpoint led by this thread ([`lead`]), `LEADING` held.
fn lead_once(uc: u64) {
    let t0 = raw::clock_ns(libc::CLOCK_MONOTONIC);
    let mut why = Why::new();
    let stopped = stop_others(&mut why);
    let _ = stop::record_self(uc);
    let path = socket_path();
    let Ok(fd) = connect(&path) else {
        release_all();
        return;
    };
    let pid = raw::getpid();
    let mut m = StackBuf::<1024>::new();
    if stopped {
        let _ = write!(m, "STOPPED {pid}");
    } else {
        let _ = write!(m, "FAIL {pid} ");
        m.push(why.as_bytes());
    }
    send(fd, m.as_bytes());
    let mut buf = [0u8; MAX_MSG];
    let received = recv_with_fd(fd, &mut buf);
    let passed = received.map_or(-1, |(_, d)| d);
    GEN_DIR_FD.store(passed, Ordering::Release);
    if let Some((msg, _)) = received
        && let Some((req, wf, dir)) = parse_write(msg)
    {
        // Write through the descriptor the coordinator opened and checked
        // (the name is only a fall-back for a coordinator that sends none).
        let mut dirbuf = [0u8; MAX_MSG];
        let mut via = StackBuf::<64>::new();
        let dir = if passed >= 0 {
            let _ = write!(via, "/proc/self/fd/{passed}");
            via.as_bytes()
        } else {
            dir
        };
        let n = dir.len().min(MAX_MSG - 1);
        if let (Some(d), Some(s)) = (dirbuf.get_mut(..n), dir.get(..n)) {
            d.copy_from_slice(s);
        }
        let dir = dirbuf.get(..n).unwrap_or(&[]);
        let snapshot = SNAPSHOT.load(Ordering::Acquire) == 1 && memory_allows_snapshot();
        let pre = capture::Pre {
            compress: wf.compress,
            ..capture::Pre::now()
        };
        // Last step before the snapshot: nothing of the program may change
        // between the dirty-page scan and the fork.
        let own_uc = capture::own_ucontext(pre.tid);
        // The previous snapshot child may still hold the page-checksum table
        // this checkpoint is about to reuse (`page_crcs`): it is gone first.
        reap_previous_snapshot();
        let _ = super::track::before_snapshot(&req, own_uc);
        if snapshot {
            write_forked(dir, fd, &pre, t0, &mut buf, wf.defer);
        } else {
            write_in_place(dir, fd, &pre, t0, &mut buf, InPlace::NoSnapshot);
        }
        super::track::after_snapshot();
    }
    release_all();
    raw::close(fd);
    let passed = GEN_DIR_FD.swap(-1, Ordering::AcqRel);
    if passed >= 0 {
        raw::close(passed);
    }
}

fn list_tasks(out: &mut [i32; stop::MAX_THREADS], n: &mut usize) -> Result<(), Errno> {
    *n = 0;
    let fd = raw::open(
        b"/proc/self/task\0",
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        0,
    )?;
    let r = raw::for_each_numeric_entry(fd, |tid| {
        if let Some(slot) = out.get_mut(*n) {
            *slot = tid as i32;
            *n += 1;
        }
    });
    if let Err(e) = r {
        raw::close(fd);
        return Err(e);
    }
    raw::close(fd);
    Ok(())
}

fn release_all() {
    STOPPING.store(0, Ordering::Release);
    RELEASE.fetch_add(1, Ordering::AcqRel);
    raw::futex_wake_all(&RELEASE);
}

/// Why the threads could not be stopped (for `FAIL`).
type Why = StackBuf<800>;

fn why_text(s: &str) -> Why {
    let mut w = Why::new();
    w.push(s.as_bytes());
    w
}

/// Whether `tid` is parked (has a slot).
fn parked(tid: i32) -> bool {
    let n = (NSLOTS.load(Ordering::Acquire) as usize).min(stop::MAX_THREADS);
    stop::SLOTS
        .iter()
        .take(n)
        .any(|s| s.tid.load(Ordering::Acquire) == tid)
}

/// Describe the signalled threads that neither parked nor exited, naming
/// the first one (its name, state and whether its mask blocks the stop
/// signal, from `/proc/self/task/TID/status`). **Async-signal-safe.**
fn describe_unstopped(pid: i32, signaled: &[i32]) -> Why {
    let mut stuck = signaled
        .iter()
        .copied()
        .filter(|&t| !parked(t) && raw::tgkill(pid, t, 0) != Err(Errno(libc::ESRCH)));
    let Some(first) = stuck.next() else {
        return why_text(
            "a thread did not stop within 10 s; the checkpoint was cancelled and the program keeps running",
        );
    };
    let more = stuck.count();
    let mut path = StackBuf::<64>::new();
    let _ = write!(path, "/proc/self/task/{first}/status");
    let mut buf = [0u8; 4096];
    let n = match raw::open(path.as_cstr(), libc::O_RDONLY | libc::O_CLOEXEC, 0) {
        Ok(fd) => {
            let n = raw::read_into(fd, &mut buf).unwrap_or(0);
            raw::close(fd);
            n
        }
        Err(_) => 0,
    };
    let text = buf.get(..n).unwrap_or(&[]);
    let name = procfs::status_value(text, b"Name").unwrap_or(b"?");
    let state = procfs::status_value(text, b"State").unwrap_or(b"?");
    let blocked = procfs::status_value(text, b"SigBlk").is_some_and(|v| {
        // Signal n is bit n-1: hex digit (n-1)/4 counted from the right.
        let at = (STOP_SIGNAL as usize - 1) / 4 + 1;
        let digit = v.len().checked_sub(at).and_then(|i| v.get(i)).copied();
        let d = match digit {
            Some(c @ b'0'..=b'9') => c - b'0',
            Some(c @ b'a'..=b'f') => c - b'a' + 10,
            _ => 0,
        };
        d & (1 << ((STOP_SIGNAL - 1) % 4)) != 0
    });
    let mut w = Why::new();
    let _ = write!(w, "thread {first} (");
    w.push(name);
    w.push(b") did not stop within 10 s: ");
    if blocked {
        w.push(b"it blocks the checkpoint signal (62) itself, through a raw rt_sigprocmask system call that libckpt cannot see (the Go runtime, statically linked or hand-written code), or while it waits in system()");
    } else if state.starts_with(b"D") {
        w.push(b"it is in uninterruptible sleep (state D) in the kernel");
    } else {
        w.push(b"it has not run the checkpoint signal's handler (state ");
        w.push(state);
        w.push(b")");
    }
    if more > 0 {
        let _ = write!(w, "; {more} more thread(s) did not stop either");
    }
    w.push(b"; the checkpoint was cancelled and the program keeps running");
    w
}

/// Stop every other thread of the process; false (with the reason in
/// `why`) when they cannot all be stopped.
fn stop_others(why: &mut Why) -> bool {
    let t0 = raw::clock_ns(libc::CLOCK_MONOTONIC);
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
            *why = why_text("cannot list /proc/self/task");
            return false;
        }
        let mut new = 0;
        for &t in tasks.iter().take(ntasks) {
            if t == me || signaled.iter().take(nsig).any(|&s| s == t) {
                continue;
            }
            if nsig >= stop::MAX_THREADS {
                *why = why_text("too many threads (more than 1024) to checkpoint");
                return false;
            }
            if raw::tgkill(pid, t, STOP_SIGNAL).is_ok() {
                if let Some(s) = signaled.get_mut(nsig) {
                    *s = t;
                }
                nsig += 1;
                new += 1;
            }
        }
        loop {
            let parked = PARKED.load(Ordering::Acquire);
            if parked as usize >= nsig {
                break;
            }
            // A thread that exits before it handles the signal (one that was
            // just created and returns at once) never parks: wait only for
            // the signalled threads that still exist.
            let gone = signaled
                .iter()
                .take(nsig)
                .filter(|&&t| raw::tgkill(pid, t, 0) == Err(Errno(libc::ESRCH)))
                .count();
            if parked as usize >= nsig.saturating_sub(gone) {
                break;
            }
            if raw::clock_ns(libc::CLOCK_MONOTONIC).saturating_sub(t0) > STOP_TIMEOUT_NS {
                *why = describe_unstopped(pid, signaled.get(..nsig).unwrap_or(&[]));
                return false;
            }
            let _ = raw::futex_wait(&PARKED, parked, Some(10_000_000));
        }
        if new == 0 {
            break;
        }
    }
    if NSLOTS.load(Ordering::Acquire) as usize >= stop::MAX_THREADS {
        *why = why_text("too many threads (more than 1024) to checkpoint");
        return false;
    }
    true
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
        if s.is_empty() {
            write!(f, "errno {}", self.0)
        } else {
            write!(f, "{s} (errno {})", self.0)
        }
    }
}
