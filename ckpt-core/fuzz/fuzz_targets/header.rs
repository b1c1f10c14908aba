//! Fuzz target: see `ckpt-core/tests/untrusted/mod.rs` (`header`).
#![no_main]

#[path = "../../tests/untrusted/mod.rs"]
mod untrusted;

libfuzzer_sys::fuzz_target!(|data: &[u8]| untrusted::header(data));
