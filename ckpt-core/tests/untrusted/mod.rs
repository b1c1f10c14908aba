//! One untrusted input through the parsers `ckpt restart` uses, with checks
//! that whatever they accept is within bounds. Shared by the fuzz targets
//! (`ckpt-core/fuzz/fuzz_targets/*.rs`) and the corpus replay test
//! (`ckpt-core/tests/corpus.rs`), so every input the fuzzer keeps is replayed
//! by a plain `cargo test`.
//!
//! Input layouts: `header` = 8 bytes of file length (LE) + header bytes;
//! `manifest` = 8 bytes of data length (LE) + manifest JSON; `record` =
//! generation.json bytes.

#![allow(dead_code)]

use ckpt::image::format;
use ckpt::image::generation::{parse_manifest, parse_record, validate_manifest};

const TASK_SIZE: u128 = 0x7fff_ffff_f000;

fn split_len(data: &[u8]) -> (u64, &[u8]) {
    let mut n = [0u8; 8];
    let k = data.len().min(8);
    n[..k].copy_from_slice(&data[..k]);
    (u64::from_le_bytes(n), &data[k..])
}

/// A process image header.
pub fn header(data: &[u8]) {
    let (file_len, bytes) = split_len(data);
    if let Ok(h) = format::decode("fuzz", bytes, file_len) {
        assert!(format::check_version("x", h.major, h.minor).is_ok());
        assert_eq!(h.machine, format::EM_X86_64);
        assert_eq!(
            u128::from(file_len),
            u128::from(format::HEADER_LEN) + u128::from(h.data_len)
        );
        assert_eq!(&bytes[..8], format::MAGIC);
    }
}

/// A process manifest checked against a data file of the given length.
pub fn manifest(data: &[u8]) {
    let (data_len, json) = split_len(data);
    let Ok(mut m) = parse_manifest("fuzz", json) else {
        return;
    };
    // As load_generation does.
    m.regions.sort_by_key(|r| r.start);
    if validate_manifest("fuzz", &m, data_len).is_err() {
        return;
    }
    // Accepted: recheck every bound without the validator's arithmetic.
    let page = u128::from(format::PAGE_SIZE);
    let file_end = u128::from(format::HEADER_LEN) + u128::from(data_len);
    let mut prev_end = 0u128;
    for r in &m.regions {
        let (s, e) = (u128::from(r.start), u128::from(r.end));
        assert!(s >= 4096 && s < e && e <= TASK_SIZE && s % page == 0 && e % page == 0);
        assert!(s >= prev_end, "overlapping regions accepted");
        prev_end = e;
        let pages = (e - s) / page;
        let mut total = 0u128;
        for run in &r.runs {
            assert!(
                u128::from(run[0]) + u128::from(run[1]) <= pages,
                "run outside region"
            );
            total += u128::from(run[1]);
        }
        let off = u128::from(r.data_offset);
        assert!(off >= u128::from(format::HEADER_LEN));
        assert!(
            off + total * page <= file_end,
            "region data outside the file"
        );
    }
    for f in &m.fds {
        if let Some([off, len]) = f.pipe_data {
            assert!(u128::from(off) + u128::from(len) <= file_end);
        }
    }
    assert!(!m.threads.is_empty());
    for t in &m.threads {
        let c = u128::from(t.ucontext);
        assert!(
            m.regions
                .iter()
                .any(|r| c >= u128::from(r.start) && c + 1024 <= u128::from(r.end)),
            "thread context outside saved memory accepted"
        );
    }
}

/// A generation record.
pub fn record(data: &[u8]) {
    if let Ok(r) = parse_record("fuzz", data) {
        assert!(format::check_version("x", r.version[0], r.version[1]).is_ok());
    }
}
