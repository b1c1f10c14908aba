//! The image writer: runs on the checkpoint thread, inside its stop handler,
//! while every other thread is parked. **Async-signal-safe** throughout:
//! raw syscalls, [`MmapBuf`] scratch memory, `core::fmt` into that memory.
//!
//! Output: `proc-<pid>.img` (header + page-aligned page runs, written
//! straight from the process's memory) and `proc-<pid>.json` (the manifest,
//! see [`crate::image::manifest::ProcessManifest`]), both fsynced.
//!
//! Which pages are saved (from `/proc/self/pagemap`):
//! - private anonymous memory (heap, stacks, anonymous mmaps): present or
//!   swapped pages; never-touched pages are not written;
//! - shared anonymous memory: present pages;
//! - private file mappings: only pages that were written (copy-on-write,
//!   no longer backed by the file); the file is mapped again on restore;
//! - shared file mappings: nothing (the data is in the file);
//! - mappings of deleted or replaced files: every page, as anonymous memory;
//! - `[vvar]`, `[vvar_vclock]`, `[vsyscall]`: skipped; `[vdso]`: identity only.

use core::fmt::Write as _;

use crate::image::checksum::{self, Crc32c};
use crate::image::compress::FrameWriter;
use crate::image::format;
use crate::objects::posix_timer;
use crate::preload::fork_advice::{self, AdviceSet};
use crate::preload::stop::{self, NSLOTS, SLOTS};
use crate::preload::track::PageClass;
use crate::signal_safe::buf::{MmapBuf, StackBuf};
use crate::signal_safe::deferred::DeferredWrites;
use crate::signal_safe::procfs::{self, MapsLine};
use crate::signal_safe::raw::{self, Errno};
use core::sync::atomic::Ordering;

const PAGE: u64 = format::PAGE_SIZE;
const PM_PRESENT: u64 = 1 << 63;
const PM_SWAP: u64 = 1 << 62;
const PM_FILE: u64 = 1 << 61;

/// Steps, for error messages.
const STEPS: [&str; 10] = [
    "",
    "creating the image file",
    "reading /proc/self",
    "writing memory",
    "writing the manifest",
    "syncing to disk",
    "reading pagemap",
    "describing files",
    "allocating scratch memory",
    "reading the POSIX timers (/proc/self/timers)",
];

/// Human name of a failing step.
pub fn step_name(step: u64) -> &'static str {
    STEPS.get(step as usize).copied().unwrap_or("checkpointing")
}

type Fail = (u64, Errno);

fn at(step: u64) -> impl Fn(Errno) -> Fail {
    move |e| (step, e)
}

struct Scratch {
    maps: MmapBuf,
    json: MmapBuf,
    tmp: MmapBuf,
}

impl Scratch {
    fn free(&mut self) {
        self.maps.free();
        self.json.free();
        self.tmp.free();
    }
}

fn path_in(dir: &[u8], name: core::fmt::Arguments<'_>) -> StackBuf<4096> {
    let mut p = StackBuf::<4096>::new();
    p.push(dir);
    p.push(b"/");
    let _ = p.write_fmt(name);
    p
}

/// Set (in a snapshot child) once the shared part of the image is written.
pub static PHASE_SENT: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);

/// In a snapshot child that defers its private memory: the pipe whose
/// byte (or end of file) says the job was released; -1 otherwise.
pub static GO_FD: core::sync::atomic::AtomicI32 = core::sync::atomic::AtomicI32::new(-1);

/// What must be read in the process itself before a snapshot child is
/// forked (a child has its own pid, no interval timers and no pending
/// signals). **Async-signal-safe.**
#[derive(Clone, Copy, Debug, Default)]
pub struct Pre {
    /// Pid (namespace view).
    pub pid: i32,
    /// Tid of the leader thread.
    pub tid: i32,
    /// Parent pid.
    pub ppid: i32,
    /// Process group.
    pub pgid: i32,
    /// Session.
    pub sid: i32,
    /// Process-wide pending signals.
    pub shared_pending: u64,
    /// PMIx fences the process is waiting in (`preload::pmix_fence`).
    pub pmix_fences: u32,
    /// (interval µs, value µs) of ITIMER_REAL, VIRTUAL, PROF.
    pub itimers: [(u64, u64); 3],
    /// Compress the private memory a snapshot child writes once the job
    /// runs again ([`crate::coord::WRITE_COMPRESS`]; ignored when the
    /// process writes in place, in the pause).
    pub compress: bool,
    /// In a snapshot child forked with the program's fork advice lifted:
    /// the regions and their advice.
    pub lifted: fork_advice::Lifted,
}

impl Pre {
    /// Read the values now, in the process being checkpointed.
    pub fn now() -> Self {
        // SAFETY: getppid/getpgid(0)/getsid(0) take no pointers.
        let (ppid, pgid, sid) = unsafe {
            (
                raw::syscall3(raw::nr::GETPPID, 0, 0, 0).unwrap_or(0) as i32,
                raw::syscall3(raw::nr::GETPGID, 0, 0, 0).unwrap_or(0) as i32,
                raw::syscall3(raw::nr::GETSID, 0, 0, 0).unwrap_or(0) as i32,
            )
        };
        Pre {
            pid: raw::getpid(),
            tid: raw::gettid(),
            ppid,
            pgid,
            sid,
            shared_pending: 0,
            pmix_fences: super::pmix_fence::waiting(),
            itimers: [raw::getitimer(0), raw::getitimer(1), raw::getitimer(2)],
            compress: false,
            lifted: fork_advice::Lifted::default(),
        }
        .with_pending()
    }

    /// The pending signals, read between two readings of the POSIX
    /// timers (`objects::posix_timer::capture_self`): the process's, and
    /// again those of each thread a timer signals (its own record was
    /// taken when it stopped; a timer may have fired since).
    fn with_pending(mut self) -> Self {
        posix_timer::capture_self(|timers| {
            self.shared_pending = stop::pending_mask(b"/proc/self/status\0", b"ShdPnd");
            for t in timers
                .iter()
                .filter(|t| t.notify & posix_timer::SIGEV_THREAD_ID != 0)
            {
                stop::reread_pending(t.target);
            }
        });
        self
    }
}

/// Make the files written by [`write_image`] durable. Called after the
/// program's threads were released, so that the program does not stand
/// still while the disk catches up.
pub fn sync_image(dir: &[u8], pid: i32) -> Result<(), Fail> {
    for name in [
        format_args!("proc-{pid}.img"),
        format_args!("proc-{pid}.json"),
    ] {
        let mut p = path_in(dir, name);
        let fd = raw::open(p.as_cstr(), libc::O_RDONLY | libc::O_CLOEXEC, 0).map_err(at(5))?;
        let r = raw::fsync(fd).map_err(at(5));
        raw::close(fd);
        r?;
    }
    Ok(())
}

/// Once the image is durable (after [`sync_image`], and after saying so: it
/// is not on the way to durability), drop it from the page cache: it is clean
/// now, and leaves instead of pushing out the job's own cached files.
pub fn drop_image_cache(dir: &[u8], pid: i32) {
    for name in [
        format_args!("proc-{pid}.img"),
        format_args!("proc-{pid}.json"),
    ] {
        let mut p = path_in(dir, name);
        if let Ok(fd) = raw::open(p.as_cstr(), libc::O_RDONLY | libc::O_CLOEXEC, 0) {
            raw::drop_cached(fd);
            raw::close(fd);
        }
    }
}

/// Write the image of this process into `dir` (not yet fsynced: see
/// [`sync_image`]). Returns the bytes written. Runs either in the stopped
/// process or in a copy-on-write snapshot child of it; `pre` holds what only
/// the process itself can tell. When `phase_fd` >= 0, one byte `S` is
/// written there once everything that other processes can change (pipe
/// contents, shared memory) is saved, so that the job may be released
/// while private memory is still being written.
pub fn write_image(dir: &[u8], conn_fd: i32, pre: &Pre, phase_fd: i32) -> Result<u64, Fail> {
    let mut s = Scratch {
        maps: MmapBuf::new(),
        json: MmapBuf::new(),
        tmp: MmapBuf::new(),
    };
    // No kernel writes into the memory being saved meanwhile.
    let rseq = super::stop::RseqPause::begin();
    let r = write_image_inner(dir, conn_fd, pre, phase_fd, &mut s);
    drop(rseq);
    s.free();
    r
}

fn write_image_inner(
    dir: &[u8],
    conn_fd: i32,
    pre: &Pre,
    phase_fd: i32,
    s: &mut Scratch,
) -> Result<u64, Fail> {
    let pid = pre.pid;
    // Scratch space first, so that its mappings are visible (and skipped) in maps.
    s.json.reserve(1 << 20).map_err(at(8))?;
    s.tmp.reserve(1 << 16).map_err(at(8))?;
    s.maps.reserve(1 << 20).map_err(at(8))?;
    loop {
        let cap_before = s.maps.mapping();
        s.maps.read_file(b"/proc/self/maps\0").map_err(at(2))?;
        if s.maps.mapping() == cap_before {
            break;
        }
        // The buffer moved while growing: read again so maps shows where it is now.
    }

    let mut img_path = path_in(dir, format_args!("proc-{pid}.img"));
    let img = raw::open(
        img_path.as_cstr(),
        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
        0o600,
    )
    .map_err(at(1))?;
    let pagemap = raw::open(b"/proc/self/pagemap\0", libc::O_RDONLY | libc::O_CLOEXEC, 0);
    let r = match pagemap {
        Ok(pm) => {
            let r = write_parts(
                dir,
                &Fds {
                    conn: conn_fd,
                    img,
                    pagemap: pm,
                    phase: phase_fd,
                },
                pre,
                s,
            );
            raw::close(pm);
            r
        }
        Err(e) => Err((6, e)),
    };
    raw::close(img);
    r
}

/// Descriptors the writer uses (never saved as the program's).
struct Fds {
    conn: i32,
    img: i32,
    pagemap: i32,
    phase: i32,
}

fn write_parts(dir: &[u8], fds: &Fds, pre: &Pre, s: &mut Scratch) -> Result<u64, Fail> {
    let (img, pagemap, pid) = (fds.img, fds.pagemap, pre.pid);
    let mut data_off: u64 = format::HEADER_LEN;
    raw::lseek(img, data_off as i64, libc::SEEK_SET).map_err(at(3))?;

    // libckpt's own buffers, which no image saves. Not told apart by the
    // mappings they start: the kernel may have merged one with a mapping of
    // the program next to it, and that line of maps holds both.
    let [t0, t1, t2, t3] = super::track::scratch_ranges();
    let [c0, c1] = super::page_crcs::scratch_ranges();
    let range = |(p, len): (usize, usize)| (p as u64, (p + len) as u64);
    let own = [
        range(s.maps.mapping()),
        range(s.json.mapping()),
        range(s.tmp.mapping()),
        t0,
        t1,
        t2,
        t3,
        c0,
        c1,
        pre.lifted.mapping(),
    ];
    // Page checksums of the base generation (for the pages this image
    // inherits) and the table to record this image's in.
    let (mut crcs_in, mut crcs_out) = super::page_crcs::current();
    // Incremental image: unchanged pages of private anonymous memory are
    // referred to in the base generation instead of written again.
    let inc = super::track::incremental();
    let mut inherited_total = 0u64;
    let j = &mut s.json;
    j.clear();
    let _ = write!(
        j,
        "{{\"format\":\"ckpt-process\",\"version\":[{},{}],\"pid\":{pid},",
        format::FORMAT_MAJOR,
        format::FORMAT_MINOR
    );
    let (ppid, pgid, sid) = (pre.ppid, pre.pgid, pre.sid);
    // SAFETY: getuid (102) takes no arguments.
    let uid = unsafe { raw::syscall3(102, 0, 0, 0) }.unwrap_or(0);
    let _ = write!(
        j,
        "\"ppid\":{ppid},\"pgid\":{pgid},\"sid\":{sid},\"uid\":{uid},\"exe\":"
    );
    {
        let mut exe = [0u8; 4096];
        let n = raw::readlink(b"/proc/self/exe\0", &mut exe).map_err(at(2))?;
        j.push_json_str(exe.get(..n).unwrap_or(&[]))
            .map_err(at(8))?;
    }
    let _ = write!(
        j,
        ",\"realtime_ns\":{},\"monotonic_ns\":{},\"boottime_ns\":{},",
        raw::clock_ns(libc::CLOCK_REALTIME),
        raw::clock_ns(libc::CLOCK_MONOTONIC),
        raw::clock_ns(libc::CLOCK_BOOTTIME)
    );
    write_cpu(j);

    // mm fields from /proc/self/stat
    s.tmp.read_file(b"/proc/self/stat\0").map_err(at(2))?;
    let st = s.tmp.as_slice();
    let f = |n| procfs::stat_field(st, n).unwrap_or(0);
    // The controlling terminal (tty_nr, a device number; 0: none).
    let _ = write!(j, "\"ctty\":{},", f(7));
    let (start_code, end_code, start_stack) = (f(26), f(27), f(28));
    let (start_data, end_data, start_brk, arg_start, arg_end, env_start, env_end) =
        (f(45), f(46), f(47), f(48), f(49), f(50), f(51));
    let brk = raw::current_brk();

    // vdso identity is emitted after scanning maps; remember where it is.
    let mut vvar = 0u64;
    let mut vdso = 0u64;
    let mut vdso_len = 0u64;

    // The checkpoint thread's own stack below its signal frame is in use by
    // this very writer (it changes while we write it) and is dead once the
    // thread resumes from the frame: do not save it.
    let own_uc = own_ucontext(pre.tid);
    let own_floor = own_uc.saturating_sub(8) & !(PAGE - 1);

    // Regions with transparent huge pages advised (VmFlags "hg" in smaps),
    // so that the restore advises them again: private regions only. Each is
    // emitted as `"hugepage":false` and its offset kept here; smaps is read
    // once the memory is written and its writeback started (it walks every
    // page table: that time overlaps the disk's), and `true ` written over
    // the regions it names.
    let mut advice_at = AdviceAt::new();

    // Descriptors first: pipe contents can change as soon as the job runs again.
    // Bytes queued in sockets are peeked now and, in a snapshot child, written
    // once the job runs again.
    let mut queued = DeferredWrites::new(img, fds.phase >= 0);
    let mut frames: Option<(FrameWriter, u64)> = None;
    write_fds(j, &mut s.tmp, fds, &mut queued, &mut data_off)?;
    // Pipe data went in with explicit offsets: continue after it.
    raw::lseek(img, data_off as i64, libc::SEEK_SET).map_err(at(3))?;

    let _ = write!(j, "\"regions\":[");
    // Runs of a region go out together (an incremental image is mostly
    // runs of one page: one writev per 64 of them, not one write each).
    let mut gather = Gather::new(img, fds.phase >= 0);
    // Written while the job stands still: a private region that was only
    // read maps the shared zero page, which a snapshot's `fork` does not
    // copy for a region never written either (a JVM has gigabytes of it).
    // Left out here too (restored as zero, which it is); an incremental
    // image leaves it out through `track` already.
    let mut zero = super::track::RangeSet::new();
    let mut zero_vec = MmapBuf::new();
    let mut first = true;
    let mut total: u64 = 0;
    let maps = s.maps.as_slice();
    // Two passes: shared memory first (other processes may change it once
    // released), then private memory.
    for shared_pass in [true, false] {
        if !shared_pass && fds.phase >= 0 {
            PHASE_SENT.store(1, Ordering::Release);
            let _ = raw::write(fds.phase, b"S");
            let go = GO_FD.swap(-1, Ordering::AcqRel);
            if go >= 0 {
                let mut b = [0u8; 1];
                while let Err(Errno(libc::EINTR)) = raw::read_into(go, &mut b) {}
                raw::close(go);
            }
            queued.flush().map_err(at(3))?;
            if pre.compress {
                // From here on the data goes out as zstd frames; what is
                // before (descriptor data, shared memory) stays as it is.
                // Without the writer's memory the image is stored plain.
                frames = FrameWriter::new(img).ok().map(|w| (w, data_off));
            }
        }
        let lifted = pre.lifted;
        let parts = procfs::lines(maps)
            .filter_map(procfs::parse_maps_line)
            .flat_map(|m| m.outside(&own))
            .flat_map(move |m| lifted.cut(m));
        for m in parts {
            match m.path {
                b"[vvar]" => {
                    vvar = m.start;
                    continue;
                }
                b"[vvar_vclock]" | b"[vsyscall]" => continue,
                b"[vdso]" => {
                    vdso = m.start;
                    vdso_len = m.end - m.start;
                    continue;
                }
                _ => {}
            }
            let region = classify(&m);
            let (kind, save) = region;
            if kind.starts_with("shared") != shared_pass {
                continue;
            }
            let mut crc = Crc32c::new();
            let reg_off = data_off;
            let mut runs = StackRuns::new();
            let mut inherited = StackRuns::new();
            let tracked_kind = kind == "anon" && save == Save::Resident;
            let region_inc = inc.filter(|_| tracked_kind);
            // Page by page (registers recorded or taken from the base's
            // table) where a table is in use, else in one stream.
            let by_page = tracked_kind && (crcs_in.is_some() || crcs_out.is_some());
            let mut cursors = super::track::Cursors::default();
            let zero_here = fds.phase < 0
                && tracked_kind
                && region_inc.is_none()
                && save != Save::Nothing
                && super::track::zero_pages(pagemap, (m.start, m.end), &mut zero_vec, &mut zero)
                    .is_ok();
            let mut zero_cursor = 0usize;
            if save != Save::Nothing {
                let need_read = m.prot & libc::PROT_READ as u32 == 0;
                let mut made_readable = false;
                let mut page = 0u64;
                let npages = (m.end - m.start) / PAGE;
                let mut pm = [0u64; 512];
                while page < npages {
                    let chunk = core::cmp::min(512, npages - page);
                    let off = ((m.start / PAGE) + page) * 8;
                    let want = (chunk * 8) as usize;
                    // SAFETY: pm is valid for 4096 bytes >= want.
                    let got = unsafe {
                        raw::syscall6(
                            raw::nr::PREAD64,
                            pagemap as usize,
                            pm.as_mut_ptr() as usize,
                            want,
                            off as usize,
                            0,
                            0,
                        )
                    }
                    .map_err(at(6))?;
                    if got < want {
                        return Err((6, Errno(libc::EIO)));
                    }
                    let mut class = |i: u64| -> PageClass {
                        let e = pm.get(i as usize).copied().unwrap_or(0);
                        let addr = m.start + (page + i) * PAGE;
                        let below_own = m.start <= own_uc && own_uc < m.end && addr < own_floor;
                        if below_own
                            || !wanted(save, e)
                            || (zero_here && zero.contains(addr, &mut zero_cursor))
                        {
                            PageClass::Skip
                        } else if let Some(ic) = region_inc {
                            ic.classify(addr, &mut cursors)
                        } else {
                            PageClass::Own
                        }
                    };
                    let mut i = 0u64;
                    while i < chunk {
                        let c = class(i);
                        if c == PageClass::Skip {
                            i += 1;
                            continue;
                        }
                        let run_start = i;
                        i += 1;
                        while i < chunk && class(i) == c {
                            i += 1;
                        }
                        let first_page = page + run_start;
                        let count = i - run_start;
                        if need_read && !made_readable {
                            // SAFETY: the region is ours, every other thread is parked, and the
                            // protection is put back below before anyone runs again.
                            unsafe {
                                raw::mprotect(
                                    m.start as usize,
                                    (m.end - m.start) as usize,
                                    (m.prot | libc::PROT_READ as u32) as i32,
                                )
                            }
                            .map_err(at(3))?;
                            made_readable = true;
                        }
                        let addr = m.start + first_page * PAGE;
                        let len = count * PAGE;
                        if by_page {
                            for p in 0..count {
                                let at = addr + p * PAGE;
                                let known = match (c, crcs_in.as_mut()) {
                                    (PageClass::Inherit, Some(t)) => t.lookup(at / PAGE),
                                    _ => None,
                                };
                                let reg = known.unwrap_or_else(|| {
                                    // SAFETY: the page is mapped and readable; nothing writes
                                    // it while threads are parked.
                                    checksum::page_register(unsafe {
                                        &*(at as *const [u8; checksum::PAGE_BYTES])
                                    })
                                });
                                crc.append_page(reg);
                                if let Some(w) = crcs_out.as_mut() {
                                    w.push(at / PAGE, reg);
                                }
                            }
                        } else {
                            // SAFETY: the range is mapped and readable; nothing writes it while
                            // threads are parked.
                            unsafe { crc.update_raw(addr as usize, len as usize) };
                        }
                        if c == PageClass::Inherit {
                            inherited.push(first_page, count);
                            inherited_total += len;
                            continue;
                        }
                        match frames.as_mut() {
                            // SAFETY: as for the checksum above.
                            Some((w, _)) => unsafe { w.push(addr as usize, len as usize) },
                            // SAFETY: as for the checksum above, until the
                            // flush at the end of the region.
                            None => unsafe { gather.push(addr, len) },
                        }
                        .map_err(at(3))?;
                        runs.push(first_page, count);
                        data_off += len;
                    }
                    page += chunk;
                }
                // Before the region's protection is put back.
                gather.flush().map_err(at(3))?;
                if made_readable {
                    // SAFETY: restores the original protection of our own region.
                    unsafe {
                        raw::mprotect(m.start as usize, (m.end - m.start) as usize, m.prot as i32)
                    }
                    .map_err(at(3))?;
                }
            }
            total += data_off - reg_off;
            if !first {
                j.push(b",").map_err(at(8))?;
            }
            first = false;
            let flag_at = emit_region(
                j,
                &m,
                kind,
                reg_off,
                (&runs, &inherited),
                crc.finish(),
                start_stack,
            )?;
            // Where the advice goes: huge pages for private regions only.
            let (huge, fork) = flag_at;
            let huge = if shared_pass { None } else { Some(huge) };
            advice_at.push(m.start, huge, fork);
            runs.free();
            inherited.free();
        }
    }
    zero.free();
    zero_vec.free();
    let _ = write!(j, "],");
    if let Some(w) = crcs_out {
        w.finish();
    }
    // The memory is written: in a snapshot child, let the disk start on it
    // while smaps is read. Not while the job stands still: starting
    // writeback can wait for the device's queue, and the fsync comes after
    // the job runs again anyway.
    if fds.phase >= 0 {
        raw::start_writeback(img);
    }
    {
        // Without it the restart would lose the advice: fail instead.
        if advice_at.overflow() {
            return Err((8, Errno(libc::ENOMEM)));
        }
        let advice = AdviceSet::read(&mut s.tmp).map_err(at(2))?;
        for (start, huge_at, fork_at) in advice_at.iter() {
            // A region whose advice was lifted for this snapshot's fork
            // has it back in the process: its own smaps lacks it.
            let bits = advice.get(start) | pre.lifted.get(start);
            if let (true, Some(at)) = (bits & fork_advice::HUGEPAGE != 0, huge_at) {
                // Same length as `false`: JSON allows the space.
                j.overwrite(at, b"true ");
            }
            let fork = bits & fork_advice::FORK_BITS;
            if fork != 0 {
                j.overwrite(fork_at, &[b'0' + fork]);
            }
        }
    }
    advice_at.free();
    if let Some(ic) = inc.filter(|_| inherited_total > 0) {
        let _ = write!(j, "\"base\":{},", ic.base);
    }

    // vdso
    let vcrc = if vdso != 0 {
        let mut c = Crc32c::new();
        // SAFETY: the vdso is mapped readable for the whole life of the process.
        unsafe { c.update_raw(vdso as usize, vdso_len as usize) };
        c.finish()
    } else {
        0
    };
    let _ = write!(
        j,
        "\"vdso\":{{\"vvar\":{vvar},\"vdso\":{vdso},\"vdso_len\":{vdso_len},\"crc\":{vcrc},\"symbols\":["
    );
    if vdso != 0 {
        // SAFETY: the vdso is mapped readable for the whole life of the process.
        let elf = unsafe { core::slice::from_raw_parts(vdso as *const u8, vdso_len as usize) };
        let mut n = 0usize;
        let _ = crate::objects::vdso::for_each_function(elf, |name, off| {
            // Names are plain identifiers (checked by the parser).
            if let (Ok(name), true) = (
                core::str::from_utf8(name),
                n < crate::objects::vdso::MAX_SYMBOLS,
            ) {
                let _ = write!(j, "{}[\"{name}\",{off}]", if n == 0 { "" } else { "," });
                n += 1;
            }
        });
    }
    let _ = write!(j, "]}},");

    // mm
    let _ = write!(
        j,
        "\"mm\":{{\"start_code\":{start_code},\"end_code\":{end_code},\"start_data\":{start_data},\"end_data\":{end_data},\"start_brk\":{start_brk},\"brk\":{brk},\"start_stack\":{start_stack},\"arg_start\":{arg_start},\"arg_end\":{arg_end},\"env_start\":{env_start},\"env_end\":{env_end},\"auxv\":["
    );
    s.tmp.read_file(b"/proc/self/auxv\0").map_err(at(2))?;
    {
        let a = s.tmp.as_slice();
        let mut firstw = true;
        for w in a.chunks_exact(8) {
            let mut b = [0u8; 8];
            b.copy_from_slice(w);
            let _ = write!(
                j,
                "{}{}",
                if firstw { "" } else { "," },
                u64::from_le_bytes(b)
            );
            firstw = false;
        }
    }
    let _ = write!(j, "]}},");

    // hooks
    let _ = write!(
        j,
        "\"hooks\":{{\"restore_info\":{},\"finish_args\":{},\"finish\":{},\"finish_args_size\":{}}},",
        core::ptr::addr_of!(super::leader::CKPT_RESTORE_INFO) as u64,
        core::ptr::addr_of!(super::finish::CKPT_FINISH_ARGS) as u64,
        super::finish::ckpt_restore_finish as *const () as usize as u64,
        core::mem::size_of::<super::finish::FinishArgs>()
    );

    // threads, leader first
    let _ = write!(j, "\"threads\":[");
    let n = (NSLOTS.load(Ordering::Acquire) as usize).min(stop::MAX_THREADS);
    let mut firstt = true;
    for pass in 0..2 {
        for sl in SLOTS.iter().take(n) {
            let tid = sl.tid.load(Ordering::Acquire);
            if (pass == 0) != (tid == pid) {
                continue;
            }
            let _ = write!(
                j,
                "{}{{\"tid\":{tid},\"ucontext\":{},\"fs_base\":{},\"gs_base\":{},\"rseq\":{},\"rseq_sig\":{},\"robust_head\":{},\"robust_len\":{},\"clear_tid\":{},\"scratch_sp\":{},\"pending\":{},",
                if firstt { "" } else { "," },
                sl.uc.load(Ordering::Relaxed),
                sl.fs.load(Ordering::Relaxed),
                sl.gs.load(Ordering::Relaxed),
                sl.rseq.load(Ordering::Relaxed),
                stop::RSEQ_SIG,
                sl.robust_head.load(Ordering::Relaxed),
                sl.robust_len.load(Ordering::Relaxed),
                sl.clear_tid.load(Ordering::Relaxed),
                sl.sp.load(Ordering::Relaxed),
                sl.pending.load(Ordering::Relaxed),
            );
            let uc = sl.uc.load(Ordering::Relaxed);
            if uc != 0 {
                let at = uc as usize
                    + core::mem::offset_of!(libc::ucontext_t, uc_mcontext.gregs)
                    + libc::REG_RIP as usize * 8;
                // SAFETY: uc is the signal frame the kernel wrote on the
                // stopped thread's stack (mapped, 8-byte aligned).
                let rip = unsafe { core::ptr::read(at as *const u64) };
                let _ = write!(j, "\"rip\":{rip},");
            }
            let _ = write!(j, "\"name\":");
            let mut name = [0u8; 16];
            name[..8].copy_from_slice(&sl.name[0].load(Ordering::Relaxed).to_ne_bytes());
            name[8..].copy_from_slice(&sl.name[1].load(Ordering::Relaxed).to_ne_bytes());
            let len = name.iter().position(|&c| c == 0).unwrap_or(16);
            j.push_json_str(name.get(..len).unwrap_or(&[]))
                .map_err(at(8))?;
            let _ = write!(j, "}}");
            firstt = false;
        }
    }
    let _ = write!(j, "],");

    write_signals(j);
    let _ = write!(j, "\"shared_pending\":{},", pre.shared_pending);
    if pre.pmix_fences > 0 {
        let _ = write!(j, "\"pmix_fences\":{},", pre.pmix_fences);
    }

    // cwd, umask, rlimits, itimers
    let _ = write!(j, "\"cwd\":");
    {
        let mut cwd = [0u8; 4096];
        let n = raw::readlink(b"/proc/self/cwd\0", &mut cwd).map_err(at(2))?;
        j.push_json_str(cwd.get(..n).unwrap_or(&[]))
            .map_err(at(8))?;
    }
    s.tmp.read_file(b"/proc/self/status\0").map_err(at(2))?;
    let umask = procfs::status_value(s.tmp.as_slice(), b"Umask")
        .and_then(procfs::oct)
        .unwrap_or(0o022);
    let _ = write!(j, ",\"umask\":{umask},\"rlimits\":[");
    for r in 0..16u32 {
        let (cur, max) = raw::getrlimit(r).unwrap_or((u64::MAX, u64::MAX));
        let _ = write!(j, "{}[{r},{cur},{max}]", if r == 0 { "" } else { "," });
    }
    let _ = write!(j, "],\"itimers\":[");
    let mut firsti = true;
    for which in 0..3 {
        let (iv, val) = pre.itimers.get(which).copied().unwrap_or((0, 0));
        if val != 0 {
            let _ = write!(j, "{}[{which},{iv},{val}]", if firsti { "" } else { "," });
            firsti = false;
        }
    }
    let _ = write!(j, "],\"posix_timers\":[");
    if posix_timer::SAVED.failed.load(Ordering::Acquire) {
        return Err((9, Errno(libc::E2BIG)));
    }
    for (i, t) in posix_timer::SAVED.timers().iter().enumerate() {
        let _ = write!(j, "{}", if i == 0 { "" } else { "," });
        let _ = t.write_json(j);
    }
    queued.flush().map_err(at(3))?;
    // The header, and the file's size: the data as it is, or the part
    // before the frames, the frames and their table.
    let (size, h) = match frames.as_mut() {
        None => (data_off, format::encode(data_off - format::HEADER_LEN)),
        Some((w, from)) => {
            let z = w.finish(*from).map_err(at(3))?;
            let size = *from + w.written;
            (
                size,
                format::encode_compressed(size - format::HEADER_LEN, &z),
            )
        }
    };
    drop(frames);
    let _ = writeln!(
        j,
        "],\"image\":{{\"file\":\"proc-{pid}.img\",\"size\":{size}}}}}"
    );
    if j.overflow {
        return Err((8, Errno(libc::ENOMEM)));
    }

    // header, then durability
    raw::pwrite(img, &h, 0).map_err(at(3))?;
    // Pipe data is padded to whole pages: make the file as long as the header says.
    // SAFETY: ftruncate (77) of our own image file.
    unsafe { raw::syscall3(77, img as usize, size as usize, 0) }.map_err(at(3))?;
    let mut jp = path_in(dir, format_args!("proc-{pid}.json"));
    let jfd = raw::open(
        jp.as_cstr(),
        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
        0o600,
    )
    .map_err(at(4))?;
    let w = raw::write_all(jfd, j.as_slice()).map_err(at(4));
    raw::close(jfd);
    w?;
    let _ = total;
    Ok(size + j.len() as u64)
}

/// The signal frame of thread `me` (0 if it is not stopped).
pub fn own_ucontext(me: i32) -> u64 {
    let n = (NSLOTS.load(Ordering::Acquire) as usize).min(stop::MAX_THREADS);
    SLOTS
        .iter()
        .take(n)
        .find(|s| s.tid.load(Ordering::Acquire) == me)
        .map_or(0, |s| s.uc.load(Ordering::Acquire))
}

/// Memory runs gathered for one `writev(2)` to the image, in file order.
struct Gather {
    fd: i32,
    iov: [libc::iovec; Gather::MAX],
    n: usize,
    bytes: u64,
    /// Start writeback every [`raw::WRITEBACK_EVERY`] bytes written (a
    /// snapshot child only), and bytes written since the last start.
    kick: bool,
    since_kick: u64,
}

impl Gather {
    /// Runs per `writev` at most.
    const MAX: usize = 64;
    /// Bytes per `writev` at most (a longer run goes alone). Measured:
    /// one 64 MiB `writev` to ext4 stalled for 100–170 ms in 3 checkpoints
    /// of 16; 2 MiB writes never did (docs/image-format.md, "Writing
    /// private memory").
    const MAX_BYTES: u64 = 2 << 20;

    /// `kick`: start writeback as the image grows, so that the disk works
    /// while the writer goes on reading page maps, checksumming and
    /// copying; only where the job runs meanwhile (a snapshot child), since
    /// starting writeback can wait for the device's queue.
    fn new(fd: i32, kick: bool) -> Gather {
        Gather {
            fd,
            iov: [libc::iovec {
                iov_base: core::ptr::null_mut(),
                iov_len: 0,
            }; Gather::MAX],
            n: 0,
            bytes: 0,
            kick,
            since_kick: 0,
        }
    }

    /// Append `len` bytes at `addr`, written by the next flush (at the
    /// latest when the list is full).
    ///
    /// # Safety
    /// The range must stay mapped, readable and unchanged until [`Gather::flush`].
    unsafe fn push(&mut self, addr: u64, len: u64) -> Result<(), Errno> {
        if self.n == Gather::MAX || (self.n > 0 && self.bytes + len > Gather::MAX_BYTES) {
            self.flush()?;
        }
        if let Some(v) = self.iov.get_mut(self.n) {
            *v = libc::iovec {
                iov_base: addr as *mut core::ffi::c_void,
                iov_len: len as usize,
            };
            self.n += 1;
            self.bytes += len;
        }
        Ok(())
    }

    /// Write everything gathered, retrying short writes and EINTR.
    fn flush(&mut self) -> Result<(), Errno> {
        // The list is empty afterwards, whatever happens.
        let n = core::mem::take(&mut self.n);
        self.since_kick += core::mem::take(&mut self.bytes);
        let mut i = 0usize;
        while i < n {
            let rest = self.iov.get(i..n).unwrap_or(&[]);
            // SAFETY: writev (20) reads `rest.len()` iovecs, each naming a
            // mapped readable range (the contract of `push`).
            let r = unsafe {
                raw::syscall3(
                    raw::nr::WRITEV,
                    self.fd as usize,
                    rest.as_ptr() as usize,
                    rest.len(),
                )
            };
            let mut done = match r {
                Ok(0) => return Err(Errno(libc::EIO)),
                Ok(d) => d,
                Err(Errno(libc::EINTR)) => continue,
                Err(e) => return Err(e),
            };
            // Skip what was written; a partly written iovec keeps its rest.
            while done > 0 {
                let Some(v) = self.iov.get_mut(i) else { break };
                if done >= v.iov_len {
                    done -= v.iov_len;
                    i += 1;
                } else {
                    v.iov_base = (v.iov_base as usize + done) as *mut core::ffi::c_void;
                    v.iov_len -= done;
                    done = 0;
                }
            }
        }
        if self.kick && self.since_kick >= raw::WRITEBACK_EVERY {
            self.since_kick = 0;
            raw::start_writeback(self.fd);
        }
        Ok(())
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Save {
    Nothing,
    /// Present or swapped pages.
    Resident,
    /// Pages no longer backed by the file (written, COW).
    Dirty,
    /// Every page (deleted files).
    All,
}

fn wanted(save: Save, e: u64) -> bool {
    match save {
        Save::Nothing => false,
        Save::Resident => e & (PM_PRESENT | PM_SWAP) != 0,
        Save::Dirty => (e & PM_PRESENT != 0 && e & PM_FILE == 0) || e & PM_SWAP != 0,
        Save::All => true,
    }
}

fn is_deleted(path: &[u8]) -> bool {
    path.ends_with(b" (deleted)")
}

/// Directories of the process's PMIx server (`PMIX_SERVER_TMPDIR`,
/// `PMIX_DSTORE_*_BASE_PATH` of its environment, each ending in `/`),
/// NUL-separated: written once by the constructor ([`note_server_dirs`]),
/// read by the capture.
static mut SERVER_DIRS: [u8; 2048] = [0; 2048];

/// Constructor (normal context): remembers where the process's PMIx server
/// keeps the files its clients map (its data store). Such a mapping is
/// saved as memory, every page, like a deleted file's: after a restart the
/// server, and its files, are not there any more (a rank of `srun
/// --mpi=pmix` resumed on other nodes talks to ckpt's stand-in, docs/mpi.md).
pub fn note_server_dirs() {
    // Only Slurm's server (a rank of `srun --mpi=pmix`): an `mpirun` of the
    // job is a PMIx server too, and its files are the job's own.
    if !std::env::var("PMIX_NAMESPACE").is_ok_and(|n| n.starts_with("slurm.pmix.")) {
        return;
    }
    let mut at = 0usize;
    // SAFETY: the constructor runs before any other thread of ours exists
    // and before any stop signal can be handled; nothing writes it after.
    let buf = unsafe { &mut *core::ptr::addr_of_mut!(SERVER_DIRS) };
    for key in [
        "PMIX_SERVER_TMPDIR",
        "PMIX_DSTORE_21_BASE_PATH",
        "PMIX_DSTORE_ESH_BASE_PATH",
    ] {
        let Some(v) = std::env::var_os(key) else {
            continue;
        };
        let v = v.as_encoded_bytes();
        if v.first() != Some(&b'/') || v.len() < 2 {
            continue;
        }
        let slash = usize::from(!v.ends_with(b"/"));
        let end = at + v.len() + slash + 1;
        if end > buf.len() {
            break;
        }
        buf[at..at + v.len()].copy_from_slice(v);
        if slash == 1 {
            buf[at + v.len()] = b'/';
        }
        buf[end - 1] = 0;
        at = end;
    }
}

/// Is `path` inside a directory of the process's PMIx server?
fn in_server_dir(path: &[u8]) -> bool {
    // SAFETY: written once by the constructor, before any capture.
    let buf = unsafe { &*core::ptr::addr_of!(SERVER_DIRS) };
    buf.split(|&c| c == 0)
        .take_while(|d| !d.is_empty())
        .any(|d| path.starts_with(d))
}

fn classify(m: &MapsLine<'_>) -> (&'static str, Save) {
    let file = m.path.first() == Some(&b'/') && m.inode != 0;
    if !file {
        return if m.shared {
            ("shared_anon", Save::Resident)
        } else {
            ("anon", Save::Resident)
        };
    }
    if is_deleted(m.path)
        || in_server_dir(m.path)
        || m.path.starts_with(b"/dev/zero")
        || m.path.starts_with(b"/memfd:")
        || m.path.starts_with(b"/SYSV")
    {
        return if m.shared {
            ("shared_anon", Save::All)
        } else {
            ("anon", Save::All)
        };
    }
    if m.shared {
        ("shared_file", Save::Nothing)
    } else {
        ("file", Save::Dirty)
    }
}

/// Pairs of native-endian u64 pushed one after the other into scratch memory.
fn u64_pairs(b: &[u8]) -> impl Iterator<Item = (u64, u64)> + '_ {
    b.chunks_exact(16).map(|c| {
        let mut a = [0u8; 8];
        let mut b = [0u8; 8];
        a.copy_from_slice(c.get(..8).unwrap_or(&[0; 8]));
        b.copy_from_slice(c.get(8..).unwrap_or(&[0; 8]));
        (u64::from_ne_bytes(a), u64::from_ne_bytes(b))
    })
}

/// Where the flags of each region emitted so far are in the JSON: its
/// start, the offset of its `hugepage` value (private regions) and of its
/// `fork` digit. Scratch memory.
struct AdviceAt {
    buf: MmapBuf,
}

impl AdviceAt {
    /// `hugepage` offset of a region that has none.
    const NONE: u64 = u64::MAX;

    fn new() -> Self {
        AdviceAt {
            buf: MmapBuf::new(),
        }
    }

    fn push(&mut self, start: u64, huge_at: Option<usize>, fork_at: usize) {
        let huge = huge_at.map_or(Self::NONE, |a| a as u64);
        for w in [start, huge, fork_at as u64] {
            if self.buf.push(&w.to_ne_bytes()).is_err() {
                self.buf.overflow = true;
            }
        }
    }

    /// Whether a region was left out for want of memory.
    fn overflow(&self) -> bool {
        self.buf.overflow
    }

    fn iter(&self) -> impl Iterator<Item = (u64, Option<usize>, usize)> + '_ {
        self.buf.as_slice().chunks_exact(24).map(|c| {
            let word = |i: usize| {
                let mut b = [0u8; 8];
                b.copy_from_slice(c.get(i * 8..i * 8 + 8).unwrap_or(&[0; 8]));
                u64::from_ne_bytes(b)
            };
            let huge = word(1);
            (
                word(0),
                (huge != Self::NONE).then_some(huge as usize),
                word(2) as usize,
            )
        })
    }

    fn free(&mut self) {
        self.buf.free();
    }
}

/// Page runs of one region, kept in scratch memory.
struct StackRuns {
    buf: MmapBuf,
}

impl StackRuns {
    fn new() -> Self {
        StackRuns {
            buf: MmapBuf::new(),
        }
    }
    fn push(&mut self, first: u64, count: u64) {
        // Merge with the previous run when contiguous (runs split at pagemap chunk edges).
        if let Some((pf, pc)) = self.iter().last()
            && pf + pc == first
        {
            let at = self.buf.len() - 8;
            self.buf.overwrite(at, &(pc + count).to_ne_bytes());
            return;
        }
        let _ = self.buf.push(&first.to_ne_bytes());
        let _ = self.buf.push(&count.to_ne_bytes());
    }
    fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        u64_pairs(self.buf.as_slice())
    }
    fn free(&mut self) {
        self.buf.free();
    }
}

fn emit_region(
    j: &mut MmapBuf,
    m: &MapsLine<'_>,
    kind: &str,
    data_offset: u64,
    (runs, inherited): (&StackRuns, &StackRuns),
    crc: u32,
    start_stack: u64,
) -> Result<(usize, usize), Fail> {
    let (mut fsize, mut mtime) = (0u64, 0u64);
    // The same encoding as `st_dev`, so a region and a file compare.
    let (mut dev, mut ino) = (libc::makedev(m.dev_major, m.dev_minor), m.inode);
    if kind == "file" || kind == "shared_file" {
        let mut p = StackBuf::<4096>::new();
        p.push(m.path);
        let fd = raw::open(p.as_cstr(), libc::O_PATH | libc::O_CLOEXEC, 0);
        if let Ok(fd) = fd {
            // SAFETY: stat is plain old data; zeroed is valid.
            let mut st: libc::stat = unsafe { core::mem::zeroed() };
            if raw::fstat(fd, &mut st).is_ok() {
                fsize = st.st_size as u64;
                mtime = (st.st_mtime as u64)
                    .wrapping_mul(1_000_000_000)
                    .wrapping_add(st.st_mtime_nsec as u64);
                dev = st.st_dev;
                ino = st.st_ino;
            }
            raw::close(fd);
        }
    }
    let growsdown = m.start <= start_stack && start_stack < m.end;
    let _ = write!(
        j,
        "{{\"start\":{},\"end\":{},\"prot\":{},\"kind\":\"{kind}\",\"name\":",
        m.start, m.end, m.prot
    );
    j.push_json_str(m.path).map_err(at(8))?;
    let _ = write!(
        j,
        ",\"offset\":{},\"dev\":{dev},\"inode\":{ino},\"file_size\":{fsize},\"file_mtime_ns\":{mtime},\"data_offset\":{data_offset},\"runs\":[",
        m.offset
    );
    let mut first = true;
    for (f, c) in runs.iter() {
        let _ = write!(j, "{}[{f},{c}]", if first { "" } else { "," });
        first = false;
    }
    let _ = write!(j, "]");
    if inherited.iter().next().is_some() {
        let _ = write!(j, ",\"inherited\":[");
        let mut first = true;
        for (f, c) in inherited.iter() {
            let _ = write!(j, "{}[{f},{c}]", if first { "" } else { "," });
            first = false;
        }
        let _ = write!(j, "]");
    }
    let _ = write!(j, ",\"crc\":{crc},\"growsdown\":{growsdown},\"fork\":");
    // Where the fork advice and `false` go: the caller may write another
    // digit and `true ` over them.
    let fork_at = j.len();
    let _ = write!(j, "0,\"hugepage\":");
    let huge_at = j.len();
    let _ = write!(j, "false}}");
    Ok((huge_at, fork_at))
}

fn write_cpu(j: &mut MmapBuf) {
    let c = crate::image::manifest::CpuInfo::current();
    let _ = write!(
        j,
        "\"cpu\":{{\"features\":[{},{},{},{}],\"xcr0\":{}}},",
        c.features[0], c.features[1], c.features[2], c.features[3], c.xcr0
    );
}

fn write_signals(j: &mut MmapBuf) {
    let _ = write!(j, "\"sigactions\":[");
    let mut first = true;
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        let Ok(a) = raw::sigaction(sig, None) else {
            continue;
        };
        if a.handler == 0 && a.flags == 0 && a.mask == 0 {
            continue;
        }
        let _ = write!(
            j,
            "{}{{\"sig\":{sig},\"handler\":{},\"flags\":{},\"restorer\":{},\"mask\":{}}}",
            if first { "" } else { "," },
            a.handler,
            a.flags,
            a.restorer,
            a.mask
        );
        first = false;
    }
    let _ = write!(j, "],");
}

/// Copy the bytes buffered in a pipe into the image without consuming them:
/// open a second read end through /proc, `tee` into a private pipe, then
/// read it into the image file (through a stack buffer, for the checksum).
/// Returns `(offset, length, CRC-32C)`.
fn capture_pipe(fd: i32, img: i32, data_off: &mut u64) -> Result<Option<(u64, u64, u32)>, Errno> {
    let mut p = StackBuf::<64>::new();
    let _ = write!(p, "/proc/self/fd/{fd}");
    let rfd = raw::open(
        p.as_cstr(),
        libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC,
        0,
    )?;
    let mut tp = [0i32; 2];
    // SAFETY: tp is a valid 2-int array (pipe2 = 293).
    if let Err(e) = unsafe {
        raw::syscall3(
            293,
            tp.as_mut_ptr() as usize,
            (libc::O_NONBLOCK | libc::O_CLOEXEC) as usize,
            0,
        )
    } {
        raw::close(rfd);
        return Err(e);
    }
    // SAFETY: F_SETPIPE_SZ takes an int.
    let _ = unsafe {
        raw::syscall3(
            raw::nr::FCNTL,
            tp[1] as usize,
            libc::F_SETPIPE_SZ as usize,
            1 << 20,
        )
    };
    // SAFETY: tee(2) (276) between two pipes we hold.
    let n = unsafe {
        raw::syscall6(
            276,
            rfd as usize,
            tp[1] as usize,
            1 << 20,
            libc::SPLICE_F_NONBLOCK as usize,
            0,
            0,
        )
    };
    let out = match n {
        Ok(n) if n > 0 => {
            let mut crc = Crc32c::new();
            let mut buf = [0u8; 4096];
            let mut done = 0usize;
            let mut res = Ok(());
            while done < n {
                let k = match raw::read_into(tp[0], &mut buf) {
                    Ok(0) => Err(Errno(libc::EIO)),
                    Ok(k) => Ok(k),
                    Err(Errno(libc::EINTR)) => continue,
                    Err(e) => Err(e),
                };
                let Ok(k) = k else {
                    res = k.map(|_| ());
                    break;
                };
                let chunk = buf.get(..k).unwrap_or(&[]);
                crc.update(chunk);
                let mut w = 0usize;
                while w < chunk.len() {
                    match raw::pwrite(
                        img,
                        chunk.get(w..).unwrap_or(&[]),
                        *data_off + (done + w) as u64,
                    ) {
                        Ok(0) => {
                            res = Err(Errno(libc::EIO));
                            break;
                        }
                        Ok(x) => w += x,
                        Err(Errno(libc::EINTR)) => {}
                        Err(e) => {
                            res = Err(e);
                            break;
                        }
                    }
                }
                if res.is_err() {
                    break;
                }
                done += k;
            }
            res.map(|_| {
                let at = *data_off;
                *data_off += (n as u64).div_ceil(PAGE) * PAGE;
                Some((at, n as u64, crc.finish()))
            })
        }
        _ => Ok(None),
    };
    raw::close(rfd);
    raw::close(tp[0]);
    raw::close(tp[1]);
    out
}

/// A descriptor closed when dropped (-1: none). **Async-signal-safe.**
struct FdGuard(i32);

impl Drop for FdGuard {
    fn drop(&mut self) {
        if self.0 >= 0 {
            raw::close(self.0);
        }
    }
}

fn write_fds(
    j: &mut MmapBuf,
    tmp: &mut MmapBuf,
    own: &Fds,
    queued: &mut DeferredWrites,
    data_off: &mut u64,
) -> Result<(), Fail> {
    let (conn_fd, img, pagemap) = (own.conn, own.img, own.pagemap);
    let _ = write!(j, "\"fds\":[");
    let dfd = raw::open(
        b"/proc/self/fd\0",
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        0,
    )
    .map_err(at(7))?;
    let mut fds = [0i32; 4096];
    let mut nfds = 0usize;
    if let Err(e) = raw::for_each_numeric_entry(dfd, |fd| {
        if let Some(slot) = fds.get_mut(nfds) {
            *slot = fd as i32;
            nfds += 1;
        }
    }) {
        raw::close(dfd);
        return Err((7, e));
    }
    let own = [
        dfd,
        conn_fd,
        img,
        pagemap,
        own.phase,
        GO_FD.load(Ordering::Acquire),
        super::track::own_fd(),
        super::leader::GEN_DIR_FD.load(core::sync::atomic::Ordering::Acquire),
    ];
    let mut first = true;
    // The sock_diag socket, opened at the first unix socket (after the
    // descriptors were listed, so it is not among them).
    let mut diag = FdGuard(-1);
    // ascending order
    let list = fds.get_mut(..nfds).unwrap_or(&mut []);
    list.sort_unstable();
    for &fd in list.iter() {
        if own.contains(&fd) {
            continue;
        }
        let mut p = StackBuf::<64>::new();
        let _ = write!(p, "/proc/self/fd/{fd}");
        // SAFETY: stat is plain old data; zeroed is valid.
        let mut st: libc::stat = unsafe { core::mem::zeroed() };
        if raw::fstat(fd, &mut st).is_err() {
            continue;
        }
        let cloexec = raw::fcntl_get(fd, libc::F_GETFD)
            .map(|v| v & libc::FD_CLOEXEC as usize != 0)
            .unwrap_or(false);
        let mut target = [0u8; 4096];
        let (mut pos, mut flags) = (0u64, 0u64);
        let tn = if st.st_mode & libc::S_IFMT == libc::S_IFSOCK {
            // A socket (a job may hold hundreds): what /proc would say,
            // without its two path lookups. Its link reads
            // `socket:[<inode>]`; its fdinfo flags are the status flags
            // with O_CLOEXEC for a close-on-exec descriptor; no position.
            let mut t = StackBuf::<64>::new();
            let _ = write!(t, "socket:[{}]", st.st_ino);
            let t = t.as_bytes();
            let n = t.len().min(target.len());
            target[..n].copy_from_slice(&t[..n]);
            flags = raw::fcntl_get(fd, libc::F_GETFL).unwrap_or(0) as u64
                | if cloexec { libc::O_CLOEXEC as u64 } else { 0 };
            n
        } else {
            let Ok(tn) = raw::readlink(p.as_cstr(), &mut target) else {
                continue;
            };
            let mut fi = StackBuf::<64>::new();
            let _ = write!(fi, "/proc/self/fdinfo/{fd}");
            if tmp.read_file(fi.as_cstr()).is_ok() {
                pos = procfs::status_value(tmp.as_slice(), b"pos")
                    .and_then(procfs::dec)
                    .unwrap_or(0);
                flags = procfs::status_value(tmp.as_slice(), b"flags")
                    .and_then(procfs::oct)
                    .unwrap_or(0);
            }
            tn
        };
        let target = target.get(..tn).unwrap_or(&[]);
        let fmt = st.st_mode & libc::S_IFMT;
        let mut termios = [0u32; 15];
        let mut is_tty = false;
        let kind = match fmt {
            libc::S_IFREG => "file",
            libc::S_IFDIR => "dir",
            libc::S_IFIFO => "pipe",
            libc::S_IFSOCK => "socket",
            libc::S_IFCHR => {
                // SAFETY: TCGETS writes a struct termios (60 bytes) into termios (60 bytes).
                if unsafe { raw::ioctl(fd, libc::TCGETS, termios.as_mut_ptr() as usize) }.is_ok() {
                    is_tty = true;
                    "tty"
                } else {
                    "device"
                }
            }
            // eventfd, timerfd, signalfd, epoll: saved (crate::objects);
            // other anonymous inodes (io_uring, inotify...) are refused.
            _ if crate::objects::known(target) => "object",
            _ => "other",
        };
        let _ = write!(
            j,
            "{}{{\"fd\":{fd},\"kind\":\"{kind}\",\"path\":",
            if first { "" } else { "," }
        );
        j.push_json_str(target).map_err(at(8))?;
        let _ = write!(
            j,
            ",\"flags\":{flags},\"pos\":{pos},\"cloexec\":{cloexec},\"termios\":["
        );
        if is_tty {
            for (i, w) in termios.iter().enumerate() {
                let _ = write!(j, "{}{w}", if i == 0 { "" } else { "," });
            }
        }
        let _ = write!(j, "],\"dev\":{},\"inode\":{}", st.st_dev, st.st_ino);
        if is_tty && let Some(p) = crate::objects::pty::Pty::capture(fd, &st, target) {
            let _ = write!(j, ",\"pty\":");
            p.write(j);
        }
        if kind == "pipe"
            && let Some((off, len, crc)) = capture_pipe(fd, img, data_off).map_err(at(7))?
        {
            let _ = write!(j, ",\"pipe_data\":[{off},{len}],\"pipe_crc\":{crc}");
        }
        // The socket's family, asked once.
        let family = if kind == "socket" {
            crate::objects::unix_socket::family(fd).ok()
        } else {
            None
        };
        if family == Some(libc::AF_UNIX) {
            // A unix socket's state and queued data. When it cannot be read,
            // the field is left out and the coordinator refuses the checkpoint.
            if diag.0 < 0 {
                diag.0 = crate::objects::unix_socket::open_diag().unwrap_or(-1);
            }
            let (mark, overflow, off, held) = (j.len(), j.overflow, *data_off, queued.mark());
            let _ = write!(j, ",\"socket\":");
            if diag.0 < 0
                || crate::objects::unix_socket::capture(
                    fd, st.st_ino, diag.0, queued, data_off, j, list,
                )
                .is_err()
            {
                j.truncate(mark);
                j.overflow = overflow;
                *data_off = off;
                queued.rollback(held);
            }
        }
        if let Some(family @ (libc::AF_INET | libc::AF_INET6)) = family {
            // A TCP or UDP socket's state and the bytes it has received;
            // left out when it cannot be read (the coordinator then refuses
            // the checkpoint saying what the socket is).
            if diag.0 < 0 {
                diag.0 = crate::objects::unix_socket::open_diag().unwrap_or(-1);
            }
            let (mark, overflow, off, held) = (j.len(), j.overflow, *data_off, queued.mark());
            let _ = write!(j, ",\"inet\":");
            if diag.0 < 0
                || crate::objects::inet_socket::capture(
                    crate::objects::inet_socket::Held {
                        fd,
                        ino: st.st_ino,
                        family,
                    },
                    diag.0,
                    queued,
                    data_off,
                    j,
                )
                .is_err()
            {
                j.truncate(mark);
                j.overflow = overflow;
                *data_off = off;
                queued.rollback(held);
            }
        }
        if kind == "object" {
            // The object's state from its fdinfo (already in tmp). When it
            // cannot be read, the field is left out and the coordinator
            // refuses the checkpoint naming the descriptor.
            let (mark, overflow) = (j.len(), j.overflow);
            let _ = write!(j, ",\"object\":");
            let mut cx = crate::objects::Capture::new(fd, flags, tmp, j).with_own(&own);
            if crate::objects::capture(target, &mut cx).is_err() {
                j.truncate(mark);
                j.overflow = overflow;
            }
        }
        let _ = write!(j, "}}");
        first = false;
    }
    raw::close(dfd);
    drop(diag);
    let _ = write!(j, "],");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Gather;

    /// Runs gathered into one writev arrive whole and in order, also when
    /// the writes come back short (a pipe drained slowly by a reader).
    #[test]
    fn gathered_runs_survive_short_writes() {
        let mut p = [0i32; 2];
        // SAFETY: pipe into a valid array.
        assert_eq!(unsafe { libc::pipe(p.as_mut_ptr()) }, 0);
        let runs: Vec<Vec<u8>> = (0..150u32)
            .map(|i| {
                (0..(1000 + i * 997) as usize)
                    .map(|k| (k as u32 * 31 + i) as u8)
                    .collect()
            })
            .collect();
        let want: Vec<u8> = runs.concat();
        let total = want.len();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut b = [0u8; 3000];
            while got.len() < total {
                std::thread::sleep(std::time::Duration::from_micros(50));
                // SAFETY: reading into a local buffer.
                let n = unsafe { libc::read(p[0], b.as_mut_ptr().cast(), b.len()) };
                assert!(n > 0);
                got.extend_from_slice(&b[..n as usize]);
            }
            got
        });
        let mut g = Gather::new(p[1], false);
        for r in &runs {
            // SAFETY: the runs live until the flush below.
            unsafe { g.push(r.as_ptr() as u64, r.len() as u64) }.expect("push");
        }
        g.flush().expect("flush");
        let got = reader.join().expect("reader");
        assert!(got == want, "the bytes read differ from the runs pushed");
        // SAFETY: closing our pipe.
        unsafe {
            libc::close(p[0]);
            libc::close(p[1]);
        }
    }
}
