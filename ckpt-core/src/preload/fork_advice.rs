//! The advice a program gave its memory regions with `madvise(2)` that
//! `smaps` alone reports (VmFlags): `MADV_HUGEPAGE` (`hg`), and for its
//! own children `MADV_DONTFORK` (`dc`) and `MADV_WIPEONFORK` (`wf`).
//!
//! A program relies on the fork advice in its children: V8 keeps its heap
//! out of them, TLS libraries keep a fork-detection page that a child finds
//! zeroed. The image records the advice of each region ([`AdviceSet`], read
//! by the image writer; `fork` and `hugepage` of a region in
//! `docs/image-format.md`) and the restorer advises the region again
//! (`ckpt-restart/src/restorer/restorer.c`), so that the children of the
//! restarted program see what they saw before.
//!
//! The copy-on-write snapshot child that writes an image is such a child
//! itself: it lacks the `MADV_DONTFORK` regions (the leader counts mappings
//! for that) and has the `MADV_WIPEONFORK` ones zeroed, which it would save
//! as they are. [`wiped_in_snapshot`] finds the latter while the job still
//! stands still, without reading `smaps` (which walks every page table of
//! the process: 15 ms per GiB here): a private anonymous mapping without a
//! page in the snapshot and with pages in the process it copies. Such a
//! process is written by itself while the job stands still instead.
//!
//! Everything here is **async-signal-safe** (raw system calls, mmap-backed
//! buffers).

use crate::signal_safe::buf::MmapBuf;
use crate::signal_safe::procfs;
use crate::signal_safe::raw::{self, Errno};

use super::track::{
    PAGE_IS_PFNZERO, PAGE_IS_PRESENT, PAGE_IS_SWAPPED, PAGE_IS_WPALLOWED, PAGEMAP_SCAN, PageRegion,
    PmScanArg,
};

/// `MADV_DONTFORK` (bit of [`crate::image::manifest::ForkAdvice`]).
pub const DONTFORK: u8 = crate::image::manifest::ForkAdvice::DONTFORK;
/// `MADV_WIPEONFORK` (bit of [`crate::image::manifest::ForkAdvice`]).
pub const WIPEONFORK: u8 = crate::image::manifest::ForkAdvice::WIPEONFORK;
/// `MADV_HUGEPAGE`.
pub const HUGEPAGE: u8 = 4;
/// `MAP_DROPPABLE` (`dp`, Linux 6.11): the kernel may drop the contents.
pub const DROPPABLE: u8 = 8;
/// The fork advice bits of an [`AdviceSet`] entry.
pub const FORK_BITS: u8 = DONTFORK | WIPEONFORK;

const PAGE: u64 = crate::image::format::PAGE_SIZE;
// /proc/PID/pagemap entries.
const PM_PRESENT: u64 = 1 << 63;
const PM_SWAP: u64 = 1 << 62;
const PM_MMAP_EXCLUSIVE: u64 = 1 << 56;

/// The regions with any of the advice above, as `/proc/self/smaps`
/// reports them.
pub struct AdviceSet {
    /// (start, end, bits) triples, 24 bytes each, in the order of `smaps`.
    entries: MmapBuf,
    /// Every region has every advice (what could not be read).
    all: bool,
}

impl AdviceSet {
    /// Read `/proc/self/smaps` through `tmp`.
    /// `ENOMEM` when the set cannot be kept: the advice would be lost, so
    /// the image writer fails instead.
    pub fn read(tmp: &mut MmapBuf) -> Result<AdviceSet, Errno> {
        tmp.read_file(b"/proc/self/smaps\0")?;
        let set = Self::parse(tmp.as_slice());
        if set.all {
            return Err(Errno(libc::ENOMEM));
        }
        Ok(set)
    }

    /// The set that `smaps` text `text` describes; where it cannot be
    /// kept (no memory), the set in which every region has every advice
    /// (callers take that as "cannot tell").
    pub fn parse(text: &[u8]) -> AdviceSet {
        let mut entries = MmapBuf::new();
        let mut current = (0u64, 0u64);
        for line in procfs::lines(text) {
            if let Some(flags) = line.strip_prefix(b"VmFlags:") {
                let mut bits = 0u8;
                for f in flags.split(|&c| c == b' ') {
                    bits |= match f {
                        b"hg" => HUGEPAGE,
                        b"dc" => DONTFORK,
                        b"wf" => WIPEONFORK,
                        b"dp" => DROPPABLE,
                        _ => 0,
                    };
                }
                if bits != 0
                    && [current.0, current.1, u64::from(bits)]
                        .iter()
                        .any(|v| entries.push(&v.to_ne_bytes()).is_err())
                {
                    entries.free();
                    return AdviceSet::everything();
                }
            } else if let Some(m) = procfs::parse_maps_line(line) {
                current = (m.start, m.end);
            }
        }
        AdviceSet {
            entries,
            all: false,
        }
    }

    /// The set in which every region has every advice.
    fn everything() -> AdviceSet {
        AdviceSet {
            entries: MmapBuf::new(),
            all: true,
        }
    }

    /// The advice bits of the mapping that holds address `at` (0: none).
    /// A region of an image need not start where its mapping does: the
    /// part of a mapping that one of libckpt's buffers was merged into is
    /// left out ([`procfs::MapsLine::outside`]).
    pub fn get(&self, at: u64) -> u8 {
        if self.all {
            return HUGEPAGE | FORK_BITS | DROPPABLE;
        }
        let word = |c: &[u8], i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(c.get(i * 8..i * 8 + 8).unwrap_or(&[0; 8]));
            u64::from_ne_bytes(w)
        };
        self.entries
            .as_slice()
            .chunks_exact(24)
            .find_map(|c| (word(c, 0) <= at && at < word(c, 1)).then_some(word(c, 2) as u8))
            .unwrap_or(0)
    }
}

impl Drop for AdviceSet {
    fn drop(&mut self) {
        self.entries.free();
    }
}

/// Page map entries read at a time where `PAGEMAP_SCAN` is missing (256
/// KiB: a large empty reservation, such as a JVM's heap, takes few calls).
const READ_ENTRIES: usize = 32 * 1024;

/// Which pages [`has_pages`] looks for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Pages {
    /// Any present or swapped page.
    Any,
    /// A present page of the process's own, not the shared zero page. A
    /// private anonymous mapping that was only read holds the zero page
    /// without the kernel's anonymous-memory bookkeeping, and `fork` leaves
    /// such page tables out of the child (it faults them in again): a JVM
    /// has gigabytes of them. Where `PAGEMAP_SCAN` is missing the page map
    /// hides page frame numbers from unprivileged readers, so a present page
    /// counts when it is mapped once (`PM_MMAP_EXCLUSIVE`): the zero page
    /// never is, and a `MADV_WIPEONFORK` page is unless a child forked
    /// before the advice still shares it.
    Present,
    /// A swapped page outside the ranges tracked for incremental
    /// checkpoints.
    SwappedUntracked,
    /// A swap entry inside a tracked range: a swapped page, or only the
    /// marker the written-page tracking leaves in an empty entry
    /// (`UFFD_FEATURE_WP_UNPOPULATED`), which `fork` drops and which no
    /// unprivileged interface tells from a swapped page.
    SwappedTracked,
}

/// Whether [start, end) of the process whose page map `pagemap` is holds
/// one of `which` pages. `PAGEMAP_SCAN` (6.7) stops at the first one and
/// skips empty page tables; older kernels read the page map until one,
/// through `buf`.
fn has_pages(
    pagemap: i32,
    (start, end): (u64, u64),
    which: Pages,
    buf: &mut MmapBuf,
) -> Result<bool, Errno> {
    match scan_has_pages(pagemap, (start, end), which) {
        Some(r) => r,
        None => read_has_pages(pagemap, (start, end), which, buf),
    }
}

/// [`has_pages`] by `PAGEMAP_SCAN`; `None` where the kernel lacks it.
fn scan_has_pages(
    pagemap: i32,
    (start, end): (u64, u64),
    which: Pages,
) -> Option<Result<bool, Errno>> {
    // A page counts when its categories, with `inverted` flipped, have
    // every bit of `mask` and one of `anyof` (0: no such condition).
    let (inverted, mask, anyof) = match which {
        Pages::Any => (0, 0, PAGE_IS_PRESENT | PAGE_IS_SWAPPED),
        Pages::Present => (PAGE_IS_PFNZERO, PAGE_IS_PRESENT | PAGE_IS_PFNZERO, 0),
        Pages::SwappedUntracked => (PAGE_IS_WPALLOWED, PAGE_IS_SWAPPED | PAGE_IS_WPALLOWED, 0),
        Pages::SwappedTracked => (0, PAGE_IS_SWAPPED | PAGE_IS_WPALLOWED, 0),
    };
    let mut found = PageRegion::default();
    let mut arg = PmScanArg {
        size: core::mem::size_of::<PmScanArg>() as u64,
        flags: 0,
        start,
        end,
        walk_end: 0,
        vec: &mut found as *mut PageRegion as u64,
        vec_len: 1,
        max_pages: 1,
        category_inverted: inverted,
        category_mask: mask,
        category_anyof_mask: anyof,
        return_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
    };
    let scanned = loop {
        // SAFETY: PAGEMAP_SCAN reads `arg` and writes at most one
        // page_region into `found` and walk_end into `arg`, both ours.
        match unsafe { raw::ioctl(pagemap, PAGEMAP_SCAN, &mut arg as *mut PmScanArg as usize) } {
            Err(Errno(libc::EINTR)) => continue,
            r => break r,
        }
    };
    match scanned {
        Ok(n) => Some(Ok(n > 0)),
        Err(Errno(libc::ENOTTY | libc::EINVAL)) => None,
        Err(e) => Some(Err(e)),
    }
}

/// [`has_pages`] by reading the page map, through `buf`. Written pages are
/// only tracked where `PAGEMAP_SCAN` exists, so every swap entry read here
/// is a swapped page.
fn read_has_pages(
    pagemap: i32,
    (start, end): (u64, u64),
    which: Pages,
    buf: &mut MmapBuf,
) -> Result<bool, Errno> {
    let counts = |e: u64| match which {
        Pages::Any => e & (PM_PRESENT | PM_SWAP) != 0,
        Pages::Present => e & (PM_PRESENT | PM_MMAP_EXCLUSIVE) == PM_PRESENT | PM_MMAP_EXCLUSIVE,
        Pages::SwappedUntracked => e & PM_SWAP != 0,
        Pages::SwappedTracked => false,
    };
    if which == Pages::SwappedTracked {
        return Ok(false);
    }
    buf.clear();
    let room = buf.spare(READ_ENTRIES * 8)?;
    let mut page = start / PAGE;
    let last = end / PAGE;
    while page < last {
        let want = ((last - page) as usize).min(READ_ENTRIES) * 8;
        // SAFETY: `room` is ours and valid for READ_ENTRIES * 8 >= want bytes.
        let got = unsafe {
            raw::syscall6(
                raw::nr::PREAD64,
                pagemap as usize,
                room.as_mut_ptr() as usize,
                want,
                (page * 8) as usize,
                0,
                0,
            )
        }?;
        let n = got / 8;
        if n == 0 {
            return Err(Errno(libc::EIO));
        }
        let entries = room.get(..n * 8).unwrap_or(&[]);
        if entries.chunks_exact(8).any(|c| {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            counts(u64::from_ne_bytes(b))
        }) {
            return Ok(true);
        }
        page += n as u64;
    }
    Ok(false)
}

/// Whether this machine has swap space (`sysinfo`); on trouble, yes.
fn swap_configured() -> bool {
    // SAFETY: sysinfo is plain old data; zeroed is valid.
    let mut si: libc::sysinfo = unsafe { core::mem::zeroed() };
    // SAFETY: sysinfo fills the struct we own.
    match unsafe {
        raw::syscall3(
            libc::SYS_sysinfo as usize,
            &mut si as *mut libc::sysinfo as usize,
            0,
            0,
        )
    } {
        Ok(_) => si.totalswap != 0,
        Err(_) => true,
    }
}

/// The page map and `smaps` of the process about to be copied, opened by
/// that process itself before the `fork`: the snapshot child reads them
/// through the descriptors it inherits, bound to the parent's memory (no
/// pid to look up, which a `/proc` of another pid namespace would get
/// wrong, and no permission check against a parent that made itself
/// undumpable).
pub struct ParentView {
    pagemap: i32,
    smaps: i32,
}

impl ParentView {
    /// Open both; a descriptor that cannot be opened is -1 (the child then
    /// answers "wiped", and the process is written in place).
    pub fn open() -> ParentView {
        let o = |p: &[u8]| raw::open(p, libc::O_RDONLY | libc::O_CLOEXEC, 0).unwrap_or(-1);
        ParentView {
            pagemap: o(b"/proc/self/pagemap\0"),
            smaps: o(b"/proc/self/smaps\0"),
        }
    }

    /// Close both (in each process once the check is done: the image
    /// writer must not find them among the program's descriptors).
    pub fn close(&mut self) {
        for fd in [&mut self.pagemap, &mut self.smaps] {
            if *fd >= 0 {
                raw::close(*fd);
            }
            *fd = -1;
        }
    }

    /// Run in the copy-on-write snapshot child, while the parent stands
    /// still: whether one of the parent's private anonymous mappings has
    /// pages of its own where this copy has none, as a region advised
    /// `MADV_WIPEONFORK` does.
    /// - A present page ([`Pages::Present`]) or a swapped one outside the
    ///   tracked ranges makes the region a candidate; the parent's `smaps`
    ///   (read once, inside the pause, only when there is a candidate) lets
    ///   one off only when it is droppable (`dp`, `MAP_DROPPABLE`, Linux
    ///   6.11: the kernel may zero it at any time, so a zeroed copy is what
    ///   it may hold; glibc 2.41 keeps its `getrandom` state there, in every
    ///   process that asked for random bytes).
    /// - A swap entry inside the tracked ranges may be the tracking's marker
    ///   only: ignored on a machine without swap, else `smaps` decides
    ///   (`wf` and not `dp`).
    ///
    /// Any trouble reading answers yes: the caller then has the parent write
    /// its own image, which is always right.
    pub fn wiped_in_snapshot(&self) -> bool {
        let (theirs, smaps_fd) = (self.pagemap, self.smaps);
        if theirs < 0 || smaps_fd < 0 {
            return true;
        }
        let Ok(own) = raw::open(b"/proc/self/pagemap\0", libc::O_RDONLY | libc::O_CLOEXEC, 0)
        else {
            return true;
        };
        let mut maps = MmapBuf::new();
        let mut buf = MmapBuf::new();
        let mut smaps = MmapBuf::new();
        let mut advice: Option<AdviceSet> = None;
        let mut swap: Option<bool> = None;
        let mut parent_advice = |start: u64| -> u8 {
            let set = advice.get_or_insert_with(|| match smaps.read_fd(smaps_fd) {
                Ok(()) => AdviceSet::parse(smaps.as_slice()),
                Err(_) => AdviceSet::everything(),
            });
            set.get(start)
        };
        let mut wiped = maps.read_file(b"/proc/self/maps\0").is_err();
        for line in procfs::lines(maps.as_slice()) {
            if wiped {
                break;
            }
            let Some(m) = procfs::parse_maps_line(line) else {
                continue;
            };
            if !super::track::trackable(&m) {
                continue;
            }
            let range = (m.start, m.end);
            let mut has = |fd, which| has_pages(fd, range, which, &mut buf);
            wiped = match has(own, Pages::Any) {
                Err(_) => true,
                Ok(true) => false,
                Ok(false) => {
                    let real = match has(theirs, Pages::Present) {
                        Ok(false) => has(theirs, Pages::SwappedUntracked),
                        r => r,
                    };
                    match real {
                        Err(_) => true,
                        // Only a droppable region may be saved zeroed.
                        Ok(true) => {
                            parent_advice(m.start) & (WIPEONFORK | DROPPABLE)
                                != WIPEONFORK | DROPPABLE
                        }
                        Ok(false) => match has(theirs, Pages::SwappedTracked) {
                            Ok(false) => false,
                            Ok(true) if !*swap.get_or_insert_with(swap_configured) => false,
                            Ok(true) => {
                                parent_advice(m.start) & (WIPEONFORK | DROPPABLE) == WIPEONFORK
                            }
                            Err(_) => true,
                        },
                    }
                }
            };
        }
        drop(advice);
        smaps.free();
        maps.free();
        buf.free();
        raw::close(own);
        wiped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advice_is_read_per_region_from_smaps_text() {
        let text = b"7f0000000000-7f0000003000 rw-p 00000000 00:00 0 \n\
Size:                 12 kB\n\
VmFlags: rd wr mr mw me ac wf \n\
7f0000010000-7f0000013000 rw-p 00000000 00:00 0 \n\
VmFlags: rd wr mr mw me dc ac sd \n\
7f0000020000-7f0000023000 rw-p 00000000 00:00 0 \n\
VmFlags: rd wr mr mw me ac hg dc \n\
7f0000030000-7f0000033000 rw-p 00000000 00:00 0 \n\
VmFlags: rd wr mr mw me ac \n";
        let set = AdviceSet::parse(text);
        assert_eq!(set.get(0x7f00_0000_0000), WIPEONFORK);
        assert_eq!(set.get(0x7f00_0001_0000), DONTFORK);
        assert_eq!(set.get(0x7f00_0002_0000), HUGEPAGE | DONTFORK);
        assert_eq!(set.get(0x7f00_0003_0000), 0);
        assert_eq!(set.get(0x1000), 0);
        // Inside a mapping, and just past its end.
        assert_eq!(set.get(0x7f00_0001_2000), DONTFORK);
        assert_eq!(set.get(0x7f00_0001_3000), 0);
        assert_eq!(set.get(0x7f00_0000_2fff), WIPEONFORK);
    }

    /// Both ways of asking a page map agree, on a mapping with one written
    /// page in its middle and on an untouched one.
    #[test]
    fn scanning_and_reading_the_page_map_agree() {
        let len = 64 * PAGE as usize;
        // SAFETY: a fresh private anonymous mapping of our own.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let start = p as u64;
        let (first, second) = (start, start + len as u64 / 2);
        // SAFETY: page 40 of the mapping is ours and writable.
        unsafe { *(p.cast::<u8>().add(40 * PAGE as usize)) = 1 };
        let pagemap = raw::open(b"/proc/self/pagemap\0", libc::O_RDONLY | libc::O_CLOEXEC, 0)
            .expect("pagemap");
        let mut buf = MmapBuf::new();
        let end = start + len as u64;
        let mut read = |r, w| read_has_pages(pagemap, r, w, &mut buf).expect("read the page map");
        let scan = |r, w| scan_has_pages(pagemap, r, w).map(|x| x.expect("scan the page map"));
        for which in [Pages::Any, Pages::Present] {
            assert!(!read((first, second), which));
            assert!(read((second, end), which));
            if let Some(found) = scan((first, second), which) {
                assert!(!found);
                assert_eq!(scan((second, end), which), Some(true));
            }
        }
        // Read, not written: the shared zero page, which is not the process's own.
        // SAFETY: page 3 of the mapping is ours and readable.
        let _ = unsafe { core::ptr::read_volatile(p.cast::<u8>().add(3 * PAGE as usize)) };
        assert!(read((first, second), Pages::Any));
        assert!(!read((first, second), Pages::Present));
        if let Some(found) = scan((first, second), Pages::Present) {
            assert!(!found);
            assert_eq!(scan((first, second), Pages::Any), Some(true));
        }
        buf.free();
        raw::close(pagemap);
        // SAFETY: unmaps the mapping made above.
        unsafe { libc::munmap(p, len) };
    }

    /// A fork child finds the parent's written `MADV_WIPEONFORK` region
    /// missing from its copy; without such a region, or with one only read,
    /// it finds nothing.
    #[test]
    fn a_fork_child_finds_the_wiped_region() {
        let len = 3 * PAGE as usize;
        // `map` is MAP_PRIVATE, or MAP_DROPPABLE (0x08, Linux 6.11); `None`
        // when the kernel has no such mapping.
        let child_says = |map: i32, advice: Option<i32>, write: bool| -> Option<i32> {
            // SAFETY: a fresh anonymous mapping of our own.
            let p = unsafe {
                libc::mmap(
                    core::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    map | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                assert_ne!(map, libc::MAP_PRIVATE, "mmap of private memory failed");
                return None;
            }
            if let Some(a) = advice {
                // SAFETY: advice on our own mapping.
                assert_eq!(unsafe { libc::madvise(p, len, a) }, 0);
            }
            if write {
                // SAFETY: the mapping is ours and writable.
                unsafe { core::ptr::write_bytes(p.cast::<u8>(), 7, len) };
            } else {
                for i in 0..3 {
                    // SAFETY: the mapping is ours and readable.
                    let _ =
                        unsafe { core::ptr::read_volatile(p.cast::<u8>().add(i * PAGE as usize)) };
                }
            }
            let mut view = ParentView::open();
            // SAFETY: the child runs only async-signal-safe code, then _exit.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0);
            if pid == 0 {
                let code = i32::from(view.wiped_in_snapshot());
                // SAFETY: leaves the child at once.
                unsafe { libc::_exit(code) };
            }
            view.close();
            let mut st = 0;
            // SAFETY: waits for our own child.
            assert_eq!(unsafe { libc::waitpid(pid, &mut st, 0) }, pid);
            // SAFETY: unmaps the mapping made above.
            unsafe { libc::munmap(p, len) };
            assert!(libc::WIFEXITED(st));
            Some(libc::WEXITSTATUS(st))
        };
        let private = libc::MAP_PRIVATE;
        assert_eq!(
            child_says(private, Some(libc::MADV_WIPEONFORK), true),
            Some(1)
        );
        assert_eq!(child_says(private, None, true), Some(0));
        // Only read: the zero page, which the child lacks too but never needs.
        assert_eq!(child_says(private, None, false), Some(0));
        assert_eq!(
            child_says(private, Some(libc::MADV_WIPEONFORK), false),
            Some(0)
        );
        // Droppable memory (glibc 2.41's getrandom state) is wiped in a child
        // too, but the kernel may drop it at any time: a zeroed copy is fine.
        let droppable = child_says(0x08, None, true);
        assert!(
            matches!(droppable, None | Some(0)),
            "droppable: {droppable:?}"
        );
    }
}
