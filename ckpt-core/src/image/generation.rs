//! Checkpoint directories and their generations.
//!
//! ```text
//! DIR/                      0700, owned by the user
//!   gen-000007/             a complete generation (has generation.json)
//!     generation.json       GenerationRecord: processes, sizes, checksums
//!     proc-<pid>.json       ProcessManifest
//!     proc-<pid>.img        header + page data
//!   gen-000008.tmp/         a checkpoint in progress (never restored)
//!   latest -> gen-000007    convenience link, updated atomically
//! ```
//! A generation becomes complete only by the `rename` of its `.tmp`
//! directory, after every file in it and the directory itself were fsynced.
//! The previous complete generations stay until a newer one is complete.

use std::ffi::{CString, OsStr};
use std::fs;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::checksum::crc32c;
use super::format;
use super::manifest::{GENERATION_FORMAT, GenerationRecord, PROCESS_FORMAT, ProcessManifest};
use crate::error::ImageError;
use crate::fault::{self, Point};

/// How many complete generations are kept by default.
pub const DEFAULT_KEEP: usize = 2;
/// The file listing the generations [`CheckpointDir::prune`] keeps
/// whatever their age.
pub const PINNED: &str = "pinned";

/// A checkpoint directory that exists, is ours, cannot be changed by other
/// users (see `docs/security.md`), and is held open: everything ckpt
/// creates, renames or removes in it is done relative to that descriptor.
#[derive(Clone, Debug)]
pub struct CheckpointDir {
    /// The real path when it was opened (for messages and for processes
    /// that must find it by name, such as a restarted job's coordinator
    /// socket).
    path: PathBuf,
    fd: Arc<OwnedFd>,
    mode: u32,
}

/// Summary of one generation for `ckpt status`.
#[derive(Clone, Debug)]
pub struct GenerationInfo {
    /// Generation number.
    pub number: u64,
    /// Its directory.
    pub path: PathBuf,
    /// `complete`, `incomplete` or `corrupt: why`.
    pub state: String,
    /// The record when complete.
    pub record: Option<GenerationRecord>,
}

/// A complete generation, read and validated (all but the page data checksums,
/// which the restorer verifies as it reads the pages into place).
#[derive(Clone, Debug)]
pub struct LoadedGeneration {
    /// Its directory.
    pub path: PathBuf,
    /// The record.
    pub record: GenerationRecord,
    /// Manifests in record order.
    pub processes: Vec<ProcessManifest>,
    /// For an incremental generation: the generations it refers to for
    /// unchanged memory, nearest first.
    pub bases: Vec<LoadedGeneration>,
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

fn dir_err(dir: &Path, problem: impl Into<String>) -> ImageError {
    ImageError::Dir {
        dir: dir.to_path_buf(),
        problem: problem.into(),
    }
}

fn fsync_path(p: &Path) -> Result<(), ImageError> {
    let f = fs::File::open(p).map_err(|e| ImageError::io(p, "open for fsync", e))?;
    f.sync_all().map_err(|e| ImageError::io(p, "fsync", e))
}

fn parse_gen_name(name: &str) -> Option<(u64, bool)> {
    let rest = name.strip_prefix("gen-")?;
    let (num, tmp) = match rest.strip_suffix(".tmp") {
        Some(n) => (n, true),
        None => (rest, false),
    };
    if num.len() < 6 || !num.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    Some((num.parse().ok()?, tmp))
}

/// Directory name of generation `n`.
pub fn gen_name(n: u64) -> String {
    format!("gen-{n:06}")
}

fn cstr(name: &OsStr) -> Result<CString, std::io::Error> {
    CString::new(name.as_bytes()).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
}

fn last_err() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// Open `name` in directory `dir` as a directory, never following a
/// symlink in its last component.
fn open_dir_at(dir: BorrowedFd<'_>, name: &OsStr) -> Result<OwnedFd, std::io::Error> {
    let c = cstr(name)?;
    // SAFETY: c is NUL-terminated; dir is an open descriptor.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(last_err());
    }
    // SAFETY: openat just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Where an open descriptor is now (`/proc/self/fd/N` resolved).
fn real_path(fd: BorrowedFd<'_>) -> Option<PathBuf> {
    fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()
}

impl CheckpointDir {
    /// Open an existing checkpoint directory once (`O_NOFOLLOW`: not a
    /// symlink) and check the descriptor: a directory owned by us, not
    /// writable by group or others, writable by us, with no directory above
    /// it that another user could change. Its mode is never changed here:
    /// a directory ckpt did not create is reported, not repaired.
    pub fn open(path: &Path) -> Result<Self, ImageError> {
        let c = cstr(path.as_os_str()).map_err(|_| dir_err(path, "path contains a NUL byte"))?;
        // SAFETY: c is a valid NUL-terminated path.
        let raw = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if raw < 0 {
            let e = last_err();
            return Err(match e.raw_os_error() {
                Some(libc::ENOENT) => dir_err(
                    path,
                    "does not exist; create it (mkdir -m 700) or pass an existing directory",
                ),
                Some(libc::ELOOP) => dir_err(path, "is a symbolic link; pass the real directory"),
                Some(libc::ENOTDIR) if fs::symlink_metadata(path).is_ok_and(|m| m.is_symlink()) => {
                    dir_err(path, "is a symbolic link; pass the real directory")
                }
                Some(libc::ENOTDIR) => dir_err(path, "is not a directory"),
                _ => dir_err(path, format!("cannot be opened: {e}")),
            });
        }
        // SAFETY: open just returned this descriptor and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let md = fs::File::from(fd.try_clone().map_err(|e| dir_err(path, e.to_string()))?)
            .metadata()
            .map_err(|e| dir_err(path, format!("cannot be read: {e}")))?;
        if md.uid() != euid() {
            return Err(dir_err(
                path,
                format!(
                    "is owned by uid {}, not by you (uid {}); use a directory of your own",
                    md.uid(),
                    euid()
                ),
            ));
        }
        safe_dir::check(fd.as_fd(), euid()).map_err(|e| ImageError::Dir {
            dir: path.to_path_buf(),
            problem: format!("cannot hold checkpoint images: {e}"),
        })?;
        // SAFETY: fd is open; "." names the directory itself.
        if unsafe { libc::faccessat(fd.as_raw_fd(), c".".as_ptr(), libc::W_OK | libc::X_OK, 0) }
            != 0
        {
            return Err(dir_err(
                path,
                "is not writable by you; fix its permissions or choose another directory",
            ));
        }
        // Absolute, so that the program (which may change directory) and
        // the restored program still find the socket and generations.
        let path = real_path(fd.as_fd()).unwrap_or_else(|| path.to_path_buf());
        Ok(CheckpointDir {
            path,
            fd: Arc::new(fd),
            mode: md.mode() & 0o7777,
        })
    }

    /// Create the directory (and missing parents) with mode 0700, then open it.
    pub fn create(path: &Path) -> Result<Self, ImageError> {
        match fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
        {
            Ok(()) => {}
            Err(e) => return Err(dir_err(path, format!("cannot be created: {e}"))),
        }
        Self::open(path)
    }

    /// The directory, as it was named when opened (for messages and for
    /// other processes).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A note when others may list the directory (its generations are
    /// 0700 and its files 0600 all the same); ckpt does not change the
    /// mode of a directory it did not create.
    pub fn mode_note(&self) -> Option<String> {
        (self.mode & 0o077 != 0).then(|| {
            format!(
                "{} has mode {:04o}: others can see which checkpoints it holds, not their \
                 contents (generations are 0700, images 0600); chmod 700 it to hide them too",
                self.path.display(),
                self.mode
            )
        })
    }

    /// The open directory.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// A path to `name` inside the directory that goes through the held
    /// descriptor (`/proc/self/fd/N/name`): valid in this process only,
    /// and always the directory that was opened and checked, whatever
    /// happens to its name.
    pub fn at(&self, name: impl AsRef<Path>) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd())).join(name)
    }

    /// Path of the coordinator socket.
    pub fn socket_path(&self) -> PathBuf {
        self.path.join("ckpt.sock")
    }

    /// Create `name` in the directory for writing: a new file (`O_EXCL`,
    /// never through a symlink), mode 0600. An existing entry of that name
    /// is removed first when `replace` is set.
    pub fn create_file(&self, name: &str, replace: bool) -> Result<fs::File, std::io::Error> {
        let c = cstr(OsStr::new(name))?;
        if replace {
            self.remove(name)?;
        }
        // SAFETY: c is NUL-terminated; the descriptor is open.
        let fd = unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o600 as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(last_err());
        }
        // SAFETY: openat just returned this descriptor and nothing else owns it.
        Ok(fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Open an existing regular file `name` of the directory (never
    /// through a symlink) for reading, or for reading and writing.
    pub fn open_file(&self, name: &str, write: bool) -> Result<fs::File, std::io::Error> {
        let c = cstr(OsStr::new(name))?;
        let mode = if write { libc::O_RDWR } else { libc::O_RDONLY };
        // SAFETY: c is NUL-terminated; the descriptor is open.
        let fd = unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                mode | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK,
            )
        };
        if fd < 0 {
            return Err(last_err());
        }
        // SAFETY: openat just returned this descriptor and nothing else owns it.
        let f = fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        if !f.metadata()?.is_file() {
            return Err(std::io::Error::other("not a regular file"));
        }
        Ok(f)
    }

    /// Rename `from` to `to`, both in the directory.
    pub fn rename(&self, from: &str, to: &str) -> Result<(), std::io::Error> {
        let (a, b) = (cstr(OsStr::new(from))?, cstr(OsStr::new(to))?);
        let d = self.fd.as_raw_fd();
        // SAFETY: both names are NUL-terminated; the descriptor is open.
        if unsafe { libc::renameat(d, a.as_ptr(), d, b.as_ptr()) } != 0 {
            return Err(last_err());
        }
        Ok(())
    }

    /// Remove the file (or symlink, or socket) `name`; a missing one is fine.
    pub fn remove(&self, name: &str) -> Result<(), std::io::Error> {
        let c = cstr(OsStr::new(name))?;
        // SAFETY: c is NUL-terminated; the descriptor is open.
        if unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) } != 0 {
            let e = last_err();
            if e.raw_os_error() != Some(libc::ENOENT) {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Names in the directory.
    pub fn names(&self) -> Result<Vec<String>, ImageError> {
        let rd = fs::read_dir(self.at("."))
            .map_err(|e| ImageError::io(&self.path, "read directory", e))?;
        let mut v = Vec::new();
        for e in rd {
            let e = e.map_err(|e| ImageError::io(&self.path, "read directory", e))?;
            if let Some(n) = e.file_name().to_str() {
                v.push(n.to_owned());
            }
        }
        Ok(v)
    }

    /// Whether generation directory `name` exists.
    pub fn has_generation(&self, name: &str) -> bool {
        open_dir_at(self.fd(), OsStr::new(name)).is_ok()
    }

    fn sync(&self) -> Result<(), ImageError> {
        // SAFETY: fsync of our open descriptor.
        if unsafe { libc::fsync(self.fd.as_raw_fd()) } != 0 {
            return Err(ImageError::io(&self.path, "fsync", last_err()));
        }
        Ok(())
    }

    fn entries(&self) -> Result<Vec<(u64, bool, PathBuf)>, ImageError> {
        let mut v = Vec::new();
        for name in self.names()? {
            if let Some((n, tmp)) = parse_gen_name(&name) {
                v.push((n, tmp, self.path.join(&name)));
            }
        }
        v.sort_by_key(|(n, tmp, _)| (*n, *tmp));
        Ok(v)
    }

    /// Start a new generation: creates `gen-N.tmp` (0700) with N above every
    /// existing generation, and opens it.
    pub fn begin(&self) -> Result<PendingGeneration, ImageError> {
        let next = self
            .entries()?
            .iter()
            .map(|(n, _, _)| *n)
            .max()
            .unwrap_or(0)
            + 1;
        let name = format!("{}.tmp", gen_name(next));
        let path = self.path.join(&name);
        let c = cstr(OsStr::new(&name)).map_err(|e| ImageError::io(&path, "name", e))?;
        // SAFETY: c is NUL-terminated; the descriptor is open.
        if unsafe { libc::mkdirat(self.fd.as_raw_fd(), c.as_ptr(), 0o700) } != 0 {
            return Err(ImageError::io(
                &path,
                "create generation directory",
                last_err(),
            ));
        }
        let fd = open_dir_at(self.fd(), OsStr::new(&name))
            .map_err(|e| ImageError::io(&path, "open generation directory", e))?;
        Ok(PendingGeneration {
            dir: self.clone(),
            number: next,
            path,
            fd,
        })
    }

    /// All generations, oldest first.
    pub fn list(&self) -> Result<Vec<GenerationInfo>, ImageError> {
        let mut out = Vec::new();
        for (n, tmp, path) in self.entries()? {
            if tmp {
                out.push(GenerationInfo {
                    number: n,
                    path,
                    state: "incomplete".into(),
                    record: None,
                });
                continue;
            }
            match read_record(&path) {
                Ok(r) => out.push(GenerationInfo {
                    number: n,
                    path,
                    state: "complete".into(),
                    record: Some(r),
                }),
                Err(e) => out.push(GenerationInfo {
                    number: n,
                    path,
                    state: format!("corrupt: {e}"),
                    record: None,
                }),
            }
        }
        Ok(out)
    }

    /// Load generation directory `path` and validate everything but page data.
    pub fn load(&self, path: &Path) -> Result<LoadedGeneration, ImageError> {
        load_generation(path)
    }

    /// Complete generations, newest first, each either loaded or with the
    /// reason it cannot be used.
    pub fn candidates(&self) -> Result<Vec<Candidate>, ImageError> {
        let mut v: Vec<_> = self
            .entries()?
            .into_iter()
            .filter(|(_, tmp, _)| !tmp)
            .map(|(_, _, p)| {
                let r = load_generation(&p);
                (p, r)
            })
            .collect();
        v.reverse();
        Ok(v)
    }

    /// Remove complete generations beyond the newest `keep`, and stale `.tmp`
    /// directories older than the newest complete one.
    pub fn prune(&self, keep: usize) -> Result<(), ImageError> {
        let entries = self.entries()?;
        let complete: Vec<u64> = entries
            .iter()
            .filter(|(_, t, _)| !t)
            .map(|(n, _, _)| *n)
            .collect();
        let newest = complete.last().copied().unwrap_or(0);
        let cut = complete.len().saturating_sub(keep);
        // Keep the newest `keep`, the pinned ones, and every generation they
        // refer to.
        let mut kept: std::collections::BTreeSet<u64> =
            complete.iter().skip(cut).copied().collect();
        kept.extend(self.pinned().into_iter().filter(|n| complete.contains(n)));
        let mut follow: Vec<u64> = kept.iter().copied().collect();
        while let Some(n) = follow.pop() {
            if let Ok(Some(b)) = read_record(&self.at(gen_name(n))).map(|r| r.base)
                && complete.contains(&b)
                && kept.insert(b)
            {
                follow.push(b);
            }
        }
        let old: Vec<u64> = complete
            .iter()
            .filter(|n| !kept.contains(n))
            .copied()
            .collect();
        for (n, tmp, p) in entries {
            if (tmp && n < newest) || (!tmp && old.contains(&n)) {
                // An old complete generation first becomes `.tmp`, so that a
                // removal cut short (a crash) never leaves a half-deleted
                // generation that looks complete; the next prune finishes it.
                let tmp_name = format!("{}.tmp", gen_name(n));
                let doomed = if tmp || self.rename(&gen_name(n), &tmp_name).is_ok() {
                    tmp_name
                } else {
                    gen_name(n)
                };
                fs::remove_dir_all(self.at(&doomed))
                    .map_err(|e| ImageError::io(&p, "remove old generation", e))?;
                fault::hit(Point::PrunedOne);
            }
        }
        Ok(())
    }

    /// Generations kept whatever their age ([`PINNED`]): a step's task
    /// images that a batch job's checkpoint names (docs/batch-jobs.md).
    pub fn pinned(&self) -> Vec<u64> {
        let Ok(mut f) = self.open_file(PINNED, false) else {
            return Vec::new();
        };
        let mut text = String::new();
        if std::io::Read::read_to_string(&mut std::io::Read::take(&mut f, 4096), &mut text).is_err()
        {
            return Vec::new();
        }
        text.split_whitespace()
            .filter_map(|n| n.parse().ok())
            .collect()
    }

    /// Replaces the set of pinned generations (written to a temporary name,
    /// then renamed).
    pub fn pin(&self, numbers: &[u64]) -> Result<(), std::io::Error> {
        let text: Vec<String> = numbers.iter().map(u64::to_string).collect();
        let tmp = format!("{PINNED}.tmp");
        let mut f = self.create_file(&tmp, true)?;
        std::io::Write::write_all(&mut f, format!("{}\n", text.join(" ")).as_bytes())?;
        f.sync_all()?;
        self.rename(&tmp, PINNED)
    }

    /// Remove every generation (after a job finished normally).
    pub fn remove_all(&self) -> Result<(), ImageError> {
        for (_, _, p) in self.entries()? {
            let name = p.file_name().unwrap_or_default();
            fs::remove_dir_all(self.at(name))
                .map_err(|e| ImageError::io(&p, "remove generation", e))?;
        }
        self.remove("latest")
            .map_err(|e| ImageError::io(self.path.join("latest"), "remove", e))
    }
}

/// A complete generation's directory and whether it could be loaded.
pub type Candidate = (PathBuf, Result<LoadedGeneration, ImageError>);

/// A generation being written.
#[derive(Debug)]
pub struct PendingGeneration {
    dir: CheckpointDir,
    /// Its number.
    pub number: u64,
    /// The `.tmp` directory the processes write into (for messages).
    pub path: PathBuf,
    /// That directory, open: processes receive it with the request to
    /// write, and everything here is done relative to it.
    fd: OwnedFd,
}

impl PendingGeneration {
    /// The open `.tmp` directory.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// A path to `name` inside it through the descriptor (this process only).
    pub fn at(&self, name: impl AsRef<Path>) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd())).join(name)
    }

    fn tmp_name(&self) -> String {
        format!("{}.tmp", gen_name(self.number))
    }

    /// Make the generation complete and durable: fsync every file, write
    /// `generation.json`, fsync the directory, rename it into place, fsync the
    /// parent, point `latest` at it, and prune old generations.
    pub fn commit(self, record: &GenerationRecord, keep: usize) -> Result<PathBuf, ImageError> {
        // Where the directory is now (its descriptor), for the caller.
        let final_path = real_path(self.dir.fd())
            .unwrap_or_else(|| self.dir.path.clone())
            .join(gen_name(self.number));
        let made = self.write_record(record).and_then(|()| {
            self.dir
                .rename(&self.tmp_name(), &gen_name(self.number))
                .map_err(|e| ImageError::io(&final_path, "rename into place", e))
        });
        if let Err(e) = made {
            // Not complete: do not leave it taking space (a full disk) until
            // the next successful checkpoint prunes it.
            let _ = fs::remove_dir_all(self.dir.at(self.tmp_name()));
            return Err(e);
        }
        fault::hit(Point::Renamed);
        self.dir.sync()?;
        let tmp_link = self.dir.path.join(".latest.tmp");
        let _ = self.dir.remove(".latest.tmp");
        std::os::unix::fs::symlink(gen_name(self.number), self.dir.at(".latest.tmp"))
            .map_err(|e| ImageError::io(&tmp_link, "create symlink", e))?;
        fault::hit(Point::LatestTmp);
        self.dir
            .rename(".latest.tmp", "latest")
            .map_err(|e| ImageError::io(self.dir.path.join("latest"), "update", e))?;
        fault::hit(Point::LatestUpdated);
        self.dir.sync()?;
        self.dir.prune(keep)?;
        Ok(final_path)
    }

    /// Fsync every file, write and fsync `generation.json`, fsync the directory.
    fn write_record(&self, record: &GenerationRecord) -> Result<(), ImageError> {
        for p in &record.processes {
            fsync_path(&self.at(&p.manifest))?;
            fsync_path(&self.at(&p.image))?;
        }
        fault::hit(Point::FilesSynced);
        let rec_path = self.path.join("generation.json");
        let data = serde_json::to_vec_pretty(record).map_err(|e| ImageError::Corrupt {
            file: rec_path.display().to_string(),
            what: e.to_string(),
        })?;
        {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode_0600()
                .open(self.at("generation.json"))
                .map_err(|e| ImageError::io(&rec_path, "create", e))?;
            let (first, rest) = data.split_at(data.len() / 2);
            f.write_all(first)
                .map_err(|e| ImageError::io(&rec_path, "write", e))?;
            fault::hit(Point::RecordHalf);
            f.write_all(rest)
                .map_err(|e| ImageError::io(&rec_path, "write", e))?;
            f.sync_all()
                .map_err(|e| ImageError::io(&rec_path, "fsync", e))?;
        }
        fault::hit(Point::RecordWritten);
        // SAFETY: fsync of our open descriptor.
        if unsafe { libc::fsync(self.fd.as_raw_fd()) } != 0 {
            return Err(ImageError::io(&self.path, "fsync", last_err()));
        }
        Ok(())
    }

    /// Throw the partial generation away (the previous one is untouched).
    pub fn abort(self) {
        let _ = fs::remove_dir_all(self.dir.at(self.tmp_name()));
    }
}

trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}
impl Mode0600 for fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.mode(0o600).custom_flags(libc::O_NOFOLLOW)
    }
}

fn check_owner(p: &Path, md: &fs::Metadata) -> Result<(), ImageError> {
    if md.uid() != euid() {
        return Err(ImageError::Foreign {
            file: p.to_path_buf(),
            owner: md.uid(),
            me: euid(),
        });
    }
    Ok(())
}

fn read_small(p: &Path, limit: u64) -> Result<Vec<u8>, ImageError> {
    let md = fs::symlink_metadata(p).map_err(|e| ImageError::io(p, "stat", e))?;
    if !md.is_file() {
        return Err(ImageError::Corrupt {
            file: p.display().to_string(),
            what: "not a regular file".into(),
        });
    }
    check_owner(p, &md)?;
    if md.len() > limit {
        return Err(ImageError::Corrupt {
            file: p.display().to_string(),
            what: format!("implausibly large ({} bytes)", md.len()),
        });
    }
    fs::read(p).map_err(|e| ImageError::io(p, "read", e))
}

fn read_record(gdir: &Path) -> Result<GenerationRecord, ImageError> {
    let p = gdir.join("generation.json");
    let data = read_small(&p, 16 << 20)?;
    parse_record(&p.display().to_string(), &data)
}

/// Decode a generation record (`generation.json`): JSON, format name and
/// version. `file` names it in errors. Never panics on any input.
pub fn parse_record(file: &str, data: &[u8]) -> Result<GenerationRecord, ImageError> {
    parse_json(file, data, GENERATION_FORMAT)
}

/// Decode a process manifest (`proc-<pid>.json`): JSON, format name and
/// version; [`validate_manifest`] checks its contents against the data file.
/// Never panics on any input.
pub fn parse_manifest(file: &str, data: &[u8]) -> Result<ProcessManifest, ImageError> {
    parse_json(file, data, PROCESS_FORMAT)
}

fn parse_json<T: serde::de::DeserializeOwned>(
    file: &str,
    data: &[u8],
    format: &str,
) -> Result<T, ImageError> {
    let v: serde_json::Value = serde_json::from_slice(data).map_err(|e| ImageError::Corrupt {
        file: file.to_string(),
        what: format!("not valid JSON: {e}"),
    })?;
    check_format(file, &v, format)?;
    serde_json::from_value(v).map_err(|e| ImageError::Corrupt {
        file: file.to_string(),
        what: format!("unexpected content: {e}"),
    })
}

fn check_format(file: &str, v: &serde_json::Value, want: &str) -> Result<(), ImageError> {
    let fmt = v.get("format").and_then(|f| f.as_str());
    if fmt != Some(want) {
        return Err(ImageError::NotAnImage {
            file: file.to_string(),
        });
    }
    let ver = v.get("version").and_then(|x| x.as_array());
    let num = |i: usize| {
        ver.and_then(|a| a.get(i))
            .and_then(|x| x.as_u64())
            .and_then(|x| u16::try_from(x).ok())
    };
    match (num(0), num(1)) {
        (Some(ma), Some(mi)) => format::check_version(file, ma, mi),
        _ => Err(ImageError::Corrupt {
            file: file.to_string(),
            what: "missing or malformed format version".into(),
        }),
    }
}

fn safe_name(file: &str, name: &str) -> Result<(), ImageError> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return Err(ImageError::Corrupt {
            file: file.to_string(),
            what: format!("file name {name:?} points outside its generation"),
        });
    }
    Ok(())
}

/// Longest chain of incremental generations a reader follows.
const MAX_CHAIN: usize = 64;

/// Read and validate one complete generation (manifests, headers, sizes,
/// ownership, region bounds) and, for an incremental one, the generations
/// it refers to; page data is checked during restore.
pub fn load_generation(gdir: &Path) -> Result<LoadedGeneration, ImageError> {
    let mut g = load_one(gdir)?;
    let rec_file = gdir.join("generation.json").display().to_string();
    let corrupt = |what: String| ImageError::Corrupt {
        file: rec_file.clone(),
        what,
    };
    let parent = gdir.parent().unwrap_or(Path::new("."));
    let mut next = g.record.base;
    let mut newer = g.record.number;
    while let Some(b) = next {
        if b >= newer || g.bases.len() >= MAX_CHAIN {
            return Err(corrupt(format!(
                "refers to generation {b}, which cannot be its base"
            )));
        }
        let base = load_one(&parent.join(gen_name(b))).map_err(|e| {
            corrupt(format!(
                "is incremental: its unchanged memory is in generation {b}, which cannot be used ({e})"
            ))
        })?;
        next = base.record.base;
        newer = b;
        g.bases.push(base);
    }
    for m in &g.processes {
        let Some(b) = m.base else { continue };
        let has = g.record.base == Some(b)
            && g.bases
                .first()
                .is_some_and(|base| base.processes.iter().any(|p| p.pid == m.pid));
        if !has {
            return Err(corrupt(format!(
                "process {} refers to generation {b}, which does not hold that process",
                m.pid
            )));
        }
    }
    Ok(g)
}

fn load_one(gdir: &Path) -> Result<LoadedGeneration, ImageError> {
    let md = fs::symlink_metadata(gdir).map_err(|e| ImageError::io(gdir, "stat", e))?;
    check_owner(gdir, &md)?;
    let record = read_record(gdir)?;
    let rec_file = gdir.join("generation.json").display().to_string();
    if record.processes.is_empty() {
        return Err(ImageError::Corrupt {
            file: rec_file,
            what: "lists no process".into(),
        });
    }
    let mut processes = Vec::new();
    for pr in &record.processes {
        safe_name(&rec_file, &pr.manifest)?;
        safe_name(&rec_file, &pr.image)?;
        let mp = gdir.join(&pr.manifest);
        let data = read_small(&mp, 1 << 30)?;
        let mfile = mp.display().to_string();
        let crc = crc32c(&data);
        if crc != pr.manifest_crc {
            return Err(ImageError::Corrupt {
                file: mfile,
                what: format!(
                    "checksum mismatch (recorded {:08x}, file has {crc:08x})",
                    pr.manifest_crc
                ),
            });
        }
        let mut m = parse_manifest(&mfile, &data)?;
        // The restorer reads the image the record names and this check
        // covers; a manifest naming another file (absolute, `..`, or a
        // sibling) would have it read unchecked data, maybe another user's.
        if m.image.file != pr.image {
            return Err(ImageError::Corrupt {
                file: mfile,
                what: format!(
                    "names image file {:?}, but its generation record lists {:?}",
                    m.image.file, pr.image
                ),
            });
        }
        // The writer saves shared memory before private memory; order by address.
        m.regions.sort_by_key(|r| r.start);
        let ip = gdir.join(&pr.image);
        let ifile = ip.display().to_string();
        // Open once, without following a link, and check what was opened
        // (non-blocking: a FIFO under the name is refused, not waited on).
        let mut f = {
            use std::os::unix::fs::OpenOptionsExt as _;
            fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
                .open(&ip)
                .map_err(|e| ImageError::io(&ip, "open", e))?
        };
        let imd = f.metadata().map_err(|e| ImageError::io(&ip, "stat", e))?;
        check_owner(&ip, &imd)?;
        if !imd.is_file() {
            return Err(ImageError::Corrupt {
                file: ifile,
                what: "not a regular file".into(),
            });
        }
        if imd.len() != pr.image_size || m.image.size != pr.image_size {
            return Err(ImageError::Corrupt {
                file: ifile,
                what: format!(
                    "size is {} bytes, expected {} (truncated?)",
                    imd.len(),
                    pr.image_size
                ),
            });
        }
        let mut hdr = vec![0u8; format::HEADER_USED];
        {
            use std::io::Read;
            let n = f
                .read(&mut hdr)
                .map_err(|e| ImageError::io(&ip, "read", e))?;
            hdr.truncate(n);
        }
        let h = format::decode(&ifile, &hdr, imd.len())?;
        validate_manifest(&mfile, &m, h.logical_len())?;
        processes.push(m);
    }
    Ok(LoadedGeneration {
        path: gdir.to_path_buf(),
        record,
        processes,
        bases: Vec::new(),
    })
}

/// Structural checks so that a hostile manifest cannot make the restorer map
/// absurd addresses or read outside the image.
pub fn validate_manifest(file: &str, m: &ProcessManifest, data_len: u64) -> Result<(), ImageError> {
    let bad = |what: String| ImageError::Corrupt {
        file: file.to_string(),
        what,
    };
    const TASK_SIZE: u64 = 0x7fff_ffff_f000;
    let page = format::PAGE_SIZE;
    let file_end = format::HEADER_LEN
        .checked_add(data_len)
        .ok_or_else(|| bad(format!("absurd data length {data_len}")))?;
    let mut prev_end = 0u64;
    for r in &m.regions {
        if r.start % page != 0
            || r.end % page != 0
            || r.start >= r.end
            || r.end > TASK_SIZE
            || r.start < 4096
        {
            return Err(bad(format!(
                "region {:#x}-{:#x} has absurd addresses",
                r.start, r.end
            )));
        }
        if r.start < prev_end {
            return Err(bad(format!(
                "region {:#x}-{:#x} overlaps the previous one",
                r.start, r.end
            )));
        }
        prev_end = r.end;
        let pages = (r.end - r.start) / page;
        let mut last = 0u64;
        let mut total = 0u64;
        for run in &r.runs {
            let end = run[0]
                .checked_add(run[1])
                .ok_or_else(|| bad("page run overflows".into()))?;
            if run[1] == 0 || run[0] < last || end > pages {
                return Err(bad(format!(
                    "page run {:?} lies outside region {:#x}-{:#x}",
                    run, r.start, r.end
                )));
            }
            last = end;
            total = total
                .checked_add(run[1])
                .ok_or_else(|| bad("page count overflows".into()))?;
        }
        let bytes = total
            .checked_mul(page)
            .ok_or_else(|| bad("size overflows".into()))?;
        if !r.inherited.is_empty() && m.base.is_none() {
            return Err(bad(format!(
                "region {:#x}-{:#x} lists inherited pages but the image names no base generation",
                r.start, r.end
            )));
        }
        let mut last = 0u64;
        for run in &r.inherited {
            let end = run[0]
                .checked_add(run[1])
                .ok_or_else(|| bad("page run overflows".into()))?;
            if run[1] == 0 || run[0] < last || end > pages {
                return Err(bad(format!(
                    "inherited page run {:?} lies outside region {:#x}-{:#x}",
                    run, r.start, r.end
                )));
            }
            last = end;
        }
        if !r.inherited.is_empty() {
            // Saved and inherited pages never overlap (both lists are sorted).
            let mut all: Vec<[u64; 2]> = r.runs.iter().chain(&r.inherited).copied().collect();
            all.sort_unstable();
            if all.windows(2).any(|w| w[0][0] + w[0][1] > w[1][0]) {
                return Err(bad(format!(
                    "region {:#x}-{:#x} lists a page both as saved and as inherited",
                    r.start, r.end
                )));
            }
        }
        let data_end = r
            .data_offset
            .checked_add(bytes)
            .ok_or_else(|| bad("data offset overflows".into()))?;
        if r.data_offset < format::HEADER_LEN || r.data_offset % page != 0 || data_end > file_end {
            return Err(bad(format!(
                "region {:#x}-{:#x} points outside its data file",
                r.start, r.end
            )));
        }
    }
    for f in &m.fds {
        if let Some([off, len]) = f.pipe_data {
            let end = off
                .checked_add(len)
                .ok_or_else(|| bad("pipe data overflows".into()))?;
            if off < format::HEADER_LEN || end > file_end || len > 1 << 24 {
                return Err(bad(format!(
                    "buffered data of fd {} points outside its data file",
                    f.fd
                )));
            }
        }
    }
    if m.threads.is_empty() {
        return Err(bad("lists no thread".into()));
    }
    for t in &m.threads {
        // checked: a context near the top of the address space must not
        // wrap around and pass for one inside a region
        let inside = t.ucontext.checked_add(1024).is_some_and(|end| {
            m.regions
                .iter()
                .any(|r| t.ucontext >= r.start && end <= r.end)
        });
        if !inside || t.tid <= 0 {
            return Err(bad(format!(
                "thread {} has its saved context outside saved memory",
                t.tid
            )));
        }
    }
    if m.pid <= 0 || m.threads.first().map(|t| t.tid) != Some(m.pid) {
        return Err(bad("the first thread is not the process leader".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("ckpt-gen-test-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        p
    }

    /// A record with nothing in it.
    fn record(number: u64, base: Option<u64>) -> GenerationRecord {
        GenerationRecord {
            format: GENERATION_FORMAT.into(),
            version: [format::FORMAT_MAJOR, format::FORMAT_MINOR],
            number,
            created_unix: 0,
            uid: 0,
            command: vec![],
            processes: vec![],
            pause_us: 0,
            bytes: 0,
            tool_version: "t".into(),
            zombies: vec![],
            shared_fds: vec![],
            base,
            chain: 0,
            files: vec![],
            relaunch: vec![],
            reset_outside: false,
            across: vec![],
            inherited: vec![],
        }
    }

    #[test]
    fn create_is_private_and_refuses_symlink() {
        let p = tmpdir("priv");
        let d = CheckpointDir::create(&p.join("a/b")).unwrap();
        let md = fs::metadata(d.path()).unwrap();
        assert_eq!(md.mode() & 0o777, 0o700);
        std::os::unix::fs::symlink(p.join("a/b"), p.join("link")).unwrap();
        let e = CheckpointDir::open(&p.join("link")).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        let e = CheckpointDir::open(&p.join("missing")).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        fs::remove_dir_all(&p).unwrap();
    }

    #[test]
    fn generation_numbers_and_prune() {
        let p = tmpdir("gens");
        let d = CheckpointDir::create(&p).unwrap();
        for i in 1..=4u64 {
            let g = d.begin().unwrap();
            assert_eq!(g.number, i);
            fs::write(g.path.join("proc-2.json"), b"{}").unwrap();
            fs::write(g.path.join("proc-2.img"), b"").unwrap();
            let rec = GenerationRecord {
                command: vec!["x".into()],
                processes: vec![super::super::manifest::ProcessRef {
                    pid: 2,
                    manifest: "proc-2.json".into(),
                    manifest_crc: 0,
                    image: "proc-2.img".into(),
                    image_size: 0,
                }],
                ..record(i, None)
            };
            g.commit(&rec, 2).unwrap();
        }
        let l = d.list().unwrap();
        assert_eq!(l.iter().map(|g| g.number).collect::<Vec<_>>(), vec![3, 4]);
        assert!(l.iter().all(|g| g.state == "complete"));
        assert_eq!(
            fs::read_link(p.join("latest")).unwrap(),
            PathBuf::from("gen-000004")
        );
        // an aborted generation leaves the previous one alone
        let g = d.begin().unwrap();
        assert_eq!(g.number, 5);
        g.abort();
        assert_eq!(d.list().unwrap().len(), 2);
        // a corrupt record is reported as such
        fs::write(p.join("gen-000004/generation.json"), b"{").unwrap();
        let l = d.list().unwrap();
        assert!(l[1].state.starts_with("corrupt"), "{}", l[1].state);
        fs::remove_dir_all(&p).unwrap();
    }

    #[test]
    fn prune_keeps_pinned_generations() {
        let p = tmpdir("pinned");
        let d = CheckpointDir::create(&p).unwrap();
        for i in 1..=5u64 {
            if i == 3 {
                d.pin(&[1, 2]).unwrap();
            }
            let g = d.begin().unwrap();
            let rec = record(g.number, None);
            g.commit(&rec, 2).unwrap();
        }
        let l: Vec<u64> = d.list().unwrap().iter().map(|g| g.number).collect();
        assert_eq!(l, vec![1, 2, 4, 5]);
        assert_eq!(d.pinned(), vec![1, 2]);
        d.pin(&[4]).unwrap();
        let g = d.begin().unwrap();
        g.commit(&record(6, None), 2).unwrap();
        let l: Vec<u64> = d.list().unwrap().iter().map(|g| g.number).collect();
        assert_eq!(l, vec![4, 5, 6]);
    }

    #[test]
    fn prune_keeps_the_generations_incremental_ones_refer_to() {
        let p = tmpdir("chain");
        let d = CheckpointDir::create(&p).unwrap();
        let commit = |base: Option<u64>| {
            let g = d.begin().unwrap();
            let rec = record(g.number, base);
            g.commit(&rec, 2).unwrap();
        };
        let numbers = || {
            d.list()
                .unwrap()
                .iter()
                .map(|g| g.number)
                .collect::<Vec<_>>()
        };
        commit(None);
        commit(Some(1));
        commit(Some(2));
        assert_eq!(numbers(), vec![1, 2, 3], "3 needs 2, which needs 1");
        commit(None);
        assert_eq!(numbers(), vec![1, 2, 3, 4], "3 is kept, with its chain");
        commit(Some(4));
        assert_eq!(numbers(), vec![4, 5]);
        commit(None);
        assert_eq!(numbers(), vec![4, 5, 6], "5 is kept, with its base");
        commit(None);
        assert_eq!(numbers(), vec![6, 7]);
        fs::remove_dir_all(&p).unwrap();
    }

    use crate::image::manifest::{ImageRef, Region, RegionKind, Thread};

    /// A small valid manifest: two regions, one thread, data for 6 pages.
    fn sample() -> (ProcessManifest, u64) {
        let region = |start: u64, pages: u64, data_offset: u64| Region {
            start,
            end: start + pages * 4096,
            prot: 3,
            kind: RegionKind::Anon,
            name: String::new(),
            offset: 0,
            dev: 0,
            inode: 0,
            file_size: 0,
            file_mtime_ns: 0,
            data_offset,
            runs: vec![[0, pages]],
            inherited: vec![],
            crc: 0,
            growsdown: false,
            hugepage: false,
            fork: Default::default(),
        };
        let m = ProcessManifest {
            pgid: 2,
            sid: 2,
            regions: vec![
                region(0x10000, 2, 4096),
                region(0x7ff0_0000_0000, 4, 4096 * 3),
            ],
            threads: vec![Thread {
                tid: 2,
                ucontext: 0x7ff0_0000_1000,
                fs_base: 0,
                gs_base: 0,
                rseq: 0,
                rseq_sig: 0,
                robust_head: 0,
                robust_len: 0,
                clear_tid: 0,
                scratch_sp: 0,
                pending: 0,
                rip: 0,
                name: String::new(),
            }],
            image: ImageRef {
                file: "proc-2.img".into(),
                size: 4096 * 7,
            },
            ..ProcessManifest::bare(2, 1, 0, "/bin/x")
        };
        (m, 6 * 4096)
    }

    /// Deterministic xorshift: the property tests are reproducible.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        /// Mostly edge values: where overflow and off-by-one bugs live.
        fn value(&mut self) -> u64 {
            const EDGES: [u64; 12] = [
                0,
                1,
                4095,
                4096,
                0x7fff_ffff_f000,
                0x7fff_ffff_f000 - 4096,
                0x8000_0000_0000,
                u64::MAX,
                u64::MAX - 1023,
                u64::MAX - 4095,
                1 << 63,
                1 << 52,
            ];
            let r = self.next();
            if r.is_multiple_of(3) {
                r
            } else {
                EDGES[(r >> 8) as usize % EDGES.len()]
            }
        }
    }

    /// Accepted manifests stay within bounds, by arithmetic that cannot overflow.
    fn assert_in_bounds(m: &ProcessManifest, data_len: u64) {
        let file_end = 4096u128 + u128::from(data_len);
        for r in &m.regions {
            let (s, e) = (u128::from(r.start), u128::from(r.end));
            assert!(s >= 4096 && s < e && e <= 0x7fff_ffff_f000, "{r:?}");
            let pages = (e - s) / 4096;
            let mut total = 0u128;
            for run in &r.runs {
                assert!(u128::from(run[0]) + u128::from(run[1]) <= pages, "{r:?}");
                total += u128::from(run[1]);
            }
            assert!(
                u128::from(r.data_offset) + total * 4096 <= file_end,
                "{r:?}"
            );
        }
        for t in &m.threads {
            let c = u128::from(t.ucontext);
            assert!(
                m.regions
                    .iter()
                    .any(|r| c >= u128::from(r.start) && c + 1024 <= u128::from(r.end)),
                "{t:?}"
            );
        }
    }

    #[test]
    fn sample_is_valid() {
        let (m, len) = sample();
        validate_manifest("x", &m, len).unwrap();
        assert!(validate_manifest("x", &m, len - 4096).is_err());
    }

    #[test]
    fn validate_manifest_property_edge_values() {
        let mut rng = Rng(0x5eed_0001);
        let mut accepted = 0;
        for _ in 0..50_000 {
            let (mut m, mut len) = sample();
            for _ in 0..1 + rng.next() % 3 {
                let v = rng.value();
                let ri = (rng.next() % 2) as usize;
                match rng.next() % 9 {
                    0 => m.regions[ri].start = v,
                    1 => m.regions[ri].end = v,
                    2 => m.regions[ri].data_offset = v,
                    3 => m.regions[ri].runs[0][0] = v,
                    4 => m.regions[ri].runs[0][1] = v,
                    5 => m.threads[0].ucontext = v,
                    6 => len = v,
                    7 => m.regions[ri].runs.push([v, rng.value()]),
                    _ => m.threads[0].tid = v as i32,
                }
            }
            if validate_manifest("x", &m, len).is_ok() {
                accepted += 1;
                assert_in_bounds(&m, len);
            }
        }
        // Some mutations are harmless (e.g. a larger data file).
        assert!(accepted > 0);
    }

    #[test]
    fn parse_manifest_survives_mangled_json() {
        let (m, len) = sample();
        let good = serde_json::to_vec(&m).unwrap();
        assert!(parse_manifest("x", &good).is_ok());
        let mut rng = Rng(0x5eed_0002);
        for i in 0..5_000 {
            let mut d = good.clone();
            match i % 4 {
                0 => d.truncate((rng.next() % good.len() as u64) as usize),
                1 => {
                    for _ in 0..1 + rng.next() % 4 {
                        let at = (rng.next() % d.len() as u64) as usize;
                        d[at] = rng.next() as u8;
                    }
                }
                2 => {
                    // A digit run replaced by a huge or negative number.
                    let at = (rng.next() % d.len() as u64) as usize;
                    let n = ["18446744073709551616", "-1", "1e99", "null", "[]"][i % 5];
                    d.splice(at..at, n.bytes());
                }
                _ => {
                    let at = (rng.next() % d.len() as u64) as usize;
                    d.insert(at, b"{}[],:\"0"[(rng.next() % 8) as usize]);
                }
            }
            if let Ok(mut p) = parse_manifest("x", &d) {
                p.regions.sort_by_key(|r| r.start);
                if validate_manifest("x", &p, len).is_ok() {
                    assert_in_bounds(&p, len);
                }
            }
        }
    }

    #[test]
    fn wrong_format_or_version_refused() {
        let (mut m, _) = sample();
        m.version = [format::FORMAT_MAJOR, format::FORMAT_MINOR + 1];
        let e = parse_manifest("f.json", &serde_json::to_vec(&m).unwrap()).unwrap_err();
        assert!(matches!(e, ImageError::Version { .. }), "{e}");
        m.version = [format::FORMAT_MAJOR, format::FORMAT_MINOR];
        m.format = GENERATION_FORMAT.into();
        let e = parse_manifest("f.json", &serde_json::to_vec(&m).unwrap()).unwrap_err();
        assert!(matches!(e, ImageError::NotAnImage { .. }), "{e}");
        assert!(parse_record("g.json", b"{\"format\":\"ckpt-generation\"}").is_err());
        assert!(parse_record("g.json", b"").is_err());
    }

    #[test]
    fn ucontext_at_the_top_of_memory_is_refused() {
        let (mut m, len) = sample();
        m.threads[0].ucontext = u64::MAX - 512;
        let e = validate_manifest("x", &m, len).unwrap_err();
        assert!(e.to_string().contains("outside saved memory"), "{e}");
    }

    #[test]
    fn failed_commit_leaves_no_partial_generation() {
        let p = tmpdir("failcommit");
        let d = CheckpointDir::create(&p).unwrap();
        let g = d.begin().unwrap();
        let tmp = g.path.clone();
        // generation.json cannot be created: something is in the way.
        fs::create_dir(tmp.join("generation.json")).unwrap();
        let rec = record(g.number, None);
        assert!(g.commit(&rec, 2).is_err());
        assert!(!tmp.exists(), "the failed generation was left behind");
        assert!(d.list().unwrap().is_empty());
        fs::remove_dir_all(&p).unwrap();
    }

    #[test]
    fn pruned_generations_never_look_complete() {
        let p = tmpdir("prune");
        let d = CheckpointDir::create(&p).unwrap();
        for n in 1..=3u64 {
            let g = p.join(gen_name(n));
            fs::create_dir(&g).unwrap();
            fs::write(g.join("generation.json"), b"{}").unwrap();
        }
        // A prune cut short earlier left a renamed, half-removed generation.
        fs::create_dir(p.join("gen-000000.tmp")).unwrap();
        d.prune(1).unwrap();
        let names: Vec<String> = fs::read_dir(&p)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["gen-000003".to_string()]);
        fs::remove_dir_all(&p).unwrap();
    }
}
