//! Descriptors in flight: sent over a unix socket with `SCM_RIGHTS` and not
//! received yet.
//!
//! Capture (**async-signal-safe**, in the process that holds the receiving
//! socket, or its snapshot child): a peek with room for `SCM_RIGHTS`
//! installs duplicates of the descriptors in flight in the peeking process
//! (with `MSG_CMSG_CLOEXEC`). Each is described ([`describe`]: what it is,
//! its path, device and inode, status flags, offset, and which descriptor
//! of this same process shares its open file description, by `kcmp`) and
//! closed at once.
//!
//! Checked at checkpoint time ([`check`]) against every process of the job,
//! since a restart must be able to make each again:
//! - a pipe end: the job holds that pipe (the restart makes one new pipe
//!   per pipe and sends the end that was in flight);
//! - a unix socket: a process of the job holds it (its state was saved);
//! - a regular file or a directory: reopened by path with its flags and
//!   offset, unless it shares its description with a descriptor of the
//!   receiving process (then that description is sent). One that another
//!   process of the job holds too is refused: whether they share an offset
//!   cannot be told from here;
//! - anything else (and deleted files): refused.
//!
//! These refusals pass (the program receives the descriptors soon): the
//! coordinator tries again. Restore: `refill` in `restore.rs` sends each
//! message with the descriptors the restart made for it, through the
//! [`Lent`] its caller hands out.

use core::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::image::manifest::{FdKind, ProcessManifest};
use crate::signal_safe::buf::{MmapBuf, StackBuf};
use crate::signal_safe::raw;

/// The most descriptors one message carries (the kernel's `SCM_MAX_FD`).
pub const MAX_RIGHTS: usize = 253;

const NR_KCMP: usize = 312;
const KCMP_FILE: usize = 0;

/// What a descriptor in flight is.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Something ckpt does not send again (refused).
    #[default]
    Other,
    /// An end of a pipe (`flags` says which).
    Pipe,
    /// A socket.
    Socket,
    /// A regular file.
    File,
    /// A directory.
    Dir,
}

/// One descriptor in flight.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct InFlight {
    /// What it is.
    pub kind: Kind,
    /// Its `/proc/self/fd` link.
    pub path: String,
    /// Device of its inode.
    pub dev: u64,
    /// Its inode (a pipe's or socket's identity).
    pub inode: u64,
    /// Status flags (`F_GETFL`: access mode, `O_APPEND`, `O_NONBLOCK`...).
    pub flags: u32,
    /// Offset of a file.
    #[serde(default)]
    pub pos: u64,
    /// A descriptor of the receiving process with the same open file
    /// description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub same_as: Option<i32>,
}

/// Write a JSON array describing `fds` (installed by a peek) into `j`, then
/// close them. `program` lists the descriptors of the process (its own
/// ones, not libckpt's), compared by `kcmp`. **Async-signal-safe.**
pub fn describe(fds: &[i32], program: &[i32], j: &mut MmapBuf) {
    let me = raw::getpid() as usize;
    let _ = write!(j, "[");
    for (i, &fd) in fds.iter().enumerate() {
        // SAFETY: stat is plain old data; zeroed is valid.
        let mut st: libc::stat = unsafe { core::mem::zeroed() };
        let _ = raw::fstat(fd, &mut st);
        let kind = match st.st_mode & libc::S_IFMT {
            libc::S_IFIFO => "pipe",
            libc::S_IFSOCK => "socket",
            libc::S_IFREG => "file",
            libc::S_IFDIR => "dir",
            _ => "other",
        };
        let mut p = StackBuf::<64>::new();
        let _ = write!(p, "/proc/self/fd/{fd}");
        let mut target = [0u8; 4096];
        let tn = raw::readlink(p.as_cstr(), &mut target).unwrap_or(0);
        let flags = raw::fcntl_get(fd, libc::F_GETFL).unwrap_or(0);
        let pos = if kind == "file" {
            raw::lseek(fd, 0, libc::SEEK_CUR).unwrap_or(0)
        } else {
            0
        };
        let same = if kind == "file" || kind == "dir" {
            program.iter().copied().find(|&other| {
                // SAFETY: kcmp compares two descriptors of this process; no pointers.
                let r = unsafe {
                    raw::syscall6(NR_KCMP, me, me, KCMP_FILE, fd as usize, other as usize, 0)
                };
                r == Ok(0)
            })
        } else {
            None
        };
        let _ = write!(
            j,
            "{}{{\"kind\":\"{kind}\",\"path\":",
            if i == 0 { "" } else { "," }
        );
        let _ = j.push_json_str(target.get(..tn).unwrap_or(&[]));
        let _ = write!(
            j,
            ",\"dev\":{},\"inode\":{},\"flags\":{flags},\"pos\":{pos}",
            st.st_dev, st.st_ino
        );
        if let Some(s) = same {
            let _ = write!(j, ",\"same_as\":{s}");
        }
        let _ = write!(j, "}}");
        raw::close(fd);
    }
    let _ = write!(j, "]");
}

/// Close descriptors a peek installed without describing them.
pub fn close_all(fds: &[i32]) {
    for &fd in fds {
        raw::close(fd);
    }
}

/// The descriptors in an `SCM_RIGHTS` control message of `ctl` (the
/// `msg_control` buffer, `len` bytes used), into `out`; returns how many.
/// **Async-signal-safe.**
pub fn parse_rights(ctl: &[u8], len: usize, out: &mut [i32; MAX_RIGHTS]) -> usize {
    let mut n = 0usize;
    let mut at = 0usize;
    let used = len.min(ctl.len());
    // struct cmsghdr: u64 length, i32 level, i32 type, then the data,
    // each header aligned to 8 bytes.
    while at + 16 <= used {
        let clen = ctl
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_ne_bytes) as usize;
        let level = ctl
            .get(at + 8..at + 12)
            .and_then(|b| b.try_into().ok())
            .map_or(0, i32::from_ne_bytes);
        let ty = ctl
            .get(at + 12..at + 16)
            .and_then(|b| b.try_into().ok())
            .map_or(0, i32::from_ne_bytes);
        if clen < 16 || at + clen > used {
            break;
        }
        if level == libc::SOL_SOCKET && ty == libc::SCM_RIGHTS {
            for c in ctl[at + 16..at + clen].chunks_exact(4) {
                if let Some(slot) = out.get_mut(n) {
                    *slot = i32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
                    n += 1;
                }
            }
        }
        at += clen.div_ceil(8) * 8;
    }
    n
}

/// Why a descriptor in flight in a socket of process `holder` cannot be
/// made again at restart, if it cannot (see the module documentation).
pub fn check(f: &InFlight, holder: i32, job: &[ProcessManifest]) -> Result<(), String> {
    let held = |pred: &dyn Fn(&crate::image::manifest::Fd) -> bool| {
        job.iter()
            .flat_map(|m| m.fds.iter().map(move |d| (m, d)))
            .find(|(_, d)| pred(d))
    };
    match f.kind {
        Kind::Pipe => {
            if held(&|d| d.kind == FdKind::Pipe && d.inode == f.inode).is_none() {
                return Err(format!(
                    "{} (no process of the job holds that pipe)",
                    f.path
                ));
            }
        }
        Kind::Socket => {
            if held(&|d| d.socket.is_some() && d.inode == f.inode).is_none() {
                return Err(format!(
                    "{} (not a unix socket that a process of the job holds)",
                    f.path
                ));
            }
        }
        Kind::File | Kind::Dir => {
            if f.path.ends_with(" (deleted)") {
                return Err(format!("{} (a deleted file)", f.path));
            }
            if f.same_as.is_none()
                && let Some((m, d)) = held(&|d| d.dev == f.dev && d.inode == f.inode)
            {
                return Err(format!(
                    "{}, which process {} also holds (fd {}): ckpt cannot tell whether they share an offset",
                    f.path, m.pid, d.fd
                ));
            }
            if let Some(n) = f.same_as
                && !job
                    .iter()
                    .any(|m| m.pid == holder && m.fds.iter().any(|d| d.fd == n))
            {
                return Err(format!(
                    "{} (shared with fd {n}, which is not saved)",
                    f.path
                ));
            }
        }
        Kind::Other => {
            return Err(format!(
                "{} (not a pipe, unix socket, file or directory)",
                f.path
            ));
        }
    }
    Ok(())
}

/// A descriptor the restart hands to a refill, to be sent with a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lent {
    /// One the restart keeps (a pipe end, a shared description).
    Borrowed(i32),
    /// Made for the message only: closed once it is sent.
    Owned(i32),
}

impl Lent {
    /// The descriptor.
    pub fn fd(self) -> i32 {
        match self {
            Lent::Borrowed(fd) | Lent::Owned(fd) => fd,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::manifest::Fd;

    fn fd(n: i32, kind: FdKind, dev: u64, inode: u64) -> Fd {
        Fd {
            fd: n,
            kind,
            path: format!("thing-{inode}"),
            flags: 2,
            pos: 0,
            cloexec: false,
            termios: Vec::new(),
            dev,
            inode,
            pipe_data: None,
            pipe_crc: None,
            object: None,
            socket: None,
            inet: None,
            pty: None,
        }
    }

    fn flying(kind: Kind, dev: u64, inode: u64, same_as: Option<i32>) -> InFlight {
        InFlight {
            kind,
            path: "/scratch/f".into(),
            dev,
            inode,
            flags: 2,
            pos: 0,
            same_as,
        }
    }

    #[test]
    fn what_a_restart_can_make_again() {
        let mut a = ProcessManifest::bare(2, 1, 1000, "/bin/a");
        a.fds = vec![fd(3, FdKind::Pipe, 9, 100), fd(4, FdKind::File, 8, 7)];
        let mut b = ProcessManifest::bare(3, 2, 1000, "/bin/b");
        let mut s = fd(5, FdKind::Socket, 9, 200);
        s.socket = Some(super::super::UnixSocket::default());
        b.fds = vec![s, fd(6, FdKind::File, 8, 50)];
        let job = [a, b];
        // A pipe and a unix socket the job holds.
        assert!(check(&flying(Kind::Pipe, 9, 100, None), 3, &job).is_ok());
        assert!(check(&flying(Kind::Socket, 9, 200, None), 3, &job).is_ok());
        // ... not ones it does not.
        let e = check(&flying(Kind::Pipe, 9, 101, None), 3, &job).unwrap_err();
        assert!(e.contains("no process of the job holds that pipe"), "{e}");
        assert!(check(&flying(Kind::Socket, 9, 100, None), 3, &job).is_err());
        // A file nobody else holds: reopened by path.
        assert!(check(&flying(Kind::File, 8, 99, None), 3, &job).is_ok());
        // One another process holds, without a known shared description.
        let e = check(&flying(Kind::File, 8, 7, None), 3, &job).unwrap_err();
        assert!(e.contains("process 2 also holds (fd 4)"), "{e}");
        // Shared with a descriptor of the receiving process.
        assert!(check(&flying(Kind::File, 8, 50, Some(6)), 3, &job).is_ok());
        assert!(check(&flying(Kind::File, 8, 50, Some(9)), 3, &job).is_err());
        // Deleted files and other kinds.
        let mut gone = flying(Kind::File, 8, 99, None);
        gone.path = "/tmp/x (deleted)".into();
        assert!(check(&gone, 3, &job).unwrap_err().contains("deleted"));
        assert!(check(&flying(Kind::Other, 8, 1, None), 3, &job).is_err());
    }

    #[test]
    fn rights_are_read_from_control_messages() {
        // Credentials first, then SCM_RIGHTS with two descriptors.
        let mut ctl = vec![0u8; 64];
        ctl[..8].copy_from_slice(&28u64.to_ne_bytes());
        ctl[8..12].copy_from_slice(&libc::SOL_SOCKET.to_ne_bytes());
        ctl[12..16].copy_from_slice(&libc::SCM_CREDENTIALS.to_ne_bytes());
        ctl[32..40].copy_from_slice(&24u64.to_ne_bytes());
        ctl[40..44].copy_from_slice(&libc::SOL_SOCKET.to_ne_bytes());
        ctl[44..48].copy_from_slice(&libc::SCM_RIGHTS.to_ne_bytes());
        ctl[48..52].copy_from_slice(&7i32.to_ne_bytes());
        ctl[52..56].copy_from_slice(&9i32.to_ne_bytes());
        let mut out = [0i32; MAX_RIGHTS];
        assert_eq!(parse_rights(&ctl, 56, &mut out), 2);
        assert_eq!(&out[..2], &[7, 9]);
        // A truncated header is ignored.
        assert_eq!(parse_rights(&ctl, 20, &mut out), 0);
    }
}
