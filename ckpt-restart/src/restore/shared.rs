//! Kernel objects shared between the restored processes, created once by
//! the job's init before it recreates the tree, and inherited by every
//! process (which then takes what it needs and closes the rest).
//!
//! - open file descriptions shared by several descriptors (same offset),
//!   as grouped by kcmp at checkpoint time: opened once; kernel objects
//!   (eventfd, timerfd, signalfd, epoll) held by several descriptors:
//!   created once with their saved state;
//! - pipes with both ends inside the job: one new pipe per saved pipe, with
//!   the bytes that were buffered in it written back;
//! - unix sockets, connected as they were, with their queued data
//!   (`ckpt::objects::unix_socket`);
//! - shared anonymous memory (`MAP_SHARED|MAP_ANONYMOUS`, memfd): one memfd
//!   per saved object, filled from the images, mapped by every process.

use std::collections::HashMap;
use std::os::unix::fs::{FileExt, MetadataExt as _, OpenOptionsExt as _};
use std::path::Path;

use ckpt::image::generation::LoadedGeneration;
use ckpt::image::manifest::{FdKind, ImageRef, RegionKind};
use ckpt::objects::Object;
use ckpt::objects::pty;
use ckpt::objects::unix_socket::rights::{self, Lent};

use super::names::name_bytes;

/// Descriptors held by the init for the processes to take.
#[derive(Default, Debug)]
pub struct Shared {
    /// (pid, fd) -> descriptor of a shared open file description.
    pub files: HashMap<(i32, i32), i32>,
    /// (pid, fd) -> state of a kernel object held by several descriptors,
    /// combined from every holder's image (for `Object::connect`).
    pub objects: HashMap<(i32, i32), Object>,
    /// pipe inode -> (read end, write end).
    pub pipes: HashMap<u64, (i32, i32)>,
    /// unix socket inode (at checkpoint time) -> the socket made for it.
    pub sockets: HashMap<u64, i32>,
    /// shared memory (device, inode) -> memfd.
    pub memfds: HashMap<(u64, u64), i32>,
    /// (pid, level of its chain) -> memory file holding that compressed
    /// image decompressed (`super::expand`).
    pub images: HashMap<(i32, usize), i32>,
    /// Far ends of pipes whose other end is outside the job, kept open by
    /// the init for the job's lifetime so the program's end behaves as before.
    pub keep: Vec<i32>,
    /// First descriptor number used for these.
    pub lo: i32,
    /// One past the last.
    pub hi: i32,
}

/// Move `fd` to the lowest free number at or above `min` (closing `fd`).
pub fn dup_at_least(fd: i32, min: i32) -> Result<i32, String> {
    // SAFETY: duplicating a descriptor we own.
    let r = unsafe { libc::fcntl(fd, libc::F_DUPFD, min) };
    // SAFETY: the original is ours.
    unsafe { libc::close(fd) };
    if r < 0 {
        Err(format!(
            "cannot duplicate a descriptor: {}",
            std::io::Error::last_os_error()
        ))
    } else {
        Ok(r)
    }
}

/// Open the image file `name` of generation directory `dir` for reading:
/// once, without following a link, and check the descriptor itself (a
/// regular file of ours, of the size the generation record lists), so that
/// what is read is what was checked, never another user's file.
/// Non-blocking: a FIFO planted under the name is refused, not waited on.
/// Whether at least half of the file behind `fd` is in the page cache
/// (`mincore` of a read-only mapping). A restart drops what it read of an
/// image that was not (docs/image-format.md, "Page cache").
pub fn mostly_cached(fd: i32) -> bool {
    // SAFETY: fstat into a zeroed stat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fd is ours, st is valid.
    if unsafe { libc::fstat(fd, &mut st) } != 0 || st.st_size <= 0 {
        return false;
    }
    let len = st.st_size as usize;
    // SAFETY: a fresh read-only shared mapping of our descriptor.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return false;
    }
    let pages = len.div_ceil(4096);
    let mut v = vec![0u8; pages];
    // SAFETY: v has one byte per page of the mapping.
    let ok = unsafe { libc::mincore(p, len, v.as_mut_ptr()) } == 0;
    // SAFETY: unmapping what we mapped.
    unsafe { libc::munmap(p, len) };
    ok && v.iter().filter(|&&b| b & 1 != 0).count() * 2 >= pages
}

/// The image whose pages stage 2 reads: the file itself, or, for a
/// compressed image (format 1.8), a memory file holding it decompressed
/// (true): every frame that holds part of a `wanted` range (file offsets
/// and lengths, sorted, not overlapping), the others left as holes. Stage 2
/// frees each part of the memory file once it has read it (`RST_IMG_PUNCH`).
/// The part of an image stored as it is (descriptor data, shared memory) is
/// at the same offsets either way: other readers use [`open_image`].
pub fn open_image_pages(
    dir: &Path,
    name: &str,
    size: u64,
    wanted: &[(u64, u64)],
    threads: usize,
) -> Result<(std::fs::File, bool), String> {
    let f = open_image(dir, name, size)?;
    let path = dir.join(name);
    let mut head = [0u8; ckpt::image::format::HEADER_USED];
    f.read_exact_at(&mut head, 0)
        .map_err(|e| format!("{}: reading the header: {e}", path.display()))?;
    let h = ckpt::image::format::decode(&path.display().to_string(), &head, size)
        .map_err(|e| e.to_string())?;
    let Some(z) = h.compressed else {
        return Ok((f, false));
    };
    let cold = !mostly_cached(std::os::fd::AsRawFd::as_raw_fd(&f));
    if cold {
        // Start reading the whole file now: the decompressing threads then
        // find their frames in the page cache instead of each waiting for
        // its own reads in turn.
        // SAFETY: advice on our own descriptor.
        unsafe {
            libc::posix_fadvise(
                std::os::fd::AsRawFd::as_raw_fd(&f),
                0,
                0,
                libc::POSIX_FADV_WILLNEED,
            )
        };
    }
    // SAFETY: memfd_create with a static name; the result is checked.
    let fd = unsafe { libc::memfd_create(c"ckpt-image".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(format!(
            "{}: cannot make a memory file to decompress it into: {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: a fresh descriptor we own.
    let out = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let needed = |start: u64, len: u64| {
        let i = wanted.partition_point(|&(o, n)| o.saturating_add(n) <= start);
        wanted.get(i).is_some_and(|&(o, _)| o < start + len)
    };
    let r = ckpt::image::compress::expand(&f, &z, size, &out, needed, threads)
        .map_err(|e| format!("{}: corrupt image: {e}", path.display()));
    if cold {
        // SAFETY: advice on our own descriptor.
        unsafe {
            libc::posix_fadvise(
                std::os::fd::AsRawFd::as_raw_fd(&f),
                0,
                0,
                libc::POSIX_FADV_DONTNEED,
            )
        };
    }
    r.map(|()| (out, true))
}

pub fn open_image(dir: &Path, name: &str, size: u64) -> Result<std::fs::File, String> {
    let path = dir.join(name);
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return Err(format!(
            "{}: corrupt image: file name {name:?} points outside its generation",
            path.display()
        ));
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let md = f
        .metadata()
        .map_err(|e| format!("cannot stat {}: {e}", path.display()))?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if md.uid() != me {
        return Err(format!(
            "{} belongs to uid {}, not to you (uid {me}): refusing to restore it",
            path.display(),
            md.uid()
        ));
    }
    if !md.is_file() {
        return Err(format!("{}: not a regular file", path.display()));
    }
    if md.len() != size {
        return Err(format!(
            "{}: size is {} bytes, expected {size} (changed since it was checked?)",
            path.display(),
            md.len()
        ));
    }
    Ok(f)
}

fn open_path(path: &[u8], flags: i32) -> Result<i32, String> {
    let c = std::ffi::CString::new(path.to_vec()).map_err(|_| "path with NUL".to_string())?;
    // SAFETY: valid C string.
    let fd = unsafe { libc::open(c.as_ptr(), flags, 0o600) };
    if fd < 0 {
        Err(std::io::Error::last_os_error().to_string())
    } else {
        Ok(fd)
    }
}

/// A new pipe whose ends are moved to the shared range.
fn new_pipe(
    s: &mut Shared,
    next: &impl Fn(&mut Shared, i32) -> Result<i32, String>,
) -> Result<(i32, i32), String> {
    let mut p = [0i32; 2];
    // SAFETY: p is a valid array.
    if unsafe { libc::pipe(p.as_mut_ptr()) } != 0 {
        return Err(format!(
            "cannot create a pipe: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok((next(s, p[0])?, next(s, p[1])?))
}

/// Flags worth reapplying when reopening (never O_CREAT/O_TRUNC/O_EXCL).
pub fn reopen_flags(saved: u32) -> i32 {
    let keep = libc::O_ACCMODE
        | libc::O_APPEND
        | libc::O_NONBLOCK
        | libc::O_DIRECT
        | libc::O_SYNC
        | libc::O_DSYNC
        | libc::O_NOATIME
        | libc::O_LARGEFILE;
    (saved as i32) & keep
}

/// The descriptors in flight in the job's unix sockets (SCM_RIGHTS), with
/// the pid of the process whose socket holds each.
fn in_flight(g: &LoadedGeneration) -> impl Iterator<Item = (i32, &rights::InFlight)> {
    g.processes.iter().flat_map(|m| {
        m.fds
            .iter()
            .filter_map(|f| f.socket.as_ref())
            .flat_map(|s| &s.queue)
            .flat_map(|q| &q.fds)
            .map(move |x| (m.pid, x))
    })
}

/// Open a saved file, directory or device again by path, with its flags,
/// at offset `seek` when given.
fn reopen(path: &str, dir: bool, flags: u32, seek: Option<u64>) -> Result<i32, String> {
    let flags = if dir {
        libc::O_RDONLY | libc::O_DIRECTORY
    } else {
        reopen_flags(flags)
    };
    let o = open_path(&name_bytes(path), flags | libc::O_CLOEXEC)?;
    if let Some(pos) = seek {
        // SAFETY: lseek on our descriptor.
        unsafe { libc::lseek(o, pos as i64, libc::SEEK_SET) };
    }
    Ok(o)
}

/// Create every shared object of generation `g`, at descriptors >= `lo`.
pub fn build(g: &LoadedGeneration, lo: i32) -> Result<Shared, String> {
    let mut s = Shared {
        lo,
        hi: lo,
        ..Shared::default()
    };
    let next = |s: &mut Shared, fd: i32| -> Result<i32, String> {
        let r = dup_at_least(fd, s.hi)?;
        s.hi = s.hi.max(r + 1);
        Ok(r)
    };
    // Shared open file descriptions (files, dirs, devices).
    for group in &g.record.shared_fds {
        let Some(&[pid, fd]) = group.first() else {
            continue;
        };
        let Some(m) = g.processes.iter().find(|m| m.pid == pid) else {
            continue;
        };
        let Some(f) = m.fds.iter().find(|f| f.fd == fd) else {
            continue;
        };
        if f.kind == FdKind::Object {
            // An eventfd, timerfd, signalfd or epoll instance held by several
            // descriptors: created once, here, with its state. An epoll
            // instance is created empty; its first holder registers its
            // targets in stage 1 (`stage1::connect_objects`).
            let mut state = f.object.clone().ok_or_else(|| {
                format!(
                    "corrupt image: fd {fd} of process {pid} ({}) has no saved state",
                    f.path
                )
            })?;
            for pf in group.iter().skip(1) {
                let other = g
                    .processes
                    .iter()
                    .find(|m| m.pid == pf[0])
                    .and_then(|m| m.fds.iter().find(|f| f.fd == pf[1]))
                    .and_then(|f| f.object.as_ref());
                if let Some(other) = other {
                    state.merge(other);
                }
            }
            let o = state
                .create(f.flags)
                .map_err(|e| format!("fd {fd} of process {pid} ({}): {e}", f.path))?;
            let o = next(&mut s, o)?;
            for pf in group {
                s.files.insert((pf[0], pf[1]), o);
                s.objects.insert((pf[0], pf[1]), state.clone());
            }
            continue;
        }
        if !matches!(f.kind, FdKind::File | FdKind::Dir | FdKind::Device) {
            continue;
        }
        let seek = (f.kind == FdKind::File).then_some(f.pos);
        let o = reopen(&f.path, f.kind == FdKind::Dir, f.flags, seek)
            .map_err(|e| format!("cannot reopen {} (fd {fd} of process {pid}): {e}", f.path))?;
        let o = next(&mut s, o)?;
        for pf in group {
            s.files.insert((pf[0], pf[1]), o);
        }
    }
    // Pseudo-terminals the job made (ckpt::objects::pty): a new pair for
    // each whose master a process holds; masters take it, slaves a new
    // slave of it, one per open file description. A slave whose master is
    // outside the job is the user's terminal: stage 1 gives the restart's.
    let mut masters: HashMap<(u64, u32), i32> = HashMap::new();
    for m in &g.processes {
        for f in &m.fds {
            let Some(p) = f.pty.filter(|p| p.master) else {
                continue;
            };
            if let Some(&o) = masters.get(&p.pair()) {
                s.files.insert((m.pid, f.fd), o);
                continue;
            }
            let o = pty::open_pair(f.flags as i32, &f.termios, p.winsize).map_err(|e| {
                format!(
                    "cannot make a pseudo-terminal again for fd {} of process {} (the master of /dev/pts/{}): {}",
                    f.fd,
                    m.pid,
                    p.index,
                    std::io::Error::from_raw_os_error(e.raw())
                )
            })?;
            let o = next(&mut s, o)?;
            masters.insert(p.pair(), o);
            s.files.insert((m.pid, f.fd), o);
        }
    }
    let mut slaves: HashMap<usize, i32> = HashMap::new();
    for m in &g.processes {
        for f in &m.fds {
            let Some(p) = f.pty.filter(|p| !p.master) else {
                continue;
            };
            let Some(&master) = masters.get(&p.pair()) else {
                continue;
            };
            let group = g
                .record
                .shared_fds
                .iter()
                .position(|grp| grp.iter().any(|pf| pf[0] == m.pid && pf[1] == f.fd));
            if let Some(&o) = group.and_then(|i| slaves.get(&i)) {
                s.files.insert((m.pid, f.fd), o);
                continue;
            }
            let o = pty::open_peer(master, f.flags as i32).map_err(|e| {
                format!(
                    "cannot open the new slave of /dev/pts/{} for fd {} of process {}: {}",
                    p.index,
                    f.fd,
                    m.pid,
                    std::io::Error::from_raw_os_error(e.raw())
                )
            })?;
            let o = next(&mut s, o)?;
            if let Some(i) = group {
                slaves.insert(i, o);
            }
            s.files.insert((m.pid, f.fd), o);
        }
    }
    // Pipes: one per saved pipe inode that the job holds.
    type PipeData<'a> = (&'a ImageRef, [u64; 2], Option<u32>);
    let mut seen_data: HashMap<u64, PipeData<'_>> = HashMap::new();
    // Which ends of each pipe the job holds. A pipe held only by write ends,
    // one of them at fd 1 or 2 (the job's stdout/stderr read outside the
    // job: srun's I/O pipes, `ckpt launch | cat`), or only by read ends, one
    // at fd 0, with nothing buffered (input from outside), is not recreated:
    // stage 1 gives those descriptors the restart command's own stdio
    // (`Source::Keep`, `external_std`). A new pipe there would have no
    // reader (EPIPE) or no writer.
    #[derive(Default)]
    struct Ends {
        read: bool,
        write: bool,
        stdio: bool,
        data: bool,
    }
    let mut ends: HashMap<u64, Ends> = HashMap::new();
    for m in &g.processes {
        for f in m.fds.iter().filter(|f| f.kind == FdKind::Pipe) {
            let e = ends.entry(f.inode).or_default();
            if (f.flags as i32) & libc::O_ACCMODE == libc::O_WRONLY {
                e.write = true;
                e.stdio |= f.fd == 1 || f.fd == 2;
            } else {
                e.read = true;
                e.stdio |= f.fd == 0;
            }
            e.data |= f.pipe_data.is_some_and(|[_, len]| len > 0);
        }
    }
    // An end in flight in a unix socket (SCM_RIGHTS) is the job's too.
    for x in in_flight(g).filter(|(_, x)| x.kind == rights::Kind::Pipe) {
        let e = ends.entry(x.1.inode).or_default();
        if (x.1.flags as i32) & libc::O_ACCMODE == libc::O_WRONLY {
            e.write = true;
        } else {
            e.read = true;
        }
    }
    let external = |ino: u64| {
        ends.get(&ino)
            .is_some_and(|e| e.stdio && e.read != e.write && !(e.read && e.data))
    };
    for m in &g.processes {
        for f in m.fds.iter().filter(|f| f.kind == FdKind::Pipe) {
            if external(f.inode) {
                let in_std_group = g.record.shared_fds.iter().any(|grp| {
                    grp.iter().any(|pf| pf[0] == m.pid && pf[1] == f.fd)
                        && grp.iter().any(|pf| pf[1] <= 2)
                });
                if f.fd > 2 && !in_std_group && !s.pipes.contains_key(&f.inode) {
                    // An outside pipe at a descriptor other than stdio: a fresh
                    // pipe whose far end the init keeps open for the job's life.
                    let (r, w) = new_pipe(&mut s, &next)?;
                    s.pipes.insert(f.inode, (r, w));
                    let write_end = (f.flags as i32) & libc::O_ACCMODE == libc::O_WRONLY;
                    s.keep.push(if write_end { r } else { w });
                }
                continue;
            }
            if let Some(d) = f.pipe_data {
                seen_data
                    .entry(f.inode)
                    .or_insert((&m.image, d, f.pipe_crc));
            }
            if s.pipes.contains_key(&f.inode) {
                continue;
            }
            let ends = new_pipe(&mut s, &next)?;
            s.pipes.insert(f.inode, ends);
        }
    }
    for (ino, (img, [off, len], crc)) in &seen_data {
        let Some(&(_, w)) = s.pipes.get(ino) else {
            continue;
        };
        let file = open_image(&g.path, &img.file, img.size)?;
        let img = g.path.join(&img.file);
        let mut buf = vec![0u8; *len as usize];
        file.read_exact_at(&mut buf, *off)
            .map_err(|e| format!("{}: reading buffered pipe data: {e}", img.display()))?;
        if let Some(want) = crc
            && ckpt::image::checksum::crc32c(&buf) != *want
        {
            return Err(format!(
                "{}: corrupt image: the {len} bytes buffered in a pipe at offset {off} do not match their checksum",
                img.display()
            ));
        }
        // SAFETY: F_SETPIPE_SZ takes an int; a failure only limits how much fits.
        unsafe { libc::fcntl(w, libc::F_SETPIPE_SZ, (*len as i32).max(65536)) };
        let mut done = 0usize;
        while done < buf.len() {
            // SAFETY: writing from our buffer into our pipe.
            let n = unsafe { libc::write(w, buf[done..].as_ptr().cast(), buf.len() - done) };
            if n <= 0 {
                return Err("cannot refill a pipe with its buffered data".into());
            }
            done += n as usize;
        }
    }
    // Unix sockets: every one the job holds, paired and filled as they were
    // (ckpt::objects::unix_socket). One end of a pair may be in another
    // process: all are made here and inherited.
    let mut seen: HashMap<u64, usize> = HashMap::new();
    // Sockets (unix, TCP, UDP) the job holds only at descriptors 0..2.
    let mut low: HashMap<u64, bool> = HashMap::new();
    for f in g.processes.iter().flat_map(|m| &m.fds) {
        if f.socket.is_some() || f.inet.is_some() {
            *low.entry(f.inode).or_insert(true) &= f.fd <= 2;
        }
    }
    let mut holders = Vec::new();
    for m in &g.processes {
        for f in &m.fds {
            let Some(sock) = &f.socket else { continue };
            if seen.contains_key(&f.inode) {
                continue;
            }
            seen.insert(f.inode, holders.len());
            holders.push((m, f, sock));
        }
    }
    // Descriptors in flight in them (SCM_RIGHTS) that share an open file
    // description with a descriptor of the receiving process: that
    // description is made here, for both.
    for (pid, x) in in_flight(g) {
        let Some(n) = x.same_as else { continue };
        if !matches!(x.kind, rights::Kind::File | rights::Kind::Dir)
            || s.files.contains_key(&(pid, n))
        {
            continue;
        }
        let f = g
            .processes
            .iter()
            .find(|m| m.pid == pid)
            .and_then(|m| m.fds.iter().find(|f| f.fd == n))
            .ok_or_else(|| format!("corrupt image: fd {n} of process {pid} is not saved"))?;
        let dir = f.kind == FdKind::Dir;
        let o = reopen(&f.path, dir, f.flags, (!dir).then_some(f.pos))
            .map_err(|e| format!("cannot reopen {} (fd {n} of process {pid}): {e}", f.path))?;
        let o = next(&mut s, o)?;
        s.files.insert((pid, n), o);
    }
    let mut ends = Vec::new();
    for (m, f, sock) in &holders {
        let data = match sock.data {
            Some([off, len]) => read_checked(&g.path, m, off, len, sock.crc)?,
            None => Vec::new(),
        };
        ends.push(ckpt::objects::unix_socket::SavedEnd {
            inode: f.inode,
            sock,
            data,
            cwd: name_bytes(&m.cwd),
            stdio_only: low.get(&f.inode).copied().unwrap_or(false),
            reset_outside: g.record.reset_outside,
            who: format!("fd {} of process {} ({})", f.fd, m.pid, m.exe),
            pid: m.pid,
        });
    }
    if !ends.is_empty() {
        // What goes with a message besides the unix sockets made there.
        let lend = |pid: i32, x: &rights::InFlight| -> Result<Lent, String> {
            match x.kind {
                rights::Kind::Pipe => {
                    let &(r, w) = s
                        .pipes
                        .get(&x.inode)
                        .ok_or_else(|| format!("the pipe {} was not made", x.path))?;
                    let write = (x.flags as i32) & libc::O_ACCMODE == libc::O_WRONLY;
                    Ok(Lent::Borrowed(if write { w } else { r }))
                }
                rights::Kind::File | rights::Kind::Dir => match x.same_as {
                    Some(n) => s
                        .files
                        .get(&(pid, n))
                        .map(|&fd| Lent::Borrowed(fd))
                        .ok_or_else(|| format!("{} was not reopened", x.path)),
                    None => {
                        let dir = x.kind == rights::Kind::Dir;
                        reopen(&x.path, dir, x.flags, (!dir).then_some(x.pos)).map(Lent::Owned)
                    }
                    .map_err(|e| format!("cannot reopen {}: {e}", x.path)),
                },
                _ => Err(format!("{} cannot be sent again", x.path)),
            }
        };
        let made = ckpt::objects::unix_socket::restore_all(&ends, &lend)?;
        for (ino, fd) in made.fds {
            let fd = next(&mut s, fd)?;
            s.sockets.insert(ino, fd);
        }
    }
    // TCP and UDP sockets likewise (ckpt::objects::inet_socket): both ends
    // of a connection made here, with the bytes each had received.
    let mut ends = Vec::new();
    let mut seen: HashMap<u64, ()> = HashMap::new();
    for m in &g.processes {
        for f in &m.fds {
            let Some(sock) = &f.inet else { continue };
            if seen.insert(f.inode, ()).is_some() {
                continue;
            }
            let data = match sock.data {
                Some([off, len]) => read_checked(&g.path, m, off, len, sock.crc)?,
                None => Vec::new(),
            };
            ends.push(ckpt::objects::inet_socket::SavedEnd {
                inode: f.inode,
                sock,
                data,
                stdio_only: low.get(&f.inode).copied().unwrap_or(false),
                reset_outside: g.record.reset_outside,
                across: g.record.across.iter().any(|a| a.inode == f.inode),
                stand_in: g.record.across.iter().any(|a| a.inode == f.inode && a.pmix),
                inherited: g.record.inherited.contains(&f.inode),
                who: format!("fd {} of process {} ({})", f.fd, m.pid, m.exe),
            });
        }
    }
    if !ends.is_empty() {
        for (ino, fd) in ckpt::objects::inet_socket::restore_all(&ends)? {
            let fd = next(&mut s, fd)?;
            s.sockets.insert(ino, fd);
        }
    }
    // Shared anonymous memory.
    let mut sizes: HashMap<(u64, u64), u64> = HashMap::new();
    for m in &g.processes {
        for r in m
            .regions
            .iter()
            .filter(|r| r.kind == RegionKind::SharedAnon)
        {
            let e = sizes.entry((r.dev, r.inode)).or_insert(0);
            *e = (*e).max(r.offset + (r.end - r.start));
        }
    }
    for (key, size) in &sizes {
        let name = std::ffi::CString::new("ckpt-shm").unwrap_or_default();
        // SAFETY: valid name.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), 0) };
        if fd < 0 {
            return Err(format!("memfd_create: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: sizing our memfd.
        if unsafe { libc::ftruncate(fd, *size as i64) } != 0 {
            return Err(format!(
                "cannot size shared memory: {}",
                std::io::Error::last_os_error()
            ));
        }
        let fd = next(&mut s, fd)?;
        s.memfds.insert(*key, fd);
    }
    // (Processes started again rather than restored have no image.)
    for m in g.processes.iter().filter(|m| !m.image.file.is_empty()) {
        let img = g.path.join(&m.image.file);
        let file = open_image(&g.path, &m.image.file, m.image.size)?;
        for r in m
            .regions
            .iter()
            .filter(|r| r.kind == RegionKind::SharedAnon && !r.runs.is_empty())
        {
            let Some(&fd) = s.memfds.get(&(r.dev, r.inode)) else {
                continue;
            };
            let mut off = r.data_offset;
            let mut crc = ckpt::image::checksum::Crc32c::new();
            for run in &r.runs {
                let len = (run[1] * 4096) as usize;
                let mut buf = vec![0u8; len];
                file.read_exact_at(&mut buf, off)
                    .map_err(|e| format!("{}: {e}", img.display()))?;
                crc.update(&buf);
                // SAFETY: pwrite from our buffer into our memfd.
                let n = unsafe {
                    libc::pwrite(
                        fd,
                        buf.as_ptr().cast(),
                        len,
                        (r.offset + run[0] * 4096) as i64,
                    )
                };
                if n != len as isize {
                    return Err("cannot fill shared memory".into());
                }
                off += len as u64;
            }
            if crc.finish() != r.crc {
                return Err(format!(
                    "{}: corrupt image: shared memory at {:#x} fails its checksum",
                    img.display(),
                    r.start
                ));
            }
        }
    }
    Ok(s)
}

/// The bytes queued in a socket, read from `m`'s image at `off` and checked
/// against their CRC-32C.
fn read_checked(
    dir: &Path,
    m: &ckpt::image::manifest::ProcessManifest,
    off: u64,
    len: u64,
    crc: u32,
) -> Result<Vec<u8>, String> {
    let file = open_image(dir, &m.image.file, m.image.size)?;
    let img = dir.join(&m.image.file);
    let mut data = vec![0u8; usize::try_from(len).map_err(|_| "corrupt socket data length")?];
    file.read_exact_at(&mut data, off)
        .map_err(|e| format!("{}: reading queued socket data: {e}", img.display()))?;
    if ckpt::image::checksum::crc32c(&data) != crc {
        return Err(format!(
            "{}: corrupt image: the {len} bytes queued in a socket at offset {off} do not match their checksum",
            img.display()
        ));
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt as _;

    #[test]
    fn open_image_checks_the_descriptor() {
        let dir = std::env::temp_dir().join(format!("ckpt-open-image-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("proc-2.img"), vec![0u8; 8192]).unwrap();
        std::os::unix::fs::symlink(dir.join("proc-2.img"), dir.join("proc-3.img")).unwrap();
        let fifo = std::ffi::CString::new(dir.join("proc-4.img").as_os_str().as_bytes()).unwrap();
        // SAFETY: valid C string.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert!(open_image(&dir, "proc-2.img", 8192).is_ok());
        let refused = |name: &str, size: u64, says: &str| {
            let e = open_image(&dir, name, size).unwrap_err();
            assert!(e.contains(says), "{name}: {e}");
        };
        refused("proc-2.img", 4096, "expected 4096");
        refused("proc-3.img", 8192, "proc-3.img");
        refused("proc-4.img", 0, "not a regular file");
        refused("../proc-2.img", 8192, "outside its generation");
        refused("/etc/passwd", 8192, "outside its generation");
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            std::os::unix::fs::chown(dir.join("proc-2.img"), Some(65534), None).unwrap();
            refused("proc-2.img", 8192, "belongs to uid 65534");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
