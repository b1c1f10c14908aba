//! Thin typed wrapper over `SOCK_SEQPACKET` unix sockets.
//!
//! Both ends check who is at the other end (`SO_PEERCRED`): a coordinator
//! talks only to processes of its own user, and a client only to a
//! coordinator of its own user, so a socket planted or reached by another
//! user gets nothing (see `docs/security.md`). A socket path longer than
//! `sun_path` is reached through a descriptor of its directory
//! (`/proc/self/fd/N/name`), so the checkpoint directory's length does not
//! matter.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use ckpt::coord::MAX_MSG;

/// Runs `f` with an address for `path`: the path itself when it fits in
/// `sun_path`, otherwise its name inside a descriptor of its directory.
fn with_addr<T>(
    path: &Path,
    f: impl FnOnce(&libc::sockaddr_un, libc::socklen_t) -> io::Result<T>,
) -> io::Result<T> {
    if let Ok((a, len)) = addr(path) {
        return f(&a, len);
    }
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return addr(path).and_then(|(a, len)| f(&a, len));
    };
    let dir = std::fs::File::open(parent).or_else(|_| {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(parent)
    })?;
    let short = Path::new("/proc/self/fd")
        .join(dir.as_raw_fd().to_string())
        .join(name);
    let (a, len) = addr(&short)?;
    f(&a, len)
}

/// The uid of the process at the other end of a connected socket.
pub fn peer_uid(s: &OwnedFd) -> io::Result<u32> {
    // SAFETY: ucred is plain data; all-zero is valid.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: cred and len are valid for writing the sizes given.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// Whether the peer of `s` runs as our own user.
pub fn peer_is_us(s: &OwnedFd) -> bool {
    peer_uid(s).is_ok_and(|u| u == euid())
}

fn addr(path: &Path) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain data.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    a.sun_family = libc::AF_UNIX as u16;
    let b = path.as_os_str().as_bytes();
    if b.len() >= a.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "socket path {} is longer than {} bytes; use a shorter checkpoint directory path",
                path.display(),
                a.sun_path.len() - 1
            ),
        ));
    }
    for (d, s) in a.sun_path.iter_mut().zip(b) {
        *d = *s as libc::c_char;
    }
    Ok((
        a,
        std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
    ))
}

fn socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket creation.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Listen at `path` (mode 0600 through the directory's 0700).
pub fn listen(path: &Path) -> io::Result<OwnedFd> {
    let s = socket()?;
    with_addr(path, |a, len| {
        // SAFETY: a is a valid sockaddr_un of length len.
        if unsafe { libc::bind(s.as_raw_fd(), (a as *const libc::sockaddr_un).cast(), len) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    })?;
    // SAFETY: listen on our socket.
    if unsafe { libc::listen(s.as_raw_fd(), 64) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(s)
}

/// Connect to `path`; refuses a listener that runs as another user.
pub fn connect(path: &Path) -> io::Result<OwnedFd> {
    let s = socket()?;
    with_addr(path, |a, len| {
        // SAFETY: a is a valid sockaddr_un of length len.
        if unsafe { libc::connect(s.as_raw_fd(), (a as *const libc::sockaddr_un).cast(), len) } != 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    })?;
    let peer = peer_uid(&s)?;
    if peer != euid() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "the process listening at {} runs as uid {peer}, not as you (uid {}): refusing to \
                 talk to it (a socket planted by another user?)",
                path.display(),
                euid()
            ),
        ));
    }
    Ok(s)
}

/// Accept one connection.
pub fn accept(l: &OwnedFd) -> io::Result<OwnedFd> {
    loop {
        // SAFETY: accepting on our listener without an address buffer.
        let fd = unsafe {
            libc::accept4(
                l.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if fd >= 0 {
            // SAFETY: fresh descriptor we own.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Send one message.
pub fn send(s: &OwnedFd, msg: &[u8]) -> io::Result<()> {
    // SAFETY: msg valid for its length.
    let r = unsafe {
        libc::send(
            s.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            libc::MSG_NOSIGNAL,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Send one message with a descriptor attached (`SCM_RIGHTS`).
pub fn send_with_fd(s: &OwnedFd, msg: &[u8], fd: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let iov = [io::IoSlice::new(msg)];
    let fds = [fd.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    sendmsg::<()>(s.as_raw_fd(), &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None)
        .map(|_| ())
        .map_err(io::Error::from)
}

/// Receive one message; `Ok(None)` when the peer closed.
pub fn recv(s: &OwnedFd) -> io::Result<Option<String>> {
    let mut buf = vec![0u8; MAX_MSG];
    loop {
        // SAFETY: buf valid for its length.
        let r = unsafe { libc::recv(s.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            return Ok(None);
        }
        buf.truncate(r as usize);
        return Ok(Some(String::from_utf8_lossy(&buf).into_owned()));
    }
}

/// Is something accepting connections at `path`?
pub fn is_live(path: &Path) -> bool {
    connect(path).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_socket_path_works() {
        let base = std::env::temp_dir().join(format!("ckpt-sock-{}", std::process::id()));
        let deep = base.join("d".repeat(60)).join("e".repeat(60));
        std::fs::create_dir_all(&deep).unwrap();
        let path = deep.join("ckpt.sock");
        assert!(path.as_os_str().len() > 108);
        let l = listen(&path).unwrap();
        let c = connect(&path).unwrap();
        let a = accept(&l).unwrap();
        assert!(peer_is_us(&a));
        send(&c, b"hello").unwrap();
        assert_eq!(recv(&a).unwrap().as_deref(), Some("hello"));
        std::fs::remove_dir_all(&base).unwrap();
    }
}
