//! Fuzz target: see `ckpt-core/tests/untrusted/mod.rs` (`manifest`).
#![no_main]

#[path = "../../tests/untrusted/mod.rs"]
mod untrusted;

libfuzzer_sys::fuzz_target!(|data: &[u8]| untrusted::manifest(data));
