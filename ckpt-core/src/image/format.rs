//! The fixed header of a process image file (`proc-<pid>.img`).
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `CKPTIMG\0` |
//! | 8 | 2 | format major (LE) |
//! | 10 | 2 | format minor (LE) |
//! | 12 | 4 | header length = 4096 |
//! | 16 | 8 | length of the data that follows the header |
//! | 24 | 4 | ELF machine (62 = x86_64) |
//! | 28 | 4 | page size |
//! | 32 | 4 | CRC-32C of bytes 0..32 |
//! | 36 | 4 | compression: 0 none, 1 zstd blocks (1.8) |
//! | 40 | 28 | with compression, its layout ([`super::compress::Layout`]) |
//! | 68 | 4028 | zero |
//!
//! Page data starts at offset 4096 and every run of pages is page-aligned in
//! the file, so restore can read straight into place. The manifest
//! (`proc-<pid>.json`) says which pages are where. In a compressed image
//! the offsets the manifest gives are those of the data before compression
//! (`docs/image-format.md`, "Compressed images").
//!
//! Versioning: the major changes on any incompatible change; a reader refuses
//! another major, and a newer minor than it knows.

use super::checksum::crc32c;
use super::compress::Layout;
use crate::error::ImageError;

/// Magic bytes at offset 0.
pub const MAGIC: &[u8; 8] = b"CKPTIMG\0";
/// Current format major version.
pub const FORMAT_MAJOR: u16 = 1;
/// Current format minor version.
/// 1.1 added incremental images (`base`, `inherited`); 1.2 saved files
/// (`files` in `generation.json`); 1.3 unix sockets (`socket` of an fd);
/// 1.4 the vDSO's functions (`vdso.symbols`) and each thread's `rip`, for
/// restarts on another kernel build; 1.5 POSIX timers (`posix_timers`);
/// 1.6 UDP datagrams queued in a socket (`messages` of an `inet` state);
/// 1.7 pseudo-terminals (`pty`, `ctty`); 1.8 compressed images; 1.9 the
/// fork advice of a region (`fork`: `MADV_DONTFORK`, `MADV_WIPEONFORK`).
pub const FORMAT_MINOR: u16 = 9;
/// Header length; data starts here.
pub const HEADER_LEN: u64 = 4096;
/// ELF machine number of x86_64.
pub const EM_X86_64: u32 = 62;
/// Page size the format assumes.
pub const PAGE_SIZE: u64 = 4096;

/// Decoded header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Format major.
    pub major: u16,
    /// Format minor.
    pub minor: u16,
    /// Bytes of page data after the header.
    pub data_len: u64,
    /// ELF machine.
    pub machine: u32,
    /// How the data is compressed; `None`: stored as it is.
    pub compressed: Option<Layout>,
}

impl Header {
    /// Bytes of data after the header once decompressed: what the
    /// manifest's offsets refer to.
    pub fn logical_len(&self) -> u64 {
        self.compressed.map_or(self.data_len, |z| z.logical_len)
    }
}

/// Bytes of the header a reader needs (the rest is zero).
pub const HEADER_USED: usize = 68;

/// Encode a header for `data_len` bytes of data stored as they are.
/// **Async-signal-safe.**
pub fn encode(data_len: u64) -> [u8; HEADER_USED] {
    let mut h = [0u8; HEADER_USED];
    h[0..8].copy_from_slice(MAGIC);
    h[8..10].copy_from_slice(&FORMAT_MAJOR.to_le_bytes());
    h[10..12].copy_from_slice(&FORMAT_MINOR.to_le_bytes());
    h[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
    h[16..24].copy_from_slice(&data_len.to_le_bytes());
    h[24..28].copy_from_slice(&EM_X86_64.to_le_bytes());
    h[28..32].copy_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
    let c = crc32c(&h[0..32]);
    h[32..36].copy_from_slice(&c.to_le_bytes());
    h
}

/// Encode a header for a compressed image whose file holds `data_len`
/// bytes after the header. **Async-signal-safe.**
pub fn encode_compressed(data_len: u64, z: &Layout) -> [u8; HEADER_USED] {
    let mut h = encode(data_len);
    z.encode(&mut h);
    h
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    let mut a = [0u8; 2];
    if let Some(s) = b.get(at..at + 2) {
        a.copy_from_slice(s);
    }
    u16::from_le_bytes(a)
}
/// A little-endian `u32` at `at` (0 past the end).
pub(crate) fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}
/// A little-endian `u64` at `at` (0 past the end).
pub(crate) fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        a.copy_from_slice(s);
    }
    u64::from_le_bytes(a)
}

/// Decode and validate a header; `file_len` is the image file's size.
pub fn decode(file: &str, bytes: &[u8], file_len: u64) -> Result<Header, ImageError> {
    let bad = |what: String| ImageError::Corrupt {
        file: file.to_string(),
        what,
    };
    if bytes.len() < 36 || file_len < HEADER_LEN {
        return Err(bad(format!(
            "file is {file_len} bytes, shorter than the {HEADER_LEN}-byte header (truncated)"
        )));
    }
    if bytes.get(0..8) != Some(&MAGIC[..]) {
        return Err(ImageError::NotAnImage {
            file: file.to_string(),
        });
    }
    let stored = le_u32(bytes, 32);
    let computed = bytes.get(0..32).map(crc32c).unwrap_or(0);
    if stored != computed {
        return Err(bad(format!(
            "header checksum mismatch (stored {stored:08x}, computed {computed:08x})"
        )));
    }
    let h = Header {
        major: le_u16(bytes, 8),
        minor: le_u16(bytes, 10),
        data_len: le_u64(bytes, 16),
        machine: le_u32(bytes, 24),
        compressed: None,
    };
    check_version(file, h.major, h.minor)?;
    if h.machine != EM_X86_64 {
        return Err(ImageError::ForeignArch {
            file: file.to_string(),
            machine: h.machine,
        });
    }
    if le_u32(bytes, 12) as u64 != HEADER_LEN || le_u32(bytes, 28) as u64 != PAGE_SIZE {
        return Err(bad("unsupported header length or page size".into()));
    }
    let want = HEADER_LEN
        .checked_add(h.data_len)
        .ok_or_else(|| bad("absurd data length".into()))?;
    if file_len != want {
        return Err(bad(format!(
            "file is {file_len} bytes but its header says {want} (truncated or appended to)"
        )));
    }
    let compressed = Layout::decode(bytes, file_len).map_err(bad)?;
    Ok(Header { compressed, ..h })
}

/// Refuse a format this build cannot read.
pub fn check_version(file: &str, major: u16, minor: u16) -> Result<(), ImageError> {
    if major != FORMAT_MAJOR || minor > FORMAT_MINOR {
        return Err(ImageError::Version {
            file: file.to_string(),
            major,
            minor,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(h: &[u8; HEADER_USED]) -> Vec<u8> {
        let mut v = h.to_vec();
        v.resize(4096, 0);
        v
    }

    #[test]
    fn round_trip() {
        let h = encode(8192);
        let d = decode("x", &full(&h), 4096 + 8192).unwrap();
        assert_eq!(
            d,
            Header {
                major: FORMAT_MAJOR,
                minor: FORMAT_MINOR,
                data_len: 8192,
                machine: EM_X86_64,
                compressed: None,
            }
        );
    }

    #[test]
    fn bad_magic() {
        let mut h = encode(0);
        h[0] = b'X';
        assert!(matches!(
            decode("x", &full(&h), 4096),
            Err(ImageError::NotAnImage { .. })
        ));
    }

    #[test]
    fn bad_checksum() {
        let mut h = encode(0);
        h[20] ^= 1;
        let e = decode("x", &full(&h), 4096).unwrap_err();
        assert!(e.to_string().contains("checksum"), "{e}");
    }

    #[test]
    fn newer_minor_and_other_major() {
        for (maj, min) in [
            (FORMAT_MAJOR, FORMAT_MINOR + 1),
            (FORMAT_MAJOR + 1, 0),
            (0, 0),
        ] {
            let mut h = encode(0);
            h[8..10].copy_from_slice(&maj.to_le_bytes());
            h[10..12].copy_from_slice(&min.to_le_bytes());
            let c = crc32c(&h[0..32]);
            h[32..36].copy_from_slice(&c.to_le_bytes());
            assert!(matches!(
                decode("x", &full(&h), 4096),
                Err(ImageError::Version { .. })
            ));
        }
    }

    #[test]
    fn truncated_and_oversized() {
        let h = encode(8192);
        assert!(decode("x", &full(&h), 4096 + 4096).is_err());
        assert!(decode("x", &full(&h), 4096 + 8192 + 1).is_err());
        assert!(decode("x", &h[..10], 10).is_err());
    }

    #[test]
    fn foreign_arch() {
        let mut h = encode(0);
        h[24..28].copy_from_slice(&183u32.to_le_bytes());
        let c = crc32c(&h[0..32]);
        h[32..36].copy_from_slice(&c.to_le_bytes());
        assert!(matches!(
            decode("x", &full(&h), 4096),
            Err(ImageError::ForeignArch { .. })
        ));
    }

    #[test]
    fn every_single_bit_flip_is_refused() {
        let good = full(&encode(8192));
        for bit in 0..36 * 8 {
            let mut h = good.clone();
            h[bit / 8] ^= 1 << (bit % 8);
            assert!(
                decode("x", &h, 4096 + 8192).is_err(),
                "flip of bit {bit} accepted"
            );
        }
    }

    #[test]
    fn random_headers_never_pass_or_panic() {
        let mut x = 0x5eed_0003u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..20_000 {
            let mut h = full(&encode(next() % (1 << 40)));
            // Damage a few bytes of the checked part, or the lengths only.
            for _ in 0..1 + next() % 3 {
                let at = (next() % 36) as usize;
                h[at] = next() as u8;
            }
            let len = match i % 3 {
                0 => next(),
                1 => u64::MAX,
                _ => 4096 + (next() % (1 << 40)),
            };
            let cut = (next() % 70) as usize;
            let bytes = if i % 5 == 0 { &h[..cut] } else { &h[..] };
            if let Ok(d) = decode("x", bytes, len) {
                // Only a header whose checksum matches can pass.
                assert_eq!(crc32c(&bytes[0..32]).to_le_bytes(), bytes[32..36]);
                assert_eq!(u128::from(len), 4096 + u128::from(d.data_len));
            }
        }
    }
}
