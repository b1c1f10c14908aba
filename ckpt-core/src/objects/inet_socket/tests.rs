//! Round trips: real TCP and UDP sockets of this process → capture → JSON →
//! serde → restore → the same addresses, queued bytes, options and shutdown
//! state; and the plan's refusals.

use std::os::fd::AsRawFd as _;
use std::os::unix::fs::FileExt as _;

use super::*;

fn inode(fd: i32) -> u64 {
    // SAFETY: stat is plain old data.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat into a local.
    assert_eq!(unsafe { libc::fstat(fd, &mut st) }, 0);
    st.st_ino
}

fn close(fd: i32) {
    // SAFETY: test descriptors.
    unsafe { libc::close(fd) };
}

fn send(fd: i32, b: &[u8]) {
    let mut done = 0;
    while done < b.len() {
        // SAFETY: sending from a local buffer.
        let n = unsafe { libc::send(fd, b[done..].as_ptr().cast(), b.len() - done, 0) };
        assert!(n > 0, "send: {}", std::io::Error::last_os_error());
        done += n as usize;
    }
}

/// Read until `n` bytes arrived or end of file (then fewer).
fn recv_n(fd: i32, n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut b = vec![0u8; 1 << 16];
    while out.len() < n {
        // SAFETY: receiving into a local buffer.
        let r = unsafe { libc::recv(fd, b.as_mut_ptr().cast(), b.len().min(n - out.len()), 0) };
        assert!(r >= 0, "recv: {}", std::io::Error::last_os_error());
        if r == 0 {
            break;
        }
        out.extend_from_slice(&b[..r as usize]);
    }
    out
}

/// Equal bytes, or a short message saying where they differ.
fn same(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let at = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "{what}: {} bytes, wanted {}; first difference at {at:?}",
            got.len(),
            want.len()
        );
    }
}

fn set(fd: i32, level: i32, opt: i32, v: i32) {
    // SAFETY: setsockopt reading an int from a local.
    let r = unsafe { libc::setsockopt(fd, level, opt, (&v as *const i32).cast(), 4) };
    assert_eq!(r, 0);
}

fn get(fd: i32, level: i32, opt: i32) -> i32 {
    getsockopt_int(fd, level, opt).unwrap()
}

fn name(fd: i32, peer: bool) -> AddrBuf {
    AddrBuf::get(if peer { 52 } else { 51 }, fd).unwrap()
}

fn tempfile() -> std::fs::File {
    let p = std::env::temp_dir().join(format!(
        "ckpt-inet-test-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    std::fs::remove_file(&p).unwrap();
    f
}

/// Capture `fd`; return the state and its queued bytes.
fn take(fd: i32, family: i32) -> (InetSocket, Vec<u8>) {
    let img = tempfile();
    let nl = super::super::unix_socket::open_diag().unwrap();
    let mut j = MmapBuf::new();
    let mut off = 4096u64;
    // Held back and written after, as in a snapshot child.
    let mut out = crate::signal_safe::deferred::DeferredWrites::new(img.as_raw_fd(), true);
    let h = Held {
        fd,
        ino: inode(fd),
        family,
    };
    capture(h, nl, &mut out, &mut off, &mut j).unwrap();
    out.flush().unwrap();
    let text = String::from_utf8(j.as_slice().to_vec()).unwrap();
    j.free();
    close(nl);
    let s: InetSocket = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
    let mut data = Vec::new();
    if let Some([o, l]) = s.data {
        assert_eq!(o, 4096);
        assert!(off >= o + l && off.is_multiple_of(4096));
        data = vec![0u8; l as usize];
        img.read_exact_at(&mut data, o).unwrap();
        assert_eq!(crate::image::checksum::crc32c(&data), s.crc);
    }
    (s, data)
}

fn tcp(family: i32) -> i32 {
    // SAFETY: no pointers.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0);
    set(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1);
    fd
}

fn loopback(family: i32, port: u16) -> Addr {
    Addr {
        ip: if family == libc::AF_INET {
            vec![127, 0, 0, 1]
        } else {
            let mut v = vec![0u8; 16];
            v[15] = 1;
            v
        },
        port,
    }
}

fn bind_listen(fd: i32, family: i32) {
    let (ss, len) = restore_sockaddr(family, &loopback(family, 0));
    // SAFETY: bind with a valid address.
    let r = unsafe { libc::bind(fd, (&ss as *const libc::sockaddr_storage).cast(), len) };
    assert_eq!(r, 0);
    // SAFETY: no pointers.
    assert_eq!(unsafe { libc::listen(fd, 7) }, 0);
}

fn restore_sockaddr(family: i32, a: &Addr) -> (libc::sockaddr_storage, u32) {
    // The restore's own conversion, through a bind-free path: build it the
    // same way the restore does.
    restore::test_sockaddr(family, a)
}

fn connect_to(fd: i32, family: i32, port: u16) {
    let (ss, len) = restore_sockaddr(family, &loopback(family, port));
    // SAFETY: connect with a valid address.
    let r = unsafe { libc::connect(fd, (&ss as *const libc::sockaddr_storage).cast(), len) };
    assert_eq!(r, 0);
}

fn accept(fd: i32) -> i32 {
    // SAFETY: accept, no address.
    let a = unsafe {
        libc::accept4(
            fd,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    assert!(a >= 0);
    a
}

/// Restores the saved sockets (`taken`, one per inode of `inodes`) and
/// checks that each has its own and its peer's address of `names` again;
/// the new descriptors by inode.
fn restore_named(
    taken: &[(InetSocket, Vec<u8>)],
    inodes: &[u64],
    names: &[(AddrBuf, Option<AddrBuf>)],
) -> std::collections::HashMap<u64, i32> {
    let ends: Vec<SavedEnd<'_>> = taken
        .iter()
        .zip(inodes)
        .map(|((s, d), &ino)| end(ino, s, d.clone()))
        .collect();
    let made = restore_all(&ends).unwrap_or_else(|e| panic!("{e}"));
    for (k, (own, peer)) in names.iter().enumerate() {
        let fd = made[&inodes[k]];
        assert_eq!(name(fd, false), *own, "socket {k}");
        assert_eq!(AddrBuf::get(52, fd).ok(), *peer, "socket {k}");
    }
    made
}

fn end(ino: u64, s: &InetSocket, data: Vec<u8>) -> SavedEnd<'_> {
    SavedEnd {
        inode: ino,
        sock: s,
        data,
        stdio_only: false,
        reset_outside: false,
        across: false,
        stand_in: false,
        inherited: false,
        who: format!("socket {ino}"),
    }
}

fn round_trip(family: i32) {
    let l = tcp(family);
    bind_listen(l, family);
    let port = name(l, false).port;
    let c = tcp(family);
    set(c, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1);
    set(c, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
    set(c, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 77);
    connect_to(c, family, port);
    let s = accept(l);
    // A second connection, half-closed by the server after its last bytes,
    // and a third not accepted yet.
    let c2 = tcp(family);
    connect_to(c2, family, port);
    let s2 = accept(l);
    let c3 = tcp(family);
    connect_to(c3, family, port);
    let to_server: Vec<u8> = (0..100_000u32).map(|i| (i * 7 + 3) as u8).collect();
    let to_client: Vec<u8> = (0..1000u32).map(|i| (i * 13) as u8).collect();
    send(c, &to_server);
    send(s, &to_client);
    send(s2, b"last words");
    // SAFETY: shutdown of a test socket.
    unsafe { libc::shutdown(s2, libc::SHUT_WR) };
    std::thread::sleep(std::time::Duration::from_millis(50));
    let fds = [l, c, s, c2, s2, c3];
    let inodes: Vec<u64> = fds.iter().map(|&f| inode(f)).collect();
    let names: Vec<(AddrBuf, Option<AddrBuf>)> = fds
        .iter()
        .map(|&f| (name(f, false), AddrBuf::get(52, f).ok()))
        .collect();
    let taken: Vec<(InetSocket, Vec<u8>)> = fds.iter().map(|&f| take(f, family)).collect();
    assert_eq!(taken[0].0.tcp_state, tcp_state::LISTEN);
    assert_eq!(taken[0].0.backlog, 7);
    assert_eq!(taken[0].0.accept_queue, 1);
    assert_eq!(taken[1].0.peer_is, Peer::Socket);
    assert_eq!(taken[1].0.peer_inode, inodes[2]);
    same(&taken[2].1, &to_server, "queued at the server");
    same(&taken[1].1, &to_client, "queued at the client");
    same(&taken[3].1, b"last words", "queued before the end of file");
    assert_eq!(taken[4].0.shutdown & 2, 2);
    assert_eq!(taken[5].0.peer_is, Peer::Pending);
    assert!(taken.iter().all(|(t, _)| t.validate().is_ok()));
    assert!(taken[1].0.opts.nodelay && taken[1].0.opts.keepalive);
    assert_eq!(taken[1].0.opts.keep[0], 77);
    // The capture consumed nothing: the originals still read it all.
    same(
        &recv_n(s, to_server.len()),
        &to_server,
        "the original still reads",
    );
    for f in fds {
        close(f);
    }
    let made = restore_named(&taken, &inodes, &names);
    let fd = |k: usize| made[&inodes[k]];
    same(
        &recv_n(fd(2), to_server.len()),
        &to_server,
        "restored server reads",
    );
    same(
        &recv_n(fd(1), to_client.len()),
        &to_client,
        "restored client reads",
    );
    same(&recv_n(fd(3), 100), b"last words", "then end of file");
    assert!(get(fd(1), libc::IPPROTO_TCP, libc::TCP_NODELAY) != 0);
    assert_eq!(get(fd(1), libc::IPPROTO_TCP, libc::TCP_KEEPIDLE), 77);
    // The pending connection is accepted now, and new ones too.
    let s3 = accept(fd(0));
    assert_eq!(name(s3, true), names[5].0);
    send(fd(5), b"hello");
    assert_eq!(recv_n(s3, 5), b"hello");
    close(s3);
    for f in made.values() {
        close(*f);
    }
}

#[test]
fn tcp_ipv4_round_trip() {
    round_trip(libc::AF_INET);
}

#[test]
fn tcp_ipv6_round_trip() {
    round_trip(libc::AF_INET6);
}

/// A dual-stack listener (`::`, not v6-only, as Node.js listens by
/// default) accepts an IPv4 client: the accepted end is an IPv6 socket with
/// v4-mapped addresses, the client an IPv4 one.
#[test]
fn dual_stack_round_trip() {
    let l = tcp(libc::AF_INET6);
    set(l, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 0);
    let any = Addr {
        ip: vec![0u8; 16],
        port: 0,
    };
    let (ss, len) = restore_sockaddr(libc::AF_INET6, &any);
    // SAFETY: bind with a valid address.
    let r = unsafe { libc::bind(l, (&ss as *const libc::sockaddr_storage).cast(), len) };
    assert_eq!(r, 0);
    // SAFETY: no pointers.
    assert_eq!(unsafe { libc::listen(l, 4) }, 0);
    let port = name(l, false).port;
    let c = tcp(libc::AF_INET);
    connect_to(c, libc::AF_INET, port);
    let a = accept(l);
    send(c, b"to the server");
    send(a, b"to the client");
    std::thread::sleep(std::time::Duration::from_millis(20));
    let fds = [(l, libc::AF_INET6), (c, libc::AF_INET), (a, libc::AF_INET6)];
    let inodes: Vec<u64> = fds.iter().map(|&(f, _)| inode(f)).collect();
    let names: Vec<(AddrBuf, Option<AddrBuf>)> = fds
        .iter()
        .map(|&(f, _)| (name(f, false), AddrBuf::get(52, f).ok()))
        .collect();
    let taken: Vec<(InetSocket, Vec<u8>)> = fds.iter().map(|&(f, fam)| take(f, fam)).collect();
    assert_eq!(taken[1].0.peer_is, Peer::Socket, "{:?}", taken[1].0);
    assert_eq!(taken[1].0.peer_inode, inodes[2]);
    assert_eq!(taken[2].0.peer_inode, inodes[1]);
    for (f, _) in fds {
        close(f);
    }
    let made = restore_named(&taken, &inodes, &names);
    same(
        &recv_n(made[&inodes[2]], 13),
        b"to the server",
        "accepted end",
    );
    same(
        &recv_n(made[&inodes[1]], 13),
        b"to the client",
        "client end",
    );
    assert_eq!(
        get(made[&inodes[0]], libc::IPPROTO_IPV6, libc::IPV6_V6ONLY),
        0
    );
    for f in made.values() {
        close(*f);
    }
}

/// A connection both ends shut down, still held by the program: ended,
/// refused (a restored socket would answer reads differently); a socket
/// never connected is not.
#[test]
fn ended_connections_are_refused() {
    let l = tcp(libc::AF_INET);
    bind_listen(l, libc::AF_INET);
    let c = tcp(libc::AF_INET);
    connect_to(c, libc::AF_INET, name(l, false).port);
    let a = accept(l);
    for f in [c, a] {
        // SAFETY: shutdown of a test socket.
        unsafe { libc::shutdown(f, libc::SHUT_WR) };
    }
    std::thread::sleep(std::time::Duration::from_millis(50));
    for f in [c, a] {
        let (t, _) = take(f, libc::AF_INET);
        assert!(t.ended, "{t:?}");
        let u = t.validate().unwrap_err();
        assert!(!u.passing && u.why.contains("has ended"), "{u:?}");
    }
    let fresh = tcp(libc::AF_INET);
    let (t, _) = take(fresh, libc::AF_INET);
    assert!(!t.ended && t.validate().is_ok(), "{t:?}");
    for f in [l, c, a, fresh] {
        close(f);
    }
}

#[test]
fn bytes_not_sent_yet_are_seen() {
    let l = tcp(libc::AF_INET);
    bind_listen(l, libc::AF_INET);
    let c = tcp(libc::AF_INET);
    connect_to(c, libc::AF_INET, name(l, false).port);
    let s = accept(l);
    // More than the receiver's window: the rest waits at the sender.
    let big = vec![7u8; 8 << 20];
    let mut done = 0usize;
    while done < big.len() {
        // SAFETY: sending from a local buffer without blocking.
        let n = unsafe {
            libc::send(
                c,
                big[done..].as_ptr().cast(),
                big.len() - done,
                libc::MSG_DONTWAIT,
            )
        };
        if n <= 0 {
            break;
        }
        done += n as usize;
    }
    let (t, _) = take(c, libc::AF_INET);
    assert!(t.unsent > 0, "{t:?}");
    // What the capture takes from sock_diag is what SIOCOUTQ says.
    let mut outq: i32 = 0;
    // SAFETY: SIOCOUTQ writes one int into the local.
    assert_eq!(unsafe { libc::ioctl(c, 0x5411, &mut outq) }, 0);
    assert_eq!(t.unsent, outq as u32);
    let u = t.validate().unwrap_err();
    assert!(
        u.passing && u.why.contains("have not reached the other end"),
        "{u:?}"
    );
    for f in [l, c, s] {
        close(f);
    }
}

#[test]
fn udp_round_trip() {
    // SAFETY: no pointers.
    let u = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    let (ss, len) = restore_sockaddr(libc::AF_INET, &loopback(libc::AF_INET, 0));
    // SAFETY: bind with a valid address.
    let r = unsafe { libc::bind(u, (&ss as *const libc::sockaddr_storage).cast(), len) };
    assert_eq!(r, 0);
    let own = name(u, false);
    let (s, _) = take(u, libc::AF_INET);
    assert!(!s.datagrams && s.peer.is_none());
    close(u);
    let made = restore_all(&[end(1, &s, Vec::new())]).unwrap();
    assert_eq!(name(made[&1], false), own);
    close(made[&1]);
}

fn sample(tcp_state: u8, peer_is: Peer, peer_inode: u64) -> InetSocket {
    InetSocket {
        family: libc::AF_INET,
        ty: libc::SOCK_STREAM,
        tcp_state,
        local: loopback(libc::AF_INET, 40000),
        peer: (peer_is != Peer::None).then(|| loopback(libc::AF_INET, 5000)),
        peer_is,
        peer_inode,
        ..InetSocket::default()
    }
}

#[test]
fn plan_refuses_what_leaves_the_job_and_waits_for_what_passes() {
    // A connection to a socket no process of the job holds.
    let a = sample(tcp_state::ESTABLISHED, Peer::Socket, 99);
    let r = plan(&[end(1, &a, Vec::new())]).unwrap_err();
    assert!(r.outside && !r.passing, "{r}");
    assert!(
        r.message.contains("127.0.0.1:40000 -> 127.0.0.1:5000"),
        "{r}"
    );
    // ... unless only at 0..2.
    let mut e = end(1, &a, Vec::new());
    e.stdio_only = true;
    assert_eq!(plan(&[e]).unwrap(), vec![Step::Stdio(1)]);
    // ... or the job asked for such connections to come back closed.
    let mut e = end(1, &a, Vec::new());
    e.reset_outside = true;
    assert_eq!(plan(&[e]).unwrap(), vec![Step::Reset(1)]);
    // ... or the task is part of a job checkpoint: kept for the batch step
    // to match with another task's end, made again with it at restart;
    // a connection still being set up passes.
    let mut e = end(1, &a, Vec::new());
    e.across = true;
    assert_eq!(plan(&[e]).unwrap(), vec![Step::Across(1)]);
    let pending = sample(tcp_state::ESTABLISHED, Peer::Pending, 0);
    let mut e = end(1, &pending, Vec::new());
    e.across = true;
    let r = plan(&[e]).unwrap_err();
    assert!(r.passing && !r.outside, "{r}");
    let mut busy = sample(tcp_state::ESTABLISHED, Peer::Socket, 99);
    busy.unsent = 10;
    let mut e = end(1, &busy, Vec::new());
    e.across = true;
    assert!(plan(&[e]).unwrap_err().passing);
    // A remote peer not found on this host.
    let mut r = sample(tcp_state::ESTABLISHED, Peer::Unknown, 0);
    r.peer = Some(Addr {
        ip: vec![10, 1, 2, 3],
        port: 5432,
    });
    assert!(plan(&[end(1, &r, Vec::new())]).unwrap_err().outside);
    let mut e = end(1, &r, Vec::new());
    e.across = true;
    assert_eq!(plan(&[e]).unwrap(), vec![Step::Across(1)]);
    let mut e = end(1, &r, Vec::new());
    e.reset_outside = true;
    assert_eq!(plan(&[e]).unwrap(), vec![Step::Reset(1)]);
    // Bytes still on their way to an outside server do not hold a socket
    // given back closed (a real close loses them too), and it comes last.
    let mut busy = sample(tcp_state::ESTABLISHED, Peer::Socket, 99);
    busy.unsent = 10;
    let lonely = sample(tcp_state::ESTABLISHED, Peer::Closed, 0);
    let mut e = end(1, &busy, Vec::new());
    e.reset_outside = true;
    assert_eq!(
        plan(&[e, end(2, &lonely, Vec::new())]).unwrap(),
        vec![Step::Lonely(2), Step::Reset(1)]
    );
    // Bytes not acknowledged yet pass by themselves.
    let mut u = sample(tcp_state::ESTABLISHED, Peer::Socket, 2);
    u.unsent = 10;
    let b = sample(tcp_state::ESTABLISHED, Peer::Socket, 1);
    let r = plan(&[end(1, &u, Vec::new()), end(2, &b, Vec::new())]).unwrap_err();
    assert!(
        r.passing && r.message.contains("have not reached the other end"),
        "{r}"
    );
    // A pair, a listener with one connection of the job waiting, and one
    // from outside.
    let mut l = sample(tcp_state::LISTEN, Peer::None, 0);
    l.local = loopback(libc::AF_INET, 5000);
    l.local.ip = vec![0, 0, 0, 0];
    l.accept_queue = 1;
    let p = sample(tcp_state::ESTABLISHED, Peer::Pending, 0);
    let a = sample(tcp_state::ESTABLISHED, Peer::Socket, 2);
    let steps = plan(&[
        end(1, &a, Vec::new()),
        end(2, &b, Vec::new()),
        end(3, &l, Vec::new()),
        end(4, &p, Vec::new()),
    ])
    .unwrap();
    assert_eq!(
        steps,
        vec![
            Step::Pair(1, 2),
            Step::Listener(3),
            Step::Pending {
                client: 4,
                listener: 3
            }
        ]
    );
    l.accept_queue = 2;
    let r = plan(&[end(3, &l, Vec::new()), end(4, &p, Vec::new())]).unwrap_err();
    assert!(
        r.passing && r.message.contains("outside the job waiting"),
        "{r}"
    );
}

#[test]
fn json_round_trip() {
    let mut s = sample(tcp_state::CLOSE_WAIT, Peer::Closed, 0);
    s.opts.linger = [1, 5];
    s.data = Some([4096, 10]);
    s.crc = 7;
    s.messages = vec![Datagram {
        len: 10,
        from: loopback(libc::AF_INET6, 9),
    }];
    let text = serde_json::to_string(&s).unwrap();
    let back: InetSocket = serde_json::from_str(&text).unwrap();
    assert_eq!(back, s);
    assert_eq!(
        back.describe(),
        "a TCP connection 127.0.0.1:40000 -> 127.0.0.1:5000 (CLOSE-WAIT)"
    );
}

fn udp_bound(family: i32, at: &Addr) -> i32 {
    // SAFETY: no pointers.
    let u = unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    assert!(u >= 0);
    let (ss, len) = restore_sockaddr(family, at);
    // SAFETY: bind with a valid address.
    let r = unsafe { libc::bind(u, (&ss as *const libc::sockaddr_storage).cast(), len) };
    assert_eq!(r, 0, "bind: {}", std::io::Error::last_os_error());
    u
}

fn send_to(fd: i32, family: i32, to: &Addr, b: &[u8]) {
    let (ss, len) = restore_sockaddr(family, to);
    // SAFETY: sendto from a local buffer to a valid address.
    let n = unsafe {
        libc::sendto(
            fd,
            b.as_ptr().cast(),
            b.len(),
            0,
            (&ss as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    assert_eq!(
        n,
        b.len() as isize,
        "sendto: {}",
        std::io::Error::last_os_error()
    );
}

/// The next datagram of `fd` and the port it came from (nothing: None).
fn recv_from(fd: i32) -> Option<(Vec<u8>, u16)> {
    let mut b = vec![0u8; 1 << 16];
    // SAFETY: sockaddr_in6 is plain old data.
    let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    let mut sl = std::mem::size_of::<libc::sockaddr_in6>() as u32;
    // SAFETY: receiving into a local buffer and address.
    let n = unsafe {
        libc::recvfrom(
            fd,
            b.as_mut_ptr().cast(),
            b.len(),
            libc::MSG_DONTWAIT,
            (&mut sa as *mut libc::sockaddr_in6).cast(),
            &mut sl,
        )
    };
    (n >= 0).then(|| (b[..n as usize].to_vec(), AddrBuf::from_sockaddr(&sa).port))
}

#[test]
fn udp_datagrams_come_back_in_order_from_their_senders() {
    // A dual-stack receiver at the IPv6 wildcard, an IPv4 sender and an IPv6
    // one; datagrams of several sizes, in an order mixing the senders.
    let any6 = Addr {
        ip: vec![0; 16],
        port: 0,
    };
    let r = udp_bound(libc::AF_INET6, &any6);
    let rport = name(r, false).port;
    let a = udp_bound(libc::AF_INET, &loopback(libc::AF_INET, 0));
    let b = udp_bound(libc::AF_INET6, &loopback(libc::AF_INET6, 0));
    let (aport, bport) = (name(a, false).port, name(b, false).port);
    let big: Vec<u8> = (0..40000u32).map(|i| (i * 7) as u8).collect();
    let sent: Vec<(Vec<u8>, u16)> = vec![
        (b"one".to_vec(), aport),
        (big.clone(), bport),
        (b"three".to_vec(), aport),
        (vec![9u8; 1], bport),
    ];
    for (bytes, from) in &sent {
        if *from == aport {
            send_to(a, libc::AF_INET, &loopback(libc::AF_INET, rport), bytes);
        } else {
            send_to(b, libc::AF_INET6, &loopback(libc::AF_INET6, rport), bytes);
        }
    }
    std::thread::sleep(std::time::Duration::from_millis(20));
    let (sr, dr) = take(r, libc::AF_INET6);
    let (sa, _) = take(a, libc::AF_INET);
    let (sb, _) = take(b, libc::AF_INET6);
    assert!(!sr.datagrams);
    let lens: Vec<u64> = sr.messages.iter().map(|d| d.len).collect();
    assert_eq!(lens, vec![3, 40000, 5, 1]);
    assert_eq!(sr.messages[0].from.port, aport);
    assert_eq!(sr.messages[1].from.port, bport);
    // Nothing was taken from the program.
    assert_eq!(recv_from(r).map(|(d, p)| (d.len(), p)), Some((3, aport)));
    for f in [r, a, b] {
        close(f);
    }
    let ends = [
        end(1, &sr, dr),
        end(2, &sa, Vec::new()),
        end(3, &sb, Vec::new()),
    ];
    let made = restore_all(&ends).unwrap();
    for (bytes, from) in &sent {
        let (got, port) = recv_from(made[&1]).expect("a datagram put back");
        same(&got, bytes, "datagram");
        assert_eq!(port, *from, "sender of a {}-byte datagram", bytes.len());
    }
    assert!(recv_from(made[&1]).is_none(), "no more than were queued");
    // The peek offset the restore used is gone: a plain peek reads from the head.
    for f in made.values() {
        close(*f);
    }
}

#[test]
fn udp_datagrams_from_outside_the_job_wait_and_empty_ones_are_not_saved() {
    let r = udp_bound(libc::AF_INET, &loopback(libc::AF_INET, 0));
    let rport = name(r, false).port;
    let a = udp_bound(libc::AF_INET, &loopback(libc::AF_INET, 0));
    send_to(a, libc::AF_INET, &loopback(libc::AF_INET, rport), b"hello");
    std::thread::sleep(std::time::Duration::from_millis(20));
    let (sr, dr) = take(r, libc::AF_INET);
    assert_eq!(sr.messages.len(), 1);
    // Its sender is not among the job's sockets: passing refusal naming it.
    let e = plan(&[end(1, &sr, dr)]).unwrap_err();
    assert!(e.passing && !e.outside, "{e}");
    assert!(
        e.message
            .contains(&format!("127.0.0.1:{}", name(a, false).port)),
        "{e}"
    );
    // An empty datagram first: nothing behind it can be peeked.
    assert!(recv_from(r).is_some());
    send_to(a, libc::AF_INET, &loopback(libc::AF_INET, rport), b"");
    send_to(a, libc::AF_INET, &loopback(libc::AF_INET, rport), b"behind");
    std::thread::sleep(std::time::Duration::from_millis(20));
    let (sr, _) = take(r, libc::AF_INET);
    assert!(sr.datagrams && sr.messages.is_empty() && sr.data.is_none());
    assert!(sr.validate().is_err_and(|u| u.passing));
    // Still all there for the program.
    assert_eq!(recv_from(r).map(|(d, _)| d.len()), Some(0));
    assert_eq!(recv_from(r).map(|(d, _)| d), Some(b"behind".to_vec()));
    close(r);
    close(a);
}

/// The tcp_info and buffer sizes a connected end's `sock_diag` lookup
/// brings are those `TCP_INFO`, `SO_SNDBUF` and `SO_RCVBUF` give.
#[test]
fn the_lookup_of_a_connected_end_brings_its_tcp_info_and_buffers() {
    for family in [libc::AF_INET, libc::AF_INET6] {
        let l = tcp(family);
        bind_listen(l, family);
        let c = tcp(family);
        set(c, libc::SOL_SOCKET, libc::SO_SNDBUF, 100_000);
        set(c, libc::SOL_SOCKET, libc::SO_RCVBUF, 70_000);
        connect_to(c, family, name(l, false).port);
        let s = accept(l);
        send(c, &[5u8; 3000]);
        assert_eq!(recv_n(s, 3000).len(), 3000);
        send(s, &[6u8; 100]);
        assert_eq!(recv_n(c, 100).len(), 100);
        let nl = super::super::unix_socket::open_diag().unwrap();
        let (me, other) = query_pair(
            nl,
            family,
            (&name(c, false), &name(c, true)),
            (&name(c, true), &name(c, false)),
        );
        let me = me.unwrap();
        assert_eq!(me.inode, inode(c));
        assert_eq!(other.unwrap().inode, inode(s));
        assert_eq!(
            me.bufs,
            Some((
                get(c, libc::SOL_SOCKET, libc::SO_SNDBUF),
                get(c, libc::SOL_SOCKET, libc::SO_RCVBUF)
            ))
        );
        let info = me.info.unwrap();
        assert_eq!(info, tcp_info_state(c).unwrap());
        assert_eq!(info.state, tcp_state::ESTABLISHED);
        assert!(info.traffic);
        // (The SYN counts as one byte acknowledged.)
        assert_eq!((info.acked, info.received), (3000 + 1, 100), "{info:?}");
        for f in [nl, l, c, s] {
            close(f);
        }
    }
}

/// A lookup whose reply does not fit (a root socket's `sock_diag` lists
/// the connection's TCP-MD5 keys after its tcp_info) is asked again
/// without the extra attributes: the end is still found, and captured.
#[test]
fn a_lookup_whose_reply_does_not_fit_is_asked_again_without_tcp_info() {
    let l = tcp(libc::AF_INET);
    bind_listen(l, libc::AF_INET);
    let c = tcp(libc::AF_INET);
    connect_to(c, libc::AF_INET, name(l, false).port);
    let s = accept(l);
    // Keys for other peers (10.0.0.N): this connection signs nothing.
    let mut keys = 0;
    for n in 1..=16u8 {
        // struct tcp_md5sig: sockaddr_storage (128), flags, prefixlen,
        // keylen (u16), ifindex (i32), key[80].
        let mut m = [0u8; 216];
        m[0..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        m[4..8].copy_from_slice(&[10, 0, 0, n]);
        m[130..132].copy_from_slice(&80u16.to_ne_bytes());
        m[136..216].fill(b'k');
        // SAFETY: setsockopt reading the local struct.
        let r = unsafe {
            libc::setsockopt(
                c,
                libc::IPPROTO_TCP,
                14, /* TCP_MD5SIG */
                m.as_ptr().cast(),
                216,
            )
        };
        if r == 0 {
            keys += 1;
        }
    }
    let nl = super::super::unix_socket::open_diag().unwrap();
    let (me, other) = query_pair(
        nl,
        libc::AF_INET,
        (&name(c, false), &name(c, true)),
        (&name(c, true), &name(c, false)),
    );
    let me = me.unwrap();
    assert_eq!(me.inode, inode(c), "{keys} keys");
    assert_eq!(other.unwrap().inode, inode(s));
    // SAFETY: geteuid has no preconditions.
    if keys == 16 && unsafe { libc::geteuid() } == 0 {
        // The first reply was cut: the second came without tcp_info.
        assert_eq!(
            me.info, None,
            "a reply with 16 keys fits: the test tests nothing"
        );
    }
    let (t, _) = take(c, libc::AF_INET);
    assert_eq!(t.tcp_state, tcp_state::ESTABLISHED);
    assert_eq!(t.opts.sndbuf, get(c, libc::SOL_SOCKET, libc::SO_SNDBUF));
    for f in [nl, l, c, s] {
        close(f);
    }
}
