//! What runs inside the checkpointed program when this crate is preloaded
//! as `libckpt.so`.
//!
//! - [`ctor`] (constructor, normal context): if `CKPT_SOCKET` is set, install
//!   the stop handler and start the checkpoint thread; otherwise do nothing.
//! - [`thread`]: the checkpoint thread and the checkpoint procedure.
//! - [`stop`]: the stop signal handler and per-thread state.
//! - [`capture`]: the image writer.
//! - [`finish`]: the last stage of restore.
//!
//! Nothing here sits on the program's hot path: no function of the program
//! is interposed.

pub mod capture;
pub mod finish;
pub mod stop;
pub mod thread;

use crate::coord::ENV_SOCKET;

#[used]
#[unsafe(link_section = ".init_array")]
static INIT: extern "C" fn() = ctor;

/// Library constructor.
extern "C" fn ctor() {
    let _ = std::panic::catch_unwind(init);
}

fn init() {
    let Some(sock) = std::env::var_os(ENV_SOCKET) else { return };
    let bytes = sock.as_encoded_bytes();
    if bytes.is_empty() || bytes.len() >= 255 {
        return;
    }
    // SAFETY: the constructor runs before any other thread of ours exists;
    // SOCKET_PATH is only read by the checkpoint thread started below.
    unsafe {
        let p = &mut *core::ptr::addr_of_mut!(thread::SOCKET_PATH);
        p.fill(0);
        if let Some(d) = p.get_mut(..bytes.len()) {
            d.copy_from_slice(bytes);
        }
    }
    if stop::install().is_err() {
        return;
    }
    start_thread();
}

fn start_thread() {
    // SAFETY: plain libc calls with valid, initialised arguments; the new
    // thread starts with every signal blocked because it inherits the mask
    // we set around pthread_create, and we restore ours afterwards.
    unsafe {
        let mut all: libc::sigset_t = core::mem::zeroed();
        let mut old: libc::sigset_t = core::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let mut attr: libc::pthread_attr_t = core::mem::zeroed();
        libc::pthread_attr_init(&mut attr);
        libc::pthread_attr_setdetachstate(&mut attr, libc::PTHREAD_CREATE_DETACHED);
        libc::pthread_attr_setstacksize(&mut attr, 1 << 20);
        let mut t: libc::pthread_t = 0;
        libc::pthread_create(&mut t, &attr, thread::main, core::ptr::null_mut());
        libc::pthread_attr_destroy(&mut attr);
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, core::ptr::null_mut());
    }
}
