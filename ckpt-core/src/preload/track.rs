//! Dirty-page tracking for incremental checkpoints.
//!
//! Mechanism (`docs/kernel.md` §5; soft-dirty does not exist in this kernel): a
//! user-mode-only userfaultfd in *async write-protect* mode, registered
//! (`UFFDIO_REGISTER_MODE_WP`) on the program's private anonymous memory.
//! A `PAGEMAP_SCAN` with `PM_SCAN_WP_MATCHING` reports the pages written
//! since the previous scan and write-protects them again. Nothing arrives
//! on the descriptor: the kernel resolves each first write itself (about
//! 1 µs per page per interval: that is what tracking costs the program).
//!
//! At a checkpoint, in the stopped process, just before the copy-on-write
//! snapshot is taken ([`before_snapshot`]):
//! 1. one plain scan finds which ranges are registered (tracked since the
//!    last arming), which pages are the shared zero page (read but never
//!    written: restored as zero, never taken from an older image) and
//!    which hold transparent huge pages (never registered: a tracked write
//!    would split the huge page);
//! 2. every private anonymous mapping not yet registered is registered;
//! 3. the write-protecting scan collects the pages written since the
//!    last arming and re-arms.
//!
//! A page of a registered range that was not written since the last
//! arming holds exactly what the image of that checkpoint holds at the
//! same address: the new image only *refers* to it (`inherited`). Every
//! other page is written again. Incremental images are only made when the
//! coordinator names, as the base, the generation whose checkpoint armed
//! the tracking (a failed checkpoint in between therefore makes the next
//! one full), in the process that armed it (a fork child inherits neither
//! the registration nor the descriptor's meaning), and never after a
//! restore.
//!
//! The tracking switches itself off for a while where it costs more than
//! it saves: when more than half of the resident pages were written
//! between two checkpoints.
//!
//! Everything here is **async-signal-safe** (raw system calls, mmap-backed
//! buffers) and runs only on the checkpoint leader thread.

use core::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};

use crate::signal_safe::buf::MmapBuf;
use crate::signal_safe::procfs;
use crate::signal_safe::raw::{self, Errno};

const PAGE: u64 = crate::image::format::PAGE_SIZE;

// <linux/fs.h> (6.7+; the 6.1 headers of this system lack them).
pub(super) const PAGE_IS_WPALLOWED: u64 = 1 << 0;
const PAGE_IS_WRITTEN: u64 = 1 << 1;
pub(super) const PAGE_IS_PRESENT: u64 = 1 << 3;
pub(super) const PAGE_IS_SWAPPED: u64 = 1 << 4;
pub(super) const PAGE_IS_PFNZERO: u64 = 1 << 5;
const PAGE_IS_HUGE: u64 = 1 << 6;
const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
/// `_IOWR('f', 16, struct pm_scan_arg)`.
pub(super) const PAGEMAP_SCAN: u64 = 0xC060_6610;

// <linux/userfaultfd.h>.
const UFFD_USER_MODE_ONLY: usize = 1;
const UFFD_API: u64 = 0xAA;
/// `_IOWR(0xAA, 0x3F, struct uffdio_api)`.
const UFFDIO_API: u64 = 0xC018_AA3F;
/// `_IOWR(0xAA, 0x00, struct uffdio_register)`.
const UFFDIO_REGISTER: u64 = 0xC020_AA00;
const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
const NR_USERFAULTFD: usize = 323;

/// Top of the user address space (47-bit).
const USER_TOP: u64 = 0x7fff_ffff_f000;
/// Entries per `PAGEMAP_SCAN` call.
const SCAN_VEC: usize = 4096;

/// `struct pm_scan_arg`.
#[repr(C)]
pub(super) struct PmScanArg {
    pub(super) size: u64,
    pub(super) flags: u64,
    pub(super) start: u64,
    pub(super) end: u64,
    pub(super) walk_end: u64,
    pub(super) vec: u64,
    pub(super) vec_len: u64,
    pub(super) max_pages: u64,
    pub(super) category_inverted: u64,
    pub(super) category_mask: u64,
    pub(super) category_anyof_mask: u64,
    pub(super) return_mask: u64,
}

/// `struct page_region`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(super) struct PageRegion {
    pub(super) start: u64,
    pub(super) end: u64,
    pub(super) categories: u64,
}

/// `struct uffdio_api`.
#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

/// `struct uffdio_register`.
#[repr(C)]
struct UffdioRegister {
    start: u64,
    len: u64,
    mode: u64,
    ioctls: u64,
}

/// The tracking descriptor (-1: none).
static UFFD: AtomicI32 = AtomicI32::new(-1);
/// The process that created it.
static OWNER: AtomicI32 = AtomicI32::new(0);
/// The generation whose checkpoint armed the tracking (0: not armed).
static ARMED_GEN: AtomicU64 = AtomicU64::new(0);
/// Checkpoints to skip before tracking again (adaptive switch-off).
static BACKOFF: AtomicU32 = AtomicU32::new(0);
/// Close the descriptor once the job runs again (set by a checkpoint that
/// found tracking not worth it, or that was asked not to track).
static DISARM: AtomicU32 = AtomicU32::new(0);
/// Address range the arming checkpoint did not save (the leader's dead
/// stack below its signal frame): never referred to.
static UNSAVED_LO: AtomicU64 = AtomicU64::new(0);
static UNSAVED_HI: AtomicU64 = AtomicU64::new(0);

/// Checkpoints without tracking after one that found most memory rewritten.
const BACKOFF_CHECKPOINTS: u32 = 2;

/// What the coordinator asked for in `WRITE`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Request {
    /// Number of the generation being written.
    pub generation: u64,
    /// The newest complete generation the image may refer to (0: none).
    pub base: u64,
    /// Whether to (keep) track(ing) written pages for the next checkpoint.
    pub track: bool,
}

/// Sorted, non-overlapping address ranges in an mmap buffer that a
/// snapshot child inherits.
pub struct RangeSet {
    buf: MmapBuf,
}

impl Default for RangeSet {
    fn default() -> Self {
        Self::new()
    }
}

impl RangeSet {
    /// An empty set (its buffer is made on the first range).
    pub const fn new() -> Self {
        RangeSet {
            buf: MmapBuf::new_inherited(),
        }
    }

    /// Append a range. Ranges of one scan call come in address order, but
    /// a scan resumed at its `walk_end` may report ranges again or from a
    /// little earlier: [`RangeSet::normalize`] sorts and merges at the end.
    fn push(&mut self, start: u64, end: u64) -> Result<(), Errno> {
        let n = self.len();
        if n > 0 {
            let (ps, pe) = self.get(n - 1);
            if start >= ps && start <= pe {
                if end > pe {
                    self.set(n - 1, (ps, end));
                }
                return Ok(());
            }
        }
        self.buf.push(&start.to_ne_bytes())?;
        self.buf.push(&end.to_ne_bytes())?;
        if self.buf.overflow {
            return Err(Errno(libc::ENOMEM));
        }
        Ok(())
    }

    fn set(&mut self, i: usize, (start, end): (u64, u64)) {
        self.buf.overwrite(i * 16, &start.to_ne_bytes());
        self.buf.overwrite(i * 16 + 8, &end.to_ne_bytes());
    }

    /// Sort by start (heapsort: in place, no allocation) and merge
    /// overlapping or adjacent ranges.
    fn normalize(&mut self) {
        let n = self.len();
        let sift = |set: &mut Self, mut root: usize, end: usize| loop {
            let mut child = 2 * root + 1;
            if child >= end {
                break;
            }
            if child + 1 < end && set.get(child + 1).0 > set.get(child).0 {
                child += 1;
            }
            if set.get(root).0 >= set.get(child).0 {
                break;
            }
            let (r, c) = (set.get(root), set.get(child));
            set.set(root, c);
            set.set(child, r);
            root = child;
        };
        for i in (0..n / 2).rev() {
            sift(self, i, n);
        }
        for end in (1..n).rev() {
            let (top, last) = (self.get(0), self.get(end));
            self.set(0, last);
            self.set(end, top);
            sift(self, 0, end);
        }
        let mut out = 0usize;
        for i in 0..n {
            let (s, e) = self.get(i);
            if out > 0 {
                let (ps, pe) = self.get(out - 1);
                if s <= pe {
                    self.set(out - 1, (ps, pe.max(e)));
                    continue;
                }
            }
            self.set(out, (s, e));
            out += 1;
        }
        self.buf.truncate(out * 16);
    }

    fn len(&self) -> usize {
        self.buf.len() / 16
    }

    fn get(&self, i: usize) -> (u64, u64) {
        let s = self.buf.as_slice();
        let word = |at: usize| {
            let mut b = [0u8; 8];
            if let Some(src) = s.get(at..at + 8) {
                b.copy_from_slice(src);
            }
            u64::from_ne_bytes(b)
        };
        (word(i * 16), word(i * 16 + 8))
    }

    /// Whether `addr` lies in a range. `cursor` makes ascending queries
    /// linear (an address between two ranges keeps it where it is); a
    /// query below the range before it falls back to a binary search.
    pub fn contains(&self, addr: u64, cursor: &mut usize) -> bool {
        let n = self.len();
        if *cursor > n || (*cursor > 0 && self.get(*cursor - 1).1 > addr) {
            // first range whose end is above addr
            let (mut lo, mut hi) = (0usize, n);
            while lo < hi {
                let mid = (lo + hi) / 2;
                if self.get(mid).1 <= addr {
                    lo = mid + 1;
                } else {
                    hi = mid;
                }
            }
            *cursor = lo;
        }
        while *cursor < n && self.get(*cursor).1 <= addr {
            *cursor += 1;
        }
        *cursor < n && self.get(*cursor).0 <= addr
    }

    fn intersects(&self, start: u64, end: u64) -> bool {
        let mut c = 0usize;
        // the first range ending above start
        let _ = self.contains(start, &mut c);
        c < self.len() && self.get(c).0 < end
    }

    /// Pages covered.
    pub fn pages(&self) -> u64 {
        (0..self.len())
            .map(|i| {
                let (s, e) = self.get(i);
                (e - s) / PAGE
            })
            .sum()
    }

    fn clear(&mut self) {
        self.buf.clear();
    }

    /// Give the buffer back.
    pub fn free(&mut self) {
        self.buf.free();
    }

    /// The buffer's mapping as (start, end); (0, 0) when there is none.
    fn mapping_range(&self) -> (u64, u64) {
        let (p, len) = self.buf.mapping();
        (p as u64, (p + len) as u64)
    }
}

/// What one incremental checkpoint knows about the pages of the process.
pub struct Incremental {
    /// The generation the unchanged pages are referred to.
    pub base: u64,
    written: RangeSet,
    zero: RangeSet,
    registered: RangeSet,
    huge: RangeSet,
    unsaved: (u64, u64),
}

/// Per-page decision of an incremental image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageClass {
    /// Not saved: restored as zero.
    Skip,
    /// Saved in this image.
    Own,
    /// Same content as in the base image at the same address.
    Inherit,
}

/// Cursors for ascending queries, one per set.
#[derive(Default)]
pub struct Cursors([usize; 3]);

impl Incremental {
    /// Start addresses of this state's buffers.
    fn buffer_ranges(&self) -> [(u64, u64); 4] {
        [
            self.written.mapping_range(),
            self.zero.mapping_range(),
            self.registered.mapping_range(),
            self.huge.mapping_range(),
        ]
    }

    /// Classify a page that the full image would save.
    pub fn classify(&self, addr: u64, c: &mut Cursors) -> PageClass {
        if self.zero.contains(addr, &mut c.0[0]) {
            return PageClass::Skip;
        }
        if addr >= self.unsaved.0 && addr < self.unsaved.1 {
            return PageClass::Own;
        }
        if self.registered.contains(addr, &mut c.0[1]) && !self.written.contains(addr, &mut c.0[2])
        {
            PageClass::Inherit
        } else {
            PageClass::Own
        }
    }
}

/// The leader's state. Only the leader thread (one at a time, guarded by
/// `leader::LEADING`) or the single-threaded snapshot child touch it.
static mut STATE: Incremental = Incremental {
    base: 0,
    written: RangeSet::new(),
    zero: RangeSet::new(),
    registered: RangeSet::new(),
    huge: RangeSet::new(),
    unsaved: (0, 0),
};
/// 1 when `STATE` describes an incremental image for this checkpoint.
static ACTIVE: AtomicU32 = AtomicU32::new(0);

fn state() -> &'static mut Incremental {
    // SAFETY: see STATE: a single thread at a time uses it, and never
    // re-entrantly (the leader holds LEADING for the whole checkpoint).
    unsafe { &mut *core::ptr::addr_of_mut!(STATE) }
}

/// The incremental description for the image being written, if any.
pub fn incremental() -> Option<&'static Incremental> {
    if ACTIVE.load(Ordering::Acquire) == 1 {
        // SAFETY: as in `state`; shared read on the same thread.
        Some(unsafe { &*core::ptr::addr_of!(STATE) })
    } else {
        None
    }
}

/// The buffers of this module as (start, end) (never saved in images).
pub fn scratch_ranges() -> [(u64, u64); 4] {
    state().buffer_ranges()
}

/// The tracking descriptor, which is never saved as one of the program's.
pub fn own_fd() -> i32 {
    UFFD.load(Ordering::Acquire)
}

/// After a restore: the descriptor number is stale (it may name one of the
/// program's files now) and nothing is tracked. **Async-signal-safe.**
pub fn reset_after_restore() {
    super::page_crcs::reset_after_restore();
    UFFD.store(-1, Ordering::Release);
    OWNER.store(0, Ordering::Release);
    ARMED_GEN.store(0, Ordering::Release);
    ACTIVE.store(0, Ordering::Release);
    DISARM.store(0, Ordering::Release);
    BACKOFF.store(0, Ordering::Release);
    let s = state();
    // The buffers were not restored (they are never saved).
    s.written = RangeSet::new();
    s.zero = RangeSet::new();
    s.registered = RangeSet::new();
    s.huge = RangeSet::new();
}

fn is_uffd(fd: i32) -> bool {
    let mut p = crate::signal_safe::buf::StackBuf::<64>::new();
    let _ = core::fmt::Write::write_fmt(&mut p, format_args!("/proc/self/fd/{fd}"));
    let mut t = [0u8; 64];
    match raw::readlink(p.as_cstr(), &mut t) {
        Ok(n) => t.get(..n) == Some(b"anon_inode:[userfaultfd]".as_slice()),
        Err(_) => false,
    }
}

/// Forget the descriptor (closing it when it is still ours): the kernel
/// unregisters every range and drops the write protection.
fn disarm() {
    super::page_crcs::free();
    let fd = UFFD.swap(-1, Ordering::AcqRel);
    if fd >= 0 && is_uffd(fd) {
        raw::close(fd);
    }
    OWNER.store(0, Ordering::Release);
    ARMED_GEN.store(0, Ordering::Release);
}

fn open_uffd() -> Result<i32, Errno> {
    // SAFETY: userfaultfd(2) takes flags only.
    let fd = unsafe {
        raw::syscall3(
            NR_USERFAULTFD,
            libc::O_CLOEXEC as usize | libc::O_NONBLOCK as usize | UFFD_USER_MODE_ONLY,
            0,
            0,
        )
    }? as i32;
    let mut api = UffdioApi {
        api: UFFD_API,
        features: UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API reads and writes a struct uffdio_api we own.
    if let Err(e) = unsafe { raw::ioctl(fd, UFFDIO_API, &mut api as *mut UffdioApi as usize) } {
        raw::close(fd);
        return Err(e);
    }
    Ok(fd)
}

/// Whether this kernel can track written pages the way [`before_snapshot`]
/// does (Linux 6.7: an unprivileged user-mode-only userfaultfd with the
/// asynchronous write-protect features, and the `PAGEMAP_SCAN` ioctl).
/// Used by `ckpt check`; safe anywhere (opens and closes descriptors).
pub fn probe() -> Result<(), &'static str> {
    let fd = open_uffd().map_err(
        |_| "no unprivileged userfaultfd with asynchronous write protection (Linux 6.7)",
    )?;
    raw::close(fd);
    let pm = raw::open(b"/proc/self/pagemap\0", libc::O_RDONLY | libc::O_CLOEXEC, 0)
        .map_err(|_| "/proc/self/pagemap cannot be opened")?;
    // An empty range: the kernel checks the argument and reports nothing.
    let mut arg = PmScanArg {
        size: core::mem::size_of::<PmScanArg>() as u64,
        flags: 0,
        start: 0,
        end: 0,
        walk_end: 0,
        vec: 0,
        vec_len: 0,
        max_pages: 0,
        category_inverted: 0,
        category_mask: 0,
        category_anyof_mask: 0,
        return_mask: PAGE_IS_WRITTEN,
    };
    // SAFETY: PAGEMAP_SCAN reads and writes a struct pm_scan_arg we own;
    // with an empty range and no vector it writes no page_region.
    let r = unsafe { raw::ioctl(pm, PAGEMAP_SCAN, &mut arg as *mut PmScanArg as usize) };
    raw::close(pm);
    r.map(|_| ())
        .map_err(|_| "no PAGEMAP_SCAN ioctl (Linux 6.7)")
}

/// One `PAGEMAP_SCAN` over the whole address space, calling `each` for
/// every reported range.
fn scan(
    pagemap: i32,
    vec: &MmapBuf,
    flags: u64,
    masks: (u64, u64, u64),
    each: impl FnMut(&PageRegion) -> Result<(), Errno>,
) -> Result<(), Errno> {
    scan_range(pagemap, vec, (0, USER_TOP), flags, masks, each)
}

/// The pages of [start, end) that map the shared zero page (read, never
/// written since they were mapped), into `out` (emptied first), through
/// `vec`: a full image leaves them out (they are restored as zero, which
/// they are). Nothing where the kernel lacks `PAGEMAP_SCAN` (6.7).
/// **Async-signal-safe.**
pub fn zero_pages(
    pagemap: i32,
    (start, end): (u64, u64),
    vec: &mut MmapBuf,
    out: &mut RangeSet,
) -> Result<(), Errno> {
    out.clear();
    if vec.mapping().1 == 0 {
        vec.reserve(SCAN_VEC * core::mem::size_of::<PageRegion>())?;
    }
    let r = scan_range(
        pagemap,
        vec,
        (start, end),
        0,
        (PAGE_IS_PFNZERO, 0, PAGE_IS_PFNZERO),
        |r| out.push(r.start, r.end),
    );
    match r {
        Err(Errno(libc::ENOTTY | libc::EINVAL)) => {
            out.clear();
            Ok(())
        }
        r => {
            out.normalize();
            r
        }
    }
}

/// One `PAGEMAP_SCAN` over [start, end), calling `each` for every reported
/// range.
fn scan_range(
    pagemap: i32,
    vec: &MmapBuf,
    (start, end): (u64, u64),
    flags: u64,
    (mask, anyof, ret): (u64, u64, u64),
    mut each: impl FnMut(&PageRegion) -> Result<(), Errno>,
) -> Result<(), Errno> {
    let (vptr, vcap) = vec.mapping();
    let vlen = (vcap / core::mem::size_of::<PageRegion>()).min(SCAN_VEC);
    let mut arg = PmScanArg {
        size: core::mem::size_of::<PmScanArg>() as u64,
        flags,
        start,
        end,
        walk_end: 0,
        vec: vptr as u64,
        vec_len: vlen as u64,
        max_pages: 0,
        category_inverted: 0,
        category_mask: mask,
        category_anyof_mask: anyof,
        return_mask: ret,
    };
    loop {
        let argp = &mut arg as *mut PmScanArg as usize;
        let n = loop {
            // SAFETY: PAGEMAP_SCAN reads `arg` and writes at most vec_len
            // page_region entries into our mapping `vec`, and walk_end into arg.
            let r = unsafe { raw::ioctl(pagemap, PAGEMAP_SCAN, argp) };
            match r {
                Err(Errno(libc::EINTR)) => continue,
                r => break r?,
            }
        };
        for i in 0..n.min(vlen) {
            // SAFETY: the kernel filled entry i < n of our mapping.
            let r = unsafe { core::ptr::read((vptr as *const PageRegion).add(i)) };
            each(&r)?;
        }
        if arg.walk_end >= arg.end || arg.walk_end <= arg.start {
            return Ok(());
        }
        arg.start = arg.walk_end;
    }
}

/// Run `f` with `/proc/self/pagemap` open, a buffer for scan results and
/// one for `/proc/self/maps`; releases them after.
fn with_scan_buffers<T>(
    f: impl FnOnce(i32, &MmapBuf, &mut MmapBuf) -> Result<T, Errno>,
) -> Result<T, Errno> {
    let pagemap = raw::open(b"/proc/self/pagemap\0", libc::O_RDONLY | libc::O_CLOEXEC, 0)?;
    let mut vec = MmapBuf::new();
    let mut maps = MmapBuf::new();
    let r = vec
        .reserve(SCAN_VEC * core::mem::size_of::<PageRegion>())
        .and_then(|()| f(pagemap, &vec, &mut maps));
    vec.free();
    maps.free();
    raw::close(pagemap);
    r
}

/// Addresses inside libckpt's own writable data: the mappings holding them
/// are never tracked (the checkpoint itself writes there after the scan).
fn own_data() -> [u64; 8] {
    use super::{capture, exec, finish, leader, stop};
    let end_of_slots =
        core::ptr::addr_of!(stop::SLOTS) as u64 + core::mem::size_of_val(&stop::SLOTS) as u64 - 1;
    [
        core::ptr::addr_of!(UFFD) as u64,
        core::ptr::addr_of!(STATE) as u64,
        core::ptr::addr_of!(stop::SLOTS) as u64,
        end_of_slots,
        core::ptr::addr_of!(leader::CKPT_RESTORE_INFO) as u64,
        core::ptr::addr_of!(finish::CKPT_FINISH_ARGS) as u64,
        core::ptr::addr_of!(capture::PHASE_SENT) as u64,
        core::ptr::addr_of!(exec::PRELOAD_ENTRY) as u64,
    ]
}

/// Whether a maps line is memory the tracking covers: private anonymous
/// memory (heap, stacks, anonymous mmaps).
pub(super) fn trackable(m: &procfs::MapsLine<'_>) -> bool {
    !m.shared
        && (m.path.is_empty()
            || m.path == b"[heap]"
            || m.path == b"[stack]"
            || m.path.starts_with(b"[anon:"))
}

/// Resident pages of the process (`/proc/self/statm`).
fn resident_pages() -> u64 {
    let mut b = [0u8; 256];
    let Ok(fd) = raw::open(b"/proc/self/statm\0", libc::O_RDONLY | libc::O_CLOEXEC, 0) else {
        return 0;
    };
    let n = raw::read_into(fd, &mut b).unwrap_or(0);
    raw::close(fd);
    b.get(..n)
        .unwrap_or(&[])
        .split(|&c| c == b' ')
        .nth(1)
        .and_then(procfs::dec)
        .unwrap_or(0)
}

/// Run in the stopped process, after every thread stopped and just
/// before the snapshot: prepare an incremental image if the request
/// allows it, and (re-)arm tracking if asked to. `own_uc` is the leader's
/// signal frame (the image does not save the stack below it). Returns
/// whether this checkpoint's image is incremental. **Async-signal-safe.**
pub fn before_snapshot(req: &Request, own_uc: u64) -> bool {
    ACTIVE.store(0, Ordering::Release);
    super::page_crcs::clear();
    DISARM.store(0, Ordering::Release);
    let pid = raw::getpid();
    let fd = UFFD.load(Ordering::Acquire);
    if fd >= 0 {
        let ours = is_uffd(fd);
        let inherited = OWNER.load(Ordering::Acquire) != pid;
        if inherited || !ours {
            // Inherited by fork from the process that armed it (its ranges
            // are not registered here), or closed by the program: start over.
            if inherited && ours {
                raw::close(fd);
            }
            UFFD.store(-1, Ordering::Release);
            ARMED_GEN.store(0, Ordering::Release);
        }
    }
    let mut want = req.track;
    if want && BACKOFF.load(Ordering::Acquire) > 0 {
        BACKOFF.fetch_sub(1, Ordering::AcqRel);
        want = false;
    }
    let armed = ARMED_GEN.load(Ordering::Acquire);
    let usable = UFFD.load(Ordering::Acquire) >= 0 && armed != 0 && armed == req.base;
    if !want && !usable {
        if UFFD.load(Ordering::Acquire) >= 0 {
            DISARM.store(1, Ordering::Release);
        }
        return false;
    }
    match prepare(req, want, usable, own_uc) {
        Ok(inc) => {
            if inc {
                ACTIVE.store(1, Ordering::Release);
            }
            inc
        }
        Err(_) => {
            // Tracking is an optimisation: on any trouble the image is full
            // and tracking starts over at the next checkpoint (the page
            // checksum tables were cleared on entry).
            DISARM.store(1, Ordering::Release);
            ARMED_GEN.store(0, Ordering::Release);
            false
        }
    }
}

fn prepare(req: &Request, want: bool, usable: bool, own_uc: u64) -> Result<bool, Errno> {
    let s = state();
    s.written.clear();
    s.zero.clear();
    s.registered.clear();
    s.huge.clear();
    const CATEGORIES: u64 = PAGE_IS_WPALLOWED | PAGE_IS_PFNZERO | PAGE_IS_HUGE;
    with_scan_buffers(|pagemap, vec, maps| {
        // 1. What is registered, zero, huge — as of the last arming.
        scan(pagemap, vec, 0, (0, CATEGORIES, CATEGORIES), |r| {
            if r.categories & PAGE_IS_WPALLOWED != 0 {
                s.registered.push(r.start, r.end)?;
            }
            if r.categories & PAGE_IS_PFNZERO != 0 {
                s.zero.push(r.start, r.end)?;
            }
            if r.categories & PAGE_IS_HUGE != 0 {
                s.huge.push(r.start, r.end)?;
            }
            Ok(())
        })?;
        s.registered.normalize();
        s.zero.normalize();
        s.huge.normalize();
        if !usable {
            s.registered.clear();
        }
        // 2. Register what is not yet tracked.
        let mut unsaved = (0u64, 0u64);
        if want {
            let mut fd = UFFD.load(Ordering::Acquire);
            if fd < 0 {
                fd = open_uffd()?;
                UFFD.store(fd, Ordering::Release);
                OWNER.store(raw::getpid(), Ordering::Release);
            }
            unsaved = register_all(s, fd, maps, own_uc)?;
        }
        // 3. Written since the last arming (and re-arm when tracking goes on).
        let flags = if want { PM_SCAN_WP_MATCHING } else { 0 };
        scan(
            pagemap,
            vec,
            flags,
            (PAGE_IS_WRITTEN, 0, PAGE_IS_WRITTEN),
            |r| {
                if usable {
                    s.written.push(r.start, r.end)?;
                }
                Ok(())
            },
        )?;
        s.unsaved = (
            UNSAVED_LO.load(Ordering::Acquire),
            UNSAVED_HI.load(Ordering::Acquire),
        );
        s.base = req.base;
        if want {
            ARMED_GEN.store(req.generation, Ordering::Release);
            UNSAVED_LO.store(unsaved.0, Ordering::Release);
            UNSAVED_HI.store(unsaved.1, Ordering::Release);
        } else {
            DISARM.store(1, Ordering::Release);
        }
        let resident = resident_pages();
        let mut record = want;
        if usable {
            // Adaptive switch-off: rewriting most of memory every interval
            // makes tracking cost more than it saves.
            let written = s.written.pages();
            if want && resident > 0 && written * 2 > resident {
                BACKOFF.store(BACKOFF_CHECKPOINTS, Ordering::Release);
                DISARM.store(1, Ordering::Release);
                record = false;
            }
        }
        // Page checksums: this image takes those of its inherited pages
        // from the base's table and records its own for the next one.
        super::page_crcs::prepare(req.generation, usable.then_some(req.base), record, resident);
        Ok(usable)
    })
}

/// Register every trackable mapping with `fd` (libckpt's own data, this
/// module's buffers and mappings holding huge pages excepted). Returns the
/// range of the mapping holding `own_uc` below that frame: the stack the
/// checkpoint itself uses, which the image does not save.
fn register_all(
    s: &Incremental,
    fd: i32,
    maps: &mut MmapBuf,
    own_uc: u64,
) -> Result<(u64, u64), Errno> {
    let own = own_data();
    let mine = s.buffer_ranges();
    let mut unsaved = (0u64, 0u64);
    let own_floor = own_uc.saturating_sub(8) & !(PAGE - 1);
    maps.read_file(b"/proc/self/maps\0")?;
    // Our buffers are left out by range: one may share a line of maps with
    // a mapping of the program that the kernel merged it with.
    let parts = procfs::lines(maps.as_slice())
        .filter_map(procfs::parse_maps_line)
        .flat_map(|m| m.outside(&mine));
    for m in parts {
        if m.start <= own_uc && own_uc < m.end {
            unsaved = (m.start, own_floor);
        }
        if !trackable(&m)
            || own.iter().any(|&a| m.start <= a && a < m.end)
            || s.huge.intersects(m.start, m.end)
        {
            continue;
        }
        let mut reg = UffdioRegister {
            start: m.start,
            len: m.end - m.start,
            mode: UFFDIO_REGISTER_MODE_WP,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER reads/writes a struct we own; an
        // unsupported mapping is refused with an error (and stays untracked).
        let _ = unsafe {
            raw::ioctl(
                fd,
                UFFDIO_REGISTER,
                &mut reg as *mut UffdioRegister as usize,
            )
        };
    }
    Ok(unsaved)
}

/// Run by a restored process before any of its threads resumes, when the
/// next checkpoints are to be incremental: every present page now holds
/// what generation `generation` holds at its address (it was read from that
/// generation's images), except the main thread's stack below `sp`, which
/// the restore itself used. Arms tracking so that the next checkpoint can
/// refer to that generation; on any failure the next one is full.
/// **Async-signal-safe.**
pub fn arm_after_restore(generation: u64, sp: u64) {
    let s = state();
    let r = with_scan_buffers(|pagemap, vec, maps| {
        scan(pagemap, vec, 0, (0, PAGE_IS_HUGE, PAGE_IS_HUGE), |r| {
            s.huge.push(r.start, r.end)
        })?;
        s.huge.normalize();
        let fd = open_uffd()?;
        UFFD.store(fd, Ordering::Release);
        OWNER.store(raw::getpid(), Ordering::Release);
        let (lo, _) = register_all(s, fd, maps, sp)?;
        scan(
            pagemap,
            vec,
            PM_SCAN_WP_MATCHING,
            (PAGE_IS_WRITTEN, 0, PAGE_IS_WRITTEN),
            |_| Ok(()),
        )?;
        ARMED_GEN.store(generation, Ordering::Release);
        UNSAVED_LO.store(lo, Ordering::Release);
        UNSAVED_HI.store((sp + PAGE - 1) & !(PAGE - 1), Ordering::Release);
        Ok(())
    });
    s.huge.free();
    if r.is_err() {
        disarm();
    }
}

/// Run by the leader once the job runs again: free what the snapshot
/// needed, and drop the tracking if this checkpoint decided so.
/// **Async-signal-safe.**
pub fn after_snapshot() {
    ACTIVE.store(0, Ordering::Release);
    let s = state();
    s.written.free();
    s.zero.free();
    s.registered.free();
    s.huge.free();
    if DISARM.swap(0, Ordering::AcqRel) == 1 {
        disarm();
    }
}

#[cfg(test)]
mod tests {
    use super::RangeSet;

    /// `contains` with a cursor answers as a plain search does, for
    /// ascending queries (the capture's order, many between ranges) and for
    /// queries that jump back.
    #[test]
    fn contains_with_cursor_matches_a_search() {
        let mut set = RangeSet::new();
        let ranges: Vec<(u64, u64)> = (0..200u64)
            .map(|i| (i * 10_000 + (i * 37) % 500, i * 10_000 + 4096 * (1 + i % 3)))
            .collect();
        for &(s, e) in &ranges {
            set.push(s, e).expect("push");
        }
        set.normalize();
        let naive = |a: u64| ranges.iter().any(|&(s, e)| s <= a && a < e);
        let mut cursor = 0usize;
        for a in (0..2_100_000u64).step_by(997) {
            assert_eq!(set.contains(a, &mut cursor), naive(a), "ascending, at {a}");
        }
        let mut x = 12345u64;
        for _ in 0..5000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let a = x % 2_100_000;
            assert_eq!(set.contains(a, &mut cursor), naive(a), "jumping, at {a}");
        }
        set.buf.free();
    }
}
