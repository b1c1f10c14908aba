//! One shared memory object, two names in `/proc/PID/maps`.
//!
//! A file in `/dev/shm` can be mapped by one process under a name that was
//! later unlinked and by another under a name that still exists: glibc's
//! `sem_open` creates `sem.XXXXXX`, maps it, then links it to its final
//! name and unlinks the temporary one, so the creator's mapping reads
//! `/dev/shm/sem.XXXXXX (deleted)` while every process that opened the
//! semaphore by name maps `/dev/shm/sem.NAME` (Python's multiprocessing
//! with the forkserver or spawn start methods). The capture sees a deleted
//! file in the first (saved as shared anonymous memory) and a named file in
//! the second (restored by mapping the file again): restored as they were
//! recorded they would become two objects, and a lock released in one
//! would never be seen in the other.
//!
//! Before the processes are rebuilt, every shared anonymous region whose
//! device and inode are those of a named shared file mapping of the same
//! generation, or of a file the generation keeps under a name that existed
//! at the checkpoint (found by the capture in the unlinked name's
//! directory, `saved_files::live_link`: the creator mapped the semaphore
//! before any other process opened it by name), becomes a mapping of that
//! file, so every process maps the one object again, and so does a process
//! that opens the name later (`docs/objects.md`, "Shared memory").

use std::collections::HashMap;

use ckpt::image::generation::LoadedGeneration;
use ckpt::image::manifest::{ProcessManifest, RegionKind, SavedFile};

/// A name of a file: its path, size and modification time (ns).
struct Named {
    name: String,
    size: u64,
    mtime_ns: u64,
}

/// The name each (device, inode) has somewhere in the job: a named shared
/// mapping, or a file the generation keeps.
fn named_files(processes: &[ProcessManifest], kept: &[SavedFile]) -> HashMap<(u64, u64), Named> {
    let mut named = HashMap::new();
    for r in processes
        .iter()
        .flat_map(|m| m.regions.iter())
        .filter(|r| r.kind == RegionKind::SharedFile)
    {
        named.entry((r.dev, r.inode)).or_insert_with(|| Named {
            name: r.name.clone(),
            size: r.file_size,
            mtime_ns: r.file_mtime_ns,
        });
    }
    for f in kept.iter().filter(|f| !f.deleted) {
        named.entry((f.dev, f.inode)).or_insert_with(|| Named {
            name: f.path.clone(),
            size: f.size,
            mtime_ns: f.mtime_ns,
        });
    }
    named
}

/// Rewrite the unlinked aliases of named shared files in `processes` (see
/// the module comment); returns how many regions were rewritten.
pub fn map_aliases_by_name(processes: &mut [ProcessManifest], kept: &[SavedFile]) -> usize {
    let named = named_files(processes, kept);
    let mut n = 0;
    for r in processes.iter_mut().flat_map(|m| m.regions.iter_mut()) {
        if r.kind != RegionKind::SharedAnon {
            continue;
        }
        let Some(file) = named.get(&(r.dev, r.inode)) else {
            continue;
        };
        r.kind = RegionKind::SharedFile;
        r.name = file.name.clone();
        r.file_size = file.size;
        r.file_mtime_ns = file.mtime_ns;
        r.runs.clear();
        r.inherited.clear();
        r.crc = 0;
        n += 1;
    }
    n
}

/// [`map_aliases_by_name`] over the processes of a generation (the regions
/// of the generations it builds on are only read for the pages listed as
/// inherited, and a rewritten region lists none).
pub fn apply(g: &mut LoadedGeneration) -> usize {
    map_aliases_by_name(&mut g.processes, &g.record.files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ckpt::image::manifest::Region;

    fn region(kind: RegionKind, name: &str, dev: u64, inode: u64) -> Region {
        Region {
            start: 0x7f00_0000_0000,
            end: 0x7f00_0000_1000,
            prot: (libc::PROT_READ | libc::PROT_WRITE) as u32,
            kind,
            name: name.into(),
            offset: 0,
            dev,
            inode,
            file_size: if kind == RegionKind::SharedFile {
                32
            } else {
                0
            },
            file_mtime_ns: if kind == RegionKind::SharedFile { 7 } else { 0 },
            data_offset: 4096,
            runs: if kind == RegionKind::SharedAnon {
                vec![[0, 1]]
            } else {
                Vec::new()
            },
            inherited: Vec::new(),
            crc: 99,
            growsdown: false,
            hugepage: false,
            fork: Default::default(),
        }
    }

    fn process(pid: i32, regions: Vec<Region>) -> ProcessManifest {
        let mut m = crate::restore::chain::tests::manifest(regions);
        m.pid = pid;
        m
    }

    #[test]
    fn unlinked_alias_of_a_named_file_maps_the_file() {
        let mut ps = vec![
            process(
                10,
                vec![region(
                    RegionKind::SharedAnon,
                    "/dev/shm/sem.Ab12Cd (deleted)",
                    26,
                    734,
                )],
            ),
            process(
                11,
                vec![region(
                    RegionKind::SharedFile,
                    "/dev/shm/sem.mp-x1",
                    26,
                    734,
                )],
            ),
        ];
        assert_eq!(map_aliases_by_name(&mut ps, &[]), 1);
        let r = &ps[0].regions[0];
        assert_eq!(r.kind, RegionKind::SharedFile);
        assert_eq!(r.name, "/dev/shm/sem.mp-x1");
        assert_eq!((r.file_size, r.file_mtime_ns), (32, 7));
        assert!(r.runs.is_empty() && r.inherited.is_empty());
        // The named mapping is as it was.
        assert_eq!(
            ps[1].regions[0],
            region(RegionKind::SharedFile, "/dev/shm/sem.mp-x1", 26, 734)
        );
    }

    #[test]
    fn unlinked_alias_of_a_kept_file_maps_the_file() {
        // Nobody maps the name yet: the generation keeps the file under it.
        let mut ps = vec![process(
            10,
            vec![region(
                RegionKind::SharedAnon,
                "/dev/shm/sem.Ab12Cd (deleted)",
                26,
                734,
            )],
        )];
        let kept = SavedFile {
            path: "/dev/shm/sem.mp-x1".into(),
            deleted: false,
            dev: 26,
            inode: 734,
            size: 32,
            mode: 0o600,
            mtime_ns: 7,
            ctime_ns: 7,
            data: "file-1".into(),
            crc: 0,
        };
        assert_eq!(map_aliases_by_name(&mut ps, std::slice::from_ref(&kept)), 1);
        let r = &ps[0].regions[0];
        assert_eq!(r.kind, RegionKind::SharedFile);
        assert_eq!(r.name, "/dev/shm/sem.mp-x1");
        assert_eq!((r.file_size, r.file_mtime_ns), (32, 7));
        // A file kept as deleted is no name.
        let mut ps2 = vec![process(
            10,
            vec![region(
                RegionKind::SharedAnon,
                "/dev/shm/x (deleted)",
                26,
                734,
            )],
        )];
        let deleted = SavedFile {
            deleted: true,
            ..kept
        };
        assert_eq!(map_aliases_by_name(&mut ps2, &[deleted]), 0);
    }

    #[test]
    fn other_objects_are_left_alone() {
        let mut ps = vec![
            process(
                10,
                vec![
                    // Same inode on another filesystem (a memfd): another object.
                    region(RegionKind::SharedAnon, "/memfd:x (deleted)", 1, 734),
                    // Deleted everywhere: stays shared anonymous memory.
                    region(RegionKind::SharedAnon, "/dev/shm/gone (deleted)", 26, 800),
                ],
            ),
            process(
                11,
                vec![region(
                    RegionKind::SharedFile,
                    "/dev/shm/sem.mp-x1",
                    26,
                    734,
                )],
            ),
        ];
        let before = ps.clone();
        assert_eq!(map_aliases_by_name(&mut ps, &[]), 0);
        assert_eq!(ps, before);
    }
}
