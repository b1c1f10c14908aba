//! What a socket of the job is, for the message of the checkpoint that
//! refuses it (issue 13).
//!
//! ckpt cannot checkpoint sockets yet; a checkpoint of a process holding
//! one fails (`coord::check_fd`). So that the user can act on it, the
//! coordinator, which runs outside the job as the same user and in the same
//! network namespace, says what the socket is and where it goes, from
//! `/proc/<host pid>/net/*` of the process holding it:
//! - TCP, UDP, UDP-Lite, raw and ICMP (ping) sockets, IPv4 and IPv6: the
//!   local and remote addresses (the kernel's hex, native-endian words), the
//!   state (`LISTEN`, `ESTABLISHED`...), and whether the other end is held by
//!   a process of the job: the socket whose addresses are the reverse of
//!   this one's (on the same network namespace, so any address, not only
//!   loopback), held by one of the job's descriptors;
//! - unix sockets: the type, the path or abstract name (`@name`), and the
//!   peer from `sock_diag` (`UNIX_DIAG_PEER`, which `/proc/net/unix` does not
//!   show): its name and whether the job holds it;
//! - netlink and packet sockets: the protocol, the interface; any other
//!   family: the protocol name the kernel gives (`system.sockprotoname`).
//!
//! Everything is read when the checkpoint has already failed, after the job
//! runs again: a socket closed meanwhile is only "a socket".

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd as _;

/// What the user can do (the end of the refusal).
pub const ADVICE: &str = "close it before the checkpoint and open it again after, \
     or take checkpoints only while the program holds no socket, or, if the program \
     reconnects by itself, set CKPT_EXTERNAL_SOCKETS=closed: a restart then gives it back \
     closed by its peer";

/// A descriptor of the job: `fd` of the process `pid` (its pid in the job).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    /// The process, as the job numbers it.
    pub pid: i32,
    /// The descriptor.
    pub fd: i32,
}

/// The protocol of a line of an IP table of `/proc/net`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// `tcp`, `tcp6`.
    Tcp,
    /// `udp`, `udp6`.
    Udp,
    /// `udplite`, `udplite6`.
    UdpLite,
    /// `raw`, `raw6` (the local port is the IP protocol number).
    Raw,
    /// `icmp`, `icmp6` (ping sockets).
    Icmp,
}

/// The IP tables of `/proc/<pid>/net`.
const INET_TABLES: [(&str, Proto); 10] = [
    ("tcp", Proto::Tcp),
    ("tcp6", Proto::Tcp),
    ("udp", Proto::Udp),
    ("udp6", Proto::Udp),
    ("udplite", Proto::UdpLite),
    ("udplite6", Proto::UdpLite),
    ("raw", Proto::Raw),
    ("raw6", Proto::Raw),
    ("icmp", Proto::Icmp),
    ("icmp6", Proto::Icmp),
];

/// `TCP_LISTEN` of the kernel's TCP states.
const TCP_LISTEN: u8 = 0x0A;

/// One line of an IP table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inet {
    /// Which table.
    pub proto: Proto,
    /// Local address and port.
    pub local: SocketAddr,
    /// Remote address and port (unspecified, port 0: none).
    pub remote: SocketAddr,
    /// The kernel's state number (TCP states; UDP uses 1 and 7).
    pub state: u8,
    /// The socket's inode (0: no descriptor, e.g. `TIME_WAIT`).
    pub inode: u64,
}

/// One line of `/proc/net/unix`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unix {
    /// Listening (`__SO_ACCEPTCON` in the flags).
    pub listening: bool,
    /// `SOCK_STREAM` (1), `SOCK_DGRAM` (2), `SOCK_SEQPACKET` (5).
    pub kind: u16,
    /// `SS_UNCONNECTED` (1), `SS_CONNECTING`, `SS_CONNECTED` (3)...
    pub state: u8,
    /// The socket's inode.
    pub inode: u64,
    /// Its path, or abstract name as `@name`; none when unnamed.
    pub name: Option<String>,
}

/// Who holds the other end of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    /// A descriptor of the job.
    Job(Owner),
    /// A connection still waiting to be accepted on a listening socket of
    /// the job (the descriptor is the listener's).
    Pending(Owner),
    /// Nothing in the job (another process of this node, or another node).
    Outside,
}

impl Peer {
    fn text(self) -> String {
        match self {
            Peer::Job(o) => format!("to fd {} of process {} of the job", o.fd, o.pid),
            Peer::Pending(o) => format!(
                "to the listening socket fd {} of process {} of the job (not accepted yet)",
                o.fd, o.pid
            ),
            Peer::Outside => "to a process outside the job".into(),
        }
    }
}

/// Describes the socket `inode`, descriptor `fd` of the process whose host
/// pid is `host`; `job` maps the job's pids to host pids. None when it is
/// not in any table (closed since, or a family without one).
pub fn describe(job: &BTreeMap<i32, i32>, host: i32, fd: i32, inode: u64) -> Option<String> {
    let table = |name: &str| std::fs::read_to_string(format!("/proc/{host}/net/{name}"));
    let mut inet = Vec::new();
    for (name, proto) in INET_TABLES {
        if let Ok(text) = table(name) {
            inet.extend(text.lines().filter_map(|l| parse_inet(proto, l)));
        }
    }
    if let Some(e) = inet.iter().find(|e| e.inode == inode) {
        return Some(describe_inet(e, &inet, &owners(job)));
    }
    let unix: Vec<Unix> = table("unix")
        .map(|t| t.lines().filter_map(parse_unix).collect())
        .unwrap_or_default();
    if let Some(e) = unix.iter().find(|e| e.inode == inode) {
        let peer = if e.listening {
            Ok(None)
        } else {
            unix_peer(inode)
        };
        return Some(describe_unix(e, peer, &unix, &owners(job)));
    }
    if let Ok(text) = table("netlink")
        && let Some(proto) = text.lines().find_map(|l| parse_netlink(l, inode))
    {
        return Some(format!("a netlink socket ({})", netlink_name(proto)));
    }
    if let Ok(text) = table("packet")
        && let Some((ty, eth, ifindex)) = text.lines().find_map(|l| parse_packet(l, inode))
    {
        let ty = if ty == libc::SOCK_DGRAM as u16 {
            "datagram"
        } else {
            "raw"
        };
        let on = if ifindex == 0 {
            "every interface".to_string()
        } else {
            format!("interface {ifindex}")
        };
        return Some(format!(
            "a {ty} packet socket (ethernet protocol 0x{eth:04x}, {on})"
        ));
    }
    protocol_name(host, fd, inode).map(|p| format!("a {p} socket"))
}

/// The socket inodes the job's descriptors hold (the first holder of each).
pub fn owners(job: &BTreeMap<i32, i32>) -> BTreeMap<u64, Owner> {
    let mut map = BTreeMap::new();
    for (&pid, &host) in job {
        let Ok(rd) = std::fs::read_dir(format!("/proc/{host}/fd")) else {
            continue;
        };
        let mut fds: Vec<(i32, u64)> = rd
            .flatten()
            .filter_map(|e| {
                let fd = e.file_name().to_str()?.parse().ok()?;
                let link = std::fs::read_link(e.path()).ok()?;
                Some((fd, socket_inode(link.to_str()?)?))
            })
            .collect();
        fds.sort_unstable();
        for (fd, inode) in fds {
            map.entry(inode).or_insert(Owner { pid, fd });
        }
    }
    map
}

/// The inode of a `socket:[N]` link.
pub fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Parses a line of `/proc/net/{tcp,udp,raw,icmp}[6]`: `sl: local remote
/// st tx:rx tr:when retrnsmt uid timeout inode ...`. None for the header.
pub fn parse_inet(proto: Proto, line: &str) -> Option<Inet> {
    let mut f = line.split_whitespace();
    f.next()?.strip_suffix(':')?;
    let local = parse_addr(f.next()?)?;
    let remote = parse_addr(f.next()?)?;
    let state = u8::from_str_radix(f.next()?, 16).ok()?;
    // tx_queue:rx_queue, tr:tm->when, retrnsmt, uid, timeout, inode.
    let inode = f.nth(5)?.parse().ok()?;
    Some(Inet {
        proto,
        local,
        remote,
        state,
        inode,
    })
}

/// `0100007F:9A84` (IPv4) or 32 hex digits and a port (IPv6). The address
/// is printed as native-endian 32-bit words of the network-order bytes; the
/// port is in host order.
pub fn parse_addr(s: &str) -> Option<SocketAddr> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let w = u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16).ok()?;
        Some(w.to_ne_bytes())
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for (i, chunk) in b.chunks_exact_mut(4).enumerate() {
                chunk.copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Parses a line of `/proc/net/unix`: `Num: RefCount Protocol Flags Type
/// St Inode [Path]` (the path may hold spaces; abstract names start with @).
pub fn parse_unix(line: &str) -> Option<Unix> {
    let mut rest = line;
    let mut field = || next_field(&mut rest);
    field()?.strip_suffix(':')?;
    field()?; // RefCount
    field()?; // Protocol
    let flags = u32::from_str_radix(field()?, 16).ok()?;
    let kind = u16::from_str_radix(field()?, 16).ok()?;
    let state = u8::from_str_radix(field()?, 16).ok()?;
    let inode = field()?.parse().ok()?;
    let name = rest.strip_prefix(' ').filter(|n| !n.is_empty());
    Some(Unix {
        listening: flags & 0x0001_0000 != 0,
        kind,
        state,
        inode,
        name: name.map(str::to_string),
    })
}

/// The next space-separated field of `rest`, which is left after it.
fn next_field<'a>(rest: &mut &'a str) -> Option<&'a str> {
    let s = rest.trim_start_matches(' ');
    let end = s.find(' ').unwrap_or(s.len());
    let (f, r) = s.split_at(end);
    *rest = r;
    (!f.is_empty()).then_some(f)
}

/// The protocol of the line of `/proc/net/netlink` for `inode`.
fn parse_netlink(line: &str, inode: u64) -> Option<u32> {
    let f: Vec<&str> = line.split_whitespace().collect();
    (f.get(9)?.parse::<u64>().ok()? == inode).then_some(())?;
    f.get(1)?.parse().ok()
}

/// Type, ethernet protocol and interface of the line of `/proc/net/packet`
/// for `inode`.
fn parse_packet(line: &str, inode: u64) -> Option<(u16, u16, u32)> {
    let f: Vec<&str> = line.split_whitespace().collect();
    (f.get(8)?.parse::<u64>().ok()? == inode).then_some(())?;
    Some((
        f.get(2)?.parse().ok()?,
        u16::from_str_radix(f.get(3)?, 16).ok()?,
        f.get(4)?.parse().ok()?,
    ))
}

fn netlink_name(proto: u32) -> String {
    let name = match proto {
        0 => "NETLINK_ROUTE",
        2 => "NETLINK_USERSOCK",
        3 => "NETLINK_FIREWALL",
        4 => "NETLINK_SOCK_DIAG",
        5 => "NETLINK_NFLOG",
        6 => "NETLINK_XFRM",
        7 => "NETLINK_SELINUX",
        8 => "NETLINK_ISCSI",
        9 => "NETLINK_AUDIT",
        10 => "NETLINK_FIB_LOOKUP",
        11 => "NETLINK_CONNECTOR",
        12 => "NETLINK_NETFILTER",
        15 => "NETLINK_KOBJECT_UEVENT",
        16 => "NETLINK_GENERIC",
        18 => "NETLINK_SCSITRANSPORT",
        20 => "NETLINK_RDMA",
        21 => "NETLINK_CRYPTO",
        _ => return format!("netlink protocol {proto}"),
    };
    name.into()
}

fn tcp_state(s: u8) -> String {
    let name = match s {
        0x01 => "ESTABLISHED",
        0x02 => "SYN_SENT",
        0x03 => "SYN_RECV",
        0x04 => "FIN_WAIT1",
        0x05 => "FIN_WAIT2",
        0x06 => "TIME_WAIT",
        0x07 => "CLOSE",
        0x08 => "CLOSE_WAIT",
        0x09 => "LAST_ACK",
        0x0A => "LISTEN",
        0x0B => "CLOSING",
        0x0C => "NEW_SYN_RECV",
        _ => return format!("state {s}"),
    };
    name.into()
}

/// An IPv4-mapped IPv6 address as IPv4 (a `tcp6` socket connected to
/// 127.0.0.1 shows `::ffff:127.0.0.1`, its peer in `tcp` 127.0.0.1).
fn plain(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => a,
        },
        v4 => v4,
    }
}

/// A socket bound to `local` receives what is sent to `to`.
fn receives(local: SocketAddr, to: SocketAddr) -> bool {
    let local = plain(local);
    local.port() == to.port() && (local.ip() == to.ip() || local.ip().is_unspecified())
}

/// Who holds the other end of the IP socket `e`: the socket of the same
/// protocol with the reverse addresses; for TCP, when that one is not
/// accepted yet, the listener that will; for UDP, a socket bound to the
/// remote address.
pub fn inet_peer(e: &Inet, all: &[Inet], owners: &BTreeMap<u64, Owner>) -> Peer {
    let (local, remote) = (plain(e.local), plain(e.remote));
    let reverse = all.iter().find(|x| {
        x.proto == e.proto
            && x.inode != e.inode
            && plain(x.local) == remote
            && plain(x.remote) == local
    });
    if let Some(x) = reverse {
        if let Some(o) = owners.get(&x.inode) {
            return Peer::Job(*o);
        }
        if x.inode == 0 && e.proto == Proto::Tcp {
            let listener = all
                .iter()
                .filter(|y| y.proto == Proto::Tcp && y.state == TCP_LISTEN)
                .filter(|y| receives(y.local, remote))
                .find_map(|y| owners.get(&y.inode));
            if let Some(o) = listener {
                return Peer::Pending(*o);
            }
        }
        return Peer::Outside;
    }
    if e.proto != Proto::Tcp {
        let bound = all
            .iter()
            .filter(|x| x.proto == e.proto && x.inode != e.inode)
            .filter(|x| x.remote.ip().is_unspecified() && receives(x.local, remote))
            .find_map(|x| owners.get(&x.inode));
        if let Some(o) = bound {
            return Peer::Job(*o);
        }
    }
    Peer::Outside
}

/// "a TCP connection 127.0.0.1:45678 -> 10.1.2.3:5432 (ESTABLISHED) to a
/// process outside the job", "a TCP socket listening on 0.0.0.0:8888"...
pub fn describe_inet(e: &Inet, all: &[Inet], owners: &BTreeMap<u64, Owner>) -> String {
    let connected = !(e.remote.ip().is_unspecified() && e.remote.port() == 0);
    let name = match e.proto {
        Proto::Tcp if e.state == TCP_LISTEN => {
            return format!("a TCP socket listening on {}", e.local);
        }
        Proto::Tcp if !connected => {
            return format!(
                "a TCP socket on {}, not connected ({})",
                e.local,
                tcp_state(e.state)
            );
        }
        Proto::Tcp => {
            return format!(
                "a TCP connection {} -> {} ({}) {}",
                e.local,
                e.remote,
                tcp_state(e.state),
                inet_peer(e, all, owners).text()
            );
        }
        Proto::Raw => {
            return format!(
                "a raw IP{} socket for IP protocol {}",
                if e.local.is_ipv6() { "v6" } else { "v4" },
                e.local.port()
            );
        }
        Proto::Udp => "UDP",
        Proto::UdpLite => "UDP-Lite",
        Proto::Icmp => "ICMP (ping)",
    };
    if connected {
        format!(
            "a {name} socket {} -> {} {}",
            e.local,
            e.remote,
            inet_peer(e, all, owners).text()
        )
    } else {
        format!("a {name} socket bound to {}", e.local)
    }
}

/// "a unix stream socket connected to @/tmp/.X11-unix/X0 to a process
/// outside the job", "a unix stream socket listening on /run/x.sock"...
/// `peer` is the peer's inode (None: no peer; Err: unknown).
pub fn describe_unix(
    e: &Unix,
    peer: Result<Option<u64>, ()>,
    all: &[Unix],
    owners: &BTreeMap<u64, Owner>,
) -> String {
    let ty = match e.kind {
        1 => "stream",
        2 => "datagram",
        5 => "seqpacket",
        _ => "",
    };
    let ty = if ty.is_empty() {
        format!("unix socket of type {}", e.kind)
    } else {
        format!("unix {ty} socket")
    };
    if e.listening {
        return match &e.name {
            Some(n) => format!("a {ty} listening on {n}"),
            None => format!("a {ty} listening on an unnamed address"),
        };
    }
    let own = match &e.name {
        Some(n) => format!(" on {n}"),
        None => String::new(),
    };
    let p = match peer {
        Ok(Some(p)) if p != 0 => p,
        Ok(_) => {
            return if e.state == 3 {
                format!("a {ty}{own}, connected to a socket that is gone")
            } else if e.name.is_some() {
                format!(
                    "a {ty} bound to {}, not connected",
                    own.trim_start_matches(" on ")
                )
            } else {
                format!("a {ty}, unnamed and not connected")
            };
        }
        Err(()) => {
            let how = if e.state == 3 {
                "connected"
            } else {
                "not connected"
            };
            return format!("a {ty}{own} ({how}; peer unknown)");
        }
    };
    let theirs = all.iter().find(|x| x.inode == p);
    let to = match theirs.and_then(|x| x.name.as_deref()) {
        Some(n) => n.to_string(),
        None => "an unnamed socket".into(),
    };
    let who = match owners.get(&p) {
        Some(o) => Peer::Job(*o),
        None => {
            // A connection not accepted yet is held by no descriptor; it
            // has the name of the listener that will accept it.
            let name = theirs.and_then(|x| x.name.as_deref());
            let listener = all
                .iter()
                .filter(|x| x.listening && x.kind == e.kind && name.is_some())
                .filter(|x| x.name.as_deref() == name)
                .find_map(|x| owners.get(&x.inode));
            match listener {
                Some(o) => Peer::Pending(*o),
                None => Peer::Outside,
            }
        }
    };
    format!("a {ty}{own} connected to {to}, {}", who.text())
}

/// `sock_diag` of `inode`: the inode of its peer (None: it has none).
fn unix_peer(inode: u64) -> Result<Option<u64>, ()> {
    use nix::sys::socket::{
        AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recv, sendto,
        setsockopt, socket, sockopt,
    };
    use nix::sys::time::TimeVal;
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const NLMSG_ERROR: u16 = 2;
    const UDIAG_SHOW_NAME: u32 = 1;
    const UDIAG_SHOW_PEER: u32 = 4;
    const UNIX_DIAG_PEER: u16 = 2;
    let ino = u32::try_from(inode).map_err(|_| ())?;
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )
    .map_err(|_| ())?;
    setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(2, 0)).map_err(|_| ())?;
    // struct nlmsghdr, then struct unix_diag_req.
    let mut req = Vec::with_capacity(40);
    req.extend_from_slice(&40u32.to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // seq
    req.extend_from_slice(&0u32.to_ne_bytes()); // pid
    req.push(libc::AF_UNIX as u8);
    req.push(0); // protocol
    req.extend_from_slice(&0u16.to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    req.extend_from_slice(&ino.to_ne_bytes());
    req.extend_from_slice(&(UDIAG_SHOW_NAME | UDIAG_SHOW_PEER).to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // no cookie
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    sendto(
        fd.as_raw_fd(),
        &req,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )
    .map_err(|_| ())?;
    let mut buf = vec![0u8; 8192];
    let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()).map_err(|_| ())?;
    parse_diag_reply(buf.get(..n).ok_or(())?, ino, NLMSG_ERROR, UNIX_DIAG_PEER)
}

/// The peer in a `sock_diag` reply: `nlmsghdr`, `unix_diag_msg` (16
/// bytes), then attributes.
fn parse_diag_reply(
    b: &[u8],
    ino: u32,
    nlmsg_error: u16,
    unix_diag_peer: u16,
) -> Result<Option<u64>, ()> {
    let u16_at =
        |i: usize| -> Option<u16> { Some(u16::from_ne_bytes(b.get(i..i + 2)?.try_into().ok()?)) };
    let u32_at =
        |i: usize| -> Option<u32> { Some(u32::from_ne_bytes(b.get(i..i + 4)?.try_into().ok()?)) };
    let len = u32_at(0).ok_or(())? as usize;
    if u16_at(4).ok_or(())? == nlmsg_error || len > b.len() || u32_at(20) != Some(ino) {
        return Err(());
    }
    let mut at = 16 + 16;
    while at + 4 <= len {
        let alen = usize::from(u16_at(at).ok_or(())?);
        if alen < 4 {
            break;
        }
        if u16_at(at + 2) == Some(unix_diag_peer) {
            return Ok(u32_at(at + 4).map(u64::from).filter(|&p| p != 0));
        }
        at += (alen + 3) & !3;
    }
    Ok(None)
}

/// The kernel's name of the protocol of `fd` of `host`, if it still is the
/// socket `inode` (`system.sockprotoname`: "TCP", "SCTP", "VSOCK"...).
fn protocol_name(host: i32, fd: i32, inode: u64) -> Option<String> {
    let path = format!("/proc/{host}/fd/{fd}");
    let link = std::fs::read_link(&path).ok()?;
    if socket_inode(link.to_str()?) != Some(inode) {
        return None;
    }
    let c = std::ffi::CString::new(path).ok()?;
    let mut buf = [0u8; 64];
    // SAFETY: both names are NUL-terminated strings that outlive the call,
    // and the kernel writes at most buf.len() bytes into buf.
    let n = unsafe {
        libc::getxattr(
            c.as_ptr(),
            c"system.sockprotoname".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    let n = usize::try_from(n).ok()?;
    let name = String::from_utf8_lossy(buf.get(..n)?)
        .trim_end_matches('\0')
        .to_string();
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "   1: 0100007F:9A84 0100007F:1538 01 00000000:00000000 00:00000000 00000000  1000        0 1225123 2 0000000001572bef 20 0 0 10 -1";

    fn owner(pid: i32, fd: i32) -> Owner {
        Owner { pid, fd }
    }

    #[test]
    fn headers_are_not_lines() {
        assert_eq!(
            parse_inet(
                Proto::Tcp,
                "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode"
            ),
            None
        );
        assert_eq!(
            parse_unix("Num       RefCount Protocol Flags    Type St Inode Path"),
            None
        );
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn tcp_lines() {
        let e = parse_inet(Proto::Tcp, TCP).expect("tcp line");
        assert_eq!(e.local, "127.0.0.1:39556".parse().expect("addr"));
        assert_eq!(e.remote, "127.0.0.1:5432".parse().expect("addr"));
        assert_eq!((e.state, e.inode), (1, 1225123));
        let l = "   0: 00000000:22B8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 141 1 00000000fa439981 100 0 0 10 0";
        let l = parse_inet(Proto::Tcp, l).expect("listen line");
        assert_eq!(
            describe_inet(&l, &[], &BTreeMap::new()),
            "a TCP socket listening on 0.0.0.0:8888"
        );
        let r = "   0: 0302010A:1538 0100007F:9A84 01 00000000:00000000 00:00000000 00000000     0        0 7 1 00000000fa439981 100 0 0 10 0";
        let r = parse_inet(Proto::Tcp, r).expect("line");
        assert_eq!(r.local, "10.1.2.3:5432".parse().expect("addr"));
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn tcp6_lines() {
        let l = "   2: 00000000000000000000000001000000:D6A5 00000000000000000000000001000000:80E8 01 00000000:00000000 00:00000000 00000000     0        0 1225121 1 00000000d08cc5f9 20 0 0 10 -1";
        let e = parse_inet(Proto::Tcp, l).expect("tcp6 line");
        assert_eq!(e.local, "[::1]:54949".parse().expect("addr"));
        assert_eq!(e.remote, "[::1]:33000".parse().expect("addr"));
        let m = "   5: 0000000000000000FFFF00000100007F:EC57 0000000000000000FFFF00000100007F:9A84 01 00000000:00000000 00:00000000 00000000     0        0 0 1 000000000d92c9d4 20 0 0 10 -1";
        let m = parse_inet(Proto::Tcp, m).expect("mapped line");
        assert_eq!(m.local, "[::ffff:127.0.0.1]:60503".parse().expect("addr"));
        assert_eq!(plain(m.local), "127.0.0.1:60503".parse().expect("addr"));
        // 2001:db8::1 port 443
        let d = "   0: B80D0120000000000000000001000000:01BB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 9 1 0 100 0 0 10 0";
        let d = parse_inet(Proto::Tcp, d).expect("line");
        assert_eq!(
            describe_inet(&d, &[], &BTreeMap::new()),
            "a TCP socket listening on [2001:db8::1]:443"
        );
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn udp_lines() {
        let c = " 3889: 0100007F:8B12 0100007F:0035 01 00000000:00000000 00:00000000 00000000     0        0 1225124 2 00000000b1ebd051 0";
        let c = parse_inet(Proto::Udp, c).expect("udp line");
        let b = " 8364: 00000000000000000000000000000000:9C8D 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1225125 2 00000000625964c1 0";
        let b = parse_inet(Proto::Udp, b).expect("udp6 line");
        assert_eq!(
            describe_inet(&b, &[], &BTreeMap::new()),
            "a UDP socket bound to [::]:40077"
        );
        assert_eq!(
            describe_inet(&c, std::slice::from_ref(&c), &BTreeMap::new()),
            "a UDP socket 127.0.0.1:35602 -> 127.0.0.1:53 to a process outside the job"
        );
        // A job's socket bound to [::]:53 receives it.
        let mut r = b.clone();
        r.local.set_port(53);
        let owners = BTreeMap::from([(r.inode, owner(4, 6))]);
        assert_eq!(
            inet_peer(&c, &[c.clone(), r], &owners),
            Peer::Job(owner(4, 6))
        );
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn tcp_peers() {
        let e = parse_inet(Proto::Tcp, TCP).expect("tcp line");
        let mut rev = e.clone();
        (rev.local, rev.remote, rev.inode) = (e.remote, e.local, 77);
        let none = BTreeMap::new();
        // No reverse socket: another node.
        assert_eq!(
            inet_peer(&e, std::slice::from_ref(&e), &none),
            Peer::Outside
        );
        assert_eq!(
            describe_inet(&e, std::slice::from_ref(&e), &none),
            "a TCP connection 127.0.0.1:39556 -> 127.0.0.1:5432 (ESTABLISHED) to a process outside the job"
        );
        // A reverse socket nobody of the job holds.
        let all = [e.clone(), rev.clone()];
        assert_eq!(inet_peer(&e, &all, &none), Peer::Outside);
        // Held by the job.
        let owners = BTreeMap::from([(77, owner(3, 5))]);
        assert_eq!(
            describe_inet(&e, &all, &owners),
            "a TCP connection 127.0.0.1:39556 -> 127.0.0.1:5432 (ESTABLISHED) to fd 5 of process 3 of the job"
        );
        // Reverse on tcp6 as ::ffff:127.0.0.1.
        let mut rev6 = rev.clone();
        rev6.local = "[::ffff:127.0.0.1]:5432".parse().expect("addr");
        rev6.remote = "[::ffff:127.0.0.1]:39556".parse().expect("addr");
        assert_eq!(
            inet_peer(&e, &[e.clone(), rev6], &owners),
            Peer::Job(owner(3, 5))
        );
        // Not accepted yet by a listener of the job on 0.0.0.0:5432.
        let mut pending = rev.clone();
        pending.inode = 0;
        let listener = Inet {
            proto: Proto::Tcp,
            local: "0.0.0.0:5432".parse().expect("addr"),
            remote: "0.0.0.0:0".parse().expect("addr"),
            state: TCP_LISTEN,
            inode: 90,
        };
        let owners = BTreeMap::from([(90, owner(2, 3))]);
        assert_eq!(
            inet_peer(&e, &[e.clone(), pending, listener], &owners),
            Peer::Pending(owner(2, 3))
        );
    }

    #[test]
    fn unix_lines() {
        let path = parse_unix(
            "00000000264ee9bd: 00000002 00000000 00000000 0002 01 1225129 /tmp/dgram test.sock",
        )
        .expect("path line");
        assert_eq!(
            path,
            Unix {
                listening: false,
                kind: 2,
                state: 1,
                inode: 1225129,
                name: Some("/tmp/dgram test.sock".into())
            }
        );
        let unnamed =
            parse_unix("0000000003ac2489: 00000003 00000000 00000000 0001 03   138").expect("line");
        assert_eq!((unnamed.inode, unnamed.name.clone()), (138, None));
        let listener = parse_unix(
            "00000000513298b3: 00000002 00000000 00010000 0001 01 1225126 @/tmp/.X11-unix/X0",
        )
        .expect("abstract line");
        assert!(listener.listening);
        assert_eq!(listener.name.as_deref(), Some("@/tmp/.X11-unix/X0"));
        let accepted = parse_unix(
            "000000005baf6f12: 00000003 00000000 00000000 0001 03 1225128 @/tmp/.X11-unix/X0",
        )
        .expect("accepted line");
        let client = parse_unix("0000000088476890: 00000003 00000000 00000000 0001 03 1225127")
            .expect("line");
        let all = [listener.clone(), accepted, client.clone(), path.clone()];
        let none = BTreeMap::new();
        assert_eq!(
            describe_unix(&listener, Ok(None), &all, &none),
            "a unix stream socket listening on @/tmp/.X11-unix/X0"
        );
        assert_eq!(
            describe_unix(&client, Ok(Some(1225128)), &all, &none),
            "a unix stream socket connected to @/tmp/.X11-unix/X0, to a process outside the job"
        );
        let owners = BTreeMap::from([(1225126, owner(2, 7))]);
        assert_eq!(
            describe_unix(&client, Ok(Some(1225128)), &all, &owners),
            "a unix stream socket connected to @/tmp/.X11-unix/X0, to the listening socket fd 7 of process 2 of the job (not accepted yet)"
        );
        let owners = BTreeMap::from([(1225128, owner(2, 8))]);
        assert_eq!(
            describe_unix(&client, Ok(Some(1225128)), &all, &owners),
            "a unix stream socket connected to @/tmp/.X11-unix/X0, to fd 8 of process 2 of the job"
        );
        assert_eq!(
            describe_unix(&client, Err(()), &all, &owners),
            "a unix stream socket (connected; peer unknown)"
        );
        assert_eq!(
            describe_unix(&path, Ok(None), &all, &owners),
            "a unix datagram socket bound to /tmp/dgram test.sock, not connected"
        );
        let seq = parse_unix("00000000df0c3d17: 00000003 00000000 00000000 0005 03 1225130")
            .expect("line");
        assert_eq!(
            describe_unix(&seq, Ok(Some(1225131)), std::slice::from_ref(&seq), &none),
            "a unix seqpacket socket connected to an unnamed socket, to a process outside the job"
        );
    }

    #[test]
    fn other_tables() {
        let nl = "0000000059ce8ea5 4   0          00000000 0        0        0     2        0        1502    ";
        assert_eq!(parse_netlink(nl, 1502), Some(4));
        assert_eq!(parse_netlink(nl, 1503), None);
        assert_eq!(netlink_name(4), "NETLINK_SOCK_DIAG");
        let pk = "0000000012345678 3      3    0003   2     1 0      1000   4242";
        assert_eq!(parse_packet(pk, 4242), Some((3, 3, 2)));
        assert_eq!(socket_inode("socket:[123]"), Some(123));
        assert_eq!(socket_inode("pipe:[123]"), None);
    }

    #[test]
    fn diag_replies() {
        let mut b = Vec::new();
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(&20u16.to_ne_bytes());
        b.extend_from_slice(&[0; 10]);
        b.extend_from_slice(&[1, 1, 3, 0]);
        b.extend_from_slice(&138u32.to_ne_bytes());
        b.extend_from_slice(&[0; 8]);
        // UNIX_DIAG_NAME "@x" (5 bytes + padding), then UNIX_DIAG_PEER 137.
        b.extend_from_slice(&7u16.to_ne_bytes());
        b.extend_from_slice(&0u16.to_ne_bytes());
        b.extend_from_slice(b"\0x\0\0");
        b.extend_from_slice(&8u16.to_ne_bytes());
        b.extend_from_slice(&2u16.to_ne_bytes());
        b.extend_from_slice(&137u32.to_ne_bytes());
        let len = b.len() as u32;
        b[0..4].copy_from_slice(&len.to_ne_bytes());
        assert_eq!(parse_diag_reply(&b, 138, 2, 2), Ok(Some(137)));
        assert_eq!(parse_diag_reply(&b, 139, 2, 2), Err(()));
        b[4..6].copy_from_slice(&2u16.to_ne_bytes());
        assert_eq!(parse_diag_reply(&b, 138, 2, 2), Err(()));
    }

    /// The real thing: a socketpair's peer, and a TCP connection to a
    /// listener of this process.
    #[test]
    fn this_process() {
        use std::os::fd::AsRawFd as _;
        use std::os::unix::net::UnixStream;
        let (a, b) = UnixStream::pair().expect("socketpair");
        let inode = |fd: i32| {
            std::fs::read_link(format!("/proc/self/fd/{fd}"))
                .ok()
                .and_then(|l| socket_inode(l.to_str()?))
                .expect("socket inode")
        };
        let (ia, ib) = (inode(a.as_raw_fd()), inode(b.as_raw_fd()));
        if let Ok(p) = unix_peer(ia) {
            assert_eq!(p, Some(ib));
        }
        // SAFETY: getpid has no preconditions.
        let me = unsafe { libc::getpid() };
        let job = BTreeMap::from([(1, me)]);
        let d = describe(&job, me, a.as_raw_fd(), ia).expect("described");
        assert!(
            d == format!(
                "a unix stream socket connected to an unnamed socket, to fd {} of process 1 of the job",
                b.as_raw_fd()
            ) || d == "a unix stream socket (connected; peer unknown)",
            "{d}"
        );
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
        let port = l.local_addr().expect("addr").port();
        let il = inode(l.as_raw_fd());
        assert_eq!(
            describe(&job, me, l.as_raw_fd(), il),
            Some(format!("a TCP socket listening on 127.0.0.1:{port}"))
        );
        let c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let ic = inode(c.as_raw_fd());
        let local = c.local_addr().expect("addr");
        let d = describe(&job, me, c.as_raw_fd(), ic).expect("described");
        assert_eq!(
            d,
            format!(
                "a TCP connection {local} -> 127.0.0.1:{port} (ESTABLISHED) to the listening socket fd {} of process 1 of the job (not accepted yet)",
                l.as_raw_fd()
            )
        );
        let (s, _) = l.accept().expect("accept");
        let d = describe(&job, me, c.as_raw_fd(), ic).expect("described");
        assert_eq!(
            d,
            format!(
                "a TCP connection {local} -> 127.0.0.1:{port} (ESTABLISHED) to fd {} of process 1 of the job",
                s.as_raw_fd()
            )
        );
        let other = BTreeMap::from([(1, me + 1_000_000)]);
        let d = describe(&other, me, c.as_raw_fd(), ic).expect("described");
        assert!(d.ends_with("to a process outside the job"), "{d}");
    }
}
