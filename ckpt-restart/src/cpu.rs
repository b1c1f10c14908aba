//! What CPU an image needs, against the CPU of the restart.
//!
//! A process's libraries choose code paths once, for the CPU they start on
//! (glibc's `memcpy` with AVX2 or AVX-512, numpy's kernels): restored on a
//! CPU without one of those features it would die of SIGILL at some later
//! moment. The capture records CPUID leaf 1 (ECX, EDX) and leaf 7 (EBX,
//! ECX) and the XSAVE components the kernel enabled (XCR0); a restart
//! refuses a CPU that lacks a recorded feature or component, naming it, and
//! `ckpt status` prints what the newest image needs so that an admin can
//! choose nodes (`--constraint`). (`docs/kernel.md` §11.)

use ckpt::image::manifest::CpuInfo;

/// Named CPUID bits: (word of `CpuInfo::features`, bit, name).
const FEATURES: &[(usize, u32, &str)] = &[
    (0, 0, "SSE3"),
    (0, 1, "PCLMULQDQ"),
    (0, 9, "SSSE3"),
    (0, 12, "FMA"),
    (0, 13, "CMPXCHG16B"),
    (0, 19, "SSE4.1"),
    (0, 20, "SSE4.2"),
    (0, 22, "MOVBE"),
    (0, 23, "POPCNT"),
    (0, 25, "AES"),
    (0, 26, "XSAVE"),
    (0, 28, "AVX"),
    (0, 29, "F16C"),
    (0, 30, "RDRAND"),
    (1, 25, "SSE"),
    (1, 26, "SSE2"),
    (2, 3, "BMI1"),
    (2, 5, "AVX2"),
    (2, 8, "BMI2"),
    (2, 16, "AVX512F"),
    (2, 17, "AVX512DQ"),
    (2, 18, "RDSEED"),
    (2, 19, "ADX"),
    (2, 21, "AVX512IFMA"),
    (2, 28, "AVX512CD"),
    (2, 29, "SHA"),
    (2, 30, "AVX512BW"),
    (2, 31, "AVX512VL"),
    (3, 1, "AVX512VBMI"),
    (3, 6, "AVX512VBMI2"),
    (3, 8, "GFNI"),
    (3, 9, "VAES"),
    (3, 10, "VPCLMULQDQ"),
    (3, 11, "AVX512VNNI"),
    (3, 12, "AVX512BITALG"),
    (3, 14, "AVX512VPOPCNTDQ"),
];

/// Named XCR0 bits (XSAVE state components).
const XSTATE: &[(u32, &str)] = &[
    (1, "SSE state"),
    (2, "AVX state"),
    (5, "AVX-512 opmask state"),
    (6, "AVX-512 upper ZMM state"),
    (7, "AVX-512 high ZMM state"),
    (9, "PKRU state"),
    (17, "AMX tile configuration"),
    (18, "AMX tile data"),
];

const WORDS: [&str; 4] = ["CPUID.1:ECX", "CPUID.1:EDX", "CPUID.7:EBX", "CPUID.7:ECX"];

/// The CPU this process runs on, as the capture records it.
pub fn current() -> CpuInfo {
    CpuInfo::current()
}

/// What `need` has that `have` lacks, by name (unnamed bits as
/// `CPUID.7:EBX bit 4`, `XSAVE component 3`).
pub fn missing(need: &CpuInfo, have: &CpuInfo) -> Vec<String> {
    let mut out = Vec::new();
    for (w, name) in WORDS.iter().enumerate() {
        let lack = need.features[w] & !have.features[w];
        for bit in 0..32 {
            if lack & (1 << bit) != 0 {
                out.push(
                    FEATURES
                        .iter()
                        .find(|(fw, fb, _)| *fw == w && *fb == bit)
                        .map_or_else(|| format!("{name} bit {bit}"), |(_, _, n)| (*n).to_owned()),
                );
            }
        }
    }
    // x87 state (bit 0) is always there; a zero XCR0 means "not recorded".
    let lack = if need.xcr0 == 0 {
        0
    } else {
        need.xcr0 & !have.xcr0 & !1
    };
    for bit in 1..64 {
        if lack & (1 << bit) != 0 {
            out.push(XSTATE.iter().find(|(b, _)| *b == bit).map_or_else(
                || format!("XSAVE component {bit}"),
                |(_, n)| (*n).to_owned(),
            ));
        }
    }
    out
}

/// The named features and XSAVE components `need` has (for `ckpt status`).
pub fn named(need: &CpuInfo) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = FEATURES
        .iter()
        .filter(|(w, b, _)| need.features.get(*w).is_some_and(|f| f & (1 << b) != 0))
        .map(|(_, _, n)| *n)
        .collect();
    out.extend(
        XSTATE
            .iter()
            .filter(|(b, _)| need.xcr0 & (1 << b) != 0)
            .map(|(_, n)| *n),
    );
    out
}

/// The restart's refusal when this CPU lacks something the image needs.
pub fn check(need: &CpuInfo) -> Result<(), String> {
    let lack = missing(need, &current());
    if lack.is_empty() {
        return Ok(());
    }
    Err(format!(
        "this CPU lacks {} that the program was checkpointed with ({}); its libraries chose \
         code paths for the CPU it started on, so it would crash here: restart on a node \
         with that CPU type (`ckpt status` lists what the checkpoint needs; Slurm: \
         --constraint)",
        if lack.len() == 1 {
            "a feature"
        } else {
            "features"
        },
        lack.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu(features: [u32; 4], xcr0: u64) -> CpuInfo {
        CpuInfo { features, xcr0 }
    }

    #[test]
    fn same_or_larger_cpu_lacks_nothing() {
        let now = current();
        assert!(missing(&now, &now).is_empty());
        assert!(check(&now).is_ok());
        let smaller = cpu([now.features[0] & 1, 0, 0, 0], now.xcr0 & 3);
        assert!(missing(&smaller, &now).is_empty());
    }

    #[test]
    fn missing_features_and_state_are_named() {
        let have = cpu([1 << 28, 1 << 26, 1 << 5, 0], 0b111);
        let need = cpu(
            [1 << 28, 1 << 26, (1 << 5) | (1 << 16) | (1 << 4), 0],
            0b1110_0111,
        );
        let lack = missing(&need, &have);
        assert_eq!(
            lack,
            vec![
                "CPUID.7:EBX bit 4",
                "AVX512F",
                "AVX-512 opmask state",
                "AVX-512 upper ZMM state",
                "AVX-512 high ZMM state"
            ]
        );
        // An image without a recorded XCR0 (zero) is checked on CPUID only.
        assert!(missing(&cpu([0; 4], 0), &cpu([0; 4], 0b11)).is_empty());
    }

    #[test]
    fn refusal_says_which_and_what_to_do() {
        let mut need = current();
        need.features[2] |= 1 << 16;
        need.xcr0 |= 1 << 17;
        let have = current();
        if have.features[2] & (1 << 16) != 0 {
            return; // this CPU has AVX-512: nothing to refuse here
        }
        let e = check(&need).expect_err("AVX512F is missing here");
        assert!(e.contains("AVX512F") && e.contains("--constraint"), "{e}");
    }

    #[test]
    fn named_lists_what_an_image_needs() {
        let n = named(&cpu([1 << 28, 1 << 26, 1 << 5, 0], 0b111));
        assert_eq!(n, vec!["AVX", "SSE2", "AVX2", "SSE state", "AVX state"]);
    }
}
