//! Stage 1 of restore: runs in the freshly created process (already with
//! the saved pid, inside the job's namespaces), as ordinary Rust.
//!
//! It rebuilds what the kernel keeps outside memory — file descriptors,
//! working directory, umask, rlimits, signal actions, interval timers,
//! terminal settings — opens the files that memory regions map, prepares
//! the stage 2 argument block in a mapping that collides with nothing, and
//! jumps to stage 2. It never returns: either the program runs, or the
//! process exits with [`RST_EXIT_FAILED`] after printing why.

use std::collections::{BTreeMap, HashMap};

use super::shared::{Shared, reopen_flags};
use std::ffi::CString;
use std::os::fd::AsRawFd as _;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use ckpt::image::generation::LoadedGeneration;
use ckpt::image::manifest::{Fd, FdKind, ProcessManifest, RegionKind};
use ckpt::objects::posix_timer::{self, PosixTimer};
use ckpt::preload::finish::{FinishArgs, FinishThread};
use ckpt::signal_safe::raw;

use super::blob::{self, MmMap, RST_EXIT_FAILED, RstArgs, RstRange, RstRegion};
use super::names::name_bytes;

/// What stage 1 needs beyond the manifest.
pub struct Stage1<'a> {
    /// Generation directory.
    pub gen_dir: &'a Path,
    /// The process to restore.
    pub m: &'a ProcessManifest,
    /// Coordinator socket path for the restored program.
    pub socket: &'a Path,
    /// Pipe to the init process: 'K' on success, a step code on failure.
    pub status_fd: i32,
    /// Verify page checksums.
    pub verify: bool,
    /// Objects shared with other processes, created by the init.
    pub shared: &'a Shared,
    /// Groups of descriptors sharing an open file description.
    pub shared_fds: &'a [Vec<[i32; 2]>],
    /// The generations an incremental image refers to, nearest first.
    pub bases: &'a [LoadedGeneration],
    /// Arm dirty-page tracking against this generation (0: do not).
    pub track_generation: u64,
}

/// Step code of a stage 1 failure (its message is printed here).
pub const STAGE1_FAILED: u32 = 100;

/// Write a failure record to the init's status pipe.
pub fn report(status_fd: i32, code: u32, addr: u64, err: i64) {
    let f = blob::RstFailure {
        code,
        pid: raw::getpid(),
        addr,
        err,
    };
    // SAFETY: RstFailure is plain old data; we view its bytes.
    let b = unsafe {
        std::slice::from_raw_parts(
            (&f as *const blob::RstFailure).cast::<u8>(),
            std::mem::size_of::<blob::RstFailure>(),
        )
    };
    let _ = raw::write(status_fd, b);
}

fn cstr(p: &[u8]) -> CString {
    CString::new(p.to_vec()).unwrap_or_else(|_| CString::new("/nonexistent").unwrap_or_default())
}

fn dup_above(fd: i32, min: i32, cloexec: bool) -> std::io::Result<i32> {
    let cmd = if cloexec {
        libc::F_DUPFD_CLOEXEC
    } else {
        libc::F_DUPFD
    };
    // SAFETY: fcntl dup of an fd we own.
    let r = unsafe { libc::fcntl(fd, cmd, min) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn open_at(path: &[u8], flags: i32) -> std::io::Result<i32> {
    let c = cstr(path);
    // SAFETY: c is a valid C string.
    let fd = unsafe { libc::open(c.as_ptr(), flags, 0o600) };
    if fd < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(fd)
    }
}

fn place(fd: i32, target: i32) -> std::io::Result<()> {
    if fd != target {
        // SAFETY: dup2 between fds we own.
        if unsafe { libc::dup2(fd, target) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is ours and no longer needed.
        unsafe { libc::close(fd) };
    }
    Ok(())
}

fn open_fds() -> Vec<i32> {
    let mut v: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v
}

/// Where a restored descriptor comes from.
enum Source {
    /// Keep the descriptor the restart command gave us (stdio).
    Keep,
    /// Duplicate this descriptor.
    Dup(i32),
    /// Open by ourselves.
    Open,
}

fn external_std(s: &Stage1<'_>, f: &Fd) -> Option<i32> {
    // Another descriptor of the same open file description at 0..2 in any process.
    let group = s
        .shared_fds
        .iter()
        .find(|g| g.iter().any(|pf| pf[0] == s.m.pid && pf[1] == f.fd))?;
    group.iter().map(|pf| pf[1]).filter(|&fd| fd <= 2).min()
}

fn source(s: &Stage1<'_>, f: &Fd) -> Source {
    if let Some(&fd) = s.shared.files.get(&(s.m.pid, f.fd)) {
        return Source::Dup(fd);
    }
    if f.kind == FdKind::Socket
        && let Some(&fd) = s.shared.sockets.get(&f.inode)
    {
        return Source::Dup(fd);
    }
    match f.kind {
        FdKind::Pipe => {
            if let Some(&(r, w)) = s.shared.pipes.get(&f.inode) {
                return Source::Dup(if (f.flags as i32) & libc::O_ACCMODE == libc::O_WRONLY {
                    w
                } else {
                    r
                });
            }
            // The other end is outside the job: stdio of the restart command.
            if f.fd <= 2 {
                return Source::Keep;
            }
            external_std(s, f).map_or(Source::Open, Source::Dup)
        }
        FdKind::Tty | FdKind::Socket if f.fd <= 2 => Source::Keep,
        FdKind::Tty | FdKind::Socket => external_std(s, f).map_or(Source::Open, Source::Dup),
        _ => Source::Open,
    }
}

fn restore_fds(s: &Stage1<'_>, keep_above: i32) -> Result<(), String> {
    let fds = &s.m.fds;
    let keep_std: Vec<i32> = fds
        .iter()
        .filter(|f| f.fd <= 2 && matches!(source(s, f), Source::Keep))
        .map(|f| f.fd)
        .collect();
    for fd in open_fds() {
        if fd >= s.shared.lo || keep_std.contains(&fd) {
            continue;
        }
        // SAFETY: closing helper fds that the program must not see.
        unsafe { libc::close(fd) };
    }
    let mut sorted: Vec<&Fd> = fds.iter().collect();
    sorted.sort_by_key(|f| f.fd);
    for f in sorted {
        let path = name_bytes(&f.path);
        let newfd = match source(s, f) {
            Source::Keep => continue,
            Source::Dup(from) => {
                // SAFETY: duplicating an inherited descriptor.
                let d = unsafe { libc::fcntl(from, libc::F_DUPFD_CLOEXEC, keep_above) };
                if d < 0 {
                    return Err(format!("fd {}: {}", f.fd, std::io::Error::last_os_error()));
                }
                d
            }
            Source::Open => match f.kind {
                FdKind::File => {
                    if path.ends_with(b" (deleted)") {
                        return Err(format!(
                            "fd {} refers to a file that was deleted before the checkpoint ({}); deleted open files are not supported yet",
                            f.fd, f.path
                        ));
                    }
                    let fd = open_at(&path, reopen_flags(f.flags) | libc::O_CLOEXEC)
                        .map_err(|e| format!("fd {}: cannot reopen {}: {e} (the file must still exist for the program to continue)", f.fd, f.path))?;
                    // SAFETY: lseek on our fd.
                    if unsafe { libc::lseek(fd, f.pos as i64, libc::SEEK_SET) } < 0 {
                        return Err(format!("fd {}: cannot seek {} to {}", f.fd, f.path, f.pos));
                    }
                    fd
                }
                FdKind::Dir => open_at(&path, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC)
                    .map_err(|e| format!("fd {}: cannot reopen directory {}: {e}", f.fd, f.path))?,
                FdKind::Device => open_at(&path, reopen_flags(f.flags) | libc::O_CLOEXEC)
                    .map_err(|e| format!("fd {}: cannot reopen device {}: {e}", f.fd, f.path))?,
                FdKind::Tty => open_at(b"/dev/tty", reopen_flags(f.flags) | libc::O_CLOEXEC)
                    .or_else(|_| open_at(b"/dev/null", libc::O_RDWR | libc::O_CLOEXEC))
                    .map_err(|e| format!("fd {}: cannot open a terminal: {e}", f.fd))?,
                FdKind::Pipe => open_at(b"/dev/null", libc::O_RDWR | libc::O_CLOEXEC)
                    .map_err(|e| format!("fd {}: {e}", f.fd))?,
                FdKind::Object => f
                    .object
                    .as_ref()
                    .ok_or_else(|| {
                        format!("fd {} ({}): corrupt image: no saved state", f.fd, f.path)
                    })?
                    .create(f.flags)
                    .map_err(|e| format!("fd {} ({}): {e}", f.fd, f.path))?,
                FdKind::Socket | FdKind::Other => {
                    return Err(format!(
                        "fd {} is {} ({}); this kind of file descriptor is not supported yet",
                        f.fd,
                        ckpt::objects::unsupported(&f.path),
                        f.path
                    ));
                }
            },
        };
        place(newfd, f.fd).map_err(|e| format!("fd {}: {e}", f.fd))?;
        // SAFETY: setting FD flags on our fd.
        unsafe {
            libc::fcntl(
                f.fd,
                libc::F_SETFD,
                if f.cloexec { libc::FD_CLOEXEC } else { 0 },
            )
        };
        if (f.kind == FdKind::Pipe && s.shared.pipes.contains_key(&f.inode))
            || (f.kind == FdKind::Socket && s.shared.sockets.contains_key(&f.inode))
        {
            // A pipe the restore made: give it back O_NONBLOCK, which event
            // loops rely on (a read that should fail with EAGAIN would block).
            set_nonblocking(f.fd, (f.flags as i32) & libc::O_NONBLOCK != 0)
                .map_err(|e| format!("fd {}: {e}", f.fd))?;
        }
    }
    connect_objects(s)?;
    // Terminal settings.
    for f in fds
        .iter()
        .filter(|f| f.kind == FdKind::Tty && f.termios.len() == 15)
    {
        let words: Vec<u32> = f.termios.clone();
        // SAFETY: isatty/ioctl on our fd; TCSETS reads a 60-byte struct termios.
        unsafe {
            if libc::isatty(f.fd) == 1 {
                libc::ioctl(f.fd, libc::TCSETS, words.as_ptr());
            }
        }
    }
    Ok(())
}

fn set_nonblocking(fd: i32, on: bool) -> std::io::Result<()> {
    // SAFETY: fcntl on our descriptor, no pointers.
    let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if fl < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let want = if on {
        fl | libc::O_NONBLOCK
    } else {
        fl & !libc::O_NONBLOCK
    };
    // SAFETY: as above.
    if want != fl && unsafe { libc::fcntl(fd, libc::F_SETFL, want) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Once every descriptor is in place: link the kernel objects to the
/// descriptors they refer to (the interest lists of epoll instances, whose
/// targets may be any other descriptor, epoll instances included: those
/// are linked first, `Object::depends_on`). An object held by several
/// descriptors (`shared_fds`, possibly in several processes) is linked
/// once, by its first holder in (pid, fd) order.
fn connect_objects(s: &Stage1<'_>) -> Result<(), String> {
    let pid = s.m.pid;
    let mut todo: Vec<(&Fd, &ckpt::objects::Object)> = Vec::new();
    for f in s.m.fds.iter().filter(|f| f.kind == FdKind::Object) {
        let Some(o) = &f.object else {
            continue;
        };
        let first = s
            .shared_fds
            .iter()
            .find(|g| g.contains(&[pid, f.fd]))
            .and_then(|g| g.iter().min().copied());
        if first.is_some_and(|pf| pf != [pid, f.fd]) {
            continue;
        }
        todo.push((f, s.shared.objects.get(&(pid, f.fd)).unwrap_or(o)));
    }
    while !todo.is_empty() {
        // Those that wait for no other object still to do (all of them, if
        // none is free: a cycle cannot be registered anyway).
        let waits = |o: &ckpt::objects::Object| {
            o.depends_on()
                .iter()
                .any(|d| todo.iter().any(|(g, _)| g.fd == *d))
        };
        let free: Vec<usize> = (0..todo.len()).filter(|&i| !waits(todo[i].1)).collect();
        let batch = if free.is_empty() {
            (0..todo.len()).collect()
        } else {
            free
        };
        for &i in &batch {
            let (f, o) = todo[i];
            o.connect(f.fd)
                .map_err(|e| format!("fd {} ({}): {e}", f.fd, f.path))?;
        }
        let mut k = 0;
        todo.retain(|_| {
            k += 1;
            !batch.contains(&(k - 1))
        });
    }
    Ok(())
}

fn restore_misc(m: &ProcessManifest) -> Result<(), String> {
    let cwd = cstr(&name_bytes(&m.cwd));
    // SAFETY: valid C string.
    if unsafe { libc::chdir(cwd.as_ptr()) } != 0 {
        return Err(format!(
            "cannot change to the working directory {}: {}",
            m.cwd,
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: umask has no preconditions.
    unsafe { libc::umask(m.umask as libc::mode_t) };
    for r in &m.rlimits {
        let (res, cur, max) = (r[0] as u32, r[1], r[2]);
        let mut now = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: valid out-pointer.
        if unsafe { libc::getrlimit(res as _, &mut now) } != 0 {
            continue;
        }
        let max = max.min(now.rlim_max);
        let lim = libc::rlimit {
            rlim_cur: cur.min(max),
            rlim_max: max,
        };
        // SAFETY: valid rlimit.
        unsafe { libc::setrlimit(res as _, &lim) };
    }
    // Every action not saved is the default one (the helper's own handlers,
    // such as Rust's stack-overflow handlers, must not leak into the program).
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP || m.sigactions.iter().any(|a| a.sig == sig)
        {
            continue;
        }
        let _ = raw::sigaction(sig, Some(&raw::KernelSigaction::default()));
    }
    for a in &m.sigactions {
        let k = raw::KernelSigaction {
            handler: a.handler,
            flags: a.flags,
            restorer: a.restorer,
            mask: a.mask,
        };
        raw::sigaction(a.sig, Some(&k)).map_err(|e| {
            format!(
                "cannot restore the handler of signal {}: errno {}",
                a.sig,
                e.raw()
            )
        })?;
    }
    for t in &m.itimers {
        let v = libc::itimerval {
            it_interval: libc::timeval {
                tv_sec: (t[1] / 1_000_000) as i64,
                tv_usec: (t[1] % 1_000_000) as i64,
            },
            it_value: libc::timeval {
                tv_sec: (t[2] / 1_000_000) as i64,
                tv_usec: (t[2] % 1_000_000) as i64,
            },
        };
        // SAFETY: valid itimerval.
        unsafe { libc::setitimer(t[0] as _, &v, std::ptr::null_mut()) };
    }
    Ok(())
}

/// The process's POSIX timers, sorted by id, checked against what this
/// kernel can create again.
fn posix_timers(m: &ProcessManifest) -> Result<Vec<PosixTimer>, String> {
    let mut timers = m.posix_timers.clone();
    timers.sort_by_key(|t| t.id);
    for t in &mut timers {
        // Its thread exited: it signalled no one, and the kernel would
        // refuse the old thread id.
        if t.notify & posix_timer::SIGEV_THREAD_ID != 0
            && !m.threads.iter().any(|th| th.tid == t.target)
        {
            t.notify = posix_timer::SIGEV_NONE;
            t.signal = 0;
        }
    }
    if timers.len() > posix_timer::MAX_TIMERS {
        return Err(format!(
            "process {} has {} POSIX timers; ckpt restores at most {}",
            m.pid,
            timers.len(),
            posix_timer::MAX_TIMERS
        ));
    }
    if let Some(t) = timers.iter().find(|t| t.unrestorable().is_some()) {
        return Err(format!(
            "process {}: POSIX timer {} on clock {} cannot be restored: {}",
            m.pid,
            t.id,
            t.clock,
            t.unrestorable().unwrap_or_default()
        ));
    }
    if let Some(t) = timers.last()
        && t.id > posix_timer::MAX_WALKED_ID
        && !posix_timer::kernel_restores_ids()
    {
        return Err(format!(
            "process {}: POSIX timer {} has an id this kernel cannot give back (it needs \
             PR_TIMER_CREATE_RESTORE_IDS, Linux 6.17+, above {}); restart on a newer kernel",
            m.pid,
            t.id,
            posix_timer::MAX_WALKED_ID
        ));
    }
    Ok(timers)
}

fn open_region_files(m: &ProcessManifest, hi: i32) -> Result<BTreeMap<usize, i32>, String> {
    use std::os::unix::fs::MetadataExt;
    let mut by_path: HashMap<String, i32> = HashMap::new();
    let mut out = BTreeMap::new();
    for (i, r) in m.regions.iter().enumerate() {
        if !matches!(r.kind, RegionKind::File | RegionKind::SharedFile) {
            continue;
        }
        if let Some(&fd) = by_path.get(&r.name) {
            out.insert(i, fd);
            continue;
        }
        let p = name_bytes(&r.name);
        let path = Path::new(std::ffi::OsStr::from_bytes(&p));
        let md =
            std::fs::metadata(path).map_err(|e| format!("mapped file {} is gone: {e}", r.name))?;
        let mtime = (md.mtime() as u64)
            .wrapping_mul(1_000_000_000)
            .wrapping_add(md.mtime_nsec() as u64);
        let put_back = crate::saved_files::was_restored(&r.name);
        // On the filesystem it was mapped from, the same file has the same
        // inode. Elsewhere (another node's own copy of a library, a network
        // filesystem mounted under another device number) inode numbers
        // differ: the size and the modification time (to the nanosecond,
        // as the package or build left it) must still be the same.
        let same_fs = md.dev() == r.dev;
        if !put_back
            && ((same_fs && md.ino() != r.inode)
                || md.size() != r.file_size
                || mtime != r.file_mtime_ns)
        {
            return Err(format!(
                "{} changed since the checkpoint (it was replaced, rewritten or upgraded); restoring would run a mix of old and new code or data",
                r.name
            ));
        }
        let write = r.kind == RegionKind::SharedFile && r.prot & libc::PROT_WRITE as u32 != 0;
        let fd = open_at(
            &p,
            if write { libc::O_RDWR } else { libc::O_RDONLY } | libc::O_CLOEXEC,
        )
        .map_err(|e| format!("cannot open mapped file {}: {e}", r.name))?;
        let fd2 = dup_above(fd, hi, true).map_err(|e| e.to_string())?;
        // SAFETY: fd was duplicated.
        unsafe { libc::close(fd) };
        by_path.insert(r.name.clone(), fd2);
        out.insert(i, fd2);
    }
    Ok(out)
}

/// Run stage 1 and jump to stage 2. Never returns.
pub fn run(s: Stage1<'_>) -> ! {
    // Where failures go: fd 2 and the status pipe until `prepare` moves them
    // out of the way of the program's descriptors, which replace 0, 1, 2 and
    // the pipe's number (a message there would land in the program's files).
    let mut report_to = (2, s.status_fd);
    let msg = match prepare(&s, &mut report_to) {
        Ok(()) => "stage 2 returned".to_string(),
        Err(e) => e,
    };
    let (err_fd, status_fd) = report_to;
    let _ = raw::write_all(err_fd, format!("ckpt: restore failed: {msg}\n").as_bytes());
    report(status_fd, STAGE1_FAILED, 0, 0);
    raw::exit_group(RST_EXIT_FAILED)
}

/// Blocks every signal (the saved masks come back with each thread's frame,
/// or with the exec), and moves our stderr and the status pipe out of the
/// way of the program's descriptors. Layout: program fds < shared.lo <=
/// init's shared objects < shared.hi <= ours.
fn block_and_move_helper_fds(s: &Stage1<'_>) -> Result<(i32, i32), String> {
    raw::sigprocmask(libc::SIG_SETMASK, !0u64)
        .map_err(|e| format!("sigprocmask: errno {}", e.raw()))?;
    let hi = s.shared.hi;
    let err_fd = dup_above(2, hi, true).map_err(|e| format!("dup stderr: {e}"))?;
    let status_fd = dup_above(s.status_fd, hi, true).map_err(|e| format!("dup status: {e}"))?;
    if s.status_fd < s.shared.lo || s.status_fd >= hi {
        unsafe_close(s.status_fd);
    }
    Ok((err_fd, status_fd))
}

/// Close what the restart inherited above the shared objects (`hi`) and
/// is not in `keep`: descriptors of the process that ran the restart (the
/// slurmd log pipe slurmstepd gave `ckpt slurm-task`, any descriptor its
/// own parent left open), which the program never had. The program's own
/// descriptors are all below the shared objects.
fn close_strays(hi: i32, keep: &[i32]) {
    for fd in open_fds() {
        if fd >= hi && !keep.contains(&fd) {
            unsafe_close(fd);
        }
    }
}

/// Stage 1 for a process that is started again rather than restored
/// ([`crate::relaunch`]): its descriptors, working directory and umask come
/// back as for any process; returns (stderr, status pipe), both moved above
/// the program's descriptors and close-on-exec.
pub fn prepare_relaunch(s: &Stage1<'_>) -> Result<(i32, i32), String> {
    let (err_fd, status_fd) = block_and_move_helper_fds(s)?;
    let hi = s.shared.hi;
    let s = Stage1 { status_fd, ..*s };
    restore_fds(&s, hi)?;
    for fd in open_fds() {
        if fd >= s.shared.lo && fd < hi {
            unsafe_close(fd);
        }
    }
    close_strays(hi, &[err_fd, status_fd]);
    let cwd = cstr(&name_bytes(&s.m.cwd));
    // SAFETY: valid C string.
    if unsafe { libc::chdir(cwd.as_ptr()) } != 0 {
        return Err(format!(
            "cannot change to the working directory {}: {}",
            s.m.cwd,
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: umask has no preconditions.
    unsafe { libc::umask(s.m.umask as libc::mode_t) };
    Ok((err_fd, status_fd))
}

fn prepare(s: &Stage1<'_>, report_to: &mut (i32, i32)) -> Result<(), String> {
    let m = s.m;
    let (err_fd, status_fd) = block_and_move_helper_fds(s)?;
    let hi = s.shared.hi;
    *report_to = (err_fd, status_fd);
    let s = Stage1 { status_fd, ..*s };
    // Shared memory objects this process maps.
    let mut memfds: HashMap<(u64, u64), i32> = HashMap::new();
    for r in m
        .regions
        .iter()
        .filter(|r| r.kind == RegionKind::SharedAnon)
    {
        let key = (r.dev, r.inode);
        if let (Some(&fd), false) = (s.shared.memfds.get(&key), memfds.contains_key(&key)) {
            memfds.insert(key, dup_above(fd, hi, true).map_err(|e| e.to_string())?);
        }
    }
    // Our images the init decompressed (super::expand).
    let mut images: HashMap<usize, i32> = HashMap::new();
    for (&(pid, level), &fd) in &s.shared.images {
        if pid == m.pid {
            images.insert(level, dup_above(fd, hi, true).map_err(|e| e.to_string())?);
        }
    }
    restore_fds(&s, hi)?;
    // Drop the init's shared objects: we hold what we need.
    for fd in open_fds() {
        if fd >= s.shared.lo && fd < hi {
            unsafe_close(fd);
        }
    }
    let keep: Vec<i32> = [err_fd, status_fd]
        .into_iter()
        .chain(memfds.values().copied())
        .chain(images.values().copied())
        .collect();
    close_strays(hi, &keep);
    restore_misc(m)?;
    let mut files = open_region_files(m, hi)?;
    // Where every saved page is: this image, or (incremental) an older one.
    let base_manifests = super::expand::base_manifests(m, s.bases);
    let pieces = super::chain::pieces(m, &base_manifests)?;
    let levels = pieces.iter().flatten().map(|p| p.file).max().unwrap_or(0);
    if levels >= blob::MAX_IMAGES {
        return Err(format!(
            "the image of process {} refers to {levels} older generations; at most {} can be read",
            m.pid,
            blob::MAX_IMAGES - 1
        ));
    }
    let mut img_fds = Vec::with_capacity(levels + 1);
    let mut expanded = Vec::with_capacity(levels + 1);
    for level in 0..=levels {
        if let Some(&fd) = images.get(&level) {
            img_fds.push(fd);
            expanded.push(true);
            continue;
        }
        // The names and sizes were checked at load (manifest and record
        // agree); stage 2 reads from exactly these descriptors.
        let (dir, file, size) = super::expand::image_of(s.gen_dir, m, s.bases, level)?;
        // An image the init did not decompress (not compressed, as a rule).
        let wanted = super::chain::wanted(m, &pieces, level);
        let (img, memory) = super::shared::open_image_pages(dir, file, size, &wanted, 1)?;
        let d = dup_above(img.as_raw_fd(), hi, true).map_err(|e| e.to_string())?;
        drop(img);
        img_fds.push(d);
        expanded.push(memory);
    }
    let exe_fd = match open_at(&name_bytes(&m.exe), libc::O_RDONLY | libc::O_CLOEXEC) {
        Ok(fd) => {
            let d = dup_above(fd, hi, true).unwrap_or(-1);
            unsafe_close(fd);
            d
        }
        Err(_) => -1,
    };

    // Lay out the restorer mapping: code | args | regions | runs | auxv | finish args | stack.
    let (code_start, code_len, entry_off) = blob::code();
    let page = 4096usize;
    let up = |x: usize| (x + page - 1) & !(page - 1);
    let nruns: usize = pieces.iter().map(Vec::len).sum();
    let code_sz = up(code_len);
    let args_sz = up(std::mem::size_of::<RstArgs>());
    let regs_sz = up(m.regions.len() * std::mem::size_of::<RstRegion>());
    let runs_sz = up(nruns * 32 + 32);
    let auxv_sz = up(m.mm.auxv.len() * 8 + 16);
    let fin_sz = up(std::mem::size_of::<FinishArgs>());
    // Another kernel build's vDSO: the jump table for the old range.
    let redirecting = super::vdso::wanted(m);
    let stub_sz = if redirecting {
        up(m.vdso.vdso_len as usize)
    } else {
        0
    };
    let stack_sz = 256 * 1024;
    let total = code_sz + args_sz + regs_sz + runs_sz + auxv_sz + fin_sz + stub_sz + stack_sz;

    let current = blob::own_maps().map_err(|e| format!("read /proc/self/maps: {e}"))?;
    let addr = blob::choose_address(m, &current, total as u64)
        .ok_or("no free address range for the restorer")?;
    // SAFETY: MAP_FIXED_NOREPLACE at an address we checked is free; fails rather than clobbering.
    let p = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            total,
            libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    if p as u64 != addr {
        return Err(format!("cannot map the restorer at {addr:#x}"));
    }
    let base = addr as usize;
    // SAFETY: the code section is readable and the destination is our fresh mapping of `total` bytes.
    unsafe { std::ptr::copy_nonoverlapping(code_start as *const u8, base as *mut u8, code_len) };
    let args_at = base + code_sz;
    let regs_at = args_at + args_sz;
    let runs_at = regs_at + regs_sz;
    let auxv_at = runs_at + runs_sz;
    let fin_at = auxv_at + auxv_sz;
    let stub_at = fin_at + fin_sz;
    let stack_top = stub_at + stub_sz + stack_sz - 64;
    let redirect = if redirecting {
        super::vdso::plan(m, &[(addr, addr + total as u64)])?
    } else {
        None
    };
    if let Some(r) = &redirect {
        if r.table.len() > stub_sz {
            return Err("the vDSO jump table does not fit its area".into());
        }
        // SAFETY: stub_at has room for stub_sz bytes inside our mapping.
        unsafe {
            std::ptr::copy_nonoverlapping(r.table.as_ptr(), stub_at as *mut u8, r.table.len())
        };
    }

    // Shared anonymous memory is mapped from the init's memfd, already filled.
    for (i, r) in m.regions.iter().enumerate() {
        if r.kind == RegionKind::SharedAnon {
            let fd = memfds
                .get(&(r.dev, r.inode))
                .copied()
                .ok_or_else(|| format!("no shared memory object for {:#x}", r.start))?;
            files.insert(i, fd);
        }
    }
    // Regions and runs.
    let mut ri = 0u64;
    for (i, r) in m.regions.iter().enumerate() {
        let fd = files.get(&i).copied().unwrap_or(-1);
        let shared_anon = r.kind == RegionKind::SharedAnon;
        let g = RstRegion {
            start: r.start,
            end: r.end,
            offset: r.offset,
            data_offset: r.data_offset,
            runs_index: ri,
            nruns: if shared_anon {
                0
            } else {
                pieces.get(i).map_or(0, |p| p.len() as u64)
            },
            prot: r.prot,
            kind: if shared_anon {
                blob::kind_code(RegionKind::SharedFile)
            } else {
                blob::kind_code(r.kind)
            },
            fd,
            crc: r.crc,
            growsdown: u8::from(r.growsdown),
            hugepage: u8::from(r.hugepage),
            close_fd: 1,
            fork_advice: r.fork.0,
            pad: [0; 4],
        };
        // SAFETY: regs_at..+regs_sz is inside our mapping; i < regions.len().
        unsafe { std::ptr::write((regs_at as *mut RstRegion).add(i), g) };
        let none = Vec::new();
        let region_pieces = if shared_anon {
            &none
        } else {
            pieces.get(i).unwrap_or(&none)
        };
        for p in region_pieces {
            let words = [p.first, p.count, p.file as u64, p.offset];
            for (k, w) in words.into_iter().enumerate() {
                // SAFETY: runs_at has room for every piece (4 words each).
                unsafe { std::ptr::write((runs_at as *mut u64).add(ri as usize + k), w) };
            }
            ri += 4;
        }
    }
    // Only close each shared fd once.
    let mut seen = std::collections::HashSet::new();
    for i in 0..m.regions.len() {
        // SAFETY: index within the region table we just wrote.
        let g = unsafe { &mut *(regs_at as *mut RstRegion).add(i) };
        if g.fd >= 0 && !seen.insert(g.fd) {
            g.close_fd = 0;
        }
    }
    for (i, w) in m.mm.auxv.iter().enumerate() {
        // The kernel's copy of the auxiliary vector names the vDSO mapped
        // now (the program's own copy, in its memory, keeps the old one).
        let w = match &redirect {
            Some(r) if i % 2 == 1 && m.mm.auxv[i - 1] == libc::AT_SYSINFO_EHDR => r.vdso,
            _ => *w,
        };
        // SAFETY: auxv area sized for every word.
        unsafe { std::ptr::write((auxv_at as *mut u64).add(i), w) };
    }

    // Finish args, copied into the image's own libckpt: its block must be
    // ours (an image written by another build of ckpt has another layout).
    if m.hooks.finish_args_size != std::mem::size_of::<FinishArgs>() as u64 {
        return Err(format!(
            "process {}: this image was written by another version of ckpt (its libckpt's restore hand-over is {} bytes, this ckpt's {}{}): restart it with the ckpt that wrote it",
            m.pid,
            m.hooks.finish_args_size,
            std::mem::size_of::<FinishArgs>(),
            if m.hooks.finish_args_size == 0 {
                ", unrecorded before image format 1.5"
            } else {
                ""
            }
        ));
    }
    // SAFETY: fin_at is zeroed memory of at least size_of::<FinishArgs>() inside our mapping.
    let fin = unsafe { &mut *(fin_at as *mut FinishArgs) };
    fin.blob_start = addr;
    fin.blob_len = total as u64;
    fin.done_fd = status_fd as i64;
    fin.shared_pending = m.shared_pending;
    fin.track_generation = s.track_generation;
    fin.last_pid_fd = super::pids::last_pid_fd_for_threads(hi)?;
    fin.nthreads = m.threads.len().min(fin.threads.len()) as u64;
    let timers = posix_timers(m)?;
    fin.ntimers = timers.len() as u64;
    for (slot, t) in fin.timers.iter_mut().zip(timers) {
        *slot = t;
    }
    for (slot, t) in fin.threads.iter_mut().zip(m.threads.iter()) {
        *slot = FinishThread {
            tid: i64::from(t.tid),
            ucontext: t.ucontext,
            fs_base: t.fs_base,
            rseq: t.rseq,
            rseq_sig: u64::from(t.rseq_sig),
            robust_head: t.robust_head,
            robust_len: t.robust_len,
            clear_tid: t.clear_tid,
            scratch_sp: t.scratch_sp,
            pending: t.pending,
            name: {
                let mut n = [0u8; 16];
                for (d, c) in n.iter_mut().take(15).zip(name_bytes(&t.name)) {
                    *d = c;
                }
                n
            },
        };
    }

    // A timer's signal pending at the checkpoint is queued as the timer's
    // (objects::posix_timer), not raised as a plain signal.
    {
        let nt = (fin.ntimers as usize).min(fin.timers.len());
        let nth = (fin.nthreads as usize).min(fin.threads.len());
        let threads = &mut fin.threads[..nth];
        posix_timer::claim_pending(
            &mut fin.timers[..nt],
            &mut fin.shared_pending,
            |tid, bit| {
                threads
                    .iter_mut()
                    .find(|t| t.tid == i64::from(tid))
                    .is_some_and(|t| {
                        let was = t.pending & bit != 0;
                        t.pending &= !bit;
                        was
                    })
            },
        );
    }

    // The unmap list: everything of ours except the restorer and [vsyscall].
    // SAFETY: args_at is zeroed memory large enough for RstArgs inside our mapping.
    let a = unsafe { &mut *(args_at as *mut RstArgs) };
    let mut n = 0usize;
    for (st, en, name) in &current {
        if name == b"[vsyscall]" || *st == addr {
            continue;
        }
        if n >= a.unmap.len() {
            return Err("the restart helper has too many mappings".into());
        }
        a.unmap[n] = RstRange {
            start: *st,
            end: *en,
        };
        n += 1;
    }
    a.n_unmap = n as u64;
    a.pid = i64::from(m.pid);
    let fs = raw::get_fs_base();
    a.helper_rseq = ckpt::preload::stop::rseq_area(fs);
    a.helper_rseq_sig = u64::from(ckpt::preload::stop::RSEQ_SIG);
    a.vvar = redirect.as_ref().map_or(m.vdso.vvar, |r| r.vvar);
    if let Some(r) = &redirect {
        a.stub_addr = m.vdso.vdso;
        a.stub_len = r.table.len() as u64;
        a.stub_src = stub_at as u64;
    }
    a.n_img = img_fds.len() as u64;
    for (i, fd) in img_fds.iter().enumerate().take(a.img_fds.len()) {
        a.img_fds[i] = i64::from(*fd);
        a.img_drop[i] = if expanded.get(i) == Some(&true) {
            blob::IMG_PUNCH
        } else {
            u64::from(!super::shared::mostly_cached(*fd)) * blob::IMG_DROP
        };
    }
    a.exe_fd = exe_fd as i64;
    a.err_fd = err_fd as i64;
    a.status_fd = status_fd as i64;
    a.verify = u64::from(s.verify && std::arch::is_x86_feature_detected!("sse4.2"));
    a.n_regions = m.regions.len() as u64;
    a.regions = regs_at as u64;
    a.runs = runs_at as u64;
    let mm = &m.mm;
    a.mm = MmMap {
        start_code: mm.start_code,
        end_code: mm.end_code,
        start_data: mm.start_data,
        end_data: mm.end_data,
        start_brk: mm.start_brk,
        brk: mm.brk,
        start_stack: mm.start_stack,
        arg_start: mm.arg_start,
        arg_end: mm.arg_end,
        env_start: mm.env_start,
        env_end: mm.env_end,
        auxv: auxv_at as u64,
        auxv_size: (mm.auxv.len() * 8) as u32,
        exe_fd: exe_fd as u32,
    };
    a.finish_fn = m.hooks.finish;
    a.finish_sp = m.threads.first().map(|t| t.scratch_sp & !0xf).unwrap_or(0);
    a.finish_args_dst = m.hooks.finish_args;
    a.finish_args_src = fin_at as u64;
    a.finish_args_len = std::mem::size_of::<FinishArgs>() as u64;
    a.socket_dst = m.hooks.restore_info + 8;
    let sock = s.socket.as_os_str().as_bytes();
    if sock.len() >= a.socket.len() {
        return Err(format!("socket path {} is too long", s.socket.display()));
    }
    a.socket[..sock.len()].copy_from_slice(sock);

    let entry = base + entry_off;
    // SAFETY: entry is ckpt_rst_entry inside the copied, executable section;
    // it switches to stack_top (inside the same mapping) and never returns.
    let f: unsafe extern "C" fn(*mut RstArgs, u64) -> ! = unsafe { std::mem::transmute(entry) };
    // SAFETY: see above; `a` lives in the restorer mapping.
    unsafe { f(a, stack_top as u64) }
}

fn unsafe_close(fd: i32) {
    // SAFETY: closing an fd we own.
    unsafe { libc::close(fd) };
}
