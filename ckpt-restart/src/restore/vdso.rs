//! Restarting on another kernel build: the new kernel's vDSO goes near the
//! old one's address, and the old address range gets a jump table to it
//! ([`ckpt::objects::vdso`]; docs/kernel.md, "The vDSO on another kernel").
//!
//! `CKPT_VDSO_REDIRECT=1` takes this path on the same kernel build too (the
//! C/R suite's `vdso_moved` mode runs programs through it).

use std::sync::atomic::{AtomicBool, Ordering};

use ckpt::image::manifest::ProcessManifest;
use ckpt::objects::vdso;

/// Where the new vDSO block goes and what fills the old vDSO's range.
pub struct Redirect {
    /// Start of the new block (its `[vvar]`: `ARCH_MAP_VDSO_64`'s argument).
    pub vvar: u64,
    /// Where the new `[vdso]` will be.
    pub vdso: u64,
    /// The old range's contents (`m.vdso.vdso_len` bytes).
    pub table: Vec<u8>,
}

/// This kernel's vDSO block: (start, start of `[vdso]`, end) and the
/// vDSO's functions.
struct Block {
    start: u64,
    vdso: u64,
    end: u64,
    functions: Vec<(String, u64)>,
}

fn own_block() -> Result<Block, String> {
    let (vdso, elf) = vdso::own().ok_or("this process has no vDSO")?;
    let functions =
        vdso::functions(elf).ok_or("this kernel's vDSO has no readable symbol table")?;
    let maps = super::blob::own_maps().map_err(|e| format!("/proc/self/maps: {e}"))?;
    // The vDSO block is [vvar] (and [vvar_vclock] on newer kernels) right
    // below [vdso].
    let mut start = vdso;
    while let Some((s, ..)) = maps
        .iter()
        .find(|(_, e, n)| *e == start && n.starts_with(b"[vvar"))
    {
        start = *s;
    }
    Ok(Block {
        start,
        vdso,
        end: vdso + elf.len() as u64,
        functions,
    })
}

fn forced() -> bool {
    std::env::var_os("CKPT_VDSO_REDIRECT").is_some_and(|v| v == "1")
}

/// Whether this restart redirects the process's vDSO.
pub fn wanted(m: &ProcessManifest) -> bool {
    if m.vdso.vdso == 0 {
        return false;
    }
    forced() || current_crc() != Some(m.vdso.crc)
}

fn current_crc() -> Option<u32> {
    let (_, elf) = vdso::own()?;
    Some(ckpt::image::checksum::crc32c(elf))
}

fn rips(m: &ProcessManifest) -> Vec<(i32, u64)> {
    m.threads.iter().map(|t| (t.tid, t.rip)).collect()
}

static SAID: AtomicBool = AtomicBool::new(false);

/// Checked before a generation is chosen: a vDSO that differs is redirected
/// (said once) or refused with why.
pub fn check(m: &ProcessManifest) -> Result<(), String> {
    if !wanted(m) {
        return Ok(());
    }
    let refuse = |why: String| {
        format!(
            "process {}: the kernel's vDSO differs from the one it was checkpointed with (another \
             kernel build) and cannot stand in for it: {why}; restart on a node running the \
             kernel it was checkpointed on",
            m.pid
        )
    };
    let b = own_block().map_err(refuse)?;
    // The real address is chosen in stage 1, near the old block: a near
    // one here checks the jumps fit.
    let guess = m.vdso.vvar.saturating_sub(64 << 20) + (b.vdso - b.start);
    vdso::jump_table(&m.vdso, guess, &b.functions, &rips(m)).map_err(|e| refuse(e.to_string()))?;
    if !SAID.swap(true, Ordering::Relaxed) {
        eprintln!(
            "ckpt: {}: the program's calls into the vDSO are sent to this kernel's vDSO",
            if forced() {
                "CKPT_VDSO_REDIRECT=1"
            } else {
                "the kernel's vDSO differs from the checkpoint's (another kernel build)"
            }
        );
    }
    Ok(())
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

/// Stage 1: the new block's place (near the old one, clear of every saved
/// region, the old block and `busy`) and the jump table.
pub fn plan(m: &ProcessManifest, busy: &[(u64, u64)]) -> Result<Option<Redirect>, String> {
    if !wanted(m) {
        return Ok(None);
    }
    let b = own_block()?;
    let len = b.end - b.start;
    let old = (m.vdso.vvar.min(m.vdso.vdso), m.vdso.vdso + m.vdso.vdso_len);
    // A margin of 1 MiB around what is there (a stack's guard gap).
    const MARGIN: u64 = 1 << 20;
    let mut taken: Vec<(u64, u64)> = m
        .regions
        .iter()
        .map(|r| (r.start, r.end))
        .chain(std::iter::once(old))
        .chain(busy.iter().copied())
        .map(|(s, e)| (s.saturating_sub(MARGIN), e.saturating_add(MARGIN)))
        .collect();
    taken.sort_unstable();
    let free = |a: u64| {
        a >= 1 << 20
            && a + len <= 0x7fff_ffff_0000
            && !taken.iter().any(|&t| overlaps((a, a + len), t))
    };
    let step = 1u64 << 20;
    let start = (1..8192u64)
        .flat_map(|k| {
            [
                old.0.checked_sub(k * step).map(|a| a & !0xfff),
                old.1.checked_add(k * step).map(|a| a & !0xfff),
            ]
        })
        .flatten()
        .find(|&a| free(a))
        .ok_or("no free address for this kernel's vDSO near the old one")?;
    let new_vdso = start + (b.vdso - b.start);
    let table =
        vdso::jump_table(&m.vdso, new_vdso, &b.functions, &rips(m)).map_err(|e| e.to_string())?;
    Ok(Some(Redirect {
        vvar: start,
        vdso: new_vdso,
        table,
    }))
}
