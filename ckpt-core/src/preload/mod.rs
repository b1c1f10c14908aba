//! What runs inside the checkpointed program when this crate is preloaded
//! as `libckpt.so`.
//!
//! - `ctor` (constructor, normal context): if `CKPT_SOCKET` is set, install
//!   the stop handler; otherwise do nothing.
//! - [`leader`]: the checkpoint procedure, run by whichever thread receives
//!   the coordinator's signal.
//! - [`stop`]: the stop signal handler and per-thread state.
//! - [`capture`]: the image writer.
//! - [`finish`]: the last stage of restore.
//! - [`track`]: dirty-page tracking for incremental checkpoints.
//! - [`fork_advice`]: the `madvise` flags only `smaps` reports, and the
//!   `MADV_WIPEONFORK` regions a snapshot child has zeroed.
//! - [`exec`]: wrappers of the exec and spawn functions (the job's programs
//!   stay under checkpoint control).
//! - [`sigmask`]: wrappers of the functions that set signal masks (the stop
//!   signal stays deliverable in threads that block every signal).
//! - [`inotify`]: wrappers of the inotify functions (the path of each
//!   watch, which the kernel does not tell).
//! - [`ask`]: the step's checkpoint signal, which Slurm sends to every
//!   process of a step, kept aside from the program's own use of it.
//! - [`sigev_thread`]: `timer_create` with `SIGEV_THREAD`, whose helper
//!   thread must be stoppable too.
//!
//! Nothing here sits on the program's hot path: the wrapped functions are
//! system calls anyway, and each wrapper adds a copy of a signal set (or,
//! for `timer_create`, a small allocation).

pub mod ask;
pub mod capture;
pub mod exec;
pub mod finish;
pub mod fork_advice;
pub mod inotify;
pub mod leader;
pub mod memlimit;
pub mod page_crcs;
pub mod pmix_fence;
pub mod sigev_thread;
pub mod sigmask;
pub mod stop;
pub mod track;

use crate::coord::ENV_SOCKET;

/// The next definition of the libc function `name` (NUL-terminated) after
/// libckpt's own wrapper (`dlsym(RTLD_NEXT)`), as `T`, a function pointer
/// type matching its C prototype. Normal context only (`dlsym` allocates).
pub(crate) fn next_fn<T: Copy>(name: &'static [u8]) -> Option<T> {
    if core::mem::size_of::<T>() != core::mem::size_of::<usize>() {
        return None;
    }
    // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name.
    let a = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr().cast()) } as usize;
    if a == 0 {
        return None;
    }
    // SAFETY: T is a function pointer type of pointer size (checked above)
    // matching the C prototype of `name` (each caller's contract).
    Some(unsafe { core::mem::transmute_copy::<usize, T>(&a) })
}

#[used]
#[unsafe(link_section = ".init_array")]
static INIT: extern "C" fn() = ctor;

/// Library constructor.
extern "C" fn ctor() {
    let _ = std::panic::catch_unwind(init);
}

fn init() {
    // Before anything can call them from a signal handler.
    sigmask::resolve_all();
    let Some(sock) = std::env::var_os(ENV_SOCKET) else {
        return;
    };
    let bytes = sock.as_encoded_bytes();
    if bytes.is_empty() || bytes.len() >= 255 {
        return;
    }
    // SAFETY: the constructor runs before any other thread of ours exists;
    // SOCKET_PATH is only read by the checkpoint thread started below.
    unsafe {
        let p = &mut *core::ptr::addr_of_mut!(leader::SOCKET_PATH);
        p.fill(0);
        if let Some(d) = p.get_mut(..bytes.len()) {
            d.copy_from_slice(bytes);
        }
    }
    if let Some(pre) = std::env::var_os("LD_PRELOAD") {
        // Remember our own entry (the first path that names libckpt) for exec.
        let pre = pre.as_encoded_bytes();
        if let Some(ours) = pre
            .split(|&c| c == b':' || c == b' ')
            .find(|p| p.ends_with(b"libckpt.so"))
        {
            // SAFETY: only the constructor writes PRELOAD_ENTRY, before any exec wrapper reads it.
            let e = unsafe { &mut *core::ptr::addr_of_mut!(exec::PRELOAD_ENTRY) };
            let want = b"LD_PRELOAD=".len() + ours.len();
            if want < e.len() {
                e[..11].copy_from_slice(b"LD_PRELOAD=");
                e[11..want].copy_from_slice(ours);
                e[want] = 0;
            }
        }
    }
    capture::note_server_dirs();
    if std::env::var_os("CKPT_SNAPSHOT").is_some_and(|v| v == "0") {
        leader::SNAPSHOT.store(0, core::sync::atomic::Ordering::Release);
    }
    // dladdr only where there is a step's signal to keep aside: nothing
    // added to the start-up of other programs.
    if std::env::var_os(ask::ENV_ASK_SIGNAL).is_some() && is_libckpt() {
        ask::init(sigmask::real_sigaction());
    }
    if stop::install().is_ok() {
        sigmask::activate();
        sigev_thread::activate();
        // An exec through our wrappers blocked the stop signal (see
        // `exec::block_stop`); the handler is in place now.
        let _ = crate::signal_safe::raw::sigprocmask(libc::SIG_UNBLOCK, exec::STOP_BIT);
    }
}

/// Whether this code runs as the preloaded `libckpt.so` (the `ckpt` binary
/// links it too, and keeps its own signal actions).
fn is_libckpt() -> bool {
    // SAFETY: a zeroed Dl_info is valid; dladdr fills it for an address of ours.
    let mut info: libc::Dl_info = unsafe { core::mem::zeroed() };
    // SAFETY: dladdr reads the address only.
    let found = unsafe { libc::dladdr(ctor as *const libc::c_void, &mut info) } != 0;
    if !found || info.dli_fname.is_null() {
        return false;
    }
    // SAFETY: dladdr's file name is a NUL-terminated string of the loader's.
    let name = unsafe { std::ffi::CStr::from_ptr(info.dli_fname) };
    name.to_bytes().ends_with(b"libckpt.so")
}
