//! `ckpt launch --dir D [--interval T] -- CMD ARGS...`

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::{Failure, Opts, need_dir};
use crate::coord::Coordinator;
use crate::{ns, sock};
use ckpt::coord::ENV_SOCKET;
use ckpt::image::generation::CheckpointDir;

/// Where libckpt.so is: `$CKPT_LIB`, beside the `ckpt` binary, or `../lib/ckpt/`.
pub fn find_lib() -> Result<PathBuf, Failure> {
    if let Some(p) = std::env::var_os("CKPT_LIB") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the ckpt binary: {e}"))?;
    let dir = exe.parent().unwrap_or(Path::new("/"));
    for c in [dir.join("libckpt.so"), dir.join("../lib/ckpt/libckpt.so")] {
        if c.exists() {
            return Ok(c.canonicalize().unwrap_or(c));
        }
    }
    Err(Failure {
        msg: format!(
            "libckpt.so not found beside {} or in ../lib/ckpt; set CKPT_LIB",
            exe.display()
        ),
        code: 1,
    })
}

/// Claim the coordinator socket of `dir`: refuse if a job is already running there.
pub fn claim_socket(
    dir: &CheckpointDir,
    allow_alternate: bool,
) -> Result<(PathBuf, std::os::fd::OwnedFd), Failure> {
    // Serialize with other ckpt commands claiming the same directory (two
    // restarts of one image at once): the check for a live coordinator and
    // the bind must not interleave, or one could unlink the other's socket.
    let lock_path = dir.path().join(".ckpt.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dir.at(".ckpt.lock"))
        .map_err(|e| format!("cannot open {}: {e}", lock_path.display()))?;
    // SAFETY: flock on a descriptor we own; released when `lock` is dropped.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) } != 0 {
        return Err(Failure {
            msg: format!(
                "cannot lock {}: {}",
                lock_path.display(),
                std::io::Error::last_os_error()
            ),
            code: 1,
        });
    }
    let mut path = dir.socket_path();
    let mut name = "ckpt.sock".to_owned();
    if sock::is_live(&dir.at(&name)) {
        if !allow_alternate {
            return Err(Failure {
                msg: format!(
                    "a job is already running under {} (its coordinator answers at {}); use another --dir",
                    dir.path().display(),
                    path.display()
                ),
                code: 1,
            });
        }
        // SAFETY: getpid has no preconditions.
        let me = unsafe { libc::getpid() };
        name = format!("ckpt-{me}.sock");
        let alt = dir.path().join(&name);
        eprintln!(
            "ckpt: another copy of this job is running under {}; this one listens at {} (`ckpt checkpoint --dir` reaches the first)",
            dir.path().display(),
            alt.display()
        );
        path = alt;
    }
    // The job's processes keep the socket's path in a fixed buffer (also
    // in restored images): longer paths are refused here, before anything
    // runs, rather than leaving a job that cannot be checkpointed.
    if path.as_os_str().len() >= ckpt::coord::MAX_SOCKET_PATH {
        return Err(Failure {
            msg: format!(
                "the checkpoint directory's path is too long: {} is {} bytes, at most {} are \
                 supported; choose a shorter --dir",
                path.display(),
                path.as_os_str().len(),
                ckpt::coord::MAX_SOCKET_PATH - 1
            ),
            code: 2,
        });
    }
    let _ = dir.remove(&name);
    // Bound through the directory's descriptor: the socket lands in the
    // directory that was checked, and its path length does not matter.
    let l = sock::listen(&dir.at(&name))
        .map_err(|e| format!("cannot listen at {}: {e}", path.display()))?;
    drop(lock);
    Ok((path, l))
}

/// Start the periodic checkpoint thread.
pub fn start_interval(c: &std::sync::Arc<Coordinator>, secs: u64) {
    if secs == 0 {
        return;
    }
    let c = c.clone();
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(std::time::Duration::from_secs(secs));
            if let Err(e) = c.checkpoint() {
                eprintln!("ckpt: periodic checkpoint failed: {e}");
            }
        }
    });
}

/// What the outer `ckpt` process does with a signal it receives while the
/// job runs: return `true` to consume it, `false` to forward it to the job.
/// The Slurm integration uses this to checkpoint and requeue on the
/// warning signal.
pub type OnSignal<'a> = &'a mut dyn FnMut(i32, &std::sync::Arc<Coordinator>) -> bool;

/// Run the subcommand.
pub fn run(o: &Opts) -> Result<i32, Failure> {
    run_with(o, &mut |_, _| false)
}

/// Run the subcommand with a signal hook for the outer process.
pub fn run_with(o: &Opts, on_signal: OnSignal<'_>) -> Result<i32, Failure> {
    if o.command.is_empty() {
        return Err(Failure {
            msg: "missing the command to run: ckpt launch --dir DIR -- COMMAND [ARGS...]".into(),
            code: 2,
        });
    }
    let dir = CheckpointDir::open(&need_dir(o)?)?;
    if let Some(note) = dir.mode_note() {
        eprintln!("ckpt: note: {note}");
    }
    let lib = find_lib()?;
    let (sock_path, listener) = claim_socket(&dir, false)?;
    let argv: Vec<CString> = o
        .command
        .iter()
        .map(|a| {
            CString::new(a.as_bytes()).map_err(|_| Failure {
                msg: format!("argument {:?} contains a NUL byte", a.to_string_lossy()),
                code: 2,
            })
        })
        .collect::<Result<_, _>>()?;
    let preload = match std::env::var("LD_PRELOAD") {
        Ok(old) if !old.is_empty() => format!("{}:{old}", lib.display()),
        _ => lib.display().to_string(),
    };

    let set = ns::block_signals();
    match super::check::namespaces_or_diagnosis()? {
        None => {
            // The init (pid 1 of the job).
            drop(listener);
            if let Err(e) = ns::setup_mounts() {
                eprintln!("ckpt: {e}");
                ckpt::signal_safe::raw::exit_group(1);
            }
            // SAFETY: fork in the single-threaded init.
            let child = unsafe { libc::fork() };
            if child == 0 {
                ns::unblock_all();
                // The Rust runtime ignores SIGPIPE; the program must start with
                // the default action, as it would without ckpt.
                // SAFETY: resetting a signal disposition in the single-threaded child before exec.
                unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
                // SAFETY: setenv in the single-threaded child right before exec.
                unsafe {
                    std::env::set_var("LD_PRELOAD", &preload);
                    std::env::set_var(ENV_SOCKET, &sock_path);
                }
                let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
                ptrs.push(std::ptr::null());
                // SAFETY: argv is a NULL-terminated array of valid C strings.
                unsafe { libc::execvp(ptrs[0], ptrs.as_ptr()) };
                let e = std::io::Error::last_os_error();
                eprintln!("ckpt: cannot run {}: {e}", o.command[0].to_string_lossy());
                ckpt::signal_safe::raw::exit_group(if e.kind() == std::io::ErrorKind::NotFound {
                    127
                } else {
                    126
                });
            }
            let code = ns::supervise(&set, child, child, |_| false);
            ckpt::signal_safe::raw::exit_group(code)
        }
        Some(init) => Ok(run_outer(
            Outer {
                dir: &dir,
                // For display only (`ckpt status`): lossy where not UTF-8.
                command: o
                    .command
                    .iter()
                    .map(|a| a.to_string_lossy().into_owned())
                    .collect(),
                opts: o,
                socket: &sock_path,
                listener,
                set: &set,
            },
            init.as_raw(),
            on_signal,
        )),
    }
}

/// What the outer `ckpt` process needs once the job's init exists.
pub struct Outer<'a> {
    /// The checkpoint directory.
    pub dir: &'a CheckpointDir,
    /// The job's command (recorded in each generation).
    pub command: Vec<String>,
    /// Options (`--keep`, `--interval`).
    pub opts: &'a Opts,
    /// The coordinator socket path (removed at the end).
    pub socket: &'a Path,
    /// Its listening socket.
    pub listener: std::os::fd::OwnedFd,
    /// The signals blocked for `ns::supervise`.
    pub set: &'a libc::sigset_t,
}

/// The outer process of `launch` and `restart`: serve the coordinator,
/// take periodic checkpoints, forward signals, and return the job's exit
/// status when its init ends.
pub fn run_outer(o: Outer<'_>, init: i32, on_signal: OnSignal<'_>) -> i32 {
    let coord = Coordinator::new(o.dir.clone(), o.command, o.opts.keep);
    coord.set_init(init);
    let mut track = o.opts.incremental.tracking(o.opts.interval);
    if track && let Some(why) = super::check::incremental_unavailable() {
        eprintln!("ckpt: {why}");
        track = false;
    }
    coord.set_tracking(track);
    coord.set_compress(o.opts.compress);
    if let Some(max) = o.opts.max_file_copy {
        coord.set_max_file_copy(max);
    }
    coord.exclude_files(o.opts.exclude_files.clone());
    let c2 = coord.clone();
    let listener = o.listener;
    std::thread::spawn(move || c2.serve(listener));
    start_interval(&coord, o.opts.interval);
    let code = ns::supervise(o.set, init, init, |sig| on_signal(sig, &coord));
    // Through the directory's descriptor: the socket this job bound.
    if let Some(name) = o.socket.file_name().and_then(|n| n.to_str()) {
        let _ = o.dir.remove(name);
    }
    code
}
