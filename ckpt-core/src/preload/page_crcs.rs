//! Page checksums carried from one checkpoint to the next, so that an
//! incremental image does not read the pages it only refers to.
//!
//! Each memory region of an image carries one CRC-32C over all the pages it
//! restores, its own and those it inherits from the base generation, and the
//! restore verifies it over what it assembled (`docs/image-format.md`). An
//! incremental image's writer used to read every inherited page to compute
//! that checksum: for 5% of 1 GiB rewritten, it read the other 95% too.
//!
//! Instead, the writer of a tracked checkpoint records the CRC register of
//! every private anonymous page it checksums (`checksum::page_register`,
//! 12 bytes per page) in a table in **shared** memory, which the snapshot
//! child fills and the process keeps after it. The next checkpoint, when it
//! is incremental against that generation, takes the register of each
//! inherited page from the table (an inherited page holds exactly what it
//! held then: `track`) and combines it into the region's checksum
//! (`Crc32c::append_page`); a page the table lacks is read as before. The
//! image format does not change, and the restore still reads and verifies
//! every page it assembles: a wrong register would make the restore refuse
//! the generation, never restore different memory.
//!
//! Two tables alternate: the one describing the base generation (read) and
//! the one this checkpoint fills (written). A table is used only when its
//! header names the base generation and says it was completed, in the
//! process that made it (a `fork` child of the program inherits the shared
//! mapping: it forgets it and makes its own). The tables are never saved in
//! images; a restored process starts without any.
//!
//! **Async-signal-safe**: raw system calls and atomics only. The parent
//! touches the tables only while the job is stopped; the snapshot child
//! writes one of them while the job runs, and the next checkpoint starts
//! only after that child has finished.

use core::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use crate::signal_safe::raw;

/// Header words: generation, complete (0/1), entries, capacity.
const HEADER: usize = 32;
/// Bytes per entry: a page number (u64) and its register (u32).
const ENTRY: usize = 12;
const NONE: u32 = 2;

static ADDR: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];
static LEN: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];
/// The process the mappings were made in.
static PID: AtomicI32 = AtomicI32::new(0);
/// Table this checkpoint reads / writes (`NONE`: none).
static READ: AtomicU32 = AtomicU32::new(NONE);
static WRITE: AtomicU32 = AtomicU32::new(NONE);

/// One table: header, then `cap` page numbers, then `cap` registers.
#[derive(Clone, Copy)]
struct Table {
    addr: usize,
}

impl Table {
    fn at(i: u32) -> Option<Table> {
        let addr = ADDR.get(i as usize)?.load(Ordering::Acquire);
        (addr != 0).then_some(Table { addr })
    }

    fn header(&self) -> &[AtomicU64; 4] {
        // SAFETY: `addr` is the start of a live, page-aligned shared mapping
        // of at least HEADER bytes made by `prepare`; AtomicU64 has the
        // layout of u64.
        unsafe { &*(self.addr as *const [AtomicU64; 4]) }
    }

    fn cap(&self) -> u64 {
        self.header()[3].load(Ordering::Acquire)
    }

    fn keys(&self) -> *mut u64 {
        (self.addr + HEADER) as *mut u64
    }

    fn regs(&self) -> *mut u32 {
        (self.addr + HEADER + 8 * self.cap() as usize) as *mut u32
    }
}

/// The table of the base generation, for ascending lookups.
pub struct Reader {
    t: Table,
    len: u64,
    cursor: u64,
}

impl Reader {
    /// The register recorded for page number `page` (address / 4096).
    /// Queries must come in ascending page order.
    pub fn lookup(&mut self, page: u64) -> Option<u32> {
        let keys = self.t.keys();
        while self.cursor < self.len {
            // SAFETY: cursor < len <= cap: inside the mapping.
            let k = unsafe { keys.add(self.cursor as usize).read() };
            if k == page {
                // SAFETY: as above, in the registers' part.
                return Some(unsafe { self.t.regs().add(self.cursor as usize).read() });
            }
            if k > page {
                return None;
            }
            self.cursor += 1;
        }
        None
    }
}

/// The table this checkpoint fills.
pub struct Writer {
    t: Table,
    len: u64,
    cap: u64,
    last: Option<u64>,
    spoiled: bool,
}

impl Writer {
    /// Record the register of page number `page`. Pages must come in
    /// ascending order; a table that overflows or is fed out of order is
    /// never used.
    pub fn push(&mut self, page: u64, reg: u32) {
        if self.len >= self.cap || self.last.is_some_and(|l| l >= page) {
            self.spoiled = true;
            return;
        }
        // SAFETY: len < cap: inside the mapping.
        unsafe {
            self.t.keys().add(self.len as usize).write(page);
            self.t.regs().add(self.len as usize).write(reg);
        }
        self.last = Some(page);
        self.len += 1;
    }

    /// Every page is recorded: the next checkpoint may use the table.
    pub fn finish(self) {
        if !self.spoiled {
            let h = self.t.header();
            h[2].store(self.len, Ordering::Release);
            h[1].store(1, Ordering::Release);
        }
    }
}

/// No tables for this checkpoint (run first in every checkpoint).
pub fn clear() {
    READ.store(NONE, Ordering::Release);
    WRITE.store(NONE, Ordering::Release);
}

/// In the stopped process, before the snapshot: choose the table of
/// generation `base` to read (when the image is incremental against it)
/// and, when `record` (tracking stays on), a table of room for `pages`
/// entries for generation `generation` to fill.
pub fn prepare(generation: u64, base: Option<u64>, record: bool, pages: u64) {
    clear();
    let pid = raw::getpid();
    if PID.load(Ordering::Acquire) != pid {
        // Inherited from the process that made them: shared with it.
        for i in 0..2 {
            drop_table(i);
        }
        PID.store(pid, Ordering::Release);
    }
    let mut read = NONE;
    if let Some(b) = base {
        for i in 0..2u32 {
            if let Some(t) = Table::at(i) {
                let h = t.header();
                if h[0].load(Ordering::Acquire) == b && h[1].load(Ordering::Acquire) == 1 {
                    read = i;
                }
            }
        }
    }
    READ.store(read, Ordering::Release);
    if !record {
        return;
    }
    let w = if read == 0 { 1 } else { 0 };
    let cap = pages + 4096;
    let need = HEADER + ENTRY * cap as usize;
    if LEN[w as usize].load(Ordering::Acquire) < need {
        drop_table(w);
        let len = (need + need / 4 + 4095) & !4095;
        let Ok(p) = raw::mmap_shared_anon(len) else {
            return;
        };
        ADDR[w as usize].store(p as usize, Ordering::Release);
        LEN[w as usize].store(len, Ordering::Release);
    }
    let Some(t) = Table::at(w) else {
        return;
    };
    let h = t.header();
    h[1].store(0, Ordering::Release);
    h[0].store(generation, Ordering::Release);
    h[2].store(0, Ordering::Release);
    h[3].store(cap, Ordering::Release);
    WRITE.store(w, Ordering::Release);
}

/// The tables of this checkpoint, for its image writer.
pub fn current() -> (Option<Reader>, Option<Writer>) {
    let r = Table::at(READ.load(Ordering::Acquire)).map(|t| Reader {
        t,
        len: t.header()[2].load(Ordering::Acquire),
        cursor: 0,
    });
    let w = Table::at(WRITE.load(Ordering::Acquire)).map(|t| Writer {
        t,
        len: 0,
        cap: t.cap(),
        last: None,
        spoiled: false,
    });
    (r, w)
}

fn drop_table(i: u32) {
    let addr = ADDR[i as usize].swap(0, Ordering::AcqRel);
    let len = LEN[i as usize].swap(0, Ordering::AcqRel);
    if addr != 0 {
        // SAFETY: our own mapping; no view of it outlives this call (the
        // writer's views live only during a checkpoint, in which this is
        // not called after `current`).
        let _ = unsafe { raw::munmap(addr, len) };
    }
}

/// Tracking is off: the tables are of no use until it is armed again.
pub fn free() {
    clear();
    if PID.load(Ordering::Acquire) == raw::getpid() {
        for i in 0..2 {
            drop_table(i);
        }
    }
}

/// After a restore the tables' addresses are stale (the tables were not
/// saved; something else may be mapped there now): forget them without
/// unmapping. **Async-signal-safe.**
pub fn reset_after_restore() {
    clear();
    for i in 0..2 {
        ADDR[i].store(0, Ordering::Release);
        LEN[i].store(0, Ordering::Release);
    }
    PID.store(0, Ordering::Release);
}

/// The tables as (start, end) (never saved in images).
pub fn scratch_ranges() -> [(u64, u64); 2] {
    let range = |i: usize| {
        let a = ADDR[i].load(Ordering::Acquire) as u64;
        (a, a + LEN[i].load(Ordering::Acquire) as u64)
    };
    [range(0), range(1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One test for the module's global state: tables alternate between
    /// generations, only a completed table of the base is read, and a
    /// writer fed out of order spoils its table.
    #[test]
    fn tables_alternate_and_only_complete_ones_are_read() {
        reset_after_restore();
        prepare(1, None, true, 10);
        let (r, w) = current();
        assert!(r.is_none());
        let mut w = w.expect("a table to fill");
        for (p, reg) in [(5u64, 50u32), (7, 70), (9, 90)] {
            w.push(p, reg);
        }
        w.finish();

        // Generation 2, incremental against 1: reads 1, fills the other.
        prepare(2, Some(1), true, 10);
        let (r, w) = current();
        let mut r = r.expect("generation 1's table");
        assert_eq!(r.lookup(4), None);
        assert_eq!(r.lookup(5), Some(50));
        assert_eq!(r.lookup(8), None);
        assert_eq!(r.lookup(9), Some(90));
        assert_eq!(r.lookup(10), None);
        let mut w = w.expect("a table to fill");
        w.push(3, 30);
        w.push(2, 20); // out of order: spoiled
        w.finish();

        // Generation 3 against 2: 2's table was spoiled, so none is read.
        prepare(3, Some(2), false, 10);
        let (r, w) = current();
        assert!(r.is_none() && w.is_none());
        // Against 1 (still complete, untouched): read.
        prepare(3, Some(1), false, 10);
        assert!(current().0.is_some());

        // A writer with more pages than its table has room for spoils it.
        prepare(4, None, true, 0);
        let (_, w) = current();
        let mut w = w.expect("a table to fill");
        for p in 0..5000 {
            w.push(p, 1);
        }
        w.finish();
        prepare(5, Some(4), false, 0);
        assert!(current().0.is_none(), "an overflowed table is not read");

        free();
        assert_eq!(scratch_ranges(), [(0, 0), (0, 0)]);
        assert!(current().0.is_none() && current().1.is_none());
    }
}
