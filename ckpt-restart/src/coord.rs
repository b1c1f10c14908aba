//! The coordinator: one per launched (or restarted) job, inside `ckpt`.
//!
//! A checkpoint:
//! 1. opens a new `.tmp` generation;
//! 2. walks the job's process tree and sends the stop signal to every live
//!    process (re-walking until no new process appears); each process's
//!    leader stops its threads and connects here with `STOPPED`;
//! 3. once *every* process is stopped (so pipes and shared memory are
//!    consistent), says `WRITE <dir>` to each and collects `DONE`;
//! 4. says `RELEASE` to all (the job runs again), collects `SYNCED`;
//! 5. validates what was written and commits the generation.
//!
//! Any failure (a process that cannot be stopped or written, an unsupported
//! feature) aborts the generation — the previous one is untouched — and
//! releases the job, which keeps running.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ckpt::coord::STOP_SIGNAL;
use ckpt::fault::{self, Point};
use ckpt::image::checksum::crc32c;
use ckpt::image::format;
use ckpt::image::generation::CheckpointDir;
use ckpt::image::manifest::{
    AcrossEnd, FdKind, GENERATION_FORMAT, GenerationRecord, ProcessManifest, ProcessRef, Relaunch,
    StepRef, Zombie,
};
use ckpt::objects::inet_socket::InetSocket;

use crate::{relaunch, saved_files, sock, sockets, tree};

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
    /// Processes in the image.
    pub processes: usize,
    /// Processes written while stopped (no copy-on-write snapshot).
    pub in_place: usize,
    /// Of those, the processes whose snapshot lacked memory they advised
    /// `MADV_DONTFORK` or `MADV_WIPEONFORK`.
    pub in_place_advice: usize,
    /// The generation an incremental checkpoint refers to (0: full).
    pub base: u64,
}

/// The coordinator state.
pub struct Coordinator {
    dir: CheckpointDir,
    ckpt_lock: Mutex<()>,
    incoming: Mutex<Option<Sender<(OwnedFd, String)>>>,
    command: Vec<String>,
    keep: usize,
    init_pid: AtomicI32,
    /// Snapshot children (ns pids) of earlier checkpoints: not part of the job.
    snapshots: Mutex<BTreeSet<i32>>,
    /// Track written pages between checkpoints (incremental checkpoints).
    tracking: std::sync::atomic::AtomicBool,
    /// Snapshot children compress private memory (`--compress`).
    compress: std::sync::atomic::AtomicBool,
    /// Which files the job writes are kept, and up to what size.
    files: Mutex<saved_files::Policy>,
    /// `srun` processes are started again at restart rather than restored
    /// (a batch job, [`crate::relaunch`]); with the steps they run, by
    /// namespace pid. `None`: every process is checkpointed.
    relaunch: Mutex<Option<BTreeMap<i32, StepRef>>>,
    /// Connections to processes outside the job come back closed by their
    /// peer instead of being refused (`CKPT_EXTERNAL_SOCKETS=closed`).
    reset_outside: bool,
    /// After a refusal for bytes TCP senders of the job have not delivered
    /// yet: the senders stopped first at the next try.
    drain: Mutex<Drain>,
    /// Which job checkpoint's hold is the current one ([`Self::release_held`]).
    hold_epoch: std::sync::atomic::AtomicU64,
}

/// TCP senders of the job ahead of their receivers (docs/sockets.md):
/// at the next try they are stopped first, and the others run until
/// every receiver has read what was queued for it (or `limit` passed).
#[derive(Default)]
struct Drain {
    /// The senders' host pids.
    pids: Vec<i32>,
    /// Each sending socket and its receiving peer, as last captured.
    flows: Vec<(InetSocket, InetSocket)>,
    /// The longest the others run before they are stopped too.
    limit: Duration,
}

/// The variable that says what becomes of connections to processes
/// outside the job: `refuse` (the default) or `closed` (docs/sockets.md).
pub const ENV_EXTERNAL_SOCKETS: &str = "CKPT_EXTERNAL_SOCKETS";

/// The policy the environment asks for: `Ok(true)` for `closed`.
pub fn external_sockets_policy(value: Option<&str>) -> Result<bool, String> {
    match value.map(str::trim) {
        None | Some("" | "refuse") => Ok(false),
        Some("closed") => Ok(true),
        Some(other) => Err(format!(
            "{ENV_EXTERNAL_SOCKETS}={other} is neither 'refuse' nor 'closed'"
        )),
    }
}

/// Longest chain of incremental generations before a full one.
pub const MAX_CHAIN: u32 = 8;

const STOP_DEADLINE: Duration = Duration::from_secs(30);
/// How long a checkpoint refused for a reason that passes by itself is
/// tried again (docs/sockets.md).
const PASSING_RETRY: Duration = Duration::from_secs(5);

/// Why a task's part of a job checkpoint (or a job checkpoint) was not
/// taken, and whether the cause passes by itself (bytes on their way
/// between tasks, a rank in a PMIx fence): the batch step then tries the
/// whole job's checkpoint again (`crate::cli::job`). Its answer to the
/// batch step says which (`PASS` or `ERR`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// What was refused and why, for the user.
    pub why: String,
    /// The cause passes by itself.
    pub passes: bool,
}

impl Refused {
    /// A cause that passes by itself.
    pub fn passing(why: String) -> Self {
        Refused { why, passes: true }
    }
}

impl From<String> for Refused {
    /// A cause that does not pass by itself.
    fn from(why: String) -> Self {
        Refused { why, passes: false }
    }
}

impl std::fmt::Display for Refused {
    /// The reason only: whether it passes is the caller's to say (a task
    /// answers `PASS` or `ERR`; the batch step says when it gives up).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.why)
    }
}

/// Connections served at once (a checkpoint holds one per process).
pub const MAX_CONNECTIONS: usize = 4096;

impl Coordinator {
    /// A coordinator for `dir`.
    pub fn new(dir: CheckpointDir, command: Vec<String>, keep: usize) -> Arc<Self> {
        let dir_path = dir.path().to_path_buf();
        Arc::new(Coordinator {
            dir,
            ckpt_lock: Mutex::new(()),
            incoming: Mutex::new(None),
            command,
            keep,
            init_pid: AtomicI32::new(0),
            snapshots: Mutex::new(BTreeSet::new()),
            tracking: std::sync::atomic::AtomicBool::new(false),
            compress: std::sync::atomic::AtomicBool::new(false),
            files: Mutex::new(saved_files::Policy {
                max_copy: saved_files::DEFAULT_MAX_COPY,
                exclude: Vec::new(),
                ckpt_dir: dir_path,
            }),
            relaunch: Mutex::new(None),
            drain: Mutex::new(Drain::default()),
            hold_epoch: std::sync::atomic::AtomicU64::new(0),
            reset_outside: match external_sockets_policy(
                std::env::var(ENV_EXTERNAL_SOCKETS).ok().as_deref(),
            ) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("ckpt: {e}: connections to processes outside the job are refused");
                    false
                }
            },
        })
    }

    /// Start `srun` processes again at restart instead of restoring them,
    /// with the steps they run (namespace pid to step); `None` turns this
    /// off.
    pub fn set_relaunch(&self, steps: Option<BTreeMap<i32, StepRef>>) {
        if let Ok(mut r) = self.relaunch.lock() {
            *r = steps;
        }
    }

    /// The job's processes that are started again at restart: (namespace
    /// pid, host pid, parent, exe).
    pub fn relaunched(&self) -> Vec<(i32, i32, i32, String)> {
        let init = self.init_pid.load(Ordering::Acquire);
        if init <= 0 || !self.relaunch.lock().is_ok_and(|r| r.is_some()) {
            return Vec::new();
        }
        let members = self.job_members(init);
        // The top srun of each step: srun's own child (its "shepherd", which
        // ends the step if srun dies) goes with it.
        let srun: BTreeSet<i32> = members
            .iter()
            .filter(|m| !m.zombie && relaunch::is_relaunched(&m.exe))
            .map(|m| m.pid)
            .collect();
        members
            .into_iter()
            .filter(|m| srun.contains(&m.pid) && !srun.contains(&m.ppid))
            .map(|m| (m.pid, m.host_pid, m.ppid, m.exe))
            .collect()
    }

    /// The current hold's number: a thread that waits to end a hold ends it
    /// only if no later job checkpoint began meanwhile.
    pub fn hold_epoch(&self) -> u64 {
        self.hold_epoch.load(Ordering::Acquire)
    }

    /// Ends the hold numbered `epoch`, unless a later one began.
    pub fn release_held(&self, epoch: u64) {
        if self.hold_epoch.load(Ordering::Acquire) == epoch {
            self.hold(false);
        }
    }

    /// Stop (`SIGSTOP`) or continue (`SIGCONT`) every process of the job:
    /// how a step's tasks wait, after their part of a job checkpoint, until
    /// the batch step has taken its own (docs/batch-jobs.md).
    pub fn hold(&self, on: bool) {
        let init = self.init_pid.load(Ordering::Acquire);
        if init <= 0 {
            return;
        }
        let sig = if on { libc::SIGSTOP } else { libc::SIGCONT };
        for m in self.job_members(init).iter().filter(|m| !m.zombie) {
            // SAFETY: kill has no memory-safety contract.
            unsafe { libc::kill(m.host_pid, sig) };
        }
    }

    /// The largest file the job writes that a checkpoint keeps (bytes).
    pub fn set_max_file_copy(&self, bytes: u64) {
        if let Ok(mut p) = self.files.lock() {
            p.max_copy = bytes;
        }
    }

    /// Files not to keep (`(device, inode)`: the Slurm task's outputs,
    /// which have their own copy).
    pub fn exclude_files(&self, files: Vec<(u64, u64)>) {
        if let Ok(mut p) = self.files.lock() {
            p.exclude = files;
        }
    }

    /// The newest complete generation (through the held descriptor) and
    /// the files it keeps.
    fn previous_files(&self) -> Option<saved_files::Previous> {
        let (number, r) = self
            .dir
            .list()
            .ok()?
            .into_iter()
            .rev()
            .find_map(|g| g.record.map(|r| (g.number, r)))?;
        Some(saved_files::Previous {
            dir: self.dir.at(ckpt::image::generation::gen_name(number)),
            taken_ns: r.created_unix.saturating_mul(1_000_000_000),
            files: r.files,
        })
    }

    /// Track written pages so that later checkpoints write only what changed.
    pub fn set_tracking(&self, on: bool) {
        self.tracking.store(on, Ordering::Release);
    }

    /// Compress what snapshot children write after the release
    /// (`docs/image-format.md`, "Compressed images").
    pub fn set_compress(&self, on: bool) {
        self.compress.store(on, Ordering::Release);
    }

    /// The generation the next checkpoint may refer to, with its chain
    /// length: the newest complete one, unless its chain is at the limit.
    fn base_for_next(&self) -> (u64, u32) {
        let newest = self
            .dir
            .list()
            .ok()
            .and_then(|l| l.into_iter().rev().find(|g| g.record.is_some()));
        match newest.and_then(|g| g.record) {
            Some(r) if r.chain + 1 < MAX_CHAIN => (r.number, r.chain),
            _ => (0, 0),
        }
    }

    /// Tell the coordinator the host pid of the job's init.
    pub fn set_init(&self, pid: i32) {
        self.init_pid.store(pid, Ordering::Release);
    }

    /// The job's processes, without the snapshot children of earlier
    /// checkpoints and their compression workers (not part of the program).
    fn job_members(&self, init: i32) -> Vec<tree::Member> {
        let all = tree::members(init);
        let Ok(mut snaps) = self.snapshots.lock() else {
            return all;
        };
        snaps.retain(|p| all.iter().any(|m| m.pid == *p));
        // A snapshot child's own children compress for it (`--compress`).
        all.into_iter()
            .filter(|m| !snaps.contains(&m.pid) && !snaps.contains(&m.ppid))
            .collect()
    }

    /// Serve connections forever (run on its own thread). Only processes
    /// of our own user are answered, and at most [`MAX_CONNECTIONS`] at
    /// once (each process of the job holds one during a checkpoint).
    pub fn serve(self: Arc<Self>, listener: OwnedFd) {
        static OPEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        loop {
            let Ok(conn) = sock::accept(&listener) else {
                continue;
            };
            if !sock::peer_is_us(&conn) {
                continue; // dropped: another user's process
            }
            if OPEN.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
                OPEN.fetch_sub(1, Ordering::AcqRel);
                continue;
            }
            let me = self.clone();
            std::thread::spawn(move || {
                me.handle(conn);
                OPEN.fetch_sub(1, Ordering::AcqRel);
            });
        }
    }

    fn handle(self: Arc<Self>, conn: OwnedFd) {
        let Ok(Some(first)) = sock::recv(&conn) else {
            return;
        };
        if first == "CHECKPOINT" {
            let reply = match self.checkpoint() {
                Ok(d) => format!(
                    "OK {} {} {} {} {} {} {} {}",
                    d.path.display(),
                    d.bytes,
                    d.pause_us,
                    d.total_us,
                    d.processes,
                    d.in_place,
                    d.base,
                    d.in_place_advice
                ),
                Err(e) => format!("ERR {e}"),
            };
            let _ = sock::send(&conn, reply.as_bytes());
            return;
        }
        // A process leader (STOPPED / FAIL): hand it to the running checkpoint.
        // Without one, dropping the connection makes the leader resume.
        let tx = self.incoming.lock().ok().and_then(|g| g.clone());
        if let Some(tx) = tx {
            let _ = tx.send((conn, first));
        }
    }

    /// Take a checkpoint of the whole job. Blocks until the generation is durable.
    pub fn checkpoint(&self) -> Result<Done, String> {
        self.checkpoint_with(None).map_err(|r| r.why)
    }

    /// A checkpoint that is this task's part of a job checkpoint
    /// (docs/batch-jobs.md), with `cut`: once every process is stopped,
    /// `cut` is called (it says so to the batch step and waits until every
    /// task of the job is stopped too) before anything is captured; then a
    /// connection whose peer is not in the task is kept for the batch step
    /// to match with another task's ([`GenerationRecord::across`]), and the
    /// job stays stopped after its image (`SIGSTOP`, applied while it is
    /// still stopped for the checkpoint, so that it does not run an
    /// instruction after its image) until [`Self::hold`]`(false)`. A failed
    /// checkpoint never leaves it held; one that a moment would mend is not
    /// tried again here (the whole job's is, by the batch step).
    pub fn checkpoint_with(
        &self,
        cut: Option<&dyn Fn() -> Result<(), String>>,
    ) -> Result<Done, Refused> {
        let hold = cut.is_some();
        if hold {
            // A new job checkpoint: what an earlier one held goes on first,
            // and the thread waiting to release it no longer will.
            self.hold_epoch.fetch_add(1, Ordering::AcqRel);
            self.hold(false);
        }
        // A refusal that passes by itself (bytes a TCP sender has not sent
        // yet, a connection not accepted yet: docs/sockets.md) is retried
        // after letting the job run a moment.
        let t0 = Instant::now();
        let mut tries = 1u32;
        let mut last_passing;
        let r = loop {
            let mut passing = false;
            let r = self.checkpoint_inner(cut, &mut passing);
            last_passing = passing;
            if r.is_ok() || !passing || hold || t0.elapsed() >= PASSING_RETRY {
                break match r {
                    Err(e) if passing => Err(format!(
                        "{e} (still so after {tries} tries over {} ms)",
                        t0.elapsed().as_millis()
                    )),
                    r => r,
                };
            }
            // A held job (a task in a job checkpoint) must run for the
            // condition to pass.
            if hold {
                self.hold(false);
            }
            std::thread::sleep(Duration::from_millis(25 << tries.min(4)));
            tries += 1;
            // Bytes a TCP sender of the job had not delivered (its receiver
            // lags): the next try stops those senders first and lets the
            // others run until the receivers have read what is queued for
            // them (watched with sock_diag), at most 1 s, then 2 s
            // (stop_all, wait_drained).
            if let Ok(mut d) = self.drain.lock() {
                d.limit = Duration::from_millis(250 << tries.min(3));
            }
        };
        if hold && r.is_err() {
            self.hold(false);
        }
        r.map_err(|why| Refused {
            why,
            passes: hold && last_passing,
        })
    }

    fn checkpoint_inner(
        &self,
        cut: Option<&dyn Fn() -> Result<(), String>>,
        passing: &mut bool,
    ) -> Result<Done, String> {
        let hold = cut.is_some();
        let _g = self
            .ckpt_lock
            .lock()
            .map_err(|_| "internal lock poisoned".to_string())?;
        let t0 = Instant::now();
        let init = self.init_pid.load(Ordering::Acquire);
        if init <= 0 {
            return Err("the job has not started yet".into());
        }
        let (tx, rx) = channel();
        if let Ok(mut g) = self.incoming.lock() {
            *g = Some(tx);
        }
        let (base, base_chain) = self.base_for_next();
        let track = u8::from(self.tracking.load(Ordering::Acquire));
        let pending = self.dir.begin().map_err(|e| e.to_string())?;
        let hosts: Vec<i32> = self
            .job_members(init)
            .iter()
            .filter(|m| !m.zombie)
            .map(|m| m.host_pid)
            .collect();
        fault::set_victims(&hosts);
        fault::hit(Point::Begun);
        // While the job still runs: write back what it wrote to the files a
        // checkpoint keeps, so that the copy made while it is stopped (a
        // reflink flushes first) finds little left to write.
        if let Ok(policy) = self.files.lock().map(|p| p.clone()) {
            saved_files::preflush(&hosts, &policy);
        }
        let mut run = Run {
            leaders: BTreeMap::new(),
            failure: None,
            hosts: BTreeMap::new(),
            relaunch: BTreeMap::new(),
            first_stop: None,
        };
        let result = self.stop_all(init, &rx, &mut run);
        if let Ok(mut g) = self.incoming.lock() {
            *g = None;
        }
        // A task's part of a job checkpoint: nothing is captured until every
        // task of the job is stopped (no message between tasks is then in
        // neither image, or in both).
        let result = result.and_then(|z| match cut {
            Some(cut) => cut().map(|()| z),
            None => Ok(z),
        });
        let zombies = match result {
            Ok(z) => z,
            Err(e) => {
                run.abort();
                pending.abort();
                return Err(format!(
                    "checkpoint failed, the job keeps running and the previous checkpoint is kept: {e}"
                ));
            }
        };
        // Everybody is stopped: write.
        fault::set_victims(&run.hosts.values().copied().collect::<Vec<_>>());
        fault::hit(Point::Stopped);
        let target = pending.path.display().to_string();
        let mut bytes = 0u64;
        let mut pause = 0u64;
        let mut failure = None;
        let mut in_place = 0usize;
        let mut in_place_advice = 0usize;
        let mut in_place_pids = BTreeSet::new();
        // Snapshot children write private memory once released, except when
        // the job is to be held (its processes could not tell them).
        let flags = if track != 0 {
            ckpt::coord::WRITE_TRACK
        } else {
            0
        } | if hold { 0 } else { ckpt::coord::WRITE_DEFER }
            | if self.compress.load(Ordering::Acquire) {
                ckpt::coord::WRITE_COMPRESS
            } else {
                0
            };
        for (pid, conn) in &run.leaders {
            // The directory goes along as a descriptor: the process writes
            // relative to it, whatever happens to its name meanwhile.
            let msg = format!("WRITE {} {base} {flags} {target}", pending.number);
            if sock::send_with_fd(conn, msg.as_bytes(), pending.fd()).is_err() {
                failure.get_or_insert(format!("process {pid} went away during the checkpoint"));
            }
        }
        // While the processes write their state: what the coordinator reads
        // of the stopped job from /proc (step launchers, shared descriptions,
        // POSIX timers, the files the job writes), in parallel, so that it
        // adds nothing to the pause when it takes less time than theirs.
        // A snapshot child writes on its parent's connection and may be done
        // (SYNCED) before the parent says DONE: keep that for the next stage.
        let mut early: BTreeMap<i32, String> = BTreeMap::new();
        let side = std::thread::scope(|sc| {
            let side = sc.spawn(|| self.while_stopped(&run, &pending));
            fault::hit(Point::WriteSent);
            for (pid, conn) in &run.leaders {
                let mut msg = sock::recv(conn);
                if let Ok(Some(r)) = &msg
                    && r.starts_with("SYNCED")
                {
                    early.insert(*pid, r.clone());
                    msg = sock::recv(conn);
                }
                match msg {
                    Ok(Some(r)) if r.starts_with("DONE ") => {
                        let f: Vec<&str> = r.split(' ').collect();
                        bytes += f.get(2).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
                        pause = pause.max(f.get(3).and_then(|x| x.parse().ok()).unwrap_or(0));
                        for tok in f.iter().skip(4) {
                            if let Some(snap) = tok
                                .strip_prefix("snap=")
                                .and_then(|x| x.parse::<i32>().ok())
                                && let Ok(mut set) = self.snapshots.lock()
                            {
                                set.insert(snap);
                            }
                            if *tok == "inplace" || *tok == "inplace=advice" {
                                in_place += 1;
                                in_place_pids.insert(*pid);
                            }
                            if *tok == "inplace=advice" {
                                in_place_advice += 1;
                            }
                        }
                    }
                    Ok(Some(r)) => {
                        let why = r.splitn(3, ' ').nth(2).unwrap_or(&r).to_string();
                        failure.get_or_insert(format!("process {pid}: {why}"));
                    }
                    _ => {
                        failure.get_or_insert(format!("process {pid} died during the checkpoint"));
                    }
                }
            }
            side.join()
        });
        let side =
            side.unwrap_or_else(|_| Err("internal error: a coordinator thread panicked".into()));
        fault::hit(Point::Written);
        let (relaunched, shared_fds, mut files) = match side {
            Ok(s) => s,
            Err(e) => {
                failure.get_or_insert(e);
                Default::default()
            }
        };
        // Held: every process of the job (not the snapshot children, which
        // are writing) gets SIGSTOP before it is released, so it goes on
        // only when the hold ends.
        let hold = hold && failure.is_none();
        if hold {
            self.hold(true);
        }
        // Release the job, then wait for the images to be on disk.
        // The pause: from the first stop signal to the release.
        let t_release = run.first_stop.map_or_else(|| t0.elapsed(), |s| s.elapsed());
        for conn in run.leaders.values() {
            let _ = sock::send(conn, b"RELEASE");
        }
        fault::hit(Point::Released);
        for (pid, conn) in &run.leaders {
            if hold && in_place_pids.contains(pid) {
                // Written in place by a process that is now held: it cannot
                // sync its image; done here.
                for name in [format!("proc-{pid}.img"), format!("proc-{pid}.json")] {
                    let r =
                        std::fs::File::open(pending.path.join(&name)).and_then(|f| f.sync_all());
                    if let Err(e) = r {
                        failure.get_or_insert(format!("process {pid}: syncing {name}: {e}"));
                    }
                }
                continue;
            }
            let msg = match early.remove(pid) {
                Some(r) => Ok(Some(r)),
                None => sock::recv(conn),
            };
            match msg {
                Ok(Some(r)) if r.starts_with("SYNCED") => {
                    let f: Vec<&str> = r.split(' ').collect();
                    bytes += f.get(2).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
                    // Written in place: the leader's thread stood still until
                    // its image was synced; it reports that pause here.
                    pause = pause.max(f.get(3).and_then(|x| x.parse().ok()).unwrap_or(0));
                }
                Ok(Some(r)) => {
                    failure.get_or_insert(format!(
                        "process {pid}: {}",
                        r.splitn(3, ' ').nth(2).unwrap_or(&r)
                    ));
                }
                _ => {
                    failure.get_or_insert(format!("process {pid} died while syncing its image"));
                }
            }
        }
        fault::hit(Point::Synced);
        if failure.is_none() {
            match saved_files::finish(&pending, &mut files) {
                Ok(b) => bytes += b,
                Err(e) => failure = Some(format!("keeping the files the job writes: {e}")),
            }
        }
        let pids: Vec<i32> = run.leaders.keys().copied().collect();
        run.leaders.clear();
        if failure.is_none() && pids.is_empty() {
            failure = Some("the job has no process to checkpoint".into());
        }
        let mut refs = Vec::new();
        let mut incremental = false;
        let mut manifests = Vec::new();
        if failure.is_none() {
            for pid in &pids {
                match check_written(&pending, *pid, &run.hosts) {
                    Ok((_, Some(b), _)) if b != base => {
                        failure = Some(format!(
                            "process {pid} wrote an image that refers to generation {b}, not {base}"
                        ));
                        break;
                    }
                    Ok((r, b, m)) => {
                        incremental |= b.is_some();
                        refs.push(r);
                        manifests.push(m);
                    }
                    Err((e, p)) => {
                        *passing = p;
                        failure = Some(format!("process {pid}: {e}"));
                        break;
                    }
                }
            }
        }
        let mut across = Vec::new();
        if failure.is_none() {
            match check_sockets(&manifests, &run.hosts, self.reset_outside, hold) {
                Ok(a) => across = a,
                Err((e, p)) => {
                    *passing = p;
                    failure = Some(e);
                    if p && let Ok(mut d) = self.drain.lock() {
                        let limit = d.limit;
                        *d = unsent_senders(&manifests, &run.hosts);
                        d.limit = limit;
                    }
                }
            }
        }
        if failure.is_none()
            && let Err((e, p)) = check_ptys(&manifests)
        {
            *passing = p;
            failure = Some(e);
        }
        if let Some(f) = failure {
            pending.abort();
            return Err(format!(
                "checkpoint failed, the job keeps running and the previous checkpoint is kept: {f}"
            ));
        }
        fault::hit(Point::Checked);
        let record = GenerationRecord {
            format: GENERATION_FORMAT.into(),
            version: [format::FORMAT_MAJOR, format::FORMAT_MINOR],
            number: pending.number,
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            // SAFETY: getuid has no preconditions.
            uid: unsafe { libc::getuid() },
            command: self.command.clone(),
            processes: refs,
            pause_us: pause.max(t_release.as_micros() as u64),
            bytes,
            tool_version: env!("CARGO_PKG_VERSION").into(),
            zombies,
            shared_fds,
            base: incremental.then_some(base),
            chain: if incremental { base_chain + 1 } else { 0 },
            files,
            relaunch: relaunched,
            reset_outside: self.reset_outside,
            across,
            inherited: if hold {
                stepd_listeners(&manifests, &run.hosts)
            } else {
                Vec::new()
            },
        };
        let n = record.processes.len();
        let path = pending
            .commit(&record, self.keep)
            .map_err(|e| format!("checkpoint could not be made durable: {e}"))?;
        fault::hit(Point::Committed);
        Ok(Done {
            path,
            bytes,
            pause_us: record.pause_us,
            total_us: t0.elapsed().as_micros() as u64,
            processes: n,
            in_place,
            in_place_advice,
            base: if incremental { base } else { 0 },
        })
    }

    /// What the coordinator reads of the stopped job itself, while its
    /// processes write their state: the step launchers started again at
    /// restart (what they need), the groups of
    /// descriptors sharing one open file description, and the files the
    /// job writes, kept as they are now; fails for a POSIX timer a restart
    /// could not create again. Reads /proc only by pid: the processes'
    /// own short-lived descriptors (their image, pagemap, a sock_diag
    /// socket) share nothing and are in the checkpoint directory or not
    /// files the job writes.
    fn while_stopped(
        &self,
        run: &Run,
        pending: &ckpt::image::generation::PendingGeneration,
    ) -> Result<WhileStopped, String> {
        let mut with_relaunched = run.hosts.clone();
        let mut relaunched: Vec<Relaunch> = Vec::new();
        let steps = self
            .relaunch
            .lock()
            .ok()
            .and_then(|r| r.clone())
            .unwrap_or_default();
        for (&pid, (host, ppid, exe)) in &run.relaunch {
            relaunched.push(relaunch::capture(
                *host,
                pid,
                *ppid,
                exe,
                steps.get(&pid).cloned(),
            )?);
            with_relaunched.insert(pid, *host);
        }
        let fds: BTreeMap<i32, crate::proc_fds::ProcFds> = with_relaunched
            .values()
            .filter_map(|&h| crate::proc_fds::ProcFds::read(h).ok().map(|f| (h, f)))
            .collect();
        let shared_fds = shared_descriptions(&with_relaunched, &fds);
        check_posix_timers(&run.hosts)?;
        let policy = self.files.lock().map(|p| p.clone()).unwrap_or_default();
        let prev = self.previous_files();
        let files = saved_files::capture(&with_relaunched, &fds, pending, prev.as_ref(), &policy)?;
        Ok((relaunched, shared_fds, files))
    }

    /// Signal every process of the job and wait until all are stopped.
    /// Returns the zombies seen.
    fn stop_all(
        &self,
        init: i32,
        rx: &Receiver<(OwnedFd, String)>,
        run: &mut Run,
    ) -> Result<Vec<Zombie>, String> {
        let start = Instant::now();
        let mut signaled: BTreeMap<i32, (i32, Instant, String)> = BTreeMap::new(); // ns pid -> (host pid, when, exe)
        let mut not_ready: BTreeMap<i32, Instant> = BTreeMap::new();
        // Senders ahead of their receivers (the last try was refused for
        // their undelivered bytes) stop first; the others run on a moment
        // and read what is queued for them (docs/sockets.md).
        let drain = self
            .drain
            .lock()
            .map(|mut d| std::mem::take(&mut *d))
            .unwrap_or_default();
        if !drain.pids.is_empty() && !drain.limit.is_zero() {
            for m in self
                .job_members(init)
                .iter()
                .filter(|m| !m.zombie && drain.pids.contains(&m.host_pid))
            {
                if m.catches && catches_stop_signal(m.host_pid)
                    // SAFETY: kill has no memory-safety contract.
                    && unsafe { libc::kill(m.host_pid, STOP_SIGNAL) } == 0
                {
                    let now = Instant::now();
                    run.first_stop.get_or_insert(now);
                    signaled.insert(m.pid, (m.host_pid, now, m.exe.clone()));
                    run.hosts.insert(m.pid, m.host_pid);
                }
            }
            wait_drained(&drain);
        }
        loop {
            let members = self.job_members(init);
            let live: BTreeSet<i32> = members
                .iter()
                .filter(|m| !m.zombie)
                .map(|m| m.pid)
                .collect();
            // Processes that exited after being signalled are no longer expected.
            signaled.retain(|pid, _| live.contains(pid) || run.leaders.contains_key(pid));
            let mut waiting_for_new = false;
            let relaunching = self.relaunch.lock().is_ok_and(|r| r.is_some());
            for m in members.iter().filter(|m| !m.zombie) {
                if signaled.contains_key(&m.pid) || run.leaders.contains_key(&m.pid) {
                    continue;
                }
                if relaunching && relaunch::is_relaunched(&m.exe) {
                    // srun's own child srun (its shepherd) is not started
                    // again: the new srun makes its own.
                    let parent_is_srun = members
                        .iter()
                        .any(|p| p.pid == m.ppid && relaunch::is_relaunched(&p.exe));
                    if !parent_is_srun {
                        run.relaunch
                            .insert(m.pid, (m.host_pid, m.ppid, m.exe.clone()));
                    }
                    continue;
                }
                if relaunching && run.relaunch.contains_key(&m.ppid) {
                    return Err(format!(
                        "process {} ({}) is a child of the step launcher {} ({}), which is started again at restart rather than restored",
                        m.pid,
                        m.exe,
                        m.ppid,
                        run.relaunch
                            .get(&m.ppid)
                            .map(|r| r.2.as_str())
                            .unwrap_or("srun")
                    ));
                }
                // Looked at again right before the kill: the tree walk took a
                // while, and a process that execs meanwhile has the default
                // action (terminate) for the stop signal until its new
                // libckpt constructor runs.
                if !m.catches || !catches_stop_signal(m.host_pid) {
                    // Possibly between fork and exec, or loading: give it a moment.
                    let first = *not_ready.entry(m.pid).or_insert_with(Instant::now);
                    if first.elapsed() > Duration::from_secs(3) {
                        return Err(format!(
                            "process {} ({}) is not under checkpoint control: it was started without libckpt (a statically linked program, or LD_PRELOAD was removed)",
                            m.pid, m.exe
                        ));
                    }
                    waiting_for_new = true;
                    continue;
                }
                // SAFETY: kill has no memory-safety contract.
                if unsafe { libc::kill(m.host_pid, STOP_SIGNAL) } == 0 {
                    let now = Instant::now();
                    run.first_stop.get_or_insert(now);
                    signaled.insert(m.pid, (m.host_pid, now, m.exe.clone()));
                    run.hosts.insert(m.pid, m.host_pid);
                }
            }
            run.relaunch.retain(|pid, _| live.contains(pid));
            let all_in = signaled.keys().all(|p| run.leaders.contains_key(p));
            if all_in && !waiting_for_new && !signaled.is_empty() {
                // Stable? Re-walk once more to catch processes created meanwhile.
                let again = self.job_members(init);
                let fresh = again.iter().any(|m| {
                    let relaunched = relaunching && relaunch::is_relaunched(&m.exe);
                    !m.zombie
                        && !signaled.contains_key(&m.pid)
                        && !run.leaders.contains_key(&m.pid)
                        && !relaunched
                });
                if !fresh {
                    return Ok(again
                        .iter()
                        .filter(|m| m.zombie)
                        .map(|m| Zombie {
                            pid: m.pid,
                            ppid: m.ppid,
                            status: m.exit_status,
                        })
                        .collect());
                }
                continue;
            }
            if members.is_empty() {
                return Err("the job has no process to checkpoint".into());
            }
            if start.elapsed() > STOP_DEADLINE {
                let stuck: Vec<String> = signaled
                    .iter()
                    .filter(|(p, _)| !run.leaders.contains_key(p))
                    .map(|(p, (_, _, exe))| format!("{p} ({exe})"))
                    .collect();
                return Err(format!(
                    "process(es) {} did not stop within {} s (the checkpoint signal is blocked, or the process is stuck in the kernel)",
                    stuck.join(", "),
                    STOP_DEADLINE.as_secs()
                ));
            }
            // Take the reports of the processes signalled so far as they
            // come, without walking the process tree again for each (a
            // walk reads several /proc files per process, on CPUs the
            // stopping processes need): the tree is walked again once they
            // have all reported (for processes started meanwhile), or after
            // 20 ms without a report (for processes that exited, or that
            // could not be signalled yet).
            let walk_at = Instant::now() + Duration::from_millis(20);
            while let Ok((conn, msg)) =
                rx.recv_timeout(walk_at.saturating_duration_since(Instant::now()))
            {
                let mut f = msg.splitn(3, ' ');
                let kind = f.next().unwrap_or("");
                let pid: i32 = f.next().and_then(|p| p.parse().ok()).unwrap_or(0);
                if kind == "STOPPED" {
                    run.leaders.insert(pid, conn);
                } else {
                    let why = f.next().unwrap_or("unknown failure").to_string();
                    drop(conn);
                    run.failure = Some(why.clone());
                    return Err(format!("process {pid}: {why}"));
                }
                if !waiting_for_new && signaled.keys().all(|p| run.leaders.contains_key(p)) {
                    break;
                }
            }
        }
    }
}

/// Whether the process has a handler for the stop signal now.
fn catches_stop_signal(host_pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{host_pid}/status"))
        .ok()
        .and_then(|t| tree::parse_status(&t))
        .is_some_and(|(_, _, zombie, catches)| catches && !zombie)
}

/// What [`Coordinator::while_stopped`] found.
type WhileStopped = (
    Vec<Relaunch>,
    Vec<Vec<[i32; 2]>>,
    Vec<ckpt::image::manifest::SavedFile>,
);

struct Run {
    leaders: BTreeMap<i32, OwnedFd>,
    failure: Option<String>,
    /// ns pid -> host pid.
    hosts: BTreeMap<i32, i32>,
    /// Processes started again at restart: ns pid -> (host pid, parent, exe).
    relaunch: BTreeMap<i32, (i32, i32, String)>,
    /// When the first process was told to stop: the job's pause starts
    /// there, not with what the coordinator prepares while it runs.
    first_stop: Option<Instant>,
}

/// Refuses a job with a POSIX timer a restart could not create again (see
/// `ckpt::objects::posix_timer`). Read while the job is stopped.
fn check_posix_timers(hosts: &BTreeMap<i32, i32>) -> Result<(), String> {
    use ckpt::objects::posix_timer;
    for (&pid, &host) in hosts {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{host}/timers")) else {
            continue;
        };
        let timers = posix_timer::parse(&text);
        let exe = || {
            std::fs::read_link(format!("/proc/{host}/exe"))
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| "?".into())
        };
        if let Some(why) = posix_timer::refusal(pid, &exe(), &timers) {
            return Err(why);
        }
    }
    Ok(())
}

/// Group file descriptors (across and within processes) that refer to one
/// open file description, using kcmp(KCMP_FILE). Only groups of two or more.
fn shared_descriptions(
    hosts: &BTreeMap<i32, i32>,
    fds: &BTreeMap<i32, crate::proc_fds::ProcFds>,
) -> Vec<Vec<[i32; 2]>> {
    // (dev, inode) -> [(pid, fd, host pid)], read from /proc while the job is
    // stopped (a snapshot child may still be writing the manifests).
    type Holders = Vec<(i32, i32, i32)>;
    let mut cands: BTreeMap<(u64, u64), Holders> = BTreeMap::new();
    for (&pid, &host) in hosts {
        let Some(list) = fds.get(&host) else {
            continue;
        };
        // Sockets are matched by their own kind (docs/sockets.md): no
        // second look at them.
        for l in list.links.iter().filter(|l| !l.is_socket()) {
            let Ok(st) = list.stat(l.fd) else {
                continue;
            };
            if st.st_mode & libc::S_IFMT == libc::S_IFSOCK {
                continue;
            }
            cands
                .entry((st.st_dev, st.st_ino))
                .or_default()
                .push((pid, l.fd, host));
        }
    }
    let mut groups = Vec::new();
    for list in cands.values() {
        let mut done = vec![false; list.len()];
        for i in 0..list.len() {
            if done[i] {
                continue;
            }
            let mut g = vec![[list[i].0, list[i].1]];
            for j in i + 1..list.len() {
                if done[j] {
                    continue;
                }
                // SAFETY: kcmp only compares kernel objects of two processes we may ptrace.
                let r = unsafe {
                    libc::syscall(
                        libc::SYS_kcmp,
                        list[i].2,
                        list[j].2,
                        0, /* KCMP_FILE */
                        list[i].1,
                        list[j].1,
                    )
                };
                if r == 0 {
                    done[j] = true;
                    g.push([list[j].0, list[j].1]);
                }
            }
            if g.len() > 1 {
                groups.push(g);
            }
        }
    }
    groups
}

impl Run {
    /// Let every stopped process go without writing.
    fn abort(&mut self) {
        for conn in self.leaders.values() {
            let _ = sock::send(conn, b"ABORT");
        }
        self.leaders.clear();
    }
}

/// Check what a process wrote and refuse features restore cannot handle
/// yet. Returns its entry and the generation it refers to (incremental).
/// `hosts` (the job's pids to host pids) is where a refused socket is
/// looked up.
/// The error's flag says the refusal passes by itself (inotify events not
/// read yet): the checkpoint is tried again.
fn check_written(
    gdir: &ckpt::image::generation::PendingGeneration,
    pid: i32,
    hosts: &BTreeMap<i32, i32>,
) -> Result<(ProcessRef, Option<u64>, ProcessManifest), (String, bool)> {
    let mname = format!("proc-{pid}.json");
    let iname = format!("proc-{pid}.img");
    let data = std::fs::read(gdir.at(&mname)).map_err(|e| (format!("{mname}: {e}"), false))?;
    let m: ProcessManifest = serde_json::from_slice(&data)
        .map_err(|e| (format!("{mname} is not a valid manifest: {e}"), false))?;
    for f in &m.fds {
        check_fd(&m, f).map_err(|e| match f.kind {
            FdKind::Socket => (describe_socket(&m, f, pid, hosts).unwrap_or(e), false),
            _ => (e, f.object.as_ref().is_some_and(|o| o.passes())),
        })?;
    }
    check_regions(&m).map_err(|e| (e, false))?;
    let threads: Vec<(i32, u64)> = m.threads.iter().map(|t| (t.tid, t.pending)).collect();
    if let Some(why) =
        ckpt::objects::posix_timer::pending_conflict(&m.posix_timers, m.shared_pending, &threads)
    {
        return Err((format!("{}: {why}", m.exe), true));
    }
    let size = std::fs::symlink_metadata(gdir.at(&iname))
        .map_err(|e| (format!("{iname}: {e}"), false))?
        .len();
    Ok((
        ProcessRef {
            pid,
            manifest: mname,
            manifest_crc: crc32c(&data),
            image: iname,
            image_size: size,
        },
        m.base,
        m,
    ))
}

/// The job's unix sockets, all processes together: would a restart make
/// every one of them again, connected as it was? (Each end's state was
/// captured by its holder while the whole job was stopped.) A socket whose
/// peer is outside the job is refused with what [`describe_socket`] says
/// about it.
fn check_sockets(
    manifests: &[ProcessManifest],
    hosts: &BTreeMap<i32, i32>,
    reset_outside: bool,
    across: bool,
) -> Result<Vec<AcrossEnd>, (String, bool)> {
    use ckpt::objects::unix_socket::{SavedEnd, plan};
    let mut low: BTreeMap<u64, bool> = BTreeMap::new();
    for m in manifests {
        for f in m
            .fds
            .iter()
            .filter(|f| f.socket.is_some() || f.inet.is_some())
        {
            *low.entry(f.inode).or_insert(true) &= f.fd <= 2;
        }
    }
    let across = check_inet(manifests, hosts, &low, reset_outside, across)?;
    let mut ends = Vec::new();
    for m in manifests {
        for f in &m.fds {
            if let Some(sock) = &f.socket {
                ends.push(SavedEnd {
                    inode: f.inode,
                    sock,
                    data: Vec::new(),
                    cwd: Vec::new(),
                    stdio_only: low.get(&f.inode).copied().unwrap_or(false),
                    reset_outside,
                    who: format!("fd {} of {} (process {})", f.fd, m.exe, m.pid),
                    pid: m.pid,
                });
            }
        }
    }
    let steps = plan(&ends).map_err(|r| {
        (
            refusal(manifests, hosts, r.inode, r.outside, &r.message),
            r.passing,
        )
    })?;
    // Descriptors in flight (SCM_RIGHTS): each must be one a restart can
    // make again; the others pass once the program receives them.
    for m in manifests {
        for f in &m.fds {
            let Some(sock) = &f.socket else { continue };
            for x in sock.queue.iter().flat_map(|q| &q.fds) {
                if let Err(why) = ckpt::objects::unix_socket::rights::check(x, m.pid, manifests) {
                    return Err((
                        format!(
                            "process {}: fd {} of {} (process {}) is a unix socket that ckpt cannot checkpoint \
                             now: a descriptor sent with SCM_RIGHTS is queued in it, not yet received, that a \
                             restart could not make again: {why} (it tries again while the program runs: a program \
                             that receives it soon is checkpointed then)",
                            m.pid, f.fd, m.exe, m.pid
                        ),
                        true,
                    ));
                }
            }
        }
    }
    note_reset(
        manifests,
        hosts,
        steps.iter().filter_map(|s| match s {
            ckpt::objects::unix_socket::Step::Reset(i) => Some(*i),
            _ => None,
        }),
    );
    Ok(across)
}

/// Says which connections to processes outside the job a restart will give
/// back closed (`CKPT_EXTERNAL_SOCKETS=closed`), in the words of a refusal.
fn note_reset(
    manifests: &[ProcessManifest],
    hosts: &BTreeMap<i32, i32>,
    inodes: impl Iterator<Item = u64>,
) {
    for ino in inodes {
        let what = refusal(manifests, hosts, ino, true, "a socket");
        let what = what
            .split(", which ckpt cannot checkpoint yet")
            .next()
            .unwrap_or(&what)
            .to_owned();
        eprintln!(
            "ckpt: note: {what}; a restart gives it back closed by its peer ({ENV_EXTERNAL_SOCKETS}=closed)"
        );
    }
}

/// The job's TCP and UDP sockets, all processes together, like
/// [`check_sockets`]; the flag says the refusal passes by itself.
fn check_inet(
    manifests: &[ProcessManifest],
    hosts: &BTreeMap<i32, i32>,
    low: &BTreeMap<u64, bool>,
    reset_outside: bool,
    across: bool,
) -> Result<Vec<AcrossEnd>, (String, bool)> {
    use ckpt::objects::inet_socket::{SavedEnd, Step, plan};
    let mut ends = Vec::new();
    for m in manifests {
        for f in &m.fds {
            if let Some(sock) = &f.inet {
                ends.push(SavedEnd {
                    inode: f.inode,
                    sock,
                    data: Vec::new(),
                    stdio_only: low.get(&f.inode).copied().unwrap_or(false),
                    reset_outside,
                    across,
                    stand_in: false,
                    inherited: false,
                    who: format!("fd {} of {} (process {})", f.fd, m.exe, m.pid),
                });
            }
        }
    }
    let steps = plan(&ends).map_err(|r| {
        (
            refusal(manifests, hosts, r.inode, r.outside, &r.message),
            r.passing,
        )
    })?;
    note_reset(
        manifests,
        hosts,
        steps.iter().filter_map(|s| match s {
            Step::Reset(i) => Some(*i),
            _ => None,
        }),
    );
    // Connections to other tasks of the job: what the batch step matches,
    // but a rank's connection to its PMIx server (docs/mpi.md).
    let mut out = Vec::new();
    for e in steps.iter().filter_map(|s| match s {
        Step::Across(i) => ends.iter().find(|e| e.inode == *i),
        _ => None,
    }) {
        let peer = e.sock.peer.clone().unwrap_or_default();
        let holds = |m: &&ProcessManifest| m.fds.iter().any(|f| f.inode == e.inode);
        let holder = manifests.iter().find(holds).and_then(|m| hosts.get(&m.pid));
        let pmix = holder.is_some_and(|&h| pmix_server_of(h, &peer));
        // A fence request its server (outside the job) has taken: no
        // server would answer it after a restart (docs/mpi.md). Any
        // process holding the connection may be the one waiting.
        if pmix && let Some(m) = manifests.iter().filter(holds).find(|m| m.pmix_fences > 0) {
            return Err((
                format!(
                    "{} (process {}) is waiting in a PMIx fence (Open MPI's MPI_Init and \
                     MPI_Finalize wait there until every rank has joined): its PMIx server \
                     (slurmstepd, or ckpt's stand-in) has the request, and no server would \
                     answer it after a restart; this passes once every rank has joined the fence",
                    m.exe, m.pid
                ),
                true,
            ));
        }
        if pmix && e.sock.data.is_some_and(|[_, len]| len > 0) {
            return Err((
                format!(
                    "{} is {}, the connection to its PMIx server, with bytes the server sent not read yet \
                     (it tries again: the PMIx library reads them at once)",
                    e.who,
                    e.sock.describe()
                ),
                true,
            ));
        }
        out.push(AcrossEnd {
            inode: e.inode,
            local: e.sock.local.clone(),
            peer,
            who: format!("{} is {} (socket:[{}])", e.who, e.sock.describe(), e.inode),
            pmix,
            acked: e.sock.acked,
            received: e.sock.received,
        });
    }
    Ok(out)
}

/// The listening sockets of the job that it inherited from slurmstepd:
/// sockets root made (their inode's owner; a job cannot make one), left
/// open across the exec of the task (Slurm 22.05 with `--mpi=pmix` leaves
/// one in every task). Every task of the node holds it and no program
/// uses it; a restart makes it listen on another port (docs/mpi.md).
fn stepd_listeners(manifests: &[ProcessManifest], hosts: &BTreeMap<i32, i32>) -> Vec<u64> {
    use ckpt::objects::inet_socket::tcp_state;
    use std::os::unix::fs::MetadataExt;
    // SAFETY: getuid has no preconditions.
    let me = unsafe { libc::getuid() };
    let mut out = Vec::new();
    for m in manifests {
        let Some(host) = hosts.get(&m.pid) else {
            continue;
        };
        for f in &m.fds {
            if let Some(s) = &f.inet
                && s.is_tcp()
                && s.tcp_state == tcp_state::LISTEN
                && !out.contains(&f.inode)
                && std::fs::metadata(format!("/proc/{host}/fd/{}", f.fd))
                    .is_ok_and(|md| md.uid() == 0 && me != 0 && md.ino() == f.inode)
            {
                out.push(f.inode);
            }
        }
    }
    out
}

/// Is `peer` the PMIx server of the process `host`: the address of its
/// environment's `PMIX_SERVER_URI*` (`...;tcp4://127.0.0.1:PORT`, what
/// Slurm's PMIx plugin gives a rank), or, after a restart, ckpt's stand-in
/// for that server (docs/mpi.md)?
fn pmix_server_of(host: i32, peer: &ckpt::objects::inet_socket::Addr) -> bool {
    let same = |a: std::net::SocketAddr| {
        let ip = match a.ip() {
            std::net::IpAddr::V4(v) => v.octets().to_vec(),
            std::net::IpAddr::V6(v) => v.octets().to_vec(),
        };
        peer.same(&ckpt::objects::inet_socket::Addr { ip, port: a.port() })
    };
    if ckpt::objects::inet_socket::across::stand_in_from_env().is_some_and(|(a, _)| same(a)) {
        return true;
    }
    let Ok(env) = std::fs::read(format!("/proc/{host}/environ")) else {
        return false;
    };
    env.split(|&c| c == 0)
        .filter(|v| v.starts_with(b"PMIX_SERVER_URI"))
        .filter_map(|v| std::str::from_utf8(v).ok())
        .filter_map(|v| v.split_once(';').map(|(_, uri)| uri))
        .filter_map(|uri| {
            uri.strip_prefix("tcp4://")
                .or_else(|| uri.strip_prefix("tcp6://"))
                .or_else(|| uri.strip_prefix("tcp://"))
        })
        .filter_map(|a| a.parse::<std::net::SocketAddr>().ok())
        .any(same)
}

/// The processes (host pids) sending on a TCP connection of the job ahead
/// of its receiver: holding an end with bytes written and not yet
/// acknowledged, or the peer of an end with more queued than a restart puts
/// back.
fn unsent_senders(manifests: &[ProcessManifest], hosts: &BTreeMap<i32, i32>) -> Drain {
    use ckpt::objects::inet_socket::{MAX_RESTORE_QUEUE, Peer};
    let ends = || {
        manifests.iter().flat_map(|m| {
            m.fds
                .iter()
                .filter_map(move |f| Some((m, f.inode, f.inet.as_ref()?)))
                .filter(|(_, _, s)| s.is_tcp() && s.peer_is == Peer::Socket)
        })
    };
    let flooded: Vec<u64> = ends()
        .filter(|(_, _, s)| s.data.is_some_and(|[_, len]| len > MAX_RESTORE_QUEUE))
        .map(|(_, _, s)| s.peer_inode)
        .collect();
    let mut d = Drain::default();
    for (m, _, s) in ends().filter(|(_, ino, s)| s.unsent > 0 || flooded.contains(ino)) {
        if let Some(&host) = hosts.get(&m.pid) {
            d.pids.push(host);
        }
        if let Some((_, _, peer)) = ends().find(|(_, i, _)| *i == s.peer_inode) {
            d.flows.push((s.clone(), peer.clone()));
        }
    }
    d.pids.sort_unstable();
    d.pids.dedup();
    d
}

/// Let the receivers of stopped senders read until every flow of `d` is
/// settled ([`ckpt::objects::inet_socket::settled`]) or `d.limit` passed.
fn wait_drained(d: &Drain) {
    use ckpt::objects::inet_socket::settled;
    let t0 = Instant::now();
    let nl = match ckpt::objects::unix_socket::open_diag() {
        // SAFETY: open_diag returned a new descriptor that nothing else owns.
        Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd) },
        Err(_) => {
            std::thread::sleep(d.limit);
            return;
        }
    };
    while t0.elapsed() < d.limit {
        let done = d
            .flows
            .iter()
            .all(|(s, r)| settled(nl.as_raw_fd(), s, r).unwrap_or(false));
        if done {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Refuses pseudo-terminals the job made (a process holds the master,
/// `ckpt::objects::pty`) that a restart could not give back as they are:
/// bytes waiting in one (passing: its reader takes them within moments),
/// or one that is a process's controlling terminal. `Err((message,
/// passing))`.
fn check_ptys(manifests: &[ProcessManifest]) -> Result<(), (String, bool)> {
    let ends = || {
        manifests
            .iter()
            .flat_map(|m| m.fds.iter().filter_map(move |f| Some((m, f, f.pty?))))
    };
    let made: BTreeSet<(u64, u32)> = ends()
        .filter(|(_, _, p)| p.master)
        .map(|(_, _, p)| p.pair())
        .collect();
    if let Some((m, f, p)) = ends().find(|(_, _, p)| made.contains(&p.pair()) && p.queued > 0) {
        return Err((
            format!(
                "process {} ({}): fd {} ({}, the {} of /dev/pts/{}, a pseudo-terminal of the job) has {} byte(s) not read yet",
                m.pid,
                m.exe,
                f.fd,
                f.path,
                if p.master { "master" } else { "slave" },
                p.index,
                p.queued
            ),
            true,
        ));
    }
    for m in manifests.iter().filter(|m| m.ctty != 0) {
        // tty_nr: major in bits 8-19, minor in bits 0-7 and 20-31.
        let major = ((m.ctty >> 8) & 0xfff) as u32;
        let minor = ((m.ctty & 0xff) | ((m.ctty >> 12) & 0xfff00)) as u32;
        let Some(index) = ckpt::objects::pty::slave_index(major, minor) else {
            continue;
        };
        if made.iter().any(|&(_, i)| i == index) {
            return Err((
                format!(
                    "process {} ({}) has /dev/pts/{index}, a pseudo-terminal the job made, as its \
                     controlling terminal, which ckpt does not restore yet; start it without one \
                     (setsid, or a pipe instead of a pseudo-terminal)",
                    m.pid, m.exe
                ),
                false,
            ));
        }
    }
    Ok(())
}

/// A socket's refusal, naming the process; for a peer outside the job, in
/// [`describe_socket`]'s words.
fn refusal(
    manifests: &[ProcessManifest],
    hosts: &BTreeMap<i32, i32>,
    inode: u64,
    outside: bool,
    message: &str,
) -> String {
    let holder = manifests.iter().find_map(|m| {
        m.fds
            .iter()
            .find(|f| f.inode == inode && (f.socket.is_some() || f.inet.is_some()))
            .map(|f| (m, f))
    });
    match holder {
        Some((m, f)) if outside => {
            let why = describe_socket(m, f, m.pid, hosts).unwrap_or(message.to_string());
            format!("process {}: {why}", m.pid)
        }
        Some((m, _)) => format!("process {}: {message}", m.pid),
        None => message.to_string(),
    }
}

/// Refuse memory a restart could not map again as it was: an attached
/// System V shared memory segment (`shmat`) would come back with its
/// contents as plain shared memory, its segment gone (a later `shmdt`
/// fails with EINVAL: UCX, MPICH's default transport, then warns at
/// `MPI_Finalize`).
fn check_regions(m: &ProcessManifest) -> Result<(), String> {
    match m.regions.iter().find(|r| r.name.starts_with("/SYSV")) {
        Some(r) => {
            let key = r
                .name
                .strip_prefix("/SYSV")
                .and_then(|k| k.split_whitespace().next())
                .unwrap_or("?");
            Err(format!(
                "{} has System V shared memory attached at {:#x}-{:#x} (key 0x{key}, shmid {}), which ckpt \
                 cannot checkpoint: a restart would give back its contents but not the segment \
                 (shmdt, shmctl and shmat by id would fail); use POSIX shared memory (shm_open) or a \
                 shared mapping of a file; for MPICH and other UCX programs set UCX_TLS=^sysv \
                 (docs/mpi.md)",
                m.exe, r.start, r.end, r.inode
            ))
        }
        None => Ok(()),
    }
}

/// Refuse a descriptor that a restart could not recreate: sockets and
/// kernel objects ckpt does not save (except at 0..2, which a restart
/// takes from its own stdio), and saved objects whose state is missing or
/// not restorable (an epoll registration of a closed descriptor). The
/// message names the descriptor, the program and the precise kind; the
/// caller adds the process.
fn check_fd(m: &ProcessManifest, f: &ckpt::image::manifest::Fd) -> Result<(), String> {
    match f.kind {
        // A unix socket whose state was captured: checked with its peer
        // (check_sockets).
        FdKind::Socket if f.socket.is_some() || f.inet.is_some() => Ok(()),
        FdKind::Socket | FdKind::Other if f.fd > 2 => Err(format!(
            "fd {} of {} is {} ({}), which ckpt cannot checkpoint yet",
            f.fd,
            m.exe,
            ckpt::objects::unsupported(&f.path),
            f.path
        )),
        FdKind::Object => match &f.object {
            None => Err(format!(
                "fd {} of {} is {} ({}), which ckpt cannot checkpoint yet",
                f.fd,
                m.exe,
                ckpt::objects::unsupported(&f.path),
                f.path
            )),
            Some(o) => o.validate().map_err(|why| {
                format!(
                    "fd {} of {} is {} ({}) that ckpt cannot checkpoint: {why}",
                    f.fd,
                    m.exe,
                    o.what(),
                    f.path
                )
            }),
        },
        // A device is opened again by its name at restart: right for the
        // ones without state of their own, wrong for one whose state lives
        // in its driver (an InfiniBand verbs context, a GPU, /dev/fuse).
        FdKind::Device if !REOPENED_DEVICES.contains(&f.path.as_str()) => Err(format!(
            "fd {} of {} is the device {}, whose state lives in its driver (an InfiniBand or \
             GPU context, a hardware queue), which ckpt cannot checkpoint; an MPI program must \
             use the TCP or shared-memory transports (docs/mpi.md)",
            f.fd, m.exe, f.path
        )),
        _ => Ok(()),
    }
}

/// Devices a restart opens again by name, as they hold no state of their own.
const REOPENED_DEVICES: [&str; 5] = [
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
];

/// The refusal of a socket, saying what it is and where it goes (see
/// `sockets`), when the process still holds it. Keeps the words of
/// [`check_fd`]'s ("which ckpt cannot checkpoint yet").
fn describe_socket(
    m: &ProcessManifest,
    f: &ckpt::image::manifest::Fd,
    pid: i32,
    hosts: &BTreeMap<i32, i32>,
) -> Option<String> {
    let host = *hosts.get(&pid)?;
    let inode = sockets::socket_inode(&f.path).unwrap_or(f.inode);
    let what = sockets::describe(hosts, host, f.fd, inode)?;
    Some(format!(
        "fd {} of {} is {what} ({}), which ckpt cannot checkpoint yet: {}",
        f.fd,
        m.exe,
        f.path,
        sockets::ADVICE
    ))
}

/// Ask the coordinator at `socket` for a checkpoint (the `ckpt checkpoint` client).
pub fn request(socket: &Path) -> Result<String, String> {
    let c = sock::connect(socket)
        .map_err(|e| format!("cannot reach a running job at {}: {e}", socket.display()))?;
    sock::send(&c, b"CHECKPOINT").map_err(|e| e.to_string())?;
    match sock::recv(&c) {
        Ok(Some(r)) => Ok(r),
        Ok(None) => Err("the job's coordinator (its `ckpt launch` or `ckpt restart`) ended before answering: the job exited or was killed during the checkpoint; the previous checkpoint is kept".into()),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn external_sockets_policy_values() {
        use super::external_sockets_policy as p;
        assert_eq!(p(None), Ok(false));
        assert_eq!(p(Some("")), Ok(false));
        assert_eq!(p(Some("refuse")), Ok(false));
        assert_eq!(p(Some(" closed ")), Ok(true));
        assert!(p(Some("reset")).is_err_and(|e| e.contains("neither 'refuse' nor 'closed'")));
    }

    use super::*;

    fn manifest(fds: &str) -> ProcessManifest {
        let text = format!(
            r#"{{"format":"ckpt-process","version":[1,2],"pid":7,"ppid":1,"uid":0,
            "exe":"/bin/x","realtime_ns":0,"monotonic_ns":0,"boottime_ns":0,
            "cpu":{{"features":[0,0,0,0],"xcr0":0}},"vdso":{{"vvar":0,"vdso":0,"vdso_len":0,"crc":0}},
            "mm":{{"start_code":0,"end_code":0,"start_data":0,"end_data":0,"start_brk":0,"brk":0,
                  "start_stack":0,"arg_start":0,"arg_end":0,"env_start":0,"env_end":0,"auxv":[]}},
            "hooks":{{"restore_info":0,"finish_args":0,"finish":0}},"regions":[],"threads":[],
            "fds":[{fds}],"sigactions":[],"cwd":"/","umask":18,"rlimits":[],"itimers":[],
            "image":{{"file":"proc-7.img","size":4096}}}}"#
        );
        serde_json::from_str(&text).expect("sample manifest")
    }

    fn fd(n: i32, kind: &str, path: &str, object: &str) -> String {
        format!(
            r#"{{"fd":{n},"kind":"{kind}","path":"{path}","flags":2,"pos":0,"cloexec":false,
            "termios":[],"dev":15,"inode":1038{object}}}"#
        )
    }

    fn check(m: &ProcessManifest) -> Result<(), String> {
        m.fds.iter().try_for_each(|f| check_fd(m, f))
    }

    #[test]
    fn system_v_shared_memory_is_refused_naming_the_segment() {
        let mut m = manifest("");
        assert_eq!(check_regions(&m), Ok(()));
        let region = |name: &str, inode: u64| ckpt::image::manifest::Region {
            start: 0x7f00_0000_0000,
            end: 0x7f00_0001_0000,
            prot: 3,
            kind: ckpt::image::manifest::RegionKind::SharedAnon,
            name: name.into(),
            offset: 0,
            dev: 1,
            inode,
            file_size: 0,
            file_mtime_ns: 0,
            data_offset: 4096,
            runs: vec![[0, 16]],
            inherited: Vec::new(),
            crc: 0,
            growsdown: false,
            hugepage: false,
            fork: Default::default(),
        };
        // POSIX shared memory (what UCX_TLS=^sysv leaves) is fine.
        m.regions
            .push(region("/dev/shm/ucx_shm_posix_2417e8a9 (deleted)", 2767));
        assert_eq!(check_regions(&m), Ok(()));
        m.regions.push(region("/SYSV00000000 (deleted)", 32789));
        let why = check_regions(&m).unwrap_err();
        for part in [
            "/bin/x",
            "System V shared memory",
            "0x7f0000000000",
            "key 0x00000000",
            "shmid 32789",
            "UCX_TLS=^sysv",
        ] {
            assert!(why.contains(part), "{part:?} missing: {why}");
        }
    }

    #[test]
    fn refusals_name_the_fd_and_the_kind() {
        let eventfd = fd(
            3,
            "object",
            "anon_inode:[eventfd]",
            r#","object":{"eventfd":{"count":5,"semaphore":true}}"#,
        );
        let sock0 = fd(0, "socket", "socket:[12]", "");
        assert_eq!(check(&manifest(&format!("{sock0},{eventfd}"))), Ok(()));
        let null = fd(5, "device", "/dev/null", "");
        let random = fd(6, "device", "/dev/urandom", "");
        assert_eq!(check(&manifest(&format!("{null},{random}"))), Ok(()));
        for (f, says) in [
            (
                fd(4, "other", "anon_inode:[io_uring]", ""),
                "an io_uring instance",
            ),
            (
                fd(4, "other", "anon_inode:inotify", ""),
                "an inotify instance",
            ),
            (fd(4, "socket", "socket:[99]", ""), "a socket"),
            (
                fd(4, "object", "anon_inode:[timerfd]", ""),
                "could not be read",
            ),
            (
                fd(
                    4,
                    "object",
                    "anon_inode:[eventpoll]",
                    r#","object":{"epoll":{"items":[{"tfd":3,"events":25,"data":1,"ino":1038,"sdev":16,"target":"open","ready":false},{"tfd":9,"events":25,"data":2,"ino":1038,"sdev":16,"target":"closed","ready":false}]}}"#,
                ),
                "an epoll instance (anon_inode:[eventpoll]) that ckpt cannot checkpoint: the file registered in it as fd 9",
            ),
            (
                fd(4, "device", "/dev/infiniband/uverbs0", ""),
                "the device /dev/infiniband/uverbs0, whose state lives in its driver",
            ),
        ] {
            let e = check(&manifest(&format!("{eventfd},{f}"))).unwrap_err();
            assert!(e.starts_with("fd 4 of /bin/x is "), "{e}");
            assert!(e.contains(says), "{e}");
        }
    }
}
