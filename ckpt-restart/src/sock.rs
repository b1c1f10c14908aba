//! Thin typed wrapper over `SOCK_SEQPACKET` unix sockets.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use ckpt::coord::MAX_MSG;

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
    let (a, len) = addr(path)?;
    // SAFETY: a is a valid sockaddr_un of length len.
    if unsafe { libc::bind(s.as_raw_fd(), &a as *const _ as *const libc::sockaddr, len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: listen on our socket.
    if unsafe { libc::listen(s.as_raw_fd(), 64) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(s)
}

/// Connect to `path`.
pub fn connect(path: &Path) -> io::Result<OwnedFd> {
    let s = socket()?;
    let (a, len) = addr(path)?;
    // SAFETY: a is a valid sockaddr_un of length len.
    if unsafe { libc::connect(s.as_raw_fd(), &a as *const _ as *const libc::sockaddr, len) } != 0 {
        return Err(io::Error::last_os_error());
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
