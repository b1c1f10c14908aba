//! Where each saved page of a process is, through a chain of incremental
//! generations.
//!
//! An incremental image stores the pages written since its base
//! generation (`runs`) and lists the others as `inherited`: same content as
//! the base image at the same address. The base may itself be incremental.
//! This module resolves every page to one image file and offset, so that
//! stage 2 reads each page exactly once, in address order (the order of
//! the region checksum).

use ckpt::image::format::PAGE_SIZE;
use ckpt::image::manifest::{ProcessManifest, RegionKind};

/// A run of pages to read into place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    /// First page, as an index in its region.
    pub first: u64,
    /// Number of pages.
    pub count: u64,
    /// Which image: 0 = the restored generation's, n = the n-th base.
    pub file: usize,
    /// Offset of the first page in that image file.
    pub offset: u64,
}

#[derive(Clone, Copy, Debug)]
enum Src {
    /// Saved in this image at this file offset (of the segment start).
    Saved(u64),
    /// Inherited from the next base.
    Inherited,
}

/// Address-ordered segments of one manifest.
struct Segments(Vec<(u64, u64, Src)>);

impl Segments {
    fn of(m: &ProcessManifest) -> Segments {
        let mut v = Vec::new();
        for r in &m.regions {
            let mut off = r.data_offset;
            for run in &r.runs {
                let a = r.start + run[0] * PAGE_SIZE;
                v.push((a, a + run[1] * PAGE_SIZE, Src::Saved(off)));
                off += run[1] * PAGE_SIZE;
            }
            for run in &r.inherited {
                let a = r.start + run[0] * PAGE_SIZE;
                v.push((a, a + run[1] * PAGE_SIZE, Src::Inherited));
            }
        }
        v.sort_unstable_by_key(|s| s.0);
        Segments(v)
    }
}

/// Resolve `[lo, hi)` at chain level `level` (1 = first base) into `out`
/// as `(address, length, level, offset)`.
fn resolve(
    chain: &[Segments],
    level: usize,
    (lo, hi): (u64, u64),
    out: &mut Vec<(u64, u64, usize, u64)>,
) -> Result<(), u64> {
    let Some(segs) = chain.get(level - 1) else {
        return Err(lo);
    };
    let segs = &segs.0;
    let mut i = segs.partition_point(|s| s.1 <= lo);
    let mut cur = lo;
    while cur < hi {
        let Some(&(s, e, src)) = segs.get(i) else {
            return Err(cur);
        };
        if s > cur {
            return Err(cur);
        }
        let end = e.min(hi);
        match src {
            Src::Saved(off) => out.push((cur, end - cur, level, off + (cur - s))),
            Src::Inherited => resolve(chain, level + 1, (cur, end), out)?,
        }
        cur = end;
        i += 1;
    }
    Ok(())
}

/// What stage 2 reads of image `level` (0 = the process's own, n = the
/// n-th base) as file offsets and lengths, sorted: the pieces of every
/// region that lives in private memory (shared memory is read by the init,
/// from the part of an image stored as it is).
pub fn wanted(m: &ProcessManifest, pieces: &[Vec<Piece>], level: usize) -> Vec<(u64, u64)> {
    let mut v: Vec<(u64, u64)> = m
        .regions
        .iter()
        .zip(pieces)
        .filter(|(r, _)| r.kind != RegionKind::SharedAnon)
        .flat_map(|(_, p)| p.iter())
        .filter(|p| p.file == level)
        .map(|p| (p.offset, p.count * PAGE_SIZE))
        .collect();
    v.sort_unstable();
    v
}

/// For every region of `m` (in its order), the pieces to read, sorted by
/// page. `bases` are the process's manifests in the base generations,
/// nearest first.
pub fn pieces(m: &ProcessManifest, bases: &[&ProcessManifest]) -> Result<Vec<Vec<Piece>>, String> {
    let chain: Vec<Segments> = if m.regions.iter().any(|r| !r.inherited.is_empty()) {
        bases.iter().map(|b| Segments::of(b)).collect()
    } else {
        Vec::new()
    };
    let mut all = Vec::with_capacity(m.regions.len());
    for r in &m.regions {
        let mut v = Vec::with_capacity(r.runs.len() + r.inherited.len());
        let mut off = r.data_offset;
        for run in &r.runs {
            v.push(Piece {
                first: run[0],
                count: run[1],
                file: 0,
                offset: off,
            });
            off += run[1] * PAGE_SIZE;
        }
        let mut found = Vec::new();
        for run in &r.inherited {
            let lo = r.start + run[0] * PAGE_SIZE;
            let hi = lo + run[1] * PAGE_SIZE;
            found.clear();
            resolve(&chain, 1, (lo, hi), &mut found).map_err(|addr| {
                format!(
                    "the image of process {} refers to page {addr:#x} of an older generation, \
                     which does not hold it (the chain of incremental checkpoints is broken)",
                    m.pid
                )
            })?;
            for &(a, len, file, offset) in &found {
                v.push(Piece {
                    first: (a - r.start) / PAGE_SIZE,
                    count: len / PAGE_SIZE,
                    file,
                    offset,
                });
            }
        }
        v.sort_unstable_by_key(|p| p.first);
        all.push(v);
    }
    Ok(all)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ckpt::image::manifest::{Region, RegionKind};

    fn region(start: u64, pages: u64, runs: &[[u64; 2]], inherited: &[[u64; 2]]) -> Region {
        Region {
            start,
            end: start + pages * PAGE_SIZE,
            prot: 3,
            kind: RegionKind::Anon,
            name: String::new(),
            offset: 0,
            dev: 0,
            inode: 0,
            file_size: 0,
            file_mtime_ns: 0,
            data_offset: 4096,
            runs: runs.to_vec(),
            inherited: inherited.to_vec(),
            crc: 0,
            growsdown: false,
            hugepage: false,
            fork: Default::default(),
        }
    }

    /// A process manifest with these regions (for tests of restore steps).
    pub(crate) fn manifest(regions: Vec<Region>) -> ProcessManifest {
        let text = r#"{"format":"ckpt-process","version":[1,1],"pid":7,"ppid":1,"uid":0,
            "exe":"/bin/x","realtime_ns":0,"monotonic_ns":0,"boottime_ns":0,
            "cpu":{"features":[0,0,0,0],"xcr0":0},"vdso":{"vvar":0,"vdso":0,"vdso_len":0,"crc":0},
            "mm":{"start_code":0,"end_code":0,"start_data":0,"end_data":0,"start_brk":0,"brk":0,
                  "start_stack":0,"arg_start":0,"arg_end":0,"env_start":0,"env_end":0,"auxv":[]},
            "hooks":{"restore_info":0,"finish_args":0,"finish":0},"regions":[],"threads":[],
            "fds":[],"sigactions":[],"cwd":"/","umask":18,"rlimits":[],"itimers":[],
            "image":{"file":"proc-7.img","size":4096}}"#;
        let mut m: ProcessManifest = serde_json::from_str(text).expect("sample manifest");
        m.regions = regions;
        m
    }

    #[test]
    fn inherited_pages_resolve_through_two_bases() {
        let a = 0x10000;
        // gen 1: pages 0..8 saved
        let g1 = manifest(vec![region(a, 8, &[[0, 8]], &[])]);
        // gen 2: page 2 rewritten, the rest inherited
        let g2 = manifest(vec![region(a, 8, &[[2, 1]], &[[0, 2], [3, 5]])]);
        // gen 3: page 6 rewritten, the rest inherited
        let g3 = manifest(vec![region(a, 8, &[[6, 1]], &[[0, 6], [7, 1]])]);
        let p = pieces(&g3, &[&g2, &g1]).expect("resolves");
        let want = vec![
            Piece {
                first: 0,
                count: 2,
                file: 2,
                offset: 4096,
            },
            Piece {
                first: 2,
                count: 1,
                file: 1,
                offset: 4096,
            },
            Piece {
                first: 3,
                count: 3,
                file: 2,
                offset: 4096 + 3 * 4096,
            },
            Piece {
                first: 6,
                count: 1,
                file: 0,
                offset: 4096,
            },
            Piece {
                first: 7,
                count: 1,
                file: 2,
                offset: 4096 + 7 * 4096,
            },
        ];
        assert_eq!(p, vec![want]);
    }

    #[test]
    fn a_page_missing_from_the_base_is_an_error() {
        let a = 0x10000;
        let g1 = manifest(vec![region(a, 8, &[[0, 4]], &[])]);
        let g2 = manifest(vec![region(a, 8, &[], &[[0, 6]])]);
        let e = pieces(&g2, &[&g1]).expect_err("page 4 is nowhere");
        assert!(e.contains("0x14000"), "{e}");
        let e = pieces(&g2, &[]).expect_err("no base at all");
        assert!(e.contains("broken"), "{e}");
    }
}
