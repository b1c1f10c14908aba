//! CRC-32C (Castagnoli) checksums of image data and manifests.
//!
//! Uses the SSE4.2 `crc32` instruction when the CPU has it (every x86_64 CPU
//! since 2008) and a table-free bitwise fallback otherwise. **Async-signal-safe**
//! (pure computation, no allocation).

/// Incremental CRC-32C state.
#[derive(Clone, Copy, Debug)]
pub struct Crc32c(u32);

impl Default for Crc32c {
    fn default() -> Self {
        Self::new()
    }
}

impl Crc32c {
    /// Fresh state.
    pub const fn new() -> Self {
        Crc32c(!0)
    }

    /// Feed bytes.
    pub fn update(&mut self, data: &[u8]) {
        if std::arch::is_x86_feature_detected!("sse4.2") {
            // SAFETY: the CPU supports SSE4.2, checked just above.
            self.0 = unsafe { update_hw(self.0, data) };
        } else {
            self.0 = update_sw(self.0, data);
        }
    }

    /// Feed `len` bytes starting at a raw address of this process.
    ///
    /// # Safety
    /// `[addr, addr+len)` must be mapped readable and not concurrently written.
    pub unsafe fn update_raw(&mut self, addr: usize, len: usize) {
        // SAFETY: forwarded contract.
        let s = unsafe { core::slice::from_raw_parts(addr as *const u8, len) };
        self.update(s);
    }

    /// The checksum of everything fed so far.
    pub fn finish(self) -> u32 {
        !self.0
    }
}

/// One-shot CRC-32C of a slice.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut c = Crc32c::new();
    c.update(data);
    c.finish()
}

#[target_feature(enable = "sse4.2")]
unsafe fn update_hw(mut crc: u32, data: &[u8]) -> u32 {
    use core::arch::x86_64::{_mm_crc32_u8, _mm_crc32_u64};
    let mut c64 = u64::from(crc);
    let (chunks, rest) = data.as_chunks::<8>();
    for ch in chunks {
        c64 = _mm_crc32_u64(c64, u64::from_le_bytes(*ch));
    }
    crc = c64 as u32;
    for &b in rest {
        crc = _mm_crc32_u8(crc, b);
    }
    crc
}

fn update_sw(mut crc: u32, data: &[u8]) -> u32 {
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0x82F6_3B78 & mask);
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector() {
        // The standard check value of CRC-32C.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(!update_sw(!0, b"123456789"), 0xE306_9283);
    }

    #[test]
    fn incremental_equals_oneshot() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + 3) as u8).collect();
        let mut c = Crc32c::new();
        c.update(&data[..3333]);
        c.update(&data[3333..]);
        assert_eq!(c.finish(), crc32c(&data));
        assert_eq!(!update_sw(!0, &data), crc32c(&data));
    }
}
