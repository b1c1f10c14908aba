//! `timer_create` with `SIGEV_THREAD`, done by libckpt so that every
//! thread involved can be stopped for a checkpoint.
//!
//! glibc implements a `SIGEV_THREAD` timer as a kernel timer that sends
//! `SIGTIMER` (32) to one helper thread, which starts a thread running the
//! callback at each expiration. glibc creates that helper with every signal
//! blocked through its internal functions, which the mask wrappers
//! (`sigmask`) cannot see, and it waits in `sigwaitinfo` for ever: it could
//! never take the stop signal, and every checkpoint of a program with such a
//! timer failed after 10 s. See `docs/signals.md`.
//!
//! The wrapper does the same thing with a helper of its own, which blocks
//! every signal but the stop signal and glibc's `SIGSETXID` (33, which
//! `setuid` and its kin need every thread to take): the kernel timer sends signal 32 (a
//! signal glibc reserves, so never the program's) to that thread
//! (`SIGEV_THREAD_ID`), carrying the address of a record with the callback
//! and its value; for each expiration the helper starts a detached thread
//! with the timer's attributes, which runs the callback with an empty
//! signal mask (as glibc does). The `timer_t` handed back is the kernel's
//! timer id, which glibc's `timer_settime`, `timer_gettime`,
//! `timer_getoverrun` and `timer_delete` take as it is. The kernel timer is
//! an ordinary one for the checkpoint (`objects::posix_timer`), the helper
//! an ordinary thread, the records ordinary memory.
//!
//! Timers whose attributes name a CPU affinity or signal mask keep only
//! their stack size, guard size and scheduling attributes (Linux threads
//! always have system scope; the rest of a
//! `pthread_attr_t` cannot be copied through public functions).

use core::ffi::{c_int, c_void};
use core::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::coord::STOP_SIGNAL;
use crate::signal_safe::raw;

/// glibc's `SIGTIMER` (= `SIGCANCEL`): reserved by glibc, never the
/// program's; only the helper thread receives it.
const SIGTIMER: i32 = 32;
/// glibc's `SIGSETXID`, which every thread must be able to take.
const SIGSETXID: i32 = 33;
const SI_TIMER: i32 = -2;
const SIGEV_THREAD_ID: i32 = 4;
const NR_TIMER_CREATE: usize = 222;
const NR_RT_SIGTIMEDWAIT: usize = 128;

/// Set once libckpt controls the process (the stop handler is installed).
static ACTIVE: AtomicU32 = AtomicU32::new(0);
/// The helper thread's tid and the process it belongs to (a forked child
/// has no helper and no timers: it starts its own).
static HELPER_TID: AtomicI32 = AtomicI32::new(0);
static HELPER_PID: AtomicI32 = AtomicI32::new(0);
/// Serialises the helper's creation.
static START: Mutex<()> = Mutex::new(());

/// What one `SIGEV_THREAD` timer runs.
struct Record {
    func: extern "C" fn(libc::sigval),
    value: libc::sigval,
    attr: Option<Attr>,
}

/// The attributes a callback thread is started with.
#[derive(Clone, Copy)]
struct Attr {
    stack: usize,
    guard: usize,
    inherit: c_int,
    policy: c_int,
    param: libc::sched_param,
}

// SAFETY: sigval holds a program value that the program hands to its own
// callback in another thread, as glibc does.
unsafe impl Send for Record {}

/// Kernel timer id -> record address (the value the signal carries).
static TIMERS: Mutex<BTreeMap<i32, usize>> = Mutex::new(BTreeMap::new());

/// Turn the wrapper on (constructor, once the stop handler is installed).
pub fn activate() {
    ACTIVE.store(1, Ordering::Release);
}

type CreateFn =
    unsafe extern "C" fn(libc::clockid_t, *mut libc::sigevent, *mut libc::timer_t) -> c_int;
type DeleteFn = unsafe extern "C" fn(libc::timer_t) -> c_int;

use super::next_fn as next;

fn set_errno(e: c_int) {
    // SAFETY: glibc's errno location for this thread is always valid.
    unsafe { *libc::__errno_location() = e };
}

/// The `sigev_notify_function` and `sigev_notify_attributes` of a
/// `SIGEV_THREAD` sigevent (libc's union, laid out as glibc's).
///
/// # Safety
/// `ev` is a readable sigevent with `SIGEV_THREAD`.
unsafe fn thread_fields(ev: *const libc::sigevent) -> (usize, *const libc::pthread_attr_t) {
    // SAFETY: value (8), signo (4), notify (4), then the function and the
    // attribute pointers.
    unsafe {
        let words = ev.cast::<usize>();
        (
            words.add(2).read(),
            words.add(3).read() as *const libc::pthread_attr_t,
        )
    }
}

fn copy_attr(a: *const libc::pthread_attr_t) -> Option<Attr> {
    if a.is_null() {
        return None;
    }
    let mut out = Attr {
        stack: 0,
        guard: 0,
        inherit: libc::PTHREAD_INHERIT_SCHED,
        policy: libc::SCHED_OTHER,
        param: libc::sched_param { sched_priority: 0 },
    };
    // SAFETY: the program's initialised attribute object, read only.
    unsafe {
        libc::pthread_attr_getstacksize(a, &mut out.stack);
        libc::pthread_attr_getguardsize(a, &mut out.guard);
        libc::pthread_attr_getinheritsched(a, &mut out.inherit);
        libc::pthread_attr_getschedpolicy(a, &mut out.policy);
        libc::pthread_attr_getschedparam(a, &mut out.param);
    }
    Some(out)
}

/// The helper's tid in this process, starting it if needed.
fn helper() -> Option<i32> {
    let pid = raw::getpid();
    if HELPER_PID.load(Ordering::Acquire) == pid {
        return Some(HELPER_TID.load(Ordering::Acquire));
    }
    let _g = START.lock().unwrap_or_else(|e| e.into_inner());
    if HELPER_PID.load(Ordering::Acquire) == pid {
        return Some(HELPER_TID.load(Ordering::Acquire));
    }
    // A forked child: the parent's timers and helper are not ours.
    if let Ok(mut t) = TIMERS.lock() {
        t.clear();
    }
    HELPER_TID.store(0, Ordering::Release);
    let mut th: libc::pthread_t = 0;
    // SAFETY: starting a thread with default attributes running `helper_main`.
    if unsafe {
        libc::pthread_create(
            &mut th,
            core::ptr::null(),
            helper_main,
            core::ptr::null_mut(),
        )
    } != 0
    {
        return None;
    }
    // SAFETY: the thread is never joined.
    unsafe { libc::pthread_detach(th) };
    let tid = loop {
        let t = HELPER_TID.load(Ordering::Acquire);
        if t != 0 {
            break t;
        }
        // SAFETY: yielding the CPU.
        unsafe { libc::sched_yield() };
    };
    HELPER_PID.store(pid, Ordering::Release);
    Some(tid)
}

extern "C" fn helper_main(_: *mut c_void) -> *mut c_void {
    // Every signal blocked but the stop signal (so the program's signals
    // go to its own threads) and glibc's SIGSETXID (33: `setuid` and its
    // kin signal every thread with it and wait for each to handle it, as
    // glibc's own helper does); 32 is taken with sigtimedwait below.
    let _ = raw::sigprocmask(
        libc::SIG_SETMASK,
        !((1u64 << (STOP_SIGNAL - 1)) | (1u64 << (SIGSETXID - 1))),
    );
    HELPER_TID.store(raw::gettid(), Ordering::Release);
    let set: u64 = 1 << (SIGTIMER - 1);
    loop {
        let mut si = [0u64; 16];
        // SAFETY: rt_sigtimedwait with a valid 8-byte set and siginfo, no timeout.
        let r = unsafe {
            raw::syscall6(
                NR_RT_SIGTIMEDWAIT,
                &set as *const u64 as usize,
                si.as_mut_ptr() as usize,
                0,
                8,
                0,
                0,
            )
        };
        if r.is_err() {
            // EINTR: a checkpoint stopped this thread.
            continue;
        }
        let code = (si[1] & 0xffff_ffff) as u32 as i32;
        if code != SI_TIMER {
            continue;
        }
        // siginfo: si_timerid at 16 (low half of word 2), si_value at 24.
        expire(si[2] as u32 as i32, si[3] as usize);
    }
}

/// One expiration of timer `id`, whose record is at `rec`: start its
/// callback in a new detached thread. An expiration queued again by a
/// restart (`objects::posix_timer::queue_expiration`) is not the kernel's
/// own signal and survives a `timer_delete`: it runs only while that id
/// still names that record.
fn expire(id: i32, rec: usize) {
    let Some((func, value, attr)) = TIMERS.lock().ok().and_then(|t| {
        (t.get(&id) == Some(&rec)).then(|| {
            // SAFETY: a live record (still registered, under the lock).
            let r = unsafe { &*(rec as *const Record) };
            (r.func, r.value, r.attr)
        })
    }) else {
        return;
    };
    let arg = Box::into_raw(Box::new((func, value)));
    // SAFETY: initialising, filling and destroying a local attribute
    // object; the new thread owns `arg`.
    unsafe {
        let mut a: libc::pthread_attr_t = core::mem::zeroed();
        libc::pthread_attr_init(&mut a);
        libc::pthread_attr_setdetachstate(&mut a, libc::PTHREAD_CREATE_DETACHED);
        if let Some(x) = attr {
            if x.stack != 0 {
                libc::pthread_attr_setstacksize(&mut a, x.stack);
            }
            libc::pthread_attr_setguardsize(&mut a, x.guard);
            libc::pthread_attr_setinheritsched(&mut a, x.inherit);
            libc::pthread_attr_setschedpolicy(&mut a, x.policy);
            libc::pthread_attr_setschedparam(&mut a, &x.param);
        }
        let mut th: libc::pthread_t = 0;
        if libc::pthread_create(&mut th, &a, run_callback, arg.cast()) != 0 {
            drop(Box::from_raw(arg));
        }
        libc::pthread_attr_destroy(&mut a);
    }
}

extern "C" fn run_callback(arg: *mut c_void) -> *mut c_void {
    // SAFETY: `expire` passed a boxed (function, value) pair to this thread.
    let (func, value) =
        *unsafe { Box::from_raw(arg.cast::<(extern "C" fn(libc::sigval), libc::sigval)>()) };
    // The callback runs with no signal blocked, as glibc's do.
    let _ = raw::sigprocmask(libc::SIG_SETMASK, 0);
    func(value);
    core::ptr::null_mut()
}

/// `timer_create(2)` wrapper: `SIGEV_THREAD` timers are made here (see the
/// module documentation), every other kind by glibc.
///
/// # Safety
/// Same contract as glibc's `timer_create`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn timer_create(
    clock: libc::clockid_t,
    ev: *mut libc::sigevent,
    timerid: *mut libc::timer_t,
) -> c_int {
    // SAFETY: the caller's readable sigevent, when not null.
    let thread = !ev.is_null() && unsafe { (*ev).sigev_notify } == libc::SIGEV_THREAD;
    if !thread || ACTIVE.load(Ordering::Acquire) == 0 {
        let Some(real) = next::<CreateFn>(b"timer_create\0") else {
            set_errno(libc::ENOSYS);
            return -1;
        };
        // SAFETY: forwarding the caller's arguments.
        return unsafe { real(clock, ev, timerid) };
    }
    // SAFETY: a SIGEV_THREAD sigevent (checked above).
    let (func, attr) = unsafe { thread_fields(ev) };
    if func == 0 {
        set_errno(libc::EINVAL);
        return -1;
    }
    let Some(tid) = helper() else {
        set_errno(libc::EAGAIN);
        return -1;
    };
    let rec = Box::into_raw(Box::new(Record {
        // SAFETY: the program's callback, of this type by timer_create's contract.
        func: unsafe { core::mem::transmute::<usize, extern "C" fn(libc::sigval)>(func) },
        // SAFETY: the caller's readable sigevent.
        value: unsafe { (*ev).sigev_value },
        attr: copy_attr(attr),
    }));
    // The kernel's sigevent: value, signo, notify, tid.
    let mut kev = [0u8; 64];
    kev[..8].copy_from_slice(&(rec as u64).to_ne_bytes());
    kev[8..12].copy_from_slice(&SIGTIMER.to_ne_bytes());
    kev[12..16].copy_from_slice(&SIGEV_THREAD_ID.to_ne_bytes());
    kev[16..20].copy_from_slice(&tid.to_ne_bytes());
    let mut id: i32 = 0;
    // SAFETY: a complete kernel sigevent and a writable id.
    let r = unsafe {
        raw::syscall3(
            NR_TIMER_CREATE,
            clock as usize,
            kev.as_ptr() as usize,
            &mut id as *mut i32 as usize,
        )
    };
    if let Err(e) = r {
        // SAFETY: never shared: the kernel refused the timer.
        drop(unsafe { Box::from_raw(rec) });
        set_errno(e.0);
        return -1;
    }
    if let Ok(mut t) = TIMERS.lock() {
        t.insert(id, rec as usize);
    }
    // SAFETY: the caller's writable timer_t; glibc takes a non-negative
    // value as a kernel timer id.
    unsafe { timerid.write(id as usize as libc::timer_t) };
    0
}

/// `timer_delete(2)` wrapper: frees the record of a timer made above.
///
/// # Safety
/// Same contract as glibc's `timer_delete`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn timer_delete(timerid: libc::timer_t) -> c_int {
    let Some(real) = next::<DeleteFn>(b"timer_delete\0") else {
        set_errno(libc::ENOSYS);
        return -1;
    };
    // SAFETY: forwarding the caller's argument.
    let r = unsafe { real(timerid) };
    let id = timerid as usize as isize;
    if r == 0 && (0..=i32::MAX as isize).contains(&id) {
        // Deleting the kernel timer drops any signal of it still queued
        // (but one a restart queued again: `expire` checks the id).
        let rec = TIMERS.lock().ok().and_then(|mut t| t.remove(&(id as i32)));
        if let Some(rec) = rec {
            // SAFETY: registered by timer_create above and now unreachable.
            drop(unsafe { Box::from_raw(rec as *mut Record) });
        }
    }
    r
}
