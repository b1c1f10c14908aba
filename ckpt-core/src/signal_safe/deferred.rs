//! Writes into the image that may wait until the job runs again.
//!
//! The bytes queued in sockets must be read while every process of the job
//! is stopped (they change as soon as it runs), but they need not reach
//! the image file then. In a snapshot child (a copy-on-write fork that
//! writes the image while the job runs again) they are peeked into this
//! buffer, their place in the image is fixed at once, and they are written
//! after the job was released ([`DeferredWrites::flush`]): the pause pays
//! for a copy into memory, not for the file system. In the stopped process
//! itself (no snapshot child) every write goes out at once.
//!
//! **Async-signal-safe**: [`MmapBuf`] memory and raw system calls only.

use super::buf::MmapBuf;
use super::raw::{self, Errno};

/// Beyond this many bytes held back, writes go out at once (a job with
/// gigabytes queued in its sockets does not double them in memory).
const HOLD_LIMIT: usize = 64 << 20;
const MADV_POPULATE_WRITE: usize = 23;
const MADV_HUGEPAGE: usize = 14;
const PAGE: usize = 4096;
/// The first mapping's size (address space only until used).
const FIRST_ROOM: usize = 4 << 20;

/// Bytes bound for known offsets of one file, written now or later.
pub struct DeferredWrites {
    fd: i32,
    defer: bool,
    /// The bytes, back to back.
    data: MmapBuf,
    /// `(offset in the file, length)` of each run of `data`, as 16 bytes.
    index: MmapBuf,
}

impl DeferredWrites {
    /// Writes into `fd`; held back until [`DeferredWrites::flush`] when
    /// `defer`, else written at once.
    pub const fn new(fd: i32, defer: bool) -> Self {
        DeferredWrites {
            fd,
            defer,
            data: MmapBuf::new(),
            index: MmapBuf::new(),
        }
    }

    /// `n` writable bytes to fill (a peek reads straight into them), then
    /// hand over with [`DeferredWrites::commit`].
    pub fn spare(&mut self, n: usize) -> Result<&mut [u8], Errno> {
        let before = self.data.mapping();
        // Room for a few MiB at once: growing moves the mapping (mremap
        // keeps its pages, but each move is a call while the job is stopped).
        self.data.reserve(n.max(FIRST_ROOM))?;
        let (ptr, cap) = self.data.mapping();
        if ptr != before.0 {
            // A new mapping: in huge pages where the system gives them on
            // request.
            // SAFETY: madvise on our own mapping [ptr, ptr+cap).
            let _ = unsafe { raw::syscall3(raw::nr::MADVISE, ptr, cap, MADV_HUGEPAGE) };
        }
        // Fault in the pages about to be filled with one call rather than a
        // page fault per page while the job is stopped (MADV_POPULATE_WRITE,
        // Linux 5.14; harmless where unknown): only those, not the whole
        // mapping (pages already there cost a walk, pages never used cost
        // their zeroing).
        let from = (ptr + self.data.len()) & !(PAGE - 1);
        let to = (ptr + self.data.len() + n).div_ceil(PAGE) * PAGE;
        if to > from {
            // SAFETY: madvise on a page-aligned part of our own mapping.
            let _ =
                unsafe { raw::syscall3(raw::nr::MADVISE, from, to - from, MADV_POPULATE_WRITE) };
        }
        self.data.spare(n)
    }

    /// The first `len` bytes of the last [`DeferredWrites::spare`] go to
    /// `off` in the file.
    pub fn commit(&mut self, len: usize, off: u64) -> Result<(), Errno> {
        self.data.commit(len);
        let mut rec = [0u8; 16];
        rec[..8].copy_from_slice(&off.to_le_bytes());
        rec[8..].copy_from_slice(&(len as u64).to_le_bytes());
        self.index.push(&rec)?;
        if !self.defer || self.data.len() > HOLD_LIMIT {
            self.flush()?;
        }
        Ok(())
    }

    /// Copy `b` in, bound for `off`.
    pub fn put(&mut self, b: &[u8], off: u64) -> Result<(), Errno> {
        self.spare(b.len())?.copy_from_slice(b);
        self.commit(b.len(), off)
    }

    /// Where the held-back bytes end, for [`DeferredWrites::rollback`].
    pub fn mark(&self) -> (usize, usize) {
        (self.data.len(), self.index.len())
    }

    /// Forget what was held back since `mark` (a capture that failed half
    /// way gives its place in the image to the next one). Bytes already
    /// written at once stay, to be overwritten by the next.
    pub fn rollback(&mut self, mark: (usize, usize)) {
        self.data.truncate(mark.0);
        self.index.truncate(mark.1);
    }

    /// Write everything held back, in order.
    pub fn flush(&mut self) -> Result<(), Errno> {
        let (data, index) = (self.data.as_slice(), self.index.as_slice());
        let mut at = 0usize;
        let mut r = Ok(());
        for rec in index.chunks_exact(16) {
            let off = u64::from_le_bytes(rec[..8].try_into().unwrap_or([0; 8]));
            let len = u64::from_le_bytes(rec[8..].try_into().unwrap_or([0; 8])) as usize;
            let end = at.saturating_add(len).min(data.len());
            if let Err(e) = write_all_at(self.fd, data.get(at..end).unwrap_or(&[]), off) {
                r = Err(e);
                break;
            }
            at = end;
        }
        self.data.clear();
        self.index.clear();
        r
    }

    /// Release the memory (anything not flushed is dropped).
    pub fn free(&mut self) {
        self.data.free();
        self.index.free();
    }
}

impl Drop for DeferredWrites {
    fn drop(&mut self) {
        self.free();
    }
}

fn write_all_at(fd: i32, mut b: &[u8], mut off: u64) -> Result<(), Errno> {
    while !b.is_empty() {
        match raw::pwrite(fd, b, off) {
            Ok(0) => return Err(Errno(libc::EIO)),
            Ok(n) => {
                b = b.get(n..).unwrap_or(&[]);
                off += n as u64;
            }
            Err(Errno(libc::EINTR)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> (i32, std::path::PathBuf) {
        let p = std::env::temp_dir().join(format!(
            "ckpt-deferred-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .expect("temp file");
        (std::os::fd::IntoRawFd::into_raw_fd(f), p)
    }

    #[test]
    fn held_back_until_flushed_then_each_run_lands_at_its_offset() {
        let (fd, p) = file();
        let mut w = DeferredWrites::new(fd, true);
        w.put(b"world", 8).expect("put");
        let s = w.spare(100).expect("spare");
        s[..5].copy_from_slice(b"hello");
        w.commit(5, 0).expect("commit");
        assert_eq!(
            std::fs::read(&p).expect("read").len(),
            0,
            "nothing written before the flush"
        );
        w.flush().expect("flush");
        let got = std::fs::read(&p).expect("read");
        assert_eq!(&got[..5], b"hello");
        assert_eq!(&got[8..13], b"world");
        assert_eq!(got.len(), 13);
        drop(w);
        // SAFETY: closing the descriptor this test opened.
        unsafe { libc::close(fd) };
        let _ = std::fs::remove_file(p);
    }

    #[test]
    fn a_rolled_back_capture_is_never_written() {
        let (fd, p) = file();
        let mut w = DeferredWrites::new(fd, true);
        w.put(b"kept", 0).expect("put");
        let m = w.mark();
        w.put(b"dropped", 100).expect("put");
        w.rollback(m);
        w.put(b"next", 4).expect("put");
        w.flush().expect("flush");
        assert_eq!(std::fs::read(&p).expect("read"), b"keptnext");
        drop(w);
        // SAFETY: closing the descriptor this test opened.
        unsafe { libc::close(fd) };
        let _ = std::fs::remove_file(p);
    }

    #[test]
    fn not_deferred_writes_at_once() {
        let (fd, p) = file();
        let mut w = DeferredWrites::new(fd, false);
        w.put(b"abc", 4096).expect("put");
        assert_eq!(&std::fs::read(&p).expect("read")[4096..], b"abc");
        drop(w);
        // SAFETY: closing the descriptor this test opened.
        unsafe { libc::close(fd) };
        let _ = std::fs::remove_file(p);
    }
}
