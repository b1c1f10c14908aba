//! Paths in manifests: the writer escapes every non-ASCII byte as `\u00XX`,
//! so each char of the decoded string is one byte of the original path.

/// The original bytes of a manifest path.
pub fn name_bytes(s: &str) -> Vec<u8> {
    s.chars()
        .map(|c| {
            if (c as u32) < 256 {
                c as u32 as u8
            } else {
                b'?'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip() {
        let raw = b"/tmp/caf\xc3\xa9 \"x\"";
        let mut b = ckpt::signal_safe::buf::MmapBuf::new();
        b.push_json_str(raw).unwrap();
        let s: String = serde_json::from_slice(b.as_slice()).unwrap();
        assert_eq!(name_bytes(&s), raw.to_vec());
    }
}
