//! Round trips: real sockets of this process → capture → JSON → serde →
//! restore → the same names, queued data, boundaries and shutdown state.

use std::os::fd::AsRawFd as _;
use std::os::unix::fs::FileExt as _;

use super::*;

fn socketpair(ty: i32) -> (i32, i32) {
    let mut p = [0i32; 2];
    // SAFETY: p is a valid array.
    let r = unsafe { libc::socketpair(libc::AF_UNIX, ty | libc::SOCK_CLOEXEC, 0, p.as_mut_ptr()) };
    assert_eq!(r, 0);
    (p[0], p[1])
}

fn send(fd: i32, b: &[u8]) {
    // SAFETY: sending from a local buffer.
    let n = unsafe { libc::send(fd, b.as_ptr().cast(), b.len(), libc::MSG_DONTWAIT) };
    assert_eq!(n, b.len() as isize);
}

fn recv(fd: i32) -> Option<Vec<u8>> {
    let mut b = vec![0u8; 1 << 20];
    // SAFETY: receiving into a local buffer.
    let n = unsafe { libc::recv(fd, b.as_mut_ptr().cast(), b.len(), libc::MSG_DONTWAIT) };
    if n < 0 {
        return None;
    }
    b.truncate(n as usize);
    Some(b)
}

fn inode(fd: i32) -> u64 {
    // SAFETY: stat is plain old data.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat into a local.
    let r = unsafe { libc::fstat(fd, &mut st) };
    assert_eq!(r, 0);
    st.st_ino
}

fn close(fd: i32) {
    // SAFETY: test descriptors.
    unsafe { libc::close(fd) };
}

/// Capture `fd` into a fresh image file; return the state and its data.
fn take(fd: i32) -> (UnixSocket, Vec<u8>) {
    take_with(fd, &[])
}

/// [`take`], comparing descriptors in flight with `program`'s.
fn take_with(fd: i32, program: &[i32]) -> (UnixSocket, Vec<u8>) {
    let img = tempfile();
    let nl = open_diag().unwrap();
    let mut j = MmapBuf::new();
    let mut off = 4096u64;
    // Held back and written after, as in a snapshot child.
    let mut out = crate::signal_safe::deferred::DeferredWrites::new(img.as_raw_fd(), true);
    capture(fd, inode(fd), nl, &mut out, &mut off, &mut j, program).unwrap();
    out.flush().unwrap();
    let text = String::from_utf8(j.as_slice().to_vec()).unwrap();
    j.free();
    close(nl);
    let s: UnixSocket = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
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

fn tempfile() -> std::fs::File {
    let p = std::env::temp_dir().join(format!(
        "ckpt-sock-test-{}-{}",
        std::process::id(),
        rand_u64()
    ));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&p)
        .unwrap();
    std::fs::remove_file(&p).unwrap();
    f
}

fn rand_u64() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
}

fn end<'a>(ino: u64, s: &'a UnixSocket, data: Vec<u8>) -> restore::SavedEnd<'a> {
    restore::SavedEnd {
        inode: ino,
        sock: s,
        data,
        cwd: std::env::current_dir()
            .unwrap()
            .into_os_string()
            .into_encoded_bytes(),
        stdio_only: false,
        reset_outside: false,
        who: format!("socket {ino}"),
        pid: 1,
    }
}

/// Lends nothing: no descriptor was in flight.
fn no_lend(_: i32, x: &rights::InFlight) -> Result<rights::Lent, String> {
    Err(format!("nothing to lend for {}", x.path))
}

#[test]
fn stream_pair_with_data_both_ways_and_half_closed() {
    let (a, b) = socketpair(libc::SOCK_STREAM);
    send(a, b"hello ");
    send(a, b"world");
    send(b, b"back");
    // SAFETY: shutdown of a test socket.
    assert_eq!(unsafe { libc::shutdown(b, libc::SHUT_WR) }, 0);
    let (ia, ib) = (inode(a), inode(b));
    let (sa, da) = take(a);
    let (sb, db) = take(b);
    assert_eq!(sa.state, State::Connected);
    assert_eq!(sa.peer, ib);
    assert_eq!(sb.peer, ia);
    assert_eq!(da, b"back");
    assert_eq!(db, b"hello world");
    assert_eq!(sb.shutdown, 2, "b shut down sending");
    assert_eq!(sa.shutdown, 1, "so a cannot receive more");
    // Nothing was consumed and the peek offset is off again.
    assert_eq!(recv(b).unwrap(), b"hello world");
    assert_eq!(recv(a).unwrap(), b"back");
    let mut v: i32 = 0;
    let mut len = 4u32;
    // SAFETY: getsockopt into a local.
    unsafe {
        libc::getsockopt(
            a,
            libc::SOL_SOCKET,
            libc::SO_PEEK_OFF,
            (&mut v as *mut i32).cast(),
            &mut len,
        )
    };
    assert_eq!(v, -1);
    close(a);
    close(b);

    let ends = [end(ia, &sa, da), end(ib, &sb, db)];
    assert_eq!(
        plan(&ends).unwrap(),
        vec![Step::Pair(ia.min(ib), ia.max(ib))]
    );
    let r = restore_all(&ends, &no_lend).unwrap();
    let (na, nb) = (r.fds[&ia], r.fds[&ib]);
    assert_eq!(recv(na).unwrap(), b"back");
    assert_eq!(recv(na).unwrap(), b"", "end of file after the queue");
    assert_eq!(recv(nb).unwrap(), b"hello world");
    send(na, b"more");
    assert_eq!(recv(nb).unwrap(), b"more");
    // b cannot send any more.
    // SAFETY: send from a local buffer.
    let n = unsafe { libc::send(nb, b"x".as_ptr().cast(), 1, libc::MSG_NOSIGNAL) };
    assert_eq!(n, -1);
    close(na);
    close(nb);
}

#[test]
fn datagram_and_seqpacket_keep_boundaries() {
    for ty in [libc::SOCK_DGRAM, libc::SOCK_SEQPACKET] {
        let (a, b) = socketpair(ty);
        let want: i32 = 400_000;
        // SAFETY: setsockopt from a local.
        unsafe {
            libc::setsockopt(
                a,
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&want as *const i32).cast(),
                4,
            )
        };
        let big = vec![7u8; 300_000];
        for m in [&b"one"[..], b"two!", &big[..], b"3"] {
            if ty == libc::SOCK_DGRAM && m.len() > 200_000 {
                continue;
            }
            send(a, m);
        }
        let (ia, ib) = (inode(a), inode(b));
        let (sa, da) = take(a);
        let (sb, db) = take(b);
        assert!(da.is_empty());
        let lens: Vec<u64> = sb.queue.iter().map(|m| m.len).collect();
        if ty == libc::SOCK_DGRAM {
            assert_eq!(lens, vec![3, 4, 1]);
        } else {
            assert_eq!(lens, vec![3, 4, 300_000, 1]);
        }
        close(a);
        close(b);
        let ends = [end(ia, &sa, da), end(ib, &sb, db)];
        let r = restore_all(&ends, &no_lend).unwrap();
        let nb = r.fds[&ib];
        assert_eq!(recv(nb).unwrap(), b"one");
        assert_eq!(recv(nb).unwrap(), b"two!");
        if ty == libc::SOCK_SEQPACKET {
            assert_eq!(recv(nb).unwrap(), big);
        }
        assert_eq!(recv(nb).unwrap(), b"3");
        assert!(recv(nb).is_none());
        close(r.fds[&ia]);
        close(nb);
    }
}

fn bind_listen(ty: i32, name: &[u8]) -> i32 {
    // SAFETY: no pointers.
    let l = unsafe { libc::socket(libc::AF_UNIX, ty | libc::SOCK_CLOEXEC, 0) };
    let (sa, len) = sockaddr_of(name);
    // SAFETY: valid address.
    let r = unsafe { libc::bind(l, (&sa as *const libc::sockaddr_un).cast(), len) };
    assert_eq!(r, 0);
    // SAFETY: listen on a test socket.
    assert_eq!(unsafe { libc::listen(l, 7) }, 0);
    l
}

fn sockaddr_of(name: &[u8]) -> (libc::sockaddr_un, u32) {
    // SAFETY: sockaddr_un is plain old data.
    let mut sa: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    sa.sun_family = libc::AF_UNIX as u16;
    for (d, &c) in sa.sun_path.iter_mut().zip(name) {
        *d = c as libc::c_char;
    }
    (sa, (2 + name.len()) as u32)
}

fn connect_to(ty: i32, name: &[u8]) -> i32 {
    // SAFETY: no pointers.
    let c = unsafe { libc::socket(libc::AF_UNIX, ty | libc::SOCK_CLOEXEC, 0) };
    let (sa, len) = sockaddr_of(name);
    // SAFETY: valid address.
    let r = unsafe { libc::connect(c, (&sa as *const libc::sockaddr_un).cast(), len) };
    assert_eq!(r, 0);
    c
}

fn names(fd: i32) -> (Vec<u8>, Vec<u8>) {
    let mut a = [0u8; 108];
    let mut b = [0u8; 108];
    let n = name_of(51, fd, &mut a).unwrap();
    let m = name_of(52, fd, &mut b).unwrap_or(0);
    (a[..n].to_vec(), b[..m].to_vec())
}

#[test]
fn listener_with_accepted_and_pending_connections_by_path() {
    let dir = std::env::temp_dir().join(format!("ckpt-sock-{}-{}", std::process::id(), rand_u64()));
    std::fs::create_dir(&dir).unwrap();
    let path = dir.join("srv.sock").into_os_string().into_encoded_bytes();
    let ty = libc::SOCK_STREAM;
    let l = bind_listen(ty, &path);
    let c1 = connect_to(ty, &path);
    // SAFETY: accept4 without an address.
    let s1 = unsafe { libc::accept4(l, std::ptr::null_mut(), std::ptr::null_mut(), 0) };
    assert!(s1 >= 0);
    send(c1, b"to server");
    let c2 = connect_to(ty, &path);
    let fds = [l, c1, s1, c2];
    let inos: Vec<u64> = fds.iter().map(|&f| inode(f)).collect();
    let taken: Vec<(UnixSocket, Vec<u8>)> = fds.iter().map(|&f| take(f)).collect();
    assert_eq!(taken[0].0.state, State::Listening);
    assert_eq!(taken[0].0.backlog, 7);
    assert_eq!(taken[0].0.pending.len(), 1);
    assert_eq!(taken[0].0.pending[0], inos[3]);
    assert_eq!(taken[3].0.peer, 0);
    assert_eq!(taken[2].1, b"to server");
    for f in fds {
        close(f);
    }
    // The killed run leaves its socket file behind: the restore removes it.
    assert!(
        std::path::Path::new(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&path))
            .exists()
    );
    let ends: Vec<restore::SavedEnd<'_>> = taken
        .iter()
        .zip(&inos)
        .map(|((s, d), &i)| end(i, s, d.clone()))
        .collect();
    let steps = plan(&ends).unwrap();
    assert!(steps.contains(&Step::Listener(inos[0])));
    assert!(steps.contains(&Step::Pending {
        client: inos[3],
        listener: inos[0]
    }));
    let r = restore_all(&ends, &no_lend).unwrap();
    let (nl, nc1, ns1, nc2) = (
        r.fds[&inos[0]],
        r.fds[&inos[1]],
        r.fds[&inos[2]],
        r.fds[&inos[3]],
    );
    assert_eq!(names(ns1), (path.clone(), Vec::new()));
    assert_eq!(names(nc1), (Vec::new(), path.clone()));
    assert_eq!(recv(ns1).unwrap(), b"to server");
    // The pending connection is accepted now, and works.
    // SAFETY: accept4 without an address.
    let s2 = unsafe { libc::accept4(nl, std::ptr::null_mut(), std::ptr::null_mut(), 0) };
    assert!(s2 >= 0);
    send(nc2, b"late");
    assert_eq!(recv(s2).unwrap(), b"late");
    for f in [nl, nc1, ns1, nc2, s2] {
        close(f);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn abstract_names_and_a_closed_peer() {
    let name = format!("\0ckpt-test-{}-{}", std::process::id(), rand_u64()).into_bytes();
    let ty = libc::SOCK_SEQPACKET;
    let l = bind_listen(ty, &name);
    let c = connect_to(ty, &name);
    // SAFETY: accept4 without an address.
    let s = unsafe { libc::accept4(l, std::ptr::null_mut(), std::ptr::null_mut(), 0) };
    send(s, b"last words");
    close(s);
    close(l);
    let ic = inode(c);
    let (sc, dc) = take(c);
    assert_eq!(sc.peer, 0);
    assert_eq!(sc.state, State::Connected);
    assert_eq!(sc.peer_name, name);
    close(c);
    let ends = [end(ic, &sc, dc)];
    assert_eq!(plan(&ends).unwrap(), vec![Step::Lonely(ic)]);
    let r = restore_all(&ends, &no_lend).unwrap();
    let nc = r.fds[&ic];
    assert_eq!(names(nc).1, name);
    assert_eq!(recv(nc).unwrap(), b"last words");
    assert_eq!(recv(nc).unwrap(), b"", "then end of file");
    close(nc);
}

#[test]
fn refusals_name_the_socket_and_why() {
    // A descriptor in flight.
    let marker_path = std::env::temp_dir().join(format!(
        "ckpt-sock-marker-{}-{}",
        std::process::id(),
        rand_u64()
    ));
    let marker = std::fs::File::create(&marker_path).unwrap();
    let (a, b) = socketpair(libc::SOCK_STREAM);
    let mut iov = libc::iovec {
        iov_base: b"x".as_ptr() as *mut _,
        iov_len: 1,
    };
    let mut ctl = [0u64; 4];
    // SAFETY: msghdr is plain old data.
    let mut m: libc::msghdr = unsafe { std::mem::zeroed() };
    m.msg_iov = &mut iov;
    m.msg_iovlen = 1;
    m.msg_control = ctl.as_mut_ptr().cast();
    m.msg_controllen = 24;
    // SAFETY: building an SCM_RIGHTS message in a local buffer.
    unsafe {
        let h = libc::CMSG_FIRSTHDR(&m);
        (*h).cmsg_level = libc::SOL_SOCKET;
        (*h).cmsg_type = libc::SCM_RIGHTS;
        (*h).cmsg_len = libc::CMSG_LEN(4) as usize;
        *(libc::CMSG_DATA(h) as *mut i32) = marker.as_raw_fd();
        assert_eq!(libc::sendmsg(a, &m, 0), 1);
    }
    // Descriptors of the file sent (other tests open and close their own).
    let held = || {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|l| *l == marker_path)
            .count()
    };
    let before = held();
    let (sb, _) = take(b);
    assert_eq!(held(), before, "peeking left no descriptor open");
    // Saved (rights.rs checks it against the job at checkpoint time).
    assert!(!sb.fds_in_flight);
    assert_eq!(sb.queue[0].fds.len(), 1);
    assert_eq!(std::path::Path::new(&sb.queue[0].fds[0].path), marker_path);
    drop(marker);
    std::fs::remove_file(&marker_path).unwrap();
    close(a);
    close(b);
    // A peer outside the job.
    let (a, b) = socketpair(libc::SOCK_STREAM);
    let (sa, da) = take(a);
    let e = plan(&[end(inode(a), &sa, da)]).unwrap_err();
    assert!(e.outside && e.inode == inode(a));
    assert!(e.message.contains("no process of the job holds"), "{e}");
    // ... unless it is only stdio.
    let mut x = end(inode(a), &sa, Vec::new());
    x.stdio_only = true;
    assert_eq!(plan(&[x]).unwrap(), vec![Step::Stdio(inode(a))]);
    // ... or the job asked for it to come back closed by its peer.
    let mut x = end(inode(a), &sa, Vec::new());
    x.reset_outside = true;
    assert_eq!(plan(&[x]).unwrap(), vec![Step::Reset(inode(a))]);
    close(a);
    close(b);
}

#[test]
fn diag_reply_parses() {
    // nlmsghdr + unix_diag_msg + PEER(42) + SHUTDOWN(3) + ICONS(5, 6).
    let mut r = Vec::new();
    let body: Vec<u8> = [
        &[8u8, 0, 2, 0][..],
        &42u32.to_ne_bytes(),
        &[5, 0, 6, 0, 3, 0, 0, 0],
        &[12, 0, 3, 0],
        &5u32.to_ne_bytes(),
        &6u32.to_ne_bytes(),
    ]
    .concat();
    let len = 32 + body.len();
    r.extend_from_slice(&(len as u32).to_ne_bytes());
    r.extend_from_slice(&20u16.to_ne_bytes());
    r.extend_from_slice(&[0u8; 10]);
    r.extend_from_slice(&[1u8, 1, 1, 0]);
    r.extend_from_slice(&[0u8; 12]);
    r.extend_from_slice(&body);
    let mut icons = [0u64; 4];
    let (d, n) = parse_diag(&r, &mut icons).unwrap();
    assert_eq!(d.peer, 42);
    assert_eq!(d.shutdown, 3);
    assert_eq!(n, 2);
    assert_eq!(&icons[..2], &[5, 6]);
    // An error reply.
    let mut e = vec![0u8; 36];
    e[0..4].copy_from_slice(&36u32.to_ne_bytes());
    e[4..6].copy_from_slice(&2u16.to_ne_bytes());
    e[16..20].copy_from_slice(&(-libc::ENOENT).to_ne_bytes());
    assert_eq!(parse_diag(&e, &mut icons), Err(Errno(libc::ENOENT)));
}

#[test]
fn json_round_trip() {
    let s = UnixSocket {
        ty: 1,
        state: State::Listening,
        name: b"/tmp/x".to_vec(),
        backlog: 5,
        pending: vec![9, 10],
        queue: vec![Message {
            len: 3,
            from: vec![0, b'a'],
            fds: vec![rights::InFlight {
                kind: rights::Kind::File,
                path: "/tmp/\u{e9}t\u{e9}".into(),
                dev: 2049,
                inode: 12,
                flags: 2,
                pos: 7,
                same_as: Some(4),
            }],
        }],
        data: Some([4096, 3]),
        peek_off: -1,
        ..Default::default()
    };
    let back: UnixSocket = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
    assert_eq!(back, s);
}

fn send_fds(fd: i32, b: &[u8], fds: &[i32]) {
    let mut ctl = vec![0u64; (16 + 4 * fds.len()).div_ceil(8)];
    // SAFETY: ctl has room for a cmsghdr and the descriptors.
    unsafe {
        let h = ctl.as_mut_ptr().cast::<libc::cmsghdr>();
        (*h).cmsg_len = 16 + 4 * fds.len();
        (*h).cmsg_level = libc::SOL_SOCKET;
        (*h).cmsg_type = libc::SCM_RIGHTS;
        std::ptr::copy_nonoverlapping(
            fds.as_ptr(),
            ctl.as_mut_ptr().cast::<u8>().add(16).cast::<i32>(),
            fds.len(),
        );
    }
    let mut iov = libc::iovec {
        iov_base: b.as_ptr() as *mut libc::c_void,
        iov_len: b.len(),
    };
    // SAFETY: msghdr is plain old data.
    let mut m: libc::msghdr = unsafe { std::mem::zeroed() };
    m.msg_iov = &mut iov;
    m.msg_iovlen = 1;
    m.msg_control = ctl.as_mut_ptr().cast();
    m.msg_controllen = 16 + 4 * fds.len();
    // SAFETY: sendmsg with the buffers above.
    let n = unsafe { libc::sendmsg(fd, &m, libc::MSG_DONTWAIT) };
    assert_eq!(
        n,
        b.len() as isize,
        "sendmsg: {}",
        std::io::Error::last_os_error()
    );
}

/// Receive at most `max` bytes and the descriptors that came with them.
fn recv_fds(fd: i32, max: usize) -> (Vec<u8>, Vec<i32>) {
    let mut b = vec![0u8; max];
    let mut ctl = [0u64; 64];
    let mut iov = libc::iovec {
        iov_base: b.as_mut_ptr().cast(),
        iov_len: b.len(),
    };
    // SAFETY: msghdr is plain old data.
    let mut m: libc::msghdr = unsafe { std::mem::zeroed() };
    m.msg_iov = &mut iov;
    m.msg_iovlen = 1;
    m.msg_control = ctl.as_mut_ptr().cast();
    m.msg_controllen = std::mem::size_of_val(&ctl);
    // SAFETY: recvmsg into the buffers above.
    let n = unsafe { libc::recvmsg(fd, &mut m, libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC) };
    assert!(n >= 0, "recvmsg: {}", std::io::Error::last_os_error());
    b.truncate(n as usize);
    let bytes: Vec<u8> = ctl.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let mut out = [0i32; rights::MAX_RIGHTS];
    let k = rights::parse_rights(&bytes, m.msg_controllen, &mut out);
    (b, out[..k].to_vec())
}

fn read_all(fd: i32) -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    // SAFETY: reading into a local buffer.
    let n = unsafe { libc::read(fd, b.as_mut_ptr().cast(), b.len()) };
    assert!(n >= 0);
    b.truncate(n as usize);
    b
}

#[test]
fn descriptors_in_flight_come_back_with_their_messages() {
    use rights::{Kind, Lent};
    let dir =
        std::env::temp_dir().join(format!("ckpt-rights-{}-{}", std::process::id(), rand_u64()));
    std::fs::create_dir(&dir).unwrap();
    let path = dir.join("data");
    std::fs::write(&path, b"0123456789").unwrap();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let f = file.as_raw_fd();
    // SAFETY: lseek on our file.
    unsafe { libc::lseek(f, 3, libc::SEEK_SET) };
    let mut p = [0i32; 2];
    // SAFETY: p is a valid array.
    assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    let (a, b) = socketpair(libc::SOCK_DGRAM);
    let (c, d) = socketpair(libc::SOCK_STREAM);
    let (x, y) = socketpair(libc::SOCK_STREAM);
    send_fds(a, b"pipe", &[p[1]]);
    send_fds(a, b"file", &[f]);
    send_fds(a, b"sock", &[y]);
    // A stream: descriptors sent with one byte each (as Python's sendfds does).
    send_fds(c, b"t", &[p[0]]);
    send_fds(c, b"u", &[p[1]]);
    send(c, b"after");
    let (ia, ib, ic, id, ix, iy) = (inode(a), inode(b), inode(c), inode(d), inode(x), inode(y));
    let (pipe_ino, file_ino) = (inode(p[0]), inode(f));

    // The file is compared with the process's descriptors: shared with f.
    let (sb_shared, _) = take_with(b, &[p[0], f]);
    assert_eq!(sb_shared.queue[1].fds[0].same_as, Some(f));
    let (sb, db) = take(b);
    let (sd, dd) = take(d);
    let kinds: Vec<Vec<Kind>> = sb
        .queue
        .iter()
        .map(|m| m.fds.iter().map(|x| x.kind).collect())
        .collect();
    assert_eq!(
        kinds,
        vec![vec![Kind::Pipe], vec![Kind::File], vec![Kind::Socket]]
    );
    let w = &sb.queue[0].fds[0];
    assert_eq!(
        (w.inode, w.flags as i32 & libc::O_ACCMODE),
        (pipe_ino, libc::O_WRONLY)
    );
    let fl = &sb.queue[1].fds[0];
    assert_eq!((fl.inode, fl.pos, fl.same_as), (file_ino, 3, None));
    assert!(fl.path.ends_with("/data"), "{}", fl.path);
    assert_eq!(sb.queue[2].fds[0].inode, iy);
    assert!(!sb.fds_in_flight);
    // The stream: each byte with its descriptor, then the plain bytes.
    let pieces: Vec<(u64, usize)> = sd.queue.iter().map(|m| (m.len, m.fds.len())).collect();
    assert_eq!(pieces, vec![(1, 1), (1, 1), (5, 0)]);
    assert!(!sd.fds_in_flight);
    assert_eq!(dd, b"tuafter");
    // Nothing was taken from the program, and the peek put no descriptor
    // in this process that stayed open.
    let (got, fds) = recv_fds(b, 64);
    assert_eq!((got.as_slice(), fds.len()), (&b"pipe"[..], 1));
    close(fds[0]);
    let (sa, da) = take(a);
    let (sc, dc) = take(c);
    let (sx, dx) = take(x);
    let (sy, dy) = take(y);
    for fd in [a, b, c, d, x, y, p[0], p[1]] {
        close(fd);
    }
    drop(file);

    // Restore: a new pipe lent for the pipe's ends, the file reopened by path.
    let mut np = [0i32; 2];
    // SAFETY: np is a valid array.
    assert_eq!(unsafe { libc::pipe2(np.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    let lend = |pid: i32, x: &rights::InFlight| -> Result<Lent, String> {
        assert_eq!(pid, 1);
        match x.kind {
            Kind::Pipe if x.flags as i32 & libc::O_ACCMODE == libc::O_WRONLY => {
                Ok(Lent::Borrowed(np[1]))
            }
            Kind::Pipe => Ok(Lent::Borrowed(np[0])),
            Kind::File => {
                let o = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&x.path)
                    .unwrap();
                let o = std::os::fd::IntoRawFd::into_raw_fd(o);
                // SAFETY: lseek on our file.
                unsafe { libc::lseek(o, x.pos as i64, libc::SEEK_SET) };
                Ok(Lent::Owned(o))
            }
            _ => Err("unexpected".into()),
        }
    };
    let ends = [
        end(ia, &sa, da),
        end(ib, &sb, db),
        end(ic, &sc, dc),
        end(id, &sd, dd),
        end(ix, &sx, dx),
        end(iy, &sy, dy),
    ];
    let r = restore_all(&ends, &lend).unwrap();
    let (nb, nd) = (r.fds[&ib], r.fds[&id]);
    let (got, fds) = recv_fds(nb, 64);
    assert_eq!((got.as_slice(), fds.len()), (&b"pipe"[..], 1));
    // SAFETY: writing into the received pipe end.
    assert_eq!(unsafe { libc::write(fds[0], b"x".as_ptr().cast(), 1) }, 1);
    assert_eq!(read_all(np[0]), b"x");
    close(fds[0]);
    let (got, fds) = recv_fds(nb, 64);
    assert_eq!((got.as_slice(), fds.len()), (&b"file"[..], 1));
    assert_eq!(read_all(fds[0]), b"3456789", "the file at its offset");
    close(fds[0]);
    let (got, fds) = recv_fds(nb, 64);
    assert_eq!((got.as_slice(), fds.len()), (&b"sock"[..], 1));
    assert_eq!(
        inode(fds[0]),
        inode(r.fds[&iy]),
        "the socket made for the one in flight"
    );
    close(fds[0]);
    // The stream: each descriptor with its byte, then the plain bytes.
    let (got, fds) = recv_fds(nd, 64);
    assert_eq!((got.as_slice(), fds.len()), (&b"t"[..], 1));
    // SAFETY: writing into the new pipe, read through the received end.
    assert_eq!(unsafe { libc::write(np[1], b"y".as_ptr().cast(), 1) }, 1);
    assert_eq!(read_all(fds[0]), b"y");
    close(fds[0]);
    let (got, fds) = recv_fds(nd, 64);
    assert_eq!((got.as_slice(), fds.len()), (&b"u"[..], 1));
    close(fds[0]);
    assert_eq!(recv(nd).unwrap(), b"after");
    for fd in r.fds.values().chain(np.iter()) {
        close(*fd);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn descriptors_sent_after_other_bytes_of_a_stream_wait() {
    // Which bytes they came with cannot be seen: not saved, refused (passing).
    let (c, d) = socketpair(libc::SOCK_STREAM);
    let (e, f) = socketpair(libc::SOCK_STREAM);
    send(c, b"plain");
    send_fds(c, b"t", &[e]);
    let (sd, dd) = take(d);
    assert!(sd.fds_in_flight);
    let why = sd.validate().unwrap_err();
    assert!(why.contains("SCM_RIGHTS"), "{why}");
    let why = plan(&[end(inode(d), &sd, dd)]).unwrap_err();
    assert!(why.message.contains("SCM_RIGHTS"), "{why}");
    // So is a piece longer than one byte, even at the head of the queue.
    let (g, h) = socketpair(libc::SOCK_STREAM);
    send_fds(g, b"two", &[e]);
    let (sh, _) = take(h);
    assert!(sh.fds_in_flight);
    // The program still gets everything.
    let (got, fds) = recv_fds(d, 64);
    assert_eq!((got.as_slice(), fds.len()), (&b"plaint"[..], 1));
    for fd in [c, d, e, f, g, h, fds[0]] {
        close(fd);
    }
}

/// A datagram socket bound to `name` (abstract when it starts with NUL).
fn bound_dgram(name: &[u8]) -> i32 {
    // SAFETY: no pointers.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    let (sa, len) = sockaddr_of(name);
    // SAFETY: valid address.
    let r = unsafe { libc::bind(fd, (&sa as *const libc::sockaddr_un).cast(), len) };
    assert_eq!(r, 0);
    fd
}

fn send_to(fd: i32, to: &[u8], b: &[u8]) {
    let (sa, len) = sockaddr_of(to);
    // SAFETY: sending a local buffer to a valid address.
    let n = unsafe {
        libc::sendto(
            fd,
            b.as_ptr().cast(),
            b.len(),
            0,
            (&sa as *const libc::sockaddr_un).cast(),
            len,
        )
    };
    assert_eq!(n, b.len() as isize);
}

/// A datagram and the name of its sender.
fn recv_from(fd: i32) -> (Vec<u8>, Vec<u8>) {
    let mut b = vec![0u8; 4096];
    // SAFETY: sockaddr_un is plain old data.
    let mut sa: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_un>() as u32;
    // SAFETY: receiving into local buffers.
    let n = unsafe {
        libc::recvfrom(
            fd,
            b.as_mut_ptr().cast(),
            b.len(),
            libc::MSG_DONTWAIT,
            (&mut sa as *mut libc::sockaddr_un).cast(),
            &mut len,
        )
    };
    assert!(n >= 0, "recvfrom: {}", std::io::Error::last_os_error());
    b.truncate(n as usize);
    let from: Vec<u8> = sa.sun_path[..(len as usize).saturating_sub(2)]
        .iter()
        .map(|&c| c as u8)
        .collect();
    (b, from)
}

#[test]
fn datagrams_from_named_sockets_of_the_job_come_from_them_again() {
    // UCX (MPICH's ch4:ucx) keeps such a datagram queued between two
    // abstract-named sockets of its ranks.
    let tag = format!("{}-{}", std::process::id(), rand_u64());
    let rx_name = format!("\0ckpt-test-rx-{tag}").into_bytes();
    let tx_name = format!("\0ckpt-test-tx-{tag}").into_bytes();
    let rx = bound_dgram(&rx_name);
    let tx = bound_dgram(&tx_name);
    // SAFETY: no pointers.
    let anon = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    send_to(tx, &rx_name, b"from the named one");
    send_to(anon, &rx_name, b"from nobody");
    send_to(tx, &rx_name, b"named again");
    let (irx, itx) = (inode(rx), inode(tx));
    let (srx, drx) = take(rx);
    let (stx, dtx) = take(tx);
    assert_eq!(srx.queue.len(), 3);
    assert_eq!(srx.queue[0].from, tx_name);
    assert!(srx.queue[1].from.is_empty());
    // Without the sender in the job: refused, naming it, retried.
    let e = plan(&[end(irx, &srx, drx.clone())]).unwrap_err();
    assert!(e.passing && e.inode == irx, "{e}");
    assert!(e.message.contains("ckpt-test-tx-"), "{e}");
    close(rx);
    close(tx);
    close(anon);
    // With it: each datagram comes from the socket that sent it, in order.
    let ends = [end(irx, &srx, drx), end(itx, &stx, dtx)];
    let r = restore_all(&ends, &no_lend).unwrap();
    let (nrx, ntx) = (r.fds[&irx], r.fds[&itx]);
    assert_eq!(
        recv_from(nrx),
        (b"from the named one".to_vec(), tx_name.clone())
    );
    assert_eq!(recv_from(nrx), (b"from nobody".to_vec(), Vec::new()));
    assert_eq!(recv_from(nrx), (b"named again".to_vec(), tx_name.clone()));
    assert_eq!(recv(nrx), None, "nothing more");
    assert_eq!(names(ntx).0, tx_name);
    close(nrx);
    close(ntx);
}
