//! The last stage of restore, run from the restored libckpt itself.
//!
//! The restorer (ckpt-restart's stage 2) maps every saved region back, fills
//! [`CKPT_RESTORE_INFO`](super::leader::CKPT_RESTORE_INFO)'s thread table,
//! switches to the main thread's restored stack and jumps to
//! [`ckpt_restore_finish`]. From here on only program memory is mapped, so
//! this code can remove the restorer's own mapping (which the restorer
//! cannot do to itself), recreate every thread with its saved tid
//! (`clone3` with `set_tid`, or `clone` after choosing the id through
//! `ns_last_pid` on older kernels), re-register each thread's rseq area, robust
//! list and clear-child-tid address, drop the capabilities the restorer
//! needed, and `rt_sigreturn` each thread from the signal frame the stop
//! handler left on its stack.
//!
//! **Async-signal-safe and TLS-free**: nothing here may touch glibc, thread
//! locals or the allocator; the FS base is set before anything else.

use core::arch::asm;
use core::sync::atomic::{AtomicU32, Ordering};

use crate::objects::posix_timer::{self, MAX_TIMERS, PosixTimer};
use crate::signal_safe::raw::{self, nr};

/// One thread to recreate.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FinishThread {
    /// Thread id to recreate.
    pub tid: i64,
    /// Saved ucontext address (rsp for rt_sigreturn).
    pub ucontext: u64,
    /// FS base.
    pub fs_base: u64,
    /// rseq area or 0.
    pub rseq: u64,
    /// rseq signature.
    pub rseq_sig: u64,
    /// Robust list head.
    pub robust_head: u64,
    /// Robust list length.
    pub robust_len: u64,
    /// clear_child_tid.
    pub clear_tid: u64,
    /// Top of a free stack area for the recreation.
    pub scratch_sp: u64,
    /// Signals to raise again for this thread.
    pub pending: u64,
    /// The thread's name, NUL-terminated.
    pub name: [u8; 16],
}

/// Most threads restorable.
pub const MAX_FINISH_THREADS: usize = super::stop::MAX_THREADS;

/// The hand-over block written by the restorer before it jumps here.
#[repr(C)]
pub struct FinishArgs {
    /// Restorer mapping to remove.
    pub blob_start: u64,
    /// Its length.
    pub blob_len: u64,
    /// Number of valid entries in `threads` (the leader is entry 0).
    pub nthreads: u64,
    /// Fd to close once restored (the restorer's "done" pipe), or -1.
    pub done_fd: i64,
    /// Signals to raise again for the whole process.
    pub shared_pending: u64,
    /// Threads.
    pub threads: [FinishThread; MAX_FINISH_THREADS],
    /// The generation being restored when the next checkpoints are to be
    /// incremental (tracking is armed before any thread runs), else 0.
    pub track_generation: u64,
    /// This process's descriptor of `/proc/sys/kernel/ns_last_pid` when
    /// thread ids are chosen through it (kernels without `clone3`'s
    /// `set_tid`; docs/kernel.md), else -1. Closed once the threads exist.
    pub last_pid_fd: i64,
    /// Number of valid entries in `timers`.
    pub ntimers: u64,
    /// POSIX timers to create again, sorted by id, with the ones whose
    /// signal was pending marked (`objects::posix_timer`).
    pub timers: [PosixTimer; MAX_TIMERS],
}

/// Failure code of a POSIX timer that could not be created again (the
/// restart's `restore::tree::describe_failure` names it).
pub const FAIL_POSIX_TIMER: u32 = 8;

/// Storage for [`FinishArgs`], inside libckpt so that it survives the
/// removal of the restorer mapping. Its address is found through the symbol
/// table of the restored libckpt (recorded in the manifest's hooks).
#[unsafe(no_mangle)]
pub static mut CKPT_FINISH_ARGS: FinishArgs = FinishArgs {
    blob_start: 0,
    blob_len: 0,
    nthreads: 0,
    done_fd: -1,
    shared_pending: 0,
    threads: [FinishThread {
        tid: 0,
        ucontext: 0,
        fs_base: 0,
        rseq: 0,
        rseq_sig: 0,
        robust_head: 0,
        robust_len: 0,
        clear_tid: 0,
        scratch_sp: 0,
        pending: 0,
        name: [0; 16],
    }; MAX_FINISH_THREADS],
    track_generation: 0,
    last_pid_fd: -1,
    ntimers: 0,
    timers: [PosixTimer::NONE; MAX_TIMERS],
};

static GO: AtomicU32 = AtomicU32::new(0);

use crate::signal_safe::raw::CloneArgs;

/// Entry point from the restorer.
///
/// # Safety
/// Only the restorer may call this, on the main thread's restored stack,
/// with `args` pointing at a filled [`FinishArgs`] in restored memory.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ckpt_restore_finish(args: *const FinishArgs) -> ! {
    // SAFETY: the restorer filled *args and nothing else runs.
    let a = unsafe { &*args };
    let n = (a.nthreads as usize).min(MAX_FINISH_THREADS);
    let Some(main) = a.threads.first() else {
        raw::exit_group(87)
    };
    // SAFETY: ARCH_SET_FS with the leader's saved TLS base; we use no TLS before this.
    let _ = unsafe { raw::syscall3(nr::ARCH_PRCTL, 0x1002, main.fs_base as usize, 0) };
    // SAFETY: the restorer mapping holds no code or data we still use.
    let _ = unsafe { raw::munmap(a.blob_start as usize, a.blob_len as usize) };
    // SAFETY: CKPT_RESTORE_INFO lives in restored memory; the counter is atomic.
    let ri = unsafe { &*core::ptr::addr_of!(super::leader::CKPT_RESTORE_INFO) };
    ri.counter.fetch_add(1, Ordering::AcqRel);
    super::leader::reset_after_restore();
    if a.track_generation != 0 {
        // Still the only thread, running on the main thread's stack below
        // scratch_sp: everything else is as the generation saved it.
        super::track::arm_after_restore(a.track_generation, main.scratch_sp);
    }
    GO.store(0, Ordering::Release);
    for t in a.threads.iter().take(n).skip(1) {
        let made = if a.last_pid_fd >= 0 {
            spawn_through_last_pid(t, a.last_pid_fd as i32)
        } else {
            spawn(t)
        };
        if made.is_err() {
            raw::exit_group(88);
        }
    }
    if a.last_pid_fd >= 0 {
        raw::close(a.last_pid_fd as i32);
    }
    // POSIX timers, once every thread a timer may signal exists; their
    // pending signals are queued as theirs.
    let nt = (a.ntimers as usize).min(MAX_TIMERS);
    if let Err(e) = posix_timer::restore_all(a.timers.get(..nt).unwrap_or(&[])) {
        fail(a.done_fd, FAIL_POSIX_TIMER, e);
    }
    // Signals that were pending at the checkpoint: queue them again; every
    // thread still blocks all signals, and its saved mask comes back with
    // rt_sigreturn, so they are delivered exactly when they would have been.
    let pid = raw::getpid();
    raise_all(a.shared_pending, |sig| {
        // SAFETY: kill(2) on our own process.
        let _ = unsafe {
            raw::syscall3(62 /* kill */, pid as usize, sig as usize, 0)
        };
    });
    if a.done_fd >= 0 {
        let _ = raw::write(a.done_fd as i32, b"K");
        raw::close(a.done_fd as i32);
    }
    GO.store(1, Ordering::Release);
    raw::futex_wake_all(&GO);
    // SAFETY: main describes this thread; resume never returns.
    unsafe { resume(main) }
}

/// Report a failure record (the layout of the restart's `RstFailure`:
/// code, pid, address, errno) on the status pipe and end the process.
fn fail(done_fd: i64, code: u32, e: raw::Errno) -> ! {
    let mut rec = [0u8; 24];
    rec[..4].copy_from_slice(&code.to_ne_bytes());
    rec[4..8].copy_from_slice(&raw::getpid().to_ne_bytes());
    rec[16..24].copy_from_slice(&i64::from(e.0).to_ne_bytes());
    if done_fd >= 0 {
        let _ = raw::write(done_fd as i32, &rec);
    }
    raw::exit_group(89)
}

fn raise_all(mask: u64, mut f: impl FnMut(i32)) {
    for sig in 1..=64i32 {
        if mask & (1u64 << (sig - 1)) != 0 {
            f(sig);
        }
    }
}

/// What a restored thread shares with its process (as `pthread_create`).
const THREAD_FLAGS: i32 = libc::CLONE_VM
    | libc::CLONE_FS
    | libc::CLONE_FILES
    | libc::CLONE_SIGHAND
    | libc::CLONE_THREAD
    | libc::CLONE_SYSVSEM
    | libc::CLONE_SETTLS;

fn spawn(t: &FinishThread) -> Result<(), raw::Errno> {
    let tid = t.tid;
    let stack_top = t.scratch_sp & !0xf;
    let ca = CloneArgs {
        flags: THREAD_FLAGS as u64,
        pidfd: 0,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: 0,
        stack: stack_top - 16384,
        stack_size: 16384,
        tls: t.fs_base,
        set_tid: &tid as *const i64 as u64,
        set_tid_size: 1,
        cgroup: 0,
    };
    let ret: isize;
    // SAFETY: clone3 creates a thread sharing our memory. In the child, which
    // starts on the scratch stack with rax = 0, we only call `resume_entry`
    // (which never returns) with the thread record kept in r12; the parent
    // continues normally with the new tid in rax.
    unsafe {
        asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "mov rdi, r12",
            "and rsp, -16",
            "call {entry}",
            "ud2",
            "2:",
            entry = sym resume_entry,
            inlateout("rax") nr::CLONE3 as isize => ret,
            in("rdi") &ca as *const CloneArgs,
            in("rsi") core::mem::size_of::<CloneArgs>(),
            in("r12") t as *const FinishThread,
            lateout("rcx") _, lateout("r11") _,
        );
    }
    if ret < 0 {
        Err(raw::Errno((-ret) as i32))
    } else {
        Ok(())
    }
}

/// [`spawn`] for kernels without `set_tid`: the thread id is claimed
/// through `ns_last_pid` (under the lock every process of the restore
/// takes) and the thread made with the older `clone`.
fn spawn_through_last_pid(t: &FinishThread, fd: i32) -> Result<(), raw::Errno> {
    let tid = t.tid as i32;
    crate::signal_safe::last_pid::claim(fd, tid)?;
    let stack_top = t.scratch_sp & !0xf;
    let ret: isize;
    // SAFETY: clone (flags, new stack, parent tid, child tid, tls) creates a
    // thread sharing our memory; the child starts with rsp = stack_top (the
    // thread's free scratch area) and rax = 0 and only calls `resume_entry`
    // (which never returns) with the thread record kept in r12; the parent
    // continues with the new tid in rax.
    unsafe {
        asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "mov rdi, r12",
            "and rsp, -16",
            "call {entry}",
            "ud2",
            "2:",
            entry = sym resume_entry,
            inlateout("rax") nr::CLONE as isize => ret,
            in("rdi") THREAD_FLAGS as usize,
            in("rsi") stack_top as usize,
            in("rdx") 0usize,
            in("r10") 0usize,
            in("r8") t.fs_base as usize,
            in("r12") t as *const FinishThread,
            lateout("rcx") _, lateout("r11") _,
        );
    }
    crate::signal_safe::last_pid::release(fd);
    if ret < 0 {
        Err(raw::Errno((-ret) as i32))
    } else if ret != t.tid as isize {
        // That thread stops itself in resume_entry.
        Err(raw::Errno(libc::EEXIST))
    } else {
        Ok(())
    }
}

extern "C" fn resume_entry(t: *const FinishThread) -> ! {
    // SAFETY: t points into CKPT_FINISH_ARGS, which stays valid.
    let t = unsafe { &*t };
    // A thread that did not get its saved id (ns_last_pid raced) must not
    // run the program: the restore fails instead.
    if i64::from(raw::gettid()) != t.tid {
        raw::exit_group(88);
    }
    // SAFETY: as above.
    unsafe { resume(t) }
}

/// Re-register per-thread kernel state, drop capabilities, and return into
/// the saved signal frame.
///
/// # Safety
/// `t` must describe the calling thread's saved state in restored memory.
unsafe fn resume(t: &FinishThread) -> ! {
    // SAFETY: the addresses come from this thread's own saved state; the kernel only stores them.
    unsafe {
        let _ = raw::syscall3(nr::SET_TID_ADDRESS, t.clear_tid as usize, 0, 0);
    }
    if t.robust_head != 0 {
        // SAFETY: as above; the kernel only records the list head.
        let _ = unsafe {
            raw::syscall3(
                nr::SET_ROBUST_LIST,
                t.robust_head as usize,
                t.robust_len as usize,
                0,
            )
        };
    }
    if t.rseq != 0 {
        // SAFETY: the rseq area is part of the thread's restored TLS; length 32 is what glibc registers.
        let _ =
            unsafe { raw::syscall6(nr::RSEQ, t.rseq as usize, 32, 0, t.rseq_sig as usize, 0, 0) };
    }
    if t.name[0] != 0 {
        // SAFETY: PR_SET_NAME (15) reads a NUL-terminated name of at most 16 bytes.
        let _ = unsafe { raw::syscall3(nr::PRCTL, 15, t.name.as_ptr() as usize, 0) };
    }
    // No alternate signal stack until rt_sigreturn sets the saved one. The
    // main thread is the restart helper's task, whose runtime had set one
    // (in memory that is gone now); and the kernel saves a thread's
    // "none" as all zeros, which rt_sigreturn does not apply (it only
    // ignores it). Left alone, the first handler installed with SA_ONSTACK
    // (Python's, for one) after the restart would be run on that stale
    // stack: SIGSEGV. See docs/signals.md.
    let off = libc::stack_t {
        ss_sp: core::ptr::null_mut(),
        ss_flags: libc::SS_DISABLE,
        ss_size: 0,
    };
    // SAFETY: sigaltstack reads a stack_t from a local; no old value wanted.
    let _ = unsafe { raw::syscall3(nr::SIGALTSTACK, &off as *const libc::stack_t as usize, 0, 0) };
    let (pid, tid) = (raw::getpid(), raw::gettid());
    raise_all(t.pending, |sig| {
        let _ = raw::tgkill(pid, tid, sig);
    });
    while GO.load(Ordering::Acquire) == 0 {
        let _ = raw::futex_wait(&GO, 0, None);
    }
    // Drop the capabilities the restorer had in the job's user namespace:
    // the program ran without them.
    let hdr = [0x2008_0522u32, 0];
    let data = [0u32; 6];
    // SAFETY: capset reads a v3 header and two data records.
    let _ = unsafe { raw::syscall3(nr::CAPSET, hdr.as_ptr() as usize, data.as_ptr() as usize, 0) };
    // SAFETY: rsp is set to the ucontext inside the kernel-written signal frame
    // on this thread's restored stack; rt_sigreturn restores every register,
    // the FPU state, the signal mask and the alternate stack from it.
    unsafe {
        asm!("mov rsp, {uc}", "mov eax, 15", "syscall", "ud2", uc = in(reg) t.ucontext, options(noreturn));
    }
}
