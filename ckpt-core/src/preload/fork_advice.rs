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
//! as they are. [`ParentView::verdict`] finds both while the job still
//! stands still, without reading `smaps` unless it must (it walks every
//! page table of the process: 15 ms per GiB here): the parent's mappings
//! the snapshot lacks, and private anonymous mappings without a page in the
//! snapshot and with pages in the process it copies. The stopped process
//! then lifts that advice from those regions ([`lift`]), forks a second
//! snapshot, which is whole, and gives the advice back ([`give_back`]);
//! the second snapshot records it from the list ([`Lifted`]). Where that
//! cannot be done, the process is written by itself while the job stands
//! still instead.
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
/// A mapping a driver made or special memory (`io`, `pf`, `mm`, `de`,
/// `ht`: I/O or PFN maps, mixed maps, no expansion, hugetlb): its fork
/// advice is never lifted ([`ParentView::verdict`]).
pub const UNLIFTABLE: u8 = 16;

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
        tmp.read_smaps(b"/proc/self/smaps\0")?;
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
                        b"io" | b"pf" | b"mm" | b"de" | b"ht" => UNLIFTABLE,
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

/// The page map, `smaps` and maps of the process about to be copied, opened
/// by that process itself before the `fork`: the snapshot child reads them
/// through the descriptors it inherits, bound to the parent's memory (no
/// pid to look up, which a `/proc` of another pid namespace would get
/// wrong, and no permission check against a parent that made itself
/// undumpable).
pub struct ParentView {
    pagemap: i32,
    smaps: i32,
    maps: i32,
}

impl ParentView {
    /// Open the three; a descriptor that cannot be opened is -1 (the child
    /// then answers [`Verdict::Cannot`], and the process is written in
    /// place).
    pub fn open() -> ParentView {
        let o = |p: &[u8]| raw::open(p, libc::O_RDONLY | libc::O_CLOEXEC, 0).unwrap_or(-1);
        ParentView {
            pagemap: o(b"/proc/self/pagemap\0"),
            smaps: o(b"/proc/self/smaps\0"),
            maps: o(b"/proc/self/maps\0"),
        }
    }

    /// Close them (in each process once the check is done: the image
    /// writer must not find them among the program's descriptors).
    pub fn close(&mut self) {
        for fd in [&mut self.pagemap, &mut self.smaps, &mut self.maps] {
            if *fd >= 0 {
                raw::close(*fd);
            }
            *fd = -1;
        }
    }

    /// Run in the copy-on-write snapshot child, while the parent stands
    /// still: can this copy be written as it is, and if not, which regions
    /// would the parent have to lift its fork advice from for a copy that
    /// can ([`Verdict`]; the regions go into `lift` as [`Lifted`] entries).
    ///
    /// `missing`: this copy has fewer mappings than the parent. The parent's
    /// mappings that no mapping of this copy overlaps are the ones `fork`
    /// left out: `MADV_DONTFORK`.
    ///
    /// Then, as a region advised `MADV_WIPEONFORK` shows: one of the
    /// parent's private anonymous mappings with pages of its own where this
    /// copy has none.
    /// - A present page ([`Pages::Present`]) or a swapped one outside the
    ///   tracked ranges makes the region a candidate; the parent's `smaps`
    ///   (read once, inside the pause, only when there is a candidate)
    ///   decides: droppable (`dp`, `MAP_DROPPABLE`, Linux 6.11: the kernel
    ///   may zero it at any time, so a zeroed copy is what it may hold; glibc
    ///   2.41 keeps its `getrandom` state there, in every process that asked
    ///   for random bytes) is let off, `wf` is lifted, anything else cannot
    ///   be explained and the copy is not used.
    /// - A swap entry inside the tracked ranges may be the tracking's marker
    ///   only: ignored on a machine without swap, else `smaps` decides
    ///   (`wf` and not `dp`: lifted).
    ///
    /// Any trouble reading answers [`Verdict::Cannot`]: the caller then has
    /// the parent write its own image, which is always right.
    pub fn verdict(&self, missing: bool, lift: &mut MmapBuf) -> Verdict {
        if self.pagemap < 0 || self.smaps < 0 || self.maps < 0 {
            return Verdict::Cannot;
        }
        let Ok(own) = raw::open(b"/proc/self/pagemap\0", libc::O_RDONLY | libc::O_CLOEXEC, 0)
        else {
            return Verdict::Cannot;
        };
        let mut bufs = [
            MmapBuf::new(),
            MmapBuf::new(),
            MmapBuf::new(),
            MmapBuf::new(),
        ];
        let r = self.find(missing, own, &mut bufs, lift);
        for b in &mut bufs {
            b.free();
        }
        raw::close(own);
        match r {
            Ok(()) if lift.is_empty() => Verdict::Whole,
            Ok(()) => Verdict::Lift,
            Err(_) => {
                lift.clear();
                Verdict::Cannot
            }
        }
    }

    /// The work of [`ParentView::verdict`]: `Err` for [`Verdict::Cannot`].
    fn find(
        &self,
        missing: bool,
        own: i32,
        [maps, parent, buf, smaps]: &mut [MmapBuf; 4],
        lift: &mut MmapBuf,
    ) -> Result<(), Errno> {
        let theirs = self.pagemap;
        let push = |lift: &mut MmapBuf, (start, end): (u64, u64), bit: u8| -> Result<(), Errno> {
            for v in [start, end, u64::from(bit)] {
                lift.push(&v.to_ne_bytes())?;
            }
            Ok(())
        };
        // The parent's mappings (read through its descriptor: it stands
        // still), then this copy's, read again until the buffer they are
        // read into no longer moves.
        if missing {
            parent.read_fd(self.maps)?;
        }
        loop {
            let before = maps.mapping();
            maps.read_file(b"/proc/self/maps\0")?;
            if maps.mapping() == before {
                break;
            }
        }
        // This copy's mappings without the two buffers: made after the
        // fork, they may sit where a region `fork` left out is in the
        // parent. (The others are made after the text was read.)
        let range = |b: &MmapBuf| {
            let (p, cap) = b.mapping();
            (p as u64, (p + cap) as u64)
        };
        let ours = [range(maps), range(parent)];
        let mine = || {
            procfs::lines(maps.as_slice())
                .filter_map(procfs::parse_maps_line)
                .flat_map(|m| m.outside(&ours))
        };
        let mut advice: Option<Result<AdviceSet, Errno>> = None;
        let mut swap: Option<bool> = None;
        let mut parent_advice = |start: u64| -> Result<u8, Errno> {
            let set = advice.get_or_insert_with(|| {
                smaps.read_smaps_fd(self.smaps)?;
                Ok(AdviceSet::parse(smaps.as_slice()))
            });
            match set {
                // A set that could not be kept says "every advice": not
                // an answer here.
                Ok(set) if !set.all => Ok(set.get(start)),
                Ok(_) => Err(Errno(libc::ENOMEM)),
                Err(e) => Err(*e),
            }
        };
        // Only the program's own advice on memory of its own is lifted,
        // as the parent's smaps shows it: never a driver's mapping, whose
        // pages a device may use (a fork would share them copy-on-write).
        let liftable = |bits: u8, bit: u8| -> Result<u8, Errno> {
            if bits & bit == 0 || bits & UNLIFTABLE != 0 {
                return Err(Errno(libc::ESRCH));
            }
            Ok(bits & FORK_BITS)
        };
        if missing {
            // The parent's mappings that no mapping here overlaps; both
            // lists are sorted.
            let mut here = mine().peekable();
            let before = lift.len();
            for p in procfs::lines(parent.as_slice()).filter_map(procfs::parse_maps_line) {
                while here.next_if(|m| m.end <= p.start).is_some() {}
                if here.peek().is_none_or(|m| m.start >= p.end) {
                    let bits = liftable(parent_advice(p.start)?, DONTFORK)?;
                    push(lift, (p.start, p.end), bits)?;
                }
            }
            // Fewer mappings, none of them missing: unexplained.
            if lift.len() == before {
                return Err(Errno(libc::ESRCH));
            }
        }
        for m in mine() {
            if !super::track::trackable(&m) {
                continue;
            }
            let range = (m.start, m.end);
            let mut has = |fd, which| has_pages(fd, range, which, buf);
            if has(own, Pages::Any)? {
                continue;
            }
            let real = has(theirs, Pages::Present)? || has(theirs, Pages::SwappedUntracked)?;
            if real {
                let bits = parent_advice(m.start)?;
                if bits & (WIPEONFORK | DROPPABLE) == WIPEONFORK | DROPPABLE {
                    // Only a droppable region may be saved zeroed.
                    continue;
                }
                push(lift, range, liftable(bits, WIPEONFORK)?)?;
            } else if has(theirs, Pages::SwappedTracked)?
                && *swap.get_or_insert_with(swap_configured)
            {
                let bits = parent_advice(m.start)?;
                if bits & (WIPEONFORK | DROPPABLE) == WIPEONFORK {
                    push(lift, range, liftable(bits, WIPEONFORK)?)?;
                }
            }
        }
        Ok(())
    }
}

/// What a snapshot child found about its copy ([`ParentView::verdict`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The copy holds the whole process: write it.
    Whole,
    /// The copy lacks regions the program advised `MADV_DONTFORK` or has
    /// its `MADV_WIPEONFORK` regions zeroed, all of them known: a copy made
    /// with their advice lifted ([`lift`]) would be whole.
    Lift,
    /// The copy cannot be used, and no lifting would help: the process
    /// writes its own image while the job stands still.
    Cannot,
}

/// `madvise` advice numbers (uapi `asm-generic/mman-common.h`).
const MADV_DONTFORK: usize = 10;
const MADV_DOFORK: usize = 11;
const MADV_WIPEONFORK: usize = 18;
const MADV_KEEPONFORK: usize = 19;

/// The regions whose fork advice the stopped process lifts for the `fork`
/// of its snapshot and gives back right after it (docs/signals.md,
/// "Copy-on-write snapshots and `MADV_DONTFORK`"): `(start, end, advice
/// bit)` triples of native-endian u64, 24 bytes each, in memory the
/// snapshot child inherits. The child records the advice of a region in
/// one of them, which its own `smaps` no longer shows.
#[derive(Clone, Copy, Debug, Default)]
pub struct Lifted {
    /// The triples.
    at: usize,
    len: usize,
    /// The buffer's mapping, which no image saves: (start, end).
    mapping: (u64, u64),
}

impl Lifted {
    /// The triples in `buf`.
    ///
    /// # Safety
    /// `buf` must stay mapped and unchanged while the result is used: in
    /// the snapshot child, a copy nobody frees.
    pub unsafe fn of(buf: &MmapBuf) -> Lifted {
        let (p, cap) = buf.mapping();
        Lifted {
            at: buf.as_slice().as_ptr() as usize,
            len: buf.len(),
            mapping: (p as u64, (p + cap) as u64),
        }
    }

    fn entries(&self) -> &[u8] {
        if self.at == 0 || self.len == 0 {
            return &[];
        }
        // SAFETY: `of` took these from a live buffer that its caller keeps
        // mapped and unchanged while `self` is used (its contract).
        unsafe { core::slice::from_raw_parts(self.at as *const u8, self.len) }
    }

    /// The buffer's mapping as (start, end); (0, 0) without one.
    pub fn mapping(&self) -> (u64, u64) {
        self.mapping
    }

    /// `m` in pieces, cut where a lifted region starts or ends. With its
    /// advice lifted, a region may have merged with a neighbour that has
    /// the same flags otherwise; each piece has one advice.
    pub fn cut<'a>(self, m: procfs::MapsLine<'a>) -> impl Iterator<Item = procfs::MapsLine<'a>> {
        let mut at = m.start;
        core::iter::from_fn(move || {
            if at >= m.end {
                return None;
            }
            let end = triples(self.entries())
                .flat_map(|(s, e, _)| [s, e])
                .filter(|&b| b > at && b < m.end)
                .fold(m.end, u64::min);
            let piece = procfs::MapsLine {
                start: at,
                end,
                offset: m.offset + (at - m.start),
                ..m
            };
            at = end;
            Some(piece)
        })
    }

    /// The advice lifted from the region holding `at` (0: none).
    pub fn get(&self, at: u64) -> u8 {
        triples(self.entries())
            .find(|&(s, e, _)| s <= at && at < e)
            .map_or(0, |(_, _, bits)| bits)
    }
}

fn triples(b: &[u8]) -> impl Iterator<Item = (u64, u64, u8)> + '_ {
    b.chunks_exact(24).map(|c| {
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(c.get(i * 8..i * 8 + 8).unwrap_or(&[0; 8]));
            u64::from_ne_bytes(w)
        };
        (word(0), word(1), word(2) as u8)
    })
}

fn advise(start: u64, end: u64, advice: usize) -> Result<(), Errno> {
    // SAFETY: madvise dereferences no pointer of ours; these advices only
    // change which fork children get the range and how.
    unsafe {
        raw::syscall3(
            raw::nr::MADVISE,
            start as usize,
            end.saturating_sub(start) as usize,
            advice,
        )
    }
    .map(|_| ())
}

/// Lift the advice of every region of `entries` (`MADV_DOFORK`,
/// `MADV_KEEPONFORK`), in the stopped process. On a failure the regions
/// lifted so far get theirs back and the error is returned.
pub fn lift(entries: &[u8]) -> Result<(), Errno> {
    for (i, (s, e, bits)) in triples(entries).enumerate() {
        for (bit, off) in [(DONTFORK, MADV_DOFORK), (WIPEONFORK, MADV_KEEPONFORK)] {
            if bits & bit == 0 {
                continue;
            }
            if let Err(err) = advise(s, e, off) {
                // This region's other advice too, if it was lifted.
                let _ = give_back(entries.get(..(i + 1) * 24).unwrap_or(&[]));
                return Err(err);
            }
        }
    }
    Ok(())
}

/// Give every region of `entries` its advice back (`MADV_DONTFORK`,
/// `MADV_WIPEONFORK`), in the stopped process, right after the `fork`.
/// Every region is tried; the first error is returned.
pub fn give_back(entries: &[u8]) -> Result<(), Errno> {
    let mut r = Ok(());
    for (s, e, bits) in triples(entries) {
        for (bit, on) in [(DONTFORK, MADV_DONTFORK), (WIPEONFORK, MADV_WIPEONFORK)] {
            if bits & bit != 0
                && let Err(err) = advise(s, e, on)
                && r.is_ok()
            {
                r = Err(err);
            }
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` in a child process of its own, alone: the test harness runs
    /// tests on several threads, and another test's `fork` or mappings
    /// change this process's page map and maps under `f` (a page shared
    /// with a fork child is no longer the process's own).
    fn isolated(f: fn()) {
        // SAFETY: the child runs `f` on its only thread and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            let ok = std::panic::catch_unwind(f).is_ok();
            // SAFETY: leaves the child at once.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut st = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut st, 0) }, pid);
        assert!(
            libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
            "the test failed in its own process (its message is above)"
        );
    }

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

    /// The list a parent lifts advice from: looked up by address, and
    /// regions cut where a lifted one starts or ends.
    #[test]
    fn lifted_regions_are_looked_up_and_cut_out() {
        let mut buf = MmapBuf::new();
        for v in [
            0x2000u64,
            0x4000,
            u64::from(DONTFORK),
            0x6000,
            0x7000,
            u64::from(WIPEONFORK),
        ] {
            buf.push(&v.to_ne_bytes()).unwrap();
        }
        // SAFETY: `buf` is freed only at the end, after the last use.
        let lifted = unsafe { Lifted::of(&buf) };
        assert_eq!(lifted.get(0x1fff), 0);
        assert_eq!(lifted.get(0x2000), DONTFORK);
        assert_eq!(lifted.get(0x3fff), DONTFORK);
        assert_eq!(lifted.get(0x4000), 0);
        assert_eq!(lifted.get(0x6800), WIPEONFORK);
        let m = procfs::parse_maps_line(b"1000-8000 rw-p 00000000 00:00 0 ").unwrap();
        let parts: Vec<(u64, u64)> = lifted.cut(m).map(|p| (p.start, p.end)).collect();
        assert_eq!(
            parts,
            [
                (0x1000, 0x2000),
                (0x2000, 0x4000),
                (0x4000, 0x6000),
                (0x6000, 0x7000),
                (0x7000, 0x8000)
            ]
        );
        // Nothing lifted: the mapping whole.
        let none = Lifted::default();
        assert_eq!(none.get(0x2000), 0);
        assert_eq!(none.cut(m).count(), 1);
        buf.free();
    }

    /// Both ways of asking a page map agree, on a mapping with one written
    /// page in its middle and on an untouched one.
    #[test]
    fn scanning_and_reading_the_page_map_agree() {
        isolated(scanning_and_reading_the_page_map_agree_alone);
    }

    fn scanning_and_reading_the_page_map_agree_alone() {
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
        isolated(a_fork_child_finds_the_wiped_region_alone);
    }

    fn a_fork_child_finds_the_wiped_region_alone() {
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
            let missing = advice == Some(libc::MADV_DONTFORK);
            // SAFETY: the child runs only async-signal-safe code, then _exit.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0);
            if pid == 0 {
                // 0: whole; 10 + the advice bit lifted from exactly this
                // mapping; 20: another list; 30: cannot.
                let mut lift = MmapBuf::new();
                let code = match view.verdict(missing, &mut lift) {
                    Verdict::Whole => 0,
                    Verdict::Cannot => 30,
                    Verdict::Lift => {
                        let mine = (p as u64, p as u64 + len as u64);
                        let mut all = triples(lift.as_slice());
                        match (all.next(), all.next()) {
                            (Some((s, e, bit)), None) if (s, e) == mine => 10 + i32::from(bit),
                            _ => 20,
                        }
                    }
                };
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
            Some(10 + i32::from(WIPEONFORK))
        );
        // Missing from the child: lifted whether written or not.
        assert_eq!(
            child_says(private, Some(libc::MADV_DONTFORK), true),
            Some(10 + i32::from(DONTFORK))
        );
        assert_eq!(
            child_says(private, Some(libc::MADV_DONTFORK), false),
            Some(10 + i32::from(DONTFORK))
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
