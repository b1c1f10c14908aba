//! The job's namespaces and its init process.
//!
//! Every program runs in its own user + pid + mount namespace so that its
//! pids and tids can be recreated exactly on restart (`clone3` with
//! `set_tid` needs CAP_SYS_ADMIN over the pid namespace, which an
//! unprivileged user has in a user namespace it created; `docs/kernel.md` §1).
//! The uid and gid map to themselves, so the program sees its real ids.
//!
//! Process tree:
//! ```text
//! ckpt (host namespaces: coordinator, signal forwarding, exit status)
//!  └─ init, pid 1 in the new namespaces (mounts /proc, reaps, forwards signals)
//!      └─ the program (pid 2 at launch; its saved pid at restart)
//! ```
//! The init is ours rather than the program's because a pid 1 ignores
//! signals it has no handler for, which would break `kill` and `scancel`.

use std::io;

use nix::unistd::Pid;

/// Signals forwarded from `ckpt` to the init and from the init to the
/// program: every signal a process can send that is not synchronous (SEGV…),
/// job control stop, glibc-internal (32, 33) or ckpt's own stop signal.
pub fn forwarded() -> Vec<i32> {
    let skip = [
        libc::SIGKILL,
        libc::SIGSTOP,
        libc::SIGCHLD,
        libc::SIGSEGV,
        libc::SIGBUS,
        libc::SIGILL,
        libc::SIGFPE,
        libc::SIGTRAP,
        libc::SIGSYS,
        libc::SIGTSTP,
        libc::SIGTTIN,
        libc::SIGTTOU,
        32,
        33,
        ckpt::coord::STOP_SIGNAL,
    ];
    (1..=64).filter(|s| !skip.contains(s)).collect()
}

fn errno() -> io::Error {
    io::Error::last_os_error()
}

/// Fork a child into new user, pid and mount namespaces. The child blocks
/// until the parent has written its uid/gid maps. Returns the child's pid in
/// the parent and `None` in the child.
pub fn fork_into_namespaces() -> io::Result<Option<Pid>> {
    let mut p = [0i32; 2];
    // SAFETY: p is a valid array for pipe2.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(errno());
    }
    let flags = libc::CLONE_NEWUSER | libc::CLONE_NEWPID | libc::CLONE_NEWNS | libc::SIGCHLD;
    // SAFETY: clone without CLONE_VM and with a null stack behaves like fork;
    // the caller is single-threaded at this point (documented requirement).
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid < 0 {
        let e = errno();
        // SAFETY: closing our pipe.
        unsafe {
            libc::close(p[0]);
            libc::close(p[1]);
        }
        return Err(io::Error::new(
            e.kind(),
            format!(
                "cannot create a user+pid namespace for the job ({e}); ckpt needs unprivileged user namespaces (sysctl user.max_user_namespaces > 0)"
            ),
        ));
    }
    if pid == 0 {
        // SAFETY: closing the write end in the child, then waiting for EOF.
        unsafe { libc::close(p[1]) };
        let mut b = [0u8; 1];
        // SAFETY: b is valid.
        unsafe { libc::read(p[0], b.as_mut_ptr().cast(), 1) };
        // SAFETY: our read end.
        unsafe { libc::close(p[0]) };
        return Ok(None);
    }
    // SAFETY: the parent keeps only the write end.
    unsafe { libc::close(p[0]) };
    let child = Pid::from_raw(pid as i32);
    let r = write_id_maps(child);
    // SAFETY: closing releases the child.
    unsafe { libc::close(p[1]) };
    r?;
    Ok(Some(child))
}

fn write_id_maps(child: Pid) -> io::Result<()> {
    // SAFETY: getuid/getgid have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let base = format!("/proc/{child}");
    std::fs::write(format!("{base}/uid_map"), format!("{uid} {uid} 1\n"))?;
    std::fs::write(format!("{base}/setgroups"), "deny")?;
    std::fs::write(format!("{base}/gid_map"), format!("{gid} {gid} 1\n"))?;
    Ok(())
}

/// In the init: make mounts private, mount a /proc for the new pid
/// namespace, and hide io_uring from the job ([`deny_io_uring`]; only a
/// warning when that fails). Both inits (launch and restart) call this
/// before the program, or any restored process, exists.
pub fn setup_mounts() -> io::Result<()> {
    if let Err(e) = deny_io_uring() {
        eprintln!(
            "ckpt: warning: cannot hide io_uring from the job ({e}); a program that opens an io_uring instance cannot be checkpointed"
        );
    }
    mount_private_proc()
}

/// `io_uring_setup` on x86_64, and its x32 number.
const NR_IO_URING_SETUP: u32 = 425;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
/// `AUDIT_ARCH_X86_64` (`EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE`).
const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;

/// The seccomp program of [`deny_io_uring`]: `io_uring_setup` (native and
/// x32 numbers of the x86_64 ABI) fails with `ENOSYS`; every other system
/// call, and every call of another ABI (i386 through `int 0x80`), is allowed.
fn io_uring_filter() -> [libc::sock_filter; 7] {
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jeq = |k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    };
    let ld = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    let ret = libc::BPF_RET | libc::BPF_K;
    let refuse = stmt(ret, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32);
    let allow = stmt(ret, libc::SECCOMP_RET_ALLOW);
    // struct seccomp_data: nr at offset 0, arch at offset 4. Jump offsets
    // count from the next instruction.
    [
        stmt(ld, 4),                                    // 0: arch
        jeq(AUDIT_ARCH_X86_64, 0, 4),                   // 1: another ABI: 6
        stmt(ld, 0),                                    // 2: nr
        jeq(NR_IO_URING_SETUP, 1, 0),                   // 3: 5
        jeq(NR_IO_URING_SETUP | X32_SYSCALL_BIT, 0, 1), // 4: 5, else 6
        refuse,                                         // 5
        allow,                                          // 6
    ]
}

/// In the init: make `io_uring_setup` fail with `ENOSYS` for the init and
/// everything it starts, as on a kernel built without io_uring, so that
/// libuv, liburing users and others fall back to epoll or threads. No
/// checkpoint tool can save and rebuild a ring (its queues live in kernel
/// memory shared with the program, with requests in flight), so the job
/// must never get one. The filter is inherited across fork, clone and exec,
/// so it covers the program at launch and the restored processes, which the
/// restart's init forks.
///
/// Installing a filter without `PR_SET_NO_NEW_PRIVS` needs `CAP_SYS_ADMIN`
/// in the caller's user namespace: the init, first process of the job's new
/// user namespace, holds it until it execs (and it never does); the program
/// it execs loses those capabilities but keeps the filter. So setuid
/// programs of the job behave as before (no `no_new_privs`).
///
/// `SECCOMP_FILTER_FLAG_SPEC_ALLOW`: without it, installing a filter also
/// turns on the speculative store bypass mitigation (SSBD) for the job, on
/// CPUs and kernels where it is opt-in (`spec_store_bypass_disable=seccomp`,
/// the default), which slows the program itself, not only its system calls
/// (docs/kernel.md §8). The filter is not a sandbox (it only hides
/// io_uring), so the job keeps the speculation settings it would have
/// without ckpt. Kernels before 4.17 do not know the flag: the filter is then
/// installed without it.
pub fn deny_io_uring() -> io::Result<()> {
    let filter = io_uring_filter();
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: seccomp(SECCOMP_SET_MODE_FILTER, flags, prog) reads the
    // program (valid for the call: `filter` lives until we return) and
    // copies it.
    let install = |flags: libc::c_ulong| unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER as libc::c_ulong,
            flags,
            &prog as *const libc::sock_fprog,
        )
    };
    let mut r = install(libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW as libc::c_ulong);
    if r != 0 && errno().raw_os_error() == Some(libc::EINVAL) {
        r = install(0);
    }
    if r != 0 {
        let e = errno();
        return Err(io::Error::new(e.kind(), format!("seccomp filter: {e}")));
    }
    Ok(())
}

fn mount_private_proc() -> io::Result<()> {
    use nix::mount::{MsFlags, mount};
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(io::Error::from)?;
    mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| io::Error::other(format!("mount /proc in the job's namespace: {e}")))?;
    Ok(())
}

/// In the init: enter a new time namespace for our children whose
/// CLOCK_MONOTONIC and CLOCK_BOOTTIME continue from the saved values, so
/// that they never jump backwards across a restart (offsets are only ever
/// positive: a clock may jump forward by the time the job was down).
pub fn setup_time(saved_mono_ns: u64, saved_boot_ns: u64) -> io::Result<()> {
    let now = |c| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid out-pointer.
        unsafe { libc::clock_gettime(c, &mut ts) };
        ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
    };
    let dm = (saved_mono_ns as i128 - now(libc::CLOCK_MONOTONIC)).max(0);
    let db = (saved_boot_ns as i128 - now(libc::CLOCK_BOOTTIME)).max(0);
    if dm == 0 && db == 0 {
        return Ok(());
    }
    // SAFETY: unshare of a time namespace affects only our future children.
    if unsafe {
        libc::unshare(0x80 /* CLONE_NEWTIME */)
    } != 0
    {
        return Err(errno());
    }
    // Add a second of margin for the time the restore itself takes.
    let fmt = |d: i128| {
        let d = d + 1_000_000_000;
        format!("{} {}", d / 1_000_000_000, d % 1_000_000_000)
    };
    std::fs::write(
        "/proc/self/timens_offsets",
        format!("monotonic {}\nboottime {}\n", fmt(dm), fmt(db)),
    )
}

/// Block the forwarded signals and SIGCHLD; returns the set.
pub fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local zeroed set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in forwarded() {
            libc::sigaddset(&mut set, s);
        }
        libc::sigaddset(&mut set, libc::SIGCHLD);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Unblock everything (in a child before it becomes the program).
pub fn unblock_all() {
    // SAFETY: empty set, valid pointers.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// Encode a wait status as a shell-style exit code.
pub fn exit_code(status: i32) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        1
    }
}

/// Whether `sender` (a pid as we see it) belongs to the job whose init or
/// main process is `target`. In the job's init (pid 1) every sender inside
/// the namespace has a pid, and senders outside show as 0.
fn sent_by_job(sender: i32, target: i32) -> bool {
    // SAFETY: getpid has no preconditions.
    if unsafe { libc::getpid() } == 1 {
        return sender != 0;
    }
    if sender <= 0 {
        return false;
    }
    let ns = |p: i32| std::fs::read_link(format!("/proc/{p}/ns/pid")).ok();
    if let (Some(a), Some(b)) = (ns(sender), ns(target))
        && a == b
    {
        return true;
    }
    // For a signal sent to a whole process group the kernel reports the
    // sender's pid as the sender sees it (its pid inside the job).
    crate::tree::members(target).iter().any(|m| m.pid == sender)
}

/// Wait for signals; forward the forwardable ones to `target` (only those
/// sent by a process, not by the terminal, which reaches the program
/// directly); reap children; return the exit code when `main_child` ends.
/// `on_signal` may consume a signal (returns true) instead of forwarding it.
pub fn supervise(
    set: &libc::sigset_t,
    main_child: i32,
    target: i32,
    mut on_signal: impl FnMut(i32) -> bool,
) -> i32 {
    // In an srun step's task: the step's checkpoint signal, which Slurm
    // sends to every process of the step, this init included. Slurm's
    // (from outside the namespace: pid 0) is a request to ckpt, never
    // passed on to the program (ckpt-core/src/preload/ask.rs).
    let ask: Option<i32> = std::env::var(ckpt::preload::ask::ENV_ASK_SIGNAL)
        .ok()
        .and_then(|v| v.parse().ok());
    loop {
        // Reap first: the child may have exited before we started waiting.
        loop {
            let mut st = 0;
            // SAFETY: valid out-pointer.
            let r = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG | libc::__WALL) };
            if r <= 0 {
                break;
            }
            if r == main_child {
                return exit_code(st);
            }
        }
        // SAFETY: siginfo is plain data.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: set is a valid blocked set; info is writable.
        let sig = unsafe { libc::sigwaitinfo(set, &mut info) };
        if sig < 0 || sig == libc::SIGCHLD {
            continue;
        }
        if on_signal(sig) {
            continue;
        }
        let from_process = info.si_code == libc::SI_USER
            || info.si_code == libc::SI_QUEUE
            || info.si_code == libc::SI_TKILL;
        let sender = if from_process {
            // SAFETY: si_pid is valid for the process-sent codes checked above.
            unsafe { info.si_pid() }
        } else {
            0
        };
        // A signal the job sent to its own process group (`kill 0`) reached
        // us too: the job already has it, forwarding would deliver it twice.
        if from_process && sent_by_job(sender, target) {
            continue;
        }
        if from_process && sender == 0 && ask == Some(sig) {
            continue;
        }
        if from_process || sig == libc::SIGCONT {
            // SAFETY: kill has no memory-safety contract.
            unsafe { libc::kill(target, sig) };
        }
    }
}

#[cfg(test)]
mod tests {
    /// The filter refuses io_uring_setup with ENOSYS and lets other calls
    /// through (in a child, which sets no_new_privs first: the test may run
    /// without CAP_SYS_ADMIN).
    #[test]
    fn io_uring_filter_refuses_setup_only() {
        // SAFETY: the child only makes raw system calls and exits; the
        // parent waits for it.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            let mut params = [0u8; 120];
            // SAFETY: prctl, seccomp (through deny_io_uring), io_uring_setup
            // into a 120-byte buffer, getpid and _exit: no shared state.
            let code = unsafe {
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    libc::_exit(2)
                }
                if super::deny_io_uring().is_err() {
                    libc::_exit(3)
                }
                let r = libc::syscall(425, 4, params.as_mut_ptr());
                let e = *libc::__errno_location();
                if r != -1 || e != libc::ENOSYS {
                    4
                } else if libc::syscall(libc::SYS_getpid) <= 0 {
                    5
                } else {
                    0
                }
            };
            // SAFETY: ends the child without running the test harness.
            unsafe { libc::_exit(code) };
        }
        let mut st = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut st, 0) }, pid);
        assert!(
            libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
            "child status {st:#x}"
        );
    }
}
