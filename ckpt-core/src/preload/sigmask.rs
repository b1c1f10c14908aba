//! Keeping the stop signal deliverable in threads that block every signal
//! (`docs/signals.md`).
//!
//! Thread pools and runtime service threads (libuv, the JVM, OpenMP
//! runtimes, anything calling `pthread_sigmask(SIG_BLOCK, &all, ..)`) block
//! every signal, [`STOP_SIGNAL`] included, and could then never be stopped.
//! These wrappers of the libc functions that put a signal set into a
//! thread's mask take the stop signal out of the set before calling glibc,
//! and remember, per thread, whether the program asked for it to be
//! blocked; every mask they hand back to the program (the old mask of
//! `pthread_sigmask`/`sigprocmask`, an action's `sa_mask`, an attribute's
//! mask) shows the stop signal as the program set it. Waits that take a set
//! of signals to accept (`sigwait`, `sigwaitinfo`, `sigtimedwait`,
//! `signalfd`) never get the stop signal either, so they cannot swallow it.
//!
//! | function | what is changed |
//! |---|---|
//! | `pthread_sigmask`, `sigprocmask` | stop signal removed from the new set; the old set reports it as the program believes |
//! | `sigsuspend` | removed from the temporary mask; an `EINTR` caused only by a checkpoint is retried |
//! | `sigwaitinfo`, `sigtimedwait` | removed from the set; an `EINTR` caused only by a checkpoint is retried (with the rest of the timeout) |
//! | `sigwait` | removed from the set (glibc retries `EINTR` itself) |
//! | `signalfd` | removed from the set |
//! | `ppoll`, `__ppoll_chk`, `pselect`, `epoll_pwait`, `epoll_pwait2` | removed from the temporary mask (`EINTR` stays, as for `poll` and `epoll_wait`) |
//! | `sigaction` | removed from `sa_mask`; the old action reports it |
//! | `pthread_attr_setsigmask_np` / `_getsigmask_np` | removed / reported |
//! | `posix_spawnattr_setsigmask` / `_getsigmask` | *added*: the child execs with it blocked, like every exec of the job ([`super::exec`]); reported |
//!
//! A thread that has not said anything about the stop signal yet (a new
//! thread, which inherits its creator's real mask, or a new program)
//! believes it blocked when its mask blocks every other signal.
//!
//! Masks set by raw `rt_sigprocmask` system calls (the Go runtime,
//! statically linked code, `syscall(SYS_rt_sigprocmask, ..)`) are not seen:
//! such a thread blocks the stop signal and the checkpoint fails after the
//! stop timeout with a message naming it ([`super::leader`]).
//!
//! The per-thread record lives in libckpt's static TLS and is reached as
//! the thread pointer plus a fixed offset, so the stop handler may read and
//! write it (a `__tls_get_addr` call is not async-signal-safe). It is
//! program memory: a restore brings it back with the thread, in agreement
//! with the real mask that `rt_sigreturn` restores from the saved frame.
//!
//! Nothing here allocates or locks once the constructor has looked the
//! glibc functions up: `sigprocmask` and `pthread_sigmask` are called from
//! signal handlers.

use core::ffi::{c_char, c_int, c_void};
use core::sync::atomic::{AtomicIsize, AtomicU8, AtomicU32, AtomicUsize, Ordering};

use super::exec::STOP_BIT;
use crate::coord::STOP_SIGNAL;

/// 1 once the stop handler is installed: before (and in processes not under
/// checkpoint control, such as `ckpt` itself) every wrapper only forwards.
static ACTIVE: AtomicU32 = AtomicU32::new(0);
/// Offset of [`VIEW`] from the thread pointer (valid when `ACTIVE`).
static VIEW_OFFSET: AtomicIsize = AtomicIsize::new(0);

/// What the program asked for the stop signal in this thread.
const UNSAID: u32 = 0;
const ASKED_BLOCKED: u32 = 1;
const ASKED_UNBLOCKED: u32 = 2;

/// What the stop handler saw during a wrapped wait.
const HIT_NONE: u32 = 0;
/// It interrupted the wait itself.
const HIT_DIRECT: u32 = 1;
/// It ran on top of a handler of the program (which may have expected the
/// wait to return `EINTR`).
const HIT_NESTED: u32 = 2;

/// A stop that interrupts the wait itself finds the stack pointer within
/// this many bytes below the wrapper's mark (glibc's frames only); a handler
/// of the program in between puts a kernel signal frame (over 1 KiB with
/// the FPU state, plus the 128-byte red zone) on the stack, or runs on its
/// alternate stack.
const DIRECT_MAX: usize = 1024;

/// Per-thread record.
struct ThreadView {
    /// [`UNSAID`], [`ASKED_BLOCKED`] or [`ASKED_UNBLOCKED`].
    stop: AtomicU32,
    /// A stack address in the innermost wrapped wait, 0 outside one.
    wait_sp: AtomicUsize,
    /// [`HIT_NONE`], [`HIT_DIRECT`] or [`HIT_NESTED`] for that wait.
    wait_hit: AtomicU32,
}

thread_local! {
    static VIEW: ThreadView = const {
        ThreadView {
            stop: AtomicU32::new(UNSAID),
            wait_sp: AtomicUsize::new(0),
            wait_hit: AtomicU32::new(HIT_NONE),
        }
    };
}

/// The thread pointer (glibc keeps the TCB's own address at `%fs:0`).
fn thread_pointer() -> usize {
    let tp: usize;
    // SAFETY: reads one word at %fs:0, which glibc sets for every thread
    // it creates (and which a restore brings back with the FS base).
    unsafe {
        core::arch::asm!("mov {}, qword ptr fs:[0]", out(reg) tp,
            options(nostack, readonly, preserves_flags));
    }
    tp
}

/// This thread's record, when the wrappers are active.
fn view() -> Option<&'static ThreadView> {
    if ACTIVE.load(Ordering::Acquire) == 0 {
        return None;
    }
    let addr = thread_pointer().wrapping_add_signed(VIEW_OFFSET.load(Ordering::Relaxed));
    // SAFETY: libckpt is loaded with the program (LD_PRELOAD), so its TLS
    // block is static TLS at the same offset from every thread's pointer
    // (checked in `activate`); the record is only used by its own thread
    // and its signal handlers, through atomics.
    Some(unsafe { &*(addr as *const ThreadView) })
}

/// Turn the wrappers on (constructor, after the stop handler is installed).
/// Stays off when libckpt's TLS is not static (it was not preloaded).
pub fn activate() {
    let Ok(addr) = VIEW.try_with(|v| v as *const ThreadView as usize) else {
        return;
    };
    let tp = thread_pointer();
    // Static TLS (variant II) sits just below the thread pointer.
    if addr >= tp || tp - addr > (1 << 20) {
        return;
    }
    VIEW_OFFSET.store(addr as isize - tp as isize, Ordering::Relaxed);
    resolve_all();
    ACTIVE.store(1, Ordering::Release);
}

/// Signals a mask never really blocks, or that glibc keeps out of masks,
/// plus ours: ignored when judging whether a mask blocks "everything".
const NOT_JUDGED: u64 = bit(libc::SIGKILL) | bit(libc::SIGSTOP) | bit(32) | bit(33) | STOP_BIT;

const fn bit(sig: c_int) -> u64 {
    1u64 << (sig - 1)
}

/// Whether `mask` blocks every signal but those of [`NOT_JUDGED`].
fn blocks_everything(mask: u64) -> bool {
    mask | NOT_JUDGED == u64::MAX
}

/// Whether the program believes the stop signal blocked in this thread,
/// whose real mask is `real`.
fn believed_blocked(v: &ThreadView, real: u64) -> bool {
    match v.stop.load(Ordering::Relaxed) {
        ASKED_BLOCKED => true,
        ASKED_UNBLOCKED => false,
        _ => blocks_everything(real),
    }
}

/// First word of a glibc `sigset_t` (signals 1 to 64).
///
/// # Safety
/// `set` must point at a readable `sigset_t`.
unsafe fn word(set: *const libc::sigset_t) -> u64 {
    // SAFETY: sigset_t is an array of unsigned longs, 8-aligned.
    unsafe { set.cast::<u64>().read() }
}

fn set_word(set: &mut libc::sigset_t, w: u64) {
    // SAFETY: as in `word`; the set is ours and writable.
    unsafe { (set as *mut libc::sigset_t).cast::<u64>().write(w) }
}

fn with_stop(set: &mut libc::sigset_t, on: bool) {
    // SAFETY: set is a valid sigset_t.
    let w = unsafe { word(set) };
    set_word(set, if on { w | STOP_BIT } else { w & !STOP_BIT });
}

/// A copy of `*set` without the stop signal.
///
/// # Safety
/// `set` must point at a readable `sigset_t`.
unsafe fn stripped(set: *const libc::sigset_t) -> libc::sigset_t {
    // SAFETY: the caller's contract.
    let mut copy = unsafe { set.read() };
    with_stop(&mut copy, false);
    copy
}

fn set_errno(e: c_int) {
    // SAFETY: glibc's errno location for this thread is always valid.
    unsafe { *libc::__errno_location() = e };
}

fn errno() -> c_int {
    // SAFETY: as in `set_errno`.
    unsafe { *libc::__errno_location() }
}

/// A glibc function found with `dlsym(RTLD_NEXT)`, once.
struct Next {
    name: &'static [u8],
    addr: AtomicUsize,
}

impl Next {
    const fn new(name: &'static [u8]) -> Next {
        Next {
            name,
            addr: AtomicUsize::new(0),
        }
    }

    /// The function as type `T` (a function pointer type), looked up on
    /// first use (the constructor looks them all up, so that calls from
    /// signal handlers never reach `dlsym`).
    fn get<T: Copy>(&self) -> Option<T> {
        if core::mem::size_of::<T>() != core::mem::size_of::<usize>() {
            return None;
        }
        let mut a = self.addr.load(Ordering::Acquire);
        if a == 0 {
            // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name.
            a = unsafe { libc::dlsym(libc::RTLD_NEXT, self.name.as_ptr().cast::<c_char>()) }
                as usize;
            if a == 0 {
                return None;
            }
            self.addr.store(a, Ordering::Release);
        }
        // SAFETY: T is a function pointer type of pointer size (checked
        // above) matching the C prototype of `name` (each caller's contract).
        Some(unsafe { core::mem::transmute_copy::<usize, T>(&a) })
    }
}

static PTHREAD_SIGMASK: Next = Next::new(b"pthread_sigmask\0");
static SIGPROCMASK: Next = Next::new(b"sigprocmask\0");
static SIGSUSPEND: Next = Next::new(b"sigsuspend\0");
static SIGWAIT: Next = Next::new(b"sigwait\0");
static SIGWAITINFO: Next = Next::new(b"sigwaitinfo\0");
static SIGTIMEDWAIT: Next = Next::new(b"sigtimedwait\0");
static SIGNALFD: Next = Next::new(b"signalfd\0");
static PPOLL: Next = Next::new(b"ppoll\0");
static PPOLL_CHK: Next = Next::new(b"__ppoll_chk\0");
static PSELECT: Next = Next::new(b"pselect\0");
static EPOLL_PWAIT: Next = Next::new(b"epoll_pwait\0");
static EPOLL_PWAIT2: Next = Next::new(b"epoll_pwait2\0");
static SIGACTION: Next = Next::new(b"sigaction\0");
static SIGNAL: Next = Next::new(b"signal\0");
static ATTR_SETSIGMASK: Next = Next::new(b"pthread_attr_setsigmask_np\0");
static ATTR_GETSIGMASK: Next = Next::new(b"pthread_attr_getsigmask_np\0");
static SPAWN_SETSIGMASK: Next = Next::new(b"posix_spawnattr_setsigmask\0");
static SPAWN_GETSIGMASK: Next = Next::new(b"posix_spawnattr_getsigmask\0");

/// Look every wrapped function up (constructor, normal context).
pub fn resolve_all() {
    for n in [
        &PTHREAD_SIGMASK,
        &SIGPROCMASK,
        &SIGSUSPEND,
        &SIGWAIT,
        &SIGWAITINFO,
        &SIGTIMEDWAIT,
        &SIGNALFD,
        &PPOLL,
        &PPOLL_CHK,
        &PSELECT,
        &EPOLL_PWAIT,
        &EPOLL_PWAIT2,
        &SIGACTION,
        &SIGNAL,
        &ATTR_SETSIGMASK,
        &ATTR_GETSIGMASK,
        &SPAWN_SETSIGMASK,
        &SPAWN_GETSIGMASK,
    ] {
        let _ = n.get::<usize>();
    }
}

// ---- the stop handler's side ----

/// Called first by the stop handler (**async-signal-safe**): if this thread
/// is in a wrapped wait, note whether the stop interrupted the wait itself
/// or a handler of the program running on top of it.
pub fn note_stop(uc: *mut c_void) {
    let Some(v) = view() else { return };
    let mark = v.wait_sp.load(Ordering::Relaxed);
    if mark == 0 || uc.is_null() {
        return;
    }
    // SAFETY: the kernel passes the interrupted context to an SA_SIGINFO handler.
    let rsp = unsafe { (*uc.cast::<libc::ucontext_t>()).uc_mcontext.gregs[libc::REG_RSP as usize] }
        as usize;
    let hit = if mark >= rsp && mark - rsp < DIRECT_MAX {
        HIT_DIRECT
    } else {
        HIT_NESTED
    };
    v.wait_hit.fetch_max(hit, Ordering::Relaxed);
}

/// Run a wait (`call`), again as long as it fails with `EINTR` because a
/// checkpoint (and nothing else) interrupted it. `again` is called before
/// each retry (to shorten a timeout); it may end the wait instead with a
/// result of its own.
fn wait_retrying(
    v: &ThreadView,
    mut call: impl FnMut() -> c_int,
    mut again: impl FnMut() -> Option<c_int>,
) -> c_int {
    loop {
        let mark = 0u8;
        let sp = core::hint::black_box(&mark) as *const u8 as usize;
        let outer_sp = v.wait_sp.swap(sp, Ordering::Relaxed);
        let outer_hit = v.wait_hit.swap(HIT_NONE, Ordering::Relaxed);
        let r = call();
        let e = errno();
        let hit = v.wait_hit.load(Ordering::Relaxed);
        v.wait_sp.store(outer_sp, Ordering::Relaxed);
        // A wait inside a wait runs in a handler of the program that
        // interrupted the outer one: that one must not be retried.
        v.wait_hit.store(
            if outer_sp != 0 { HIT_NESTED } else { outer_hit },
            Ordering::Relaxed,
        );
        if r == -1 && e == libc::EINTR && hit == HIT_DIRECT {
            if let Some(done) = again() {
                return done;
            }
            continue;
        }
        set_errno(e);
        return r;
    }
}

// ---- masks ----

type MaskFn = unsafe extern "C" fn(c_int, *const libc::sigset_t, *mut libc::sigset_t) -> c_int;

/// `pthread_sigmask` and `sigprocmask` (both return 0 on success).
///
/// # Safety
/// The C contract of those functions.
unsafe fn change_mask(
    real: MaskFn,
    how: c_int,
    set: *const libc::sigset_t,
    old: *mut libc::sigset_t,
) -> c_int {
    let Some(v) = view() else {
        // SAFETY: forwarding the caller's arguments.
        return unsafe { real(how, set, old) };
    };
    let mut asked = None;
    let copy: libc::sigset_t;
    let newp = if set.is_null() {
        set
    } else {
        // SAFETY: the caller passes a readable set.
        let has = unsafe { word(set) } & STOP_BIT != 0;
        asked = match how {
            libc::SIG_BLOCK if has => Some(ASKED_BLOCKED),
            libc::SIG_UNBLOCK if has => Some(ASKED_UNBLOCKED),
            libc::SIG_SETMASK if has => Some(ASKED_BLOCKED),
            libc::SIG_SETMASK => Some(ASKED_UNBLOCKED),
            _ => None,
        };
        // SAFETY: as above.
        copy = unsafe { stripped(set) };
        &copy as *const libc::sigset_t
    };
    // SAFETY: an all-zero sigset_t is valid.
    let mut before: libc::sigset_t = unsafe { core::mem::zeroed() };
    // SAFETY: newp is null or our copy; before is writable.
    let r = unsafe { real(how, newp, &mut before) };
    if r != 0 {
        return r;
    }
    // SAFETY: written by the call.
    let was = believed_blocked(v, unsafe { word(&before) });
    if !old.is_null() {
        with_stop(&mut before, was);
        // SAFETY: the caller passes a writable set.
        unsafe { old.write(before) };
    }
    match asked {
        Some(a) => v.stop.store(a, Ordering::Relaxed),
        // The first change fixes what the thread believes: unblocking
        // SIGUSR1 after inheriting a full mask leaves the stop signal blocked.
        None if !set.is_null() && v.stop.load(Ordering::Relaxed) == UNSAID => v.stop.store(
            if was { ASKED_BLOCKED } else { ASKED_UNBLOCKED },
            Ordering::Relaxed,
        ),
        None => {}
    }
    r
}

/// `pthread_sigmask(3)` wrapper.
///
/// # Safety
/// Same contract as glibc's `pthread_sigmask`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pthread_sigmask(
    how: c_int,
    set: *const libc::sigset_t,
    old: *mut libc::sigset_t,
) -> c_int {
    let Some(real) = PTHREAD_SIGMASK.get::<MaskFn>() else {
        return libc::ENOSYS;
    };
    // SAFETY: the caller's contract.
    unsafe { change_mask(real, how, set, old) }
}

/// `sigprocmask(2)` wrapper.
///
/// # Safety
/// Same contract as glibc's `sigprocmask`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sigprocmask(
    how: c_int,
    set: *const libc::sigset_t,
    old: *mut libc::sigset_t,
) -> c_int {
    let Some(real) = SIGPROCMASK.get::<MaskFn>() else {
        set_errno(libc::ENOSYS);
        return -1;
    };
    // SAFETY: the caller's contract.
    unsafe { change_mask(real, how, set, old) }
}

// ---- waits ----

/// `sigsuspend(2)` wrapper.
///
/// # Safety
/// Same contract as glibc's `sigsuspend`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sigsuspend(mask: *const libc::sigset_t) -> c_int {
    type F = unsafe extern "C" fn(*const libc::sigset_t) -> c_int;
    let Some(real) = SIGSUSPEND.get::<F>() else {
        set_errno(libc::ENOSYS);
        return -1;
    };
    let Some(v) = view().filter(|_| !mask.is_null()) else {
        // SAFETY: forwarding the caller's argument.
        return unsafe { real(mask) };
    };
    // SAFETY: the caller passes a readable set.
    let m = unsafe { stripped(mask) };
    // SAFETY: m is a valid set for each call.
    wait_retrying(v, || unsafe { real(&m) }, || None)
}

/// `sigwait(3)` wrapper (glibc's retries `EINTR` itself).
///
/// # Safety
/// Same contract as glibc's `sigwait`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sigwait(set: *const libc::sigset_t, sig: *mut c_int) -> c_int {
    type F = unsafe extern "C" fn(*const libc::sigset_t, *mut c_int) -> c_int;
    let Some(real) = SIGWAIT.get::<F>() else {
        return libc::ENOSYS;
    };
    if view().is_none() || set.is_null() {
        // SAFETY: forwarding the caller's arguments.
        return unsafe { real(set, sig) };
    }
    // SAFETY: the caller passes a readable set; sig is forwarded.
    unsafe {
        let s = stripped(set);
        real(&s, sig)
    }
}

/// `sigwaitinfo(2)` wrapper.
///
/// # Safety
/// Same contract as glibc's `sigwaitinfo`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sigwaitinfo(
    set: *const libc::sigset_t,
    info: *mut libc::siginfo_t,
) -> c_int {
    type F = unsafe extern "C" fn(*const libc::sigset_t, *mut libc::siginfo_t) -> c_int;
    let Some(real) = SIGWAITINFO.get::<F>() else {
        set_errno(libc::ENOSYS);
        return -1;
    };
    let Some(v) = view().filter(|_| !set.is_null()) else {
        // SAFETY: forwarding the caller's arguments.
        return unsafe { real(set, info) };
    };
    // SAFETY: the caller passes a readable set.
    let s = unsafe { stripped(set) };
    // SAFETY: s is a valid set; info is the caller's.
    wait_retrying(v, || unsafe { real(&s, info) }, || None)
}

fn now_ns() -> u64 {
    crate::signal_safe::raw::clock_ns(libc::CLOCK_MONOTONIC)
}

/// `sigtimedwait(2)` wrapper: a retry waits only for what is left of the
/// timeout.
///
/// # Safety
/// Same contract as glibc's `sigtimedwait`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sigtimedwait(
    set: *const libc::sigset_t,
    info: *mut libc::siginfo_t,
    timeout: *const libc::timespec,
) -> c_int {
    type F = unsafe extern "C" fn(
        *const libc::sigset_t,
        *mut libc::siginfo_t,
        *const libc::timespec,
    ) -> c_int;
    let Some(real) = SIGTIMEDWAIT.get::<F>() else {
        set_errno(libc::ENOSYS);
        return -1;
    };
    let Some(v) = view().filter(|_| !set.is_null()) else {
        // SAFETY: forwarding the caller's arguments.
        return unsafe { real(set, info, timeout) };
    };
    // SAFETY: the caller passes a readable set.
    let s = unsafe { stripped(set) };
    if timeout.is_null() {
        // SAFETY: s is a valid set; info is the caller's.
        return wait_retrying(v, || unsafe { real(&s, info, timeout) }, || None);
    }
    // SAFETY: the caller passes a readable timespec.
    let t = unsafe { timeout.read() };
    if t.tv_sec < 0 || !(0..1_000_000_000).contains(&t.tv_nsec) {
        // Invalid: glibc and the kernel say EINVAL.
        // SAFETY: forwarding the caller's arguments.
        return unsafe { real(&s, info, timeout) };
    }
    let end = now_ns().saturating_add(
        (t.tv_sec as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(t.tv_nsec as u64),
    );
    let mut left = t;
    let lp = &mut left as *mut libc::timespec;
    wait_retrying(
        v,
        // SAFETY: s and left are valid; info is the caller's.
        || unsafe { real(&s, info, lp) },
        || {
            let rest = end.saturating_sub(now_ns());
            // SAFETY: lp points at `left`, not borrowed elsewhere meanwhile.
            unsafe {
                (*lp).tv_sec = (rest / 1_000_000_000) as libc::time_t;
                (*lp).tv_nsec = (rest % 1_000_000_000) as libc::c_long;
            }
            None
        },
    )
}

/// `signalfd(2)` wrapper.
///
/// # Safety
/// Same contract as glibc's `signalfd`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn signalfd(fd: c_int, mask: *const libc::sigset_t, flags: c_int) -> c_int {
    type F = unsafe extern "C" fn(c_int, *const libc::sigset_t, c_int) -> c_int;
    let Some(real) = SIGNALFD.get::<F>() else {
        set_errno(libc::ENOSYS);
        return -1;
    };
    if view().is_none() || mask.is_null() {
        // SAFETY: forwarding the caller's arguments.
        return unsafe { real(fd, mask, flags) };
    }
    // SAFETY: the caller passes a readable set.
    unsafe {
        let m = stripped(mask);
        real(fd, &m, flags)
    }
}

/// A copy of a temporary wait mask without the stop signal, when the
/// wrappers are active and there is a mask.
///
/// # Safety
/// `mask` is null or points at a readable `sigset_t`.
unsafe fn wait_mask(mask: *const libc::sigset_t) -> Option<libc::sigset_t> {
    if mask.is_null() || view().is_none() {
        return None;
    }
    // SAFETY: the caller's contract.
    Some(unsafe { stripped(mask) })
}

fn mask_ptr(m: &Option<libc::sigset_t>, orig: *const libc::sigset_t) -> *const libc::sigset_t {
    m.as_ref().map_or(orig, |s| s as *const libc::sigset_t)
}

/// `ppoll(2)` wrapper.
///
/// # Safety
/// Same contract as glibc's `ppoll`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ppoll(
    fds: *mut libc::pollfd,
    nfds: libc::nfds_t,
    timeout: *const libc::timespec,
    mask: *const libc::sigset_t,
) -> c_int {
    type F = unsafe extern "C" fn(
        *mut libc::pollfd,
        libc::nfds_t,
        *const libc::timespec,
        *const libc::sigset_t,
    ) -> c_int;
    let Some(real) = PPOLL.get::<F>() else {
        set_errno(libc::ENOSYS);
        return -1;
    };
    // SAFETY: the caller's contract.
    let m = unsafe { wait_mask(mask) };
    // SAFETY: forwarding the caller's arguments with our copy of the mask.
    unsafe { real(fds, nfds, timeout, mask_ptr(&m, mask)) }
}

/// `__ppoll_chk` (the `_FORTIFY_SOURCE` entry of `ppoll`) wrapper.
///
/// # Safety
/// Same contract as glibc's `__ppoll_chk`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __ppoll_chk(
    fds: *mut libc::pollfd,
    nfds: libc::nfds_t,
    timeout: *const libc::timespec,
    mask: *const libc::sigset_t,
    fdslen: usize,
) -> c_int {
    type F = unsafe extern "C" fn(
        *mut libc::pollfd,
        libc::nfds_t,
        *const libc::timespec,
        *const libc::sigset_t,
        usize,
    ) -> c_int;
    let Some(real) = PPOLL_CHK.get::<F>() else {
        set_errno(libc::ENOSYS);
        return -1;
    };
    // SAFETY: the caller's contract.
    let m = unsafe { wait_mask(mask) };
    // SAFETY: forwarding the caller's arguments with our copy of the mask.
    unsafe { real(fds, nfds, timeout, mask_ptr(&m, mask), fdslen) }
}

/// `pselect(2)` wrapper.
///
/// # Safety
/// Same contract as glibc's `pselect`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pselect(
    nfds: c_int,
    r: *mut libc::fd_set,
    w: *mut libc::fd_set,
    e: *mut libc::fd_set,
    timeout: *const libc::timespec,
    mask: *const libc::sigset_t,
) -> c_int {
    type F = unsafe extern "C" fn(
        c_int,
        *mut libc::fd_set,
        *mut libc::fd_set,
        *mut libc::fd_set,
        *const libc::timespec,
        *const libc::sigset_t,
    ) -> c_int;
    let Some(real) = PSELECT.get::<F>() else {
        set_errno(libc::ENOSYS);
        return -1;
    };
    // SAFETY: the caller's contract.
    let m = unsafe { wait_mask(mask) };
    // SAFETY: forwarding the caller's arguments with our copy of the mask.
    unsafe { real(nfds, r, w, e, timeout, mask_ptr(&m, mask)) }
}

/// `epoll_pwait(2)` wrapper.
///
/// # Safety
/// Same contract as glibc's `epoll_pwait`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn epoll_pwait(
    epfd: c_int,
    events: *mut libc::epoll_event,
    max: c_int,
    timeout: c_int,
    mask: *const libc::sigset_t,
) -> c_int {
    type F = unsafe extern "C" fn(
        c_int,
        *mut libc::epoll_event,
        c_int,
        c_int,
        *const libc::sigset_t,
    ) -> c_int;
    let Some(real) = EPOLL_PWAIT.get::<F>() else {
        set_errno(libc::ENOSYS);
        return -1;
    };
    // SAFETY: the caller's contract.
    let m = unsafe { wait_mask(mask) };
    // SAFETY: forwarding the caller's arguments with our copy of the mask.
    unsafe { real(epfd, events, max, timeout, mask_ptr(&m, mask)) }
}

/// `epoll_pwait2(2)` wrapper (glibc 2.35 and later).
///
/// # Safety
/// Same contract as glibc's `epoll_pwait2`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn epoll_pwait2(
    epfd: c_int,
    events: *mut libc::epoll_event,
    max: c_int,
    timeout: *const libc::timespec,
    mask: *const libc::sigset_t,
) -> c_int {
    type F = unsafe extern "C" fn(
        c_int,
        *mut libc::epoll_event,
        c_int,
        *const libc::timespec,
        *const libc::sigset_t,
    ) -> c_int;
    let Some(real) = EPOLL_PWAIT2.get::<F>() else {
        set_errno(libc::ENOSYS);
        return -1;
    };
    // SAFETY: the caller's contract.
    let m = unsafe { wait_mask(mask) };
    // SAFETY: forwarding the caller's arguments with our copy of the mask.
    unsafe { real(epfd, events, max, timeout, mask_ptr(&m, mask)) }
}

// ---- handlers and attributes ----

/// Signals whose handler the program installed with the stop signal in
/// `sa_mask` (index = signal number).
static SA_MASK_STOP: [AtomicU8; 65] = [const { AtomicU8::new(0) }; 65];

/// `sigaction(2)` wrapper: the stop signal stays deliverable while the
/// program's handlers run (a handler may run for long, or never return
/// but `siglongjmp` out).
///
/// # Safety
/// Same contract as glibc's `sigaction`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sigaction(
    sig: c_int,
    act: *const libc::sigaction,
    oact: *mut libc::sigaction,
) -> c_int {
    type F = unsafe extern "C" fn(c_int, *const libc::sigaction, *mut libc::sigaction) -> c_int;
    let Some(real) = SIGACTION.get::<F>() else {
        set_errno(libc::ENOSYS);
        return -1;
    };
    if super::ask::signal() == Some(sig) {
        // The step's checkpoint signal, kept aside (`preload/ask.rs`).
        // SAFETY: the caller's pointers, as sigaction's contract.
        return unsafe { super::ask::program_action(sig, act, oact) };
    }
    // Only where libckpt runs (the wrappers are active): the ckpt binary
    // links this code too and must set its own actions.
    if sig == STOP_SIGNAL
        && ACTIVE.load(Ordering::Acquire) != 0
        // SAFETY: the caller passes a readable action, or null.
        && (act.is_null() || unsafe { (*act).sa_sigaction } != super::stop::handler as *const () as usize)
    {
        // The program's own use of the stop signal (OpenJDK's libnet wakes
        // blocked threads with it): kept aside and called by the stop
        // handler for the program's signals (docs/signals.md).
        // SAFETY: the caller's pointers, as sigaction's contract.
        return unsafe { super::stop::program_action(act, oact) };
    }
    let slot = usize::try_from(sig).ok().and_then(|i| SA_MASK_STOP.get(i));
    let (Some(slot), Some(_)) = (slot.filter(|_| sig != STOP_SIGNAL), view()) else {
        // SAFETY: forwarding the caller's arguments.
        return unsafe { real(sig, act, oact) };
    };
    let mut asked = None;
    let mut copy: libc::sigaction;
    let actp = if act.is_null() {
        act
    } else {
        // SAFETY: the caller passes a readable action.
        copy = unsafe { act.read() };
        // SAFETY: copy.sa_mask is a valid set.
        asked = Some(unsafe { word(&copy.sa_mask) } & STOP_BIT != 0);
        with_stop(&mut copy.sa_mask, false);
        &copy as *const libc::sigaction
    };
    let before = slot.load(Ordering::Relaxed) != 0;
    // SAFETY: forwarding the caller's arguments with our copy of the action.
    let r = unsafe { real(sig, actp, oact) };
    if r == 0 {
        if !oact.is_null() {
            // SAFETY: written by the call; the caller's writable action.
            unsafe { with_stop(&mut (*oact).sa_mask, before) };
        }
        if let Some(a) = asked {
            slot.store(u8::from(a), Ordering::Relaxed);
        }
    }
    r
}

/// glibc's `sigaction`, for `preload/ask.rs` (0 when not found).
pub(crate) fn real_sigaction() -> usize {
    SIGACTION.get::<usize>().unwrap_or(0)
}

/// `signal(3)` wrapper: glibc's `signal` sets the action without going
/// through `sigaction`'s symbol, so the step's checkpoint signal is caught
/// here too (`preload/ask.rs`).
///
/// # Safety
/// Same contract as glibc's `signal`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn signal(sig: c_int, handler: libc::sighandler_t) -> libc::sighandler_t {
    if super::ask::signal() == Some(sig) {
        return super::ask::program_signal(sig, handler);
    }
    type F = unsafe extern "C" fn(c_int, libc::sighandler_t) -> libc::sighandler_t;
    let Some(real) = SIGNAL.get::<F>() else {
        set_errno(libc::ENOSYS);
        return libc::SIG_ERR;
    };
    // SAFETY: forwarding the caller's arguments.
    unsafe { real(sig, handler) }
}

/// `pthread_attr_setsigmask_np(3)` wrapper: a thread started with this
/// attribute must be stoppable too.
///
/// # Safety
/// Same contract as glibc's `pthread_attr_setsigmask_np`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pthread_attr_setsigmask_np(
    attr: *mut libc::pthread_attr_t,
    set: *const libc::sigset_t,
) -> c_int {
    type F = unsafe extern "C" fn(*mut libc::pthread_attr_t, *const libc::sigset_t) -> c_int;
    let Some(real) = ATTR_SETSIGMASK.get::<F>() else {
        return libc::ENOSYS;
    };
    // SAFETY: the caller's contract.
    let m = unsafe { wait_mask(set) };
    // SAFETY: forwarding the caller's arguments with our copy of the set.
    unsafe { real(attr, mask_ptr(&m, set)) }
}

/// Report the stop signal in a mask read back from an attribute as a
/// thread that inherited that mask would believe it.
///
/// # Safety
/// `set` is null or points at a writable `sigset_t`.
unsafe fn report_believed(set: *mut libc::sigset_t) {
    if set.is_null() || view().is_none() {
        return;
    }
    // SAFETY: the caller's contract.
    unsafe {
        let full = blocks_everything(word(set));
        with_stop(&mut *set, full);
    }
}

/// `pthread_attr_getsigmask_np(3)` wrapper.
///
/// # Safety
/// Same contract as glibc's `pthread_attr_getsigmask_np`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pthread_attr_getsigmask_np(
    attr: *const libc::pthread_attr_t,
    set: *mut libc::sigset_t,
) -> c_int {
    type F = unsafe extern "C" fn(*const libc::pthread_attr_t, *mut libc::sigset_t) -> c_int;
    let Some(real) = ATTR_GETSIGMASK.get::<F>() else {
        return libc::ENOSYS;
    };
    // SAFETY: forwarding the caller's arguments.
    let r = unsafe { real(attr, set) };
    if r == 0 {
        // SAFETY: written by the call.
        unsafe { report_believed(set) };
    }
    r
}

/// `posix_spawnattr_setsigmask(3)` wrapper: the child execs with the stop
/// signal blocked (until the new program's libckpt installs its handler and
/// unblocks it), as every exec of the job does ([`super::exec`]): between
/// glibc setting this mask and the new program's constructor, the signal's
/// default action would end the child.
///
/// # Safety
/// Same contract as glibc's `posix_spawnattr_setsigmask`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn posix_spawnattr_setsigmask(
    attr: *mut libc::posix_spawnattr_t,
    set: *const libc::sigset_t,
) -> c_int {
    type F = unsafe extern "C" fn(*mut libc::posix_spawnattr_t, *const libc::sigset_t) -> c_int;
    let Some(real) = SPAWN_SETSIGMASK.get::<F>() else {
        return libc::ENOSYS;
    };
    if set.is_null() || view().is_none() {
        // SAFETY: forwarding the caller's arguments.
        return unsafe { real(attr, set) };
    }
    // SAFETY: the caller passes a readable set.
    let mut m = unsafe { set.read() };
    with_stop(&mut m, true);
    // SAFETY: forwarding the caller's arguments with our copy of the set.
    unsafe { real(attr, &m) }
}

/// `posix_spawnattr_getsigmask(3)` wrapper.
///
/// # Safety
/// Same contract as glibc's `posix_spawnattr_getsigmask`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn posix_spawnattr_getsigmask(
    attr: *const libc::posix_spawnattr_t,
    set: *mut libc::sigset_t,
) -> c_int {
    type F = unsafe extern "C" fn(*const libc::posix_spawnattr_t, *mut libc::sigset_t) -> c_int;
    let Some(real) = SPAWN_GETSIGMASK.get::<F>() else {
        return libc::ENOSYS;
    };
    // SAFETY: forwarding the caller's arguments.
    let r = unsafe { real(attr, set) };
    if r == 0 {
        // SAFETY: written by the call.
        unsafe { report_believed(set) };
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_blocked_ignores_what_cannot_be_blocked() {
        assert!(blocks_everything(u64::MAX));
        assert!(blocks_everything(!NOT_JUDGED));
        assert!(!blocks_everything(!NOT_JUDGED & !bit(libc::SIGUSR1)));
        assert!(!blocks_everything(0));
    }

    #[test]
    fn believed_follows_the_record() {
        let v = ThreadView {
            stop: AtomicU32::new(UNSAID),
            wait_sp: AtomicUsize::new(0),
            wait_hit: AtomicU32::new(HIT_NONE),
        };
        assert!(believed_blocked(&v, !STOP_BIT));
        assert!(!believed_blocked(&v, 0));
        v.stop.store(ASKED_BLOCKED, Ordering::Relaxed);
        assert!(believed_blocked(&v, 0));
        v.stop.store(ASKED_UNBLOCKED, Ordering::Relaxed);
        assert!(!believed_blocked(&v, !STOP_BIT));
    }
}
