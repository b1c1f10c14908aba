//! Connections between two tasks of one job (docs/sockets.md, "Between
//! tasks of a job"): each end is restored by its own task's init, possibly
//! on another node than before, so the two ends meet through the job's
//! checkpoint directory, which every node of the job sees.
//!
//! Of the two ends, the one whose saved local address sorts first listens:
//! a new listening socket on an address of its node and a port the kernel
//! picks, published with a random token as a file named after the
//! connection in the meeting directory. The other end reads the file,
//! connects to one of the published addresses and sends, before anything
//! else, the token, then the bytes it had received and not read. The
//! listening end reads those (only those) and answers with the bytes it had
//! received, then writes the connector's bytes, which stay queued for the
//! connector's program; the connector reads the answer (only it) and writes
//! the listener's bytes likewise. Then both connections are the program's:
//! each end's queue holds what it held at the checkpoint, in order, and
//! whatever the programs write next follows it.
//!
//! Every end of every such connection of a task is driven at once by one
//! `poll` loop, so that two tasks that each listen for one connection and
//! connect for another never wait for each other.
//!
//! The new connection has new addresses: `getsockname` and `getpeername`
//! tell the node the end is on now (the job may have moved).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::super::Addr;
use super::meeting::MeetingDir;
use super::{SavedEnd, close, err, get, port_of, set, size_buffers, sockaddr};

/// The most bytes queued at one end of a connection between tasks that a
/// restart puts back: it writes them into the new connection before the
/// program reads, and across a network each packet costs the buffers more
/// than on loopback (where 512 KiB fit, docs/sockets.md).
pub const MAX_QUEUE: u64 = 256 << 10;

/// The environment variable naming the meeting directory: set by `ckpt
/// slurm-task` for the init of a task that resumes as part of its job.
pub const ENV_MEETING: &str = "CKPT_RENDEZVOUS";

/// The environment variable naming the stand-in for a rank's PMIx server
/// that `ckpt slurm-task` serves after a restart: `IP:PORT TOKEN` (the
/// token in hex, sent first by the init on each connection it makes there).
pub const ENV_STAND_IN: &str = "CKPT_PMIX_STANDIN";

/// The stand-in's address and token, from [`ENV_STAND_IN`].
pub fn stand_in_from_env() -> Option<(std::net::SocketAddr, [u8; 16])> {
    let v = std::env::var(ENV_STAND_IN).ok()?;
    let (addr, tok) = v.split_once(' ')?;
    let addr: std::net::SocketAddr = addr.parse().ok()?;
    let mut token = [0u8; 16];
    if tok.len() != 32 {
        return None;
    }
    for (i, t) in token.iter_mut().enumerate() {
        *t = u8::from_str_radix(tok.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some((addr, token))
}

/// This task's end of its connection to its PMIx server, made again as a
/// connection to the stand-in `ckpt slurm-task` serves ([`ENV_STAND_IN`]):
/// the init connects, sends the token (which the stand-in reads, so the
/// rank never sees it) and gives the socket to the rank. Nothing was queued
/// in it (checked at checkpoint time).
pub fn to_stand_in(e: &SavedEnd<'_>) -> Result<i32, String> {
    let (at, token) = stand_in_from_env().ok_or_else(|| {
        format!(
            "cannot restore {}: it was the connection to the task's PMIx server, and no stand-in for \
             that server runs (it does when the task resumes with its job under `ckpt slurm-task`)",
            e.who
        )
    })?;
    let to = match at.ip() {
        std::net::IpAddr::V4(v) if e.sock.family == libc::AF_INET6 => {
            let mut m = vec![0u8; 10];
            m.extend_from_slice(&[0xff, 0xff]);
            m.extend_from_slice(&v.octets());
            m
        }
        std::net::IpAddr::V4(v) => v.octets().to_vec(),
        std::net::IpAddr::V6(v) => v.octets().to_vec(),
    };
    let to = Addr {
        ip: to,
        port: at.port(),
    };
    // SAFETY: no pointers.
    let fd = unsafe { libc::socket(e.sock.family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(err("socket"));
    }
    let r = (|| {
        size_buffers(fd, e, 0, 0)?;
        let (ss, len) = sockaddr(e.sock.family, &to)?;
        // SAFETY: connect with a valid address of `len` bytes.
        if unsafe { libc::connect(fd, (&ss as *const libc::sockaddr_storage).cast(), len) } != 0 {
            return Err(format!(
                "cannot restore {}: connecting to the PMIx stand-in at {to}: {}",
                e.who,
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: send from our buffer of that length.
        let n = unsafe { libc::send(fd, token.as_ptr().cast(), token.len(), libc::MSG_NOSIGNAL) };
        if n != token.len() as isize {
            return Err(format!("cannot restore {}: {}", e.who, err("send")));
        }
        Ok(fd)
    })();
    if r.is_err() {
        close(fd);
    }
    r
}

/// Where and how long the ends of the job's connections between tasks meet.
#[derive(Clone, Debug)]
pub struct Meeting {
    /// A directory of the user's own, seen by every node of the job, that
    /// is the same for every task of one restart of the job.
    pub dir: PathBuf,
    /// How long an end waits for its other end's task to get there.
    pub wait: Duration,
}

impl Meeting {
    /// The meeting place `ckpt slurm-task` named, if any.
    pub fn from_env() -> Option<Meeting> {
        let dir = std::env::var_os(ENV_MEETING)?;
        Some(Meeting {
            dir: PathBuf::from(dir),
            wait: Duration::from_secs(300),
        })
    }
}

/// The name both ends give a connection, and whether this end listens:
/// the two saved addresses in order.
pub fn key(local: &Addr, peer: &Addr) -> (String, bool) {
    let word = |a: &Addr| {
        let mut s: String = a.canonical().iter().map(|b| format!("{b:02x}")).collect();
        s.push_str(&format!("-{}", a.port));
        s
    };
    let (l, p) = (word(local), word(peer));
    if l < p {
        (format!("{l}_{p}"), true)
    } else {
        (format!("{p}_{l}"), false)
    }
}

/// The addresses of this node a connector of `family` may reach a
/// listening socket at: every address of an interface that is up, the
/// node's own first, loopback last, IPv6 link-local ones left out (they
/// need an interface to be named).
pub fn node_addresses(family: i32) -> Vec<Addr> {
    let mut out = Vec::new();
    let mut ifa: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates the list it returns in `ifa`.
    if unsafe { libc::getifaddrs(&mut ifa) } != 0 {
        return out;
    }
    let mut p = ifa;
    while !p.is_null() {
        // SAFETY: p is a node of the list getifaddrs returned.
        let i = unsafe { &*p };
        p = i.ifa_next;
        if i.ifa_addr.is_null() || i.ifa_flags & libc::IFF_UP as u32 == 0 {
            continue;
        }
        // SAFETY: ifa_addr points at a sockaddr of the family it names.
        let fam = i32::from(unsafe { (*i.ifa_addr).sa_family });
        if fam == libc::AF_INET {
            // SAFETY: an AF_INET address is a sockaddr_in.
            let sin = unsafe { &*(i.ifa_addr as *const libc::sockaddr_in) };
            let v4 = sin.sin_addr.s_addr.to_ne_bytes().to_vec();
            let ip = if family == libc::AF_INET6 {
                let mut m = vec![0u8; 10];
                m.extend_from_slice(&[0xff, 0xff]);
                m.extend_from_slice(&v4);
                m
            } else {
                v4
            };
            out.push(Addr { ip, port: 0 });
        } else if fam == libc::AF_INET6 && family == libc::AF_INET6 {
            // SAFETY: an AF_INET6 address is a sockaddr_in6.
            let sin6 = unsafe { &*(i.ifa_addr as *const libc::sockaddr_in6) };
            let b = sin6.sin6_addr.s6_addr;
            if b[0] == 0xfe && b[1] & 0xc0 == 0x80 {
                continue;
            }
            out.push(Addr {
                ip: b.to_vec(),
                port: 0,
            });
        }
    }
    // SAFETY: the list getifaddrs returned, freed once.
    unsafe { libc::freeifaddrs(ifa) };
    out.sort_by_key(Addr::is_loopback);
    out.dedup();
    out
}

/// What a published file says: the port, the token, the addresses.
/// This machine's host name.
fn host_name() -> String {
    let mut b = [0u8; 256];
    // SAFETY: gethostname writes at most that many bytes into our buffer.
    if unsafe { libc::gethostname(b.as_mut_ptr().cast(), b.len()) } != 0 {
        return String::new();
    }
    let n = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..n]).into_owned()
}

/// What a published file says: the port, the token, the addresses and the
/// listener's host name.
struct Published {
    token: [u8; 16],
    addrs: Vec<Addr>,
    host: String,
}

fn parse_published(text: &str) -> Option<Published> {
    let mut lines = text.lines();
    if lines.next()? != "ckpt-rendezvous 1" {
        return None;
    }
    let port: u16 = lines.next()?.trim().parse().ok()?;
    let tok = lines.next()?.trim();
    let mut token = [0u8; 16];
    if tok.len() != 32 {
        return None;
    }
    for (i, t) in token.iter_mut().enumerate() {
        *t = u8::from_str_radix(tok.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    let mut host = String::new();
    let addrs = lines
        .filter(|l| match l.strip_prefix("host ") {
            Some(h) => {
                host = h.trim().to_string();
                false
            }
            None => true,
        })
        .filter_map(|l| l.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| Addr {
            ip: match ip {
                std::net::IpAddr::V4(v) => v.octets().to_vec(),
                std::net::IpAddr::V6(v) => v.octets().to_vec(),
            },
            port,
        })
        .collect();
    Some(Published { token, addrs, host })
}

fn published(port: u16, token: &[u8; 16], addrs: &[Addr]) -> String {
    let mut s = format!("ckpt-rendezvous 1\n{port}\n");
    for b in token {
        s.push_str(&format!("{b:02x}"));
    }
    s.push('\n');
    s.push_str(&format!("host {}\n", host_name()));
    for a in addrs {
        let ip = match a.ip.len() {
            4 => std::net::IpAddr::from([a.ip[0], a.ip[1], a.ip[2], a.ip[3]]),
            _ => {
                let mut b = [0u8; 16];
                b.copy_from_slice(&a.ip[..16]);
                std::net::IpAddr::from(b)
            }
        };
        s.push_str(&format!("{ip}\n"));
    }
    s
}

#[derive(Debug, PartialEq, Eq)]
enum Stage {
    /// Listening end: waiting for its connector.
    Accepting,
    /// Connecting end: waiting for the listener's file.
    Waiting,
    /// Connecting end: `connect` in progress to address `n` of the file.
    Connecting(usize),
    /// Connected: exchanging the queued bytes.
    Talking,
    Done,
}

/// One end of one connection on its way back.
struct End<'a, 'e> {
    e: &'a SavedEnd<'e>,
    key: String,
    listens: bool,
    stage: Stage,
    /// The listening socket (listening end), until accepted.
    lfd: i32,
    /// The connection.
    fd: i32,
    token: [u8; 16],
    addrs: Vec<Addr>,
    since: Instant,
    /// What this end writes: its hello, then the peer's queued bytes.
    out: Vec<u8>,
    sent: usize,
    /// What it reads of the other end's hello: its header, then its bytes.
    got: Vec<u8>,
    /// The hello's header length (token and length, or length).
    head: usize,
    /// Whether the whole hello was read.
    heard: bool,
}

impl End<'_, '_> {
    fn who(&self) -> &str {
        &self.e.who
    }

    /// Bytes of the other end's hello still to read.
    fn need(&self) -> usize {
        if self.got.len() < self.head {
            return self.head - self.got.len();
        }
        let len = u64::from_le_bytes(
            self.got[self.head - 8..self.head]
                .try_into()
                .unwrap_or([0; 8]),
        ) as usize;
        (self.head + len).saturating_sub(self.got.len())
    }
}

fn new_socket(e: &SavedEnd<'_>) -> Result<i32, String> {
    // SAFETY: no pointers.
    let fd = unsafe {
        libc::socket(
            e.sock.family,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(err("socket"));
    }
    if e.sock.family == libc::AF_INET6 {
        // Reachable by IPv4 too (the published addresses may be mapped ones).
        let _ = set(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 0);
    }
    // Room for the bytes going each way, before the window is set; left to
    // the kernel's automatic sizing when there are few.
    let room = e.data.len();
    if let Err(x) = size_buffers(fd, e, room, room) {
        close(fd);
        return Err(x);
    }
    Ok(fd)
}

fn random_token() -> [u8; 16] {
    let mut t = [0u8; 16];
    // SAFETY: getrandom writing into our buffer of that size.
    let n = unsafe { libc::getrandom(t.as_mut_ptr().cast(), t.len(), 0) };
    if n != t.len() as isize {
        // Not secret, only distinct: the time and pid do.
        let x = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
            ^ u128::from(std::process::id());
        t = x.to_le_bytes();
    }
    t
}

/// Starts a non-blocking `connect` of `x` to `to`: `Ok(true)` when done.
fn start_connect(x: &End<'_, '_>, to: &Addr) -> Result<bool, std::io::Error> {
    let (ss, len) = sockaddr(x.e.sock.family, to).map_err(std::io::Error::other)?;
    // SAFETY: connect with a valid address of `len` bytes.
    let r = unsafe { libc::connect(x.fd, (&ss as *const libc::sockaddr_storage).cast(), len) };
    if r == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EINPROGRESS) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Makes every connection of `ends` (this task's ends of connections to
/// other tasks of the job) again with its other end, which the other
/// task's init makes at the same time. Returns saved inode -> descriptor
/// (blocking, close-on-exec), each holding exactly the bytes it had
/// received and not read, nothing else read from it.
pub fn join(ends: &[&SavedEnd<'_>], m: &Meeting) -> Result<HashMap<u64, i32>, String> {
    let dir = MeetingDir::open(&m.dir).map_err(|e| {
        format!("cannot restore the job's connections between tasks: the meeting directory {e}")
    })?;
    let mut all: Vec<End<'_, '_>> = Vec::new();
    let r = drive(ends, m, &dir, &mut all);
    let mut fds = HashMap::new();
    for x in &all {
        if x.lfd >= 0 {
            close(x.lfd);
        }
        if x.listens {
            dir.remove(&x.key);
        }
        if r.is_ok() && x.stage == Stage::Done {
            fds.insert(x.e.inode, x.fd);
        } else if x.fd >= 0 {
            close(x.fd);
        }
    }
    r.map(|()| fds)
}

fn drive<'a, 'e>(
    ends: &[&'a SavedEnd<'e>],
    m: &Meeting,
    dir: &MeetingDir,
    all: &mut Vec<End<'a, 'e>>,
) -> Result<(), String> {
    for e in ends {
        let peer = e.sock.peer.clone().unwrap_or_default();
        let (key, listens) = key(&e.sock.local, &peer);
        let mut x = End {
            e,
            key,
            listens,
            stage: if listens {
                Stage::Accepting
            } else {
                Stage::Waiting
            },
            lfd: -1,
            fd: -1,
            token: [0; 16],
            addrs: Vec::new(),
            since: Instant::now(),
            out: Vec::new(),
            sent: 0,
            got: Vec::new(),
            head: if listens { 24 } else { 8 },
            heard: false,
        };
        if listens {
            // Listen first, everywhere, so that no task waits on another
            // that waits on it.
            x.lfd = new_socket(e)?;
            let any = Addr {
                ip: vec![
                    0;
                    if e.sock.family == libc::AF_INET6 {
                        16
                    } else {
                        4
                    }
                ],
                port: 0,
            };
            let (ss, len) = sockaddr(e.sock.family, &any)?;
            // SAFETY: bind with a valid address of `len` bytes.
            let bound =
                unsafe { libc::bind(x.lfd, (&ss as *const libc::sockaddr_storage).cast(), len) };
            // SAFETY: no pointers.
            if bound != 0 || unsafe { libc::listen(x.lfd, 4) } != 0 {
                let why = err("listen");
                close(x.lfd);
                return Err(format!("cannot restore {}: {why}", e.who));
            }
            x.token = random_token();
            let text = published(port_of(x.lfd), &x.token, &node_addresses(e.sock.family));
            if let Err(why) = dir.publish(&x.key, &text) {
                close(x.lfd);
                return Err(format!(
                    "cannot restore {}: publishing its address: {why}",
                    e.who
                ));
            }
        }
        all.push(x);
    }
    let deadline = Instant::now() + m.wait;
    loop {
        if all.iter().all(|x| x.stage == Stage::Done) {
            return Ok(());
        }
        if Instant::now() > deadline {
            let x = all.iter().find(|x| x.stage != Stage::Done);
            return Err(match x {
                Some(x) => format!(
                    "cannot restore {}: its other end ({}), in another task of the job, did not come back within {} s",
                    x.who(),
                    x.e.sock.peer.clone().unwrap_or_default(),
                    m.wait.as_secs()
                ),
                None => "internal error".into(),
            });
        }
        let mut pfds: Vec<libc::pollfd> = Vec::new();
        let mut whose: Vec<usize> = Vec::new();
        for (i, x) in all.iter_mut().enumerate() {
            let ev = match x.stage {
                Stage::Accepting => Some((x.lfd, libc::POLLIN)),
                Stage::Connecting(_) => Some((x.fd, libc::POLLOUT)),
                Stage::Talking => {
                    let mut ev = 0;
                    if !x.heard {
                        ev |= libc::POLLIN;
                    }
                    if x.sent < x.out.len() {
                        ev |= libc::POLLOUT;
                    }
                    Some((x.fd, ev))
                }
                Stage::Waiting | Stage::Done => None,
            };
            if let Some((fd, events)) = ev {
                pfds.push(libc::pollfd {
                    fd,
                    events,
                    revents: 0,
                });
                whose.push(i);
            }
        }
        let waiting = all.iter().any(|x| x.stage == Stage::Waiting);
        let timeout = if waiting || pfds.is_empty() { 50 } else { 500 };
        // SAFETY: poll over our array of that length.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout) };
        if n < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return Err(err("poll"));
        }
        for (p, &i) in pfds.iter().zip(&whose) {
            if p.revents != 0 {
                step(&mut all[i], p.revents, dir)?;
            }
        }
        for x in all.iter_mut().filter(|x| x.stage == Stage::Waiting) {
            look(x, dir)?;
        }
        for x in all.iter_mut() {
            if let Stage::Connecting(n) = x.stage
                && x.since.elapsed() > Duration::from_secs(3)
            {
                // No answer from that address: the next one.
                retry(x, n + 1)?;
            }
            if x.listens
                && x.stage == Stage::Talking
                && !x.heard
                && x.since.elapsed() > Duration::from_secs(10)
            {
                // A connection that does not say who it is: not ours.
                lost(x)?;
            }
        }
    }
}

/// A connecting end reads the listener's file and starts connecting.
fn look(x: &mut End<'_, '_>, dir: &MeetingDir) -> Result<(), String> {
    let Some(p) = dir.read(&x.key).and_then(|t| parse_published(&t)) else {
        return Ok(());
    };
    // On another machine, an address this machine has too (loopback, a
    // container bridge such as docker0) reaches this machine, not the
    // listener's: the token and the bytes must not go there.
    let addrs: Vec<Addr> = if p.host != host_name() {
        let own = node_addresses(x.e.sock.family);
        p.addrs
            .into_iter()
            .filter(|a| !a.is_loopback() && !own.iter().any(|o| o.canonical() == a.canonical()))
            .collect()
    } else {
        p.addrs
    };
    if addrs.is_empty() {
        return Ok(());
    }
    x.token = p.token;
    x.addrs = addrs;
    retry(x, 0)
}

/// Connects `x` to published address `n`, or waits for the file again.
fn retry(x: &mut End<'_, '_>, mut n: usize) -> Result<(), String> {
    if x.fd >= 0 {
        close(x.fd);
        x.fd = -1;
    }
    while n < x.addrs.len() {
        x.fd = new_socket(x.e)?;
        x.since = Instant::now();
        match start_connect(x, &x.addrs[n].clone()) {
            Ok(true) => {
                hello(x);
                return Ok(());
            }
            Ok(false) => {
                x.stage = Stage::Connecting(n);
                return Ok(());
            }
            Err(_) => {
                close(x.fd);
                x.fd = -1;
                n += 1;
            }
        }
    }
    // None answered: the file may be a previous try's; read it again.
    x.stage = Stage::Waiting;
    Ok(())
}

/// The connector's hello: the token, then its queued bytes.
fn hello(x: &mut End<'_, '_>) {
    x.out.clear();
    x.out.extend_from_slice(&x.token);
    x.out
        .extend_from_slice(&(x.e.data.len() as u64).to_le_bytes());
    x.out.extend_from_slice(&x.e.data);
    x.stage = Stage::Talking;
}

fn step(x: &mut End<'_, '_>, revents: i16, dir: &MeetingDir) -> Result<(), String> {
    match x.stage {
        Stage::Accepting => {
            // SAFETY: accept without the peer's address.
            let fd = unsafe {
                libc::accept4(
                    x.lfd,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            if fd >= 0 {
                x.fd = fd;
                x.got.clear();
                x.since = Instant::now();
                x.stage = Stage::Talking;
            }
            Ok(())
        }
        Stage::Connecting(n) => {
            if get(x.fd, libc::SOL_SOCKET, libc::SO_ERROR) == 0
                && revents & (libc::POLLERR | libc::POLLHUP) == 0
            {
                hello(x);
                Ok(())
            } else {
                retry(x, n + 1)
            }
        }
        Stage::Talking => talk(x, revents, dir),
        Stage::Waiting | Stage::Done => Ok(()),
    }
}

fn talk(x: &mut End<'_, '_>, revents: i16, dir: &MeetingDir) -> Result<(), String> {
    if revents & libc::POLLIN != 0 && !x.heard {
        let need = x.need();
        let mut buf = vec![0u8; need.min(1 << 20)];
        // SAFETY: recv into our buffer of that length, exactly what is owed.
        let n = unsafe { libc::recv(x.fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n == 0 || n < 0 && revents & (libc::POLLERR | libc::POLLHUP) != 0 {
            return lost(x);
        }
        if n > 0 {
            x.got.extend_from_slice(&buf[..n as usize]);
        }
        if x.listens && x.got.len() >= 16 && x.got[..16] != x.token {
            // Not our connector (a stray connection): wait for ours.
            close(x.fd);
            x.fd = -1;
            x.stage = Stage::Accepting;
            return Ok(());
        }
        if x.got.len() >= x.head && x.need() == 0 {
            x.heard = true;
            let theirs = x.got[x.head..].to_vec();
            if x.listens {
                // The answer, then the connector's own bytes back to it.
                dir.remove(&x.key);
                x.out.clear();
                x.out
                    .extend_from_slice(&(x.e.data.len() as u64).to_le_bytes());
                x.out.extend_from_slice(&x.e.data);
                x.out.extend_from_slice(&theirs);
            } else {
                x.out.extend_from_slice(&theirs);
            }
        }
    }
    if x.sent < x.out.len() && revents & libc::POLLOUT != 0 {
        // SAFETY: send from our buffer, without blocking.
        let n = unsafe {
            libc::send(
                x.fd,
                x.out[x.sent..].as_ptr().cast(),
                x.out.len() - x.sent,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n > 0 {
            x.sent += n as usize;
        } else if n < 0 {
            let e = std::io::Error::last_os_error().raw_os_error();
            if e != Some(libc::EAGAIN) && e != Some(libc::EINTR) {
                return lost(x);
            }
        }
    }
    if x.heard && x.sent == x.out.len() {
        // SAFETY: clearing O_NONBLOCK on our socket; the descriptor's own
        // flags are set when the processes take it.
        unsafe {
            let fl = libc::fcntl(x.fd, libc::F_GETFL);
            libc::fcntl(x.fd, libc::F_SETFL, fl & !libc::O_NONBLOCK);
        }
        x.stage = Stage::Done;
    }
    Ok(())
}

fn lost(x: &mut End<'_, '_>) -> Result<(), String> {
    if x.listens || !x.heard {
        // A connector that gave up on us (a previous try) or a stray
        // connection: wait for the next. A listener that closed before
        // answering (the file was a previous try's, and the port someone
        // else's): read the file again.
        close(x.fd);
        x.fd = -1;
        x.out.clear();
        x.sent = 0;
        x.got.clear();
        x.heard = false;
        x.stage = if x.listens {
            Stage::Accepting
        } else {
            Stage::Waiting
        };
        return Ok(());
    }
    Err(format!(
        "cannot restore {}: the other end's task closed the new connection before the queued bytes were exchanged",
        x.who()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::inet_socket::{InetSocket, tcp_state};

    fn sock(local: [u8; 4], lport: u16, peer: [u8; 4], pport: u16) -> InetSocket {
        InetSocket {
            family: libc::AF_INET,
            ty: libc::SOCK_STREAM,
            tcp_state: tcp_state::ESTABLISHED,
            local: Addr {
                ip: local.to_vec(),
                port: lport,
            },
            peer: Some(Addr {
                ip: peer.to_vec(),
                port: pport,
            }),
            ..Default::default()
        }
    }

    fn end<'a>(s: &'a InetSocket, inode: u64, data: &[u8]) -> SavedEnd<'a> {
        SavedEnd {
            inode,
            sock: s,
            data: data.to_vec(),
            stdio_only: false,
            reset_outside: false,
            across: true,
            stand_in: false,
            inherited: false,
            who: format!("socket {inode}"),
        }
    }

    fn recv_all(fd: i32, want: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 65536];
        while out.len() < want {
            // SAFETY: recv into our buffer.
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
            assert!(n > 0, "recv: {n}");
            out.extend_from_slice(&buf[..n as usize]);
        }
        out
    }

    #[test]
    fn keys_are_the_same_from_both_ends_and_one_end_listens() {
        let a = Addr {
            ip: vec![10, 0, 0, 1],
            port: 4000,
        };
        let b = Addr {
            ip: vec![10, 0, 0, 2],
            port: 50000,
        };
        let (k1, l1) = key(&a, &b);
        let (k2, l2) = key(&b, &a);
        assert_eq!(k1, k2);
        assert_ne!(l1, l2);
        let text = published(1234, &[7; 16], &[a.clone(), b.clone()]);
        let p = parse_published(&text).unwrap();
        assert_eq!((p.token, p.host), ([7; 16], host_name()));
        assert_eq!(p.addrs.len(), 2);
        assert_eq!(p.addrs[1].ip, b.ip);
        assert_eq!(p.addrs[1].port, 1234);
        assert!(parse_published("something else\n").is_none());
    }

    /// Two "tasks" (threads), each with one end that listens and one that
    /// connects, meet in one directory: every connection comes back with
    /// each end's queued bytes, and what is written next follows them.
    #[test]
    fn two_tasks_make_their_connections_again_with_the_queued_bytes() {
        let dir = std::env::temp_dir().join(format!("ckpt-across-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let m = Meeting {
            dir: dir.clone(),
            wait: Duration::from_secs(20),
        };
        // Connection X: task 1 at 10.0.0.1:4000, task 2 at 10.0.0.2:40000.
        // Connection Y: task 1 at 10.0.0.1:41000, task 2 at 10.0.0.2:5000.
        let x1 = sock([10, 0, 0, 1], 4000, [10, 0, 0, 2], 40000);
        let x2 = sock([10, 0, 0, 2], 40000, [10, 0, 0, 1], 4000);
        let y1 = sock([10, 0, 0, 1], 41000, [10, 0, 0, 2], 5000);
        let y2 = sock([10, 0, 0, 2], 5000, [10, 0, 0, 1], 41000);
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let m2 = m.clone();
        let (x2c, y2c, big2) = (x2.clone(), y2.clone(), big.clone());
        let t2 = std::thread::spawn(move || {
            let ex = end(&x2c, 21, b"queued at task 2 on X");
            let ey = end(&y2c, 22, &big2);
            let fds = join(&[&ex, &ey], &m2).unwrap();
            (fds[&21], fds[&22])
        });
        let ex = end(&x1, 11, &big);
        let ey = end(&y1, 12, b"");
        let fds = join(&[&ex, &ey], &m).unwrap();
        let (a_x, a_y) = (fds[&11], fds[&12]);
        let (b_x, b_y) = t2.join().unwrap();
        // Each end holds what it held, then what the other end writes next.
        for (fd, more) in [(b_x, b"next".as_slice()), (a_y, b"also".as_slice())] {
            let peer = if fd == b_x { a_x } else { b_y };
            // SAFETY: writing a small buffer to a connected socket.
            unsafe { libc::send(peer, more.as_ptr().cast(), more.len(), 0) };
        }
        assert_eq!(recv_all(a_x, big.len()), big);
        assert_eq!(recv_all(b_x, 25), b"queued at task 2 on Xnext");
        assert_eq!(recv_all(b_y, big.len()), big);
        assert_eq!(recv_all(a_y, 4), b"also");
        for fd in [a_x, a_y, b_x, b_y] {
            // SAFETY: F_GETFL on our socket.
            let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
            assert_eq!(fl & libc::O_NONBLOCK, 0);
            close(fd);
        }
        // The published files are gone.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
