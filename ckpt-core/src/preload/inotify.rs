//! Wrappers of the inotify functions: libckpt records the path of every
//! watch, which the kernel does not tell (`objects::inotify`).

use core::ffi::{c_char, c_int};

use crate::objects::inotify;

type InitFn = unsafe extern "C" fn() -> c_int;
type Init1Fn = unsafe extern "C" fn(c_int) -> c_int;
type AddFn = unsafe extern "C" fn(c_int, *const c_char, u32) -> c_int;
type RmFn = unsafe extern "C" fn(c_int, c_int) -> c_int;

use super::next_fn as next;

fn no_function() -> c_int {
    // SAFETY: glibc's errno location for this thread is always valid.
    unsafe { *libc::__errno_location() = libc::ENOSYS };
    -1
}

/// `inotify_init(2)` wrapper.
///
/// # Safety
/// Same contract as glibc's `inotify_init`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn inotify_init() -> c_int {
    let Some(real) = next::<InitFn>(b"inotify_init\0") else {
        return no_function();
    };
    // SAFETY: no arguments.
    let fd = unsafe { real() };
    if fd >= 0 {
        inotify::forget_fd(fd);
    }
    fd
}

/// `inotify_init1(2)` wrapper.
///
/// # Safety
/// Same contract as glibc's `inotify_init1`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn inotify_init1(flags: c_int) -> c_int {
    let Some(real) = next::<Init1Fn>(b"inotify_init1\0") else {
        return no_function();
    };
    // SAFETY: forwarding the caller's flags.
    let fd = unsafe { real(flags) };
    if fd >= 0 {
        inotify::forget_fd(fd);
    }
    fd
}

/// `inotify_add_watch(2)` wrapper: records the watch's path, made absolute
/// from the current working directory.
///
/// # Safety
/// Same contract as glibc's `inotify_add_watch`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn inotify_add_watch(fd: c_int, path: *const c_char, mask: u32) -> c_int {
    let Some(real) = next::<AddFn>(b"inotify_add_watch\0") else {
        return no_function();
    };
    // SAFETY: forwarding the caller's arguments.
    let wd = unsafe { real(fd, path, mask) };
    if wd >= 0 && !path.is_null() {
        // SAFETY: the caller's NUL-terminated path (the kernel just read it).
        let given = unsafe { core::ffi::CStr::from_ptr(path) }.to_bytes();
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        let full: Vec<u8> = if given.starts_with(b"/") {
            given.to_vec()
        } else {
            use std::os::unix::ffi::OsStrExt as _;
            match std::env::current_dir() {
                Ok(cwd) => {
                    let mut p = cwd.as_os_str().as_bytes().to_vec();
                    p.push(b'/');
                    p.extend_from_slice(given);
                    p
                }
                // Not recorded: the capture then refuses this watch.
                Err(_) => Vec::new(),
            }
        };
        if !full.is_empty() {
            inotify::record(fd, wd, mask, &full);
        }
        // SAFETY: restore the errno the program may look at.
        unsafe { *libc::__errno_location() = errno };
    }
    wd
}

/// `inotify_rm_watch(2)` wrapper.
///
/// # Safety
/// Same contract as glibc's `inotify_rm_watch`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn inotify_rm_watch(fd: c_int, wd: c_int) -> c_int {
    let Some(real) = next::<RmFn>(b"inotify_rm_watch\0") else {
        return no_function();
    };
    // SAFETY: forwarding the caller's arguments.
    let r = unsafe { real(fd, wd) };
    if r == 0 {
        inotify::forget(fd, wd);
    }
    r
}
