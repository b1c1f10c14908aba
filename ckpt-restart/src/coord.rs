//! The coordinator: one per launched (or restarted) job, inside `ckpt`.
//!
//! Listens on a unix socket in the checkpoint directory; processes of the
//! job register there (their libckpt connects at start-up), `ckpt
//! checkpoint` asks there. A checkpoint opens a new `.tmp` generation, asks
//! every registered process to write its image into it, validates what they
//! wrote, and commits the generation only when all of them succeeded. A
//! failure leaves the previous generation untouched and the job running.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ckpt::image::checksum::crc32c;
use ckpt::image::format;
use ckpt::image::generation::CheckpointDir;
use ckpt::image::manifest::{FdKind, GenerationRecord, ProcessManifest, ProcessRef, GENERATION_FORMAT};

use crate::sock;

struct Proc {
    pid: i32,
    conn: OwnedFd,
}

/// Result of a successful checkpoint.
#[derive(Debug, Clone)]
pub struct Done {
    /// The generation directory.
    pub path: PathBuf,
    /// Bytes written.
    pub bytes: u64,
    /// Longest pause of a process, µs.
    pub pause_us: u64,
    /// Time to a durable generation, µs.
    pub total_us: u64,
}

/// The coordinator state.
pub struct Coordinator {
    dir: CheckpointDir,
    procs: Mutex<Vec<Proc>>,
    ckpt_lock: Mutex<()>,
    command: Vec<String>,
    keep: usize,
    /// Socket path the processes connect to.
    pub socket: PathBuf,
}

impl Coordinator {
    /// A coordinator for `dir`, listening at `socket`.
    pub fn new(dir: CheckpointDir, socket: PathBuf, command: Vec<String>, keep: usize) -> Arc<Self> {
        Arc::new(Coordinator { dir, procs: Mutex::new(Vec::new()), ckpt_lock: Mutex::new(()), command, keep, socket })
    }

    /// Serve connections forever (run on its own thread).
    pub fn serve(self: Arc<Self>, listener: OwnedFd) {
        loop {
            let Ok(conn) = sock::accept(&listener) else { continue };
            let me = self.clone();
            std::thread::spawn(move || me.handle(conn));
        }
    }

    fn handle(self: Arc<Self>, conn: OwnedFd) {
        let Ok(Some(first)) = sock::recv(&conn) else { return };
        if let Some(rest) = first.strip_prefix("HELLO ") {
            let pid = rest.split(' ').next().and_then(|p| p.parse().ok()).unwrap_or(0);
            if let Ok(mut p) = self.procs.lock() {
                p.retain(|x| x.pid != pid);
                p.push(Proc { pid, conn });
            }
        } else if first == "CHECKPOINT" {
            let reply = match self.checkpoint() {
                Ok(d) => format!("OK {} {} {} {}", d.path.display(), d.bytes, d.pause_us, d.total_us),
                Err(e) => format!("ERR {e}"),
            };
            let _ = sock::send(&conn, reply.as_bytes());
        }
    }

    /// Number of registered processes.
    pub fn registered(&self) -> usize {
        self.procs.lock().map(|p| p.len()).unwrap_or(0)
    }

    /// Take a checkpoint of every registered process. Blocks until the
    /// generation is durable.
    pub fn checkpoint(&self) -> Result<Done, String> {
        let _g = self.ckpt_lock.lock().map_err(|_| "internal lock poisoned".to_string())?;
        let t0 = Instant::now();
        // Give a just-started program a moment to register.
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.registered() == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut procs = self.procs.lock().map_err(|_| "internal lock poisoned".to_string())?;
        if procs.is_empty() {
            return Err("no process of the job is connected (did the program clear LD_PRELOAD, or has it not started yet?)".into());
        }
        let pending = self.dir.begin().map_err(|e| e.to_string())?;
        let target = pending.path.display().to_string();
        let mut refs = Vec::new();
        let mut pause = 0u64;
        let mut bytes = 0u64;
        let mut failure: Option<String> = None;
        let mut gone = Vec::new();
        for p in procs.iter() {
            if sock::send(&p.conn, format!("CKPT {target}").as_bytes()).is_err() {
                gone.push(p.pid);
                continue;
            }
            match sock::recv(&p.conn) {
                Ok(Some(r)) if r.starts_with("DONE ") => {
                    let f: Vec<&str> = r.split(' ').collect();
                    bytes += f.get(2).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
                    pause = pause.max(f.get(3).and_then(|x| x.parse().ok()).unwrap_or(0));
                    match check_written(&pending.path, p.pid) {
                        Ok(r) => refs.push(r),
                        Err(e) => failure = Some(format!("process {}: {e}", p.pid)),
                    }
                }
                Ok(Some(r)) => {
                    let msg = r.strip_prefix("FAIL ").unwrap_or(&r);
                    let (pid, why) = msg.split_once(' ').unwrap_or(("?", msg));
                    failure = Some(format!("process {pid}: {why}"));
                }
                _ => gone.push(p.pid),
            }
            if failure.is_some() {
                break;
            }
        }
        procs.retain(|p| !gone.contains(&p.pid));
        drop(procs);
        if refs.is_empty() && failure.is_none() {
            failure = Some("every process of the job exited during the checkpoint".into());
        }
        if let Some(f) = failure {
            pending.abort();
            return Err(format!("checkpoint failed, the job keeps running and the previous checkpoint is kept: {f}"));
        }
        let record = GenerationRecord {
            format: GENERATION_FORMAT.into(),
            version: [format::FORMAT_MAJOR, format::FORMAT_MINOR],
            number: pending.number,
            created_unix: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
            // SAFETY: getuid has no preconditions.
            uid: unsafe { libc::getuid() },
            command: self.command.clone(),
            processes: refs,
            pause_us: pause,
            bytes,
            tool_version: env!("CARGO_PKG_VERSION").into(),
        };
        let path = pending.commit(&record, self.keep).map_err(|e| format!("checkpoint could not be made durable: {e}"))?;
        Ok(Done { path, bytes, pause_us: pause, total_us: t0.elapsed().as_micros() as u64 })
    }
}

/// Check what a process wrote and refuse features restore cannot handle yet.
fn check_written(gdir: &Path, pid: i32) -> Result<ProcessRef, String> {
    let mname = format!("proc-{pid}.json");
    let iname = format!("proc-{pid}.img");
    let data = std::fs::read(gdir.join(&mname)).map_err(|e| format!("{mname}: {e}"))?;
    let m: ProcessManifest = serde_json::from_slice(&data).map_err(|e| format!("{mname} is not a valid manifest: {e}"))?;
    for f in &m.fds {
        if f.fd > 2 && matches!(f.kind, FdKind::Socket | FdKind::Other) {
            return Err(format!(
                "fd {} is {} ({}), which ckpt cannot checkpoint yet",
                f.fd,
                if f.kind == FdKind::Socket { "a socket" } else { "a kernel object" },
                f.path
            ));
        }
    }
    let size = std::fs::metadata(gdir.join(&iname)).map_err(|e| format!("{iname}: {e}"))?.len();
    Ok(ProcessRef { pid, manifest: mname, manifest_crc: crc32c(&data), image: iname, image_size: size })
}

/// Ask the coordinator at `socket` for a checkpoint (the `ckpt checkpoint` client).
pub fn request(socket: &Path) -> Result<String, String> {
    let c = sock::connect(socket).map_err(|e| format!("cannot reach a running job at {}: {e}", socket.display()))?;
    sock::send(&c, b"CHECKPOINT").map_err(|e| e.to_string())?;
    match sock::recv(&c) {
        Ok(Some(r)) => Ok(r),
        Ok(None) => Err("the job's coordinator closed the connection (did the job exit?)".into()),
        Err(e) => Err(e.to_string()),
    }
}
