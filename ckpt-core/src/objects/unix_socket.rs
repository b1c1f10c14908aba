//! Unix sockets: stream, datagram and seqpacket; unnamed (`socketpair`),
//! bound to a path or to an abstract name; listening, connected or neither;
//! with the bytes and datagrams queued in them.
//!
//! Unlike the objects of the other files of this module, a connected socket
//! is half of a pair: its restore needs its peer's state as well, so it is
//! not a [`super::Kind`] (whose `create` makes one descriptor). The state of
//! one socket lives here with its capture and its validation; the pairing
//! (which socket is whose peer) and the creation of both ends at once are
//! [`restore_all`], called by the job's init before it recreates the
//! processes, which inherit the sockets as they inherit pipes.
//!
//! ## What the kernel tells, and from where
//! From inside the process (the stop handler, **async-signal-safe**):
//! `SO_TYPE`, `SO_ACCEPTCONN`, `SO_PASSCRED`, `SO_SNDBUF`, `SO_RCVBUF`,
//! `SO_PEEK_OFF`, `getsockname`, `getpeername`; the queued data, read with
//! `MSG_PEEK` and the socket's peek offset (`SO_PEEK_OFF`) so that nothing
//! is consumed and every message of the queue is reached in turn (the offset
//! is put back afterwards); from `sock_diag` (netlink, allowed to any user
//! for unix sockets of its network namespace): the peer's inode
//! (`UNIX_DIAG_PEER`, which nothing else shows), the shutdown state, the
//! inodes of connections not yet accepted by a listening socket and their
//! queued bytes, and the inode of the socket file a path name made, which
//! tells whether the name was unlinked since. See `docs/sockets.md`.
//!
//! ## What is refused at checkpoint time (by [`UnixSocket::validate`] and the
//! coordinator), so that a checkpoint that succeeds restores exactly
//! - descriptors passed with `SCM_RIGHTS` still queued that cannot be made
//!   again (`rights.rs`: what a restart sends again, and why the others
//!   are refused), or more than the process could take (`fds_in_flight`);
//! - data queued on a connection that the listening socket has not accepted;
//! - a datagram queued on an unconnected socket from a sender that had a name
//!   (the restore could not send it from that name);
//! - a peer outside the job (checked by the coordinator).

use core::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::image::checksum::Crc32c;
use crate::signal_safe::buf::MmapBuf;
use crate::signal_safe::deferred::DeferredWrites;
use crate::signal_safe::raw::{self, Errno};

/// The socket's connection state, as far as a restore needs it.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Neither listening nor connected (possibly bound).
    #[default]
    Unconnected,
    /// `listen` was called.
    Listening,
    /// Connected to a peer (which may have closed since).
    Connected,
}

/// One queued message (datagram, seqpacket record) or, for a stream, one
/// run of bytes.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Message {
    /// Its length in bytes.
    pub len: u64,
    /// The sender's name (a datagram to an unconnected socket); empty when
    /// the sender had none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<u8>,
    /// Descriptors sent with it (`SCM_RIGHTS`), not received yet (1.6).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fds: Vec<rights::InFlight>,
}

/// A unix socket's state (the `socket` field of an fd whose `kind` is
/// `socket`, when its family is `AF_UNIX`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct UnixSocket {
    /// `SOCK_STREAM` (1), `SOCK_DGRAM` (2) or `SOCK_SEQPACKET` (5).
    pub ty: i32,
    /// Connection state.
    pub state: State,
    /// Its own name, as `getsockname` gives the bytes of `sun_path`: empty
    /// for none, a leading NUL for an abstract name.
    #[serde(default)]
    pub name: Vec<u8>,
    /// The peer's name (`getpeername`).
    #[serde(default)]
    pub peer_name: Vec<u8>,
    /// Inode of the peer socket; 0 when there is none or it was closed.
    #[serde(default)]
    pub peer: u64,
    /// Shutdown state: bit 0 receiving is shut down, bit 1 sending is.
    #[serde(default)]
    pub shutdown: u8,
    /// A path name whose socket file no longer exists (or is another file):
    /// the restore binds the name and unlinks it again.
    #[serde(default)]
    pub unlinked: bool,
    /// `listen` backlog.
    #[serde(default)]
    pub backlog: u32,
    /// Connections a listening socket has not accepted yet: the inodes of
    /// the connecting sockets (whose own peer inode is 0: the socket made
    /// for the connection has none until it is accepted).
    #[serde(default)]
    pub pending: Vec<u64>,
    /// Bytes queued on those connections (refused when not 0).
    #[serde(default)]
    pub pending_bytes: u64,
    /// `SO_PASSCRED`.
    #[serde(default)]
    pub passcred: bool,
    /// `SO_SNDBUF` as `getsockopt` returns it (twice what was set).
    #[serde(default)]
    pub sndbuf: i32,
    /// `SO_RCVBUF`, likewise.
    #[serde(default)]
    pub rcvbuf: i32,
    /// `SO_PEEK_OFF` (-1: off).
    #[serde(default = "minus_one")]
    pub peek_off: i32,
    /// What is queued to be received, in order.
    #[serde(default)]
    pub queue: Vec<Message>,
    /// Where the queued bytes are in the image: `[offset, length]`.
    #[serde(default)]
    pub data: Option<[u64; 2]>,
    /// CRC-32C of those bytes.
    #[serde(default)]
    pub crc: u32,
    /// Descriptors (`SCM_RIGHTS`) were queued with the data that could not
    /// be read (more than the process may open): refused. Those read are
    /// in `queue`.
    #[serde(default)]
    pub fds_in_flight: bool,
    /// Out-of-band data was queued.
    #[serde(default)]
    pub oob: bool,
}

fn minus_one() -> i32 {
    -1
}

/// `UNIX_DIAG_*` attribute numbers and `UDIAG_SHOW_*` flags (uapi
/// `linux/unix_diag.h`).
mod diag {
    pub const SOCK_DIAG_BY_FAMILY: u16 = 20;
    pub const NETLINK_SOCK_DIAG: usize = 4;
    pub const NLMSG_ERROR: u16 = 2;
    pub const SHOW_VFS: u32 = 0x02;
    pub const SHOW_PEER: u32 = 0x04;
    pub const SHOW_ICONS: u32 = 0x08;
    pub const SHOW_RQLEN: u32 = 0x10;
    pub const ATTR_VFS: u16 = 1;
    pub const ATTR_PEER: u16 = 2;
    pub const ATTR_ICONS: u16 = 3;
    pub const ATTR_RQLEN: u16 = 4;
    pub const ATTR_SHUTDOWN: u16 = 6;
}

/// What `sock_diag` tells about one unix socket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Diag {
    /// Peer inode (0: none).
    pub peer: u64,
    /// `sk_shutdown`.
    pub shutdown: u8,
    /// Inode and device of the socket file a path name made.
    pub vfs: Option<(u64, u64)>,
    /// Queue length: for a listening socket, pending connections; else bytes.
    pub rqueue: u32,
    /// For a listening socket, the backlog.
    pub wqueue: u32,
}

pub(super) fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
}

pub(super) fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at + 2)?;
    Some(u16::from_ne_bytes([s[0], s[1]]))
}

/// The one netlink message of a `sock_diag` reply, or the error the kernel
/// answered with. **Async-signal-safe.**
pub(super) fn reply_message(reply: &[u8]) -> Result<&[u8], Errno> {
    let len = u32_at(reply, 0).ok_or(Errno(libc::EIO))? as usize;
    let ty = u16_at(reply, 4).ok_or(Errno(libc::EIO))?;
    if ty == diag::NLMSG_ERROR {
        let e = u32_at(reply, 16).map(|v| v as i32).unwrap_or(-libc::EIO);
        return Err(Errno(if e < 0 { -e } else { libc::EIO }));
    }
    reply.get(..len).ok_or(Errno(libc::EIO))
}

/// Parse a reply to [`query`]: one netlink message holding a
/// `unix_diag_msg` and its attributes. Pending connection inodes go to
/// `icons` (as many as fit; the count is returned). **Async-signal-safe.**
pub fn parse_diag(reply: &[u8], icons: &mut [u64]) -> Result<(Diag, usize), Errno> {
    let msg = reply_message(reply)?;
    // nlmsghdr (16) + unix_diag_msg (16).
    let mut at = 32usize;
    let mut d = Diag::default();
    let mut n = 0usize;
    while at + 4 <= msg.len() {
        let alen = u16_at(msg, at).ok_or(Errno(libc::EIO))? as usize;
        let aty = u16_at(msg, at + 2).ok_or(Errno(libc::EIO))? & 0x3fff;
        if alen < 4 {
            break;
        }
        let body = msg.get(at + 4..at + alen).ok_or(Errno(libc::EIO))?;
        match aty {
            diag::ATTR_PEER => d.peer = u64::from(u32_at(body, 0).unwrap_or(0)),
            diag::ATTR_SHUTDOWN => d.shutdown = body.first().copied().unwrap_or(0),
            diag::ATTR_VFS => {
                if let (Some(ino), Some(dev)) = (u32_at(body, 0), u32_at(body, 4)) {
                    d.vfs = Some((u64::from(ino), u64::from(dev)));
                }
            }
            diag::ATTR_RQLEN => {
                d.rqueue = u32_at(body, 0).unwrap_or(0);
                d.wqueue = u32_at(body, 4).unwrap_or(0);
            }
            diag::ATTR_ICONS => {
                for c in body.chunks_exact(4) {
                    if let Some(slot) = icons.get_mut(n) {
                        *slot = u64::from(u32::from_ne_bytes([c[0], c[1], c[2], c[3]]));
                    }
                    n += 1;
                }
            }
            _ => {}
        }
        at += (alen + 3) & !3;
    }
    Ok((d, n))
}

/// Ask `sock_diag` about the unix socket with inode `ino` (of this network
/// namespace), through the netlink socket `nl`. **Async-signal-safe**: the
/// reply lands in `reply`, which must hold a page or more.
pub fn query(nl: i32, ino: u64, reply: &mut [u8]) -> Result<usize, Errno> {
    let ino32 = u32::try_from(ino).map_err(|_| Errno(libc::EOVERFLOW))?;
    let mut req = [0u8; 40];
    req[0..4].copy_from_slice(&40u32.to_ne_bytes());
    req[4..6].copy_from_slice(&diag::SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req[6..8].copy_from_slice(&1u16.to_ne_bytes()); // NLM_F_REQUEST
    req[8..12].copy_from_slice(&ino32.to_ne_bytes()); // sequence number
    // unix_diag_req: family, protocol, pad, states, ino, show, cookie[2].
    req[16] = libc::AF_UNIX as u8;
    req[20..24].copy_from_slice(&u32::MAX.to_ne_bytes());
    req[24..28].copy_from_slice(&ino32.to_ne_bytes());
    let show = diag::SHOW_VFS | diag::SHOW_PEER | diag::SHOW_ICONS | diag::SHOW_RQLEN;
    req[28..32].copy_from_slice(&show.to_ne_bytes());
    req[32..40].copy_from_slice(&[0xff; 8]); // INET_DIAG_NOCOOKIE
    exchange(nl, &req, reply)
}

/// Send the `sock_diag` request `req` through the netlink socket `nl` and
/// receive the kernel's one-message reply into `reply`. **Async-signal-safe.**
pub(super) fn exchange(nl: i32, req: &[u8], reply: &mut [u8]) -> Result<usize, Errno> {
    // SAFETY: sendto on our netlink socket from the caller's buffer, no
    // address (the socket's default destination is the kernel).
    unsafe {
        raw::syscall6(
            raw::nr::SENDTO,
            nl as usize,
            req.as_ptr() as usize,
            req.len(),
            0,
            0,
            0,
        )
    }?;
    raw::recv(nl, reply, 0)
}

/// Open a `sock_diag` netlink socket. **Async-signal-safe.**
pub fn open_diag() -> Result<i32, Errno> {
    // SAFETY: no pointers.
    unsafe {
        raw::syscall3(
            raw::nr::SOCKET,
            libc::AF_NETLINK as usize,
            (libc::SOCK_RAW | libc::SOCK_CLOEXEC) as usize,
            diag::NETLINK_SOCK_DIAG,
        )
    }
    .map(|fd| fd as i32)
}

pub(super) fn getsockopt_int(fd: i32, level: i32, opt: i32) -> Result<i32, Errno> {
    let mut v: i32 = 0;
    let mut len: u32 = 4;
    // SAFETY: getsockopt (55) writing an int and its length into locals.
    unsafe {
        raw::syscall6(
            55,
            fd as usize,
            level as usize,
            opt as usize,
            &mut v as *mut i32 as usize,
            &mut len as *mut u32 as usize,
            0,
        )
    }?;
    Ok(v)
}

pub(super) fn setsockopt_int(fd: i32, level: i32, opt: i32, v: i32) -> Result<(), Errno> {
    // SAFETY: setsockopt (54) reading an int from a local.
    unsafe {
        raw::syscall6(
            54,
            fd as usize,
            level as usize,
            opt as usize,
            &v as *const i32 as usize,
            4,
            0,
        )
    }
    .map(|_| ())
}

/// `getsockname` (51) or `getpeername` (52) of a unix socket: the bytes of
/// `sun_path` that are part of the name, into `out`. **Async-signal-safe.**
fn name_of(nr: usize, fd: i32, out: &mut [u8; 108]) -> Result<usize, Errno> {
    // SAFETY: sockaddr_un is plain old data.
    let mut sa: libc::sockaddr_un = unsafe { core::mem::zeroed() };
    let mut len = core::mem::size_of::<libc::sockaddr_un>() as u32;
    // SAFETY: the kernel writes at most `len` bytes into sa.
    unsafe {
        raw::syscall3(
            nr,
            fd as usize,
            &mut sa as *mut libc::sockaddr_un as usize,
            &mut len as *mut u32 as usize,
        )
    }?;
    let n = (len as usize).saturating_sub(2).min(108);
    for (o, &c) in out.iter_mut().zip(sa.sun_path.iter()).take(n) {
        *o = c as u8;
    }
    // A path name as getsockname reports it may carry its terminating NUL.
    let mut n = n;
    if n > 0 && out[0] != 0 {
        n = out.iter().take(n).position(|&c| c == 0).unwrap_or(n);
    }
    Ok(n)
}

/// The family of the socket `fd` (`SO_DOMAIN`). **Async-signal-safe.**
pub fn family(fd: i32) -> Result<i32, Errno> {
    getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN)
}

pub(super) fn write_bytes(j: &mut MmapBuf, b: &[u8]) {
    let _ = write!(j, "[");
    for (i, c) in b.iter().enumerate() {
        let _ = write!(j, "{}{c}", if i == 0 { "" } else { "," });
    }
    let _ = write!(j, "]");
}

/// A scratch mapping, unmapped when dropped. **Async-signal-safe.**
pub(super) struct Scratch {
    ptr: *mut u8,
    pub(super) len: usize,
}

impl Scratch {
    pub(super) fn new(len: usize) -> Result<Scratch, Errno> {
        Ok(Scratch {
            ptr: raw::mmap_anon(len)?,
            len,
        })
    }

    pub(super) fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: ptr is a private read/write mapping of len bytes that
        // only this value refers to.
        unsafe { core::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // SAFETY: the mapping is ours and no reference outlives self.
        let _ = unsafe { raw::munmap(self.ptr as usize, self.len) };
    }
}

/// The largest datagram read whole while peeking; a bigger one (possible
/// only with a send buffer raised above the default maximum) makes the
/// capture fail, and the checkpoint with it.
const MAX_MESSAGE: usize = 8 << 20;

/// Room for the control messages of a peek: credentials (32 bytes) and
/// the most descriptors one message carries (16 + 4 x 253, aligned).
#[repr(C, align(8))]
struct Control([u8; 1088]);

/// Peek at one message (or, for a stream, the next run of bytes) at the
/// socket's current peek offset, which the kernel then moves past it.
/// Descriptors sent with it are installed in this process (close-on-exec)
/// and listed in `rights`. Returns `(length, flags, sender name length,
/// descriptors)`; `None` when the queue has nothing more.
fn peek_one(
    fd: i32,
    stream: bool,
    buf: &mut [u8],
    from: &mut [u8; 108],
    rights: &mut [i32; rights::MAX_RIGHTS],
) -> Result<Option<(usize, i32, usize, usize)>, Errno> {
    // SAFETY: sockaddr_un is plain old data.
    let mut sa: libc::sockaddr_un = unsafe { core::mem::zeroed() };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut ctl = Control([0; 1088]);
    // SAFETY: msghdr is plain old data.
    let mut m: libc::msghdr = unsafe { core::mem::zeroed() };
    m.msg_name = (&mut sa as *mut libc::sockaddr_un).cast();
    m.msg_namelen = core::mem::size_of::<libc::sockaddr_un>() as u32;
    m.msg_iov = &mut iov;
    m.msg_iovlen = 1;
    m.msg_control = ctl.0.as_mut_ptr().cast();
    m.msg_controllen = ctl.0.len();
    // For a datagram, MSG_TRUNC makes the call return its whole length.
    let flags = libc::MSG_PEEK
        | libc::MSG_DONTWAIT
        | libc::MSG_CMSG_CLOEXEC
        | if stream { 0 } else { libc::MSG_TRUNC };
    loop {
        // SAFETY: recvmsg (47) with a msghdr whose pointers are all to
        // locals and the caller's buffer, sized as declared.
        let r = unsafe {
            raw::syscall3(
                47,
                fd as usize,
                &mut m as *mut libc::msghdr as usize,
                flags as usize,
            )
        };
        match r {
            Err(Errno(libc::EINTR)) => continue,
            Err(Errno(libc::EAGAIN)) => return Ok(None),
            Err(e) => return Err(e),
            Ok(n) => {
                let nlen = (m.msg_namelen as usize).saturating_sub(2).min(108);
                for (o, &c) in from.iter_mut().zip(sa.sun_path.iter()).take(nlen) {
                    *o = c as u8;
                }
                let mut nlen = nlen;
                if nlen > 0 && from[0] != 0 {
                    nlen = from.iter().take(nlen).position(|&c| c == 0).unwrap_or(nlen);
                }
                let nr = rights::parse_rights(&ctl.0, m.msg_controllen, rights);
                return Ok(Some((n, m.msg_flags, nlen, nr)));
            }
        }
    }
}

/// Capture the unix socket `fd` (inode `ino`): write its state as a JSON
/// object into `j`, its queued data into `out`, bound for the image at
/// `*data_off` (advanced past it, to a page boundary). `nl` is a
/// `sock_diag` socket ([`open_diag`]). **Async-signal-safe.** Runs while
/// every process of the job is stopped, so both ends of a pair are seen at
/// the same moment.
pub fn capture(
    fd: i32,
    ino: u64,
    nl: i32,
    out: &mut DeferredWrites,
    data_off: &mut u64,
    j: &mut MmapBuf,
    program: &[i32],
) -> Result<(), Errno> {
    let ty = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE)?;
    let listening = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN)? != 0;
    let passcred = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PASSCRED)? != 0;
    let sndbuf = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF)?;
    let rcvbuf = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF)?;
    let peek_off = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF)?;
    let mut name = [0u8; 108];
    let nlen = name_of(51, fd, &mut name)?;
    let mut peer_name = [0u8; 108];
    let (connected, plen) = match name_of(52, fd, &mut peer_name) {
        Ok(n) => (true, n),
        Err(Errno(libc::ENOTCONN)) => (false, 0),
        Err(e) => return Err(e),
    };
    let mut reply = Scratch::new(64 << 10)?;
    let mut icons = [0u64; 64];
    let n = query(nl, ino, reply.bytes())?;
    let (d, nicons) = parse_diag(reply.bytes().get(..n).unwrap_or(&[]), &mut icons)?;
    // A connection whose peer closed is still connected (getpeername
    // answers with the peer's name) but has no peer inode.
    let state = if listening {
        State::Listening
    } else if connected || d.peer != 0 {
        State::Connected
    } else {
        State::Unconnected
    };
    // Is the path name's socket file still this socket's?
    let mut unlinked = false;
    if nlen > 0 && name[0] != 0 {
        let mut p = [0u8; 109];
        p[..nlen].copy_from_slice(&name[..nlen]);
        // SAFETY: stat is plain old data.
        let mut st: libc::stat = unsafe { core::mem::zeroed() };
        // SAFETY: newfstatat (262) of a NUL-terminated local path into a local stat.
        let r = unsafe {
            raw::syscall6(
                262,
                libc::AT_FDCWD as usize,
                p.as_ptr() as usize,
                &mut st as *mut libc::stat as usize,
                libc::AT_SYMLINK_NOFOLLOW as usize,
                0,
                0,
            )
        };
        unlinked = match (r, d.vfs) {
            (Ok(_), Some((vino, _))) => st.st_ino != vino,
            _ => true,
        };
    }
    // Bytes queued on connections not accepted yet.
    let mut pending_bytes = 0u64;
    for &c in icons.iter().take(nicons.min(icons.len())) {
        let mut none = [0u64; 0];
        if let Ok(k) = query(nl, c, reply.bytes())
            && let Ok((cd, _)) = parse_diag(reply.bytes().get(..k).unwrap_or(&[]), &mut none)
        {
            // The connecting socket's unread output: bytes queued on the
            // connection that is not accepted yet.
            pending_bytes += u64::from(cd.wqueue);
        }
    }
    let _ = write!(
        j,
        "{{\"ty\":{ty},\"state\":\"{}\",\"name\":",
        match state {
            State::Unconnected => "unconnected",
            State::Listening => "listening",
            State::Connected => "connected",
        }
    );
    write_bytes(j, name.get(..nlen).unwrap_or(&[]));
    let _ = write!(j, ",\"peer_name\":");
    write_bytes(j, peer_name.get(..plen).unwrap_or(&[]));
    let _ = write!(
        j,
        ",\"peer\":{},\"shutdown\":{},\"unlinked\":{unlinked},\"backlog\":{},\"pending\":[",
        d.peer,
        d.shutdown,
        if listening { d.wqueue } else { 0 }
    );
    for (i, c) in icons.iter().take(nicons.min(icons.len())).enumerate() {
        let _ = write!(j, "{}{c}", if i == 0 { "" } else { "," });
    }
    if nicons > icons.len() {
        // More pending connections than recorded: the validation refuses.
        pending_bytes = pending_bytes.max(1);
    }
    let _ = write!(
        j,
        "],\"pending_bytes\":{pending_bytes},\"passcred\":{passcred},\"sndbuf\":{sndbuf},\"rcvbuf\":{rcvbuf},\"peek_off\":{peek_off},\"queue\":["
    );
    drop(reply);
    // The queue: a listening socket's holds connections, not data.
    let (mut fds_in_flight, mut oob) = (false, false);
    let mut total = 0u64;
    if !listening {
        setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, 0)?;
        let r = peek_queue(
            fd,
            ty,
            d.shutdown & 1 != 0,
            out,
            *data_off,
            j,
            &mut total,
            &mut fds_in_flight,
            &mut oob,
            program,
        );
        // Put the program's peek offset back whatever happened.
        let _ = setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, peek_off);
        let crc = r?;
        let _ = write!(j, "]");
        if total > 0 {
            let _ = write!(j, ",\"data\":[{},{total}],\"crc\":{crc}", *data_off);
            *data_off += total.div_ceil(4096) * 4096;
        }
    } else {
        let _ = write!(j, "]");
    }
    let _ = write!(j, ",\"fds_in_flight\":{fds_in_flight},\"oob\":{oob}}}");
    if j.overflow {
        return Err(Errno(libc::ENOMEM));
    }
    Ok(())
}

/// Peek every queued message of `fd` into the image at `off`; list them in
/// `j`, with the descriptors sent with them (described against `program`,
/// the process's descriptors). Returns the CRC-32C of the bytes; `total`
/// is their length.
#[allow(clippy::too_many_arguments)]
fn peek_queue(
    fd: i32,
    ty: i32,
    rcv_shut: bool,
    out: &mut DeferredWrites,
    off: u64,
    j: &mut MmapBuf,
    total: &mut u64,
    fds_in_flight: &mut bool,
    oob: &mut bool,
    program: &[i32],
) -> Result<u32, Errno> {
    let stream = ty == libc::SOCK_STREAM;
    let mut crc = Crc32c::new();
    let mut from = [0u8; 108];
    let mut rights = [0i32; rights::MAX_RIGHTS];
    // The JSON of the descriptors of the current message.
    let mut fdj = MmapBuf::new();
    let mut first = true;
    // A stream is read in runs of bytes, merged into one message.
    let mut run = 0u64;
    // The last run of a stream carried descriptors.
    let mut after_rights = false;
    const RUN: usize = 256 << 10;
    let r = (|| {
        while let Some((n, flags, flen, mut nr)) =
            peek_one(fd, stream, out.spare(RUN)?, &mut from, &mut rights)?
        {
            if flags & libc::MSG_CTRUNC != 0 {
                // More descriptors than this process could take.
                *fds_in_flight = true;
            }
            if flags & libc::MSG_OOB != 0 {
                *oob = true;
            }
            let mut len = n;
            if !stream && flags & libc::MSG_TRUNC != 0 && n > RUN {
                // A datagram bigger than the buffer: the peek moved the offset
                // by what it copied. Go back and read it whole.
                rights::close_all(rights.get(..nr).unwrap_or(&[]));
                if n > MAX_MESSAGE {
                    return Err(Errno(libc::EMSGSIZE));
                }
                let back = i32::try_from(*total).map_err(|_| Errno(libc::EOVERFLOW))?;
                setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, back)?;
                match peek_one(fd, stream, out.spare(n)?, &mut from, &mut rights)? {
                    Some((m, _, _, k)) if m == n => {
                        len = m;
                        nr = k;
                    }
                    _ => return Err(Errno(libc::EIO)),
                }
            }
            if nr > 0 {
                // Described and closed at once.
                fdj.clear();
                rights::describe(rights.get(..nr).unwrap_or(&[]), program, &mut fdj);
                if fdj.overflow {
                    return Err(Errno(libc::ENOMEM));
                }
            }
            if len == 0 {
                // End of file (the peer is gone, or receiving shut down), or
                // an empty datagram.
                if stream || rcv_shut {
                    break;
                }
                // An empty datagram does not move the peek offset: the rest of
                // the queue cannot be reached without consuming it.
                return Err(Errno(libc::ENOMSG));
            }
            crc.update(out.spare(len)?);
            out.commit(len, off + *total)?;
            *total += len as u64;
            if stream {
                // A stream's peek runs over the queued pieces (one per
                // send) and stops after the first that carries descriptors;
                // once the buffer is full it still walks on, without
                // copying, to the next such piece and takes its
                // descriptors. So descriptors belong to this run only when
                // it did not fill the buffer; then to its last piece, whose
                // start no peek shows. It is known in one case: a run of
                // one byte that begins the queue or follows a run that
                // carried descriptors (a piece has at least one byte), the
                // way programs pass descriptors (Python's
                // multiprocessing.reduction.sendfds sends one byte).
                let carried = nr > 0 && len < RUN;
                let placed = carried && len == 1 && (after_rights || *total == 1);
                after_rights = carried;
                if carried && !placed {
                    // Not saved: the checkpoint is refused (passing).
                    *fds_in_flight = true;
                }
                if !placed {
                    run += len as u64;
                    continue;
                }
                if run > 0 {
                    let _ = write!(j, "{}{{\"len\":{run}}}", if first { "" } else { "," });
                    first = false;
                    run = 0;
                }
                let _ = write!(j, "{}{{\"len\":1,\"fds\":", if first { "" } else { "," });
                j.push(fdj.as_slice())?;
                let _ = write!(j, "}}");
                first = false;
                continue;
            }
            let _ = write!(j, "{}{{\"len\":{len}", if first { "" } else { "," });
            if flen > 0 {
                let _ = write!(j, ",\"from\":");
                write_bytes(j, from.get(..flen).unwrap_or(&[]));
            }
            if nr > 0 {
                let _ = write!(j, ",\"fds\":");
                j.push(fdj.as_slice())?;
            }
            let _ = write!(j, "}}");
            first = false;
            if *total > i32::MAX as u64 / 2 {
                return Err(Errno(libc::EOVERFLOW));
            }
        }
        if stream && run > 0 {
            let _ = write!(j, "{}{{\"len\":{run}}}", if first { "" } else { "," });
        }
        Ok(crc.finish())
    })();
    fdj.free();
    r
}

impl UnixSocket {
    /// At checkpoint time: why this socket cannot be restored, if it
    /// cannot (the peer's whereabouts are the coordinator's to check).
    pub fn validate(&self) -> Result<(), String> {
        if !matches!(
            self.ty,
            libc::SOCK_STREAM | libc::SOCK_DGRAM | libc::SOCK_SEQPACKET
        ) {
            return Err(format!("its type {} is not one ckpt restores", self.ty));
        }
        if self.fds_in_flight {
            return Err(
                "file descriptors sent with SCM_RIGHTS are queued in it, not yet received, that ckpt cannot \
                 save: more than the process could take to look at, or sent on a stream with more than one \
                 byte or right after other bytes (a peek does not show which bytes they came with) \
                 (it tries again while the program runs: a program that receives them soon is \
                 checkpointed then)"
                    .into(),
            );
        }
        if self.oob {
            return Err("out-of-band data (MSG_OOB) is queued in it".into());
        }
        if self.pending_bytes > 0 {
            return Err(format!(
                "a connection to it that the program has not accepted yet has {} bytes queued",
                self.pending_bytes
            ));
        }
        if self.state == State::Unconnected && self.name.is_empty() && !self.queue.is_empty() {
            return Err("data is queued in an unnamed, unconnected socket".into());
        }
        let sum: u64 = self.queue.iter().map(|m| m.len).sum();
        if sum != self.data.map_or(0, |[_, l]| l) {
            return Err("corrupt state: queued lengths do not add up".into());
        }
        Ok(())
    }

    /// Whether [`Self::validate`]'s refusal passes by itself once the
    /// program runs a moment: descriptors or out-of-band data not received
    /// yet, a connection not accepted yet, a datagram not read yet.
    pub fn passes(&self) -> bool {
        let kind_ok = matches!(
            self.ty,
            libc::SOCK_STREAM | libc::SOCK_DGRAM | libc::SOCK_SEQPACKET
        );
        let sum: u64 = self.queue.iter().map(|m| m.len).sum();
        kind_ok && sum == self.data.map_or(0, |[_, l]| l) && self.validate().is_err()
    }

    /// A path name (not abstract, not empty).
    pub fn path_name(&self) -> Option<&[u8]> {
        (!self.name.is_empty() && self.name[0] != 0).then_some(&self.name[..])
    }
}

/// A name for messages: a path, `@abstract`, or "an unnamed socket".
pub fn show_name(n: &[u8]) -> String {
    match n.first() {
        None => "an unnamed socket".into(),
        Some(0) => format!("@{}", String::from_utf8_lossy(&n[1..])),
        Some(_) => String::from_utf8_lossy(n).into_owned(),
    }
}

mod restore;
pub mod rights;
pub use restore::{Refusal, Restored, SavedEnd, Step, plan, restore_all};

#[cfg(test)]
mod tests;
