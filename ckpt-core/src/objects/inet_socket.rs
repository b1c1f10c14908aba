//! TCP and UDP sockets (IPv4 and IPv6) whose connections stay inside the
//! job: listening sockets, connections between two processes of the job
//! (typically over loopback), with the bytes in flight in both directions;
//! bound or connected UDP sockets.
//!
//! Like a unix socket, a TCP connection is half of a pair: its restore
//! needs the peer's state, so the pairing and the creation of both ends are
//! [`restore_all`] (in `inet_socket/restore.rs`), called by the job's init
//! before it recreates the processes, which inherit the sockets.
//!
//! ## Without `TCP_REPAIR`
//! Putting a TCP connection back exactly as the kernel had it (sequence
//! numbers, queues) needs `TCP_REPAIR`, that is `CAP_NET_ADMIN` in the user
//! namespace owning the socket's network namespace; a job runs in the
//! host's network namespace (it must reach other nodes, slurmctld, file
//! servers), where it has no capabilities. So ckpt captures what a program
//! can observe and makes a new connection between the same two addresses:
//! - the bytes a receiver has not read are peeked (`MSG_PEEK`, nothing is
//!   consumed, the running job is not disturbed) while every process of the
//!   job is stopped. Bytes the receiver has acknowledged are in its queue;
//!   bytes it has not (`SIOCOUTQ` at the sender) may still be on their way,
//!   even on loopback (a segment waits in the per-CPU input queue until the
//!   kernel's network softirq runs, which under load can take a while), or
//!   not sent at all (the receiver's window is full, `TCP_CORK`/Nagle holds
//!   a small segment). So a connection with unacknowledged bytes is refused
//!   as a *passing* condition: the coordinator lets the job run a moment and
//!   stops it again;
//! - `sock_diag` (allowed to any user for the sockets of its network
//!   namespace) tells the state and shutdown flags of each end, the listening
//!   backlog and accept queue, and, looked up by the reversed address pair,
//!   the peer: its inode (a socket of the job, or of someone else), none
//!   (it was closed: the connection comes back with a stand-in peer that
//!   closes after giving back what is queued), or a connection not accepted
//!   yet (inode 0 while established: it sits in a listening socket's
//!   queue).
//!
//! At restart the two ends are made again with their own addresses and
//! ports (`bind` with `SO_REUSEADDR`, a temporary listening socket at one
//! end's address, `connect` from the other's), the queued bytes are written
//! back by the peer, then options and shutdown state are applied. See
//! `docs/sockets.md`.

use core::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::unix_socket::{exchange, getsockopt_int, reply_message, setsockopt_int, u16_at, u32_at};
use crate::image::checksum::Crc32c;
use crate::signal_safe::buf::MmapBuf;
use crate::signal_safe::deferred::DeferredWrites;
use crate::signal_safe::raw::{self, Errno};

/// TCP states (kernel `TCP_*` numbers) this module names.
pub mod tcp_state {
    /// `TCP_ESTABLISHED`.
    pub const ESTABLISHED: u8 = 1;
    /// `TCP_SYN_SENT`.
    pub const SYN_SENT: u8 = 2;
    /// `TCP_SYN_RECV`.
    pub const SYN_RECV: u8 = 3;
    /// `TCP_CLOSE`.
    pub const CLOSE: u8 = 7;
    /// `TCP_CLOSE_WAIT`.
    pub const CLOSE_WAIT: u8 = 8;
    /// `TCP_LISTEN`.
    pub const LISTEN: u8 = 10;

    /// The kernel's name of a state, for messages.
    pub fn name(s: u8) -> &'static str {
        match s {
            1 => "ESTABLISHED",
            2 => "SYN-SENT",
            3 => "SYN-RECV",
            4 => "FIN-WAIT-1",
            5 => "FIN-WAIT-2",
            6 => "TIME-WAIT",
            7 => "CLOSE",
            8 => "CLOSE-WAIT",
            9 => "LAST-ACK",
            10 => "LISTEN",
            11 => "CLOSING",
            _ => "unknown",
        }
    }
}

/// An address and port (`getsockname`/`getpeername`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Addr {
    /// 4 bytes (IPv4) or 16 (IPv6, possibly v4-mapped), network order.
    pub ip: Vec<u8>,
    /// Port.
    pub port: u16,
}

impl Addr {
    /// Is it a loopback address (127/8, ::1, ::ffff:127/104)?
    pub fn is_loopback(&self) -> bool {
        match self.ip.len() {
            4 => self.ip[0] == 127,
            16 => {
                self.ip[..15].iter().all(|&b| b == 0) && self.ip[15] == 1
                    || (self.ip[..10].iter().all(|&b| b == 0)
                        && self.ip[10] == 0xff
                        && self.ip[11] == 0xff
                        && self.ip[12] == 127)
            }
            _ => false,
        }
    }

    /// The unspecified address (a wildcard bind)?
    pub fn is_any(&self) -> bool {
        self.ip.iter().all(|&b| b == 0)
    }

    /// The IPv4 address behind a v4-mapped IPv6 one, or the address itself.
    pub fn canonical(&self) -> Vec<u8> {
        if self.ip.len() == 16
            && self.ip[..10].iter().all(|&b| b == 0)
            && self.ip[10] == 0xff
            && self.ip[11] == 0xff
        {
            self.ip[12..].to_vec()
        } else {
            self.ip.clone()
        }
    }

    /// Same address and port, v4-mapped or not.
    pub fn same(&self, o: &Addr) -> bool {
        self.port == o.port && self.canonical() == o.canonical()
    }
}

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.ip.len() {
            4 => write!(
                f,
                "{}.{}.{}.{}:{}",
                self.ip[0], self.ip[1], self.ip[2], self.ip[3], self.port
            ),
            16 => {
                let mut b = [0u8; 16];
                b.copy_from_slice(&self.ip);
                write!(f, "[{}]:{}", std::net::Ipv6Addr::from(b), self.port)
            }
            _ => write!(f, "?:{}", self.port),
        }
    }
}

/// What the other end of a connection is.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Peer {
    /// Not connected.
    #[default]
    None,
    /// A socket with an inode ([`InetSocket::peer_inode`]): of the job or not.
    Socket,
    /// Closed by its holder (an orphan, inode 0, or gone).
    Closed,
    /// Not accepted yet: it waits in a listening socket's queue.
    Pending,
    /// Not found on this host: a remote peer, or gone entirely.
    Unknown,
}

/// Socket options a restore sets again.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Options {
    /// `SO_REUSEADDR`.
    pub reuseaddr: bool,
    /// `SO_REUSEPORT`.
    pub reuseport: bool,
    /// `SO_KEEPALIVE`.
    pub keepalive: bool,
    /// `SO_BROADCAST` (UDP).
    pub broadcast: bool,
    /// `SO_SNDBUF` as `getsockopt` gives it (twice what was set).
    pub sndbuf: i32,
    /// `SO_RCVBUF`, likewise.
    pub rcvbuf: i32,
    /// `SO_LINGER`: on, seconds.
    pub linger: [i32; 2],
    /// `TCP_NODELAY`.
    pub nodelay: bool,
    /// `TCP_CORK`.
    pub cork: bool,
    /// `TCP_KEEPIDLE`, `TCP_KEEPINTVL`, `TCP_KEEPCNT`.
    pub keep: [i32; 3],
    /// `IPV6_V6ONLY` (IPv6 sockets).
    pub v6only: bool,
}

/// A TCP or UDP socket's state (the `inet` field of an fd whose kind is
/// `socket`, when its family is `AF_INET` or `AF_INET6`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct InetSocket {
    /// `AF_INET` (2) or `AF_INET6` (10).
    pub family: i32,
    /// `SOCK_STREAM` (TCP) or `SOCK_DGRAM` (UDP).
    pub ty: i32,
    /// Kernel TCP state (0 for UDP).
    pub tcp_state: u8,
    /// Its own address (port 0: not bound).
    pub local: Addr,
    /// The peer's address, when connected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<Addr>,
    /// What the peer is.
    #[serde(default)]
    pub peer_is: Peer,
    /// The peer's inode ([`Peer::Socket`]).
    #[serde(default)]
    pub peer_inode: u64,
    /// Bytes queued in the peer's not-yet-accepted socket ([`Peer::Pending`]),
    /// or not yet delivered by a closed peer ([`Peer::Closed`]).
    #[serde(default)]
    pub peer_queued: u32,
    /// `sk_shutdown`: bit 0 receiving is shut down, bit 1 sending is.
    #[serde(default)]
    pub shutdown: u8,
    /// Listening: the backlog.
    #[serde(default)]
    pub backlog: u32,
    /// Listening: connections waiting to be accepted.
    #[serde(default)]
    pub accept_queue: u32,
    /// Bytes written and not acknowledged by the receiver yet (`SIOCOUTQ`:
    /// not sent, or on their way).
    #[serde(default)]
    pub unsent: u32,
    /// UDP: datagrams were queued that could not be saved (an empty one
    /// hides those behind it from a peek): refused, passing.
    #[serde(default)]
    pub datagrams: bool,
    /// UDP: the datagrams queued in it, in order (their bytes back to back
    /// in `data`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<Datagram>,
    /// TCP: closed after carrying a connection (both ends closed it, or it
    /// was reset): refused.
    #[serde(default)]
    pub ended: bool,
    /// TCP: bytes it sent that its peer acknowledged, and bytes it received,
    /// since the connection began (`tcpi_bytes_acked`, `tcpi_bytes_received`):
    /// two ends captured apart (two tasks of a job) saw every byte between
    /// them delivered exactly when each one's count is the other's.
    #[serde(default)]
    pub acked: u64,
    /// See [`Self::acked`].
    #[serde(default)]
    pub received: u64,
    /// Options.
    #[serde(default)]
    pub opts: Options,
    /// The bytes received and not read yet: `[offset in the image, length]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<[u64; 2]>,
    /// CRC-32C of those bytes.
    #[serde(default)]
    pub crc: u32,
}

/// One UDP datagram queued in a socket.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Datagram {
    /// Its length in bytes.
    pub len: u64,
    /// The address it came from.
    pub from: Addr,
}

/// `sock_diag` constants (uapi `linux/inet_diag.h`, `linux/sock_diag.h`).
mod diag {
    pub const SOCK_DIAG_BY_FAMILY: u16 = 20;
    /// `INET_DIAG_INFO`: the socket's `struct tcp_info`.
    pub const ATTR_INFO: u16 = 2;
    /// `INET_DIAG_SKMEMINFO`: `u32 [SK_MEMINFO_VARS]`.
    pub const ATTR_SKMEMINFO: u16 = 7;
    pub const ATTR_SHUTDOWN: u16 = 8;
    /// Request bits (`idiag_ext`, bit `type - 1`) for the two above.
    pub const EXT_INFO_AND_MEMORY: u8 = (1 << (ATTR_INFO - 1)) | (1 << (ATTR_SKMEMINFO - 1));
    /// `SK_MEMINFO_RCVBUF` and `SK_MEMINFO_SNDBUF`: what `SO_RCVBUF` and
    /// `SO_SNDBUF` return (`sk_rcvbuf`, `sk_sndbuf`).
    pub const MEM_RCVBUF: usize = 1;
    pub const MEM_SNDBUF: usize = 3;
}

/// What `struct tcp_info` tells a capture: the state, whether the socket
/// carried traffic, its bytes acknowledged and received.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpInfoBits {
    /// TCP state (its first byte).
    pub state: u8,
    /// It sent or received a segment.
    pub traffic: bool,
    /// `tcpi_bytes_acked`.
    pub acked: u64,
    /// `tcpi_bytes_received`.
    pub received: u64,
}

impl TcpInfoBits {
    /// From the first `info.len()` bytes of a `struct tcp_info` (an older
    /// kernel's is shorter: the fields it lacks read as 0). The state is
    /// its first byte, `tcpi_bytes_acked` and `tcpi_bytes_received` the
    /// u64s at 120 and 128, `tcpi_segs_out` and `tcpi_segs_in` the u32s at
    /// 136 and 140 (uapi linux/tcp.h). **Async-signal-safe.**
    pub fn parse(info: &[u8]) -> Option<TcpInfoBits> {
        let state = *info.first()?;
        let segs = |at: usize| u32_at(info, at).unwrap_or(0);
        let bytes = |at: usize| match (u32_at(info, at), u32_at(info, at + 4)) {
            (Some(lo), Some(hi)) => u64::from(lo) | u64::from(hi) << 32,
            _ => 0,
        };
        Some(TcpInfoBits {
            state,
            traffic: segs(136) > 0 || segs(140) > 0,
            acked: bytes(120),
            received: bytes(128),
        })
    }
}

/// What `sock_diag` tells about one TCP socket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Diag {
    /// TCP state.
    pub state: u8,
    /// Source and destination ports of the socket found.
    pub sport: u16,
    /// (network order decoded).
    pub dport: u16,
    /// Receive queue (listening: the accept queue).
    pub rqueue: u32,
    /// Send queue (listening: the backlog).
    pub wqueue: u32,
    /// Its inode (0: no process holds it).
    pub inode: u64,
    /// `sk_shutdown` (absent for time-wait sockets: 0).
    pub shutdown: u8,
    /// Its `struct tcp_info`, when asked for ([`query_pair`]).
    pub info: Option<TcpInfoBits>,
    /// Its send and receive buffer sizes (`SO_SNDBUF`, `SO_RCVBUF`), when
    /// asked for.
    pub bufs: Option<(i32, i32)>,
}

/// Parse a reply to [`query`]: one netlink message with an
/// `inet_diag_msg` and its attributes. **Async-signal-safe.**
pub fn parse_diag(reply: &[u8]) -> Result<Diag, Errno> {
    let msg = reply_message(reply)?;
    // nlmsghdr (16), then family, state, timer, retrans, the socket id
    // (sport, dport big-endian, src, dst, if, cookie: 48 bytes), expires,
    // rqueue, wqueue, uid, inode.
    let b = |at: usize| msg.get(at).copied().ok_or(Errno(libc::EIO));
    let port = |at: usize| -> Result<u16, Errno> { Ok(u16::from_be_bytes([b(at)?, b(at + 1)?])) };
    let mut d = Diag {
        state: b(17)?,
        sport: port(20)?,
        dport: port(22)?,
        rqueue: u32_at(msg, 72).ok_or(Errno(libc::EIO))?,
        wqueue: u32_at(msg, 76).ok_or(Errno(libc::EIO))?,
        inode: u64::from(u32_at(msg, 84).ok_or(Errno(libc::EIO))?),
        shutdown: 0,
        info: None,
        bufs: None,
    };
    let mut at = 88usize;
    while at + 4 <= msg.len() {
        let alen = u16_at(msg, at).ok_or(Errno(libc::EIO))? as usize;
        let aty = u16_at(msg, at + 2).ok_or(Errno(libc::EIO))? & 0x3fff;
        if alen < 4 {
            break;
        }
        let body = msg.get(at + 4..(at + alen).min(msg.len())).unwrap_or(&[]);
        match aty {
            diag::ATTR_SHUTDOWN => d.shutdown = body.first().copied().unwrap_or(0),
            diag::ATTR_INFO => d.info = TcpInfoBits::parse(body),
            diag::ATTR_SKMEMINFO => {
                let mem = |i: usize| u32_at(body, 4 * i).map(|v| v as i32);
                if let (Some(snd), Some(rcv)) = (mem(diag::MEM_SNDBUF), mem(diag::MEM_RCVBUF)) {
                    d.bufs = Some((snd, rcv));
                }
            }
            _ => {}
        }
        at += (alen + 3) & !3;
    }
    Ok(d)
}

/// An address without allocation: 16 address bytes (4 used for IPv4) and
/// a port. **Async-signal-safe.**
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddrBuf {
    /// IPv6 (else IPv4).
    pub v6: bool,
    /// The address, network order.
    pub ip: [u8; 16],
    /// Port.
    pub port: u16,
}

impl AddrBuf {
    /// `getsockname` (51) or `getpeername` (52) of `fd`.
    fn get(nr: usize, fd: i32) -> Result<AddrBuf, Errno> {
        // SAFETY: sockaddr_in6 is plain old data and large enough for either family.
        let mut sa: libc::sockaddr_in6 = unsafe { core::mem::zeroed() };
        let mut len = core::mem::size_of::<libc::sockaddr_in6>() as u32;
        // SAFETY: the kernel writes at most `len` bytes into sa.
        unsafe {
            raw::syscall3(
                nr,
                fd as usize,
                &mut sa as *mut libc::sockaddr_in6 as usize,
                &mut len as *mut u32 as usize,
            )
        }?;
        Ok(AddrBuf::from_sockaddr(&sa))
    }

    /// The address in a `sockaddr_in` or `sockaddr_in6` (read as the latter).
    fn from_sockaddr(sa: &libc::sockaddr_in6) -> AddrBuf {
        let mut a = AddrBuf {
            v6: i32::from(sa.sin6_family) == libc::AF_INET6,
            ip: [0; 16],
            port: u16::from_be(sa.sin6_port),
        };
        if a.v6 {
            a.ip = sa.sin6_addr.s6_addr;
        } else {
            // A sockaddr_in: family, port, then the 4 address bytes (which
            // sockaddr_in6 holds as flowinfo).
            a.ip[..4].copy_from_slice(&sa.sin6_flowinfo.to_ne_bytes());
        }
        a
    }

    /// The address bytes in use.
    pub fn bytes(&self) -> &[u8] {
        if self.v6 { &self.ip } else { &self.ip[..4] }
    }

    fn write(&self, j: &mut MmapBuf) {
        let _ = write!(j, "{{\"ip\":");
        super::unix_socket::write_bytes(j, self.bytes());
        let _ = write!(j, ",\"port\":{}}}", self.port);
    }
}

/// Build the `sock_diag` request for the TCP socket whose own address is
/// `src` and whose peer is `dst` (all zero: a listening socket), asking
/// for the attributes `ext` names (`idiag_ext`).
fn request(family: i32, src: &AddrBuf, dst: &AddrBuf, ext: u8, req: &mut [u8; 72]) {
    req.fill(0);
    req[0..4].copy_from_slice(&72u32.to_ne_bytes());
    req[4..6].copy_from_slice(&diag::SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req[6..8].copy_from_slice(&1u16.to_ne_bytes()); // NLM_F_REQUEST
    req[8..12].copy_from_slice(&u32::from(src.port).to_ne_bytes());
    // inet_diag_req_v2: family, protocol, ext, pad, states, then the id:
    // sport, dport (big-endian), src[16], dst[16], if, cookie[2].
    req[16] = family as u8;
    req[17] = libc::IPPROTO_TCP as u8;
    req[18] = ext;
    req[20..24].copy_from_slice(&u32::MAX.to_ne_bytes());
    req[24..26].copy_from_slice(&src.port.to_be_bytes());
    req[26..28].copy_from_slice(&dst.port.to_be_bytes());
    req[28..28 + src.bytes().len()].copy_from_slice(src.bytes());
    req[44..44 + dst.bytes().len()].copy_from_slice(dst.bytes());
    req[64..72].copy_from_slice(&[0xff; 8]); // INET_DIAG_NOCOOKIE
}

/// Look up the TCP socket `src` → `dst` with `sock_diag` through the
/// netlink socket `nl`. **Async-signal-safe.** `Err(ENOENT)` when there is
/// none (the kernel falls back to a listening socket on `src`'s port, which
/// is told apart by its destination port).
pub fn query(nl: i32, family: i32, src: &AddrBuf, dst: &AddrBuf) -> Result<Diag, Errno> {
    let mut req = [0u8; 72];
    request(family, src, dst, 0, &mut req);
    let mut reply = [0u8; 512];
    let got = exchange(nl, &req, &mut reply)?;
    let d = parse_diag(reply.get(..got).unwrap_or(&[]))?;
    if d.sport != src.port || d.dport != dst.port {
        return Err(Errno(libc::ENOENT));
    }
    Ok(d)
}

/// Two lookups through `nl` at once, as [`query`] does each: one `sendto`
/// carrying both requests and one `recvmmsg` for both replies (a job may
/// hold hundreds of connections, each end asked about itself and its peer
/// while the job stands still). The first also brings the socket's
/// `struct tcp_info` and buffer sizes ([`Diag::info`], [`Diag::bufs`]),
/// which spares the capture three `getsockopt` calls per connection.
/// A reply too long for [`REPLY`] (the kernel adds a root socket's MD5
/// keys after the tcp_info) is asked for again without them.
/// **Async-signal-safe.**
pub fn query_pair(
    nl: i32,
    family: i32,
    a: (&AddrBuf, &AddrBuf),
    b: (&AddrBuf, &AddrBuf),
) -> (Result<Diag, Errno>, Result<Diag, Errno>) {
    match query_pair_ext(nl, family, a, b, diag::EXT_INFO_AND_MEMORY) {
        (Err(Errno(libc::EIO)), _) => query_pair_ext(nl, family, a, b, 0),
        r => r,
    }
}

/// [`query_pair`], asking for the attributes `ext_a` names about `a`.
fn query_pair_ext(
    nl: i32,
    family: i32,
    a: (&AddrBuf, &AddrBuf),
    b: (&AddrBuf, &AddrBuf),
    ext_a: u8,
) -> (Result<Diag, Errno>, Result<Diag, Errno>) {
    let mut reqs = [0u8; 144];
    let (ra, rb) = reqs.split_at_mut(72);
    let (mut qa, mut qb) = ([0u8; 72], [0u8; 72]);
    request(family, a.0, a.1, ext_a, &mut qa);
    request(family, b.0, b.1, 0, &mut qb);
    // Sequence numbers 1 and 2 tell the replies apart.
    qa[8..12].copy_from_slice(&1u32.to_ne_bytes());
    qb[8..12].copy_from_slice(&2u32.to_ne_bytes());
    ra.copy_from_slice(&qa);
    rb.copy_from_slice(&qb);
    let mut replies = [[0u8; REPLY]; 2];
    let got = match exchange_many(nl, &reqs, &mut replies) {
        Ok(n) => n,
        Err(e) => return (Err(e), Err(e)),
    };
    let mut out = [Err(Errno(libc::EIO)), Err(Errno(libc::EIO))];
    for (r, len) in replies.iter().zip(got) {
        let r = r.get(..len).unwrap_or(&[]);
        let slot = match u32_at(r, 8) {
            Some(1) => 0,
            Some(2) => 1,
            _ => continue,
        };
        let (src, dst) = if slot == 0 { a } else { b };
        out[slot] = parse_diag(r).and_then(|d| {
            if d.sport != src.port || d.dport != dst.port {
                Err(Errno(libc::ENOENT))
            } else {
                Ok(d)
            }
        });
    }
    let [x, y] = out;
    (x, y)
}

/// Room for one reply of [`query_pair`]: the message (88 bytes), its
/// attributes (about 40), a `struct tcp_info` (about 280 bytes on 6.18,
/// more on later kernels) and the memory counters (40).
const REPLY: usize = 1024;

/// Send `reqs` (netlink messages back to back) through `nl` and receive
/// one reply datagram into each of `replies` with one `recvmmsg`; the
/// lengths received (0 for a reply that did not come).
/// **Async-signal-safe.**
fn exchange_many(
    nl: i32,
    reqs: &[u8],
    replies: &mut [[u8; REPLY]; 2],
) -> Result<[usize; 2], Errno> {
    // SAFETY: sendto on our netlink socket from the caller's buffer, no
    // address (the socket's default destination is the kernel).
    unsafe {
        raw::syscall6(
            raw::nr::SENDTO,
            nl as usize,
            reqs.as_ptr() as usize,
            reqs.len(),
            0,
            0,
            0,
        )
    }?;
    // The kernel answers while handling the send: both replies are queued.
    let (first, second) = replies.split_at_mut(1);
    let (r0, r1) = (&mut first[0], &mut second[0]);
    let mut iov = [
        libc::iovec {
            iov_base: r0.as_mut_ptr().cast(),
            iov_len: r0.len(),
        },
        libc::iovec {
            iov_base: r1.as_mut_ptr().cast(),
            iov_len: r1.len(),
        },
    ];
    // SAFETY: mmsghdr is plain old data; all-zero is valid.
    let mut msgs: [libc::mmsghdr; 2] = unsafe { core::mem::zeroed() };
    for (m, v) in msgs.iter_mut().zip(iov.iter_mut()) {
        m.msg_hdr.msg_iov = v;
        m.msg_hdr.msg_iovlen = 1;
    }
    let n = loop {
        // SAFETY: recvmmsg (299) into two msghdrs, each pointing to one
        // writable reply buffer of the length its iovec gives; no timeout.
        match unsafe {
            raw::syscall6(
                299,
                nl as usize,
                msgs.as_mut_ptr() as usize,
                2,
                libc::MSG_WAITFORONE as usize,
                0,
                0,
            )
        } {
            Err(Errno(libc::EINTR)) => continue,
            r => break r?,
        }
    };
    let mut got = [0usize; 2];
    for (g, m) in got.iter_mut().zip(msgs.iter()).take(n) {
        *g = m.msg_len as usize;
    }
    if n == 1 {
        got[1] = raw::recv(nl, r1, 0)?;
    }
    Ok(got)
}

impl AddrBuf {
    /// The address of a saved socket, for a [`query`].
    pub fn of(a: &Addr) -> AddrBuf {
        let mut b = AddrBuf {
            v6: a.ip.len() == 16,
            ip: [0; 16],
            port: a.port,
        };
        let n = a.ip.len().min(16);
        b.ip[..n].copy_from_slice(&a.ip[..n]);
        b
    }
}

/// Has `sender` (a connected TCP socket of the job, its holder stopped)
/// delivered everything it holds to `receiver` (its peer), and does the
/// receiver hold no more than a restart puts back? Asked through the
/// `sock_diag` socket `nl` while the receiver's holder runs and reads
/// (docs/sockets.md, "Senders ahead of their receivers"). A connection
/// that is gone counts as settled: the next capture sees what became of it.
pub fn settled(nl: i32, sender: &InetSocket, receiver: &InetSocket) -> Result<bool, Errno> {
    let look = |s: &InetSocket| -> Result<Option<Diag>, Errno> {
        let Some(peer) = &s.peer else { return Ok(None) };
        match query(nl, s.family, &AddrBuf::of(&s.local), &AddrBuf::of(peer)) {
            Ok(d) => Ok(Some(d)),
            Err(Errno(libc::ENOENT)) => Ok(None),
            Err(e) => Err(e),
        }
    };
    let (Some(out), Some(inq)) = (look(sender)?, look(receiver)?) else {
        return Ok(true);
    };
    Ok(out.wqueue == 0 && u64::from(inq.rqueue) <= MAX_RESTORE_QUEUE)
}

/// `SIOCINQ`: bytes a TCP socket has received and not read.
const SIOCINQ: u64 = 0x541B;

fn ioctl_int(fd: i32, req: u64) -> Result<i32, Errno> {
    let mut v: i32 = 0;
    // SAFETY: both requests write one int into the local.
    unsafe { raw::ioctl(fd, req, &mut v as *mut i32 as usize) }?;
    Ok(v)
}

fn opt(fd: i32, level: i32, o: i32) -> i32 {
    getsockopt_int(fd, level, o).unwrap_or(0)
}

/// The largest receive queue captured (a larger one fails the capture, and
/// the checkpoint with it).
const MAX_QUEUE: usize = 64 << 20;

/// The socket a [`capture`] looks at.
#[derive(Clone, Copy, Debug)]
pub struct Held {
    /// Its descriptor in this process.
    pub fd: i32,
    /// Its inode.
    pub ino: u64,
    /// `AF_INET` or `AF_INET6`.
    pub family: i32,
}

/// Capture the TCP or UDP socket `h`:
/// write its state as a JSON object into `j`, the bytes it has received and
/// not read into `out`, bound for the image at `*data_off` (advanced past them,
/// to a page boundary). `nl` is a `sock_diag` socket
/// ([`super::unix_socket::open_diag`]). **Async-signal-safe.** Runs while
/// every process of the job is stopped, so both ends of a connection are
/// seen at the same moment. Fails for other protocols.
pub fn capture(
    h: Held,
    nl: i32,
    out: &mut DeferredWrites,
    data_off: &mut u64,
    j: &mut MmapBuf,
) -> Result<(), Errno> {
    let Held { fd, ino, family } = h;
    let ty = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE)?;
    let proto = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL)?;
    let tcp = match (ty, proto) {
        (libc::SOCK_STREAM, libc::IPPROTO_TCP) => true,
        (libc::SOCK_DGRAM, libc::IPPROTO_UDP) => false,
        _ => return Err(Errno(libc::EPROTONOSUPPORT)),
    };
    let local = AddrBuf::get(51, fd)?;
    let peer = match AddrBuf::get(52, fd) {
        Ok(p) => Some(p),
        Err(Errno(libc::ENOTCONN)) => None,
        Err(e) => return Err(e),
    };
    let mut o = Options {
        reuseaddr: opt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR) != 0,
        reuseport: opt(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT) != 0,
        keepalive: opt(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE) != 0,
        // Meaningful for UDP only (one call less per TCP socket).
        broadcast: !tcp && opt(fd, libc::SOL_SOCKET, libc::SO_BROADCAST) != 0,
        v6only: family == libc::AF_INET6 && opt(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY) != 0,
        ..Options::default()
    };
    let mut lg = [0i32; 2];
    let mut len: u32 = 8;
    // SAFETY: getsockopt (55) of SO_LINGER writes a struct linger (two ints) into lg.
    if unsafe {
        raw::syscall6(
            55,
            fd as usize,
            libc::SOL_SOCKET as usize,
            libc::SO_LINGER as usize,
            lg.as_mut_ptr() as usize,
            &mut len as *mut u32 as usize,
            0,
        )
    }
    .is_ok()
    {
        o.linger = lg;
    }
    let mut s = Fields {
        tcp_state: 0,
        peer_is: "none",
        peer_inode: 0,
        peer_queued: 0,
        shutdown: 0,
        backlog: 0,
        accept_queue: 0,
        unsent: 0,
        datagrams: false,
        ended: false,
        acked: 0,
        received: 0,
    };
    let mut queued = 0usize;
    // UDP: (bytes, their CRC, the JSON of each datagram).
    let mut udp: Option<(u64, u32, MmapBuf)> = None;
    if tcp {
        o.nodelay = opt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY) != 0;
        o.cork = opt(fd, libc::IPPROTO_TCP, libc::TCP_CORK) != 0;
        o.keep = [
            opt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE),
            opt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL),
            opt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPCNT),
        ];
        // A connected end: this end and its peer, asked at once; the reply
        // about this end carries its tcp_info and buffer sizes too.
        let pair = peer
            .as_ref()
            .map(|p| query_pair(nl, family, (&local, p), (p, &local)));
        let me = match &pair {
            Some((Ok(me), _)) if me.inode != ino => return Err(Errno(libc::ENOENT)),
            Some((Ok(me), _)) => Some(*me),
            Some((Err(e), _)) => return Err(*e),
            None => None,
        };
        let info = match me.and_then(|d| d.info) {
            Some(i) => i,
            None => tcp_info_state(fd)?,
        };
        (o.sndbuf, o.rcvbuf) = match me.and_then(|d| d.bufs) {
            Some(b) => b,
            None => buffers(fd),
        };
        s.tcp_state = info.state;
        (s.acked, s.received) = (info.acked, info.received);
        // Closed, but it carried a connection: ended (both ends closed it,
        // or it was reset), unlike a socket never connected.
        s.ended = info.state == tcp_state::CLOSE && info.traffic;
        let none = AddrBuf {
            v6: local.v6,
            ..AddrBuf::default()
        };
        if s.tcp_state == tcp_state::LISTEN {
            let d = query(nl, family, &local, &none)?;
            if d.inode != ino {
                return Err(Errno(libc::ENOENT));
            }
            s.accept_queue = d.rqueue;
            s.backlog = d.wqueue;
        } else if let (Some(me), Some((_, other))) = (me, pair) {
            s.shutdown = me.shutdown;
            // What SIOCOUTQ returns: the send queue as sock_diag reports it
            // (`write_seq - snd_una`), 0 before the connection is made.
            s.unsent = if matches!(me.state, tcp_state::SYN_SENT | tcp_state::SYN_RECV) {
                0
            } else {
                me.wqueue
            };
            queued = ioctl_int(fd, SIOCINQ)?.max(0) as usize;
            match other {
                Ok(d) if d.inode != 0 => {
                    s.peer_is = "socket";
                    s.peer_inode = d.inode;
                }
                Ok(d)
                    if matches!(
                        d.state,
                        tcp_state::ESTABLISHED | tcp_state::CLOSE_WAIT | tcp_state::SYN_RECV
                    ) =>
                {
                    s.peer_is = "pending";
                    s.peer_queued = d.rqueue;
                }
                Ok(d) => {
                    // Closed by its holder; bytes it had not delivered yet
                    // would be lost (refused as passing).
                    s.peer_is = "closed";
                    s.peer_queued = d.wqueue;
                }
                Err(Errno(libc::ENOENT)) => s.peer_is = "unknown",
                Err(e) => return Err(e),
            }
        }
    } else {
        (o.sndbuf, o.rcvbuf) = buffers(fd);
        // A UDP socket's queued datagrams, each with its sender; when they
        // cannot all be read (an empty one stops the peek), none is kept
        // and the checkpoint is refused (passing).
        let held = out.mark();
        let mut msgs = MmapBuf::new();
        match peek_datagrams(fd, out, *data_off, &mut msgs) {
            Ok((0, _)) => {}
            Ok((total, crc)) => udp = Some((total, crc, msgs)),
            Err(_) => {
                out.rollback(held);
                msgs.free();
                s.datagrams = true;
            }
        }
    }
    if queued > MAX_QUEUE {
        return Err(Errno(libc::EMSGSIZE));
    }
    let _ = write!(
        j,
        "{{\"family\":{family},\"ty\":{ty},\"tcp_state\":{},\"local\":",
        s.tcp_state
    );
    local.write(j);
    if let Some(p) = &peer {
        let _ = write!(j, ",\"peer\":");
        p.write(j);
    }
    let _ = write!(
        j,
        ",\"peer_is\":\"{}\",\"peer_inode\":{},\"peer_queued\":{},\"shutdown\":{},\"backlog\":{},\"accept_queue\":{},\"unsent\":{},\"datagrams\":{},\"ended\":{},\"acked\":{},\"received\":{}",
        s.peer_is,
        s.peer_inode,
        s.peer_queued,
        s.shutdown,
        s.backlog,
        s.accept_queue,
        s.unsent,
        s.datagrams,
        s.ended,
        s.acked,
        s.received
    );
    let _ = write!(
        j,
        ",\"opts\":{{\"reuseaddr\":{},\"reuseport\":{},\"keepalive\":{},\"broadcast\":{},\"sndbuf\":{},\"rcvbuf\":{},\"linger\":[{},{}],\"nodelay\":{},\"cork\":{},\"keep\":[{},{},{}],\"v6only\":{}}}",
        o.reuseaddr,
        o.reuseport,
        o.keepalive,
        o.broadcast,
        o.sndbuf,
        o.rcvbuf,
        o.linger[0],
        o.linger[1],
        o.nodelay,
        o.cork,
        o.keep[0],
        o.keep[1],
        o.keep[2],
        o.v6only
    );
    if queued > 0 {
        let crc = peek_stream(fd, queued, out, *data_off)?;
        let _ = write!(j, ",\"data\":[{},{queued}],\"crc\":{crc}", *data_off);
        *data_off += (queued as u64).div_ceil(4096) * 4096;
    }
    if let Some((total, crc, mut msgs)) = udp {
        let _ = write!(j, ",\"messages\":[");
        let r = j.push(msgs.as_slice());
        msgs.free();
        r?;
        let _ = write!(j, "],\"data\":[{},{total}],\"crc\":{crc}", *data_off);
        *data_off += total.div_ceil(4096) * 4096;
    }
    let _ = write!(j, "}}");
    if j.overflow {
        return Err(Errno(libc::ENOMEM));
    }
    Ok(())
}

/// The scalar fields of the JSON, gathered before it is written.
struct Fields {
    tcp_state: u8,
    peer_is: &'static str,
    peer_inode: u64,
    peer_queued: u32,
    shutdown: u8,
    backlog: u32,
    accept_queue: u32,
    unsent: u32,
    datagrams: bool,
    ended: bool,
    acked: u64,
    received: u64,
}

/// `SO_SNDBUF` and `SO_RCVBUF` of `fd`.
fn buffers(fd: i32) -> (i32, i32) {
    (
        opt(fd, libc::SOL_SOCKET, libc::SO_SNDBUF),
        opt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF),
    )
}

/// The TCP state of `fd`, whether it carried traffic, and its bytes
/// acknowledged and received (`TCP_INFO`).
fn tcp_info_state(fd: i32) -> Result<TcpInfoBits, Errno> {
    let mut info = [0u8; 144];
    let mut len: u32 = 144;
    // SAFETY: getsockopt (55) of TCP_INFO writes at most `len` bytes into info.
    unsafe {
        raw::syscall6(
            55,
            fd as usize,
            libc::IPPROTO_TCP as usize,
            libc::TCP_INFO as usize,
            info.as_mut_ptr() as usize,
            &mut len as *mut u32 as usize,
            0,
        )
    }?;
    TcpInfoBits::parse(info.get(..len as usize).unwrap_or(&[])).ok_or(Errno(libc::EIO))
}

/// The largest UDP datagram (IPv6 without jumbograms: 65535 - 8).
const MAX_DATAGRAM: usize = 65527;

/// Peek every datagram queued in the UDP socket `fd` into `out`, bound for
/// the image from `off`, without consuming them: the socket's peek offset
/// (`SO_PEEK_OFF`) is set to 0 and each peek moves it past the datagram it
/// returned (the program's own offset is put back after). Writes
/// `{"len":..,"from":..}` for each into `msgs`. Returns the bytes and their
/// CRC. Fails on an empty datagram (it does not move the offset: what is
/// behind it cannot be reached without consuming it).
fn peek_datagrams(
    fd: i32,
    out: &mut DeferredWrites,
    off: u64,
    msgs: &mut MmapBuf,
) -> Result<(u64, u32), Errno> {
    let program_off = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF)?;
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, 0)?;
    let mut crc = Crc32c::new();
    let mut total = 0u64;
    let r = (|| loop {
        // SAFETY: sockaddr_in6 is plain old data, room for either family.
        let mut sa: libc::sockaddr_in6 = unsafe { core::mem::zeroed() };
        let buf = out.spare(MAX_DATAGRAM + 1)?;
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: msghdr is plain old data.
        let mut m: libc::msghdr = unsafe { core::mem::zeroed() };
        m.msg_name = (&mut sa as *mut libc::sockaddr_in6).cast();
        m.msg_namelen = core::mem::size_of::<libc::sockaddr_in6>() as u32;
        m.msg_iov = &mut iov;
        m.msg_iovlen = 1;
        let flags = libc::MSG_PEEK | libc::MSG_DONTWAIT | libc::MSG_TRUNC;
        // SAFETY: recvmsg (47) with a msghdr pointing to locals and to the
        // writable bytes of `buf`, sized as declared.
        let n = match unsafe {
            raw::syscall3(
                47,
                fd as usize,
                &mut m as *mut libc::msghdr as usize,
                flags as usize,
            )
        } {
            Err(Errno(libc::EINTR)) => continue,
            Err(Errno(libc::EAGAIN)) => return Ok(()),
            Err(e) => return Err(e),
            Ok(n) => n,
        };
        if n == 0 {
            return Err(Errno(libc::ENOMSG));
        }
        if n > MAX_DATAGRAM || total + n as u64 > MAX_QUEUE as u64 {
            return Err(Errno(libc::EMSGSIZE));
        }
        crc.update(out.spare(n)?);
        out.commit(n, off + total)?;
        total += n as u64;
        let _ = write!(
            msgs,
            "{}{{\"len\":{n},\"from\":",
            if total == n as u64 { "" } else { "," }
        );
        AddrBuf::from_sockaddr(&sa).write(msgs);
        let _ = write!(msgs, "}}");
        if msgs.overflow {
            return Err(Errno(libc::ENOMEM));
        }
    })();
    let _ = setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, program_off);
    r.map(|()| (total, crc.finish()))
}

/// Peek the `n` bytes a TCP socket has received into the image at `off`
/// without consuming them (a program's `SO_PEEK_OFF`, where the kernel has
/// it for TCP, is set to 0 for the peek and put back). Returns their CRC.
fn peek_stream(fd: i32, n: usize, out: &mut DeferredWrites, off: u64) -> Result<u32, Errno> {
    let peek_off = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF).unwrap_or(-1);
    if peek_off >= 0 {
        setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, 0)?;
    }
    let r = out
        .spare(n)
        .and_then(|buf| raw::recv(fd, buf, libc::MSG_PEEK | libc::MSG_DONTWAIT));
    if peek_off >= 0 {
        let _ = setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, peek_off);
    }
    if r? != n {
        // Urgent data or a queue that moved: not what SIOCINQ said.
        return Err(Errno(libc::EIO));
    }
    let mut crc = Crc32c::new();
    crc.update(out.spare(n)?);
    out.commit(n, off)?;
    Ok(crc.finish())
}

/// Why a socket cannot be checkpointed now: the message, and whether the
/// condition passes by itself (the coordinator then tries again a moment
/// later).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unfit {
    /// What is wrong.
    pub why: String,
    /// It passes by itself (bytes not acknowledged yet, a connection not accepted yet).
    pub passing: bool,
}

impl InetSocket {
    /// TCP (else UDP).
    pub fn is_tcp(&self) -> bool {
        self.ty == libc::SOCK_STREAM
    }

    /// "a TCP connection 127.0.0.1:5000 -> 127.0.0.1:40000 (ESTABLISHED)",
    /// "a TCP socket listening on 0.0.0.0:5000", "a UDP socket bound to ...".
    pub fn describe(&self) -> String {
        if !self.is_tcp() {
            return match &self.peer {
                Some(p) => format!("a UDP socket {} connected to {p}", self.local),
                None => format!("a UDP socket bound to {}", self.local),
            };
        }
        match (&self.peer, self.tcp_state) {
            (_, tcp_state::LISTEN) => format!("a TCP socket listening on {}", self.local),
            (Some(p), s) => format!(
                "a TCP connection {} -> {p} ({})",
                self.local,
                tcp_state::name(s)
            ),
            (None, _) if self.local.port != 0 => {
                format!("a TCP socket bound to {}", self.local)
            }
            (None, _) => "an unconnected TCP socket".into(),
        }
    }

    /// At checkpoint time: why this socket cannot be restored, if it cannot
    /// (its peer's whereabouts are the plan's to check).
    pub fn validate(&self) -> Result<(), Unfit> {
        let hard = |why: String| Unfit {
            why,
            passing: false,
        };
        let passing = |why: String| Unfit { why, passing: true };
        if self.family != libc::AF_INET && self.family != libc::AF_INET6 {
            return Err(hard(format!(
                "its family {} is not IPv4 or IPv6",
                self.family
            )));
        }
        if !self.is_tcp() {
            if self.datagrams {
                return Err(passing(
                    "datagrams are queued in it that ckpt could not read without taking them (an empty datagram hides \
                     those behind it), not yet received"
                        .into(),
                ));
            }
            if let Some(p) = &self.peer
                && let Some(d) = self.messages.iter().find(|d| !same_addr(&d.from, p))
            {
                return Err(passing(format!(
                    "a datagram from {} is queued in it, received before it was connected to {p} (a restart could not \
                     deliver it to a connected socket)",
                    d.from
                )));
            }
            return Ok(());
        }
        if self.tcp_state == tcp_state::SYN_SENT || self.tcp_state == tcp_state::SYN_RECV {
            return Err(passing("its connection is still being set up".into()));
        }
        if self.unsent > 0 {
            return Err(passing(format!(
                "{} bytes written to it have not reached the other end yet (the receiver's window is full, TCP_CORK holds them, or they are on their way)",
                self.unsent
            )));
        }
        if self.ended {
            return Err(hard(
                "its connection has ended (closed by both ends, or reset) and the program still holds it; \
                 ckpt does not restore an ended connection: the checkpoint succeeds once the program closed it"
                    .into(),
            ));
        }
        if self.peer_queued > 0 && self.peer_is == Peer::Closed {
            return Err(passing(format!(
                "its peer was closed with {} bytes not yet delivered to it",
                self.peer_queued
            )));
        }
        if self.peer_queued > 0 {
            return Err(passing(format!(
                "its connection is not accepted yet and {} bytes are queued on the accepting side",
                self.peer_queued
            )));
        }
        let len = self.data.map_or(0, |[_, l]| l);
        if len > MAX_RESTORE_QUEUE {
            return Err(passing(format!(
                "{len} bytes are queued in it, not yet read; a restart can put back at most {MAX_RESTORE_QUEUE}"
            )));
        }
        Ok(())
    }
}

/// The same address and port (an IPv4 address and its v4-mapped form alike).
pub fn same_addr(a: &Addr, b: &Addr) -> bool {
    a.port == b.port && a.canonical() == b.canonical()
}

/// The most bytes queued in one direction of a connection that a restart
/// is sure to put back before any process runs: what a new loopback
/// connection holds with the default `net.core.rmem_max`/`wmem_max`
/// (212992) once both buffers are raised to them (measured 851650 bytes).
pub const MAX_RESTORE_QUEUE: u64 = 512 << 10;

mod restore;
pub use restore::{Refusal, SavedEnd, Step, across, meeting, plan, restore_all};

#[cfg(test)]
mod tests;
