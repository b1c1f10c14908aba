//! One checkpoint of a whole batch job: the batch script's process tree and
//! every task of every step it is running (docs/batch-jobs.md).
//!
//! The batch step's `ckpt slurm-task` drives it:
//! 1. finds the steps the script's `srun` processes run (`scontrol -o show
//!    step JOB`: `SrunHost:Pid` is the srun's pid in the job's namespace);
//! 2. writes `job-request` (`TOKEN stop`) in the job's checkpoint directory
//!    and sends each step the checkpoint signal (`scancel --signal`);
//! 3. each task stops its processes and says so in its `job-ack` (`TOKEN
//!    stopped`); once every task has, `job-request` becomes `TOKEN
//!    capture`: no task captures anything while another still runs, so a
//!    message between two tasks is in exactly one image (in its sender's
//!    memory, or queued at its receiver);
//! 4. each task checkpoints, answers (`TOKEN GENERATION NODE` or `TOKEN ERR
//!    why`) and holds its program stopped, so that no output and no
//!    progress happens after its image;
//! 5. every TCP connection a task keeps to a process outside it must have
//!    its other end in another task ([`match_across`]);
//! 6. once the output files stopped growing, the batch tree is
//!    checkpointed, with each `srun` recorded to be started again
//!    (`crate::relaunch`) together with its step's directory and the
//!    generation of each task;
//! 7. `job-request` becomes `TOKEN release` (the tasks continue) unless the
//!    job is being requeued (then Slurm ends them).
//!
//! A job generation is complete when the batch generation is: it names the
//! task generations it goes with. Any failure releases the tasks, and the
//! job keeps running.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ckpt::image::generation::CheckpointDir;
use ckpt::image::manifest::StepRef;

use crate::coord::{Coordinator, Done, Refused};
use crate::relaunch::{ENV_STEP_DIR, ENV_STEP_GENERATIONS};

/// The batch step's request to the tasks (in the job's directory).
pub const REQUEST: &str = "job-request";
/// A task's answer (in its own directory).
pub const ACK: &str = "job-ack";
/// Written by a batch step that resumed from an image: steps started after
/// that take directories of their own (`r<N>.step<ID>`), never one of the
/// run before.
pub const EPOCH: &str = "epoch";
/// The directories where the ends of connections between tasks meet at a
/// restart (`meet.<SLURM_RESTART_COUNT>`, in the job's directory).
pub const MEETING_PREFIX: &str = "meet.";
/// Set in the batch script's environment: its steps' tasks are part of job
/// checkpoints (they keep their images when they end; the batch step
/// removes them with its own).
pub const ENV_JOB_DIR: &str = "CKPT_JOB_DIR";

/// Set in the batch script's environment when the batch step checkpoints
/// the job periodically (its interval, seconds): its steps' tasks then run
/// no timer of their own.
pub const ENV_JOB_PERIODIC: &str = "CKPT_JOB_PERIODIC";

/// How long the job's checkpoint is tried again for a task's condition that
/// passes by itself. Longer than a lone task's 5 s: ranks that exchange
/// messages of tens of MiB back to back keep megabytes queued between nodes
/// most of the time, and each attempt needs a moment when every connection
/// of the job has nothing on its way (docs/mpi.md).
const PASSING_RETRY: Duration = Duration::from_secs(20);
/// How long the tasks have to checkpoint.
const TASK_DEADLINE: Duration = Duration::from_secs(180);
/// How long the tasks have when `scancel` reported an error.
const SCANCEL_FAILED_DEADLINE: Duration = Duration::from_secs(30);
/// How long a task holds its program stopped at most.
const HOLD_LIMIT: Duration = Duration::from_secs(1800);

/// A running step of the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningStep {
    /// `JOB.STEP`.
    pub id: String,
    /// Step number.
    pub step: u32,
    /// Number of tasks.
    pub tasks: u32,
    /// The srun's host name and pid as it reported them.
    pub srun_host: String,
    /// The srun's pid (its own view: the job's namespace).
    pub srun_pid: i32,
}

/// Parses `scontrol -o show step JOB`: one line per step; the batch,
/// extern and interactive steps are left out.
pub fn parse_steps(text: &str) -> Vec<RunningStep> {
    let mut out = Vec::new();
    for line in text.lines() {
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .map(str::to_string)
        };
        let Some(id) = field("StepId=") else { continue };
        let Some(step) = id.rsplit('.').next().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if field("State=").is_some_and(|s| s != "RUNNING") {
            continue;
        }
        let tasks = field("Tasks=").and_then(|t| t.parse().ok()).unwrap_or(0);
        let (srun_host, srun_pid) = field("SrunHost:Pid=")
            .and_then(|hp| {
                let (h, p) = hp.rsplit_once(':')?;
                Some((h.to_string(), p.parse().ok()?))
            })
            .unwrap_or_default();
        out.push(RunningStep {
            id,
            step,
            tasks,
            srun_host,
            srun_pid,
        });
    }
    out
}

/// The epoch the job's steps are in (see [`EPOCH`]).
pub fn epoch(job_dir: &Path) -> Option<u32> {
    std::fs::read_to_string(job_dir.join(EPOCH))
        .ok()
        .and_then(|t| t.trim().parse().ok())
}

/// The directory name of step `step` started in this epoch (the SPANK
/// plugin computes the same: `spank-plugin/src/task_env.rs`).
pub fn step_dir_name(epoch: Option<u32>, step: u32) -> String {
    match epoch {
        Some(e) => format!("r{e}.step{step}"),
        None => format!("step{step}"),
    }
}

/// Writes `text` to `path` through a temporary name and a rename.
fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// The value of `name` in a process's initial environment.
fn environ_value(host: i32, name: &str) -> Option<String> {
    let env = std::fs::read(format!("/proc/{host}/environ")).ok()?;
    let key = format!("{name}=");
    env.split(|&c| c == 0)
        .find_map(|e| e.strip_prefix(key.as_bytes()))
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Tasks held stopped for a job checkpoint: released by [`Held::release`]
/// (not when the job is being requeued: Slurm ends them).
pub struct Held {
    request: PathBuf,
    token: String,
}

impl Held {
    /// Lets the tasks continue.
    pub fn release(&self) {
        let _ = write_atomic(&self.request, &format!("{} release\n", self.token));
    }
}

/// A Slurm command from the installation that runs the job.
fn tool(name: &str) -> Result<PathBuf, String> {
    let tried = super::slurm::tool_candidates(name);
    tried.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
        format!(
            "no {name} found (tried {})",
            tried
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

fn running_steps(scontrol: &Path, job: &str) -> Result<Vec<RunningStep>, String> {
    let out = Command::new(scontrol)
        .args(["-o", "show", "step", job])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", scontrol.display()))?;
    if !out.status.success() {
        return Err(format!(
            "`{} -o show step {job}` failed: {}",
            scontrol.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(parse_steps(&String::from_utf8_lossy(&out.stdout)))
}

/// What the batch step checkpoints with: the job's directory, the
/// checkpoint signal, the output files whose growth is waited out.
pub struct JobCheckpoint<'a> {
    /// The job's checkpoint directory (the batch step's directory's parent).
    pub job_dir: &'a Path,
    /// The checkpoint signal's name (`USR1`), sent to the steps.
    pub signal: &'a str,
    /// The batch step's output files.
    pub outputs: &'a [PathBuf],
}

/// Checkpoints the whole job; on success the tasks are still held (the
/// caller requeues the job, or releases them).
pub fn checkpoint(
    coord: &Arc<Coordinator>,
    j: &JobCheckpoint<'_>,
) -> Result<(Done, Option<Held>), String> {
    // A step that ends while it is being checkpointed (its srun exits, the
    // script goes on) makes the attempt fail: the job is looked at again.
    // So does a task that failed for a condition that passes by itself (a
    // TCP sender with bytes on their way: docs/sockets.md), after letting
    // the job run a moment, for up to PASSING_RETRY.
    let mut attempt = 1;
    let t0 = Instant::now();
    let mut passing_tries = 0u32;
    loop {
        let before = coord.relaunched();
        match checkpoint_once(coord, j) {
            Ok(r) => {
                let total = passing_tries + attempt;
                if total > 1 {
                    eprintln!(
                        "ckpt: the job's checkpoint took {total} attempts ({passing_tries} dropped for bytes \
                         on their way between tasks)"
                    );
                }
                return Ok(r);
            }
            Err(e) if e.passes => {
                if t0.elapsed() >= PASSING_RETRY {
                    return Err(format!(
                        "{} (the job's checkpoint gave up after {} attempts in {} s)",
                        e.why,
                        passing_tries + attempt,
                        PASSING_RETRY.as_secs()
                    ));
                }
                passing_tries += 1;
                std::thread::sleep(Duration::from_millis(25 << passing_tries.min(4)));
            }
            Err(e) => {
                // (An srun exits shortly after its step's tasks.)
                std::thread::sleep(Duration::from_millis(500));
                let now = coord.relaunched();
                let gone = before.iter().any(|b| !now.iter().any(|n| n.1 == b.1));
                if !gone || attempt == 3 {
                    return Err(e.why);
                }
                eprintln!("ckpt: a step ended during the job's checkpoint ({e}); trying again");
                attempt += 1;
            }
        }
    }
}

fn checkpoint_once(
    coord: &Arc<Coordinator>,
    j: &JobCheckpoint<'_>,
) -> Result<(Done, Option<Held>), Refused> {
    coord.set_relaunch(Some(BTreeMap::new()));
    if coord.relaunched().is_empty() {
        return Ok((coord.checkpoint()?, None));
    }
    let job = super::slurm::job_ref()?;
    let scontrol = tool("scontrol")?;
    let scancel = tool("scancel")?;
    // Each srun of the script with the step it runs. An srun without a
    // running step is creating one or has just seen it end: looked at
    // again for a while; after that it is started again from its beginning.
    let start = Instant::now();
    let (steps, srun) = loop {
        let steps = running_steps(&scontrol, &job)?;
        let srun = coord.relaunched();
        let waiting = srun
            .iter()
            .any(|(pid, ..)| !steps.iter().any(|s| s.srun_pid == *pid));
        if !waiting || start.elapsed() > Duration::from_secs(10) {
            break (steps, srun);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let ours: Vec<(&RunningStep, i32, i32)> = steps
        .iter()
        .filter_map(|s| {
            srun.iter()
                .find(|(pid, ..)| *pid == s.srun_pid)
                .map(|(pid, host, ..)| (s, *pid, *host))
        })
        .collect();
    if let Some(s) = steps
        .iter()
        .find(|s| !ours.iter().any(|(o, ..)| o.id == s.id))
    {
        return Err(format!(
            "step {} was not started by the batch script (its srun is pid {} on {}): it cannot be part of the job's checkpoint; end it, or start it from the script",
            s.id, s.srun_pid, s.srun_host
        )
        .into());
    }
    let ep = epoch(j.job_dir);
    let token = format!(
        "{}.{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let held = Held {
        request: j.job_dir.join(REQUEST),
        token: token.clone(),
    };
    write_atomic(&held.request, &format!("{token} stop\n"))
        .map_err(|e| format!("cannot write {}: {e}", held.request.display()))?;
    let result = (|| -> Result<Done, Refused> {
        let mut refs: BTreeMap<i32, StepRef> = BTreeMap::new();
        // What scancel said when it failed: Slurm 22.05 reports an error
        // for a step that does not span every node of the job (the nodes
        // without it answer "Invalid job id") although the signal reached
        // the step's tasks. The tasks' answers decide; the deadline is
        // shorter and the message says what scancel said.
        let mut scancel_said: BTreeMap<i32, String> = BTreeMap::new();
        for (s, pid, host) in &ours {
            let dir = environ_value(*host, ENV_STEP_DIR)
                .filter(|d| valid_step_dir(d))
                .unwrap_or_else(|| step_dir_name(ep, s.step));
            let out = Command::new(&scancel)
                .arg(format!("--signal={}", j.signal))
                .arg(&s.id)
                .output()
                .map_err(|e| format!("cannot run {}: {e}", scancel.display()))?;
            if !out.status.success() {
                scancel_said.insert(
                    *pid,
                    format!(
                        "`scancel --signal={} {}` failed: {}",
                        j.signal,
                        s.id,
                        String::from_utf8_lossy(&out.stderr).trim()
                    ),
                );
            }
            refs.insert(
                *pid,
                StepRef {
                    id: s.id.clone(),
                    dir,
                    tasks: Vec::new(),
                    nodes: Vec::new(),
                },
            );
        }
        // Every task stops, then all capture.
        let deadline = Instant::now() + TASK_DEADLINE;
        for phase in [Phase::Stopped, Phase::Answered] {
            for (s, pid, host) in &ours {
                let Some(r) = refs.get_mut(pid) else { continue };
                // (A task that has no answer while its step's srun is gone
                // will never answer.)
                let alive = || {
                    std::fs::read_to_string(format!("/proc/{host}/stat")).is_ok_and(|st| {
                        st.rsplit(')')
                            .next()
                            .is_some_and(|r| !r.trim_start().starts_with('Z'))
                    })
                };
                let said = scancel_said.get(pid);
                let limit = if said.is_some() {
                    SCANCEL_FAILED_DEADLINE
                } else {
                    deadline.saturating_duration_since(Instant::now())
                };
                (r.tasks, r.nodes) =
                    wait_acks(&j.job_dir.join(&r.dir), &token, s, limit, alive, phase)
                        .map_err(|mut e| {
                            if let Some(m) = said {
                                e.why = format!("{} ({m})", e.why);
                            }
                            e
                        })?
                        .into_iter()
                        .unzip();
            }
            if phase == Phase::Stopped {
                write_atomic(&held.request, &format!("{token} capture\n"))
                    .map_err(|e| format!("cannot write {}: {e}", held.request.display()))?;
            }
        }
        match_across(j.job_dir, &refs, &ours)?;
        wait_quiet(j.outputs);
        coord.set_relaunch(Some(refs));
        Ok(coord.checkpoint()?)
    })();
    match result {
        Ok(d) => Ok((d, Some(held))),
        Err(e) => {
            held.release();
            Err(e)
        }
    }
}

/// A step directory name as the plugin makes them (`step3`, `r1.step0`).
pub fn valid_step_dir(d: &str) -> bool {
    !d.is_empty()
        && d.len() < 64
        && !d.starts_with('.')
        && d.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'.')
}

/// What the batch step waits for from every task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Its processes are stopped (`TOKEN stopped`).
    Stopped,
    /// Its checkpoint is written (`TOKEN GENERATION NODE`).
    Answered,
}

/// Waits for every task of step `s` to answer `token` (its processes
/// stopped, or its checkpoint written: `phase`); their generations and
/// nodes (after [`Phase::Answered`]).
fn wait_acks(
    step_dir: &Path,
    token: &str,
    s: &RunningStep,
    limit: Duration,
    alive: impl Fn() -> bool,
    phase: Phase,
) -> Result<Vec<(u64, String)>, Refused> {
    let deadline = Instant::now() + limit;
    let mut gens = vec![(0u64, String::new()); s.tasks as usize];
    // A task's failure that passes by itself is reported only once every
    // task has answered: another's that does not pass must not be retried.
    let mut passing = None;
    for (rank, g) in gens.iter_mut().enumerate() {
        let ack = step_dir.join(format!("task{rank}")).join(ACK);
        loop {
            let text = std::fs::read_to_string(&ack).unwrap_or_default();
            if let Some(rest) = text
                .trim()
                .strip_prefix(token)
                .and_then(|r| r.strip_prefix(' '))
            {
                if let Some(why) = rest.strip_prefix("ERR ") {
                    return Err(format!("task {rank} of step {}: {why}", s.id).into());
                }
                if let Some(why) = rest.strip_prefix("PASS ") {
                    passing.get_or_insert(Refused::passing(format!(
                        "task {rank} of step {}: {why}",
                        s.id
                    )));
                    break;
                }
                if rest == "stopped" {
                    if phase == Phase::Stopped {
                        break;
                    }
                } else {
                    let mut w = rest.split_whitespace();
                    g.0 = w
                        .next()
                        .and_then(|n| n.parse().ok())
                        .ok_or_else(|| format!("{}: unreadable answer {text:?}", ack.display()))?;
                    g.1 = w.next().unwrap_or("").to_string();
                    break;
                }
            }
            if !alive() {
                return Err(format!("step {} ended during the checkpoint", s.id).into());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "task {rank} of step {} did not checkpoint within {} s (no answer in {})",
                    s.id,
                    limit.as_secs(),
                    ack.display()
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    match passing {
        Some(e) => Err(e),
        None => Ok(gens),
    }
}

/// Waits until the output files stop growing (what the held tasks wrote
/// before their images is on its way through slurmstepd and srun).
fn wait_quiet(outputs: &[PathBuf]) {
    let size = || -> Vec<u64> {
        outputs
            .iter()
            .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
            .collect()
    };
    let start = Instant::now();
    let mut last = size();
    let mut stable_since = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
        let now = size();
        if now != last {
            last = now;
            stable_since = Instant::now();
        } else if stable_since.elapsed() >= Duration::from_millis(300) {
            return;
        }
    }
}

/// After a successful job checkpoint, in the batch step: each task keeps
/// (pins) exactly the generations that the batch step's complete
/// generations name, whatever its own `keep`, so that a job generation
/// stays restorable until a newer one replaces it.
pub fn repin(job_dir: &Path, batch: &CheckpointDir) {
    let Ok(gens) = batch.list() else { return };
    let mut named: BTreeMap<PathBuf, Vec<u64>> = BTreeMap::new();
    for r in gens.iter().filter_map(|g| g.record.as_ref()) {
        for step in r.relaunch.iter().filter_map(|x| x.step.as_ref()) {
            if !valid_step_dir(&step.dir) {
                continue;
            }
            for (rank, n) in step.tasks.iter().enumerate() {
                let dir = job_dir.join(&step.dir).join(format!("task{rank}"));
                named.entry(dir).or_default().push(*n);
            }
        }
    }
    for (dir, gens) in named {
        if let Ok(d) = CheckpointDir::open(&dir)
            && let Err(e) = d.pin(&gens)
        {
            eprintln!(
                "ckpt: cannot record which images {} keeps: {e}",
                dir.display()
            );
        }
    }
}

/// In a step's task, before a checkpoint taken on the checkpoint signal:
/// the batch step's request this task has not answered yet (its token), if
/// any. The checkpoint is then taken holding the program
/// ([`Coordinator::checkpoint_with`]) and answered with [`answer`].
pub fn pending_request(task_dir: &Path) -> Option<String> {
    let job_dir = task_dir.parent().and_then(Path::parent)?;
    let text = std::fs::read_to_string(job_dir.join(REQUEST)).ok()?;
    let token = text.trim().strip_suffix(" stop").map(str::to_string)?;
    let ack = task_dir.join(ACK);
    if std::fs::read_to_string(&ack).is_ok_and(|a| a.starts_with(&format!("{token} "))) {
        return None;
    }
    Some(token)
}

/// In a step's task, the cut of a job checkpoint ([`Coordinator::checkpoint_with`]):
/// once the task's processes are stopped, says so (`TOKEN stopped`) and
/// waits until the batch step says every task is (`TOKEN capture`). Any
/// other word, or none within the tasks' deadline, calls the checkpoint off.
pub fn cut(task_dir: &Path, token: &str) -> impl Fn() -> Result<(), String> + use<> {
    let ack = task_dir.join(ACK);
    let request = task_dir
        .parent()
        .and_then(Path::parent)
        .map(|j| j.join(REQUEST))
        .unwrap_or_default();
    let token = token.to_string();
    move || {
        write_atomic(&ack, &format!("{token} stopped\n"))
            .map_err(|e| format!("cannot write {}: {e}", ack.display()))?;
        let start = Instant::now();
        let (stop, capture) = (format!("{token} stop"), format!("{token} capture"));
        loop {
            let now = std::fs::read_to_string(&request).unwrap_or_default();
            let now = now.trim();
            if now == capture {
                return Ok(());
            }
            if now != stop {
                return Err(
                    "the job's checkpoint was called off while this task was stopped for it".into(),
                );
            }
            if start.elapsed() > TASK_DEADLINE {
                return Err(format!(
                    "the other tasks of the job did not stop within {} s",
                    TASK_DEADLINE.as_secs()
                ));
            }
            // The programs stand still meanwhile: reread often while the
            // other tasks usually stop (a fraction of a second), less often
            // after, so that many tasks do not keep a shared filesystem busy.
            let ms = match start.elapsed().as_millis() {
                0..250 => 5,
                250..2000 => 20,
                _ => 100,
            };
            std::thread::sleep(Duration::from_millis(ms));
        }
    }
}

/// Every connection a task kept to a process outside it (its generation's
/// `across`) must have its other end in another task of the job: the
/// same two addresses the other way round. Fails naming the first that
/// has none, with what the task's own check would have said.
fn match_across(
    job_dir: &Path,
    refs: &BTreeMap<i32, StepRef>,
    ours: &[(&RunningStep, i32, i32)],
) -> Result<(), Refused> {
    let mut ends = Vec::new();
    for (pid, r) in refs {
        for (rank, n) in r.tasks.iter().enumerate() {
            let dir = job_dir.join(&r.dir).join(format!("task{rank}"));
            let d = CheckpointDir::open(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let g = d
                .list()
                .map_err(|e| format!("{}: {e}", dir.display()))?
                .into_iter()
                .find(|g| g.number == *n)
                .and_then(|g| g.record)
                .ok_or_else(|| format!("{}: generation {n} is not there", dir.display()))?;
            // (A rank's connection to its PMIx server has no other end in
            // the job: a restart gives it ckpt's stand-in, docs/mpi.md.)
            for a in g.across.into_iter().filter(|a| !a.pmix) {
                ends.push((*pid, r.id.clone(), rank, a));
            }
        }
    }
    for (pid, id, rank, a) in &ends {
        let met = ends.iter().find(|(_, i2, r2, b)| {
            (i2 != id || r2 != rank) && b.local.same(&a.peer) && b.peer.same(&a.local)
        });
        // The two ends were captured one after the other: every byte one
        // sent must be one the other had received when it was captured (a
        // segment that reached the receiver after its capture, acknowledged
        // before the sender's, would be in neither image). The end that
        // opened the connection counts its SYN among the bytes acknowledged
        // (measured: 600001 against 600000), so the two differences add up
        // to exactly 1 when nothing was on its way. Such a segment passes:
        // the job's checkpoint is tried again.
        if let Some((_, i2, r2, b)) = met
            && (i128::from(a.acked) - i128::from(b.received))
                + (i128::from(b.acked) - i128::from(a.received))
                != 1
        {
            return Err(Refused::passing(format!(
                "task {rank} of step {id}: {}: bytes between it and task {r2} of step {i2} were on their way \
                 while the tasks were captured (it had {} acknowledged and {} received, its peer {} and {})",
                a.who, a.acked, a.received, b.acked, b.received,
            )));
        }
        if met.is_none() {
            let host = ours.iter().find(|(_, p, _)| p == pid).map(|x| x.2);
            let e = format!(
                "task {rank} of step {id}: {}, to a process outside the job (no task of the job holds its \
                 other end): ckpt cannot checkpoint a connection that leaves the job; close it before the \
                 checkpoint",
                a.who
            );
            return Err(
                super::mpi::with_mpi_hint(e, host.and_then(srun_mpi_type).as_deref()).into(),
            );
        }
    }
    Ok(())
}

/// The MPI type an `srun` (host pid) gives its step: `--mpi=TYPE` or
/// `--mpi TYPE` on its command line, else `SLURM_MPI_TYPE` of its
/// environment.
fn srun_mpi_type(host: i32) -> Option<String> {
    let cmd = std::fs::read(format!("/proc/{host}/cmdline")).ok()?;
    let args: Vec<String> = cmd
        .split(|&c| c == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    for (i, a) in args.iter().enumerate() {
        if let Some(t) = a.strip_prefix("--mpi=") {
            return Some(t.to_string());
        }
        if a == "--mpi" {
            return args.get(i + 1).cloned();
        }
    }
    environ_value(host, "SLURM_MPI_TYPE")
}

/// Answers request `token` with the checkpoint's result; on success the
/// program stays held (stopped since its image) until the batch step
/// releases it. Returns the generation given in the answer, which the task
/// then keeps (pins) until the batch step says which it still needs
/// ([`repin`]).
pub fn answer(
    coord: &Arc<Coordinator>,
    task_dir: &Path,
    token: &str,
    result: &Result<Done, Refused>,
) -> Option<u64> {
    let job_dir = task_dir.parent().and_then(Path::parent)?;
    let request = job_dir.join(REQUEST);
    let token = token.to_string();
    let ack = task_dir.join(ACK);
    let mut answered = None;
    let reply = match result {
        Ok(d) => {
            let number = d
                .path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("gen-"))
                .and_then(|n| n.parse::<u64>().ok());
            let node = std::env::var("SLURMD_NODENAME").unwrap_or_default();
            answered = number;
            match number {
                Some(n) => format!("{token} {n} {node}\n"),
                None => format!("{token} ERR unexpected generation {}\n", d.path.display()),
            }
        }
        // (The batch step tries the job's checkpoint again after a PASS.)
        Err(e) => format!(
            "{token} {} {}\n",
            if e.passes { "PASS" } else { "ERR" },
            e.why.replace('\n', " ")
        ),
    };
    if let Err(e) = write_atomic(&ack, &reply) {
        // The batch step will wait for this answer until its deadline and
        // say only that none came: the cause is said here.
        eprintln!(
            "ckpt: cannot answer the job's checkpoint request in {}: {e}",
            ack.display()
        );
        coord.hold(false);
        return None;
    }
    if result.is_err() {
        return None;
    }
    let coord = coord.clone();
    let epoch = coord.hold_epoch();
    std::thread::spawn(move || {
        let start = Instant::now();
        let hold_line = format!("{token} capture");
        while start.elapsed() < HOLD_LIMIT {
            let now = std::fs::read_to_string(&request).unwrap_or_default();
            if now.trim() != hold_line {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        coord.release_held(epoch);
    });
    answered
}

/// In a relaunched step's task: the generation the job checkpoint names
/// for this rank (`CKPT_STEP_GENERATIONS`).
pub fn resume_generation(rank: u32) -> Option<u64> {
    let v = std::env::var(ENV_STEP_GENERATIONS).ok()?;
    v.split(',').find_map(|e| {
        let (r, g) = e.split_once(':')?;
        (r.trim().parse::<u32>().ok()? == rank).then(|| g.trim().parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_of_scontrol() {
        let text = "StepId=4.batch UserId=1001 State=RUNNING Tasks=1 Name=batch SrunHost:Pid=(null):0\n\
                    StepId=4.0 UserId=1001 State=RUNNING NodeList=vm Nodes=1 CPUs=1 Tasks=2 Name=sleep SrunHost:Pid=vm:3\n\
                    StepId=4.extern State=RUNNING Tasks=1 SrunHost:Pid=(null):0\n\
                    StepId=4.1 State=COMPLETING Tasks=1 SrunHost:Pid=vm:9\n";
        assert_eq!(
            parse_steps(text),
            [RunningStep {
                id: "4.0".into(),
                step: 0,
                tasks: 2,
                srun_host: "vm".into(),
                srun_pid: 3
            }]
        );
    }

    #[test]
    fn step_dirs_and_generations() {
        assert_eq!(step_dir_name(None, 3), "step3");
        assert_eq!(step_dir_name(Some(2), 0), "r2.step0");
        assert!(valid_step_dir("r2.step0"));
        assert!(!valid_step_dir("../x"));
        assert!(!valid_step_dir(".."));
        assert!(!valid_step_dir(""));
    }

    #[test]
    fn a_task_answers_once_and_holds_until_released() {
        let dir = std::env::temp_dir().join(format!("ckpt-job-{}", std::process::id()));
        let task = dir.join("step1/task0");
        std::fs::create_dir_all(&task).unwrap();
        let cd = ckpt::image::generation::CheckpointDir::create(&dir.join("c")).unwrap();
        let coord = Coordinator::new(cd, vec![], 2);
        let done = Done {
            path: task.join("gen-000007"),
            bytes: 0,
            pause_us: 0,
            total_us: 0,
            processes: 1,
            in_place: 0,
            in_place_advice: 0,
            base: 0,
        };
        // No request: nothing.
        assert_eq!(pending_request(&task), None);
        std::fs::write(dir.join(REQUEST), "tok stop\n").unwrap();
        assert_eq!(pending_request(&task).as_deref(), Some("tok"));
        assert_eq!(answer(&coord, &task, "tok", &Ok(done.clone())), Some(7));
        let node = std::env::var("SLURMD_NODENAME").unwrap_or_default();
        assert_eq!(
            std::fs::read_to_string(task.join(ACK)).unwrap(),
            format!("tok 7 {node}\n")
        );
        // A second signal with the same request is not a second answer.
        assert_eq!(pending_request(&task), None);
        assert_eq!(
            std::fs::read_to_string(task.join(ACK)).unwrap(),
            format!("tok 7 {node}\n")
        );
        std::fs::write(dir.join(REQUEST), "tok2 stop\n").unwrap();
        assert_eq!(
            answer(&coord, &task, "tok2", &Err("no\nway".to_string().into())),
            None
        );
        assert_eq!(
            std::fs::read_to_string(task.join(ACK)).unwrap(),
            "tok2 ERR no way\n"
        );
        let s = RunningStep {
            id: "9.1".into(),
            step: 1,
            tasks: 1,
            srun_host: "vm".into(),
            srun_pid: 4,
        };
        let e = wait_acks(
            &dir.join("step1"),
            "tok2",
            &s,
            TASK_DEADLINE,
            || true,
            Phase::Answered,
        )
        .unwrap_err();
        assert_eq!(e, Refused::from("task 0 of step 9.1: no way".to_string()));
        // A failure that passes is answered as one, and read back as one.
        std::fs::write(dir.join(REQUEST), "tok4 stop\n").unwrap();
        let bytes = Refused::passing("bytes on their way".to_string());
        assert_eq!(answer(&coord, &task, "tok4", &Err(bytes)), None);
        assert_eq!(
            std::fs::read_to_string(task.join(ACK)).unwrap(),
            "tok4 PASS bytes on their way\n"
        );
        let e = wait_acks(
            &dir.join("step1"),
            "tok4",
            &s,
            TASK_DEADLINE,
            || true,
            Phase::Answered,
        )
        .unwrap_err();
        assert_eq!(
            e,
            Refused::passing("task 0 of step 9.1: bytes on their way".to_string())
        );
        std::fs::write(task.join(ACK), "tok3 12 n2\n").unwrap();
        assert_eq!(
            wait_acks(
                &dir.join("step1"),
                "tok3",
                &s,
                TASK_DEADLINE,
                || true,
                Phase::Answered
            )
            .unwrap(),
            [(12, "n2".to_string())]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_failure_that_passes_is_retried_only_when_no_task_failed_for_good() {
        let dir = std::env::temp_dir().join(format!("ckpt-job-acks-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for t in ["task0", "task1"] {
            std::fs::create_dir_all(dir.join("step0").join(t)).unwrap();
        }
        let s = RunningStep {
            id: "9.0".into(),
            step: 0,
            tasks: 2,
            srun_host: "vm".into(),
            srun_pid: 4,
        };
        let acks = |a: &str, b: &str| {
            std::fs::write(dir.join("step0/task0").join(ACK), a).unwrap();
            std::fs::write(dir.join("step0/task1").join(ACK), b).unwrap();
            wait_acks(
                &dir.join("step0"),
                "t",
                &s,
                TASK_DEADLINE,
                || true,
                Phase::Answered,
            )
        };
        // Rank 0's failure passes, rank 1's does not: not to be retried.
        let e = acks("t PASS on their way\n", "t ERR io_uring\n").unwrap_err();
        assert_eq!(e, Refused::from("task 1 of step 9.0: io_uring".to_string()));
        // Only failures that pass: retried, naming the first.
        let e = acks("t PASS a\n", "t PASS b\n").unwrap_err();
        assert_eq!(e, Refused::passing("task 0 of step 9.0: a".to_string()));
        // One that passes and an answer: retried.
        let e = acks("t 3 n1\n", "t PASS b\n").unwrap_err();
        assert_eq!(e, Refused::passing("task 1 of step 9.0: b".to_string()));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn generations_by_rank() {
        // SAFETY: this test alone reads and writes this variable.
        unsafe { std::env::set_var(ENV_STEP_GENERATIONS, "0:5,1:6") };
        assert_eq!(resume_generation(1), Some(6));
        assert_eq!(resume_generation(2), None);
        // SAFETY: as above.
        unsafe { std::env::remove_var(ENV_STEP_GENERATIONS) };
    }
}
