//! Choosing the next process or thread id through
//! `/proc/sys/kernel/ns_last_pid`, the way to recreate ids on kernels
//! without `clone3`'s `set_tid` (before Linux 5.5; docs/kernel.md).
//!
//! The kernel hands out the id after the one last written there (in the
//! writer's own pid namespace; writing needs `CAP_SYS_ADMIN` or
//! `CAP_CHECKPOINT_RESTORE` over that namespace, which the restoring
//! processes hold). Several processes restore at once, so a claim holds an
//! `flock` on the claimer's own open file description of the file (one
//! [`open`] per process: locks taken through one description do not exclude
//! each other) from the write until the new task exists; every process and
//! thread the restore creates goes through it. An id created by anything
//! else in between (nothing else runs in the job's namespace during a
//! restore) is caught by the callers, which compare the id they got.
//!
//! Async-signal-safe: raw system calls and a stack buffer only (the restored
//! libckpt calls this before any thread runs).

use super::raw::{self, Errno, nr};

/// `/proc/sys/kernel/ns_last_pid`, NUL-terminated.
pub const PATH: &[u8] = b"/proc/sys/kernel/ns_last_pid\0";

/// Opens the file for this process (close-on-exec).
pub fn open() -> Result<i32, Errno> {
    raw::open(PATH, libc::O_RDWR | libc::O_CLOEXEC, 0)
}

fn flock(fd: i32, op: i32) -> Result<(), Errno> {
    loop {
        // SAFETY: flock(2) takes no pointers.
        match unsafe { raw::syscall3(nr::FLOCK, fd as usize, op as usize, 0) } {
            Err(Errno(libc::EINTR)) => continue,
            r => return r.map(|_| ()),
        }
    }
}

/// Decimal digits of `n` into `buf`, returning the used tail.
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// Locks the file and makes `id` the next id of the caller's pid
/// namespace. The caller creates its task, then calls [`release`]
/// (also when creating it failed). On error nothing stays locked.
pub fn claim(fd: i32, id: i32) -> Result<(), Errno> {
    if id < 2 {
        return Err(Errno(libc::EINVAL));
    }
    flock(fd, libc::LOCK_EX)?;
    let mut b = [0u8; 20];
    let text = decimal((id - 1) as u64, &mut b);
    match raw::pwrite(fd, text, 0) {
        Ok(n) if n == text.len() => Ok(()),
        r => {
            let _ = flock(fd, libc::LOCK_UN);
            Err(match r {
                Err(e) => e,
                Ok(_) => Errno(libc::EIO),
            })
        }
    }
}

/// Unlocks after [`claim`].
pub fn release(fd: i32) {
    let _ = flock(fd, libc::LOCK_UN);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_digits() {
        let mut b = [0u8; 20];
        assert_eq!(decimal(0, &mut b), b"0");
        assert_eq!(decimal(399, &mut b), b"399");
        assert_eq!(decimal(u64::MAX, &mut b), b"18446744073709551615");
    }

    /// In a new user and pid namespace, the namespace's init claims id 400
    /// and forks: the child is 400; a second claim after it gives 401 back
    /// even though 401 would come next anyway, and 300 (below) works too.
    #[test]
    fn a_claimed_id_is_the_next_one_handed_out() {
        fn fork_raw() -> i64 {
            // SAFETY: a plain fork (SIGCHLD, no new stack): the child only
            // makes raw system calls and leaves with exit_group.
            unsafe { raw::syscall6(nr::CLONE, libc::SIGCHLD as usize, 0, 0, 0, 0, 0) }
                .map_or(-1, |p| p as i64)
        }
        fn wait_code(pid: i64) -> i32 {
            let mut st = 0i32;
            // SAFETY: waitpid on our own child with a valid status pointer.
            if unsafe { libc::waitpid(pid as i32, &mut st, 0) } != pid as i32 {
                return -1;
            }
            if libc::WIFEXITED(st) {
                libc::WEXITSTATUS(st)
            } else {
                -2
            }
        }
        // The namespace's init: returns its exit code.
        fn init() -> i32 {
            let Ok(fd) = open() else { return 10 };
            for want in [400, 401, 300] {
                if claim(fd, want).is_err() {
                    return 11;
                }
                let p = fork_raw();
                if p == 0 {
                    raw::exit_group(if raw::getpid() == want { 0 } else { 1 });
                }
                release(fd);
                if p != i64::from(want) || wait_code(p) != 0 {
                    return 12;
                }
            }
            0
        }
        let outer = fork_raw();
        assert!(outer >= 0, "fork failed");
        if outer == 0 {
            // SAFETY: unshare in the single-threaded child.
            if unsafe { libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWPID) } != 0 {
                raw::exit_group(20);
            }
            let p = fork_raw();
            if p == 0 {
                raw::exit_group(init());
            }
            raw::exit_group(if p < 0 { 21 } else { wait_code(p) });
        }
        let code = wait_code(outer);
        if code == 20 && std::env::var_os("CI").is_none() {
            eprintln!("skipped: no unprivileged user namespaces here");
            return;
        }
        assert_eq!(code, 0, "exit code of the namespace's init (see init())");
    }
}
