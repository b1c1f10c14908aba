//! Replays the fuzz corpus and the regression inputs (`ckpt-core/fuzz/corpus/
//! <target>/*`) through the same checks as the fuzz targets, so a plain
//! `cargo test` catches a parser regression on any input the fuzzer kept.

mod untrusted;

use std::path::Path;

fn replay(target: &str, f: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut n = 0;
    let rd = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for e in rd.flatten() {
        let data =
            std::fs::read(e.path()).unwrap_or_else(|err| panic!("{}: {err}", e.path().display()));
        let r = std::panic::catch_unwind(|| f(&data));
        assert!(r.is_ok(), "{} fails its checks", e.path().display());
        n += 1;
    }
    n
}

#[test]
fn header_corpus() {
    assert!(replay("header", untrusted::header) > 0);
}

#[test]
fn manifest_corpus() {
    assert!(replay("manifest", untrusted::manifest) > 0);
}

#[test]
fn record_corpus() {
    assert!(replay("record", untrusted::record) > 0);
}
