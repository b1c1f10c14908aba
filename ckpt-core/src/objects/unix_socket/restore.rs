//! Restore of the job's unix sockets: a plan made from every process's
//! images (which socket is whose peer, which connection was pending on
//! which listening socket), checked at checkpoint time so that a checkpoint
//! that succeeds can be restored, and carried out by the job's init at
//! restart, before it recreates the processes (they inherit the sockets).
//!
//! How each state comes back (see `docs/sockets.md`):
//! - a connected pair whose two ends the job holds: `socketpair`, or, when
//!   one end was accepted from a listening socket (its name is the other's
//!   peer name), a connection made through a temporary listening socket at
//!   that name, so that `getsockname`/`getpeername` answer as before;
//! - a connection whose peer was closed: the same, then the other end is
//!   closed (reads drain the queue, then see end of file);
//! - a listening socket: bound to its name (a stale socket file left by the
//!   killed run is removed first; a live one is an error), listening with
//!   its backlog; its pending connections are connected to it again by
//!   their clients;
//! - a datagram socket connected to a named socket that is not connected
//!   back: connected to that name;
//! - an unconnected socket: created and bound to its name;
//! - then the queued data is written back by the peer (message by message
//!   for datagram and seqpacket sockets, so boundaries are kept), the
//!   options are set, and the shutdown state is applied;
//! - a path name that had been unlinked is unlinked again at the end.
//!
//! Descriptors in flight (`SCM_RIGHTS`, `rights.rs`) go with their message:
//! a unix socket of the job is the one made here; anything else (a pipe
//! end, a file) is lent by the caller.

use std::collections::{BTreeMap, HashMap};

use super::rights::{InFlight, Kind, Lent};
use super::{State, UnixSocket, show_name};

/// What the caller lends for a descriptor in flight in a socket of process
/// `pid` (anything but a unix socket, which `restore_all` makes itself).
pub type Lend<'a> = &'a dyn Fn(i32, &InFlight) -> Result<Lent, String>;

/// One socket as the images describe it, with the data queued in it.
#[derive(Clone, Debug)]
pub struct SavedEnd<'a> {
    /// Its inode at checkpoint time (the key between peers).
    pub inode: u64,
    /// Its saved state.
    pub sock: &'a UnixSocket,
    /// The bytes queued in it (checked against the image's checksum).
    pub data: Vec<u8>,
    /// The working directory of a process holding it (relative path names
    /// are relative to it).
    pub cwd: Vec<u8>,
    /// The job holds it only at descriptors 0, 1 or 2 (a restart gives those
    /// its own stdio when the peer is outside the job).
    pub stdio_only: bool,
    /// A peer outside the job is not refused: the socket comes back
    /// closed by its peer (`CKPT_EXTERNAL_SOCKETS=closed`).
    pub reset_outside: bool,
    /// Who holds it, for messages ("fd 5 of process 12 (python3)").
    pub who: String,
    /// The process holding it that saved it (descriptors in flight name
    /// descriptors of that process).
    pub pid: i32,
}

/// How one socket, or a pair, is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Both ends in the job, connected to each other.
    Pair(u64, u64),
    /// Connected, the peer closed since.
    Lonely(u64),
    /// Listening.
    Listener(u64),
    /// A connection not yet accepted by `listener`.
    Pending {
        /// The connecting socket.
        client: u64,
        /// The listening socket.
        listener: u64,
    },
    /// A datagram socket connected to `target`, which is not connected back.
    ConnectTo {
        /// The connected socket.
        a: u64,
        /// The socket it sends to.
        target: u64,
    },
    /// Neither (possibly bound).
    Plain(u64),
    /// Its peer is outside the job and the job holds it only at 0..2: the
    /// restart's own stdio stands in for it.
    Stdio(u64),
    /// Its peer is outside the job and the job asked for such sockets to
    /// come back closed by their peer.
    Reset(u64),
}

/// Why a socket cannot be restored: the socket (its inode at checkpoint
/// time) and the reason; `outside` when its peer is held by no process of
/// the job (the coordinator then says where the peer is).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The socket.
    pub inode: u64,
    /// Its peer is outside the job.
    pub outside: bool,
    /// The refusal passes by itself once the program runs a moment (what
    /// is queued gets received): the checkpoint is tried again.
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

/// The sockets made, by saved inode.
#[derive(Debug, Default)]
pub struct Restored {
    /// Saved inode -> close-on-exec descriptor.
    pub fds: HashMap<u64, i32>,
}

/// Make the plan: how every socket of `ends` comes back. Fails, naming the
/// socket and why, when one cannot. Pure: used at checkpoint time to refuse
/// what a restart could not do.
pub fn plan(ends: &[SavedEnd<'_>]) -> Result<Vec<Step>, Refusal> {
    let mut by: BTreeMap<u64, &SavedEnd<'_>> = BTreeMap::new();
    for e in ends {
        by.entry(e.inode).or_insert(e);
    }
    for e in by.values() {
        e.sock.validate().map_err(|why| Refusal {
            inode: e.inode,
            outside: false,
            passing: e.sock.passes(),
            message: format!(
                "{} is a unix socket that ckpt cannot checkpoint: {why}",
                e.who
            ),
        })?;
    }
    // A datagram queued from a named socket goes again from that socket,
    // which must be one of the job's (its name is what the reader sees).
    for e in by.values() {
        if e.sock.state == State::Connected {
            continue;
        }
        if let Some(m) = e
            .sock
            .queue
            .iter()
            .find(|m| !m.from.is_empty() && sender(&by, &m.from).is_none())
        {
            return Err(Refusal {
                inode: e.inode,
                outside: false,
                passing: true,
                message: format!(
                    "{} is a unix socket that ckpt cannot checkpoint: a datagram from {} is queued in it, \
                     and no process of the job holds a datagram socket of that name: ckpt can send it \
                     again only from a socket of the job, or an unnamed one",
                    e.who,
                    show_name(&m.from)
                ),
            });
        }
    }
    // Connecting socket -> the listening socket that has not accepted it.
    let mut embryo: HashMap<u64, u64> = HashMap::new();
    for e in by.values().filter(|e| e.sock.state == State::Listening) {
        for &c in &e.sock.pending {
            embryo.insert(c, e.inode);
        }
    }
    let mut first = Vec::new();
    let mut plain = Vec::new();
    let mut listeners = Vec::new();
    let mut last = Vec::new();
    let mut done: std::collections::HashSet<u64> = std::collections::HashSet::new();
    for (&ino, e) in &by {
        if done.contains(&ino) {
            continue;
        }
        let refuse = |outside: bool, message: String| Refusal {
            inode: ino,
            outside,
            passing: false,
            message,
        };
        let s = e.sock;
        match s.state {
            State::Unconnected => plain.push(Step::Plain(ino)),
            State::Listening => listeners.push(Step::Listener(ino)),
            State::Connected => {
                let p = s.peer;
                if let Some(&l) = embryo.get(&ino) {
                    last.push(Step::Pending {
                        client: ino,
                        listener: l,
                    });
                } else if p == 0 {
                    first.push(Step::Lonely(ino));
                } else if let Some(b) = by.get(&p) {
                    if b.sock.peer == ino {
                        if b.sock.ty != s.ty {
                            return Err(refuse(
                                false,
                                format!("{}: its peer has another type", e.who),
                            ));
                        }
                        first.push(Step::Pair(ino, p));
                        done.insert(p);
                    } else if s.ty == libc::SOCK_DGRAM && !b.sock.name.is_empty() {
                        if !s.queue.is_empty() && s.name.is_empty() {
                            return Err(refuse(
                                false,
                                format!(
                                    "{} is an unnamed datagram socket connected to {} with datagrams queued from it; ckpt could not send them again",
                                    e.who,
                                    show_name(&b.sock.name)
                                ),
                            ));
                        }
                        last.push(Step::ConnectTo { a: ino, target: p });
                    } else {
                        return Err(refuse(
                            false,
                            format!("{}: its peer ({}) is connected elsewhere", e.who, b.who),
                        ));
                    }
                } else if e.stdio_only {
                    first.push(Step::Stdio(ino));
                } else if e.reset_outside {
                    first.push(Step::Reset(ino));
                } else {
                    return Err(refuse(
                        true,
                        format!(
                            "{} is a unix socket connected to {}, which no process of the job holds: \
                             ckpt cannot restore a connection to a process outside the job",
                            e.who,
                            if s.peer_name.is_empty() {
                                "an unnamed socket".to_string()
                            } else {
                                show_name(&s.peer_name)
                            }
                        ),
                    ));
                }
            }
        }
        done.insert(ino);
    }
    first.extend(plain);
    first.extend(listeners);
    first.extend(last);
    Ok(first)
}

/// The job's datagram socket bound to `name`, if any.
fn sender(by: &BTreeMap<u64, &SavedEnd<'_>>, name: &[u8]) -> Option<u64> {
    by.values()
        .find(|e| e.sock.ty == libc::SOCK_DGRAM && e.sock.name == name)
        .map(|e| e.inode)
}

fn err(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

fn new_socket(ty: i32) -> Result<i32, String> {
    // SAFETY: no pointers.
    let fd = unsafe { libc::socket(libc::AF_UNIX, ty | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(err("socket"));
    }
    Ok(fd)
}

fn close(fd: i32) {
    // SAFETY: closing a descriptor this module made.
    unsafe { libc::close(fd) };
}

fn sockaddr(name: &[u8]) -> Result<(libc::sockaddr_un, u32), String> {
    // SAFETY: sockaddr_un is plain old data.
    let mut sa: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    sa.sun_family = libc::AF_UNIX as u16;
    if name.len() >= sa.sun_path.len() {
        return Err(format!("the socket name {} is too long", show_name(name)));
    }
    for (d, &c) in sa.sun_path.iter_mut().zip(name) {
        *d = c as libc::c_char;
    }
    Ok((sa, (2 + name.len()) as u32))
}

/// Run `f` with the working directory `cwd` when `name` is a relative path.
fn in_dir<T>(cwd: &[u8], name: &[u8], f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    if name.first().is_none_or(|&c| c == 0 || c == b'/') || cwd.is_empty() {
        return f();
    }
    // SAFETY: opening "." read-only, a NUL-terminated literal.
    let here = unsafe { libc::open(c".".as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    if here < 0 {
        return Err(err("open ."));
    }
    let c = std::ffi::CString::new(cwd.to_vec()).map_err(|_| "a directory name holds a NUL")?;
    // SAFETY: valid C string.
    if unsafe { libc::chdir(c.as_ptr()) } != 0 {
        let e = err(&format!("chdir {}", String::from_utf8_lossy(cwd)));
        close(here);
        return Err(e);
    }
    let r = f();
    // SAFETY: going back to the directory held by `here`.
    unsafe { libc::fchdir(here) };
    close(here);
    r
}

/// Make a path name free for `bind`: a socket file of ours left by the
/// killed run (nothing listens: connecting is refused) is removed; anything
/// else there is an error.
fn free_name(ty: i32, name: &[u8]) -> Result<(), String> {
    if name.first().is_none_or(|&c| c == 0) {
        return Ok(());
    }
    let c = std::ffi::CString::new(name.to_vec()).map_err(|_| "a socket name holds a NUL")?;
    // SAFETY: stat is plain old data; lstat of a valid C string.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::lstat(c.as_ptr(), &mut st) } != 0 {
        return Ok(());
    }
    let shown = show_name(name);
    // SAFETY: no arguments.
    let me = unsafe { libc::geteuid() };
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK || st.st_uid != me {
        return Err(format!(
            "{shown} exists and is not a socket file of yours: remove it or move it away, then restart"
        ));
    }
    let probe = new_socket(ty)?;
    let (sa, len) = sockaddr(name)?;
    // SAFETY: connect with a valid address of `len` bytes.
    let r = unsafe { libc::connect(probe, (&sa as *const libc::sockaddr_un).cast(), len) };
    let e = std::io::Error::last_os_error();
    close(probe);
    if r == 0 || e.raw_os_error() != Some(libc::ECONNREFUSED) {
        return Err(format!(
            "{shown} is in use: a process outside the job has a socket there (stop it, then restart)"
        ));
    }
    // SAFETY: valid C string.
    if unsafe { libc::unlink(c.as_ptr()) } != 0 {
        return Err(err(&format!("cannot remove the stale socket file {shown}")));
    }
    Ok(())
}

fn bind(fd: i32, name: &[u8]) -> Result<(), String> {
    let (sa, len) = sockaddr(name)?;
    // SAFETY: bind with a valid address of `len` bytes.
    if unsafe { libc::bind(fd, (&sa as *const libc::sockaddr_un).cast(), len) } != 0 {
        return Err(err(&format!("cannot bind a socket to {}", show_name(name))));
    }
    Ok(())
}

fn connect(fd: i32, name: &[u8]) -> Result<(), String> {
    let (sa, len) = sockaddr(name)?;
    // SAFETY: connect with a valid address of `len` bytes.
    if unsafe { libc::connect(fd, (&sa as *const libc::sockaddr_un).cast(), len) } != 0 {
        return Err(err(&format!(
            "cannot connect a socket to {}",
            show_name(name)
        )));
    }
    Ok(())
}

fn set_int(fd: i32, opt: i32, v: i32) -> Result<(), String> {
    // SAFETY: setsockopt reading an int from a local.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&v as *const i32).cast(),
            std::mem::size_of::<i32>() as u32,
        )
    };
    if r != 0 {
        return Err(err("setsockopt"));
    }
    Ok(())
}

fn get_int(fd: i32, opt: i32) -> i32 {
    let mut v: i32 = 0;
    let mut len = std::mem::size_of::<i32>() as u32;
    // SAFETY: getsockopt writing an int into a local.
    unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&mut v as *mut i32).cast(),
            &mut len,
        )
    };
    v
}

/// A connected pair for `x` (and its peer `y`, if the job holds it).
/// Where one end of a stream or seqpacket connection has a name that is
/// the other's peer name (it was accepted from a listening socket there),
/// the connection is made through a temporary listening socket at that
/// name, so that both ends report the names they had; else `socketpair`,
/// each end bound to its own name. Returns `(x's fd, y's fd)`.
fn make_pair(x: &SavedEnd<'_>, y: Option<&SavedEnd<'_>>) -> Result<(i32, i32), String> {
    let ty = x.sock.ty;
    if ty != libc::SOCK_DGRAM {
        let own = |e: &SavedEnd<'_>| (e.sock.name.clone(), e.cwd.clone());
        if !x.sock.name.is_empty() && y.is_none_or(|y| y.sock.peer_name == x.sock.name) {
            return via_listener(ty, &x.sock.name, &x.cwd, y.map(own));
        }
        if let Some(y) = y
            && !y.sock.name.is_empty()
            && x.sock.peer_name == y.sock.name
        {
            let (s, c) = via_listener(ty, &y.sock.name, &y.cwd, Some(own(x)))?;
            return Ok((c, s));
        }
        if y.is_none() && !x.sock.peer_name.is_empty() {
            let (s, c) = via_listener(ty, &x.sock.peer_name, &x.cwd, Some(own(x)))?;
            return Ok((c, s));
        }
    }
    let mut p = [0i32; 2];
    // SAFETY: p is a valid 2-int array.
    if unsafe { libc::socketpair(libc::AF_UNIX, ty | libc::SOCK_CLOEXEC, 0, p.as_mut_ptr()) } != 0 {
        return Err(err("socketpair"));
    }
    let r = (|| {
        for (fd, e) in [(p[0], Some(x)), (p[1], y)] {
            if let Some(e) = e
                && !e.sock.name.is_empty()
            {
                in_dir(&e.cwd, &e.sock.name, || {
                    free_name(ty, &e.sock.name)?;
                    bind(fd, &e.sock.name)
                })?;
            }
        }
        Ok(())
    })();
    if let Err(e) = r {
        close(p[0]);
        close(p[1]);
        return Err(e);
    }
    Ok((p[0], p[1]))
}

/// A connection to `name` (relative to `cwd`), made through a temporary
/// listening socket there that is closed (and its file removed) at once;
/// the client end is first bound to its own name, if it had one. Returns
/// `(accepted end, client end)`.
fn via_listener(
    ty: i32,
    name: &[u8],
    cwd: &[u8],
    client: Option<(Vec<u8>, Vec<u8>)>,
) -> Result<(i32, i32), String> {
    in_dir(cwd, name, || {
        free_name(ty, name)?;
        let l = new_socket(ty)?;
        let r = (|| {
            bind(l, name)?;
            // SAFETY: listen on our socket.
            if unsafe { libc::listen(l, 1) } != 0 {
                return Err(err("listen"));
            }
            let c = new_socket(ty)?;
            let r = (|| {
                if let Some((cname, ccwd)) = &client
                    && !cname.is_empty()
                {
                    in_dir(ccwd, cname, || {
                        free_name(ty, cname)?;
                        bind(c, cname)
                    })?;
                }
                connect(c, name)?;
                // SAFETY: accept4 without an address.
                let s = unsafe {
                    libc::accept4(
                        l,
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                        libc::SOCK_CLOEXEC,
                    )
                };
                if s < 0 {
                    return Err(err("accept"));
                }
                Ok(s)
            })();
            match r {
                Ok(s) => Ok((s, c)),
                Err(e) => {
                    close(c);
                    Err(e)
                }
            }
        })();
        close(l);
        if name.first().is_some_and(|&c| c != 0) {
            let c =
                std::ffi::CString::new(name.to_vec()).map_err(|_| "a socket name holds a NUL")?;
            // SAFETY: valid C string; the file is the temporary listener's.
            unsafe { libc::unlink(c.as_ptr()) };
        }
        r
    })
}

/// Send `b` through `fd` (to the name `to`, or its peer), with the
/// descriptors `rights` attached to its first byte. `whole`: one message
/// (a datagram or record, or a piece of a stream that carries descriptors
/// and must stay one piece).
fn send_all(
    fd: i32,
    to: Option<&[u8]>,
    mut b: &[u8],
    whole: bool,
    rights: &[i32],
) -> Result<(), String> {
    let addr = match to {
        Some(name) => Some(sockaddr(name)?),
        None => None,
    };
    // SCM_RIGHTS: a cmsghdr (16 bytes) and the descriptors, 8-aligned.
    let mut ctl = vec![0u64; (16 + 4 * rights.len()).div_ceil(8)];
    if !rights.is_empty() {
        let bytes: Vec<u8> = [
            ((16 + 4 * rights.len()) as u64).to_ne_bytes().as_slice(),
            libc::SOL_SOCKET.to_ne_bytes().as_slice(),
            libc::SCM_RIGHTS.to_ne_bytes().as_slice(),
        ]
        .concat()
        .into_iter()
        .chain(rights.iter().flat_map(|r| r.to_ne_bytes()))
        .collect();
        for (w, c) in ctl.iter_mut().zip(bytes.chunks(8)) {
            let mut a = [0u8; 8];
            a[..c.len()].copy_from_slice(c);
            *w = u64::from_ne_bytes(a);
        }
    }
    let mut raised = false;
    let mut with_rights = !rights.is_empty();
    loop {
        let (ptr, len) = match &addr {
            Some((sa, l)) => (
                (sa as *const libc::sockaddr_un).cast::<libc::sockaddr>(),
                *l,
            ),
            None => (std::ptr::null(), 0),
        };
        let mut iov = libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        };
        // SAFETY: msghdr is plain old data.
        let mut m: libc::msghdr = unsafe { std::mem::zeroed() };
        m.msg_name = ptr as *mut libc::c_void;
        m.msg_namelen = len;
        m.msg_iov = &mut iov;
        m.msg_iovlen = 1;
        if with_rights {
            m.msg_control = ctl.as_mut_ptr().cast();
            m.msg_controllen = 16 + 4 * rights.len();
        }
        // SAFETY: sendmsg from our buffer, with a valid address or none, and
        // a control message built above.
        let n = unsafe { libc::sendmsg(fd, &m, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            if e.raw_os_error() == Some(libc::EAGAIN) && !raised {
                // The send buffer is smaller than what was queued: take the
                // largest this user may set; the saved size is set after.
                set_int(fd, libc::SO_SNDBUF, i32::MAX)?;
                raised = true;
                continue;
            }
            return Err(format!("cannot queue the saved data again: {e}"));
        }
        let n = n as usize;
        if whole && n != b.len() {
            return Err("a saved message was cut short".into());
        }
        // The descriptors went with the first bytes.
        with_rights = false;
        b = &b[n..];
        if b.is_empty() {
            return Ok(());
        }
    }
}

/// Carry out the plan for `ends`: every socket is made, connected, filled
/// with its queued data, given its options and shutdown state. On failure
/// everything made is closed.
pub fn restore_all(ends: &[SavedEnd<'_>], lend: Lend<'_>) -> Result<Restored, String> {
    let steps = plan(ends).map_err(|r| r.message)?;
    let mut by: HashMap<u64, &SavedEnd<'_>> = HashMap::new();
    for e in ends {
        by.entry(e.inode).or_insert(e);
    }
    let mut out = Restored::default();
    // Ends made only to stand for a closed peer, closed after the refill.
    let mut phantoms: HashMap<u64, i32> = HashMap::new();
    let r = carry_out(&steps, &by, &mut out, &mut phantoms, lend);
    for &fd in phantoms.values() {
        close(fd);
    }
    if let Err(e) = r {
        for &fd in out.fds.values() {
            close(fd);
        }
        return Err(e);
    }
    Ok(out)
}

fn carry_out(
    steps: &[Step],
    by: &HashMap<u64, &SavedEnd<'_>>,
    out: &mut Restored,
    phantoms: &mut HashMap<u64, i32>,
    lend: Lend<'_>,
) -> Result<(), String> {
    let get = |ino: u64| by.get(&ino).copied().ok_or("corrupt plan".to_string());
    for step in steps {
        match *step {
            Step::Pair(a, b) => {
                let (fa, fb) = make_pair(get(a)?, Some(get(b)?))?;
                out.fds.insert(a, fa);
                out.fds.insert(b, fb);
            }
            Step::Lonely(a) => {
                let (fa, fx) = make_pair(get(a)?, None)?;
                out.fds.insert(a, fa);
                phantoms.insert(a, fx);
            }
            Step::Reset(a) => {
                // A new pair whose other end writes back what was queued and
                // closes: never a socket at the outside peer's name.
                let e = get(a)?;
                let mut p = [0i32; 2];
                // SAFETY: p is a valid 2-int array.
                if unsafe {
                    libc::socketpair(
                        libc::AF_UNIX,
                        e.sock.ty | libc::SOCK_CLOEXEC,
                        0,
                        p.as_mut_ptr(),
                    )
                } != 0
                {
                    return Err(err("socketpair"));
                }
                out.fds.insert(a, p[0]);
                phantoms.insert(a, p[1]);
            }
            Step::Plain(a) => {
                let e = get(a)?;
                let fd = new_socket(e.sock.ty)?;
                out.fds.insert(a, fd);
                if !e.sock.name.is_empty() {
                    in_dir(&e.cwd, &e.sock.name, || {
                        free_name(e.sock.ty, &e.sock.name)?;
                        bind(fd, &e.sock.name)
                    })
                    .map_err(|m| format!("{}: {m}", e.who))?;
                }
            }
            Step::Listener(a) => {
                let e = get(a)?;
                let fd = new_socket(e.sock.ty)?;
                out.fds.insert(a, fd);
                in_dir(&e.cwd, &e.sock.name, || {
                    free_name(e.sock.ty, &e.sock.name)?;
                    bind(fd, &e.sock.name)
                })
                .map_err(|m| format!("{}: {m}", e.who))?;
                let backlog = i32::try_from(e.sock.backlog).unwrap_or(i32::MAX);
                // SAFETY: listen on our socket.
                if unsafe { libc::listen(fd, backlog) } != 0 {
                    return Err(err("listen"));
                }
            }
            Step::Pending { client, listener } => {
                let (c, l) = (get(client)?, get(listener)?);
                let fd = new_socket(c.sock.ty)?;
                out.fds.insert(client, fd);
                if !c.sock.name.is_empty() {
                    in_dir(&c.cwd, &c.sock.name, || {
                        free_name(c.sock.ty, &c.sock.name)?;
                        bind(fd, &c.sock.name)
                    })?;
                }
                in_dir(&l.cwd, &l.sock.name, || connect(fd, &l.sock.name))
                    .map_err(|m| format!("{}: {m}", c.who))?;
            }
            Step::ConnectTo { a, target } => {
                let (e, t) = (get(a)?, get(target)?);
                let fd = new_socket(e.sock.ty)?;
                out.fds.insert(a, fd);
                if !e.sock.name.is_empty() {
                    in_dir(&e.cwd, &e.sock.name, || {
                        free_name(e.sock.ty, &e.sock.name)?;
                        bind(fd, &e.sock.name)
                    })?;
                }
                in_dir(&t.cwd, &t.sock.name, || connect(fd, &t.sock.name))
                    .map_err(|m| format!("{}: {m}", e.who))?;
            }
            Step::Stdio(_) => {}
        }
    }
    // Buffer sizes first: a saved datagram may be larger than a new
    // socket's default send buffer allows.
    for (ino, &fd) in out.fds.iter() {
        let e = get(*ino)?;
        buffers(fd, e.sock).map_err(|m| format!("{}: {m}", e.who))?;
    }
    // The queued data, written by whoever sent it, with the descriptors in
    // flight: unix sockets are those made here, the rest is lent.
    let fd_of = |ino: u64| out.fds.get(&ino).copied();
    let rights = |e: &SavedEnd<'_>, f: &InFlight| -> Result<Lent, String> {
        if f.kind == Kind::Socket {
            return fd_of(f.inode).map(Lent::Borrowed).ok_or_else(|| {
                format!(
                    "{}: the socket in flight in it ({}) was not made",
                    e.who, f.path
                )
            });
        }
        lend(e.pid, f).map_err(|m| format!("{}: a descriptor in flight in it: {m}", e.who))
    };
    // The job's named datagram sockets, made above: a datagram queued from
    // one of them is sent again from it.
    let named: HashMap<&[u8], i32> = by
        .values()
        .filter(|e| e.sock.ty == libc::SOCK_DGRAM && !e.sock.name.is_empty())
        .filter_map(|e| Some((e.sock.name.as_slice(), fd_of(e.inode)?)))
        .collect();
    for step in steps {
        match *step {
            Step::Pair(a, b) => {
                refill(get(a)?, fd_of(b), &rights)?;
                refill(get(b)?, fd_of(a), &rights)?;
            }
            Step::Lonely(a) | Step::Reset(a) => {
                refill(get(a)?, phantoms.get(&a).copied(), &rights)?
            }
            Step::Plain(a) => refill_to(get(a)?, None, &named, &rights)?,
            Step::ConnectTo { a, target } => refill_to(get(a)?, fd_of(target), &named, &rights)?,
            _ => {}
        }
    }
    // Options, shutdown, and names unlinked since they were bound.
    for step in steps {
        let inos: &[u64] = match step {
            Step::Pair(a, b) => &[*a, *b],
            Step::Lonely(a) | Step::Plain(a) | Step::Listener(a) => std::slice::from_ref(a),
            Step::Pending { client, .. } => std::slice::from_ref(client),
            Step::ConnectTo { a, .. } => std::slice::from_ref(a),
            Step::Stdio(_) | Step::Reset(_) => &[],
        };
        for &ino in inos {
            let (e, Some(&fd)) = (get(ino)?, out.fds.get(&ino)) else {
                continue;
            };
            options(fd, e.sock).map_err(|m| format!("{}: {m}", e.who))?;
        }
    }
    // The closed peers: their ends go now (the survivor sees end of file
    // after its queue).
    for (_, fx) in phantoms.drain() {
        close(fx);
    }
    for e in by.values() {
        if e.sock.unlinked
            && let Some(p) = e.sock.path_name()
            && out.fds.contains_key(&e.inode)
        {
            let c = std::ffi::CString::new(p.to_vec()).map_err(|_| "a socket name holds a NUL")?;
            in_dir(&e.cwd, p, || {
                // SAFETY: valid C string; the file is the one bound above.
                unsafe { libc::unlink(c.as_ptr()) };
                Ok(())
            })?;
        }
    }
    Ok(())
}

/// The descriptors to send with `m`, made or lent by `rights`.
type Rights<'r> = dyn Fn(&SavedEnd<'_>, &InFlight) -> Result<Lent, String> + 'r;

/// Send `b`, one message of `e`'s queue, through `w` (to `to`), with the
/// descriptors in flight it carried; the descriptors made for it are
/// closed after.
fn send_message(
    e: &SavedEnd<'_>,
    w: i32,
    to: Option<&[u8]>,
    b: &[u8],
    m: &super::Message,
    rights: &Rights<'_>,
) -> Result<(), String> {
    let mut lent = Vec::with_capacity(m.fds.len());
    let r = (|| {
        for f in &m.fds {
            lent.push(rights(e, f)?);
        }
        let fds: Vec<i32> = lent.iter().map(|l| l.fd()).collect();
        if !fds.is_empty() {
            // A piece that carries descriptors stays one piece: room for it
            // at once (the saved size is set again after the refill).
            set_int(w, libc::SO_SNDBUF, i32::MAX)?;
        }
        let whole = e.sock.ty != libc::SOCK_STREAM || !fds.is_empty();
        send_all(w, to, b, whole, &fds).map_err(|m| format!("{}: {m}", e.who))
    })();
    for l in lent {
        if let Lent::Owned(fd) = l {
            close(fd);
        }
    }
    r
}

/// Write `e`'s queued messages into it through its peer `writer`.
fn refill(e: &SavedEnd<'_>, writer: Option<i32>, rights: &Rights<'_>) -> Result<(), String> {
    if e.data.is_empty() {
        return Ok(());
    }
    let w = writer.ok_or_else(|| format!("{}: no peer to write its queued data", e.who))?;
    let mut at = 0usize;
    let saved = get_int(w, libc::SO_SNDBUF);
    for m in &e.sock.queue {
        let len = usize::try_from(m.len).map_err(|_| "corrupt queue length")?;
        let b = e
            .data
            .get(at..at + len)
            .ok_or_else(|| format!("{}: corrupt image: queued data is short", e.who))?;
        send_message(e, w, None, b, m, rights)?;
        at += len;
    }
    if get_int(w, libc::SO_SNDBUF) != saved {
        set_int(w, libc::SO_SNDBUF, saved / 2)?;
    }
    Ok(())
}

/// Send `e`'s queued datagrams to its name, each from the socket of the
/// job named as its sender (`named`), else from `writer` or from a
/// temporary unnamed socket.
fn refill_to(
    e: &SavedEnd<'_>,
    writer: Option<i32>,
    named: &HashMap<&[u8], i32>,
    rights: &Rights<'_>,
) -> Result<(), String> {
    if e.data.is_empty() {
        return Ok(());
    }
    let (w, temp) = match writer {
        Some(w) => (w, false),
        None => (new_socket(e.sock.ty)?, true),
    };
    // Writers of the job get their send buffer sizes back after (a refill
    // may raise them).
    let mut saved: Vec<(i32, i32)> = Vec::new();
    let r = in_dir(&e.cwd, &e.sock.name, || {
        let mut at = 0usize;
        for m in &e.sock.queue {
            let len = usize::try_from(m.len).map_err(|_| "corrupt queue length")?;
            let b = e
                .data
                .get(at..at + len)
                .ok_or_else(|| format!("{}: corrupt image: queued data is short", e.who))?;
            let from = if m.from.is_empty() {
                w
            } else {
                *named.get(m.from.as_slice()).ok_or_else(|| {
                    format!(
                        "{}: the sender of a datagram queued in it ({}) was not made",
                        e.who,
                        show_name(&m.from)
                    )
                })?
            };
            if (from != w || !temp) && !saved.iter().any(|&(fd, _)| fd == from) {
                saved.push((from, get_int(from, libc::SO_SNDBUF)));
            }
            send_message(e, from, Some(&e.sock.name), b, m, rights)?;
            at += len;
        }
        Ok(())
    });
    if temp {
        close(w);
    }
    for (fd, size) in saved {
        if get_int(fd, libc::SO_SNDBUF) != size {
            set_int(fd, libc::SO_SNDBUF, size / 2)?;
        }
    }
    r
}

/// Send and receive buffer sizes (`getsockopt` reports twice what
/// `setsockopt` was given).
fn buffers(fd: i32, s: &UnixSocket) -> Result<(), String> {
    for (opt, want) in [(libc::SO_SNDBUF, s.sndbuf), (libc::SO_RCVBUF, s.rcvbuf)] {
        if want > 0 && get_int(fd, opt) != want {
            set_int(fd, opt, want / 2)?;
        }
    }
    Ok(())
}

/// Other options and the shutdown state.
fn options(fd: i32, s: &UnixSocket) -> Result<(), String> {
    if s.passcred {
        set_int(fd, libc::SO_PASSCRED, 1)?;
    }
    if s.peek_off >= 0 {
        set_int(fd, libc::SO_PEEK_OFF, s.peek_off)?;
    }
    let how = match s.shutdown & 3 {
        1 => Some(libc::SHUT_RD),
        2 => Some(libc::SHUT_WR),
        3 => Some(libc::SHUT_RDWR),
        _ => None,
    };
    if let Some(how) = how
        && s.state == State::Connected
        && s.peer != 0
    {
        // SAFETY: shutdown of our socket.
        if unsafe { libc::shutdown(fd, how) } != 0 {
            return Err(err("shutdown"));
        }
    }
    Ok(())
}
