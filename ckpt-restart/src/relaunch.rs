//! Processes that are started again instead of restored: `srun` inside a
//! checkpointed batch job (docs/batch-jobs.md).
//!
//! `srun` is the client of a Slurm step: it holds connections to slurmctld
//! and to the step's slurmstepds, which belong to the allocation the job
//! had. Its state cannot be brought back, and need not be: its tasks are
//! checkpointed in their own step, and a new `srun` with the same
//! arguments, environment, working directory and standard descriptors,
//! started under the same pid as a child of the same parent, launches a
//! new step whose tasks resume from those images.
//!
//! - [`capture`] reads what the new `srun` needs from `/proc` while the rest
//!   of the job is stopped (the `srun` itself keeps running: its tasks are
//!   held stopped by their own checkpoint, so it has nothing to do);
//! - [`exec`] runs in the process the restore created with the saved pid,
//!   after its descriptors are back (stage 1's own code), and execs.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use ckpt::image::manifest::{Fd, FdKind, ProcessManifest, Relaunch, StepRef};

use crate::restore::names::name_bytes;

/// Whether a process is started again rather than restored: the Slurm step
/// launcher.
pub fn is_relaunched(exe: &str) -> bool {
    Path::new(exe.trim_end_matches(" (deleted)"))
        .file_name()
        .is_some_and(|n| n == "srun")
}

/// Bytes to a manifest name (each byte one char; the JSON writer escapes).
fn encode(b: &[u8]) -> String {
    b.iter().map(|&c| c as char).collect()
}

fn split_nul(b: &[u8]) -> Vec<String> {
    b.split(|&c| c == 0)
        .filter(|s| !s.is_empty())
        .map(encode)
        .collect()
}

/// The innermost (job namespace) value of a `/proc/PID/status` line such
/// as `NSpgid:`.
fn ns_field(status: &str, key: &str) -> Option<i32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().last())
        .and_then(|v| v.parse().ok())
}

/// A standard descriptor of another process, read from `/proc`.
fn capture_fd(host: i32, pid: i32, exe: &str, fd: i32) -> Result<Option<Fd>, String> {
    let link = format!("/proc/{host}/fd/{fd}");
    let Ok(target) = std::fs::read_link(&link) else {
        return Ok(None); // closed
    };
    let md = std::fs::metadata(&link).map_err(|e| format!("{link}: {e}"))?;
    let info = std::fs::read_to_string(format!("/proc/{host}/fdinfo/{fd}"))
        .map_err(|e| format!("/proc/{host}/fdinfo/{fd}: {e}"))?;
    let field = |k: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().to_string())
    };
    let pos = field("pos:").and_then(|v| v.parse().ok()).unwrap_or(0);
    let flags = field("flags:")
        .and_then(|v| u32::from_str_radix(&v, 8).ok())
        .unwrap_or(0);
    let ft = md.file_type();
    let kind = if ft.is_file() {
        FdKind::File
    } else if ft.is_dir() {
        FdKind::Dir
    } else if ft.is_fifo() {
        FdKind::Pipe
    } else if ft.is_char_device() {
        // Terminals: the console (4, 5) and pseudo-terminal slaves (136-143).
        let major = libc::major(md.rdev());
        if major == 4 || major == 5 || (136..=143).contains(&major) {
            FdKind::Tty
        } else {
            FdKind::Device
        }
    } else {
        return Err(format!(
            "process {pid} ({exe}) has fd {fd} on {}, which a relaunched step launcher cannot be given back (only files, pipes, terminals and devices can); redirect its standard descriptors to files",
            target.display()
        ));
    };
    Ok(Some(Fd {
        fd,
        kind,
        path: encode(target.as_os_str().as_bytes()),
        flags: flags & !(libc::O_CLOEXEC as u32),
        pos,
        cloexec: false,
        termios: Vec::new(),
        dev: md.dev(),
        inode: md.ino(),
        pipe_data: None,
        pipe_crc: None,
        object: None,
        socket: None,
        inet: None,
        pty: None,
    }))
}

/// What starting `host` (namespace pid `pid`, parent `ppid`) again needs.
pub fn capture(
    host: i32,
    pid: i32,
    ppid: i32,
    exe: &str,
    step: Option<StepRef>,
) -> Result<Relaunch, String> {
    let read = |what: &str| {
        std::fs::read(format!("/proc/{host}/{what}"))
            .map_err(|e| format!("process {pid} ({exe}): /proc/{host}/{what}: {e}"))
    };
    let status = String::from_utf8_lossy(&read("status")?).into_owned();
    let exe_path = std::fs::read_link(format!("/proc/{host}/exe"))
        .map_err(|e| format!("process {pid} ({exe}): its executable: {e}"))?;
    let cwd = std::fs::read_link(format!("/proc/{host}/cwd"))
        .map_err(|e| format!("process {pid} ({exe}): its working directory: {e}"))?;
    let umask = status
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        .unwrap_or(0o022);
    let mut fds = Vec::new();
    for fd in 0..=2 {
        if let Some(f) = capture_fd(host, pid, exe, fd)? {
            fds.push(f);
        }
    }
    Ok(Relaunch {
        pid,
        ppid,
        pgid: ns_field(&status, "NSpgid:").unwrap_or(0),
        sid: ns_field(&status, "NSsid:").unwrap_or(0),
        exe: encode(exe_path.as_os_str().as_bytes()),
        argv: split_nul(&read("cmdline")?),
        env: split_nul(&read("environ")?),
        cwd: encode(cwd.as_os_str().as_bytes()),
        umask,
        fds,
        step,
    })
}

/// A process manifest carrying only what stage 1 restores for a relaunched
/// process: its descriptors and working directory.
pub fn placeholder(r: &Relaunch) -> ProcessManifest {
    ProcessManifest {
        pgid: r.pgid,
        sid: r.sid,
        fds: r.fds.clone(),
        cwd: r.cwd.clone(),
        umask: r.umask,
        // SAFETY: getuid has no preconditions.
        ..ProcessManifest::bare(r.pid, r.ppid, unsafe { libc::getuid() }, &r.exe)
    }
}

/// Variables that describe the allocation: taken from the job as it runs
/// now (after a requeue its nodes may differ), not from the saved
/// environment.
const ALLOCATION: &[&str] = &[
    "SLURM_JOB_NODELIST",
    "SLURM_NODELIST",
    "SLURM_JOB_NUM_NODES",
    "SLURM_NNODES",
    "SLURM_TASKS_PER_NODE",
    "SLURM_JOB_CPUS_PER_NODE",
    "SLURM_NODEID",
    "SLURMD_NODENAME",
    "SLURM_TOPOLOGY_ADDR",
    "SLURM_TOPOLOGY_ADDR_PATTERN",
    "SLURM_RESTART_COUNT",
    "SLURM_JOB_START_TIME",
    "SLURM_JOB_END_TIME",
];

/// Names of the variables that tell a relaunched step's tasks where their
/// images are (read by the SPANK plugin and `ckpt slurm-task`).
pub const ENV_STEP_DIR: &str = "CKPT_STEP_DIR";
/// `RANK:GENERATION,...`: the generation each task resumes from.
pub const ENV_STEP_GENERATIONS: &str = "CKPT_STEP_GENERATIONS";

/// The environment the new process gets: the saved one, with the
/// coordinator socket of this run, the allocation as it is now, and for a
/// step its directory and generations.
pub fn environment(r: &Relaunch, socket: &Path, now: &[(Vec<u8>, Vec<u8>)]) -> Vec<Vec<u8>> {
    let mut set: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    set.push((
        ckpt::coord::ENV_SOCKET.as_bytes().to_vec(),
        socket.as_os_str().as_bytes().to_vec(),
    ));
    for (k, v) in now {
        if ALLOCATION.iter().any(|a| a.as_bytes() == k.as_slice()) {
            set.push((k.clone(), v.clone()));
        }
    }
    let mut drop: Vec<Vec<u8>> = vec![
        ENV_STEP_DIR.as_bytes().to_vec(),
        ENV_STEP_GENERATIONS.as_bytes().to_vec(),
    ];
    if let Some(s) = &r.step {
        set.push((ENV_STEP_DIR.as_bytes().to_vec(), s.dir.as_bytes().to_vec()));
        let gens: Vec<String> = s
            .tasks
            .iter()
            .enumerate()
            .map(|(rank, g)| format!("{rank}:{g}"))
            .collect();
        set.push((
            ENV_STEP_GENERATIONS.as_bytes().to_vec(),
            gens.join(",").into_bytes(),
        ));
    }
    drop.extend(set.iter().map(|(k, _)| k.clone()));
    let mut out: Vec<Vec<u8>> = r
        .env
        .iter()
        .map(|e| name_bytes(e))
        .filter(|e| {
            let name = e.split(|&c| c == b'=').next().unwrap_or(e);
            !drop.iter().any(|d| d.as_slice() == name)
        })
        .collect();
    for (k, v) in set {
        let mut e = k;
        e.push(b'=');
        e.extend_from_slice(&v);
        out.push(e);
    }
    out
}

/// Execs the relaunched command in this process (its descriptors and
/// working directory already restored). Returns only on failure.
pub fn exec(r: &Relaunch, env: &[Vec<u8>]) -> String {
    let c = |b: Vec<u8>| CString::new(b).unwrap_or_default();
    let exe = c(name_bytes(&r.exe));
    let argv: Vec<CString> = r.argv.iter().map(|a| c(name_bytes(a))).collect();
    let envp: Vec<CString> = env.iter().map(|e| c(e.clone())).collect();
    let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut env_p: Vec<*const libc::c_char> = envp.iter().map(|e| e.as_ptr()).collect();
    env_p.push(std::ptr::null());
    // SAFETY: default dispositions and an empty mask, as a freshly exec'ed
    // program expects (the restore blocked everything).
    unsafe {
        for sig in 1..=64 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
    // SAFETY: NUL-terminated arrays of valid C strings that outlive the call.
    unsafe { libc::execve(exe.as_ptr(), argv_p.as_ptr(), env_p.as_ptr()) };
    format!(
        "cannot start {} again as process {}: {}",
        r.exe,
        r.pid,
        std::io::Error::last_os_error()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_the_step_launcher() {
        assert!(is_relaunched("/usr/bin/srun"));
        assert!(is_relaunched("/opt/slurm/bin/srun (deleted)"));
        assert!(!is_relaunched("/usr/bin/sruns"));
        assert!(!is_relaunched("/usr/bin/bash"));
    }

    #[test]
    fn capture_reads_a_live_process_and_round_trips() {
        let dir = std::env::temp_dir().join(format!("ckpt-relaunch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = std::fs::File::create(dir.join("out")).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .current_dir(&dir)
            .env("CKPT_STEP_DIR", "old")
            .env("RELAUNCH_TEST", "caf\u{e9}")
            .stdout(out)
            .spawn()
            .unwrap();
        // Wait for the exec.
        let host = child.id() as i32;
        for _ in 0..200 {
            if std::fs::read(format!("/proc/{host}/cmdline")).is_ok_and(|c| c.starts_with(b"sleep"))
            {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let step = StepRef {
            id: "7.1".into(),
            dir: "step1".into(),
            tasks: vec![3, 4],
            nodes: vec!["n1".into(), "n2".into()],
        };
        let r = capture(host, 5, 2, "sleep", Some(step)).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(r.argv, ["sleep", "30"]);
        assert_eq!(name_bytes(&r.cwd), dir.as_os_str().as_bytes());
        let out = r.fds.iter().find(|f| f.fd == 1).unwrap();
        assert_eq!(out.kind, FdKind::File);
        assert_eq!(
            name_bytes(&out.path),
            dir.join("out").as_os_str().as_bytes()
        );
        let json = serde_json::to_string(&r).unwrap();
        let back: Relaunch = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
        let env = environment(
            &r,
            Path::new("/run/sock"),
            &[(b"SLURM_JOB_NODELIST".to_vec(), b"n[2-3]".to_vec())],
        );
        let has = |e: &[u8]| env.iter().any(|x| x.as_slice() == e);
        assert!(has(b"CKPT_SOCKET=/run/sock"));
        assert!(has(b"SLURM_JOB_NODELIST=n[2-3]"));
        assert!(has(b"CKPT_STEP_DIR=step1"));
        assert!(has(b"CKPT_STEP_GENERATIONS=0:3,1:4"));
        assert!(has("RELAUNCH_TEST=caf\u{e9}".as_bytes()));
        assert!(!has(b"CKPT_STEP_DIR=old"));
        assert_eq!(placeholder(&r).fds, r.fds);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
