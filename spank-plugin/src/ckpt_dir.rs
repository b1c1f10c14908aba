//! Creating and checking a job's checkpoint directory, as the job's user.
//!
//! Runs in `task_init`, after slurmstepd has dropped to the job's uid: every
//! directory created here belongs to the user, never to root. The path is
//! walked one component at a time with `openat(O_NOFOLLOW)` so that what is
//! checked is what is used:
//! - a missing component is created with mode 0700;
//! - a symlink is followed only when it belongs to the user or to root (the
//!   rule of the kernel's `protected_symlinks`, applied everywhere): a link
//!   planted by another user in a shared directory is refused;
//! - the final directory must belong to the user: checkpoint images hold the
//!   whole memory of the job.
//!
//! - the final directory must not be writable by group or others, and every
//!   directory above it must belong to root or the user and not be writable
//!   by others unless it is sticky (`safe_dir::check`, walked upwards from
//!   the open descriptor): then nobody else can move it away and put their
//!   own in its place later (`docs/security.md`).
//!
//! `ckpt` opens `CKPT_DIR` again once, checks it the same way and works
//! relative to that descriptor.

use std::fmt;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{Mode, SFlag, fchmod, fstat, fstatat, mkdirat};
use nix::unistd::{Uid, User};

/// Why a checkpoint directory cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirError {
    /// The final directory belongs to someone else.
    ForeignOwner {
        /// The directory.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The job's user.
        uid: u32,
    },
    /// A symlink on the way belongs to neither the user nor root.
    ForeignSymlink {
        /// The symlink.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The job's user.
        uid: u32,
    },
    /// A component exists and is not a directory.
    NotADirectory(PathBuf),
    /// The path is not absolute.
    NotAbsolute(PathBuf),
    /// The directory, or one above it, can be changed by other users.
    Unsafe(safe_dir::SafeDirError),
    /// A system call failed on a component.
    Io {
        /// What was being done.
        action: &'static str,
        /// The component's full path.
        path: PathBuf,
        /// The error.
        errno: Errno,
    },
}

fn user_name(uid: u32) -> String {
    match User::from_uid(Uid::from_raw(uid)) {
        Ok(Some(user)) => format!("{} (uid {uid})", user.name),
        _ => format!("uid {uid}"),
    }
}

impl fmt::Display for DirError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ForeignOwner { path, owner, uid } => write!(
                f,
                "checkpoint directory {} belongs to {}, not to the job's user {}: refusing to \
                 write checkpoint images there; choose another --checkpoint-dir",
                path.display(),
                user_name(*owner),
                user_name(*uid)
            ),
            Self::ForeignSymlink { path, owner, uid } => write!(
                f,
                "{} is a symlink owned by {}, not by the job's user {} or root: refusing to \
                 follow it (it may have been planted); remove it or choose another \
                 --checkpoint-dir",
                path.display(),
                user_name(*owner),
                user_name(*uid)
            ),
            Self::NotADirectory(path) => write!(
                f,
                "{} exists and is not a directory: choose another --checkpoint-dir",
                path.display()
            ),
            Self::Unsafe(e) => write!(f, "{e}"),
            Self::NotAbsolute(path) => {
                write!(f, "checkpoint directory {} is not absolute", path.display())
            }
            Self::Io {
                action,
                path,
                errno,
            } => write!(
                f,
                "cannot {action} {}: {}; choose another --checkpoint-dir",
                path.display(),
                errno.desc()
            ),
        }
    }
}

impl std::error::Error for DirError {}

/// Whether a symlink owned by `owner` may be followed for user `uid`.
pub fn trusted_symlink_owner(owner: u32, uid: u32) -> bool {
    owner == uid || owner == 0
}

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_CLOEXEC);

fn open_dir(parent: &OwnedFd, name: &Path, follow: bool) -> Result<OwnedFd, Errno> {
    let flags = if follow {
        DIR_FLAGS
    } else {
        DIR_FLAGS | OFlag::O_NOFOLLOW
    };
    let fd = openat(Some(parent.as_raw_fd()), name, flags, Mode::empty())?;
    // SAFETY: openat just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What [`prepare`] did.
#[derive(Debug, PartialEq, Eq)]
pub struct Prepared {
    /// True when the final directory was created by this call.
    pub created: bool,
}

/// Creates `path` (and missing parents, mode 0700) or checks the existing
/// one, so that it is a directory owned by `uid` reached without following
/// symlinks of other users. Must run as `uid`.
pub fn prepare(path: &Path, uid: u32) -> Result<Prepared, DirError> {
    if !path.is_absolute() {
        return Err(DirError::NotAbsolute(path.to_owned()));
    }
    let io = |action, path: &Path, errno| DirError::Io {
        action,
        path: path.to_owned(),
        errno,
    };
    let mut current = open_dir_root().map_err(|e| io("open", Path::new("/"), e))?;
    let mut walked = PathBuf::from("/");
    let mut created = false;
    for component in path.components() {
        let name = match component {
            Component::RootDir | Component::CurDir => continue,
            Component::Prefix(_) => return Err(DirError::NotAbsolute(path.to_owned())),
            Component::ParentDir => Path::new(".."),
            Component::Normal(name) => Path::new(name),
        };
        walked.push(name);
        created = false;
        let mut attempts = 0;
        let next = loop {
            attempts += 1;
            match open_dir(&current, name, false) {
                Ok(fd) => break fd,
                Err(Errno::ENOENT) if attempts <= 2 => {
                    match mkdirat(Some(current.as_raw_fd()), name, Mode::S_IRWXU) {
                        // Another task of the job may create it at the same time.
                        Ok(()) => created = true,
                        Err(Errno::EEXIST) => {}
                        Err(e) => return Err(io("create", &walked, e)),
                    }
                }
                Err(Errno::ELOOP | Errno::ENOTDIR) => {
                    let st = fstatat(
                        Some(current.as_raw_fd()),
                        name,
                        AtFlags::AT_SYMLINK_NOFOLLOW,
                    )
                    .map_err(|e| io("inspect", &walked, e))?;
                    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFLNK {
                        return Err(DirError::NotADirectory(walked));
                    }
                    if !trusted_symlink_owner(st.st_uid, uid) {
                        return Err(DirError::ForeignSymlink {
                            path: walked,
                            owner: st.st_uid,
                            uid,
                        });
                    }
                    match open_dir(&current, name, true) {
                        Ok(fd) => break fd,
                        Err(Errno::ENOTDIR) => return Err(DirError::NotADirectory(walked)),
                        Err(e) => return Err(io("open", &walked, e)),
                    }
                }
                Err(e) => return Err(io("open", &walked, e)),
            }
        };
        current = next;
    }
    let st = fstat(current.as_raw_fd()).map_err(|e| io("inspect", path, e))?;
    if st.st_uid != uid {
        return Err(DirError::ForeignOwner {
            path: path.to_owned(),
            owner: st.st_uid,
            uid,
        });
    }
    if created {
        // mkdirat applied the umask; make the mode exactly 0700.
        fchmod(current.as_raw_fd(), Mode::S_IRWXU).map_err(|e| io("chmod", path, e))?;
    }
    // Not writable by others, and nobody but root and the user can change
    // a directory above it (checked upwards from the descriptor, so the
    // symlinks followed on the way do not matter).
    safe_dir::check(current.as_fd(), uid).map_err(DirError::Unsafe)?;
    Ok(Prepared { created })
}

fn open_dir_root() -> Result<OwnedFd, Errno> {
    let fd = nix::fcntl::open("/", DIR_FLAGS, Mode::empty())?;
    // SAFETY: open just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ckpt-dir-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn me() -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    #[test]
    fn creates_missing_levels_with_mode_0700() {
        let base = scratch("create");
        let target = base.join("a/./b/c");
        assert_eq!(prepare(&target, me()).unwrap(), Prepared { created: true });
        for dir in [base.join("a"), base.join("a/b"), base.join("a/b/c")] {
            let meta = std::fs::metadata(&dir).unwrap();
            assert!(meta.is_dir());
            assert_eq!(
                meta.permissions().mode() & 0o7777,
                0o700,
                "{}",
                dir.display()
            );
            assert_eq!(meta.uid(), me());
        }
        // A second call (another task, a restart) accepts it as is.
        assert_eq!(prepare(&target, me()).unwrap(), Prepared { created: false });
        std::fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn existing_dir_keeps_its_mode() {
        let base = scratch("keep");
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o750)).unwrap();
        prepare(&base, me()).unwrap();
        let mode = std::fs::metadata(&base).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o750);
        std::fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn dir_of_another_user_is_refused() {
        let base = scratch("foreign");
        let other = me().wrapping_add(4242);
        let err = prepare(&base, other).unwrap_err();
        assert_eq!(
            err,
            DirError::ForeignOwner {
                path: base.clone(),
                owner: me(),
                uid: other
            }
        );
        assert!(err.to_string().contains("choose another --checkpoint-dir"));
        std::fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn own_symlink_to_own_dir_is_followed() {
        let base = scratch("ownlink");
        std::fs::create_dir(base.join("real")).unwrap();
        symlink(base.join("real"), base.join("link")).unwrap();
        prepare(&base.join("link/sub"), me()).unwrap();
        assert!(base.join("real/sub").is_dir());
        std::fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn symlink_owner_rule() {
        assert!(trusted_symlink_owner(1000, 1000));
        assert!(trusted_symlink_owner(0, 1000));
        assert!(!trusted_symlink_owner(1001, 1000));
    }

    #[test]
    fn file_in_the_way_is_refused() {
        let base = scratch("file");
        std::fs::write(base.join("f"), b"x").unwrap();
        assert_eq!(
            prepare(&base.join("f/sub"), me()).unwrap_err(),
            DirError::NotADirectory(base.join("f"))
        );
        symlink(base.join("f"), base.join("l")).unwrap();
        assert_eq!(
            prepare(&base.join("l"), me()).unwrap_err(),
            DirError::NotADirectory(base.join("l"))
        );
        std::fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn a_directory_others_can_change_is_refused() {
        // The reviewer's case: another user's world-writable directory
        // (here: our own 0777 one, which counts the same) inside a sticky
        // one; the job's directory below it must not be accepted.
        let base = scratch("shared");
        let open = base.join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = prepare(&open.join("job/ck"), me()).unwrap_err();
        assert!(
            matches!(&err, DirError::Unsafe(safe_dir::SafeDirError::UnsafeAncestor { path, .. }) if *path == open),
            "{err:?}"
        );
        // A final directory writable by its group: refused, mode unchanged.
        let team = base.join("team");
        std::fs::create_dir(&team).unwrap();
        std::fs::set_permissions(&team, std::fs::Permissions::from_mode(0o2775)).unwrap();
        let err = prepare(&team, me()).unwrap_err();
        assert!(err.to_string().contains("mode 2775"), "{err}");
        let mode = std::fs::metadata(&team).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o2775);
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn relative_path_is_refused() {
        assert!(matches!(
            prepare(Path::new("rel/dir"), me()),
            Err(DirError::NotAbsolute(_))
        ));
    }
}
