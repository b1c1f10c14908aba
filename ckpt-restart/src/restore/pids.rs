//! How a restart gives processes and threads their saved ids: `clone3`
//! with `set_tid` (Linux 5.5), or, where the kernel lacks it (or
//! `CKPT_SIMULATE_MISSING=set_tid` says so, to test this path),
//! `/proc/sys/kernel/ns_last_pid` under a lock, one id at a time
//! (docs/kernel.md, "Choosing pids and thread ids").
//!
//! Chosen once by the restart before it forks the job's namespaces; the
//! choice is inherited by every process of the restore (they are forks of
//! it) and handed to the restored libckpt for threads
//! (`FinishArgs::last_pid_fd`).

use std::sync::atomic::{AtomicBool, Ordering};

use ckpt::signal_safe::last_pid;
use ckpt::signal_safe::raw::{self, CloneArgs, nr};

static THROUGH_LAST_PID: AtomicBool = AtomicBool::new(false);

/// Uses `ns_last_pid` for the rest of this restart.
pub fn use_last_pid() {
    THROUGH_LAST_PID.store(true, Ordering::Relaxed);
}

/// Whether ids go through `ns_last_pid`.
pub fn through_last_pid() -> bool {
    THROUGH_LAST_PID.load(Ordering::Relaxed)
}

/// fork() with a chosen pid (needs CAP_SYS_ADMIN over the pid namespace,
/// which the job's processes have until the restore drops it). The caller
/// is single-threaded.
pub fn fork_with_pid(pid: i32) -> std::io::Result<i32> {
    if through_last_pid() {
        return fork_through_last_pid(pid);
    }
    let tid = [pid];
    let a = CloneArgs {
        flags: 0,
        pidfd: 0,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: libc::SIGCHLD as u64,
        stack: 0,
        stack_size: 0,
        tls: 0,
        set_tid: tid.as_ptr() as u64,
        set_tid_size: 1,
        cgroup: 0,
    };
    // SAFETY: clone3 without CLONE_VM and without a stack behaves like fork;
    // every caller here is single-threaded.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &a as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r as i32)
    }
}

fn fork_through_last_pid(pid: i32) -> std::io::Result<i32> {
    let err = |e: raw::Errno| std::io::Error::from_raw_os_error(e.raw());
    // This process's own open file description: the lock excludes the
    // other processes of the restore.
    let fd = last_pid::open().map_err(err)?;
    if let Err(e) = last_pid::claim(fd, pid) {
        raw::close(fd);
        return Err(err(e));
    }
    // SAFETY: a plain fork (SIGCHLD, no new stack) of a single-threaded
    // process.
    let r = unsafe { raw::syscall6(nr::CLONE, libc::SIGCHLD as usize, 0, 0, 0, 0, 0) };
    if let Ok(0) = r {
        // The child: its copy of the descriptor shares the parent's lock,
        // which the parent releases.
        raw::close(fd);
        if raw::getpid() != pid {
            raw::exit_group(crate::restore::blob::RST_EXIT_FAILED);
        }
        return Ok(0);
    }
    last_pid::release(fd);
    raw::close(fd);
    match r {
        Err(e) => Err(err(e)),
        Ok(got) if got as i32 == pid => Ok(pid),
        Ok(got) => {
            let mut st = 0;
            // SAFETY: reaping the child we just made (it exits at once).
            unsafe { libc::waitpid(got as i32, &mut st, 0) };
            Err(std::io::Error::other(format!(
                "the kernel handed out pid {got} instead (another task took the id between \
                 the write to {} and the fork)",
                String::from_utf8_lossy(&last_pid::PATH[..last_pid::PATH.len() - 1])
            )))
        }
    }
}

/// Opens `ns_last_pid` for the restored libckpt's thread creation when ids
/// go through it: a descriptor of this process (its own open file
/// description) at or above `min`, close-on-exec; -1 otherwise.
pub fn last_pid_fd_for_threads(min: i32) -> Result<i64, String> {
    if !through_last_pid() {
        return Ok(-1);
    }
    let fd = last_pid::open().map_err(|e| {
        format!(
            "cannot open {}: errno {}",
            String::from_utf8_lossy(&last_pid::PATH[..last_pid::PATH.len() - 1]),
            e.raw()
        )
    })?;
    // SAFETY: fcntl dup of our own descriptor, then closing the original.
    let d = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) };
    raw::close(fd);
    if d < 0 {
        return Err(format!("dup: {}", std::io::Error::last_os_error()));
    }
    Ok(i64::from(d))
}
