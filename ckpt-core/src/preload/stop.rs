//! Stopping every thread at a safe point, and the state each one records.
//!
//! The checkpoint thread sends [`STOP_SIGNAL`] to every other thread with
//! `tgkill`. Each thread's handler records where the kernel put its
//! `ucontext_t` (registers, FPU/xsave state, signal mask and alternate stack
//! are all in the kernel's signal frame, on the thread's own stack, so they
//! are saved with memory), its TLS base, rseq area, robust list and
//! clear-child-tid address, then waits on a futex until released.
//!
//! On restore, each thread is recreated and `rt_sigreturn`s from its saved
//! frame: it continues exactly where the signal interrupted it.
//!
//! Everything here is **async-signal-safe**.

use core::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};

use crate::coord::STOP_SIGNAL;
use crate::signal_safe::raw;

/// Most threads a process may have at checkpoint time.
pub const MAX_THREADS: usize = 1024;

/// Per-thread state captured by the stop handler.
#[repr(C)]
pub struct Slot {
    /// Thread id.
    pub tid: AtomicI32,
    /// Address of the kernel-written ucontext.
    pub uc: AtomicU64,
    /// FS base.
    pub fs: AtomicU64,
    /// GS base.
    pub gs: AtomicU64,
    /// rseq area.
    pub rseq: AtomicU64,
    /// Robust list head.
    pub robust_head: AtomicU64,
    /// Robust list length.
    pub robust_len: AtomicU64,
    /// clear_child_tid.
    pub clear_tid: AtomicU64,
    /// A stack address below which this thread's stack is free.
    pub sp: AtomicU64,
    /// Signals pending for this thread only (bit n-1 = signal n).
    pub pending: AtomicU64,
    /// The thread's name (`comm`, 15 bytes + NUL) as two words.
    pub name: [AtomicU64; 2],
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Slot = Slot {
    tid: AtomicI32::new(0),
    uc: AtomicU64::new(0),
    fs: AtomicU64::new(0),
    gs: AtomicU64::new(0),
    rseq: AtomicU64::new(0),
    robust_head: AtomicU64::new(0),
    robust_len: AtomicU64::new(0),
    clear_tid: AtomicU64::new(0),
    sp: AtomicU64::new(0),
    pending: AtomicU64::new(0),
    name: [AtomicU64::new(0), AtomicU64::new(0)],
};

/// Captured thread states.
pub static SLOTS: [Slot; MAX_THREADS] = [EMPTY; MAX_THREADS];
/// Number of used slots.
pub static NSLOTS: AtomicU32 = AtomicU32::new(0);
/// Number of parked threads (futex word the checkpoint thread waits on).
pub static PARKED: AtomicU32 = AtomicU32::new(0);
/// Release generation (futex word parked threads wait on).
pub static RELEASE: AtomicU32 = AtomicU32::new(0);
/// 1 while a checkpoint is stopping/holding threads.
pub static STOPPING: AtomicU32 = AtomicU32::new(0);

unsafe extern "C" {
    static __rseq_offset: isize;
    static __rseq_size: u32;
}

/// The rseq signature glibc registers with.
pub const RSEQ_SIG: u32 = 0x5305_3053;

/// Address of the calling thread's glibc rseq area, or 0 when none is registered.
pub fn rseq_area(fs_base: u64) -> u64 {
    // SAFETY: glibc 2.35+ exports these read-only variables; reading them is always valid.
    let (off, size) = unsafe { (__rseq_offset, __rseq_size) };
    if size == 0 || fs_base == 0 {
        return 0;
    }
    (fs_base as i64).wrapping_add(off as i64) as u64
}

/// The calling thread's rseq registration, suspended while a checkpoint
/// writes memory from this thread (docs/kernel.md, "rseq while memory is
/// written"). The kernel writes the registered area's `cpu_id_start` and
/// `cpu_id` each time the thread returns to user space after being
/// preempted or moved to another CPU; the area lives in the thread's TLS,
/// inside a region the checkpoint saves. Left registered, a page could be
/// checksummed before such a write and copied to the image after it: a
/// checkpoint that reports success and fails its checksum at restore. A
/// snapshot child inherits the registration from the thread it copies.
///
/// Unregistering leaves `cpu_id` at -1 ("not initialized"), which is what
/// the image then holds; a restore registers the area again and the kernel
/// fills it in. Dropping this registers it again (with the same area,
/// length and signature). **Async-signal-safe.**
pub struct RseqPause {
    area: u64,
    len: u32,
}

impl RseqPause {
    /// Unregister the calling thread's glibc rseq area, if it has one.
    pub fn begin() -> RseqPause {
        let area = rseq_area(raw::get_fs_base());
        // SAFETY: glibc 2.35+ exports this read-only variable.
        let size = unsafe { __rseq_size };
        if area != 0 {
            // glibc registers 32 bytes (the original struct rseq); a later
            // glibc may register its __rseq_size.
            for len in [32u32, size] {
                // SAFETY: rseq (334) with RSEQ_FLAG_UNREGISTER: the kernel
                // checks area, length and signature against the
                // registration and refuses anything else.
                let r = unsafe {
                    raw::syscall6(
                        raw::nr::RSEQ,
                        area as usize,
                        len as usize,
                        1, /* RSEQ_FLAG_UNREGISTER */
                        RSEQ_SIG as usize,
                        0,
                        0,
                    )
                };
                if r.is_ok() {
                    return RseqPause { area, len };
                }
            }
        }
        RseqPause { area: 0, len: 0 }
    }
}

impl Drop for RseqPause {
    fn drop(&mut self) {
        if self.area == 0 {
            return;
        }
        // SAFETY: registering the area this thread had registered, with
        // its length and signature; the area is in this thread's TLS.
        let _ = unsafe {
            raw::syscall6(
                raw::nr::RSEQ,
                self.area as usize,
                self.len as usize,
                0,
                RSEQ_SIG as usize,
                0,
                0,
            )
        };
    }
}

/// Record the calling thread into a slot. Returns the slot index.
pub fn record_self(uc: u64) -> Option<usize> {
    let i = NSLOTS.fetch_add(1, Ordering::AcqRel) as usize;
    let s = SLOTS.get(i)?;
    let fs = raw::get_fs_base();
    let (rh, rl) = raw::get_robust_list();
    let sp_probe = 0u8;
    let sp = (&sp_probe as *const u8 as u64).saturating_sub(4096) & !0xf;
    s.tid.store(raw::gettid(), Ordering::Relaxed);
    s.uc.store(uc, Ordering::Relaxed);
    s.fs.store(fs, Ordering::Relaxed);
    s.gs.store(raw::get_gs_base(), Ordering::Relaxed);
    s.rseq.store(rseq_area(fs), Ordering::Relaxed);
    s.robust_head.store(rh, Ordering::Relaxed);
    s.robust_len.store(rl, Ordering::Relaxed);
    s.clear_tid.store(raw::get_tid_address(), Ordering::Relaxed);
    s.pending.store(
        pending_mask(b"/proc/thread-self/status\0", b"SigPnd"),
        Ordering::Relaxed,
    );
    let mut comm = [0u8; 16];
    if let Ok(fd) = raw::open(
        b"/proc/thread-self/comm\0",
        libc::O_RDONLY | libc::O_CLOEXEC,
        0,
    ) {
        let n = raw::read_into(fd, &mut comm[..15]).unwrap_or(0);
        raw::close(fd);
        if let Some(nl) = comm
            .get(..n)
            .and_then(|c| c.iter().position(|&b| b == b'\n'))
        {
            comm[nl] = 0;
        }
    }
    let (lo, hi) = comm.split_at(8);
    let word = |b: &[u8]| {
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        u64::from_ne_bytes(a)
    };
    s.name[0].store(word(lo), Ordering::Relaxed);
    s.name[1].store(word(hi), Ordering::Relaxed);
    s.sp.store(sp, Ordering::Release);
    Some(i)
}

/// Reads again the signals pending for parked thread `tid` (one a POSIX
/// timer signals may have received one since it stopped). **Async-signal-safe.**
pub fn reread_pending(tid: i32) {
    let n = (NSLOTS.load(Ordering::Acquire) as usize).min(MAX_THREADS);
    let Some(s) = SLOTS
        .iter()
        .take(n)
        .find(|s| s.tid.load(Ordering::Acquire) == tid)
    else {
        return;
    };
    let mut p = crate::signal_safe::buf::StackBuf::<48>::new();
    let _ = core::fmt::Write::write_fmt(&mut p, format_args!("/proc/self/task/{tid}/status"));
    s.pending
        .store(pending_mask(p.as_cstr(), b"SigPnd"), Ordering::Relaxed);
}

/// A pending-signal mask from a /proc status file (`SigPnd` or `ShdPnd`),
/// without our own stop signal. **Async-signal-safe.**
pub fn pending_mask(path: &[u8], key: &[u8]) -> u64 {
    let mut buf = [0u8; 4096];
    let Ok(fd) = raw::open(path, libc::O_RDONLY | libc::O_CLOEXEC, 0) else {
        return 0;
    };
    let n = raw::read_into(fd, &mut buf).unwrap_or(0);
    raw::close(fd);
    let text = buf.get(..n).unwrap_or(&[]);
    let v = crate::signal_safe::procfs::status_value(text, key).unwrap_or(&[]);
    let mut mask = 0u64;
    for &c in v {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => 0,
        };
        mask = (mask << 4) | u64::from(d);
    }
    mask & !(1u64 << (STOP_SIGNAL - 1)) & !super::ask::pending_bit()
}

/// The stop signal handler. **Async-signal-safe.**
///
/// # Safety
/// Only the kernel calls this, as an `SA_SIGINFO` handler, with valid
/// `info` and `uc` pointers.
pub unsafe extern "C" fn handler(sig: i32, info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    super::sigmask::note_stop(uc);
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let code = unsafe { (*info).si_code };
    if code != libc::SI_TKILL {
        // Sent to the process from outside (the coordinator): lead.
        super::leader::lead(uc as u64);
        return;
    }
    if STOPPING.load(Ordering::Acquire) == 0 {
        // Not ours: the program's own use of the signal (a thread woken by
        // another, as OpenJDK's libnet does), or a stray one.
        // SAFETY: the kernel's arguments, passed on.
        unsafe { call_program(sig, info, uc) };
        return;
    }
    let release_gen = RELEASE.load(Ordering::Acquire);
    if record_self(uc as u64).is_none() {
        // Too many threads: the checkpoint thread sees the overflow and fails.
        PARKED.fetch_add(1, Ordering::AcqRel);
        raw::futex_wake_all(&PARKED);
        return;
    }
    PARKED.fetch_add(1, Ordering::AcqRel);
    raw::futex_wake_all(&PARKED);
    while RELEASE.load(Ordering::Acquire) == release_gen {
        let _ = raw::futex_wait(&RELEASE, release_gen, None);
    }
}

/// The program's action for the stop signal, which it set with
/// `sigaction` (interposed: the stop handler stays installed): handler,
/// flags, mask. Zero: the default (the signal is ignored when the program
/// sends it, as before it set an action).
static PROGRAM_HANDLER: AtomicU64 = AtomicU64::new(0);
static PROGRAM_FLAGS: AtomicU64 = AtomicU64::new(0);
static PROGRAM_MASK: AtomicU64 = AtomicU64::new(0);

/// Record the program's action for the stop signal (`act`, when not null)
/// and report the one it had (`oact`), as `sigaction` would; our handler
/// is installed again with the program's `SA_RESTART` choice, so that a
/// system call the program's signal interrupts returns `EINTR` when the
/// program asked for it. Returns 0, or -1 with `errno` set.
///
/// # Safety
/// `act` is null or readable, `oact` null or writable (`sigaction`'s
/// contract).
pub unsafe fn program_action(act: *const libc::sigaction, oact: *mut libc::sigaction) -> i32 {
    if !oact.is_null() {
        // SAFETY: the caller's writable action; zeroed is valid.
        unsafe {
            let mut o: libc::sigaction = core::mem::zeroed();
            o.sa_sigaction = PROGRAM_HANDLER.load(Ordering::Acquire) as usize;
            o.sa_flags = PROGRAM_FLAGS.load(Ordering::Acquire) as i32;
            let m = PROGRAM_MASK.load(Ordering::Acquire);
            core::ptr::copy_nonoverlapping(
                (&m as *const u64).cast::<u8>(),
                (&mut o.sa_mask as *mut libc::sigset_t).cast::<u8>(),
                8,
            );
            oact.write(o);
        }
    }
    if act.is_null() {
        return 0;
    }
    // SAFETY: the caller's readable action.
    let a = unsafe { act.read() };
    let mut m = 0u64;
    // SAFETY: the first 8 bytes of a sigset_t are signals 1..64.
    unsafe {
        core::ptr::copy_nonoverlapping(
            (&a.sa_mask as *const libc::sigset_t).cast::<u8>(),
            (&mut m as *mut u64).cast::<u8>(),
            8,
        );
    }
    PROGRAM_MASK.store(m, Ordering::Release);
    PROGRAM_FLAGS.store(a.sa_flags as u32 as u64, Ordering::Release);
    PROGRAM_HANDLER.store(a.sa_sigaction as u64, Ordering::Release);
    match install_with(a.sa_flags & libc::SA_RESTART) {
        Ok(()) => 0,
        Err(_) => -1,
    }
}

/// Run the program's handler for a stop signal the program sent itself,
/// as its action says (`SA_SIGINFO` or not, `SA_RESETHAND`), with every
/// signal blocked (the stop handler's mask). Ignored by default.
///
/// # Safety
/// The kernel's handler arguments.
unsafe fn call_program(sig: i32, info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    let h = PROGRAM_HANDLER.load(Ordering::Acquire) as usize;
    if h == libc::SIG_DFL || h == libc::SIG_IGN {
        return;
    }
    let flags = PROGRAM_FLAGS.load(Ordering::Acquire) as i32;
    if flags & libc::SA_RESETHAND != 0 {
        PROGRAM_HANDLER.store(0, Ordering::Release);
    }
    // SAFETY: h is the program's handler for this signal, with its flags.
    unsafe { invoke(h, flags, sig, info, uc) };
}

/// Call a program's handler `h` as its action's `flags` say (`SA_SIGINFO`
/// or not), from one of libckpt's handlers that keeps it aside.
/// **Async-signal-safe.**
///
/// # Safety
/// `h` is a handler the program installed with `flags`; the other
/// arguments are the kernel's handler arguments.
pub(crate) unsafe fn invoke(
    h: usize,
    flags: i32,
    sig: i32,
    info: *mut libc::siginfo_t,
    uc: *mut libc::c_void,
) {
    if flags & libc::SA_SIGINFO != 0 {
        // SAFETY: the program installed this address as an SA_SIGINFO handler.
        let f: extern "C" fn(i32, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { core::mem::transmute(h) };
        f(sig, info, uc);
    } else {
        // SAFETY: the program installed this address as a plain handler.
        let f: extern "C" fn(i32) = unsafe { core::mem::transmute(h) };
        f(sig);
    }
}

/// Install the stop handler (normal context, from the constructor).
///
/// Installed through glibc's `sigaction`, which supplies its signal-return
/// trampoline. The action goes straight from default to our handler: never
/// through `SIG_IGN`, which would discard a stop signal already pending
/// (one sent while the program was being exec'd with it blocked).
pub fn install() -> Result<(), raw::Errno> {
    install_with(libc::SA_RESTART)
}

/// [`install`] with `restart` (`SA_RESTART` or 0).
fn install_with(restart: i32) -> Result<(), raw::Errno> {
    // SAFETY: a zeroed sigaction is valid; we fill in a handler with the
    // SA_SIGINFO signature, a full mask and valid flags before installing it.
    let r = unsafe {
        let mut sa: libc::sigaction = core::mem::zeroed();
        sa.sa_sigaction = handler as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | restart;
        libc::sigfillset(&mut sa.sa_mask);
        libc::sigaction(STOP_SIGNAL, &sa, core::ptr::null_mut())
    };
    if r == 0 {
        Ok(())
    } else {
        Err(raw::Errno(libc::EINVAL))
    }
}

/// Reset the stop state before a new checkpoint.
pub fn reset() {
    NSLOTS.store(0, Ordering::Release);
    PARKED.store(0, Ordering::Release);
}
