//! Files a job rewrites: their content at the checkpoint is kept in the
//! generation and put back before a restart runs the program (see
//! `docs/files.md`).
//!
//! Which files ([`capture`], while every process of the job is stopped):
//! - regular files open for writing (`O_WRONLY`/`O_RDWR`, with or without
//!   `O_APPEND`) by any process of the job: a database, an HDF5 file, a
//!   log, a scratch file;
//! - regular files mapped `MAP_SHARED` with write permission (the pages the
//!   program wrote are in the page cache, so the copy holds them);
//! - files deleted while open (`tmpfile()`, Fortran `status='scratch'`),
//!   whatever their mode: nothing outside the image holds their data.
//!
//! Not these: files inside the checkpoint directory, and files the caller
//! excludes (the Slurm task's output files, which have their own copy with
//! their own rules, `cli/outputs.rs`).
//!
//! How: one copy per file (device and inode) in the generation directory,
//! `file-<dev>-<inode>.data`. A file whose size, modification and
//! status-change times are those recorded by the previous generation is
//! not copied again: the previous copy is hard-linked (no bytes written).
//! Otherwise the copy is a reflink (`FICLONE`, instant on btrfs and XFS)
//! or an in-kernel copy (`copy_file_range`). A file larger than the
//! configured limit fails the checkpoint, naming the file, its size and
//! the option. The CRC-32C of each copy is computed and the copy fsynced
//! after the job runs again ([`finish`]), before the generation commits.
//!
//! [`restore`] (before the processes of a generation are rebuilt): each
//! kept file is written back at its path (same inode when the file is still
//! there; created again with its mode when it was removed), exactly its
//! checkpoint content and size; a deleted file becomes a fresh unnamed
//! file: created under a temporary name, opened by the restored processes,
//! and unlinked once they run ([`Restored::unlink`]). The copies are
//! checked against their CRC-32C first, so a damaged copy never reaches a
//! user's file.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ckpt::image::checksum::Crc32c;
use ckpt::image::generation::{LoadedGeneration, PendingGeneration};
use ckpt::image::manifest::{FdKind, SavedFile};

use crate::proc_fds::ProcFds;
use crate::restore::names::name_bytes;

/// Default largest file kept this way (`--max-file-copy`).
pub const DEFAULT_MAX_COPY: u64 = 1 << 30;

/// How much older than the previous checkpoint a file's times must be for
/// its copy to be reused (timestamps are coarse: one clock tick).
const REUSE_MARGIN_NS: u64 = 2_000_000_000;

/// The previous complete generation, whose copies may be reused.
#[derive(Clone, Debug)]
pub struct Previous {
    /// Its directory (through the checkpoint directory's descriptor).
    pub dir: PathBuf,
    /// When it was taken (ns since the epoch; its record keeps seconds, so
    /// this is at most that second's start).
    pub taken_ns: u64,
    /// The files it keeps.
    pub files: Vec<SavedFile>,
}

/// What [`capture`] needs besides the job.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// Largest file kept (bytes); a larger one fails the checkpoint.
    pub max_copy: u64,
    /// Files not kept: `(device, inode)`.
    pub exclude: Vec<(u64, u64)>,
    /// The checkpoint directory (nothing inside it is kept).
    pub ckpt_dir: PathBuf,
}

/// Encodes a path like the image writer does (one char per byte).
fn encode(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| b as char).collect()
}

fn ns(sec: i64, nsec: i64) -> u64 {
    u64::try_from(sec)
        .unwrap_or(0)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(u64::try_from(nsec).unwrap_or(0))
}

/// A file found in the job, and how to read it.
struct Found {
    path: Vec<u8>,
    deleted: bool,
    /// `/proc/<host>/fd/<n>` of a descriptor on it, when there is one.
    via_fd: Option<PathBuf>,
    /// Who holds it (for messages).
    holder: String,
    /// Mapped shared and writable somewhere in the job: its modification
    /// time need not change when the mapping is written.
    mapped: bool,
}

/// Another name of file (`dev`, `ino`) in the directory of `deleted`, a
/// name it had before it was unlinked.
fn live_link(deleted: &[u8], dev: u64, ino: u64) -> Option<Vec<u8>> {
    let dir = Path::new(std::ffi::OsStr::from_bytes(deleted)).parent()?;
    fs::read_dir(dir).ok()?.flatten().find_map(|e| {
        let md = e.metadata().ok()?;
        (md.is_file() && md.dev() == dev && md.ino() == ino)
            .then(|| e.path().as_os_str().as_bytes().to_vec())
    })
}

fn strip_deleted(p: &[u8]) -> (&[u8], bool) {
    match p.strip_suffix(b" (deleted)") {
        Some(rest) => (rest, true),
        None => (p, false),
    }
}

/// The flags field of `/proc/<pid>/fdinfo/<fd>` (octal).
fn fd_flags(host: i32, fd: i32) -> Option<u32> {
    let text = fs::read_to_string(format!("/proc/{host}/fdinfo/{fd}")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
}

/// Files of the job that must be kept: `(device, inode)` → how to read it.
fn find(
    hosts: &BTreeMap<i32, i32>,
    fds: &BTreeMap<i32, ProcFds>,
    p: &Policy,
) -> Result<BTreeMap<(u64, u64), Found>, String> {
    let ckpt_dir = p.ckpt_dir.as_os_str().as_bytes();
    let inside = |path: &[u8]| {
        path.starts_with(ckpt_dir) && path.get(ckpt_dir.len()).is_none_or(|&c| c == b'/')
    };
    let mut out: BTreeMap<(u64, u64), Found> = BTreeMap::new();
    let holder_of = |pid: i32, host: i32| {
        let exe = fs::read_link(format!("/proc/{host}/exe"))
            .map(|e| e.display().to_string())
            .unwrap_or_default();
        format!("process {pid} ({exe})")
    };
    // Descriptors of every process first, then mappings: a file mapped by
    // one process and open in another must be known as mapped.
    for (&pid, &host) in hosts {
        let holder = holder_of(pid, host);
        let Some(list) = fds.get(&host) else {
            continue;
        };
        let server = pmix_server_dirs(host);
        // Sockets, pipes and anonymous inodes are no files, and a job may
        // hold hundreds: no second look at them.
        for l in list.links.iter().filter(|l| l.is_path()) {
            let Ok(st) = list.stat(l.fd) else {
                continue;
            };
            if st.st_mode & libc::S_IFMT != libc::S_IFREG {
                continue;
            }
            let (path, deleted) = strip_deleted(&l.target);
            // A file of the process's PMIx server (its data store's lock):
            // gone after a restart with the server; kept like a deleted
            // file, given back unnamed (docs/mpi.md).
            let deleted = deleted || server.iter().any(|d| path.starts_with(d));
            let writable = fd_flags(host, l.fd).is_some_and(|f| f & libc::O_ACCMODE as u32 != 0);
            if !(writable || deleted) || inside(path) || path.starts_with(b"/proc/") {
                continue;
            }
            // The descriptors of a stopped program stay as they are, but an
            // image writer (a process written in place) opens and closes its
            // own while this runs (/proc files, O_PATH descriptors of mapped
            // files), and a later one may take a number between the link,
            // the stat and the flags read here: the link must still read the
            // same after them, or the descriptor was the writer's.
            if list.target_now(l.fd).ok().as_deref() != Some(&l.target[..]) {
                continue;
            }
            let key = (st.st_dev, st.st_ino);
            if p.exclude.contains(&key) {
                continue;
            }
            let f = out.entry(key).or_insert_with(|| Found {
                path: path.to_vec(),
                deleted,
                via_fd: None,
                holder: format!("{holder}, fd {}", l.fd),
                mapped: false,
            });
            f.via_fd.get_or_insert(list.path(l.fd));
        }
    }
    for (&pid, &host) in hosts {
        let Ok(maps) = fs::read(format!("/proc/{host}/maps")) else {
            continue;
        };
        let server = pmix_server_dirs(host);
        for line in maps.split(|&c| c == b'\n') {
            // start-end perms offset dev inode path
            let mut f = line.splitn(6, |&c| c == b' ');
            let (_, Some(perms), _, Some(dev), Some(inode)) =
                (f.next(), f.next(), f.next(), f.next(), f.next())
            else {
                continue;
            };
            let path = f.next().map(|p| p.trim_ascii_start()).unwrap_or(b"");
            if perms.get(1) != Some(&b'w') || perms.get(3) != Some(&b's') || !path.starts_with(b"/")
            {
                continue;
            }
            let (path, deleted) = strip_deleted(path);
            if inside(path) || path.starts_with(b"/dev/") && !path.starts_with(b"/dev/shm/") {
                continue;
            }
            // Mapped from the process's PMIx server's data store: its pages
            // are in the image as shared memory (libckpt's capture).
            if server.iter().any(|d| path.starts_with(d)) {
                continue;
            }
            let Ok(ino) = std::str::from_utf8(inode)
                .map(str::trim)
                .unwrap_or("")
                .parse()
            else {
                continue;
            };
            // The maps device is major:minor in hex; find the file's st_dev.
            let Some(dev) = parse_dev(dev) else { continue };
            let key = (dev, ino);
            if p.exclude.contains(&key) {
                continue;
            }
            if let Some(f) = out.get_mut(&key) {
                f.mapped = true;
                continue;
            }
            if deleted {
                // The same file under a name that still exists (glibc's
                // sem_open maps `sem.XXXXXX`, then links it to its final
                // name and unlinks the first): that name is kept, and the
                // restore maps it (restore/aliases.rs), so that a process
                // that opens the name later (a pool worker that has not
                // opened its semaphores yet) finds the same object.
                if let Some(live) = live_link(path, dev, ino) {
                    out.insert(
                        key,
                        Found {
                            path: live,
                            deleted: false,
                            via_fd: None,
                            holder: holder_of(pid, host),
                            mapped: true,
                        },
                    );
                }
                // Otherwise, mapped shared but open nowhere: it cannot be
                // read (its /proc/<pid>/map_files entry needs privilege);
                // its pages are in the image as shared memory, which is
                // what the program sees (docs/files.md).
                continue;
            }
            out.insert(
                key,
                Found {
                    path: path.to_vec(),
                    deleted,
                    via_fd: None,
                    holder: holder_of(pid, host),
                    mapped: true,
                },
            );
        }
    }
    Ok(out)
}

/// The directories of the PMIx server of process `host` when that server is
/// Slurm's (a rank of `srun --mpi=pmix`, namespace `slurm.pmix.*`):
/// `PMIX_SERVER_TMPDIR` and the data store's base paths of its environment,
/// each ending in `/`. libckpt's capture saves what the
/// process maps from them as memory (`ckpt-core/src/preload/capture.rs`).
fn pmix_server_dirs(host: i32) -> Vec<Vec<u8>> {
    let Ok(env) = fs::read(format!("/proc/{host}/environ")) else {
        return Vec::new();
    };
    // Only Slurm's server: an `mpirun` of the job is a PMIx server too, and
    // its files are the job's own.
    if !env
        .split(|&c| c == 0)
        .any(|v| v.starts_with(b"PMIX_NAMESPACE=slurm.pmix."))
    {
        return Vec::new();
    }
    env.split(|&c| c == 0)
        .filter_map(|v| {
            [
                &b"PMIX_SERVER_TMPDIR="[..],
                b"PMIX_DSTORE_21_BASE_PATH=",
                b"PMIX_DSTORE_ESH_BASE_PATH=",
            ]
            .iter()
            .find_map(|k| v.strip_prefix(*k))
        })
        .filter(|d| d.len() > 1 && d.starts_with(b"/"))
        .map(|d| {
            let mut d = d.to_vec();
            if !d.ends_with(b"/") {
                d.push(b'/');
            }
            d
        })
        .collect()
}

/// Writes back (`fdatasync`) the files [`capture`] would keep, while the
/// job runs (`hosts`: host pids). Best effort: errors are left to the
/// capture.
pub fn preflush(hosts: &[i32], p: &Policy) {
    let map: BTreeMap<i32, i32> = hosts.iter().map(|&h| (h, h)).collect();
    let fds: BTreeMap<i32, ProcFds> = hosts
        .iter()
        .filter_map(|&h| ProcFds::read(h).ok().map(|f| (h, f)))
        .collect();
    let Ok(found) = find(&map, &fds, p) else {
        return;
    };
    for f in found.values().filter(|f| !f.deleted) {
        let file = match &f.via_fd {
            Some(fd) => fs::File::open(fd),
            None => fs::File::open(Path::new(std::ffi::OsStr::from_bytes(&f.path))),
        };
        if let Ok(file) = file {
            let _ = file.sync_data();
        }
    }
}

/// `major:minor` (hex) as `st_dev`.
fn parse_dev(s: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(s).ok()?;
    let (ma, mi) = s.split_once(':')?;
    let (ma, mi) = (
        u32::from_str_radix(ma, 16).ok()?,
        u32::from_str_radix(mi, 16).ok()?,
    );
    Some(libc::makedev(ma, mi))
}

/// Names a size for messages.
fn human(n: u64) -> String {
    crate::cli::checkpoint::human_bytes(n)
}

/// Keeps the files of the job that a restart must put back (see the module
/// documentation), into `pending`. Runs while the job is stopped. `prev`:
/// the previous complete generation, whose unchanged copies are reused.
pub fn capture(
    hosts: &BTreeMap<i32, i32>,
    fds: &BTreeMap<i32, ProcFds>,
    pending: &PendingGeneration,
    prev: Option<&Previous>,
    p: &Policy,
) -> Result<Vec<SavedFile>, String> {
    let found = find(hosts, fds, p)?;
    let mut saved = Vec::new();
    for ((dev, ino), f) in found {
        let shown = String::from_utf8_lossy(&f.path).into_owned();
        let src = match &f.via_fd {
            Some(p) => fs::File::open(p),
            None => fs::File::open(Path::new(std::ffi::OsStr::from_bytes(&f.path))),
        };
        if src
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
            && f.via_fd.is_some()
            && !f.mapped
        {
            // Only held by a descriptor, which a stopped program cannot have
            // closed: it was an image writer's own (above), closed since.
            continue;
        }
        let src = src.map_err(|e| {
            format!(
                "{shown} (written by {}) cannot be read to keep it: {e}",
                f.holder
            )
        })?;
        let md = src.metadata().map_err(|e| format!("{shown}: {e}"))?;
        if (md.dev(), md.ino()) != (dev, ino) && f.via_fd.is_some() && !f.mapped {
            // Only held by a descriptor, which a stopped program cannot
            // have changed: it was one of an image writer's own (above),
            // closed since and its number taken again.
            continue;
        }
        if (md.dev(), md.ino()) != (dev, ino) {
            return Err(format!(
                "{shown} (mapped by {}) was replaced while the job was stopped",
                f.holder
            ));
        }
        if md.len() > p.max_copy {
            return Err(format!(
                "{shown} ({}, written by {}) is larger than the {} ckpt keeps of a file the job \
                 writes (--max-file-copy, plugstack max_file_copy=); raise the limit, or keep \
                 such files outside what the job rewrites",
                human(md.len()),
                f.holder,
                human(p.max_copy)
            ));
        }
        let data = format!("file-{dev}-{ino}.data");
        let mut entry = SavedFile {
            path: encode(&f.path),
            deleted: f.deleted,
            dev,
            inode: ino,
            size: md.len(),
            mode: md.mode() & 0o7777,
            mtime_ns: ns(md.mtime(), md.mtime_nsec()),
            ctime_ns: ns(md.ctime(), md.ctime_nsec()),
            data: data.clone(),
            crc: 0,
        };
        // Unchanged since the previous generation: link its copy. Only
        // when the times prove it: a file written through a shared mapping
        // may keep its time, and a write in the same clock tick as the
        // previous checkpoint's look at the file leaves it unchanged, so
        // its times must be older than that checkpoint by a margin.
        // The previous generation's record has the time it was committed,
        // which can be long after the job ran again (a large image takes
        // seconds to be durable); its copy was made while the job was
        // stopped (a linked copy earlier still): the earlier of the two.
        let same = prev.filter(|_| !f.mapped).and_then(|pv| {
            pv.files
                .iter()
                .find(|o| {
                    let looked = fs::symlink_metadata(pv.dir.join(&o.data))
                        .map_or(0, |m| ns(m.mtime(), m.mtime_nsec()))
                        .min(pv.taken_ns);
                    (o.dev, o.inode, o.size, o.mtime_ns, o.ctime_ns)
                        == (dev, ino, entry.size, entry.mtime_ns, entry.ctime_ns)
                        && o.ctime_ns.max(o.mtime_ns).saturating_add(REUSE_MARGIN_NS) < looked
                })
                .map(|o| (&pv.dir, o))
        });
        if let Some((dir, o)) = same
            && fs::hard_link(dir.join(&o.data), pending.at(&data)).is_ok()
        {
            entry.crc = o.crc;
            saved.push(entry);
            continue;
        }
        let mut dst = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(pending.at(&data))
            .map_err(|e| format!("cannot keep {shown}: {e}"))?;
        copy_whole(&src, &mut dst, md.len()).map_err(|e| format!("cannot keep {shown}: {e}"))?;
        saved.push(entry);
    }
    Ok(saved)
}

/// Copies `len` bytes of `src` into the empty `dst`: a reflink when the
/// filesystem can, else in the kernel.
fn copy_whole(src: &fs::File, dst: &mut fs::File, len: u64) -> std::io::Result<()> {
    const FICLONE: libc::c_ulong = 0x4004_9409;
    // SAFETY: FICLONE takes the source descriptor as its argument.
    if unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE, src.as_raw_fd()) } == 0 {
        return Ok(());
    }
    let mut off_in: libc::loff_t = 0;
    let mut left = len;
    while left > 0 {
        let chunk = usize::try_from(left.min(1 << 30)).unwrap_or(1 << 30);
        // SAFETY: both descriptors are open; off_in is a valid pointer; the
        // destination offset is its file position.
        let n = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                &mut off_in,
                dst.as_raw_fd(),
                std::ptr::null_mut(),
                chunk,
                0,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if matches!(
                e.raw_os_error(),
                Some(libc::EXDEV | libc::EINVAL | libc::ENOSYS)
            ) {
                return copy_plain(src, dst, off_in as u64, left);
            }
            return Err(e);
        }
        if n == 0 {
            // The file shrank meanwhile: impossible while the job is stopped,
            // unless something outside it truncated it.
            return Err(std::io::Error::other(
                "the file shrank while it was being copied",
            ));
        }
        left -= n as u64;
    }
    Ok(())
}

fn copy_plain(src: &fs::File, dst: &mut fs::File, from: u64, len: u64) -> std::io::Result<()> {
    let mut s = src.try_clone()?;
    s.seek(SeekFrom::Start(from))?;
    let copied = std::io::copy(&mut s.take(len), dst)?;
    if copied != len {
        return Err(std::io::Error::other(
            "the file shrank while it was being copied",
        ));
    }
    Ok(())
}

fn crc_of(f: &mut fs::File, len: u64) -> std::io::Result<u32> {
    let mut crc = Crc32c::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    f.seek(SeekFrom::Start(0))?;
    while left > 0 {
        let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        let got = f.read(&mut buf[..want])?;
        if got == 0 {
            return Err(std::io::Error::other("shorter than recorded"));
        }
        crc.update(&buf[..got]);
        left -= got as u64;
    }
    Ok(crc.finish())
}

/// After the job runs again: checksum and fsync the new copies (a linked
/// copy keeps the checksum recorded with it). Returns the bytes copied
/// (linked copies cost none).
pub fn finish(pending: &PendingGeneration, files: &mut [SavedFile]) -> Result<u64, String> {
    let mut bytes = 0;
    for f in files.iter_mut() {
        let p = pending.at(&f.data);
        let mut c = fs::File::open(&p).map_err(|e| format!("{}: {e}", f.data))?;
        let linked = c.metadata().is_ok_and(|m| m.nlink() > 1);
        if !linked {
            f.crc = crc_of(&mut c, f.size).map_err(|e| format!("{}: {e}", f.data))?;
            bytes += f.size;
        }
        c.sync_all().map_err(|e| format!("{}: {e}", f.data))?;
    }
    Ok(bytes)
}

/// Paths of files a restore put back: their mappings need not match the
/// inode, size and time recorded for the mapping (read by stage 1).
static RESTORED: Mutex<Option<HashSet<String>>> = Mutex::new(None);

/// Whether `name` (as an image names it) was put back from the generation.
pub fn was_restored(name: &str) -> bool {
    RESTORED
        .lock()
        .ok()
        .and_then(|g| g.as_ref().map(|s| s.contains(name)))
        .unwrap_or(false)
}

/// What [`restore`] made.
#[derive(Debug, Default)]
pub struct Restored {
    /// Temporary names of deleted files, to unlink once the processes run.
    temp: Vec<PathBuf>,
    /// Files that differed from their checkpoint content (for a message).
    pub changed: Vec<String>,
    /// Directories made again for them (for a message).
    pub made_dirs: Vec<String>,
}

impl Restored {
    /// Unlink the temporary names: the files are deleted again, as they
    /// were at the checkpoint.
    pub fn unlink(&mut self) {
        for t in self.temp.drain(..) {
            let _ = fs::remove_file(t);
        }
    }
}

impl Drop for Restored {
    fn drop(&mut self) {
        self.unlink();
    }
}

fn open_copy(g: &LoadedGeneration, f: &SavedFile) -> Result<fs::File, String> {
    if f.data.contains('/') || f.data.starts_with('.') {
        return Err(format!("{}: names a copy outside its generation", f.data));
    }
    let p = g.path.join(&f.data);
    let c = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(&p)
        .map_err(|e| format!("{}: {e}", p.display()))?;
    let md = c.metadata().map_err(|e| format!("{}: {e}", p.display()))?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if !md.is_file() || md.uid() != me || md.len() != f.size {
        return Err(format!(
            "{}: not the copy of {} recorded ({} bytes, owner uid {}; expected {} bytes of uid {me})",
            p.display(),
            f.path,
            md.len(),
            md.uid(),
            f.size
        ));
    }
    Ok(c)
}

/// Puts back every file generation `g` keeps, and returns a copy of `g`
/// whose descriptors and mappings of deleted files refer to their new
/// temporary names. Fails (naming the file) before changing anything when
/// a copy is damaged.
pub fn restore(g: &LoadedGeneration) -> Result<(LoadedGeneration, Restored), String> {
    let files = &g.record.files;
    let mut out = Restored::default();
    let mut g2 = g.clone();
    if files.is_empty() {
        return Ok((g2, out));
    }
    // Check every copy first: a damaged generation changes no user file.
    let mut copies = Vec::new();
    for f in files {
        let mut c = open_copy(g, f)?;
        let crc = crc_of(&mut c, f.size).map_err(|e| format!("{}: {e}", f.data))?;
        if crc != f.crc {
            return Err(format!(
                "{}: corrupt copy of {} (checksum {crc:08x}, recorded {:08x})",
                g.path.join(&f.data).display(),
                f.path,
                f.crc
            ));
        }
        copies.push(c);
    }
    let mut restored = HashSet::new();
    let mut renamed: HashMap<(u64, u64), String> = HashMap::new();
    for (f, mut copy) in files.iter().zip(copies) {
        let path = PathBuf::from(std::ffi::OsStr::from_bytes(&name_bytes(&f.path)));
        if f.deleted {
            let (mut dst, temp, made) = create_temp_for(&path, g)
                .map_err(|e| format!("cannot recreate deleted file {}: {e}", f.path))?;
            out.made_dirs.extend(made);
            copy.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
            copy_whole(&copy, &mut dst, f.size)
                .map_err(|e| format!("cannot recreate deleted file {}: {e}", f.path))?;
            let _ = dst.set_permissions(fs::Permissions::from_mode(f.mode & 0o777));
            let name = encode(temp.as_os_str().as_bytes());
            renamed.insert((f.dev, f.inode), name.clone());
            restored.insert(name);
            out.temp.push(temp);
            continue;
        }
        let (dir, made) = make_parents(&path)?;
        out.made_dirs.extend(made);
        let name = path
            .file_name()
            .map(Path::new)
            .ok_or_else(|| format!("cannot put back {}: no file name", path.display()))?;
        let changed = put_back(dir.as_fd(), name, &path, f, &mut copy)?;
        if changed {
            out.changed.push(path.display().to_string());
        }
        restored.insert(f.path.clone());
    }
    // Descriptors and mappings of deleted files now name the temporary file.
    for m in &mut g2.processes {
        for fd in m.fds.iter_mut().filter(|d| d.kind == FdKind::File) {
            if let Some(n) = renamed.get(&(fd.dev, fd.inode)) {
                fd.path = n.clone();
            }
        }
    }
    if let Ok(mut s) = RESTORED.lock() {
        *s = Some(restored);
    }
    Ok((g2, out))
}

/// Recreate the deleted file `path` under a new name next to where it was
/// (or in the checkpoint directory when that directory cannot be made or
/// written there): created with `O_EXCL | O_NOFOLLOW` relative to its
/// directory, which is opened by the walk of [`make_parents`] (never by a
/// path checked earlier). Returns the file, its name and the directories
/// made for it.
fn create_temp_for(
    path: &Path,
    g: &LoadedGeneration,
) -> Result<(fs::File, PathBuf, Vec<String>), String> {
    // Random: restarts of one image may run at once (in namespaces where
    // they all have the same pid), and the name is created with O_EXCL.
    let mut r = [0u8; 8];
    // SAFETY: r is valid for writing 8 bytes.
    if unsafe { libc::getrandom(r.as_mut_ptr().cast(), r.len(), 0) } != 8 {
        return Err("getrandom failed".into());
    }
    let name = format!(".ckpt-restore-{:016x}", u64::from_ne_bytes(r));
    let mut why = String::new();
    // The file's own place, then the checkpoint directory (the parent of
    // the generation's directory).
    for near in [path, g.path.as_path()] {
        let Some(dir) = near.parent() else { continue };
        let (fd, made) = match make_parents(near) {
            Ok(x) => x,
            Err(e) => {
                why = e;
                continue;
            }
        };
        match open_at_mode(
            Some(fd.as_fd()),
            Path::new(&name),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
            0o600,
        ) {
            Ok(f) => return Ok((fs::File::from(f), dir.join(&name), made)),
            Err(e) => why = format!("{}: {e}", dir.display()),
        }
    }
    Err(format!(
        "no writable directory to recreate the deleted file {} ({why})",
        path.display()
    ))
}

/// The directory holding `path`, opened by a walk from `/` one component
/// at a time (never by its path name, which could be changed between a
/// check and its use), making the directories that do not exist (mode 0700,
/// the restart's own) and returning them too. A restart on another node
/// does not find the node-local directories a job's files were in
/// (`/tmp/ompi.*` of an MPI launcher, a program's scratch directory in
/// `/tmp`): they existed at the checkpoint, so they are made again
/// (docs/files.md).
///
/// Directories and links that exist are followed as the job followed
/// them: the restart runs in the job's user namespace, where every other
/// user, root included, shows as the overflow uid, so their owners cannot
/// be told apart there (the kernel's `protected_symlinks` keeps a link
/// another user planted in `/tmp` from being followed).
fn make_parents(path: &Path) -> Result<(OwnedFd, Vec<String>), String> {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let shown = path.display();
    let parent = path
        .parent()
        .filter(|p| p.is_absolute())
        .ok_or_else(|| format!("cannot put back {shown}: not an absolute path"))?;
    let mut cur = open_at(None, Path::new("/"), libc::O_PATH | libc::O_DIRECTORY)
        .map_err(|e| format!("cannot open /: {e}"))?;
    let mut here = PathBuf::from("/");
    let mut made = Vec::new();
    for c in parent.components() {
        let name = match c {
            std::path::Component::RootDir => continue,
            std::path::Component::Normal(n) => Path::new(n),
            _ => {
                return Err(format!(
                    "cannot put back {shown}: its path is not canonical"
                ));
            }
        };
        here.push(name);
        match stat_at(cur.as_fd(), name) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                match mkdir_at(cur.as_fd(), name, 0o700) {
                    Ok(()) => made.push(here.display().to_string()),
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                    Err(e) => {
                        return Err(format!(
                            "cannot recreate {shown} (its directory {} is gone): {e}",
                            here.display()
                        ));
                    }
                }
                let st =
                    stat_at(cur.as_fd(), name).map_err(|e| format!("{}: {e}", here.display()))?;
                if st.st_mode & libc::S_IFMT != libc::S_IFDIR || st.st_uid != me {
                    return Err(format!(
                        "cannot recreate {shown}: its directory {} was made meanwhile by another user \
                         (or is not a directory)",
                        here.display()
                    ));
                }
            }
            Err(e) => return Err(format!("{}: {e}", here.display())),
        }
        cur = open_at(Some(cur.as_fd()), name, libc::O_PATH | libc::O_DIRECTORY)
            .map_err(|e| format!("cannot put back {shown}: {}: {e}", here.display()))?;
    }
    Ok((cur, made))
}

fn c_name(name: &Path) -> std::io::Result<std::ffi::CString> {
    std::ffi::CString::new(name.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
}

/// `openat(dir, name, flags | O_CLOEXEC, mode)` (`dir` None: the cwd).
fn open_at_mode(
    dir: Option<BorrowedFd<'_>>,
    name: &Path,
    flags: i32,
    mode: u32,
) -> std::io::Result<OwnedFd> {
    let c = c_name(name)?;
    let d = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    // SAFETY: c is a valid C string; d is an open directory or AT_FDCWD.
    let fd = unsafe { libc::openat(d, c.as_ptr(), flags | libc::O_CLOEXEC, mode) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: openat just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn open_at(dir: Option<BorrowedFd<'_>>, name: &Path, flags: i32) -> std::io::Result<OwnedFd> {
    open_at_mode(dir, name, flags, 0)
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`.
fn stat_at(dir: BorrowedFd<'_>, name: &Path) -> std::io::Result<libc::stat> {
    let c = c_name(name)?;
    // SAFETY: stat is plain data; all-zero is valid.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid C string, dir an open directory, st writable.
    let r = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            c.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st)
}

fn stat_fd(fd: BorrowedFd<'_>) -> std::io::Result<libc::stat> {
    // SAFETY: stat is plain data; all-zero is valid.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fd is open (O_PATH is enough for fstat); st writable.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st)
}

fn mkdir_at(dir: BorrowedFd<'_>, name: &Path, mode: u32) -> std::io::Result<()> {
    let c = c_name(name)?;
    // SAFETY: c is a valid C string, dir an open directory.
    if unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), mode) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Writes the copy back as `name` in `dir` (`shown`: its path, for
/// messages): the same inode when the file is still there (truncated to its
/// size), a new file with its mode when it was removed. True when the file
/// differed from the checkpoint. A file that is no longer a regular file,
/// or another user's file in its place, is refused, never written.
fn put_back(
    dir: BorrowedFd<'_>,
    name: &Path,
    shown: &Path,
    f: &SavedFile,
    copy: &mut fs::File,
) -> Result<bool, String> {
    let shown = shown.display();
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let (dst, changed, created) = match stat_at(dir, name) {
        Ok(st) if st.st_mode & libc::S_IFMT != libc::S_IFREG => {
            return Err(format!(
                "{shown} (which the job was writing) is no longer a regular file; move it away \
                 to let the restart put back its content at the checkpoint"
            ));
        }
        Ok(st) if st.st_ino != f.inode && st.st_uid != me => {
            // Not the file the job was writing, and not the restart's user's:
            // someone else put it there.
            return Err(format!(
                "{shown} (which the job was writing) was replaced by a file of {}; move it away \
                 to let the restart put back its content at the checkpoint",
                safe_dir::user_name(st.st_uid)
            ));
        }
        Ok(st) => {
            let changed = (
                st.st_ino,
                st.st_size as u64,
                ns(st.st_mtime, st.st_mtime_nsec),
            ) != (f.inode, f.size, f.mtime_ns);
            let d = open_at(Some(dir), name, libc::O_WRONLY | libc::O_NOFOLLOW)
                .map_err(|e| format!("cannot put back {shown}: {e}"))?;
            // The file opened is the one looked at (not one put in its place).
            let now = stat_fd(d.as_fd()).map_err(|e| format!("cannot put back {shown}: {e}"))?;
            if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) {
                return Err(format!(
                    "cannot put back {shown}: it was replaced meanwhile"
                ));
            }
            (d, changed, false)
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
            let d = open_at_mode(
                Some(dir),
                name,
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
                f.mode & 0o7777,
            )
            .map_err(|e| format!("cannot recreate {shown} (removed since the checkpoint): {e}"))?;
            (d, true, true)
        }
        Err(e) => return Err(format!("cannot put back {shown}: {e}")),
    };
    let mut dst = fs::File::from(dst);
    if created {
        // Its mode, not the one the restart's umask leaves.
        dst.set_permissions(fs::Permissions::from_mode(f.mode & 0o7777))
            .map_err(|e| format!("cannot set the mode of {shown}: {e}"))?;
    }
    // Written back even when size and time look unchanged: writes through a
    // shared mapping need not change the modification time.
    dst.set_len(0)
        .map_err(|e| format!("cannot put back {shown}: {e}"))?;
    copy.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    copy_whole(copy, &mut dst, f.size).map_err(|e| format!("cannot put back {shown}: {e}"))?;
    dst.flush().map_err(|e| e.to_string())?;
    dst.sync_all()
        .map_err(|e| format!("cannot put back {shown}: {e}"))?;
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_directories_above_a_kept_file_are_made_again_private() {
        let base = std::env::temp_dir().join(format!("ckpt-parents-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        fs::create_dir(&base).expect("mkdir");
        let file = base.join("ompi.n1.1000/pid.2/dstore/seg");
        let (dir, made) = make_parents(&file).expect("made");
        assert_eq!(
            safe_dir::fd_path(dir.as_fd()),
            base.join("ompi.n1.1000/pid.2/dstore"),
            "the descriptor is the file's directory"
        );
        let want: Vec<String> = [
            "ompi.n1.1000",
            "ompi.n1.1000/pid.2",
            "ompi.n1.1000/pid.2/dstore",
        ]
        .iter()
        .map(|d| base.join(d).display().to_string())
        .collect();
        assert_eq!(made, want);
        for d in &want {
            let md = fs::symlink_metadata(d).expect("made dir");
            assert!(md.is_dir());
            assert_eq!(md.mode() & 0o777, 0o700, "{d}");
        }
        assert!(
            make_parents(&file).expect("again").1.is_empty(),
            "nothing left to make"
        );
        let _ = fs::remove_dir_all(&base);
    }

    /// A file another user put in the place of the job's file is not
    /// written (the job's own file is, whoever owns it). Run as root (CI),
    /// the test plays the other user with chown.
    #[test]
    fn another_users_file_in_the_place_of_the_jobs_is_refused() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return; // cannot make a file of another user
        }
        let base = std::env::temp_dir().join(format!("ckpt-planted-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        fs::create_dir(&base).expect("mkdir");
        let chown = |p: &Path| {
            let c = std::ffi::CString::new(p.as_os_str().as_bytes()).expect("c path");
            // SAFETY: valid C string.
            assert_eq!(unsafe { libc::lchown(c.as_ptr(), 65534, 65534) }, 0);
        };
        let (dir, made) = make_parents(&base.join("theirs")).expect("walk");
        assert!(made.is_empty());
        let target = base.join("theirs");
        fs::write(&target, b"theirs").expect("write");
        chown(&target);
        let ino = fs::metadata(&target).expect("stat").ino();
        let copy_p = base.join("copy");
        fs::write(&copy_p, b"ours").expect("write");
        let mut c = fs::File::open(&copy_p).expect("open");
        let mut f = SavedFile {
            path: encode(target.as_os_str().as_bytes()),
            deleted: false,
            dev: 0,
            inode: ino + 1,
            size: 4,
            mode: 0o600,
            mtime_ns: 0,
            ctime_ns: 0,
            data: "copy".into(),
            crc: 0,
        };
        let e =
            put_back(dir.as_fd(), Path::new("theirs"), &target, &f, &mut c).expect_err("refused");
        assert!(e.contains("was replaced by a file of"), "{e}");
        assert_eq!(fs::read(&target).expect("read"), b"theirs");
        // The job's own file (same inode), whoever owns it, is put back.
        f.inode = ino;
        put_back(dir.as_fd(), Path::new("theirs"), &target, &f, &mut c).expect("put back");
        assert_eq!(fs::read(&target).expect("read"), b"ours");
        let _ = fs::remove_dir_all(&base);
    }

    #[test]
    fn the_record_round_trips() {
        let f = SavedFile {
            path: encode(b"/tmp/caf\xe9.db"),
            deleted: true,
            dev: 2049,
            inode: 77,
            size: 4096,
            mode: 0o644,
            mtime_ns: 1,
            ctime_ns: 2,
            data: "file-2049-77.data".into(),
            crc: 0xdead_beef,
        };
        let j = serde_json::to_string(&f).unwrap();
        let back: SavedFile = serde_json::from_str(&j).unwrap();
        assert_eq!(back, f);
        assert_eq!(name_bytes(&back.path), b"/tmp/caf\xe9.db".to_vec());
    }

    #[test]
    fn devices_from_maps() {
        assert_eq!(parse_dev(b"08:01"), Some(libc::makedev(8, 1)));
        assert_eq!(parse_dev(b"fd:1a"), Some(libc::makedev(0xfd, 0x1a)));
        assert_eq!(parse_dev(b"x"), None);
    }

    #[test]
    fn put_back_restores_content_size_and_inode() {
        let d = std::env::temp_dir().join(format!("ckpt-saved-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        let (target, copy_p) = (d.join("db"), d.join("copy"));
        fs::write(&copy_p, b"checkpoint content").unwrap();
        fs::write(&target, b"checkpoint content, then more rows").unwrap();
        let ino = fs::metadata(&target).unwrap().ino();
        let f = SavedFile {
            path: encode(target.as_os_str().as_bytes()),
            deleted: false,
            dev: 0,
            inode: ino,
            size: 18,
            mode: 0o640,
            mtime_ns: 0,
            ctime_ns: 0,
            data: "copy".into(),
            crc: 0,
        };
        let mut c = fs::File::open(&copy_p).unwrap();
        let dir = open_at(None, &d, libc::O_PATH | libc::O_DIRECTORY).unwrap();
        let back = |c: &mut fs::File| put_back(dir.as_fd(), Path::new("db"), &target, &f, c);
        assert!(back(&mut c).unwrap());
        assert_eq!(fs::read(&target).unwrap(), b"checkpoint content");
        assert_eq!(fs::metadata(&target).unwrap().ino(), ino, "same inode");
        // Removed: created again, with its mode.
        fs::remove_file(&target).unwrap();
        assert!(back(&mut c).unwrap());
        assert_eq!(fs::read(&target).unwrap(), b"checkpoint content");
        assert_eq!(fs::metadata(&target).unwrap().mode() & 0o777, 0o640);
        // A symlink in its place is refused, not followed.
        fs::remove_file(&target).unwrap();
        std::os::unix::fs::symlink(&copy_p, &target).unwrap();
        let e = back(&mut c).unwrap_err();
        assert!(e.contains("no longer a regular file"), "{e}");
        fs::remove_dir_all(&d).unwrap();
    }
}
