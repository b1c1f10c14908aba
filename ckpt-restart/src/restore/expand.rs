//! Compressed images are decompressed by the job's init, once for the
//! whole tree, before it recreates any process (docs/image-format.md,
//! "Compressed images").
//!
//! The frames of every compressed image are independent, so the init
//! decompresses them on one thread per CPU it may use. It does so before
//! the first `fork_with_pid`: threads take ids in the job's pid namespace,
//! and an id a thread held could be one that a restored process or thread
//! must get back. The init therefore waits, after its threads have ended,
//! until the kernel has released their ids ([`wait_single_threaded`]).
//! Each process then takes its memory files from [`Shared::images`]
//! instead of decompressing in stage 1 (one thread, and one process's
//! images at a time).

use std::path::Path;
use std::time::{Duration, Instant};

use ckpt::image::generation::LoadedGeneration;
use ckpt::image::manifest::ProcessManifest;

use super::chain;
use super::shared::{self, Shared};

/// Decompression threads at most: beyond this the disk, not the CPUs,
/// sets the pace.
const MAX_THREADS: usize = 8;

/// The image file holding level `level` of process `m`'s chain: 0 = its
/// own in `gen_dir`, n = its image in the n-th base generation. Returns
/// the directory, the file name and the size the generation record lists.
pub fn image_of<'a>(
    gen_dir: &'a Path,
    m: &'a ProcessManifest,
    bases: &'a [LoadedGeneration],
    level: usize,
) -> Result<(&'a Path, &'a str, u64), String> {
    if level == 0 {
        return Ok((gen_dir, m.image.file.as_str(), m.image.size));
    }
    let g = bases
        .get(level - 1)
        .ok_or_else(|| format!("base generation {level} is missing"))?;
    g.record
        .processes
        .iter()
        .find(|p| p.pid == m.pid)
        .map(|p| (g.path.as_path(), p.image.as_str(), p.image_size))
        .ok_or_else(|| format!("{} holds no image of process {}", g.path.display(), m.pid))
}

/// The base manifests of process `m`, nearest first.
pub fn base_manifests<'a>(
    m: &ProcessManifest,
    bases: &'a [LoadedGeneration],
) -> Vec<&'a ProcessManifest> {
    bases
        .iter()
        .filter_map(|g| g.processes.iter().find(|p| p.pid == m.pid))
        .collect()
}

fn threads() -> usize {
    std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(1)
        .min(MAX_THREADS)
}

/// Decompress every compressed image the processes of `g` read (their
/// own and those of the base generations they inherit pages from) into
/// memory files held in `sh.images`, keyed by (pid, level). Uncompressed
/// images are left to stage 1. Called by the init while it is the only
/// task of the namespace (before any `fork_with_pid`); returns once the
/// ids of its helper threads are free again.
pub fn images(g: &LoadedGeneration, sh: &mut Shared) -> Result<(), String> {
    let threads = threads();
    let r = (|| {
        for m in &g.processes {
            let bases = base_manifests(m, &g.bases);
            let pieces = chain::pieces(m, &bases)?;
            let levels = pieces.iter().flatten().map(|p| p.file).max().unwrap_or(0);
            for level in 0..=levels {
                let (dir, file, size) = image_of(&g.path, m, &g.bases, level)?;
                let wanted = chain::wanted(m, &pieces, level);
                let (f, memory) = shared::open_image_pages(dir, file, size, &wanted, threads)?;
                if memory {
                    let fd = shared::dup_at_least(std::os::fd::IntoRawFd::into_raw_fd(f), sh.hi)?;
                    sh.hi = sh.hi.max(fd + 1);
                    sh.images.insert((m.pid, level), fd);
                }
            }
        }
        Ok(())
    })();
    if threads > 1 {
        wait_single_threaded(Duration::from_secs(10));
    }
    r
}

/// Wait until this process has one thread again in `/proc/self/task`
/// (the job's own /proc): a joined thread may still hold its id for a
/// moment, until the kernel releases the task.
pub fn wait_single_threaded(limit: Duration) {
    let t = Instant::now();
    while t.elapsed() < limit {
        match std::fs::read_dir("/proc/self/task").map(Iterator::count) {
            Ok(n) if n > 1 => std::thread::sleep(Duration::from_micros(200)),
            _ => return,
        }
    }
}
