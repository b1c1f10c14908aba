//! The job's meeting directory of one restart (`JOBDIR/meet.N`,
//! docs/batch-jobs.md): where the inits of a job's tasks publish the
//! listening ends of their connections to each other (`across.rs`) and
//! where the PMIx stand-in's fences meet (docs/mpi.md). Every node of the
//! job sees it through the shared checkpoint directory, so it is reached
//! one way only: made `0700`, opened once without following a link,
//! checked like a checkpoint directory (`safe_dir::final_is_safe`: the
//! user's own, nobody else can write it), then used only relative to that
//! descriptor.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The meeting directory, open.
pub struct MeetingDir {
    fd: OwnedFd,
}

fn last_error(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

impl MeetingDir {
    /// Makes `path` (`0700`; another task may have made it first) and opens
    /// it; refused unless it is safe for this user's images.
    pub fn open(path: &Path) -> Result<MeetingDir, String> {
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| format!("{}: a NUL in the name", path.display()))?;
        // SAFETY: a valid C string; EEXIST is expected from all but one task.
        unsafe { libc::mkdir(c.as_ptr(), 0o700) };
        // SAFETY: a valid C string.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(last_error(&path.display().to_string()));
        }
        // SAFETY: open just returned this descriptor and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let d = MeetingDir { fd };
        // Only the directory itself: the init that opens it runs in the
        // task's user namespace, where root's directories above it show as
        // the overflow user; the checkpoint directory and those above it
        // were checked by the task's `ckpt` before it entered it.
        // SAFETY: stat is plain old data.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat of our descriptor into a local.
        if unsafe { libc::fstat(d.fd.as_raw_fd(), &mut st) } != 0 {
            return Err(last_error(&path.display().to_string()));
        }
        // SAFETY: getuid has no preconditions.
        let uid = unsafe { libc::getuid() };
        safe_dir::final_is_safe(st.st_uid, st.st_mode, uid).map_err(|(foreign, mode)| {
            if foreign {
                format!(
                    "{} belongs to uid {}, not to uid {uid}",
                    path.display(),
                    st.st_uid
                )
            } else {
                format!(
                    "{} can be written by others (mode {mode:04o})",
                    path.display()
                )
            }
        })?;
        Ok(d)
    }

    /// `name` (a plain file of the user's own, not a link), open for
    /// reading, with its size.
    fn open_file(&self, name: &str) -> Option<(OwnedFd, i64)> {
        let c = CString::new(name).ok()?;
        // SAFETY: a valid C string, relative to our directory descriptor.
        let fd = unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return None;
        }
        // SAFETY: openat just returned this descriptor and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: stat is plain old data.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat of our descriptor into a local.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
            return None;
        }
        // SAFETY: getuid has no preconditions.
        let mine = st.st_uid == unsafe { libc::getuid() };
        (mine && st.st_mode & libc::S_IFMT == libc::S_IFREG).then_some((fd, st.st_size))
    }

    /// Publishes `text` as `name`, through a temporary name and a rename:
    /// a reader sees all of it or nothing.
    pub fn publish(&self, name: &str, text: &str) -> Result<(), String> {
        // A name of its own for each call (the stand-in's threads publish
        // at once), made afresh (`O_EXCL`: nothing planted there is used).
        static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp_name = format!(".{name}.{}.{n}", std::process::id());
        let tmp =
            CString::new(tmp_name.as_str()).map_err(|_| format!("{name}: a NUL in the name"))?;
        let dst = CString::new(name).map_err(|_| format!("{name}: a NUL in the name"))?;
        // SAFETY: valid C strings, relative to our directory descriptor.
        let fd = unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                tmp.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o600,
            )
        };
        if fd < 0 {
            return Err(last_error("openat"));
        }
        // SAFETY: openat just returned this descriptor and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: write from a live buffer to our descriptor.
        let n = unsafe { libc::write(fd.as_raw_fd(), text.as_ptr().cast(), text.len()) };
        if n != text.len() as isize {
            let e = last_error("write");
            self.remove(&tmp_name);
            return Err(e);
        }
        drop(fd);
        // SAFETY: valid C strings, both relative to our directory.
        if unsafe {
            libc::renameat(
                self.fd.as_raw_fd(),
                tmp.as_ptr(),
                self.fd.as_raw_fd(),
                dst.as_ptr(),
            )
        } != 0
        {
            let e = last_error("renameat");
            self.remove(&tmp_name);
            return Err(e);
        }
        Ok(())
    }

    /// Whether `name` was published (by this user).
    pub fn has(&self, name: &str) -> bool {
        self.open_file(name).is_some()
    }

    /// What `name` holds, if it was published by this user and is not
    /// empty (at most 64 KiB).
    pub fn read(&self, name: &str) -> Option<String> {
        let (fd, size) = self.open_file(name)?;
        if !(1..65536).contains(&size) {
            return None;
        }
        let mut buf = vec![0u8; 65536];
        // SAFETY: read into our buffer of that size.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            return None;
        }
        buf.truncate(n as usize);
        String::from_utf8(buf).ok()
    }

    /// Removes `name`, if it is there.
    pub fn remove(&self, name: &str) {
        if let Ok(c) = CString::new(name) {
            // SAFETY: a valid C string, relative to our directory.
            unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStringExt;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> std::path::PathBuf {
        let base = std::env::temp_dir().join(format!("ckpt-meeting-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir(&base).expect("mkdir");
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        base
    }

    #[test]
    fn what_is_published_is_read_back_whole_and_removed() {
        let base = scratch("rw");
        let d = MeetingDir::open(&base.join("meet.1")).expect("open");
        assert_eq!(
            std::fs::metadata(base.join("meet.1"))
                .expect("stat")
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
        assert!(!d.has("k"));
        d.publish("k", "ckpt-rendezvous 1\n").expect("publish");
        assert!(d.has("k"));
        assert_eq!(d.read("k").as_deref(), Some("ckpt-rendezvous 1\n"));
        d.publish("empty", "").expect("publish");
        assert!(d.has("empty"));
        assert_eq!(d.read("empty"), None);
        d.remove("k");
        assert!(!d.has("k"));
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn a_directory_others_can_write_and_a_link_are_refused() {
        let base = scratch("unsafe");
        let open = base.join("open");
        std::fs::create_dir(&open).expect("mkdir");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        assert!(MeetingDir::open(&open).is_err());
        std::os::unix::fs::symlink(&base, base.join("link")).expect("symlink");
        assert!(MeetingDir::open(&base.join("link")).is_err());
        // A published name that is a link is not read.
        let d = MeetingDir::open(&base.join("meet.2")).expect("open");
        std::fs::write(base.join("secret"), "x").expect("write");
        std::os::unix::fs::symlink(base.join("secret"), base.join("meet.2/k")).expect("symlink");
        assert!(!d.has("k"));
        assert_eq!(d.read("k"), None);
        // A FIFO planted under a published name neither blocks nor is read.
        let fifo = CString::new(base.join("meet.2/f").into_os_string().into_vec()).expect("path");
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert!(!d.has("f"));
        assert_eq!(d.read("f"), None);
        let _ = std::fs::remove_dir_all(&base);
    }
}
