//! Is a checkpoint directory safe to keep process memory in?
//!
//! Checkpoint images hold the whole memory of a job, and both the SPANK
//! plugin and `ckpt` write into the directory the user named. A check made
//! on a path name holds only while nobody else can change what the name
//! refers to, so the rules here are about who can change the directory
//! *and every directory above it* (see `docs/security.md`):
//!
//! - the directory itself belongs to the job's user and is not writable by
//!   group or others (its files are 0600 and its generations 0700, but a
//!   writable directory lets others rename, replace or plant entries);
//! - every directory above it belongs to root or to the user, and is not
//!   writable by group or others, except a sticky directory (`/tmp`,
//!   `/scratch` mode 1777) owned by root or by the user: the sticky bit
//!   keeps others from renaming or removing entries they do not own (the
//!   rule of OpenSSH's `safe_path`).
//!
//! The walk goes from an open descriptor of the directory up through `..`
//! (with `O_PATH`, so that directories with search permission only, such
//! as a 0711 home directory, can be checked), so symlinks followed on the
//! way to it do not matter: what is checked is where the directory really
//! is. Callers keep that descriptor and work relative to it afterwards.

use std::ffi::CStr;
use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::PathBuf;

/// Why a directory cannot be trusted with checkpoint images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SafeDirError {
    /// The directory belongs to someone else.
    ForeignOwner {
        /// The directory.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The user the images belong to.
        uid: u32,
    },
    /// The directory is writable by its group or by others.
    Writable {
        /// The directory.
        path: PathBuf,
        /// Its mode bits (`st_mode & 07777`).
        mode: u32,
    },
    /// A directory above it can be changed by another user.
    UnsafeAncestor {
        /// That directory.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// Its mode bits.
        mode: u32,
        /// The user the images belong to.
        uid: u32,
    },
    /// A system call failed.
    Io {
        /// What was being done.
        action: &'static str,
        /// The directory it was done on.
        path: PathBuf,
        /// `errno`.
        errno: i32,
    },
}

impl fmt::Display for SafeDirError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ForeignOwner { path, owner, uid } => write!(
                f,
                "checkpoint directory {} belongs to {}, not to {}: refusing to write checkpoint \
                 images there; choose another directory",
                path.display(),
                user_name(*owner),
                user_name(*uid)
            ),
            Self::Writable { path, mode } => write!(
                f,
                "checkpoint directory {} has mode {mode:04o}: it is writable by its group or by \
                 others, who could replace or plant files in it; checkpoint images hold the \
                 job's memory: use a directory only you can write (chmod go-w {}, or let ckpt \
                 create a new one)",
                path.display(),
                path.display()
            ),
            Self::UnsafeAncestor {
                path,
                owner,
                mode,
                uid,
            } => write!(
                f,
                "{} (above the checkpoint directory, mode {mode:04o}, owned by {}) can be \
                 changed by users other than {}, who could move the checkpoint directory away \
                 and put their own in its place: choose a checkpoint directory whose parents \
                 belong to you or root and are not group- or world-writable (sticky \
                 directories such as /tmp are fine)",
                path.display(),
                user_name(*owner),
                if *uid == 0 {
                    "root".to_owned()
                } else {
                    format!("{} and root", user_name(*uid))
                }
            ),
            Self::Io {
                action,
                path,
                errno,
            } => write!(
                f,
                "cannot {action} {}: {}",
                path.display(),
                std::io::Error::from_raw_os_error(*errno)
            ),
        }
    }
}

impl std::error::Error for SafeDirError {}

/// `name (uid N)`, or `uid N` when the user is unknown.
pub fn user_name(uid: u32) -> String {
    let mut buf = vec![0u8; 4096];
    // SAFETY: passwd is plain data; all-zero is a valid value.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the sizes given; getpwuid_r writes
    // only into pw and buf.
    let r = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr().cast(), buf.len(), &mut out) };
    if r == 0 && !out.is_null() && !pw.pw_name.is_null() {
        // SAFETY: getpwuid_r succeeded: pw_name points to a NUL-terminated
        // string inside buf, which is alive here.
        let name = unsafe { CStr::from_ptr(pw.pw_name) };
        return format!("{} (uid {uid})", name.to_string_lossy());
    }
    format!("uid {uid}")
}

const MODE_BITS: u32 = 0o7777;

/// Whether a directory above the checkpoint directory, owned by `owner`
/// with mode `mode`, can be changed only by root and `uid`.
pub fn ancestor_is_safe(owner: u32, mode: u32, uid: u32) -> bool {
    let trusted_owner = owner == 0 || owner == uid;
    let others_write = mode & 0o022 != 0;
    let sticky = mode & libc::S_ISVTX != 0;
    trusted_owner && (!others_write || sticky)
}

/// Whether the checkpoint directory itself, owned by `owner` with mode
/// `mode`, may hold `uid`'s images.
pub fn final_is_safe(owner: u32, mode: u32, uid: u32) -> Result<(), (bool, u32)> {
    if owner != uid {
        return Err((true, mode & MODE_BITS));
    }
    if mode & 0o022 != 0 {
        return Err((false, mode & MODE_BITS));
    }
    Ok(())
}

fn fstat(fd: BorrowedFd<'_>) -> Result<libc::stat, i32> {
    // SAFETY: stat is plain data; all-zero is valid.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fd is a valid open descriptor; st is valid for writing.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(errno());
    }
    Ok(st)
}

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// The path a descriptor refers to now (for messages only).
pub fn fd_path(fd: BorrowedFd<'_>) -> PathBuf {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .unwrap_or_else(|_| PathBuf::from(format!("<descriptor {}>", fd.as_raw_fd())))
}

fn open_parent(fd: BorrowedFd<'_>) -> Result<OwnedFd, i32> {
    // SAFETY: ".." is a valid NUL-terminated string; fd is open.
    let r = unsafe {
        libc::openat(
            fd.as_raw_fd(),
            c"..".as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if r < 0 {
        return Err(errno());
    }
    // SAFETY: openat just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

/// Checks the directory open as `dir` and every directory above it (see
/// the module documentation) for the images of user `uid`.
pub fn check(dir: BorrowedFd<'_>, uid: u32) -> Result<(), SafeDirError> {
    let st = fstat(dir).map_err(|errno| SafeDirError::Io {
        action: "inspect",
        path: fd_path(dir),
        errno,
    })?;
    match final_is_safe(st.st_uid, st.st_mode, uid) {
        Ok(()) => {}
        Err((true, _)) => {
            return Err(SafeDirError::ForeignOwner {
                path: fd_path(dir),
                owner: st.st_uid,
                uid,
            });
        }
        Err((false, mode)) => {
            return Err(SafeDirError::Writable {
                path: fd_path(dir),
                mode,
            });
        }
    }
    check_ancestors(dir, uid)
}

/// Checks only the directories above `dir`.
pub fn check_ancestors(dir: BorrowedFd<'_>, uid: u32) -> Result<(), SafeDirError> {
    let st = fstat(dir).map_err(|errno| SafeDirError::Io {
        action: "inspect",
        path: fd_path(dir),
        errno,
    })?;
    let mut here = (st.st_dev, st.st_ino);
    let mut current: Option<OwnedFd> = None;
    // A path has far fewer than 4096 levels; the bound only guards a loop.
    for _ in 0..4096 {
        let cur = current.as_ref().map_or(dir, AsFd::as_fd);
        let parent = open_parent(cur).map_err(|errno| SafeDirError::Io {
            action: "open the parent of",
            path: fd_path(cur),
            errno,
        })?;
        let pst = fstat(parent.as_fd()).map_err(|errno| SafeDirError::Io {
            action: "inspect",
            path: fd_path(parent.as_fd()),
            errno,
        })?;
        if (pst.st_dev, pst.st_ino) == here {
            return Ok(()); // ".." of the root is the root
        }
        if !ancestor_is_safe(pst.st_uid, pst.st_mode, uid) {
            return Err(SafeDirError::UnsafeAncestor {
                path: fd_path(parent.as_fd()),
                owner: pst.st_uid,
                mode: pst.st_mode & MODE_BITS,
                uid,
            });
        }
        here = (pst.st_dev, pst.st_ino);
        current = Some(parent);
    }
    Err(SafeDirError::Io {
        action: "walk up from",
        path: fd_path(dir),
        errno: libc::ELOOP,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn ancestor_rules() {
        let me = 1000;
        assert!(ancestor_is_safe(0, 0o755, me));
        assert!(ancestor_is_safe(me, 0o700, me));
        assert!(ancestor_is_safe(me, 0o711, me));
        assert!(ancestor_is_safe(0, 0o1777, me), "/tmp");
        assert!(ancestor_is_safe(me, 0o1777, me), "own sticky directory");
        assert!(
            !ancestor_is_safe(1001, 0o755, me),
            "another user's directory"
        );
        assert!(
            !ancestor_is_safe(1001, 0o1777, me),
            "another user's sticky one"
        );
        assert!(
            !ancestor_is_safe(0, 0o775, me),
            "group-writable, not sticky"
        );
        assert!(
            !ancestor_is_safe(me, 0o777, me),
            "world-writable, not sticky"
        );
        assert!(!ancestor_is_safe(me, 0o2770, me), "team directory");
    }

    #[test]
    fn final_rules() {
        assert_eq!(final_is_safe(7, 0o40700, 7), Ok(()));
        assert_eq!(final_is_safe(7, 0o40750, 7), Ok(()));
        assert_eq!(final_is_safe(7, 0o42775, 7), Err((false, 0o2775)));
        assert_eq!(final_is_safe(7, 0o40700, 8), Err((true, 0o700)));
    }

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("safe-dir-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        d
    }

    fn me() -> u32 {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() }
    }

    #[test]
    fn walks_up_to_the_root() {
        let d = scratch("walk");
        let f = std::fs::File::open(&d).unwrap();
        // temp_dir is /tmp (root, 1777) under / (root, 0755).
        check(f.as_fd(), me()).unwrap();
        // A group-writable level on the way is found, and named.
        let inner = d.join("in");
        std::fs::create_dir(&inner).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o770)).unwrap();
        let f = std::fs::File::open(&inner).unwrap();
        let e = check(f.as_fd(), me()).unwrap_err();
        assert!(
            matches!(&e, SafeDirError::UnsafeAncestor { path, mode: 0o770, .. } if *path == d),
            "{e:?}"
        );
        assert!(e.to_string().contains("can be changed by users other than"));
        // The directory itself, writable by its group: refused, mode named.
        let e = check(std::fs::File::open(&d).unwrap().as_fd(), me()).unwrap_err();
        assert_eq!(
            e,
            SafeDirError::Writable {
                path: d.clone(),
                mode: 0o770
            }
        );
        // Another user's: refused.
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        let e = check(std::fs::File::open(&d).unwrap().as_fd(), me() + 1).unwrap_err();
        assert!(matches!(e, SafeDirError::ForeignOwner { .. }), "{e:?}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn search_only_parents_are_checked_too() {
        let d = scratch("x");
        let inner = d.join("in");
        std::fs::create_dir(&inner).unwrap();
        let f = std::fs::File::open(&inner).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o311)).unwrap();
        let r = check(f.as_fd(), me());
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        r.unwrap();
        std::fs::remove_dir_all(&d).unwrap();
    }
}
