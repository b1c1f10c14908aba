//! The fence: code that may run in a signal handler or while other threads
//! of the process are stopped at arbitrary points (possibly holding glibc's
//! malloc, stdio or loader locks).
//!
//! Rules for everything under this module (and the parts of `preload` marked
//! *async-signal-safe*): only `core`, atomics and `signal_safe::*`; no
//! `std::fs`, `Vec`, `String`, `format!`, `log::`, `Mutex` or
//! `thread_local!`; system calls through [`raw`] (which leaves `errno`
//! alone); memory from [`buf::MmapBuf`] (mmap, never malloc).

pub mod buf;
pub mod deferred;
pub mod last_pid;
pub mod procfs;
pub mod raw;
