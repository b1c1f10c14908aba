//! The step's checkpoint signal in the program's own processes
//! (docs/signals.md, "The step's checkpoint signal").
//!
//! A job checkpoint asks each `srun` step for its part with the step's
//! checkpoint signal (`scancel --signal=USR1 JOB.STEP`; also what
//! `srun --signal=USR1@N` sends), and Slurm delivers a step's signals to
//! *every* process of the step, not only to ckpt's. `ckpt slurm-exec`
//! starts the program with that signal ignored, which holds until a
//! process installs a handler or resets it: Open MPI's `orted` handles
//! `SIGUSR1` and forwards it to the ranks it started (whose action is the
//! default, so they died), and any program with a handler of its own would
//! see a signal that an uninterrupted run never gets.
//!
//! So in a process of the program the action of that signal is kept aside
//! (as for the stop signal): `sigaction` and `signal` set and report the
//! program's action, and the kernel's action is a filter that drops the
//! signal when it comes from outside the job's pid namespace (Slurm's,
//! meant for ckpt: `si_pid` reads 0 there) and otherwise does what the
//! program's action says: call its handler, or end the process as the
//! default action would. While the program's action is "ignore", the
//! kernel's is too, so nothing changes for programs that never touch the
//! signal.

use core::sync::atomic::{AtomicI32, AtomicU64, Ordering};

use crate::signal_safe::raw;

/// Set by `ckpt slurm-exec` in the program's environment: the number of the
/// step's checkpoint signal.
pub const ENV_ASK_SIGNAL: &str = "CKPT_ASK_SIGNAL";

/// The signal (0: none; libckpt does not intervene).
static SIG: AtomicI32 = AtomicI32::new(0);
/// The program's action: handler (or `SIG_DFL`/`SIG_IGN`), flags, mask.
static HANDLER: AtomicU64 = AtomicU64::new(libc::SIG_IGN as u64);
static FLAGS: AtomicU64 = AtomicU64::new(0);
static MASK: AtomicU64 = AtomicU64::new(0);
/// glibc's `sigaction` (it supplies the signal-return trampoline).
static REAL_SIGACTION: AtomicU64 = AtomicU64::new(0);

type SigactionFn = unsafe extern "C" fn(i32, *const libc::sigaction, *mut libc::sigaction) -> i32;

/// The bit of the kept-aside signal in a pending mask (0 when none). A
/// checkpoint leaves it out of the pending signals it saves: Slurm sends
/// the request to every process of the step at the moment ckpt stops
/// them, so one pending then is, but for a vanishing chance, Slurm's, and
/// a restart must not deliver it as the program's. **Async-signal-safe.**
pub fn pending_bit() -> u64 {
    signal().map_or(0, |s| 1u64 << (s - 1))
}

/// The signal libckpt keeps aside in this process, if any.
pub fn signal() -> Option<i32> {
    Some(SIG.load(Ordering::Acquire)).filter(|&s| s > 0)
}

/// Whether `(si_code, si_pid)` says the signal came from outside the job's
/// pid namespace: sent by a process (`kill`, `sigqueue`, `tgkill`: codes
/// <= 0) that the receiver cannot see (the kernel reports pid 0).
pub fn from_outside(code: i32, pid: i32) -> bool {
    code <= 0 && pid == 0
}

/// Constructor (normal context): take over the signal named by
/// [`ENV_ASK_SIGNAL`]. The program's action starts as the kernel's is now
/// (after an exec: ignored, or the default).
pub fn init(real_sigaction: usize) {
    let Some(sig) = std::env::var(ENV_ASK_SIGNAL)
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
        .filter(|&s| (1..=64).contains(&s))
        .filter(|&s| s != crate::coord::STOP_SIGNAL && s != libc::SIGKILL && s != libc::SIGSTOP)
    else {
        return;
    };
    if real_sigaction == 0 {
        return;
    }
    let Ok(now) = raw::sigaction(sig, None) else {
        return;
    };
    // A handler cannot survive an exec; anything but "ignore" is the default.
    let start = if now.handler == libc::SIG_IGN as u64 {
        libc::SIG_IGN as u64
    } else {
        libc::SIG_DFL as u64
    };
    HANDLER.store(start, Ordering::Release);
    FLAGS.store(0, Ordering::Release);
    MASK.store(0, Ordering::Release);
    REAL_SIGACTION.store(real_sigaction as u64, Ordering::Release);
    SIG.store(sig, Ordering::Release);
    let _ = apply(sig);
}

/// Make the kernel's action match the program's: ignored while the program
/// ignores the signal, otherwise the filter with the program's mask and
/// flags (minus `SA_RESETHAND`, which the filter carries out itself).
fn apply(sig: i32) -> Result<(), raw::Errno> {
    let real = REAL_SIGACTION.load(Ordering::Acquire) as usize;
    if real == 0 {
        return Err(raw::Errno(libc::ENOSYS));
    }
    // SAFETY: REAL_SIGACTION holds glibc's sigaction, found by dlsym.
    let real: SigactionFn = unsafe { core::mem::transmute::<usize, SigactionFn>(real) };
    let h = HANDLER.load(Ordering::Acquire);
    // SAFETY: a zeroed sigaction is valid; every field is set below.
    let mut sa: libc::sigaction = unsafe { core::mem::zeroed() };
    if h == libc::SIG_IGN as u64 {
        sa.sa_sigaction = libc::SIG_IGN;
    } else {
        // The program's flags for its handler; for the default action,
        // SA_RESTART: a request from Slurm interrupts what it can least.
        let flags = if h == libc::SIG_DFL as u64 {
            libc::SA_RESTART
        } else {
            FLAGS.load(Ordering::Acquire) as i32
        };
        sa.sa_sigaction = filter as *const () as usize;
        sa.sa_flags =
            libc::SA_SIGINFO | (flags & (libc::SA_RESTART | libc::SA_ONSTACK | libc::SA_NODEFER));
        // The stop signal stays deliverable while a handler runs.
        let mask = MASK.load(Ordering::Acquire) & !super::exec::STOP_BIT;
        // SAFETY: the first 8 bytes of a sigset_t are signals 1..64.
        unsafe {
            (&mut sa.sa_mask as *mut libc::sigset_t)
                .cast::<u64>()
                .write(mask)
        };
    }
    // SAFETY: a valid action for a catchable signal.
    if unsafe { real(sig, &sa, core::ptr::null_mut()) } == 0 {
        Ok(())
    } else {
        Err(raw::Errno(libc::EINVAL))
    }
}

fn first_word(set: *const libc::sigset_t) -> u64 {
    // SAFETY: callers pass a readable sigset_t (8-aligned array of longs).
    unsafe { set.cast::<u64>().read() }
}

/// `sigaction` for the kept-aside signal: report the program's action,
/// set a new one. Returns 0, or -1 with `errno` set.
///
/// # Safety
/// `act` null or readable, `oact` null or writable (`sigaction`'s contract).
pub unsafe fn program_action(
    sig: i32,
    act: *const libc::sigaction,
    oact: *mut libc::sigaction,
) -> i32 {
    let new = if act.is_null() {
        None
    } else {
        // SAFETY: the caller's readable action.
        let a = unsafe { act.read() };
        Some((
            a.sa_sigaction as u64,
            a.sa_flags as u32 as u64,
            first_word(&a.sa_mask),
        ))
    };
    if !oact.is_null() {
        // SAFETY: the caller's writable action; zeroed is a valid value.
        unsafe {
            let mut o: libc::sigaction = core::mem::zeroed();
            o.sa_sigaction = HANDLER.load(Ordering::Acquire) as usize;
            o.sa_flags = FLAGS.load(Ordering::Acquire) as i32;
            (&mut o.sa_mask as *mut libc::sigset_t)
                .cast::<u64>()
                .write(MASK.load(Ordering::Acquire));
            oact.write(o);
        }
    }
    let Some((h, flags, mask)) = new else {
        return 0;
    };
    HANDLER.store(h, Ordering::Release);
    FLAGS.store(flags, Ordering::Release);
    MASK.store(mask, Ordering::Release);
    match apply(sig) {
        Ok(()) => 0,
        Err(e) => {
            // SAFETY: glibc's errno location for this thread.
            unsafe { *libc::__errno_location() = e.0 };
            -1
        }
    }
}

/// `signal(2)` for the kept-aside signal, with glibc's (BSD) semantics:
/// `SA_RESTART`, the signal itself blocked while its handler runs.
pub fn program_signal(sig: i32, handler: usize) -> usize {
    // SAFETY: zeroed sigactions are valid; `act` is filled in below.
    let (mut act, mut old): (libc::sigaction, libc::sigaction) =
        unsafe { (core::mem::zeroed(), core::mem::zeroed()) };
    act.sa_sigaction = handler;
    act.sa_flags = libc::SA_RESTART;
    let bit = 1u64 << (sig - 1);
    // SAFETY: the first 8 bytes of a sigset_t are signals 1..64.
    unsafe {
        (&mut act.sa_mask as *mut libc::sigset_t)
            .cast::<u64>()
            .write(bit)
    };
    // SAFETY: both actions are ours, valid and writable.
    if unsafe { program_action(sig, &act, &mut old) } == 0 {
        old.sa_sigaction
    } else {
        libc::SIG_ERR
    }
}

/// The kernel's action for the signal while the program handles it or
/// leaves it at its default. **Async-signal-safe.**
extern "C" fn filter(sig: i32, info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    if info.is_null() {
        return;
    }
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let (code, pid) = unsafe { ((*info).si_code, (*info).si_pid()) };
    if from_outside(code, pid) {
        // Slurm's request to the step: ckpt's step process answers it.
        return;
    }
    let h = HANDLER.load(Ordering::Acquire) as usize;
    if h == libc::SIG_IGN {
        return;
    }
    if h == libc::SIG_DFL {
        // The default action (terminate): with the kernel's default action
        // in place, send the signal again; it is blocked until this
        // handler returns, then ends the process as it would have.
        let dfl = raw::KernelSigaction::default();
        let _ = raw::sigaction(sig, Some(&dfl));
        let _ = raw::tgkill(raw::getpid(), raw::gettid(), sig);
        return;
    }
    let flags = FLAGS.load(Ordering::Acquire) as i32;
    if flags & libc::SA_RESETHAND != 0 {
        HANDLER.store(libc::SIG_DFL as u64, Ordering::Release);
        FLAGS.store(0, Ordering::Release);
    }
    // SAFETY: h is the program's handler for this signal, with its flags.
    unsafe { super::stop::invoke(h, flags, sig, info, uc) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_signals_sent_from_outside_the_namespace_are_slurms() {
        // kill(2) from slurmstepd, seen in the job's pid namespace.
        assert!(from_outside(libc::SI_USER, 0));
        // sigqueue(3) and tgkill(2) from outside.
        assert!(from_outside(libc::SI_QUEUE, 0));
        assert!(from_outside(libc::SI_TKILL, 0));
        // From a process of the job (orted forwarding, the program itself).
        assert!(!from_outside(libc::SI_USER, 42));
        assert!(!from_outside(libc::SI_TKILL, 1));
        // Sent by the kernel (SI_KERNEL), never a request.
        assert!(!from_outside(libc::SI_KERNEL, 0));
    }
}
