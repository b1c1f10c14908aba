//! Compressed images (format 1.8, `docs/image-format.md`, "Compressed
//! images").
//!
//! What a checkpoint writes while the job stands still (descriptor data,
//! shared memory) is stored as it is, at the offsets the manifest gives.
//! The private memory a snapshot child writes once the job runs again
//! follows as **independent zstd frames**, one per [`BLOCK`] bytes of the
//! uncompressed data, then a table of the frames' lengths. A frame can be
//! decompressed alone: a restore or an incremental chain reads the frames
//! it needs, and a damaged frame is named, not a whole image refused.
//!
//! One type describes the layout for both directions ([`Layout`]); the
//! writer ([`FrameWriter`]) runs in the snapshot child and is
//! **async-signal-safe** (its zstd context lives in a mapping of its own,
//! `ZSTD_initStaticCCtx`, so zstd never calls the C allocator); the reader
//! ([`expand`]) runs in the restart.

use super::checksum::crc32c;
use super::format::{HEADER_LEN, HEADER_USED, le_u32, le_u64};
use crate::signal_safe::buf::MmapBuf;
use crate::signal_safe::raw::{self, Errno};

/// Header value of zstd frames.
pub const KIND_ZSTD: u32 = 1;
/// Uncompressed bytes per frame.
pub const BLOCK: u32 = 1 << 20;
/// zstd level: the fastest of the standard levels. Negative levels were
/// measured larger by more than the 5% the issue allows against `zstd -1`
/// (`bench/results.md`, "Compression").
pub const LEVEL: i32 = 1;
const MIN_BLOCK: u32 = 1 << 12;
const MAX_BLOCK: u32 = 1 << 26;

/// Where the frames of a compressed image are (header bytes 36..68).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Bytes after the header once decompressed.
    pub logical_len: u64,
    /// File offset of the first frame; the bytes before it are stored as
    /// they are, and it is also the uncompressed offset the frames start at.
    pub frames_from: u64,
    /// Uncompressed bytes per frame (the last may be shorter).
    pub block: u32,
    /// Number of frames.
    pub frames: u32,
}

impl Layout {
    /// End of the uncompressed data (header included).
    pub fn logical_end(&self) -> u64 {
        HEADER_LEN.saturating_add(self.logical_len)
    }

    /// Bytes of the frame table (lengths and their CRC-32C).
    pub fn table_len(&self) -> u64 {
        4 * u64::from(self.frames) + 4
    }

    /// Uncompressed offset and length of frame `i`.
    pub fn frame_range(&self, i: u32) -> (u64, u64) {
        let start = self.frames_from + u64::from(i) * u64::from(self.block);
        let len = self
            .logical_end()
            .saturating_sub(start)
            .min(u64::from(self.block));
        (start, len)
    }

    /// Write the layout into a header. **Async-signal-safe.**
    pub fn encode(&self, h: &mut [u8; HEADER_USED]) {
        h[36..40].copy_from_slice(&KIND_ZSTD.to_le_bytes());
        h[40..48].copy_from_slice(&self.logical_len.to_le_bytes());
        h[48..56].copy_from_slice(&self.frames_from.to_le_bytes());
        h[56..60].copy_from_slice(&self.block.to_le_bytes());
        h[60..64].copy_from_slice(&self.frames.to_le_bytes());
        let c = crc32c(&h[36..64]);
        h[64..68].copy_from_slice(&c.to_le_bytes());
    }

    /// Read the layout from a header of a file of `file_len` bytes.
    /// `Ok(None)`: not compressed.
    pub fn decode(h: &[u8], file_len: u64) -> Result<Option<Layout>, String> {
        let rest = h.get(36..HEADER_USED.min(h.len())).unwrap_or(&[]);
        match le_u32(h, 36) {
            0 if rest.iter().all(|&b| b == 0) => return Ok(None),
            0 => return Err("header bytes 40..68 are not zero in an uncompressed image".into()),
            KIND_ZSTD => {}
            k => return Err(format!("unknown compression {k} in the header")),
        }
        if h.len() < HEADER_USED {
            return Err("header too short for its compression fields".into());
        }
        let stored = le_u32(h, 64);
        let computed = h.get(36..64).map(crc32c).unwrap_or(0);
        if stored != computed {
            return Err(format!(
                "compression header checksum mismatch (stored {stored:08x}, computed {computed:08x})"
            ));
        }
        let z = Layout {
            logical_len: le_u64(h, 40),
            frames_from: le_u64(h, 48),
            block: le_u32(h, 56),
            frames: le_u32(h, 60),
        };
        let bad = |what: &str| Err(format!("compression header: {what}"));
        if !z.block.is_power_of_two() || !(MIN_BLOCK..=MAX_BLOCK).contains(&z.block) {
            return bad("absurd block size");
        }
        if z.logical_len > u64::MAX / 2
            || z.frames_from < HEADER_LEN
            || z.frames_from > z.logical_end()
        {
            return bad("frames start outside the data");
        }
        let want = (z.logical_end() - z.frames_from).div_ceil(u64::from(z.block));
        if want != u64::from(z.frames) {
            return bad("the number of frames does not match the data length");
        }
        if z.frames_from.saturating_add(z.table_len()) > file_len {
            return bad("the frame table does not fit in the file");
        }
        Ok(Some(z))
    }
}

// ---- writing (snapshot child; async-signal-safe) ----

/// At most this many compression workers per snapshot child.
pub const MAX_WORKERS: usize = 8;
/// Per slot: input length, output length (or `ERRNO_MARK | errno`).
const SLOT_HDR: usize = 64;
const ERRNO_MARK: u64 = 1 << 63;

/// A mapping of our own, unmapped on drop.
struct Map {
    ptr: *mut u8,
    len: usize,
}

impl Map {
    fn new(len: usize) -> Result<Map, Errno> {
        let len = len.div_ceil(4096) * 4096;
        Ok(Map {
            ptr: raw::mmap_anon(len)?,
            len,
        })
    }

    /// Shared with the processes forked after it (the workers).
    fn shared(len: usize) -> Result<Map, Errno> {
        let len = len.div_ceil(4096) * 4096;
        // SAFETY: a fresh anonymous mapping at a kernel-chosen address.
        let ptr = unsafe {
            raw::syscall6(
                raw::nr::MMAP,
                0,
                len,
                (libc::PROT_READ | libc::PROT_WRITE) as usize,
                (libc::MAP_SHARED | libc::MAP_ANONYMOUS) as usize,
                usize::MAX,
                0,
            )
        }? as *mut u8;
        Ok(Map { ptr, len })
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        // SAFETY: our own mapping; nothing refers to it once the owner goes.
        let _ = unsafe { raw::munmap(self.ptr as usize, self.len) };
    }
}

fn zstd_ok(r: usize) -> Result<usize, Errno> {
    // SAFETY: ZSTD_isError only inspects the value.
    if unsafe { zstd_sys::ZSTD_isError(r) } != 0 {
        Err(Errno(libc::EIO))
    } else {
        Ok(r)
    }
}

/// A zstd compression context in a mapping of its own (no C allocator).
struct Ctx {
    ctx: *mut zstd_sys::ZSTD_CCtx,
    _work: Map,
}

impl Ctx {
    fn new() -> Result<Ctx, Errno> {
        // SAFETY: pure computation.
        let need = unsafe { zstd_sys::ZSTD_estimateCCtxSize(LEVEL) };
        let work = Map::new(need)?;
        // SAFETY: `work` is a writable, page-aligned mapping of `work.len`
        // bytes that lives as long as the context (same struct).
        let ctx = unsafe { zstd_sys::ZSTD_initStaticCCtx(work.ptr.cast(), work.len) };
        if ctx.is_null() {
            return Err(Errno(libc::ENOMEM));
        }
        for (p, v) in [
            (zstd_sys::ZSTD_cParameter::ZSTD_c_compressionLevel, LEVEL),
            (zstd_sys::ZSTD_cParameter::ZSTD_c_checksumFlag, 1),
            (zstd_sys::ZSTD_cParameter::ZSTD_c_contentSizeFlag, 1),
        ] {
            // SAFETY: ctx is a live static context.
            zstd_ok(unsafe { zstd_sys::ZSTD_CCtx_setParameter(ctx, p, v) })?;
        }
        Ok(Ctx { ctx, _work: work })
    }

    /// Compress `src` into `dst`; returns the frame's length.
    ///
    /// # Safety
    /// `src..+src_len` readable, `dst..+dst_len` writable, not overlapping.
    unsafe fn frame(
        &self,
        dst: *mut u8,
        dst_len: usize,
        src: *const u8,
        src_len: usize,
    ) -> Result<usize, Errno> {
        // SAFETY: forwarded from the caller; ctx is live.
        zstd_ok(unsafe {
            zstd_sys::ZSTD_compress2(self.ctx, dst.cast(), dst_len, src.cast(), src_len)
        })
    }
}

/// The slots blocks wait in: `SLOT_HDR` bytes of lengths, the block, room
/// for its frame. Shared with the workers.
struct Ring {
    map: Map,
    slots: usize,
    slot_len: usize,
    bound: usize,
}

impl Ring {
    fn new(slots: usize) -> Result<Ring, Errno> {
        // SAFETY: pure computation.
        let bound = unsafe { zstd_sys::ZSTD_compressBound(BLOCK as usize) };
        let slot_len = (SLOT_HDR + BLOCK as usize + bound).div_ceil(4096) * 4096;
        Ok(Ring {
            map: Map::shared(slot_len * slots)?,
            slots,
            slot_len,
            bound,
        })
    }

    fn base(&self, slot: usize) -> *mut u8 {
        // SAFETY: slot < slots, so the offset is inside the mapping.
        unsafe { self.map.ptr.add((slot % self.slots) * self.slot_len) }
    }

    fn input(&self, slot: usize) -> *mut u8 {
        // SAFETY: inside the slot.
        unsafe { self.base(slot).add(SLOT_HDR) }
    }

    fn output(&self, slot: usize) -> *mut u8 {
        // SAFETY: inside the slot.
        unsafe { self.input(slot).add(BLOCK as usize) }
    }

    fn header(&self, slot: usize, word: usize) -> *mut u64 {
        // SAFETY: the header has room for 8 words; the slot is page aligned.
        unsafe { self.base(slot).cast::<u64>().add(word) }
    }

    /// Compress slot `slot` with `ctx` and record the result in its header.
    fn compress(&self, slot: usize, ctx: Option<&Ctx>) {
        // SAFETY: the writer set the input length before handing the slot over.
        let n = unsafe { core::ptr::read_volatile(self.header(slot, 0)) } as usize;
        let r = match ctx {
            // SAFETY: input and output are disjoint parts of the slot, of
            // BLOCK and `bound` bytes; n <= BLOCK.
            Some(c) => unsafe {
                c.frame(
                    self.output(slot),
                    self.bound,
                    self.input(slot),
                    n.min(BLOCK as usize),
                )
            },
            None => Err(Errno(libc::ENOMEM)),
        };
        let v = match r {
            Ok(len) => len as u64,
            Err(Errno(e)) => ERRNO_MARK | e as u64,
        };
        // SAFETY: the header word is ours until the writer is told.
        unsafe { core::ptr::write_volatile(self.header(slot, 1), v) };
    }
}

/// A compression worker: a process forked from the snapshot child.
#[derive(Clone, Copy)]
struct Worker {
    pid: i32,
    /// Slot numbers to compress (one byte each).
    jobs: i32,
    /// One byte per slot compressed, in the order given.
    done: i32,
}

/// CPUs this process may run on.
fn cpus() -> usize {
    let mut mask = [0u64; 16];
    // SAFETY: sched_getaffinity (204) into a buffer of the size given.
    match unsafe {
        raw::syscall3(
            204,
            0,
            core::mem::size_of_val(&mask),
            mask.as_mut_ptr() as usize,
        )
    } {
        Ok(_) => mask
            .iter()
            .map(|w| w.count_ones() as usize)
            .sum::<usize>()
            .max(1),
        Err(_) => 1,
    }
}

fn read_byte(fd: i32) -> Result<u8, Errno> {
    let mut b = [0u8; 1];
    loop {
        match raw::read_into(fd, &mut b) {
            Ok(1) => return Ok(b[0]),
            Ok(_) => return Err(Errno(libc::EPIPE)),
            Err(Errno(libc::EINTR)) => {}
            Err(e) => return Err(e),
        }
    }
}

fn pipe() -> Result<[i32; 2], Errno> {
    let mut p = [0i32; 2];
    // SAFETY: pipe2 (293) into a valid array.
    unsafe { raw::syscall3(293, p.as_mut_ptr() as usize, libc::O_CLOEXEC as usize, 0) }?;
    Ok(p)
}

/// Compresses what a snapshot child writes from [`Layout::frames_from`]
/// on, one frame per [`BLOCK`] bytes, into the image file at its current
/// position. Blocks are compressed by worker processes forked from the
/// snapshot child (one per CPU it may use, at most [`MAX_WORKERS`]) while
/// the child copies the next blocks in and writes finished frames in order;
/// with one CPU, or when no worker can be started, the child compresses
/// them itself. **Async-signal-safe**: no C allocator (each zstd context
/// lives in a mapping of its own), no threads.
pub struct FrameWriter {
    fd: i32,
    ring: Ring,
    /// The child's own context when it has no workers.
    own: Option<Ctx>,
    workers: [Worker; MAX_WORKERS],
    nworkers: usize,
    /// Blocks handed to compression so far (the next one fills slot
    /// `dispatched % slots`), and blocks written.
    dispatched: usize,
    retired: usize,
    staged: usize,
    lens: MmapBuf,
    /// Bytes written to the file (frames and, after `finish`, the table).
    pub written: u64,
    /// `written` when writeback was last started.
    kicked_at: u64,
    /// Uncompressed bytes taken.
    pub taken: u64,
}

impl FrameWriter {
    /// A writer appending to `fd` at its current position.
    pub fn new(fd: i32) -> Result<FrameWriter, Errno> {
        let want = cpus().min(MAX_WORKERS);
        let want = if want < 2 { 0 } else { want };
        let ring = Ring::new((2 * want).max(1))?;
        let mut w = FrameWriter {
            fd,
            ring,
            own: None,
            workers: [Worker {
                pid: 0,
                jobs: -1,
                done: -1,
            }; MAX_WORKERS],
            nworkers: 0,
            dispatched: 0,
            retired: 0,
            staged: 0,
            lens: MmapBuf::new(),
            written: 0,
            kicked_at: 0,
            taken: 0,
        };
        for _ in 0..want {
            if w.start_worker().is_err() {
                break;
            }
        }
        if w.nworkers == 0 {
            w.ring = Ring::new(1)?;
            w.own = Some(Ctx::new()?);
        }
        Ok(w)
    }

    fn start_worker(&mut self) -> Result<(), Errno> {
        let jobs = pipe()?;
        let done = match pipe() {
            Ok(d) => d,
            Err(e) => {
                raw::close(jobs[0]);
                raw::close(jobs[1]);
                return Err(e);
            }
        };
        // SAFETY: clone (56) with no flags is fork() whose child signals
        // nobody on exit; the child runs only fence code below and exits.
        match unsafe { raw::syscall6(56, 0, 0, 0, 0, 0, 0) } {
            Ok(0) => {
                // The worker: keep only its own ends, so that each
                // worker sees the end of its job pipe when the writer goes.
                for other in self.workers.iter().take(self.nworkers) {
                    raw::close(other.jobs);
                    raw::close(other.done);
                }
                raw::close(jobs[1]);
                raw::close(done[0]);
                let ctx = Ctx::new().ok();
                while let Ok(slot) = read_byte(jobs[0]) {
                    self.ring.compress(usize::from(slot), ctx.as_ref());
                    if raw::write_all(done[1], &[slot]).is_err() {
                        break;
                    }
                }
                raw::exit_group(0);
            }
            Ok(pid) => {
                raw::close(jobs[0]);
                raw::close(done[1]);
                self.workers[self.nworkers] = Worker {
                    pid: pid as i32,
                    jobs: jobs[1],
                    done: done[0],
                };
                self.nworkers += 1;
                Ok(())
            }
            Err(e) => {
                for fd in jobs.into_iter().chain(done) {
                    raw::close(fd);
                }
                Err(e)
            }
        }
    }

    /// Take `len` bytes at `addr`.
    ///
    /// # Safety
    /// `addr..addr+len` must be mapped readable and not change meanwhile.
    pub unsafe fn push(&mut self, mut addr: usize, mut len: usize) -> Result<(), Errno> {
        while len > 0 {
            let n = len.min(BLOCK as usize - self.staged);
            let dst = self.ring.input(self.dispatched);
            // SAFETY: the source is readable (caller); the destination is
            // inside the slot's input (staged + n <= BLOCK), which no worker
            // uses until it is dispatched; the ring is our own mapping.
            unsafe { core::ptr::copy_nonoverlapping(addr as *const u8, dst.add(self.staged), n) };
            self.staged += n;
            addr += n;
            len -= n;
            if self.staged == BLOCK as usize {
                self.dispatch()?;
            }
        }
        Ok(())
    }

    /// Hand the slot being filled to compression; make sure the next one is free.
    fn dispatch(&mut self) -> Result<(), Errno> {
        if self.staged == 0 {
            return Ok(());
        }
        let seq = self.dispatched;
        let slot = seq % self.ring.slots;
        // SAFETY: the slot is ours until it is handed over below.
        unsafe { core::ptr::write_volatile(self.ring.header(slot, 0), self.staged as u64) };
        self.staged = 0;
        self.dispatched += 1;
        if self.nworkers == 0 {
            self.ring.compress(slot, self.own.as_ref());
        } else {
            let w = self.workers[seq % self.nworkers];
            raw::write_all(w.jobs, &[slot as u8])?;
        }
        if self.dispatched - self.retired >= self.ring.slots {
            self.retire()?;
        }
        Ok(())
    }

    /// Wait for the oldest block handed over and write its frame.
    fn retire(&mut self) -> Result<(), Errno> {
        let seq = self.retired;
        let slot = seq % self.ring.slots;
        if self.nworkers > 0 {
            // Each worker answers its blocks in the order it got them.
            read_byte(self.workers[seq % self.nworkers].done)?;
        }
        // SAFETY: the worker (or `dispatch`) wrote the header before telling us.
        let (taken, r) = unsafe {
            (
                core::ptr::read_volatile(self.ring.header(slot, 0)),
                core::ptr::read_volatile(self.ring.header(slot, 1)),
            )
        };
        if r & ERRNO_MARK != 0 || r as usize > self.ring.bound {
            return Err(Errno((r & !ERRNO_MARK) as i32));
        }
        // SAFETY: the frame is r <= bound bytes of the slot's output.
        let frame = unsafe { core::slice::from_raw_parts(self.ring.output(slot), r as usize) };
        raw::write_all(self.fd, frame)?;
        self.lens.push(&(r as u32).to_le_bytes())?;
        self.written += r;
        // A snapshot child's writer: let the disk start on the frames.
        if self.written - self.kicked_at >= raw::WRITEBACK_EVERY {
            self.kicked_at = self.written;
            raw::start_writeback(self.fd);
        }
        self.taken += taken;
        self.retired += 1;
        Ok(())
    }

    /// Compress what is left and append the frame table; returns the layout
    /// for a header whose frames start at `frames_from`.
    pub fn finish(&mut self, frames_from: u64) -> Result<Layout, Errno> {
        self.dispatch()?;
        while self.retired < self.dispatched {
            self.retire()?;
        }
        self.stop_workers();
        let table = self.lens.as_slice();
        raw::write_all(self.fd, table)?;
        raw::write_all(self.fd, &crc32c(table).to_le_bytes())?;
        let frames = (table.len() / 4) as u32;
        self.written += table.len() as u64 + 4;
        Ok(Layout {
            logical_len: frames_from - HEADER_LEN + self.taken,
            frames_from,
            block: BLOCK,
            frames,
        })
    }

    /// Close the job pipes, end the workers and reap them.
    fn stop_workers(&mut self) {
        for w in self.workers.iter_mut().take(self.nworkers) {
            raw::close(w.jobs);
            raw::close(w.done);
            // Every block it was given is written (or the writer gave up):
            // end it now rather than trust that no other process holds its
            // job pipe open (a fork of another thread of a test, say).
            // SAFETY: kill (62) of our own clone child.
            let _ = unsafe { raw::syscall3(62, w.pid as usize, libc::SIGKILL as usize, 0) };
            // SAFETY: wait4 (61) on our own clone child, no status wanted.
            let _ = unsafe {
                raw::syscall6(
                    61,
                    w.pid as usize,
                    0,
                    0x4000_0000, /* __WALL */
                    0,
                    0,
                    0,
                )
            };
        }
        self.nworkers = 0;
    }

    /// Worker processes running (for tests).
    pub fn workers(&self) -> usize {
        self.nworkers
    }
}

impl Drop for FrameWriter {
    fn drop(&mut self) {
        self.stop_workers();
        self.lens.free();
    }
}

// ---- reading (restart; std) ----

/// A zstd decompression context, freed on drop.
struct DCtx(*mut zstd_sys::ZSTD_DCtx);

impl Drop for DCtx {
    fn drop(&mut self) {
        // SAFETY: created by ZSTD_createDCtx, freed once.
        unsafe { zstd_sys::ZSTD_freeDCtx(self.0) };
    }
}

/// The file offset and compressed length of each frame, from the table at
/// the end of the file (checked against its CRC-32C).
pub fn frame_table(
    file: &std::fs::File,
    z: &Layout,
    file_len: u64,
) -> Result<Vec<(u64, u64)>, String> {
    use std::os::unix::fs::FileExt;
    let tlen = z.table_len();
    let at = file_len
        .checked_sub(tlen)
        .filter(|&a| a >= z.frames_from)
        .ok_or("the frame table does not fit in the file")?;
    let mut t = vec![0u8; usize::try_from(tlen).map_err(|_| "absurd frame table")?];
    file.read_exact_at(&mut t, at)
        .map_err(|e| format!("reading the frame table: {e}"))?;
    let (lens, crc) = t.split_at(t.len() - 4);
    if crc32c(lens) != le_u32(crc, 0) {
        return Err("the frame table fails its checksum".into());
    }
    let mut off = z.frames_from;
    let mut out = Vec::with_capacity(z.frames as usize);
    for l in lens.chunks_exact(4) {
        let n = u64::from(le_u32(l, 0));
        out.push((off, n));
        off = off.saturating_add(n);
    }
    if off != at {
        return Err(format!(
            "the frames add up to {} bytes, but the table starts at {at}",
            off - z.frames_from.min(off)
        ));
    }
    Ok(out)
}

/// Write the uncompressed content of a compressed image `file` into `out`
/// (sized here to the uncompressed length): the bytes before the frames as
/// they are, then each frame decompressed into place. Frames for which
/// `wanted(start, len)` is false are left as holes (zeros). An error names
/// the damaged frame (the lowest-numbered one, whichever thread met it).
///
/// Frames are independent and land in disjoint parts of `out`: up to
/// `threads` threads (scoped: all have ended when this returns) take them
/// in turn. A caller inside a pid namespace whose ids it still has to hand
/// out must wait until those threads' ids are free again
/// (docs/image-format.md, "Compressed images").
pub fn expand(
    file: &std::fs::File,
    z: &Layout,
    file_len: u64,
    out: &std::fs::File,
    wanted: impl Fn(u64, u64) -> bool + Sync,
    threads: usize,
) -> Result<(), String> {
    use std::os::unix::fs::FileExt;
    let table = frame_table(file, z, file_len)?;
    out.set_len(z.logical_end())
        .map_err(|e| format!("sizing the decompressed image: {e}"))?;
    // The part stored as it is.
    let mut buf = vec![0u8; BLOCK as usize];
    let mut at = 0u64;
    while at < z.frames_from {
        let n = (z.frames_from - at).min(BLOCK as u64) as usize;
        let b = buf.get_mut(..n).ok_or("buffer")?;
        file.read_exact_at(b, at)
            .map_err(|e| format!("reading at {at}: {e}"))?;
        out.write_all_at(b, at)
            .map_err(|e| format!("writing the decompressed image: {e}"))?;
        at += n as u64;
    }
    if z.frames == 0 {
        return Ok(());
    }
    let map_from = z.frames_from & !4095;
    let map_len = usize::try_from(z.logical_end() - map_from).map_err(|_| "image too large")?;
    // SAFETY: a shared writable mapping of `out`, which was just sized to
    // cover it; unmapped below; nothing else maps it in this process.
    let base = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            map_len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(out),
            map_from as libc::off_t,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(format!(
            "mapping the decompressed image: {}",
            std::io::Error::last_os_error()
        ));
    }
    // The frames wanted, in turn, by up to `threads` threads.
    let todo: Vec<usize> = (0..table.len())
        .filter(|&i| {
            let (start, len) = z.frame_range(i as u32);
            wanted(start, len)
        })
        .collect();
    let threads = threads.min(todo.len()).max(1);
    let next = std::sync::atomic::AtomicUsize::new(0);
    // The damaged frame with the lowest number, so that the message does
    // not depend on which thread got there first.
    let first_bad: std::sync::Mutex<Option<(usize, String)>> = std::sync::Mutex::new(None);
    let at = base as usize;
    let work = || {
        // SAFETY: ZSTD_createDCtx has no preconditions; null is checked.
        let d = DCtx(unsafe { zstd_sys::ZSTD_createDCtx() });
        let mut src = Vec::new();
        loop {
            let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(&i) = todo.get(k) else { return };
            let Some(&(off, clen)) = table.get(i) else {
                return;
            };
            let (start, len) = z.frame_range(i as u32);
            let r = decompress_frame(
                &d,
                file,
                (off, clen),
                &mut src,
                at + (start - map_from) as usize,
                len,
            );
            if let Err(why) = r {
                let msg = format!(
                    "compressed frame {i} (file offset {off}, data {start}..{}) is damaged: {why}",
                    start + len
                );
                if let Ok(mut b) = first_bad.lock()
                    && b.as_ref().is_none_or(|(j, _)| i < *j)
                {
                    *b = Some((i, msg));
                }
                // No frame after this one is needed any more.
                next.fetch_max(todo.len(), std::sync::atomic::Ordering::Relaxed);
                return;
            }
        }
    };
    std::thread::scope(|sc| {
        for _ in 1..threads {
            sc.spawn(work);
        }
        work();
    });
    // SAFETY: unmapping what we mapped (every thread has ended).
    unsafe { libc::munmap(base, map_len) };
    match first_bad.into_inner() {
        Ok(None) => Ok(()),
        Ok(Some((_, msg))) => Err(msg),
        Err(_) => Err("a decompression thread failed".into()),
    }
}

/// Read one frame of `file` (`off`, compressed length `clen`) into `src`
/// and decompress it to `dst`, which must take exactly `len` bytes.
fn decompress_frame(
    d: &DCtx,
    file: &std::fs::File,
    (off, clen): (u64, u64),
    src: &mut Vec<u8>,
    dst: usize,
    len: u64,
) -> Result<(), String> {
    use std::os::unix::fs::FileExt;
    if d.0.is_null() {
        return Err("cannot allocate a zstd context".into());
    }
    if clen > u64::from(BLOCK) * 2 {
        return Err(format!("absurd length {clen}"));
    }
    src.resize(clen as usize, 0);
    file.read_exact_at(src, off).map_err(|e| e.to_string())?;
    // SAFETY: the caller's dst..dst+len lies inside its writable mapping and
    // no other thread writes there; src holds clen bytes; d is a live
    // context used by this thread only.
    let got = unsafe {
        zstd_sys::ZSTD_decompressDCtx(
            d.0,
            dst as *mut core::ffi::c_void,
            len as usize,
            src.as_ptr().cast(),
            src.len(),
        )
    };
    // SAFETY: ZSTD_isError only inspects the value.
    if unsafe { zstd_sys::ZSTD_isError(got) } != 0 {
        // SAFETY: zstd returns a static NUL-terminated string.
        let name = unsafe { std::ffi::CStr::from_ptr(zstd_sys::ZSTD_getErrorName(got)) };
        return Err(name.to_string_lossy().into_owned());
    }
    if got as u64 != len {
        return Err(format!("{got} bytes where {len} were expected"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::format;
    use std::io::{Seek, SeekFrom, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;

    fn data(n: usize, seed: u64) -> Vec<u8> {
        // Compressible but not trivial: runs of a counter and noise.
        let mut x = seed | 1;
        (0..n)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if i % 4096 < 2048 {
                    (i / 64) as u8
                } else {
                    x as u8
                }
            })
            .collect()
    }

    /// Write an image as capture does: a raw part, frames, table, header;
    /// then expand it and compare.
    fn round_trip(raw_len: usize, frames_len: usize) -> (std::fs::File, Vec<u8>, Layout) {
        let dir = std::env::temp_dir().join(format!(
            "ckpt-compress-{}-{raw_len}-{frames_len}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.join("proc-1.img"))
            .unwrap();
        let raw_part = data(raw_len, 7);
        let mem = data(frames_len, 11);
        f.write_all_at(&raw_part, HEADER_LEN).unwrap();
        let from = HEADER_LEN + raw_len as u64;
        f.seek(SeekFrom::Start(from)).unwrap();
        let mut w = FrameWriter::new(f.as_raw_fd()).unwrap();
        if cpus() >= 2 {
            assert!(
                w.workers() >= 2,
                "no compression workers on {} CPUs",
                cpus()
            );
        }
        // In uneven pieces, as page runs come.
        let mut at = 0;
        let mut step = 4096;
        while at < mem.len() {
            let n = step.min(mem.len() - at);
            // SAFETY: a live slice.
            unsafe { w.push(mem.as_ptr() as usize + at, n) }.unwrap();
            at += n;
            step = step * 3 % (5 << 20) + 4096;
        }
        let z = w.finish(from).unwrap();
        let len = f.seek(SeekFrom::End(0)).unwrap();
        assert_eq!(len, from + w.written);
        let h = format::encode_compressed(len - HEADER_LEN, &z);
        f.write_all_at(&h, 0).unwrap();
        f.flush().unwrap();
        let mut want = vec![0u8; HEADER_LEN as usize];
        want[..h.len()].copy_from_slice(&h);
        want.extend_from_slice(&raw_part);
        want.extend_from_slice(&mem);
        let _ = std::fs::remove_dir_all(&dir);
        (f, want, z)
    }

    fn expanded(f: &std::fs::File, z: &Layout) -> Result<Vec<u8>, String> {
        expanded_by(f, z, 1)
    }

    fn expanded_by(f: &std::fs::File, z: &Layout, threads: usize) -> Result<Vec<u8>, String> {
        let len = f.metadata().unwrap().len();
        let mut head = vec![0u8; HEADER_USED];
        f.read_exact_at(&mut head, 0).unwrap();
        let h = format::decode("x", &head, len).map_err(|e| e.to_string())?;
        assert_eq!(h.compressed.as_ref(), Some(z));
        let out = tempfile_memfd();
        expand(f, z, len, &out, |_, _| true, threads)?;
        let mut v = vec![0u8; z.logical_end() as usize];
        out.read_exact_at(&mut v, 0).unwrap();
        Ok(v)
    }

    fn tempfile_memfd() -> std::fs::File {
        // SAFETY: memfd_create with a static name.
        let fd = unsafe { libc::memfd_create(c"t".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: a fresh descriptor we own.
        unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }
    }

    #[test]
    fn frames_round_trip() {
        for (raw_len, mem_len) in [
            (0, 0),
            (8192, 0),
            (0, 4096),
            (12288, BLOCK as usize),
            (4096, 3 * BLOCK as usize + 8192),
        ] {
            let (f, want, z) = round_trip(raw_len, mem_len);
            assert_eq!(z.frames as usize, mem_len.div_ceil(BLOCK as usize));
            for threads in [1, 3] {
                let got = expanded_by(&f, &z, threads).unwrap();
                // The header of the expanded copy is the compressed file's.
                assert_eq!(got[HEADER_LEN as usize..], want[HEADER_LEN as usize..]);
            }
            if mem_len > BLOCK as usize {
                assert!(
                    f.metadata().unwrap().len() < want.len() as u64 * 3 / 4,
                    "compressible data did not shrink"
                );
            }
        }
    }

    #[test]
    fn a_damaged_frame_is_named() {
        let (f, _, z) = round_trip(4096, 2 * BLOCK as usize);
        let len = f.metadata().unwrap().len();
        let t = frame_table(&f, &z, len).unwrap();
        let (off, clen) = t[1];
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, off + clen / 2).unwrap();
        b[0] ^= 0x10;
        f.write_all_at(&b, off + clen / 2).unwrap();
        let e = expanded(&f, &z).unwrap_err();
        assert!(e.contains("compressed frame 1"), "{e}");
        // With several threads and several damaged frames, the message
        // names the first, whichever thread met which.
        let (f, _, z) = round_trip(4096, 8 * BLOCK as usize);
        let t = frame_table(&f, &z, f.metadata().unwrap().len()).unwrap();
        for &i in &[2usize, 5, 6] {
            let (off, clen) = t[i];
            f.read_exact_at(&mut b, off + clen / 2).unwrap();
            b[0] ^= 0x10;
            f.write_all_at(&b, off + clen / 2).unwrap();
        }
        for _ in 0..5 {
            let e = expanded_by(&f, &z, 4).unwrap_err();
            assert!(e.contains("compressed frame 2 "), "{e}");
        }
        let (f, _, z) = round_trip(4096, 2 * BLOCK as usize);
        let len = f.metadata().unwrap().len();
        // A damaged table is refused too.
        f.read_exact_at(&mut b, len - 6).unwrap();
        b[0] ^= 1;
        f.write_all_at(&b, len - 6).unwrap();
        assert!(expanded(&f, &z).unwrap_err().contains("frame table"));
    }

    #[test]
    fn every_bit_of_the_compression_header_is_checked() {
        let z = Layout {
            logical_len: 3 * u64::from(BLOCK),
            frames_from: HEADER_LEN + 8192,
            block: BLOCK,
            frames: 3,
        };
        let h = format::encode_compressed(2 * u64::from(BLOCK), &z);
        let file_len = HEADER_LEN + 2 * u64::from(BLOCK);
        assert_eq!(Layout::decode(&h, file_len), Ok(Some(z)));
        for bit in 36 * 8..HEADER_USED * 8 {
            let mut b = h;
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(
                Layout::decode(&b, file_len).is_err(),
                "flip of bit {bit} accepted"
            );
        }
        let plain = format::encode(0);
        assert_eq!(Layout::decode(&plain, HEADER_LEN), Ok(None));
        for bit in 40 * 8..HEADER_USED * 8 {
            let mut b = plain;
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(Layout::decode(&b, HEADER_LEN).is_err());
        }
    }

    #[test]
    fn holes_for_frames_not_wanted() {
        let (f, want, z) = round_trip(0, 3 * BLOCK as usize);
        let len = f.metadata().unwrap().len();
        let out = tempfile_memfd();
        let second = z.frame_range(1);
        expand(&f, &z, len, &out, |s, _| s == second.0, 3).unwrap();
        let mut v = vec![0u8; z.logical_end() as usize];
        out.read_exact_at(&mut v, 0).unwrap();
        let (s, l) = (second.0 as usize, second.1 as usize);
        assert_eq!(v[s..s + l], want[s..s + l]);
        assert!(v[HEADER_LEN as usize..s].iter().all(|&b| b == 0));
    }
}
