//! The argument block of stage 2 (mirror of `restorer/restorer.h`), and
//! placement of the restorer mapping.

use ckpt::image::manifest::{ProcessManifest, RegionKind};
use ckpt::signal_safe::procfs;

/// `struct rst_range`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct RstRange {
    pub start: u64,
    pub end: u64,
}

/// `struct rst_region`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct RstRegion {
    pub start: u64,
    pub end: u64,
    pub offset: u64,
    pub data_offset: u64,
    pub runs_index: u64,
    pub nruns: u64,
    pub prot: u32,
    pub kind: u32,
    pub fd: i32,
    pub crc: u32,
    pub growsdown: u8,
    pub hugepage: u8,
    pub close_fd: u8,
    /// Bit 0 `MADV_DONTFORK`, bit 1 `MADV_WIPEONFORK` (`ForkAdvice`).
    pub fork_advice: u8,
    pub pad: [u8; 4],
}

/// `struct prctl_mm_map_k`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct MmMap {
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub brk: u64,
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    pub auxv: u64,
    pub auxv_size: u32,
    pub exe_fd: u32,
}

/// Most image files stage 2 reads (`RST_MAX_IMAGES`).
pub const MAX_IMAGES: usize = 66;
/// `img_drop`: drop what was read from the page cache (`RST_IMG_DROP`).
pub const IMG_DROP: u64 = 1;
/// `img_drop`: a memory file of a decompressed image: punch out what was
/// read (`RST_IMG_PUNCH`).
pub const IMG_PUNCH: u64 = 2;

/// Most helper mappings stage 2 can remove.
pub const MAX_UNMAP: usize = 256;

/// `struct rst_failure`.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct RstFailure {
    pub code: u32,
    pub pid: i32,
    pub addr: u64,
    pub err: i64,
}

/// `struct rst_args`.
#[repr(C)]
pub struct RstArgs {
    pub pid: i64,
    pub helper_rseq: u64,
    pub helper_rseq_sig: u64,
    pub vvar: u64,
    pub n_img: u64,
    pub img_fds: [i64; MAX_IMAGES],
    pub exe_fd: i64,
    pub err_fd: i64,
    pub status_fd: i64,
    pub verify: u64,
    pub n_unmap: u64,
    pub unmap: [RstRange; MAX_UNMAP],
    pub n_regions: u64,
    pub regions: u64,
    pub runs: u64,
    pub mm: MmMap,
    pub finish_fn: u64,
    pub finish_sp: u64,
    pub finish_args_dst: u64,
    pub finish_args_src: u64,
    pub finish_args_len: u64,
    pub socket_dst: u64,
    pub socket: [u8; 256],
    pub stub_addr: u64,
    pub stub_len: u64,
    pub stub_src: u64,
    pub img_drop: [u64; MAX_IMAGES],
}

/// Stage 2 exit status on failure.
pub const RST_EXIT_FAILED: i32 = 86;

/// Region kind codes of restorer.h.
pub fn kind_code(k: RegionKind) -> u32 {
    match k {
        RegionKind::Anon => 0,
        RegionKind::SharedAnon => 1,
        RegionKind::File => 2,
        RegionKind::SharedFile => 3,
    }
}

unsafe extern "C" {
    static __start_ckpt_rst: u8;
    static __stop_ckpt_rst: u8;
    fn ckpt_rst_entry(args: *mut RstArgs, sp: u64) -> !;
}

/// The stage 2 code: (start address, length, entry offset).
pub fn code() -> (usize, usize, usize) {
    // Only the addresses of the linker-defined section bounds are taken.
    let (s, e) = (
        core::ptr::addr_of!(__start_ckpt_rst) as usize,
        core::ptr::addr_of!(__stop_ckpt_rst) as usize,
    );
    let entry = ckpt_rst_entry as *const () as usize;
    (s, e - s, entry - s)
}

/// Mappings of the current process, as (start, end, name).
pub fn own_maps() -> std::io::Result<Vec<(u64, u64, Vec<u8>)>> {
    let text = std::fs::read("/proc/self/maps")?;
    Ok(procfs::lines(&text)
        .filter_map(procfs::parse_maps_line)
        .map(|m| (m.start, m.end, m.path.to_vec()))
        .collect())
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

/// Choose an address for a `len`-byte restorer mapping that overlaps neither
/// a saved region, the saved vDSO block, nor anything mapped now.
pub fn choose_address(
    m: &ProcessManifest,
    current: &[(u64, u64, Vec<u8>)],
    len: u64,
) -> Option<u64> {
    let mut busy: Vec<(u64, u64)> = m.regions.iter().map(|r| (r.start, r.end)).collect();
    if m.vdso.vvar != 0 {
        busy.push((m.vdso.vvar, m.vdso.vvar + 64 * 1024));
    }
    busy.extend(current.iter().map(|c| (c.0, c.1)));
    // Candidates spread over the user address space, away from the usual
    // places of executables (0x55..), libraries (0x7f..) and stacks (0x7ffc..).
    (1u64..120)
        .map(|i| i << 40)
        .find(|&a| !busy.iter().any(|&b| overlaps((a, a + len), b)))
}

#[cfg(test)]
mod layout_tests {
    use super::*;

    unsafe extern "C" {
        /// `sizeof(struct rst_args)` as restorer.c sees it.
        static ckpt_rst_args_size: u64;
    }

    /// restorer.h and this file describe one block.
    #[test]
    fn rst_args_has_one_layout() {
        // SAFETY: a constant defined by restorer.c.
        let c = unsafe { ckpt_rst_args_size };
        assert_eq!(c, std::mem::size_of::<RstArgs>() as u64);
    }
}
