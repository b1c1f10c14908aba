//! inotify: an instance and its watches, set up again by path.
//!
//! fdinfo has a line per watch: `inotify wd:<hex> ino:<hex> sdev:<hex>
//! mask:<hex> ignored_mask:... fhandle-bytes:... f_handle:...`: the watch
//! descriptor, the watched inode and its device (the kernel's encoding,
//! major << 20 | minor), and the events (with `IN_ONESHOT` and
//! `IN_EXCL_UNLINK`). No path: a file handle could name the file, but
//! opening one needs `CAP_DAC_READ_SEARCH` (`docs/kernel.md` §9). So
//! libckpt records the path of every watch the program adds
//! (`preload::inotify` wraps `inotify_add_watch`, absolute from the
//! working directory of the moment), and the capture pairs each watch of
//! fdinfo with its record and checks that the path still names the same
//! inode.
//!
//! Capture (**async-signal-safe**): the watches from fdinfo, each with its
//! recorded path, and the bytes of events not read yet (`FIONREAD`).
//!
//! Refused at checkpoint time, naming the watch: a watch with no record
//! (added by a raw system call, or before libckpt was loaded), a path that
//! now names another file (renamed or replaced since; a restart would
//! watch the wrong one), and events not read yet (the kernel has no way to
//! put them back, and reading them would take them from the program): that
//! refusal passes by itself, and the checkpoint is tried again a moment
//! later.
//!
//! Restore: `inotify_init1` with the saved flags, then each watch added
//! again by path in watch-descriptor order. Descriptors are handed out in
//! increasing order from 1 in a new instance, so a gap (a watch removed
//! earlier) is skipped by adding the watch and removing it again until it
//! gets its number; the `IN_IGNORED` events those removals queue are read
//! away before the program runs. Events of changes made while the job was
//! down are not seen (nothing was watching).

use core::fmt::Write as _;
use core::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

use serde::{Deserialize, Serialize};

use super::{Capture, Kind, check_fd, close_on_error, hex, nonblocking, pair};
use crate::signal_safe::procfs;
use crate::signal_safe::raw::{self, Errno};

const IN_DONT_FOLLOW: u32 = 0x0200_0000;
const IN_ONLYDIR: u32 = 0x0100_0000;
const IN_MASK_ADD: u32 = 0x2000_0000;
const IN_ONESHOT: u32 = 0x8000_0000;
const IN_EXCL_UNLINK: u32 = 0x0400_0000;
/// The highest watch descriptor a restart walks an instance's counter up
/// to (two system calls per step); a higher one is refused.
pub const MAX_WD: i32 = 1 << 16;
const KCMP_FILE: usize = 0;
const NR_KCMP: usize = 312;
const NR_NEWFSTATAT: usize = 262;
const FIONREAD: u64 = 0x541b;

/// One watch of an instance.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Watch {
    /// Its watch descriptor.
    pub wd: i32,
    /// Events and flags as the kernel keeps them, plus the path flags the
    /// program gave (`IN_DONT_FOLLOW`, `IN_ONLYDIR`).
    pub mask: u32,
    /// The path it was added with, absolute; empty when libckpt has no
    /// record of it.
    pub path: String,
    /// The watched inode and its device (`major:minor`), for messages.
    pub ino: u64,
    /// The device.
    pub dev: String,
    /// The path names another file now (renamed or replaced).
    #[serde(default)]
    pub moved: bool,
}

/// An inotify instance's state.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Inotify {
    /// Watches, in fdinfo's order.
    pub watches: Vec<Watch>,
    /// Bytes of events not read yet.
    #[serde(default)]
    pub queued: u64,
    /// libckpt's record of watches was full when the program added one
    /// (so a watch without a path may be one of those).
    #[serde(default)]
    pub table_full: bool,
}

// ---- the record of the program's watches (written by the wrappers) ----

/// A watch as the program added it.
pub struct Recorded {
    fd: i32,
    wd: i32,
    mask: u32,
    path: Box<[u8]>,
}

/// Watches recorded at once.
pub const MAX_RECORDED: usize = 1024;

#[allow(clippy::declare_interior_mutable_const)]
const NONE: AtomicPtr<Recorded> = AtomicPtr::new(core::ptr::null_mut());
static RECORDED: [AtomicPtr<Recorded>; MAX_RECORDED] = [NONE; MAX_RECORDED];
/// Serialises the wrappers (normal context). The capture reads without it:
/// every thread is stopped then, and a slot only ever holds a live record
/// or null (a record is unlinked before it is freed).
static WRITING: AtomicBool = AtomicBool::new(false);
/// A watch could not be recorded: the table was full.
static FULL: AtomicBool = AtomicBool::new(false);

fn with_lock<T>(f: impl FnOnce() -> T) -> T {
    while WRITING
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        core::hint::spin_loop();
    }
    let r = f();
    WRITING.store(false, Ordering::Release);
    r
}

fn unlink_where(pred: impl Fn(&Recorded) -> bool) {
    for slot in &RECORDED {
        let p = slot.load(Ordering::Acquire);
        // SAFETY: a non-null slot holds a live record; only writers (under
        // the lock, which we hold) unlink and free them.
        if !p.is_null() && pred(unsafe { &*p }) {
            slot.store(core::ptr::null_mut(), Ordering::Release);
            // SAFETY: unlinked above; made by Box::into_raw in `record`.
            drop(unsafe { Box::from_raw(p) });
        }
    }
}

/// Record a watch the program added (normal context). `path` is absolute.
pub fn record(fd: i32, wd: i32, mask: u32, path: &[u8]) {
    let rec = Box::into_raw(Box::new(Recorded {
        fd,
        wd,
        mask,
        path: path.into(),
    }));
    with_lock(|| {
        // Adding a watch on an inode already watched gives its descriptor
        // again: the newest path and flags replace the old record.
        unlink_where(|r| r.fd == fd && r.wd == wd);
        match RECORDED
            .iter()
            .find(|s| s.load(Ordering::Acquire).is_null())
        {
            Some(slot) => slot.store(rec, Ordering::Release),
            None => {
                FULL.store(true, Ordering::Release);
                // SAFETY: never linked; the capture refuses the unrecorded watch.
                drop(unsafe { Box::from_raw(rec) });
            }
        }
    });
}

/// Forget a removed watch (normal context).
pub fn forget(fd: i32, wd: i32) {
    with_lock(|| unlink_where(|r| r.fd == fd && r.wd == wd));
}

/// Forget every watch recorded for `fd`, a new instance's descriptor
/// (normal context): the number was another instance's before.
pub fn forget_fd(fd: i32) {
    with_lock(|| unlink_where(|r| r.fd == fd));
}

/// Whether descriptors `a` and `b` of this process are one open file.
fn same_file(a: i32, b: i32) -> bool {
    if a == b {
        return true;
    }
    let pid = raw::getpid() as usize;
    // SAFETY: kcmp compares two descriptors of our own process.
    let r = unsafe { raw::syscall6(NR_KCMP, pid, pid, KCMP_FILE, a as usize, b as usize, 0) };
    r == Ok(0)
}

/// The record of watch `wd` of the instance open as `fd`.
/// **Async-signal-safe.**
fn lookup(fd: i32, wd: i32) -> Option<&'static Recorded> {
    RECORDED.iter().find_map(|s| {
        let p = s.load(Ordering::Acquire);
        // SAFETY: see WRITING: live or null.
        let r = unsafe { p.as_ref() }?;
        (r.wd == wd && same_file(r.fd, fd)).then_some(r)
    })
}

/// (device as `major:minor`, inode) of `path`. **Async-signal-safe.**
fn identity(path: &[u8], follow: bool) -> Option<(u32, u32, u64)> {
    let mut p = [0u8; 4097];
    if path.len() >= p.len() {
        return None;
    }
    p.get_mut(..path.len())?.copy_from_slice(path);
    // SAFETY: a zeroed stat is a valid output buffer.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    let flags = if follow { 0 } else { libc::AT_SYMLINK_NOFOLLOW };
    // SAFETY: NUL-terminated path and a writable stat.
    unsafe {
        raw::syscall6(
            NR_NEWFSTATAT,
            libc::AT_FDCWD as usize,
            p.as_ptr() as usize,
            &mut st as *mut libc::stat as usize,
            flags as usize,
            0,
            0,
        )
    }
    .ok()?;
    Some((libc::major(st.st_dev), libc::minor(st.st_dev), st.st_ino))
}

/// One fdinfo watch line: (wd, ino, major, minor, mask).
fn parse_line(line: &[u8]) -> Option<(i32, u64, u32, u32, u32)> {
    let line = line.strip_prefix(b"inotify ")?;
    let wd = i32::try_from(pair(line, b"wd").and_then(hex)?).ok()?;
    let ino = pair(line, b"ino").and_then(hex)?;
    let sdev = pair(line, b"sdev").and_then(hex)?;
    let mask = u32::try_from(pair(line, b"mask").and_then(hex)?).ok()?;
    Some((wd, ino, (sdev >> 20) as u32, (sdev & 0xf_ffff) as u32, mask))
}

impl Inotify {
    /// Parse fdinfo text (paths left empty). For tests and messages.
    pub fn parse(info: &[u8]) -> Inotify {
        let watches = procfs::lines(info)
            .filter_map(parse_line)
            .map(|(wd, ino, ma, mi, mask)| Watch {
                wd,
                mask,
                path: String::new(),
                ino,
                dev: format!("{ma}:{mi}"),
                moved: false,
            })
            .collect();
        Inotify {
            watches,
            queued: 0,
            table_full: false,
        }
    }
}

impl Kind for Inotify {
    const LINK: &'static [u8] = b"anon_inode:inotify";
    const TAG: &'static str = "inotify";
    const WHAT: &'static str = "an inotify instance";

    fn capture(cx: &mut Capture<'_>) -> Result<(), Errno> {
        let fd = cx.fd;
        let mut queued: i32 = 0;
        // SAFETY: FIONREAD writes an int.
        unsafe { raw::ioctl(fd, FIONREAD, &mut queued as *mut i32 as usize) }?;
        let (info, j) = cx.split();
        let _ = write!(
            j,
            "{{\"queued\":{},\"table_full\":{},\"watches\":[",
            queued.max(0),
            FULL.load(Ordering::Acquire)
        );
        let mut first = true;
        for (wd, ino, ma, mi, mask) in procfs::lines(info).filter_map(parse_line) {
            let rec = lookup(fd, wd);
            let follow = rec.is_none_or(|r| r.mask & IN_DONT_FOLLOW == 0);
            let moved = rec.is_some_and(|r| identity(&r.path, follow) != Some((ma, mi, ino)));
            // Older kernels show only the events in fdinfo: the flags the
            // program gave come from its record.
            let flags = rec.map_or(0, |r| {
                r.mask & (IN_DONT_FOLLOW | IN_ONLYDIR | IN_ONESHOT | IN_EXCL_UNLINK)
            });
            let _ = write!(
                j,
                "{}{{\"wd\":{wd},\"mask\":{},\"ino\":{ino},\"dev\":\"{ma}:{mi}\",\"moved\":{moved},\"path\":",
                if first { "" } else { "," },
                mask | flags
            );
            j.push_json_str(rec.map_or(&[][..], |r| &r.path))?;
            let _ = write!(j, "}}");
            first = false;
        }
        let _ = write!(j, "]}}");
        Ok(())
    }

    fn validate(&self) -> Result<(), String> {
        for w in &self.watches {
            if w.path.is_empty() && self.table_full {
                return Err(format!(
                    "its watch {} (inode {} on device {}) has no recorded path: libckpt records at most {MAX_RECORDED} \
                     watches of a process, and this one added more",
                    w.wd, w.ino, w.dev
                ));
            }
            if w.wd > MAX_WD {
                return Err(format!(
                    "its watch descriptor {} is too high to be given back (a restart reaches at most {MAX_WD})",
                    w.wd
                ));
            }
            if w.path.is_empty() {
                return Err(format!(
                    "its watch {} (inode {} on device {}) was not added through inotify_add_watch, so ckpt does not know its path \
                     (a raw system call, or a program started without libckpt)",
                    w.wd, w.ino, w.dev
                ));
            }
            if w.moved {
                return Err(format!(
                    "its watch {} was added for {}, which names another file now (renamed or replaced since): a restart \
                     would watch that one; add the watch again after such a change",
                    w.wd, w.path
                ));
            }
        }
        if self.queued > 0 {
            return Err(format!(
                "{} bytes of events are queued in it, not read yet (the kernel cannot put them back)",
                self.queued
            ));
        }
        Ok(())
    }

    fn passes(&self) -> bool {
        self.queued > 0 && self.watches.iter().all(|w| !w.path.is_empty() && !w.moved)
    }

    fn create(&self, flags: u32) -> Result<i32, String> {
        self.validate()?;
        // Nonblocking while the removals' IN_IGNORED events are read away.
        // SAFETY: inotify_init1 takes flags only.
        let fd = check_fd(
            unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) },
            "inotify_init1",
        )?;
        let r = self.add_watches(fd).and_then(|()| {
            drain(fd);
            if nonblocking(flags) {
                return Ok(fd);
            }
            // SAFETY: fcntl on our new descriptor.
            let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
            // SAFETY: as above.
            if fl < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, fl & !libc::O_NONBLOCK) } < 0 {
                return Err(format!("fcntl: {}", super::last_error()));
            }
            Ok(fd)
        });
        close_on_error(fd, r)
    }
}

impl Inotify {
    fn add_watches(&self, fd: i32) -> Result<(), String> {
        let mut watches: Vec<&Watch> = self.watches.iter().collect();
        watches.sort_by_key(|w| w.wd);
        for w in watches {
            let path = std::ffi::CString::new(w.path.as_bytes())
                .map_err(|_| format!("watch {}: bad path", w.wd))?;
            let mask = w.mask & !IN_MASK_ADD;
            loop {
                // SAFETY: NUL-terminated path.
                let got = unsafe { libc::inotify_add_watch(fd, path.as_ptr(), mask) };
                if got < 0 {
                    return Err(format!(
                        "cannot watch {} again (watch {}): {}",
                        w.path,
                        w.wd,
                        super::last_error()
                    ));
                }
                if got == w.wd {
                    break;
                }
                // SAFETY: removing the watch just added.
                unsafe { libc::inotify_rm_watch(fd, got) };
                if got > w.wd {
                    return Err(format!(
                        "cannot give watch {} of {} its number back (the kernel gave {got})",
                        w.wd, w.path
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Read away the `IN_IGNORED` events of the removals in [`Inotify::create`]
/// (anything else queued in these microseconds goes too).
fn drain(fd: i32) {
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: reading into a local buffer from our nonblocking descriptor.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
    }
}

#[cfg(test)]
mod tests;
