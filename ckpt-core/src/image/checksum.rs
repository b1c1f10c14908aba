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
    /// Append a 4 KiB page whose own register [`page_register`] computed:
    /// the state becomes that of having fed the page itself (the register
    /// of `A‖B` is `shift(reg(A), |B|) ^ reg₀(B)`). Lets an image's checksum
    /// take a page it does not read (an unchanged page of an incremental
    /// image) from the register recorded when it was last read.
    pub fn append_page(&mut self, reg0: u32) {
        self.0 = SHIFT_PAGE.apply(self.0) ^ reg0;
    }
}

/// Bytes in a page, for [`page_register`] and [`Crc32c::append_page`].
pub const PAGE_BYTES: usize = 4096;

/// The CRC-32C register after feeding one 4 KiB page to a register of 0
/// (no initial or final inversion): what [`Crc32c::append_page`] takes.
pub fn page_register(page: &[u8; PAGE_BYTES]) -> u32 {
    if std::arch::is_x86_feature_detected!("sse4.2") {
        // SAFETY: the CPU supports SSE4.2, checked just above.
        unsafe { page_register_hw(page) }
    } else {
        update_sw(0, page)
    }
}

/// Three streams of `PAGE_STREAM` bytes, then the last 16 bytes.
const PAGE_STREAM: usize = 1360;
const SHIFT_PAGE: MulTable = MulTable::new(shift_bytes(PAGE_BYTES));
const SHIFT_P1: MulTable = MulTable::new(shift_bytes(PAGE_STREAM));
const SHIFT_P2: MulTable = MulTable::new(shift_bytes(2 * PAGE_STREAM));

/// Multiplication by a constant modulo P through byte tables (it is linear
/// in the other factor): four lookups instead of up to 32 shift steps.
struct MulTable([[u32; 256]; 4]);

impl MulTable {
    const fn new(k: u32) -> Self {
        let mut t = [[0u32; 256]; 4];
        let mut byte = 0;
        while byte < 4 {
            let mut v = 0;
            while v < 256 {
                t[byte][v] = multmodp(k, (v as u32) << (8 * byte));
                v += 1;
            }
            byte += 1;
        }
        MulTable(t)
    }

    fn apply(&self, b: u32) -> u32 {
        let [t0, t1, t2, t3] = &self.0;
        let [b0, b1, b2, b3] = b.to_le_bytes();
        t0[b0 as usize] ^ t1[b1 as usize] ^ t2[b2 as usize] ^ t3[b3 as usize]
    }
}

#[target_feature(enable = "sse4.2")]
unsafe fn page_register_hw(page: &[u8; PAGE_BYTES]) -> u32 {
    use core::arch::x86_64::_mm_crc32_u64;
    let (words, _) = page.as_chunks::<8>();
    let w = |i: usize| words.get(i).map_or(0, |c| u64::from_le_bytes(*c));
    const N: usize = PAGE_STREAM / 8;
    let (mut c0, mut c1, mut c2) = (0u64, 0u64, 0u64);
    for i in 0..N {
        c0 = _mm_crc32_u64(c0, w(i));
        c1 = _mm_crc32_u64(c1, w(N + i));
        c2 = _mm_crc32_u64(c2, w(2 * N + i));
    }
    let mut c = u64::from(SHIFT_P2.apply(c0 as u32) ^ SHIFT_P1.apply(c1 as u32) ^ c2 as u32);
    for i in 3 * N..PAGE_BYTES / 8 {
        c = _mm_crc32_u64(c, w(i));
    }
    c as u32
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

    /// `n` pseudo-random bytes (xorshift64 from `seed`).
    fn noise(n: usize, mut x: u64) -> Vec<u8> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn known_vector() {
        // The standard check value of CRC-32C.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(!update_sw(!0, b"123456789"), 0xE306_9283);
    }

    #[test]
    fn three_streams_equal_the_bitwise_crc() {
        let data = noise(5 * STREAM + 333, 0x1234_5678_9abc_def0);
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
    fn pages_appended_by_register_equal_the_crc_of_their_bytes() {
        let data = noise(3 * PAGE_BYTES + 100, 0x9e37_79b9_7f4a_7c15);
        let page = |i: usize| -> &[u8; PAGE_BYTES] {
            data[i * PAGE_BYTES..(i + 1) * PAGE_BYTES]
                .try_into()
                .unwrap()
        };
        for i in 0..3 {
            assert_eq!(page_register(page(i)), update_sw(0, page(i)), "page {i}");
        }
        // Bytes, then pages by register, then bytes again.
        let mut c = Crc32c::new();
        c.update(&data[3 * PAGE_BYTES..]);
        c.append_page(page_register(page(0)));
        c.append_page(page_register(page(1)));
        c.update(page(2));
        let mut whole = data[3 * PAGE_BYTES..].to_vec();
        whole.extend_from_slice(&data[..3 * PAGE_BYTES]);
        assert_eq!(c.finish(), crc32c(&whole));
        for k in [0u32, 1, 0x8000_0000, 0xdead_beef] {
            assert_eq!(SHIFT_PAGE.apply(k), multmodp(shift_bytes(PAGE_BYTES), k));
        }
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
