//! An mmap-backed growable byte buffer.
//!
//! **Async-signal-safe**: memory comes from `mmap`/`mremap`, never from the
//! C allocator, so it may be used while other threads are stopped holding
//! malloc locks. Growth failures are reported, never panicked on.

use super::raw::{self, Errno};

/// Bytes per `read` of smaps: below the size of any smaps record
/// ([`MmapBuf::read_smaps_fd`]).
pub const SEQ_READ: usize = 512;

/// A growable byte buffer backed by its own anonymous mapping.
pub struct MmapBuf {
    ptr: *mut u8,
    cap: usize,
    len: usize,
    /// Set when a write did not fit (growth failed); the content is then truncated.
    pub overflow: bool,
    /// Keep the mapping in a fork child (a copy-on-write snapshot reads it).
    inherit: bool,
}

impl MmapBuf {
    /// An empty buffer; nothing is mapped until the first write.
    pub const fn new() -> Self {
        MmapBuf {
            ptr: core::ptr::null_mut(),
            cap: 0,
            len: 0,
            overflow: false,
            inherit: false,
        }
    }

    /// Like [`MmapBuf::new`], but a `fork` child keeps a copy of the content
    /// (for data the stopped process prepares for its snapshot child).
    pub const fn new_inherited() -> Self {
        MmapBuf {
            ptr: core::ptr::null_mut(),
            cap: 0,
            len: 0,
            overflow: false,
            inherit: true,
        }
    }

    /// Bytes written so far.
    pub fn as_slice(&self) -> &[u8] {
        if self.ptr.is_null() {
            return &[];
        }
        // SAFETY: ptr is a live mapping of cap >= len initialised bytes owned by self.
        unsafe { core::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// Number of bytes written.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The address range of the backing mapping (to exclude it from images).
    pub fn mapping(&self) -> (usize, usize) {
        (self.ptr as usize, self.cap)
    }

    /// Forget the content, keep the mapping.
    pub fn clear(&mut self) {
        self.len = 0;
        self.overflow = false;
    }

    /// Make room for `extra` more bytes.
    pub fn reserve(&mut self, extra: usize) -> Result<(), Errno> {
        let need = self.len.checked_add(extra).ok_or(Errno(libc::ENOMEM))?;
        if need <= self.cap {
            return Ok(());
        }
        let mut cap = if self.cap == 0 { 64 * 1024 } else { self.cap };
        while cap < need {
            cap = cap.checked_mul(2).ok_or(Errno(libc::ENOMEM))?;
        }
        if self.ptr.is_null() {
            self.ptr = raw::mmap_anon(cap)?;
            // VM_DONTCOPY keeps the buffer out of fork children (a snapshot
            // child makes its own); VM_DONTDUMP marks buffers a fork child
            // must see. Either flag keeps the kernel from merging the buffer
            // with most of the program's anonymous mappings, but not with
            // one the program advised the same way: the image writer leaves
            // its buffers out by address range, never by maps line
            // (`procfs::MapsLine::outside`).
            let advice = if self.inherit {
                libc::MADV_DONTDUMP
            } else {
                libc::MADV_DONTFORK
            };
            // SAFETY: madvise on our own fresh mapping.
            let _ =
                unsafe { raw::syscall3(raw::nr::MADVISE, self.ptr as usize, cap, advice as usize) };
        } else {
            // SAFETY: the old mapping is owned by self and no reference into it outlives this call.
            self.ptr = unsafe { raw::mremap_maymove(self.ptr as usize, self.cap, cap) }?;
        }
        self.cap = cap;
        Ok(())
    }

    /// Append bytes.
    pub fn push(&mut self, b: &[u8]) -> Result<(), Errno> {
        self.reserve(b.len())?;
        // SAFETY: reserve made [len, len+b.len()) writable inside our mapping; b cannot overlap it.
        unsafe { core::ptr::copy_nonoverlapping(b.as_ptr(), self.ptr.add(self.len), b.len()) };
        self.len += b.len();
        Ok(())
    }

    /// `n` writable bytes after the content, to be filled in place and
    /// taken in with [`MmapBuf::commit`].
    pub fn spare(&mut self, n: usize) -> Result<&mut [u8], Errno> {
        self.reserve(n)?;
        // SAFETY: reserve made [len, len+n) writable inside our mapping; the
        // returned borrow of self keeps every other view away while it lives.
        Ok(unsafe { core::slice::from_raw_parts_mut(self.ptr.add(self.len), n) })
    }

    /// Take in the first `n` bytes of what [`MmapBuf::spare`] handed out.
    pub fn commit(&mut self, n: usize) {
        self.len = self.len.saturating_add(n).min(self.cap);
    }

    /// Keep only the first `len` bytes.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Overwrite bytes already written at `at` (no-op if out of range).
    pub fn overwrite(&mut self, at: usize, b: &[u8]) {
        if at.checked_add(b.len()).is_some_and(|e| e <= self.len) {
            // SAFETY: [at, at+b.len()) lies inside the initialised part of our mapping.
            unsafe { core::ptr::copy_nonoverlapping(b.as_ptr(), self.ptr.add(at), b.len()) };
        }
    }

    /// Append a JSON string literal (with quotes), escaping as needed.
    pub fn push_json_str(&mut self, s: &[u8]) -> Result<(), Errno> {
        self.push(b"\"")?;
        for &c in s {
            match c {
                b'"' => self.push(b"\\\"")?,
                b'\\' => self.push(b"\\\\")?,
                0..=0x1f | 0x7f..=0xff => {
                    // Non-ASCII and control bytes are escaped byte-wise as \u00XX
                    // so that any path round-trips; readers decode them back to bytes.
                    let hex = b"0123456789abcdef";
                    let e = [
                        b'\\',
                        b'u',
                        b'0',
                        b'0',
                        hex[(c >> 4) as usize],
                        hex[(c & 15) as usize],
                    ];
                    self.push(&e)?
                }
                _ => self.push(core::slice::from_ref(&c))?,
            }
        }
        self.push(b"\"")
    }

    /// Read a whole file (e.g. under /proc) into the buffer, replacing its content.
    pub fn read_file(&mut self, path: &[u8]) -> Result<(), Errno> {
        self.clear();
        let fd = raw::open(path, libc::O_RDONLY | libc::O_CLOEXEC, 0)?;
        let r = self.read_fd(fd);
        raw::close(fd);
        r
    }

    /// Read what is left of an open file into the buffer, replacing its
    /// content (the descriptor stays open).
    pub fn read_fd(&mut self, fd: i32) -> Result<(), Errno> {
        self.clear();
        self.append_fd(fd)
    }

    /// Append everything `fd` gives until its end (a pipe, a file).
    pub fn append_fd(&mut self, fd: i32) -> Result<(), Errno> {
        loop {
            self.reserve(64 * 1024)?;
            // SAFETY: reserve guarantees cap - len writable bytes at ptr+len.
            let n = unsafe { raw::read(fd, self.ptr.add(self.len), self.cap - self.len) };
            match n {
                Ok(0) => return Ok(()),
                Ok(n) => self.len += n,
                Err(Errno(libc::EINTR)) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Read `/proc/.../smaps` (open as `fd`) into the buffer, replacing
    /// its content, so that the kernel walks each mapping's pages once.
    ///
    /// The kernel makes smaps one mapping (record) at a time, walking the
    /// mapping's page tables for its counts. A `read` asking for more than
    /// the record made first makes the next one too, and when that one
    /// does not fit in the kernel's own buffer it is thrown away and made
    /// again for the next `read`: a 1 GiB mapping at that place is walked
    /// twice (about 13 ms each here). A request no larger than the
    /// smallest record (some 700 bytes) never makes a second record, so
    /// this reads [`SEQ_READ`] bytes at a time (docs/kernel.md §4).
    pub fn read_smaps_fd(&mut self, fd: i32) -> Result<(), Errno> {
        self.clear();
        loop {
            self.reserve(64 * 1024)?;
            let want = SEQ_READ.min(self.cap - self.len);
            // SAFETY: reserve guarantees cap - len >= want writable bytes at ptr+len.
            let n = unsafe { raw::read(fd, self.ptr.add(self.len), want) };
            match n {
                Ok(0) => return Ok(()),
                Ok(n) => self.len += n,
                Err(Errno(libc::EINTR)) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// [`MmapBuf::read_smaps_fd`] of the file at `path`.
    pub fn read_smaps(&mut self, path: &[u8]) -> Result<(), Errno> {
        let fd = raw::open(path, libc::O_RDONLY | libc::O_CLOEXEC, 0)?;
        let r = self.read_smaps_fd(fd);
        raw::close(fd);
        r
    }

    /// Release the mapping.
    pub fn free(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: we own the mapping and drop every view of it here.
            let _ = unsafe { raw::munmap(self.ptr as usize, self.cap) };
        }
        let inherit = self.inherit;
        *self = MmapBuf::new();
        self.inherit = inherit;
    }
}

impl Default for MmapBuf {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Write for MmapBuf {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        if self.push(s.as_bytes()).is_err() {
            self.overflow = true;
            return Err(core::fmt::Error);
        }
        Ok(())
    }
}

/// A fixed-capacity stack buffer implementing `fmt::Write` (truncates).
pub struct StackBuf<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> StackBuf<N> {
    /// Empty buffer.
    pub const fn new() -> Self {
        StackBuf {
            buf: [0; N],
            len: 0,
        }
    }
    /// Content.
    pub fn as_bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }
    /// Append bytes, truncating at capacity.
    pub fn push(&mut self, b: &[u8]) {
        for &c in b {
            if let Some(slot) = self.buf.get_mut(self.len) {
                *slot = c;
                self.len += 1;
            }
        }
    }
    /// Content plus a terminating NUL (for paths); truncates to fit.
    pub fn as_cstr(&mut self) -> &[u8] {
        if self.len >= N {
            self.len = N - 1;
        }
        if let Some(slot) = self.buf.get_mut(self.len) {
            *slot = 0;
        }
        self.buf.get(..self.len + 1).unwrap_or(&[])
    }
    /// Reset.
    pub fn clear(&mut self) {
        self.len = 0;
    }
}

impl<const N: usize> Default for StackBuf<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> core::fmt::Write for StackBuf<N> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        self.push(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The record headers of smaps text: one line per mapping.
    fn headers(text: &[u8]) -> Vec<Vec<u8>> {
        text.split(|&b| b == b'\n')
            .filter(|l| {
                l.split(|&b| b == b' ')
                    .next()
                    .is_some_and(|a| a.contains(&b'-'))
            })
            .map(<[u8]>::to_vec)
            .collect()
    }

    #[test]
    fn smaps_read_in_small_pieces_holds_every_mapping_once() {
        // Mappings enough for smaps to span many of the kernel's buffers.
        let maps: Vec<usize> = (0..64)
            .map(|i| {
                let prot = if i % 2 == 0 {
                    libc::PROT_READ
                } else {
                    libc::PROT_READ | libc::PROT_WRITE
                };
                // SAFETY: fresh anonymous mappings, unmapped below.
                let p = unsafe {
                    libc::mmap(
                        core::ptr::null_mut(),
                        4096 * 4,
                        prot,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                        -1,
                        0,
                    )
                };
                assert_ne!(p, libc::MAP_FAILED);
                p as usize
            })
            .collect();
        let mut small = MmapBuf::new();
        small.read_smaps(b"/proc/self/smaps\0").expect("smaps");
        let text = small.as_slice();
        let h = headers(text);
        for p in &maps {
            let start = format!("{p:x}-");
            assert_eq!(
                h.iter().filter(|l| l.starts_with(start.as_bytes())).count(),
                1,
                "mapping at {start} once"
            );
        }
        let mut sorted = h.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), h.len(), "no record twice");
        assert_eq!(
            text.split(|&b| b == b'\n')
                .filter(|l| l.starts_with(b"VmFlags:"))
                .count(),
            h.len(),
            "every record whole"
        );
        for p in maps {
            // SAFETY: unmapping what we mapped.
            unsafe { libc::munmap(p as *mut libc::c_void, 4096 * 4) };
        }
        small.free();
    }
}
