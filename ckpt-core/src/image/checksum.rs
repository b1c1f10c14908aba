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

    /// The state after some bytes, to go on from later ([`Crc32c::resume`]).
    pub fn state(self) -> u32 {
        self.0
    }

    /// Go on from a state that [`Crc32c::state`] returned.
    pub const fn resume(state: u32) -> Self {
        Crc32c(state)
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

/// Bytes per stream of the three-way hardware CRC.
const STREAM: usize = 4096;

/// `a · b mod P` in the bit-reflected representation of CRC-32C (`x^0` is
/// the top bit). **Async-signal-safe.**
const fn multmodp(a: u32, mut b: u32) -> u32 {
    let mut m: u32 = 1 << 31;
    let mut p: u32 = 0;
    loop {
        if a & m != 0 {
            p ^= b;
            if a & (m - 1) == 0 {
                break;
            }
        }
        m >>= 1;
        b = if b & 1 != 0 {
            (b >> 1) ^ 0x82F6_3B78
        } else {
            b >> 1
        };
    }
    p
}

/// `x^(8n) mod P`: multiplying a CRC register by it appends `n` zero bytes.
const fn shift_bytes(n: usize) -> u32 {
    let mut result: u32 = 1 << 31; // x^0
    let mut square: u32 = 1 << 30; // x^1
    let mut e = n * 8;
    while e > 0 {
        if e & 1 != 0 {
            result = multmodp(square, result);
        }
        square = multmodp(square, square);
        e >>= 1;
    }
    result
}

const SHIFT_1: u32 = shift_bytes(STREAM);
const SHIFT_2: u32 = shift_bytes(2 * STREAM);

/// The `crc32` instruction has a latency of three cycles but a throughput
/// of one per cycle: three independent streams over consecutive blocks,
/// combined by shifting the first two over the bytes that follow them
/// (the register of `A‖B` is `shift(reg(A), |B|) ^ reg₀(B)`), run about
/// three times as fast as one stream. `restorer.c` does the same.
#[target_feature(enable = "sse4.2")]
unsafe fn update_hw(mut crc: u32, mut data: &[u8]) -> u32 {
    use core::arch::x86_64::{_mm_crc32_u8, _mm_crc32_u64};
    let word = |b: &[u8], i: usize| {
        let mut w = [0u8; 8];
        if let Some(s) = b.get(i..i + 8) {
            w.copy_from_slice(s);
        }
        u64::from_le_bytes(w)
    };
    while data.len() >= 3 * STREAM {
        let (a, rest) = data.split_at(STREAM);
        let (b, rest) = rest.split_at(STREAM);
        let (c, rest) = rest.split_at(STREAM);
        let (mut c0, mut c1, mut c2) = (u64::from(crc), 0u64, 0u64);
        let mut i = 0;
        while i < STREAM {
            c0 = _mm_crc32_u64(c0, word(a, i));
            c1 = _mm_crc32_u64(c1, word(b, i));
            c2 = _mm_crc32_u64(c2, word(c, i));
            i += 8;
        }
        crc = multmodp(SHIFT_2, c0 as u32) ^ multmodp(SHIFT_1, c1 as u32) ^ c2 as u32;
        data = rest;
    }
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
    fn three_streams_equal_the_bitwise_crc() {
        let mut x = 0x1234_5678_9abc_def0u64;
        let data: Vec<u8> = (0..5 * STREAM + 333)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        for len in [
            0,
            1,
            7,
            3 * STREAM - 1,
            3 * STREAM,
            3 * STREAM + 9,
            data.len(),
        ] {
            let d = &data[..len];
            assert_eq!(crc32c(d), !update_sw(!0, d), "length {len}");
        }
        assert_eq!(
            multmodp(1 << 31, 0xdead_beef),
            0xdead_beef,
            "x^0 is the identity"
        );
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
