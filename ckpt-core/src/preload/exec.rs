//! Keeping every program of the job under checkpoint control across exec.
//!
//! A child that execs inherits `LD_PRELOAD` and `CKPT_SOCKET` from its
//! environment, unless the program builds a new one (`env -i`, a scheduler
//! wrapper, Python's `subprocess` with `env=`). These wrappers of `execve`,
//! `execv`, `execvp`, `execvpe`, `posix_spawn` and `posix_spawnp` put both
//! variables back (and point `CKPT_SOCKET` at the coordinator of the
//! current run, which changes after a restart) before calling glibc's.
//! `execl`, `execlp` and `execle` (variadic: their bodies are C, in
//! `execl.c`) gather their arguments and go through the same wrappers.
//!
//! They run between fork/vfork and exec, where the C allocator must not be
//! used: the new environment array is built in memory from `mmap`, which
//! the exec discards (and which is unmapped again if the exec fails). The
//! fast path — nothing to change — allocates nothing.

use core::ffi::{c_char, c_int, c_void};

use crate::coord::STOP_SIGNAL;
use crate::signal_safe::raw;

/// The stop signal as a bit of a signal mask.
pub const STOP_BIT: u64 = 1 << (STOP_SIGNAL - 1);

/// Block the stop signal across an exec (or a spawn, whose child inherits
/// the mask). Exec resets our handler to the default action, which for a
/// real-time signal is to terminate the process, and the coordinator may
/// signal this process having seen the handler installed a moment before:
/// blocked, the signal waits for the new program's constructor, which
/// installs the handler and then unblocks it. Returns the previous mask.
fn block_stop() -> Option<u64> {
    raw::sigprocmask(libc::SIG_BLOCK, STOP_BIT).ok()
}

/// Undo [`block_stop`] after an exec that failed or a spawn.
fn unblock_stop(old: Option<u64>) {
    if old.is_some_and(|o| o & STOP_BIT == 0) {
        let _ = raw::sigprocmask(libc::SIG_UNBLOCK, STOP_BIT);
    }
}

/// `LD_PRELOAD=<libckpt>` as the constructor saw it (NUL-terminated).
pub static mut PRELOAD_ENTRY: [u8; 4096] = [0; 4096];

unsafe extern "C" {
    static mut environ: *const *const c_char;
}

fn starts_with(p: *const c_char, prefix: &[u8]) -> bool {
    for (i, &b) in prefix.iter().enumerate() {
        // SAFETY: p is a NUL-terminated C string; we stop at its NUL (which never matches a prefix byte).
        let c = unsafe { *p.add(i) } as u8;
        if c != b {
            return false;
        }
    }
    true
}

fn cstr_len(p: *const c_char) -> usize {
    let mut n = 0;
    // SAFETY: p is a NUL-terminated C string.
    while unsafe { *p.add(n) } != 0 {
        n += 1;
    }
    n
}

fn contains(hay: *const c_char, needle: &[u8]) -> bool {
    let n = cstr_len(hay);
    if needle.is_empty() || needle.len() > n {
        return false;
    }
    // SAFETY: hay is valid for n bytes.
    let h = unsafe { core::slice::from_raw_parts(hay.cast::<u8>(), n) };
    h.windows(needle.len()).any(|w| w == needle)
}

fn nul_slice(b: &[u8]) -> &[u8] {
    let n = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    b.get(..n).unwrap_or(&[])
}

/// An environment array with our two variables in place, or `None` when
/// `envp` already has them. The memory comes from mmap.
fn fixed_env(envp: *const *const c_char) -> Option<(*const *const c_char, usize, usize)> {
    // SAFETY: PRELOAD_ENTRY is written once by the constructor.
    let preload = nul_slice(unsafe { &*core::ptr::addr_of!(PRELOAD_ENTRY) });
    let sock = super::leader::current_socket();
    let sock = nul_slice(&sock);
    if preload.is_empty() || sock.is_empty() {
        return None;
    }
    let lib = preload.strip_prefix(b"LD_PRELOAD=").unwrap_or(preload);
    let mut count = 0usize;
    let mut has_preload = false;
    let mut sock_ok = false;
    let mut theirs: *const c_char = core::ptr::null();
    if !envp.is_null() {
        // SAFETY: envp is a NULL-terminated array of C strings (exec's contract).
        while !unsafe { *envp.add(count) }.is_null() {
            // SAFETY: as above.
            let e = unsafe { *envp.add(count) };
            if starts_with(e, b"LD_PRELOAD=") {
                if contains(e, lib) {
                    has_preload = true;
                } else {
                    theirs = e;
                }
            }
            if starts_with(e, b"CKPT_SOCKET=")
                && cstr_len(e) == 12 + sock.len()
                && contains(e, sock)
            {
                sock_ok = true;
            }
            count += 1;
        }
    }
    if has_preload && sock_ok {
        return None;
    }
    // Layout: pointer array (count + 3), then our LD_PRELOAD entry (with the
    // program's own preloads appended), then the CKPT_SOCKET entry.
    let their_len = if theirs.is_null() {
        0
    } else {
        cstr_len(theirs) - 11
    };
    let ptrs = (count + 3) * 8;
    let preload_len = preload.len() + if their_len > 0 { 1 + their_len } else { 0 };
    let sock_entry_len = 12 + sock.len() + 1;
    let total = (ptrs + preload_len + 1 + sock_entry_len + 4095) & !4095;
    let base = raw::mmap_anon(total).ok()?;
    let arr = base.cast::<*const c_char>();
    let mut n = 0usize;
    // SAFETY: base..base+total is our fresh mapping, sized for every write below.
    unsafe {
        let strings = base.add(ptrs);
        core::ptr::copy_nonoverlapping(preload.as_ptr(), strings, preload.len());
        if their_len > 0 {
            *strings.add(preload.len()) = b':';
            core::ptr::copy_nonoverlapping(
                theirs.add(11).cast::<u8>(),
                strings.add(preload.len() + 1),
                their_len,
            );
        }
        *strings.add(preload_len) = 0;
        let sock_at = strings.add(preload_len + 1);
        core::ptr::copy_nonoverlapping(b"CKPT_SOCKET=".as_ptr(), sock_at, 12);
        core::ptr::copy_nonoverlapping(sock.as_ptr(), sock_at.add(12), sock.len());
        *sock_at.add(12 + sock.len()) = 0;
        for i in 0..count {
            let e = *envp.add(i);
            if starts_with(e, b"CKPT_SOCKET=") || (!has_preload && starts_with(e, b"LD_PRELOAD=")) {
                continue;
            }
            *arr.add(n) = e;
            n += 1;
        }
        if !has_preload {
            *arr.add(n) = strings.cast();
            n += 1;
        }
        *arr.add(n) = sock_at.cast();
        n += 1;
        *arr.add(n) = core::ptr::null();
    }
    Some((arr as *const *const c_char, base as usize, total))
}

type ExecveFn =
    unsafe extern "C" fn(*const c_char, *const *const c_char, *const *const c_char) -> c_int;
type SpawnFn = unsafe extern "C" fn(
    *mut libc::pid_t,
    *const c_char,
    *const c_void,
    *const c_void,
    *const *const c_char,
    *const *const c_char,
) -> c_int;

fn next<T: Copy>(name: &[u8]) -> Option<T> {
    // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name; the result is
    // transmuted only to the matching glibc function type by the callers.
    let p = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr().cast()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: T is a function pointer type of the same size as a pointer.
    Some(unsafe { core::mem::transmute_copy::<*mut c_void, T>(&p) })
}

fn release(env: Option<(*const *const c_char, usize, usize)>) {
    if let Some((_, base, len)) = env {
        // SAFETY: the exec failed; the array is ours and no longer used.
        let _ = unsafe { raw::munmap(base, len) };
    }
}

/// Call glibc's `name` (`execve` or `execvpe`) with our variables in the
/// environment and the stop signal blocked across the exec.
fn exec_through(
    name: &[u8],
    file: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    let Some(real) = next::<ExecveFn>(name) else {
        return -1;
    };
    let env = fixed_env(envp);
    let old = block_stop();
    // SAFETY: forwarding the caller's arguments with a valid environment.
    let r = unsafe { real(file, argv, env.map_or(envp, |e| e.0)) };
    unblock_stop(old);
    release(env);
    r
}

/// `execve(2)` wrapper.
///
/// # Safety
/// Same contract as glibc's `execve`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn execve(
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    exec_through(b"execve\0", path, argv, envp)
}

/// `execv(3)` wrapper.
///
/// # Safety
/// Same contract as glibc's `execv`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn execv(path: *const c_char, argv: *const *const c_char) -> c_int {
    // SAFETY: environ is the process environment.
    unsafe { execve(path, argv, environ) }
}

/// `execvpe(3)` wrapper.
///
/// # Safety
/// Same contract as glibc's `execvpe`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn execvpe(
    file: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    exec_through(b"execvpe\0", file, argv, envp)
}

/// `execvp(3)` wrapper.
///
/// # Safety
/// Same contract as glibc's `execvp`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn execvp(file: *const c_char, argv: *const *const c_char) -> c_int {
    // SAFETY: environ is the process environment.
    unsafe { execvpe(file, argv, environ) }
}

unsafe extern "C" {
    // preload/execl.c: collect the variadic arguments, call execve/execvpe.
    fn ckpt_execl(path: *const c_char, arg: *const c_char, ...) -> c_int;
    fn ckpt_execlp(file: *const c_char, arg: *const c_char, ...) -> c_int;
    fn ckpt_execle(path: *const c_char, arg: *const c_char, ...) -> c_int;
}

/// `execl(3)` wrapper: a jump to `ckpt_execl` (C, variadic) with the
/// caller's registers and stack as they are.
///
/// # Safety
/// Same contract as glibc's `execl`.
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn execl() {
    core::arch::naked_asm!("jmp {f}", f = sym ckpt_execl)
}

/// `execlp(3)` wrapper (see [`execl`]).
///
/// # Safety
/// Same contract as glibc's `execlp`.
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn execlp() {
    core::arch::naked_asm!("jmp {f}", f = sym ckpt_execlp)
}

/// `execle(3)` wrapper (see [`execl`]).
///
/// # Safety
/// Same contract as glibc's `execle`.
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn execle() {
    core::arch::naked_asm!("jmp {f}", f = sym ckpt_execle)
}

fn spawn(
    name: &[u8],
    pid: *mut libc::pid_t,
    path: *const c_char,
    fa: *const c_void,
    attr: *const c_void,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    let Some(real) = next::<SpawnFn>(name) else {
        return libc::ENOSYS;
    };
    let env = fixed_env(envp);
    let old = block_stop();
    // SAFETY: forwarding the caller's arguments with a valid environment.
    let r = unsafe { real(pid, path, fa, attr, argv, env.map_or(envp, |e| e.0)) };
    unblock_stop(old);
    release(env);
    r
}

/// `posix_spawn(3)` wrapper.
///
/// # Safety
/// Same contract as glibc's `posix_spawn`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn posix_spawn(
    pid: *mut libc::pid_t,
    path: *const c_char,
    fa: *const c_void,
    attr: *const c_void,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    spawn(b"posix_spawn\0", pid, path, fa, attr, argv, envp)
}

/// `posix_spawnp(3)` wrapper.
///
/// # Safety
/// Same contract as glibc's `posix_spawnp`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn posix_spawnp(
    pid: *mut libc::pid_t,
    file: *const c_char,
    fa: *const c_void,
    attr: *const c_void,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    spawn(b"posix_spawnp\0", pid, file, fa, attr, argv, envp)
}

type PopenFn = unsafe extern "C" fn(*const c_char, *const c_char) -> *mut libc::FILE;

/// `popen(3)` wrapper: glibc spawns the shell internally (not through the
/// wrappers above), with the caller's signal mask, so blocking the stop
/// signal around the call covers the child's exec (see [`block_stop`]).
///
/// # Safety
/// Same contract as glibc's `popen`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn popen(command: *const c_char, mode: *const c_char) -> *mut libc::FILE {
    let Some(real) = next::<PopenFn>(b"popen\0") else {
        return core::ptr::null_mut();
    };
    let old = block_stop();
    // SAFETY: forwarding the caller's arguments.
    let r = unsafe { real(command, mode) };
    unblock_stop(old);
    r
}

type SystemFn = unsafe extern "C" fn(*const c_char) -> c_int;

/// `system(3)` wrapper: glibc spawns `/bin/sh` internally with the caller's
/// signal mask, like [`popen`], so the stop signal is blocked around the
/// call. While it runs, this thread does not take part in checkpoints (a
/// checkpoint of a single-threaded caller waits for `system` to return, or
/// fails after the stop deadline and the job keeps running); the shell and
/// its command are checkpointed as processes of their own.
///
/// # Safety
/// Same contract as glibc's `system`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn system(command: *const c_char) -> c_int {
    let Some(real) = next::<SystemFn>(b"system\0") else {
        return -1;
    };
    let old = block_stop();
    // SAFETY: forwarding the caller's argument.
    let r = unsafe { real(command) };
    unblock_stop(old);
    r
}
