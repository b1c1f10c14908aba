//! The descriptors of a process of the job as `/proc/<pid>/fd` shows them,
//! read once per look.
//!
//! While the job is stopped, the coordinator reads every descriptor of
//! every process (open file descriptions shared between processes, files
//! the job writes). A job may hold hundreds of sockets, and the coordinator
//! shares the CPUs with the processes writing their state: each descriptor
//! costs one `readlinkat` relative to the opened directory (not a lookup of
//! `/proc/<pid>/fd/<n>` from the root), and only descriptors of files are
//! looked at further (`fstatat`). docs/sockets.md, "The pause".

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;

/// One descriptor: its number and what its `/proc` link reads.
#[derive(Debug, Clone)]
pub struct FdLink {
    /// The descriptor number.
    pub fd: i32,
    /// The link's text: a path, or `socket:[N]`, `pipe:[N]`, `anon_inode:...`.
    pub target: Vec<u8>,
}

impl FdLink {
    /// A socket (nothing on a file system).
    pub fn is_socket(&self) -> bool {
        self.target.starts_with(b"socket:[")
    }

    /// A path on a file system (files, directories, devices).
    pub fn is_path(&self) -> bool {
        self.target.starts_with(b"/")
    }
}

/// The descriptors of one process.
#[derive(Debug)]
pub struct ProcFds {
    host: i32,
    dir: OwnedFd,
    /// In the order the kernel lists them.
    pub links: Vec<FdLink>,
}

impl ProcFds {
    /// Read `/proc/<host>/fd`.
    pub fn read(host: i32) -> io::Result<ProcFds> {
        let path = CString::new(format!("/proc/{host}/fd"))
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: open of a NUL-terminated path; the result is checked.
        let raw = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: raw is a descriptor just opened and owned by nobody else.
        let dir = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut links = Vec::new();
        for e in std::fs::read_dir(format!("/proc/self/fd/{raw}"))?.flatten() {
            let Some(fd) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            if let Ok(target) = readlinkat(&dir, fd) {
                links.push(FdLink { fd, target });
            }
        }
        Ok(ProcFds { host, dir, links })
    }

    /// `stat` of what descriptor `fd` refers to.
    pub fn stat(&self, fd: i32) -> io::Result<libc::stat> {
        let name = CString::new(fd.to_string())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: stat is plain old data; all-zero is valid.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstatat relative to our open directory, with a
        // NUL-terminated name, writing into the local.
        let r = unsafe { libc::fstatat(self.dir.as_raw_fd(), name.as_ptr(), &mut st, 0) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(st)
    }

    /// What descriptor `fd`'s link reads now (to tell whether it still
    /// is what [`ProcFds::read`] saw).
    pub fn target_now(&self, fd: i32) -> io::Result<Vec<u8>> {
        readlinkat(&self.dir, fd)
    }

    /// The `/proc` path of descriptor `fd` (to open what it refers to).
    pub fn path(&self, fd: i32) -> PathBuf {
        PathBuf::from(format!("/proc/{}/fd/{fd}", self.host))
    }
}

fn readlinkat(dir: &OwnedFd, fd: i32) -> io::Result<Vec<u8>> {
    let name =
        CString::new(fd.to_string()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut buf = vec![0u8; 4096];
    // SAFETY: readlinkat relative to our open directory writes at most
    // buf.len() bytes into buf.
    let n = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn lists_own_descriptors_with_their_links_and_stats() {
        let f = std::fs::File::open("/proc/self/status").expect("open a file");
        let (a, b) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        let me = ProcFds::read(std::process::id() as i32).expect("read own fds");
        let find = |fd: i32| me.links.iter().find(|l| l.fd == fd).expect("listed");
        let file = find(f.as_raw_fd());
        assert!(file.is_path() && !file.is_socket(), "{file:?}");
        assert!(find(a.as_raw_fd()).is_socket() && find(b.as_raw_fd()).is_socket());
        let st = me.stat(f.as_raw_fd()).expect("stat");
        let md = f.metadata().expect("metadata");
        assert_eq!((st.st_dev, st.st_ino), (md.dev(), md.ino()));
        assert!(me.stat(1 << 20).is_err(), "no such descriptor");
    }
}
