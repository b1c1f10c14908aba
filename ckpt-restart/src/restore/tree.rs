//! Recreating the job's process tree inside the init.
//!
//! The init creates the top processes (those whose parent was the init or
//! is gone) with their saved pids; each process first recreates its own
//! children (so `getppid()` and `wait()` are right), including children
//! that had exited but were not yet waited for (they exit again at once
//! with their saved status). When every process exists, they set their
//! session and process group, restore themselves (stage 1 and 2), and
//! report `K` on the status pipe. Any failure kills the whole attempt so
//! that the init can fall back to an older generation.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use ckpt::image::generation::LoadedGeneration;
use ckpt::image::manifest::{ProcessManifest, Relaunch, Zombie};

use super::shared::{self, Shared};
use super::stage1::{self, Stage1};

use super::pids::fork_with_pid;

/// Pipes used to coordinate one restore attempt.
struct Sync {
    created_w: i32,
    go_r: i32,
    status_w: i32,
}

fn pipe_pair(lo: i32) -> Result<(i32, i32), String> {
    let mut p = [0i32; 2];
    // SAFETY: p is a valid array.
    if unsafe { libc::pipe(p.as_mut_ptr()) } != 0 {
        return Err(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    let mv = |fd: i32| {
        // SAFETY: duplicating and closing our own descriptors.
        unsafe {
            let d = libc::fcntl(fd, libc::F_DUPFD, lo);
            libc::close(fd);
            d
        }
    };
    Ok((mv(p[0]), mv(p[1])))
}

fn byte(fd: i32, b: u8) {
    // SAFETY: writing one byte from a local.
    unsafe { libc::write(fd, (&b as *const u8).cast(), 1) };
}

struct Plan<'a> {
    g: &'a LoadedGeneration,
    children: BTreeMap<i32, Vec<&'a ProcessManifest>>,
    zombies: BTreeMap<i32, Vec<&'a Zombie>>,
    relaunch: BTreeMap<i32, Vec<&'a Relaunch>>,
    placeholders: &'a [ProcessManifest],
    shared: &'a Shared,
    socket: &'a Path,
    verify: bool,
    track: bool,
}

/// In a freshly created process: recreate our children, wait for the
/// whole tree, then restore ourselves. Never returns.
fn become_process(p: &Plan<'_>, m: &ProcessManifest, sync: &Sync) -> ! {
    if m.sid == m.pid {
        // SAFETY: setsid has no preconditions.
        unsafe { libc::setsid() };
    }
    for z in p.zombies.get(&m.pid).into_iter().flatten() {
        match fork_with_pid(z.pid) {
            Ok(0) => {
                // Exit again the way it did the first time.
                if libc::WIFSIGNALED(z.status) {
                    // SAFETY: restoring the default action, then raising the saved signal.
                    unsafe {
                        libc::signal(libc::WTERMSIG(z.status), libc::SIG_DFL);
                        let mut set: libc::sigset_t = std::mem::zeroed();
                        libc::sigemptyset(&mut set);
                        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
                        libc::kill(libc::getpid(), libc::WTERMSIG(z.status));
                    }
                }
                ckpt::signal_safe::raw::exit_group(libc::WEXITSTATUS(z.status));
            }
            Ok(_) => {}
            Err(e) => fail(
                sync,
                &format!("cannot recreate exited child {}: {e}", z.pid),
            ),
        }
    }
    for r in p.relaunch.get(&m.pid).into_iter().flatten() {
        match fork_with_pid(r.pid) {
            Ok(0) => become_relaunched(p, r, sync),
            Ok(_) => {}
            Err(e) => fail(sync, &format!("cannot recreate process {}: {e}", r.pid)),
        }
    }
    for c in p.children.get(&m.pid).into_iter().flatten() {
        match fork_with_pid(c.pid) {
            Ok(0) => become_process(p, c, sync),
            Ok(_) => {}
            Err(e) => fail(sync, &format!("cannot recreate process {}: {e}", c.pid)),
        }
    }
    byte(sync.created_w, b'C');
    let mut b = [0u8; 1];
    // SAFETY: reading one byte into a local.
    if unsafe { libc::read(sync.go_r, b.as_mut_ptr().cast(), 1) } != 1 {
        fail(sync, "the restore was cancelled");
    }
    if m.pgid > 0 && m.pgid != m.sid {
        // The group leader may not have created its group yet: retry briefly.
        let t = Instant::now();
        // SAFETY: setpgid on ourselves.
        while unsafe { libc::setpgid(0, m.pgid) } != 0 && t.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    stage1::run(Stage1 {
        gen_dir: &p.g.path,
        m,
        socket: p.socket,
        status_fd: sync.status_w,
        verify: p.verify,
        track_generation: if p.track { p.g.record.number } else { 0 },
        shared: p.shared,
        shared_fds: &p.g.record.shared_fds,
        bases: &p.g.bases,
    })
}

/// In a freshly created process that is started again rather than
/// restored (`srun`, [`crate::relaunch`]): wait for the whole tree, take
/// back the standard descriptors and working directory, report, exec.
fn become_relaunched(p: &Plan<'_>, r: &Relaunch, sync: &Sync) -> ! {
    if r.sid == r.pid {
        // SAFETY: setsid has no preconditions.
        unsafe { libc::setsid() };
    }
    byte(sync.created_w, b'C');
    let mut b = [0u8; 1];
    // SAFETY: reading one byte into a local.
    if unsafe { libc::read(sync.go_r, b.as_mut_ptr().cast(), 1) } != 1 {
        fail(sync, "the restore was cancelled");
    }
    if r.pgid > 0 && r.pgid != r.sid && r.pgid != r.pid {
        let t = Instant::now();
        // SAFETY: setpgid on ourselves.
        while unsafe { libc::setpgid(0, r.pgid) } != 0 && t.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(1));
        }
    } else if r.pgid == r.pid {
        // SAFETY: setpgid on ourselves.
        unsafe { libc::setpgid(0, 0) };
    }
    let Some(m) = p.placeholders.iter().find(|m| m.pid == r.pid) else {
        fail(sync, &format!("process {}: no placeholder", r.pid));
    };
    let s = Stage1 {
        gen_dir: &p.g.path,
        m,
        socket: p.socket,
        status_fd: sync.status_w,
        verify: p.verify,
        track_generation: 0,
        shared: p.shared,
        shared_fds: &p.g.record.shared_fds,
        bases: &p.g.bases,
    };
    let (err_fd, status_fd) = match stage1::prepare_relaunch(&s) {
        Ok(fds) => fds,
        Err(e) => {
            let _ = ckpt::signal_safe::raw::write_all(
                2,
                format!("ckpt: restore failed: process {}: {e}\n", r.pid).as_bytes(),
            );
            stage1::report(sync.status_w, stage1::STAGE1_FAILED, 0, 0);
            ckpt::signal_safe::raw::exit_group(super::blob::RST_EXIT_FAILED)
        }
    };
    use std::os::unix::ffi::OsStrExt;
    let now: Vec<(Vec<u8>, Vec<u8>)> = std::env::vars_os()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect();
    let env = crate::relaunch::environment(r, p.socket, &now);
    byte(status_fd, b'K');
    // SAFETY: our own descriptors; the program must not inherit them.
    unsafe { libc::close(status_fd) };
    let why = crate::relaunch::exec(r, &env);
    let _ = ckpt::signal_safe::raw::write_all(err_fd, format!("ckpt: {why}\n").as_bytes());
    ckpt::signal_safe::raw::exit_group(127)
}

fn fail(sync: &Sync, msg: &str) -> ! {
    let _ =
        ckpt::signal_safe::raw::write_all(2, format!("ckpt: restore failed: {msg}\n").as_bytes());
    stage1::report(sync.status_w, stage1::STAGE1_FAILED, 0, 0);
    ckpt::signal_safe::raw::exit_group(super::blob::RST_EXIT_FAILED)
}

/// A readable message for a stage 2 failure record.
fn describe_failure(g: &LoadedGeneration, f: &super::blob::RstFailure) -> Option<String> {
    let m = g.processes.iter().find(|m| m.pid == f.pid)?;
    let img = g.path.join(&m.image.file);
    let region = m
        .regions
        .iter()
        .find(|r| r.start <= f.addr && f.addr < r.end);
    let rname = region
        .map(|r| {
            if r.name.is_empty() {
                "anonymous memory".to_string()
            } else {
                r.name.clone()
            }
        })
        .unwrap_or_default();
    let err = std::io::Error::from_raw_os_error(f.err as i32);
    // An incremental image reads unchanged pages from older generations.
    let older = if g.bases.is_empty() {
        String::new()
    } else {
        let names: Vec<String> = g
            .bases
            .iter()
            .map(|b| b.path.display().to_string())
            .collect();
        format!(
            " (or in the older generations this incremental image refers to: {})",
            names.join(", ")
        )
    };
    Some(match f.code {
        stage1::STAGE1_FAILED => return None, // already printed
        1 => format!(
            "process {}: cannot clear the restart helper's memory: {err}",
            f.pid
        ),
        2 => format!(
            "process {}: cannot place the vDSO at {:#x}: {err}",
            f.pid, f.addr
        ),
        3 => format!(
            "{}: cannot read the saved pages of {:#x} ({rname}): {err} (truncated image?){older}",
            img.display(),
            f.addr
        ),
        4 => format!(
            "process {}: cannot map {:#x} ({rname}): {err}",
            f.pid, f.addr
        ),
        5 => format!(
            "{}: corrupt image: the saved pages of {:#x} ({rname}) fail their checksum{older}",
            img.display(),
            f.addr
        ),
        6 => format!(
            "process {}: cannot set the protection of {:#x}: {err}",
            f.pid, f.addr
        ),
        7 => format!(
            "process {}: cannot restore the memory layout (brk, arguments, auxv): {err}",
            f.pid
        ),
        9 => format!(
            "process {}: cannot advise {:#x} ({rname}) for forks again as the program had \
             (MADV_DONTFORK or MADV_WIPEONFORK): {err}",
            f.pid, f.addr
        ),
        ckpt::preload::finish::FAIL_POSIX_TIMER => format!(
            "process {}: cannot create its POSIX timers again with their ids: {err}",
            f.pid
        ),
        c => format!("process {}: restore step {c} failed: {err}", f.pid),
    })
}

/// Outcome of one attempt.
pub enum Attempt {
    /// The tree runs; this is the pid of the main process (the lowest top one).
    Running(i32),
    /// It failed (message already printed); everything was killed.
    Failed,
}

/// Restore generation `g` from the init. Single-threaded caller.
/// With `track`, the restored processes track written pages from the
/// start, so that the next checkpoint can be incremental.
pub fn restore(g: &LoadedGeneration, socket: &Path, verify: bool, track: bool) -> Attempt {
    // Files the job was writing get their checkpoint content back first;
    // deleted ones get temporary names, unlinked when `files` is dropped
    // (after every process opened them, or after a failure).
    let (mut g, files) = match crate::saved_files::restore(g) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ckpt: restore failed: {e}");
            return Attempt::Failed;
        }
    };
    if !files.made_dirs.is_empty() {
        eprintln!(
            "ckpt: made again {} directory(ies) that held files the job was writing: {}",
            files.made_dirs.len(),
            files.made_dirs.join(", ")
        );
    }
    if !files.changed.is_empty() {
        eprintln!(
            "ckpt: put back {} file(s) the job was writing, as they were at the checkpoint: {}",
            files.changed.len(),
            files.changed.join(", ")
        );
    }
    // One shared memory object mapped under two names is mapped again as one.
    super::aliases::apply(&mut g);
    let g = &g;
    let lo = g
        .processes
        .iter()
        .flat_map(|m| m.fds.iter().map(|f| f.fd))
        .max()
        .unwrap_or(2)
        .max(2)
        + 1;
    // SAFETY: raising our own soft descriptor limit to the hard one is always allowed.
    unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        r.rlim_cur = r.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
    }
    // Processes started again rather than restored take part in the
    // objects shared with the others (their standard descriptors).
    let placeholders: Vec<ProcessManifest> = g
        .record
        .relaunch
        .iter()
        .map(crate::relaunch::placeholder)
        .collect();
    let with_placeholders;
    let shared_view = if placeholders.is_empty() {
        g
    } else {
        let mut v = g.clone();
        v.processes.extend(placeholders.iter().cloned());
        with_placeholders = v;
        &with_placeholders
    };
    let mut sh = match shared::build(shared_view, lo) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ckpt: restore failed: {e}");
            return Attempt::Failed;
        }
    };
    // Compressed images, decompressed on every CPU while the init is still
    // the namespace's only task.
    if let Err(e) = super::expand::images(g, &mut sh) {
        eprintln!("ckpt: restore failed: {e}");
        for fd in (sh.lo..sh.hi).filter(|fd| !sh.keep.contains(fd)) {
            // SAFETY: descriptors in this range are the init's shared objects.
            unsafe { libc::close(fd) };
        }
        return Attempt::Failed;
    }
    let pipes = (|| -> Result<_, String> {
        Ok((pipe_pair(sh.hi)?, pipe_pair(sh.hi)?, pipe_pair(sh.hi)?))
    })();
    let Ok(((created_r, created_w), (go_r, go_w), (status_r, status_w))) = pipes else {
        eprintln!("ckpt: restore failed: cannot create pipes");
        return Attempt::Failed;
    };
    sh.hi = [created_r, created_w, go_r, go_w, status_r, status_w]
        .into_iter()
        .max()
        .unwrap_or(sh.hi)
        + 1;
    let pids: Vec<i32> = g.processes.iter().map(|m| m.pid).collect();
    let mut children: BTreeMap<i32, Vec<&ProcessManifest>> = BTreeMap::new();
    let mut tops = Vec::new();
    for m in &g.processes {
        if m.ppid > 1 && pids.contains(&m.ppid) {
            children.entry(m.ppid).or_default().push(m);
        } else {
            tops.push(m);
        }
    }
    let mut zombies: BTreeMap<i32, Vec<&Zombie>> = BTreeMap::new();
    for z in &g.record.zombies {
        if pids.contains(&z.ppid) {
            zombies.entry(z.ppid).or_default().push(z);
        }
    }
    let mut relaunch: BTreeMap<i32, Vec<&Relaunch>> = BTreeMap::new();
    let mut top_relaunch = Vec::new();
    for r in &g.record.relaunch {
        if pids.contains(&r.ppid) {
            relaunch.entry(r.ppid).or_default().push(r);
        } else {
            top_relaunch.push(r);
        }
    }
    let plan = Plan {
        g,
        children,
        zombies,
        relaunch,
        placeholders: &placeholders,
        shared: &sh,
        socket,
        verify,
        track,
    };
    let sync = Sync {
        created_w,
        go_r,
        status_w,
    };
    let mut top_pids = Vec::new();
    for m in &tops {
        match fork_with_pid(m.pid) {
            Ok(0) => {
                // SAFETY: the child does not use the init's ends.
                unsafe {
                    libc::close(created_r);
                    libc::close(go_w);
                    libc::close(status_r);
                }
                become_process(&plan, m, &sync)
            }
            Ok(c) => top_pids.push(c),
            Err(e) => {
                eprintln!(
                    "ckpt: cannot recreate pid {}: {e} (is the pid taken inside the job's namespace?)",
                    m.pid
                );
                return kill_all(&sh);
            }
        }
    }
    for r in top_relaunch {
        match fork_with_pid(r.pid) {
            Ok(0) => {
                // SAFETY: the child does not use the init's ends.
                unsafe {
                    libc::close(created_r);
                    libc::close(go_w);
                    libc::close(status_r);
                }
                become_relaunched(&plan, r, &sync)
            }
            Ok(c) => top_pids.push(c),
            Err(e) => {
                eprintln!("ckpt: cannot recreate pid {}: {e}", r.pid);
                return kill_all(&sh);
            }
        }
    }
    // SAFETY: the init keeps only its ends.
    unsafe {
        libc::close(created_w);
        libc::close(go_r);
        libc::close(status_w);
    }
    let n = g.processes.len() + g.record.relaunch.len();
    let ok = wait_bytes(created_r, n, b'C', Duration::from_secs(120)).is_ok() && {
        for _ in 0..n {
            byte(go_w, b'G');
        }
        match wait_status(status_r, n, Duration::from_secs(1800)) {
            Ok(()) => true,
            Err(Some(f)) => {
                if let Some(msg) = describe_failure(g, &f) {
                    eprintln!("ckpt: restore failed: {msg}");
                }
                false
            }
            Err(None) => {
                eprintln!("ckpt: restore failed: a process died or hung while being restored");
                false
            }
        }
    };
    // SAFETY: closing the init's ends and the shared objects (the processes hold their own copies).
    unsafe {
        libc::close(created_r);
        libc::close(go_w);
        libc::close(status_r);
    }
    for fd in (sh.lo..sh.hi).filter(|fd| !sh.keep.contains(fd)) {
        // SAFETY: descriptors in this range are the init's shared objects.
        unsafe { libc::close(fd) };
    }
    if !ok {
        return kill_all(&sh);
    }
    Attempt::Running(top_pids.iter().copied().min().unwrap_or(0))
}

/// Wait until `fd` is readable, a direct child died, or the deadline passed.
fn wait_readable(fd: i32, deadline: Instant) -> bool {
    loop {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: polling one descriptor we own.
        let r = unsafe { libc::poll(&mut p, 1, 100) };
        if r > 0 {
            return true;
        }
        let mut st = 0;
        // SAFETY: non-blocking check for a dead child.
        if unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG | libc::__WALL) } > 0
            || Instant::now() > deadline
        {
            return false;
        }
    }
}

fn wait_bytes(fd: i32, n: usize, want: u8, limit: Duration) -> Result<(), ()> {
    let deadline = Instant::now() + limit;
    for _ in 0..n {
        if !wait_readable(fd, deadline) {
            return Err(());
        }
        let mut b = [0u8; 1];
        // SAFETY: reading one byte into a local.
        let r = unsafe { libc::read(fd, b.as_mut_ptr().cast(), 1) };
        if r != 1 || b[0] != want {
            return Err(());
        }
    }
    Ok(())
}

/// Collect `n` 'K's, or the first failure record.
fn wait_status(fd: i32, n: usize, limit: Duration) -> Result<(), Option<super::blob::RstFailure>> {
    let deadline = Instant::now() + limit;
    for _ in 0..n {
        if !wait_readable(fd, deadline) {
            return Err(None);
        }
        let mut b = [0u8; 1];
        // SAFETY: reading one byte into a local.
        if unsafe { libc::read(fd, b.as_mut_ptr().cast(), 1) } != 1 {
            return Err(None);
        }
        if b[0] == b'K' {
            continue;
        }
        // A failure record: the byte read is the low byte of its code.
        let mut rest = [0u8; std::mem::size_of::<super::blob::RstFailure>()];
        rest[0] = b[0];
        // SAFETY: reading the rest of the record into a local buffer.
        let got = unsafe { libc::read(fd, rest[1..].as_mut_ptr().cast(), rest.len() - 1) };
        if got != (rest.len() - 1) as isize {
            return Err(None);
        }
        // SAFETY: RstFailure is plain old data of exactly this size.
        let f: super::blob::RstFailure = unsafe { std::ptr::read_unaligned(rest.as_ptr().cast()) };
        return Err(Some(f));
    }
    Ok(())
}

fn kill_all(_sh: &Shared) -> Attempt {
    // Only the job's init may do this: there kill(-1) reaches exactly the
    // other processes of the job's pid namespace.
    // SAFETY: getpid has no preconditions.
    if unsafe { libc::getpid() } == 1 {
        // SAFETY: as the pid namespace's init, kill(-1) reaches every other process of the job.
        unsafe { libc::kill(-1, libc::SIGKILL) };
    }
    loop {
        let mut st = 0;
        // SAFETY: reaping our children.
        if unsafe { libc::waitpid(-1, &mut st, libc::__WALL) } < 0 {
            break;
        }
    }
    Attempt::Failed
}
