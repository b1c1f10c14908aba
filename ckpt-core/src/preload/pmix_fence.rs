//! Wrappers of the PMIx fence (`PMIx_Fence`, `PMIx_Fence_nb`): libckpt
//! counts the fences a process is waiting in, and a checkpoint that finds
//! one is refused as passing (docs/mpi.md, "A checkpoint inside a fence").
//!
//! A fence's request goes to the rank's PMIx server, which answers once
//! every rank has joined. A checkpoint taken in between keeps a rank whose
//! request the old server took and whose answer no server will send after
//! a restart (ckpt's stand-in never saw the request), so the resumed rank
//! would wait forever in `MPI_Init` or `MPI_Finalize`. The socket shows
//! nothing of it (the request was read, the answer not yet written), so
//! the library calls are what tells.
//!
//! Open MPI's PMIx component calls these through the dynamic linker
//! (`mca_pmix_ext3x.so` imports both), so libckpt, preloaded, is found
//! first; the real functions are the next definitions, or libpmix's when
//! the component was loaded into a private namespace.

use core::ffi::{c_int, c_void};
use core::sync::atomic::{AtomicI32, AtomicU32, Ordering};

use super::next_fn;
use crate::signal_safe::raw;

/// `PMIX_SUCCESS`: the request was accepted, the callback will come.
const PMIX_SUCCESS: c_int = 0;
/// `PMIX_ERR_NOT_SUPPORTED` (pmix_common.h): no PMIx library here.
const PMIX_ERR_NOT_SUPPORTED: c_int = -47;

type OpCb = unsafe extern "C" fn(c_int, *mut c_void);
type FenceFn = unsafe extern "C" fn(*const c_void, usize, *const c_void, usize) -> c_int;
type FenceNbFn = unsafe extern "C" fn(
    *const c_void,
    usize,
    *const c_void,
    usize,
    Option<OpCb>,
    *mut c_void,
) -> c_int;

/// Fences the process [`OWNER`] has entered and not left.
static WAITING: AtomicU32 = AtomicU32::new(0);
/// The process the count is of: a child forked while a fence was open
/// inherits the count but not the fence (its callback comes to the
/// parent), so in any other process the count is 0.
static OWNER: AtomicI32 = AtomicI32::new(0);

/// How many PMIx fences the process is waiting in now. **Async-signal-safe**
/// (two atomic loads and `getpid`); read by the capture, in the process
/// itself, while every thread is stopped.
pub fn waiting() -> u32 {
    if OWNER.load(Ordering::SeqCst) != raw::getpid() {
        return 0;
    }
    WAITING.load(Ordering::SeqCst)
}

/// A fence begins in this process.
fn enter() {
    let me = raw::getpid();
    if OWNER.swap(me, Ordering::SeqCst) != me {
        // The first fence of this process (a fork's child starts afresh).
        WAITING.store(0, Ordering::SeqCst);
    }
    WAITING.fetch_add(1, Ordering::SeqCst);
}

/// A fence of this process ended.
fn leave() {
    if OWNER.load(Ordering::SeqCst) == raw::getpid() {
        let _ = WAITING.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    }
}

/// The real `name`: the next definition after libckpt's, else libpmix's
/// own (a component loaded with `RTLD_LOCAL` keeps it out of the global
/// scope).
fn real<T: Copy>(name: &'static [u8]) -> Option<T> {
    if let Some(f) = next_fn::<T>(name) {
        return Some(f);
    }
    if core::mem::size_of::<T>() != core::mem::size_of::<usize>() {
        return None;
    }
    // SAFETY: dlopen of a NUL-terminated name with RTLD_NOLOAD only looks
    // up a library already loaded (no constructor runs).
    let lib = unsafe { libc::dlopen(c"libpmix.so.2".as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD) };
    if lib.is_null() {
        return None;
    }
    // SAFETY: a handle dlopen returned and a NUL-terminated name.
    let a = unsafe { libc::dlsym(lib, name.as_ptr().cast()) } as usize;
    // SAFETY: drops the reference RTLD_NOLOAD took; the library stays
    // loaded by whoever loaded it.
    unsafe { libc::dlclose(lib) };
    if a == 0 || a == PMIx_Fence as *const () as usize || a == PMIx_Fence_nb as *const () as usize {
        return None;
    }
    // SAFETY: T is a function pointer type of pointer size (checked above)
    // matching the C prototype of `name` (each caller's contract).
    Some(unsafe { core::mem::transmute_copy::<usize, T>(&a) })
}

/// The caller's callback and its argument, held while a fence is on.
struct Pending {
    cb: OpCb,
    data: *mut c_void,
}

/// The callback given to the real `PMIx_Fence_nb`: the fence is over.
unsafe extern "C" fn fence_done(status: c_int, cbdata: *mut c_void) {
    // SAFETY: cbdata is the Box PMIx_Fence_nb leaked for this fence, and
    // PMIx calls a callback once.
    let p = unsafe { Box::from_raw(cbdata.cast::<Pending>()) };
    // SAFETY: the caller's callback with its own argument, as PMIx would
    // have called it.
    unsafe { (p.cb)(status, p.data) };
    leave();
}

/// `PMIx_Fence` wrapper: counted while it waits.
///
/// # Safety
/// Same contract as PMIx's `PMIx_Fence`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn PMIx_Fence(
    procs: *const c_void,
    nprocs: usize,
    info: *const c_void,
    ninfo: usize,
) -> c_int {
    let Some(f) = real::<FenceFn>(b"PMIx_Fence\0") else {
        return PMIX_ERR_NOT_SUPPORTED;
    };
    enter();
    // SAFETY: forwarding the caller's arguments.
    let r = unsafe { f(procs, nprocs, info, ninfo) };
    leave();
    r
}

/// `PMIx_Fence_nb` wrapper: counted from the call until its callback.
///
/// # Safety
/// Same contract as PMIx's `PMIx_Fence_nb`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn PMIx_Fence_nb(
    procs: *const c_void,
    nprocs: usize,
    info: *const c_void,
    ninfo: usize,
    cbfunc: Option<OpCb>,
    cbdata: *mut c_void,
) -> c_int {
    let Some(f) = real::<FenceNbFn>(b"PMIx_Fence_nb\0") else {
        return PMIX_ERR_NOT_SUPPORTED;
    };
    let Some(cb) = cbfunc else {
        // No callback: nothing tells when it ends (and nothing waits).
        // SAFETY: forwarding the caller's arguments.
        return unsafe { f(procs, nprocs, info, ninfo, None, cbdata) };
    };
    enter();
    let p = Box::into_raw(Box::new(Pending { cb, data: cbdata }));
    // SAFETY: forwarding the caller's arguments, with our callback and
    // the Box it frees.
    let r = unsafe { f(procs, nprocs, info, ninfo, Some(fence_done), p.cast()) };
    if r != PMIX_SUCCESS {
        // Done at once or refused: the callback will not come.
        // SAFETY: p is the Box leaked above, not handed to anyone.
        drop(unsafe { Box::from_raw(p) });
        leave();
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    static CALLED: AtomicU32 = AtomicU32::new(0);

    unsafe extern "C" fn caller_cb(status: c_int, data: *mut c_void) {
        assert_eq!(status, 7);
        assert_eq!(data as usize, 42);
        // The fence still counts while the caller's callback runs.
        assert_eq!(waiting(), 1);
        CALLED.fetch_add(1, Ordering::SeqCst);
    }

    #[test]
    fn a_fence_counts_from_its_call_until_its_callback() {
        // Without a PMIx library in the test process there is no real
        // function: nothing is counted and the caller is told.
        // SAFETY: null arrays of length 0.
        let r = unsafe {
            PMIx_Fence_nb(
                core::ptr::null(),
                0,
                core::ptr::null(),
                0,
                Some(caller_cb),
                42 as *mut c_void,
            )
        };
        assert_eq!(r, PMIX_ERR_NOT_SUPPORTED);
        assert_eq!(waiting(), 0);
        // The callback a real library would call once the fence is over.
        enter();
        assert_eq!(waiting(), 1);
        let p = Box::into_raw(Box::new(Pending {
            cb: caller_cb,
            data: 42 as *mut c_void,
        }));
        // SAFETY: p is a leaked Pending, as PMIx_Fence_nb passes it.
        unsafe { fence_done(7, p.cast()) };
        assert_eq!(CALLED.load(Ordering::SeqCst), 1);
        assert_eq!(waiting(), 0);
        // A count is of its own process: another (a fork's child) sees 0.
        enter();
        OWNER.store(raw::getpid() + 1, Ordering::SeqCst);
        assert_eq!(waiting(), 0);
        enter();
        assert_eq!(waiting(), 1);
        leave();
        assert_eq!(waiting(), 0);
    }
}
