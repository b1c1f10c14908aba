//! Restore of the job's TCP and UDP sockets: a plan made from every
//! process's images (which end is whose peer, which connection waits in
//! which listening socket), checked at checkpoint time so that a checkpoint
//! that succeeds can be restored, and carried out by the job's init at
//! restart, before it recreates the processes (they inherit the sockets).
//!
//! How each state comes back (see `docs/sockets.md`):
//! - a connection whose two ends the job holds: a temporary listening
//!   socket at one end's address, the other end bound to its own address
//!   and connected to it, the accepted socket taken, the listening one
//!   closed: both ends have the addresses and ports they had;
//! - a connection whose peer was closed: the same with a stand-in peer that
//!   writes back what was queued, then closes (reads drain the queue, then
//!   see end of file);
//! - a listening socket: bound to its address, listening with its backlog;
//!   its connections not accepted yet connect to it again from their
//!   clients' addresses;
//! - an unconnected TCP socket: created, bound if it was; a UDP socket:
//!   bound and connected as it was;
//! - then the queued bytes are written back by the peer, the options set,
//!   and the shutdown state applied.
//!
//! Ports: every bind uses `SO_REUSEADDR`, put back to the program's value
//! once every socket is made (the accepted ends of a listening socket share
//! its port, and each bind to it needs the sockets already there to allow
//! reuse). A port still held by the killed run's closed connections (a
//! time-wait entry of a socket that had no `SO_REUSEADDR`) frees itself
//! within a minute: the bind is retried until then, saying so.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use super::{Addr, InetSocket, Peer, tcp_state};

pub mod across;
pub mod meeting;

/// One socket as the images describe it, with the bytes queued in it.
#[derive(Clone, Debug)]
pub struct SavedEnd<'a> {
    /// Its inode at checkpoint time (the key between peers).
    pub inode: u64,
    /// Its saved state.
    pub sock: &'a InetSocket,
    /// The bytes it had received and not read (checked against the image's
    /// checksum).
    pub data: Vec<u8>,
    /// The job holds it only at descriptors 0, 1 or 2 (a restart gives those
    /// its own stdio when the peer is outside the job).
    pub stdio_only: bool,
    /// A peer outside the job is not refused: the connection comes back
    /// closed by its peer (`CKPT_EXTERNAL_SOCKETS=closed`); what it had in
    /// flight is not checked (a real close loses it too).
    pub reset_outside: bool,
    /// The job is a task of a job checkpoint (docs/batch-jobs.md): a
    /// connection whose peer is not in it may be one to another task of the
    /// same job, which the batch step matches across the tasks' records and
    /// a restart makes again through the job's directory ([`across`]).
    pub across: bool,
    /// Its peer was the task's PMIx server: a restart connects it to ckpt's
    /// stand-in for that server ([`across::to_stand_in`]).
    pub stand_in: bool,
    /// A listening socket the task inherited from slurmstepd and never
    /// uses: made again on a port the kernel picks, not its own (which
    /// slurmstepd, or the task's neighbour on the node, holds).
    pub inherited: bool,
    /// Who holds it, for messages ("fd 5 of process 12 (python3)").
    pub who: String,
}

/// How one socket, or a connection, is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Both ends in the job, connected to each other.
    Pair(u64, u64),
    /// Connected; the peer was closed since.
    Lonely(u64),
    /// Listening.
    Listener(u64),
    /// A connection not accepted yet by `listener`.
    Pending {
        /// The connecting socket.
        client: u64,
        /// The listening socket.
        listener: u64,
    },
    /// Neither (possibly bound), or UDP.
    Plain(u64),
    /// Its peer is outside the job and the job holds it only at 0..2: the
    /// restart's own stdio stands in for it.
    Stdio(u64),
    /// Its peer is outside the job, and the job asked for such connections
    /// to come back closed by their peer: a new loopback connection whose
    /// other end writes back what was queued, then closes.
    Reset(u64),
    /// Its peer is not in this task but may be in another task of the same
    /// job: made again with it through a meeting place ([`across::join`]).
    Across(u64),
}

/// Why a socket cannot be restored: the socket (its inode at checkpoint
/// time) and the reason; `outside` when its peer is not a process of the
/// job (the coordinator then says where the peer is); `passing` when the
/// condition passes by itself (the coordinator tries again).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The socket.
    pub inode: u64,
    /// Its peer is outside the job.
    pub outside: bool,
    /// A moment later the checkpoint may succeed.
    pub passing: bool,
    /// The whole message, naming the holder (from [`SavedEnd::who`]).
    pub message: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Refusal {}

/// Does the listening address `l` accept connections to `to`?
fn listens_for(l: &Addr, to: &Addr) -> bool {
    l.port == to.port && (l.is_any() || l.canonical() == to.canonical())
}

/// Make the plan: how every socket of `ends` comes back. Fails, naming the
/// socket and why, when one cannot. Pure: used at checkpoint time to refuse
/// what a restart could not do.
pub fn plan(ends: &[SavedEnd<'_>]) -> Result<Vec<Step>, Refusal> {
    let mut by: BTreeMap<u64, &SavedEnd<'_>> = BTreeMap::new();
    for e in ends {
        by.entry(e.inode).or_insert(e);
    }
    let listeners: Vec<&SavedEnd<'_>> = by
        .values()
        .copied()
        .filter(|e| e.sock.is_tcp() && e.sock.tcp_state == tcp_state::LISTEN)
        .collect();
    let mut waiting: HashMap<u64, u32> = HashMap::new();
    let mut first = Vec::new();
    let mut plain = Vec::new();
    let mut lst = Vec::new();
    let mut last = Vec::new();
    let mut done: std::collections::HashSet<u64> = std::collections::HashSet::new();
    for (&ino, e) in &by {
        if done.contains(&ino) {
            continue;
        }
        done.insert(ino);
        let s = e.sock;
        let outside = |message: String| Refusal {
            inode: ino,
            outside: true,
            passing: false,
            message,
        };
        if !s.is_tcp() || s.peer.is_none() && s.tcp_state != tcp_state::LISTEN {
            plain.push(Step::Plain(ino));
            continue;
        }
        if s.tcp_state == tcp_state::LISTEN {
            lst.push(Step::Listener(ino));
            continue;
        }
        let peer = s.peer.as_ref().cloned().unwrap_or_default();
        let away = || {
            format!(
                "{} is {}, to a process outside the job: ckpt cannot restore a connection that leaves the job",
                e.who,
                s.describe()
            )
        };
        match s.peer_is {
            Peer::Socket => match by.get(&s.peer_inode) {
                Some(b) if b.sock.peer_inode == ino && b.sock.peer_is == Peer::Socket => {
                    first.push(Step::Pair(ino, b.inode));
                    done.insert(b.inode);
                }
                Some(b) => {
                    return Err(Refusal {
                        inode: ino,
                        outside: false,
                        passing: false,
                        message: format!("{}: its peer ({}) is connected elsewhere", e.who, b.who),
                    });
                }
                None if e.stdio_only => first.push(Step::Stdio(ino)),
                None if e.reset_outside => first.push(Step::Reset(ino)),
                None if e.across => first.push(Step::Across(ino)),
                None => return Err(outside(away())),
            },
            Peer::Pending => {
                let Some(l) = listeners
                    .iter()
                    .filter(|l| listens_for(&l.sock.local, &peer))
                    .min_by_key(|l| !l.sock.local.same(&peer))
                else {
                    if e.across && !e.reset_outside {
                        return Err(Refusal {
                            inode: ino,
                            outside: false,
                            passing: true,
                            message: format!(
                                "{} is {}, not accepted yet by a listening socket outside this task: ckpt cannot checkpoint a connection that is still being set up",
                                e.who,
                                s.describe()
                            ),
                        });
                    }
                    if e.reset_outside {
                        first.push(Step::Reset(ino));
                        continue;
                    }
                    return Err(outside(format!(
                        "{} is {}, waiting to be accepted by a listening socket outside the job: ckpt cannot restore a connection that leaves the job",
                        e.who,
                        s.describe()
                    )));
                };
                *waiting.entry(l.inode).or_insert(0) += 1;
                last.push(Step::Pending {
                    client: ino,
                    listener: l.inode,
                });
            }
            Peer::Closed => first.push(Step::Lonely(ino)),
            // Not found on this host: gone entirely (a loopback peer that
            // finished closing) or on another host.
            Peer::Unknown if peer.is_loopback() => first.push(Step::Lonely(ino)),
            Peer::Unknown | Peer::None if e.stdio_only => first.push(Step::Stdio(ino)),
            Peer::Unknown | Peer::None if e.reset_outside => first.push(Step::Reset(ino)),
            Peer::Unknown | Peer::None if e.across => first.push(Step::Across(ino)),
            Peer::Unknown | Peer::None => return Err(outside(away())),
        }
    }
    for l in &listeners {
        let ours = waiting.get(&l.inode).copied().unwrap_or(0);
        if l.sock.accept_queue > ours {
            return Err(Refusal {
                inode: l.inode,
                outside: false,
                passing: true,
                message: format!(
                    "{} is {} with {} connection(s) from outside the job waiting to be accepted, which ckpt cannot restore",
                    l.who,
                    l.sock.describe(),
                    l.sock.accept_queue - ours
                ),
            });
        }
    }
    // A socket given back closed (its peer outside the job) loses what it
    // had in flight anyway, as on a real close: only the others must be
    // restorable as they are.
    let reset: Vec<Step> = first
        .iter()
        .filter(|s| matches!(s, Step::Reset(_)))
        .copied()
        .collect();
    for e in by.values() {
        if reset.contains(&Step::Reset(e.inode)) {
            continue;
        }
        e.sock.validate().map_err(|u| Refusal {
            inode: e.inode,
            outside: false,
            passing: u.passing,
            message: format!(
                "{} is {} that ckpt cannot checkpoint now: {}",
                e.who,
                e.sock.describe(),
                u.why
            ),
        })?;
    }
    // Queued UDP datagrams are sent again by their senders: each must be a
    // UDP socket of the job.
    for e in by.values() {
        if let Some(d) = e
            .sock
            .messages
            .iter()
            .find(|d| sender_of(ends, &d.from).is_none())
        {
            return Err(Refusal {
                inode: e.inode,
                outside: false,
                passing: true,
                message: format!(
                    "{} is {} with a datagram from {} queued in it, not yet received; that address is not a UDP \
                     socket of the job, and ckpt puts back only datagrams sent inside the job",
                    e.who,
                    e.sock.describe(),
                    d.from
                ),
            });
        }
    }
    // A connection to another task comes back across a network whose
    // per-packet overhead is larger than loopback's: less fits into it
    // before the program reads (across::MAX_QUEUE).
    for s in &first {
        if let Step::Across(ino) = s
            && let Some(e) = by.get(ino)
            && let Some([_, len]) = e.sock.data
            && len > across::MAX_QUEUE
        {
            return Err(Refusal {
                inode: *ino,
                outside: false,
                passing: true,
                message: format!(
                    "{} is {} with {len} bytes queued in it, not yet read; a restart can put back at most {} \
                     on a connection to another task",
                    e.who,
                    e.sock.describe(),
                    across::MAX_QUEUE
                ),
            });
        }
    }
    first.retain(|s| !matches!(s, Step::Reset(_)));
    first.extend(plain);
    first.extend(lst);
    first.extend(last);
    // Last: their stand-in connections take ports of their own, which must
    // not be ones the others are about to bind again.
    first.extend(reset);
    Ok(first)
}

/// The UDP socket of the job that can send a datagram from `from`: bound
/// to that port, at that address or the wildcard, in a family that has it.
fn sender_of(ends: &[SavedEnd<'_>], from: &Addr) -> Option<u64> {
    let v4 = from.canonical().len() == 4;
    ends.iter()
        .find(|e| {
            let l = &e.sock.local;
            !e.sock.is_tcp()
                && l.port == from.port
                && (l.is_any() || l.canonical() == from.canonical())
                && if e.sock.family == libc::AF_INET {
                    v4
                } else {
                    !(v4 && e.sock.opts.v6only)
                }
        })
        .map(|e| e.inode)
}

/// Where a datagram for `to` (bound there, possibly at the wildcard) is sent
/// from a socket of `family` whose datagram came from `from`.
fn datagram_target(to: &Addr, from: &Addr) -> Addr {
    if !to.is_any() {
        return to.clone();
    }
    let ip = if from.canonical().len() == 4 {
        vec![127, 0, 0, 1]
    } else {
        let mut ip = vec![0u8; 16];
        ip[15] = 1;
        ip
    };
    Addr { ip, port: to.port }
}

/// Send the datagrams queued in `e` (made as `fd`) again, each from the
/// socket of the job it came from (`fds`), then check they all arrived.
fn resend(
    e: &SavedEnd<'_>,
    fd: i32,
    ends: &[SavedEnd<'_>],
    fds: &HashMap<u64, i32>,
) -> Result<(), String> {
    let by: HashMap<u64, &SavedEnd<'_>> = ends.iter().map(|e| (e.inode, e)).collect();
    let mut at = 0usize;
    for d in &e.sock.messages {
        let len = usize::try_from(d.len).unwrap_or(usize::MAX);
        let bytes = e.data.get(at..at.saturating_add(len)).ok_or_else(|| {
            format!(
                "cannot restore {}: its saved datagrams are shorter than listed",
                e.who
            )
        })?;
        at += len;
        let sender = sender_of(ends, &d.from)
            .and_then(|i| Some((by.get(&i)?, *fds.get(&i)?)))
            .ok_or_else(|| {
                format!(
                    "cannot restore {}: no socket to send its datagram from {}",
                    e.who, d.from
                )
            })?;
        let to = datagram_target(&e.sock.local, &d.from);
        let (ss, sl) = sockaddr(sender.0.sock.family, &to)?;
        // SAFETY: sendto from a local buffer to a valid address.
        let n = unsafe {
            libc::sendto(
                sender.1,
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_DONTWAIT,
                (&ss as *const libc::sockaddr_storage).cast(),
                sl,
            )
        };
        if n != bytes.len() as isize {
            return Err(err(&format!(
                "cannot restore {}: sending its queued datagram from {} to {to} again",
                e.who, d.from
            )));
        }
    }
    // Loopback delivers in the sender's system call, or a moment later from
    // the network softirq under load: count what arrived (peeking), and
    // wait a little for the rest. A receive buffer too small for them on
    // this kernel drops them: the restart then fails, saying so.
    let want = e.sock.messages.len();
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let got = count_datagrams(fd, want)?;
        if got == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "cannot restore {}: {got} of its {want} queued datagrams arrived again (its receive buffer, {} bytes, is \
                 too small for them here)",
                e.who,
                get(fd, libc::SOL_SOCKET, libc::SO_RCVBUF)
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// How many datagrams (up to `most`) are queued in `fd`, by peeking with a
/// peek offset, put back to none after.
fn count_datagrams(fd: i32, most: usize) -> Result<usize, String> {
    set(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, 0)?;
    let mut b = [0u8; 1];
    let mut n = 0;
    while n < most {
        // SAFETY: peeking at most one byte into a local; MSG_TRUNC moves
        // the peek offset past the whole datagram.
        let r = unsafe {
            libc::recv(
                fd,
                b.as_mut_ptr().cast(),
                b.len(),
                libc::MSG_PEEK | libc::MSG_DONTWAIT | libc::MSG_TRUNC,
            )
        };
        if r <= 0 {
            break;
        }
        n += 1;
    }
    set(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, -1)?;
    Ok(n)
}

fn err(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

fn close(fd: i32) {
    // SAFETY: closing a descriptor this module made.
    unsafe { libc::close(fd) };
}

/// A socket address for `a` in `family`.
fn sockaddr(family: i32, a: &Addr) -> Result<(libc::sockaddr_storage, u32), String> {
    // SAFETY: sockaddr_storage is plain old data.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    if family == libc::AF_INET {
        let ip: [u8; 4] = a
            .canonical()
            .try_into()
            .map_err(|_| format!("{a}: not an IPv4 address"))?;
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: a.port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(ip),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: a sockaddr_in fits in a sockaddr_storage.
        unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
        Ok((ss, std::mem::size_of::<libc::sockaddr_in>() as u32))
    } else {
        let mut ip = [0u8; 16];
        match a.ip.len() {
            16 => ip.copy_from_slice(&a.ip),
            4 => {
                ip[10] = 0xff;
                ip[11] = 0xff;
                ip[12..].copy_from_slice(&a.ip);
            }
            _ => return Err(format!("{a}: not an IP address")),
        }
        // SAFETY: sockaddr_in6 is plain old data.
        let mut sin6: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        sin6.sin6_family = libc::AF_INET6 as u16;
        sin6.sin6_port = a.port.to_be();
        sin6.sin6_addr.s6_addr = ip;
        // SAFETY: a sockaddr_in6 fits in a sockaddr_storage.
        unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
        Ok((ss, std::mem::size_of::<libc::sockaddr_in6>() as u32))
    }
}

fn set(fd: i32, level: i32, opt: i32, v: i32) -> Result<(), String> {
    // SAFETY: setsockopt reading an int from a local.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&v as *const i32).cast(),
            std::mem::size_of::<i32>() as u32,
        )
    };
    if r != 0 {
        return Err(err(&format!("setsockopt({level}, {opt})")));
    }
    Ok(())
}

fn get(fd: i32, level: i32, opt: i32) -> i32 {
    let mut v: i32 = 0;
    let mut len = std::mem::size_of::<i32>() as u32;
    // SAFETY: getsockopt writing an int into a local.
    unsafe { libc::getsockopt(fd, level, opt, (&mut v as *mut i32).cast(), &mut len) };
    v
}

/// A new socket like `s`, with `SO_REUSEADDR` on and `IPV6_V6ONLY` as it
/// had it (both must be set before `bind`).
fn new_socket(s: &InetSocket) -> Result<i32, String> {
    // SAFETY: no pointers.
    let fd = unsafe { libc::socket(s.family, s.ty | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(err("socket"));
    }
    let r = (|| {
        set(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
        if s.family == libc::AF_INET6 {
            set(
                fd,
                libc::IPPROTO_IPV6,
                libc::IPV6_V6ONLY,
                i32::from(s.opts.v6only),
            )?;
        }
        if s.opts.reuseport {
            set(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
        }
        Ok(())
    })();
    if let Err(e) = r {
        close(fd);
        return Err(e);
    }
    Ok(fd)
}

/// How long a bind waits for a port the killed run's closed connections
/// still hold (a time-wait entry lasts 60 s).
const PORT_WAIT: Duration = Duration::from_secs(65);

/// Bind `fd` to `a`, waiting for a port held by time-wait entries.
fn bind(fd: i32, family: i32, a: &Addr, who: &str) -> Result<(), String> {
    let (ss, len) = sockaddr(family, a)?;
    let t0 = Instant::now();
    let mut said = false;
    loop {
        // SAFETY: bind with a valid address of `len` bytes.
        if unsafe { libc::bind(fd, (&ss as *const libc::sockaddr_storage).cast(), len) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        // UDP has no time-wait entries; a TCP port some process listens on
        // does not free itself either.
        let udp = get(fd, libc::SOL_SOCKET, libc::SO_TYPE) == libc::SOCK_DGRAM;
        if e.raw_os_error() == Some(libc::EADDRINUSE)
            && !said
            && (udp || someone_listens(family, a))
        {
            return Err(format!(
                "cannot restore {who}: {a} is in use on this host by a process outside the job (`ss -tulnp` shows which); free it and restart"
            ));
        }
        if e.raw_os_error() == Some(libc::EADDRINUSE) && t0.elapsed() < PORT_WAIT {
            if !said {
                eprintln!(
                    "ckpt: waiting for {a} to be free for {who} (it is in use, possibly by the previous run's closed connections, which the kernel keeps for up to a minute)"
                );
                said = true;
            }
            std::thread::sleep(Duration::from_millis(250));
            continue;
        }
        return Err(match e.raw_os_error() {
            Some(libc::EADDRINUSE) => format!(
                "cannot restore {who}: {a} is in use on this host by a process outside the job (`ss -tanp` shows which); free it and restart"
            ),
            Some(libc::EADDRNOTAVAIL) => format!(
                "cannot restore {who}: the address {a} does not exist on this host (the job was checkpointed on another host and used that host's own address)"
            ),
            _ => format!("cannot restore {who}: bind {a}: {e}"),
        });
    }
}

/// Can a socket like `s` be bound to `a` now (with `SO_REUSEADDR`)?
fn bindable(s: &InetSocket, a: &Addr) -> bool {
    let Ok(fd) = new_socket(s) else { return false };
    let ok = sockaddr(s.family, a).is_ok_and(|(ss, len)| {
        // SAFETY: bind with a valid address of `len` bytes.
        unsafe { libc::bind(fd, (&ss as *const libc::sockaddr_storage).cast(), len) == 0 }
    });
    close(fd);
    ok
}

/// Does a listening socket accept connections at `a` (a wildcard address:
/// at loopback)? Time-wait entries, which free themselves, do not.
fn someone_listens(family: i32, a: &Addr) -> bool {
    let mut to = a.clone();
    if to.is_any() {
        to.ip = if to.ip.len() == 4 {
            vec![127, 0, 0, 1]
        } else {
            let mut v = vec![0u8; 16];
            v[15] = 1;
            v
        };
    }
    let Ok((ss, len)) = sockaddr(family, &to) else {
        return false;
    };
    // SAFETY: no pointers.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return false;
    }
    // SAFETY: connect with a valid address of `len` bytes.
    let r = unsafe { libc::connect(fd, (&ss as *const libc::sockaddr_storage).cast(), len) };
    close(fd);
    r == 0
}

fn connect(fd: i32, family: i32, a: &Addr, who: &str) -> Result<(), String> {
    let (ss, len) = sockaddr(family, a)?;
    loop {
        // SAFETY: connect with a valid address of `len` bytes.
        if unsafe { libc::connect(fd, (&ss as *const libc::sockaddr_storage).cast(), len) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(format!("cannot restore {who}: connect to {a}: {e}"));
        }
    }
}

/// Buffer sizes a new socket of this kind gets (`SO_SNDBUF`, `SO_RCVBUF`).
fn default_sizes(s: &InetSocket) -> (i32, i32) {
    // SAFETY: no pointers.
    let fd = unsafe { libc::socket(s.family, s.ty | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return (0, 0);
    }
    let r = (
        get(fd, libc::SOL_SOCKET, libc::SO_SNDBUF),
        get(fd, libc::SOL_SOCKET, libc::SO_RCVBUF),
    );
    close(fd);
    r
}

/// Give `fd` the buffer sizes of `e` where they differ from a new socket's
/// (a program's own setting, or what the kernel's automatic sizing had
/// grown them to), and room for `incoming` bytes. Before `connect`/`listen`,
/// so the connection's window is made for them.
fn size_buffers(fd: i32, e: &SavedEnd<'_>, incoming: usize, outgoing: usize) -> Result<(), String> {
    let (snd0, rcv0) = default_sizes(e.sock);
    let o = &e.sock.opts;
    // getsockopt gives twice what setsockopt was given.
    let room = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    if o.rcvbuf != rcv0 || incoming > (32 << 10) {
        set(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (o.rcvbuf / 2).max(room(incoming)),
        )?;
    }
    if o.sndbuf != snd0 || outgoing > (32 << 10) {
        set(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (o.sndbuf / 2).max(room(outgoing)),
        )?;
    }
    Ok(())
}

/// The options of `e` set on `fd` (after it is connected or listening).
/// The options the program set, but `SO_REUSEADDR`, which stays on until
/// every socket is made ([`restore_all`] puts it back last): an accepted
/// end shares its listener's port, and each further bind to that port
/// needs every socket already on it to allow the reuse.
fn set_options(fd: i32, e: &SavedEnd<'_>) -> Result<(), String> {
    let o = &e.sock.opts;
    set(
        fd,
        libc::SOL_SOCKET,
        libc::SO_KEEPALIVE,
        i32::from(o.keepalive),
    )?;
    if !e.sock.is_tcp() {
        set(
            fd,
            libc::SOL_SOCKET,
            libc::SO_BROADCAST,
            i32::from(o.broadcast),
        )?;
    }
    if o.linger[0] != 0 {
        let lg = libc::linger {
            l_onoff: o.linger[0],
            l_linger: o.linger[1],
        };
        // SAFETY: setsockopt reading a struct linger from a local.
        if unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&lg as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as u32,
            )
        } != 0
        {
            return Err(err("setsockopt(SO_LINGER)"));
        }
    }
    if e.sock.is_tcp() {
        set(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            i32::from(o.nodelay),
        )?;
        for (opt, v) in [
            (libc::TCP_KEEPIDLE, o.keep[0]),
            (libc::TCP_KEEPINTVL, o.keep[1]),
            (libc::TCP_KEEPCNT, o.keep[2]),
        ] {
            if v > 0 {
                set(fd, libc::IPPROTO_TCP, opt, v)?;
            }
        }
    }
    Ok(())
}

/// Write `data` into the connected socket `fd` (nobody reads yet: the
/// receiver's buffers were sized for it).
fn refill(fd: i32, data: &[u8], who: &str) -> Result<(), String> {
    let mut done = 0usize;
    let t0 = Instant::now();
    while done < data.len() {
        // SAFETY: send from our buffer, without blocking.
        let n = unsafe {
            libc::send(
                fd,
                data[done..].as_ptr().cast(),
                data.len() - done,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n > 0 {
            done += n as usize;
            continue;
        }
        let e = std::io::Error::last_os_error();
        if n < 0 && e.raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        if n < 0 && e.raw_os_error() == Some(libc::EAGAIN) && t0.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(2));
            continue;
        }
        return Err(format!(
            "cannot restore {who}: only {done} of the {} bytes queued in it fit into the new connection ({e})",
            data.len()
        ));
    }
    Ok(())
}

/// `IP_LOCAL_PORT_RANGE` (Linux 6.3) and `IP_BIND_ADDRESS_NO_PORT`.
const IP_LOCAL_PORT_RANGE: i32 = 51;
const IP_BIND_ADDRESS_NO_PORT: i32 = 24;

/// The system's range of ports `connect` picks from.
fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| {
            let mut w = t.split_whitespace().map(|v| v.parse::<u16>().ok());
            Some((w.next()??, w.next()??))
        })
        .unwrap_or((32768, 60999))
}

/// A socket like `e`'s, connected from `from` to `to`, its buffers sized
/// for `room` (bytes it will receive, bytes it will send).
///
/// A port the client had from `connect` is taken again the way `connect`
/// took it, with the socket's port range narrowed to that one port
/// (`IP_LOCAL_PORT_RANGE`): `connect` may reuse the port of a time-wait
/// entry of the same connection (the killed run's, on this host) after a
/// second (`net.ipv4.tcp_tw_reuse`, on for loopback by default), where
/// `bind` would be refused for a minute. Elsewhere (older kernels, ports
/// outside the ephemeral range, or when the kernel gives another port) the
/// port is bound, waiting as [`bind`] does.
fn connect_from(
    e: &SavedEnd<'_>,
    from: &Addr,
    to: &Addr,
    room: (usize, usize),
) -> Result<i32, String> {
    let (lo, hi) = ephemeral_range();
    let t0 = Instant::now();
    let mut said = false;
    if from.port >= lo && from.port <= hi {
        loop {
            let fd = new_socket(e.sock)?;
            let r = (|| {
                size_buffers(fd, e, room.0, room.1)?;
                let range = u32::from(from.port) | (u32::from(from.port) << 16);
                if set(fd, libc::IPPROTO_IP, IP_LOCAL_PORT_RANGE, range as i32).is_err() {
                    return Ok(None);
                }
                set(fd, libc::IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)?;
                bind(
                    fd,
                    e.sock.family,
                    &Addr {
                        ip: from.ip.clone(),
                        port: 0,
                    },
                    &e.who,
                )?;
                let (ss, len) = sockaddr(e.sock.family, to)?;
                // SAFETY: connect with a valid address of `len` bytes.
                if unsafe { libc::connect(fd, (&ss as *const libc::sockaddr_storage).cast(), len) }
                    != 0
                {
                    let er = std::io::Error::last_os_error();
                    return if er.raw_os_error() == Some(libc::EADDRNOTAVAIL) {
                        Ok(Some(false))
                    } else {
                        Err(format!("cannot restore {}: connect to {to}: {er}", e.who))
                    };
                }
                set(fd, libc::IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 0)?;
                set(fd, libc::IPPROTO_IP, IP_LOCAL_PORT_RANGE, 0)?;
                // Connected: another port would leave a connection in the
                // listening socket's queue, so it is an error, not a retry.
                let got = port_of(fd);
                if got != from.port {
                    return Err(format!(
                        "cannot restore {}: the kernel connected it from port {got}, not {}",
                        e.who, from.port
                    ));
                }
                Ok(Some(true))
            })();
            match r {
                Ok(Some(true)) => return Ok(fd),
                // A port first taken by `bind` (an accepted end's) is never
                // picked by `connect`: bind it, if it can be.
                Ok(Some(false)) if bindable(e.sock, from) => {
                    close(fd);
                    break;
                }
                Ok(Some(false)) if t0.elapsed() < PORT_WAIT => {
                    close(fd);
                    if !said {
                        eprintln!(
                            "ckpt: waiting for port {} to be free for {} (in use, possibly by the previous run's closed connection, which the kernel keeps for up to a minute)",
                            from.port, e.who
                        );
                        said = true;
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
                Ok(Some(false)) => {
                    close(fd);
                    return Err(format!(
                        "cannot restore {}: port {} of {} is in use on this host by a process outside the job (`ss -tanp` shows which); free it and restart",
                        e.who, from.port, from
                    ));
                }
                Ok(None) => {
                    close(fd);
                    break;
                }
                Err(er) => {
                    close(fd);
                    return Err(er);
                }
            }
        }
    }
    let fd = new_socket(e.sock)?;
    let r = (|| {
        size_buffers(fd, e, room.0, room.1)?;
        bind(fd, e.sock.family, from, &e.who)?;
        connect(fd, e.sock.family, to, &e.who)
    })();
    match r {
        Ok(()) => Ok(fd),
        Err(er) => {
            close(fd);
            Err(er)
        }
    }
}

/// The local port of `fd`.
fn port_of(fd: i32) -> u16 {
    // SAFETY: sockaddr_storage is plain old data.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as u32;
    // SAFETY: getsockname writes at most `len` bytes into ss.
    if unsafe {
        libc::getsockname(
            fd,
            (&mut ss as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    } != 0
    {
        return 0;
    }
    // Both sockaddr_in and sockaddr_in6 have the port right after the family.
    // SAFETY: reading the port field of the sockaddr_in the kernel wrote.
    let sin: libc::sockaddr_in =
        unsafe { std::ptr::read((&ss as *const libc::sockaddr_storage).cast()) };
    u16::from_be(sin.sin_port)
}

/// Make one connection: `server`'s address gets a temporary listening
/// socket, `client` connects to it from its own address. Returns
/// `(server fd, client fd)`. Either side may be a stand-in (`None`) for a
/// closed peer, with the address and options of the other's saved peer.
fn connect_pair(
    server: &SavedEnd<'_>,
    client: &SavedEnd<'_>,
    server_addr: &Addr,
    client_addr: &Addr,
    server_is_real: bool,
    client_is_real: bool,
) -> Result<(i32, i32), String> {
    let lfd = new_socket(server.sock)?;
    let r = (|| {
        if server_is_real {
            size_buffers(lfd, server, server.data.len(), client.data.len())?;
        }
        bind(lfd, server.sock.family, server_addr, &server.who)?;
        // SAFETY: no pointers.
        if unsafe { libc::listen(lfd, 1) } != 0 {
            return Err(err("listen"));
        }
        let room = if client_is_real {
            (client.data.len(), server.data.len())
        } else {
            (0, 0)
        };
        let cfd = connect_from(client, client_addr, server_addr, room)?;
        // SAFETY: accept on our listening socket, no address wanted.
        let sfd = unsafe {
            libc::accept4(
                lfd,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if sfd < 0 {
            let e = err("accept");
            close(cfd);
            return Err(e);
        }
        Ok((sfd, cfd))
    })();
    close(lfd);
    r
}

/// Apply the shutdown state after the data is back: an end that had shut
/// down sending sends its end of file now; one that had shut down only
/// receiving (its peer did not send an end of file) shuts it down again.
fn shut(fd: i32, e: &SavedEnd<'_>, peer_sent_fin: bool) {
    let how = match (
        e.sock.shutdown & 2 != 0,
        e.sock.shutdown & 1 != 0 && !peer_sent_fin,
    ) {
        (true, true) => libc::SHUT_RDWR,
        (true, false) => libc::SHUT_WR,
        (false, true) => libc::SHUT_RD,
        (false, false) => return,
    };
    // SAFETY: shutdown of our socket.
    unsafe { libc::shutdown(fd, how) };
}

/// Whether a TCP socket of `family` can be bound to `a` (tried on a
/// throw-away socket).
fn can_bind(family: i32, a: &Addr) -> bool {
    // SAFETY: socket takes no pointers.
    let t = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if t < 0 {
        return false;
    }
    let ok = sockaddr(family, a).is_ok_and(|(ss, len)| {
        // SAFETY: bind with a valid address of `len` bytes.
        unsafe { libc::bind(t, (&ss as *const libc::sockaddr_storage).cast(), len) == 0 }
    });
    close(t);
    ok
}

/// A TCP connection of `x`'s family over loopback whose other end wrote
/// `x`'s queued bytes and closed: reads drain them, then see end of file
/// (what a peer that closed the connection leaves).
fn closed_by_peer(x: &SavedEnd<'_>) -> Result<i32, String> {
    let family = x.sock.family;
    let lo = Addr {
        ip: if family == libc::AF_INET6 {
            let mut v = vec![0u8; 16];
            v[15] = 1;
            v
        } else {
            vec![127, 0, 0, 1]
        },
        port: 0,
    };
    let who = &x.who;
    let new = || {
        // SAFETY: socket takes no pointers.
        let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 { Err(err("socket")) } else { Ok(fd) }
    };
    let l = new()?;
    let mut fds = vec![l];
    let r = (|| {
        // IPv6 switched off on loopback (containers): a dual-stack socket
        // takes the IPv4 loopback, mapped.
        let lo = if family == libc::AF_INET6 && !can_bind(family, &lo) {
            Addr {
                ip: vec![0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1],
                port: 0,
            }
        } else {
            lo
        };
        bind(l, family, &lo, who)?;
        // SAFETY: no pointers.
        if unsafe { libc::listen(l, 1) } != 0 {
            return Err(err("listen"));
        }
        let at = Addr {
            ip: lo.ip.clone(),
            port: port_of(l),
        };
        let c = new()?;
        fds.push(c);
        size_buffers(c, x, x.data.len(), 0)?;
        connect(c, family, &at, who)?;
        // SAFETY: accept without the peer's address.
        let a = unsafe {
            libc::accept4(
                l,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if a < 0 {
            return Err(err("accept"));
        }
        fds.push(a);
        size_buffers(a, x, 0, x.data.len())?;
        // The queued bytes, written by the stand-in peer.
        refill(a, &x.data, who)?;
        // SAFETY: no pointers; the closing end sends its end of file.
        unsafe { libc::shutdown(a, libc::SHUT_WR) };
        Ok(c)
    })();
    for &fd in &fds {
        if r.as_ref().ok() != Some(&fd) {
            close(fd);
        }
    }
    r
}

/// Carry out [`plan`]: make every socket of `ends`, connected and filled as
/// it was. Returns saved inode -> close-on-exec descriptor. Run by the job's
/// init before it recreates the processes.
pub fn restore_all(ends: &[SavedEnd<'_>]) -> Result<HashMap<u64, i32>, String> {
    let steps = plan(ends).map_err(|r| r.message)?;
    let by: HashMap<u64, &SavedEnd<'_>> = ends.iter().map(|e| (e.inode, e)).collect();
    let mut fds: HashMap<u64, i32> = HashMap::new();
    let listening_port = |e: &SavedEnd<'_>| {
        ends.iter().any(|l| {
            l.sock.tcp_state == tcp_state::LISTEN && l.sock.local.port == e.sock.local.port
        })
    };
    let (lo, hi) = ephemeral_range();
    let ephemeral = |port: u16| port >= lo && port <= hi;
    // Which end of a connection takes the temporary listening socket: the
    // one a listening socket of the job accepted (its port is the
    // listener's), else the one whose port `connect` did not pick (the
    // other's is taken again the way `connect` took it: see connect_from).
    let accepting =
        |a: &SavedEnd<'_>, b: &SavedEnd<'_>| match (listening_port(a), listening_port(b)) {
            (true, false) => true,
            (false, true) => false,
            _ => !ephemeral(a.sock.local.port) && ephemeral(b.sock.local.port),
        };
    let mut across_ends: Vec<&SavedEnd<'_>> = Vec::new();
    let r = (|| {
        for step in steps {
            match step {
                Step::Across(a) => across_ends.push(by[&a]),
                Step::Pair(a, b) => {
                    let (x, y) = (by[&a], by[&b]);
                    // The end whose port a listening socket of the job has
                    // is the accepted one: it takes the temporary listener.
                    let (mut s, mut c) = if accepting(y, x) { (y, x) } else { (x, y) };
                    // A time-wait entry of the killed run may hold the
                    // chosen end's port for a minute: then the other way round.
                    if !bindable(s.sock, &s.sock.local) && bindable(c.sock, &c.sock.local) {
                        (s, c) = (c, s);
                    }
                    let peer = c.sock.peer.clone().unwrap_or_default();
                    let (sfd, cfd) = connect_pair(s, c, &peer, &c.sock.local, true, true)?;
                    fds.insert(s.inode, sfd);
                    fds.insert(c.inode, cfd);
                    refill(cfd, &s.data, &s.who)?;
                    refill(sfd, &c.data, &c.who)?;
                    for (fd, e, other) in [(sfd, s, c), (cfd, c, s)] {
                        set_options(fd, e)?;
                        shut(fd, e, other.sock.shutdown & 2 != 0);
                        if e.sock.opts.cork {
                            set(fd, libc::IPPROTO_TCP, libc::TCP_CORK, 1)?;
                        }
                    }
                }
                Step::Lonely(a) => {
                    let x = by[&a];
                    let peer = x.sock.peer.clone().unwrap_or_default();
                    // The stand-in takes the peer's address; it sends
                    // nothing but the end of file after x's queued bytes.
                    let stand_in = SavedEnd {
                        inode: 0,
                        sock: x.sock,
                        data: Vec::new(),
                        stdio_only: false,
                        reset_outside: false,
                        across: false,
                        stand_in: false,
                        inherited: false,
                        who: format!("the closed peer of {}", x.who),
                    };
                    // An end accepted from a listening socket keeps the
                    // accepting side; the stand-in then connects from the
                    // closed client's port.
                    let x_accepts = listening_port(x) || !ephemeral(x.sock.local.port);
                    let x_accepts = if x_accepts {
                        bindable(x.sock, &x.sock.local) || !bindable(x.sock, &peer)
                    } else {
                        !bindable(x.sock, &peer) && bindable(x.sock, &x.sock.local)
                    };
                    let (sfd, xfd) = if x_accepts {
                        let (xfd, sfd) =
                            connect_pair(x, &stand_in, &x.sock.local, &peer, true, false)?;
                        (sfd, xfd)
                    } else {
                        connect_pair(&stand_in, x, &peer, &x.sock.local, false, true)?
                    };
                    fds.insert(x.inode, xfd);
                    let r = refill(sfd, &x.data, &x.who);
                    // SAFETY: shutdown and close of the stand-in we made.
                    unsafe { libc::shutdown(sfd, libc::SHUT_WR) };
                    close(sfd);
                    r?;
                    set_options(xfd, x)?;
                    shut(xfd, x, true);
                }
                Step::Listener(a) => {
                    let x = by[&a];
                    let fd = new_socket(x.sock)?;
                    fds.insert(a, fd);
                    size_buffers(fd, x, 0, 0)?;
                    let at = if x.inherited {
                        Addr {
                            port: 0,
                            ..x.sock.local.clone()
                        }
                    } else {
                        x.sock.local.clone()
                    };
                    bind(fd, x.sock.family, &at, &x.who)?;
                    let backlog = i32::try_from(x.sock.backlog).unwrap_or(i32::MAX).max(1);
                    // SAFETY: no pointers.
                    if unsafe { libc::listen(fd, backlog) } != 0 {
                        return Err(err(&format!("cannot restore {}: listen", x.who)));
                    }
                    set_options(fd, x)?;
                }
                Step::Pending { client, .. } => {
                    let x = by[&client];
                    let peer = x.sock.peer.clone().unwrap_or_default();
                    let fd = connect_from(x, &x.sock.local, &peer, (x.data.len(), 0))?;
                    fds.insert(client, fd);
                    set_options(fd, x)?;
                    shut(fd, x, false);
                }
                Step::Plain(a) => {
                    let x = by[&a];
                    let fd = new_socket(x.sock)?;
                    fds.insert(a, fd);
                    size_buffers(fd, x, 0, 0)?;
                    if x.sock.local.port != 0 {
                        bind(fd, x.sock.family, &x.sock.local, &x.who)?;
                    }
                    if let Some(p) = &x.sock.peer
                        && !x.sock.is_tcp()
                    {
                        connect(fd, x.sock.family, p, &x.who)?;
                    }
                    set_options(fd, x)?;
                }
                Step::Stdio(_) => {}
                Step::Reset(a) => {
                    let x = by[&a];
                    let fd = closed_by_peer(x)?;
                    fds.insert(a, fd);
                    set_options(fd, x)?;
                }
            }
        }
        // Last, once every other socket holds its port: the connections to
        // other tasks of the job, made again with their tasks' inits.
        if !across_ends.is_empty() {
            let m = across::Meeting::from_env().ok_or_else(|| {
                format!(
                    "cannot restore {}: its other end was in another task of the job, and it comes back only \
                     when the job resumes as a whole (`ckpt slurm-task`, docs/batch-jobs.md)",
                    across_ends[0].who
                )
            })?;
            let (served, paired): (Vec<&SavedEnd<'_>>, Vec<&SavedEnd<'_>>) =
                across_ends.iter().partition(|e| e.stand_in);
            let mut made = across::join(&paired, &m)?;
            for e in served {
                made.insert(e.inode, across::to_stand_in(e)?);
            }
            for (ino, fd) in made {
                fds.insert(ino, fd);
                let x = by[&ino];
                set_options(fd, x)?;
                shut(fd, x, true);
                if x.sock.opts.cork {
                    set(fd, libc::IPPROTO_TCP, libc::TCP_CORK, 1)?;
                }
            }
        }
        // Every socket exists: the queued datagrams are sent again.
        for e in ends {
            if !e.sock.messages.is_empty()
                && let Some(&fd) = fds.get(&e.inode)
            {
                resend(e, fd, ends, &fds)?;
            }
        }
        for (ino, fd) in &fds {
            let reuse = by.get(ino).is_some_and(|e| e.sock.opts.reuseaddr);
            set(*fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, i32::from(reuse))?;
        }
        Ok(())
    })();
    if let Err(e) = r {
        for fd in fds.values() {
            close(*fd);
        }
        return Err(e);
    }
    Ok(fds)
}

/// The restore's socket address, for the tests' own sockets.
#[cfg(test)]
pub(super) fn test_sockaddr(family: i32, a: &Addr) -> (libc::sockaddr_storage, u32) {
    sockaddr(family, a).unwrap_or_else(|e| panic!("{e}"))
}
