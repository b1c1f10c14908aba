//! `ckpt slurm-task`: what the SPANK plugin runs in place of each task of a
//! checkpointed Slurm job (exec'ed from `slurm_spank_task_init`, as the user).
//!
//! ```text
//! ckpt slurm-task --dir TASKDIR [--interval T] [--signal NAME] [--batch] [--keep-images] [--incremental off]
//!                 [--lib LIBCKPT] -- ARGV...
//! ckpt slurm-task --check --dir TASKDIR      (the plugin's check before a resume)
//! ckpt slurm-exec [--ignore SIGNUM] -- ARGV  (how the program is started)
//! ```
//! - TASKDIR holds a complete generation: the task is resumed from it
//!   (`ckpt restart`), with the newest one first and older ones as fall-back.
//!   If none can be restored the task fails with a message and never starts
//!   ARGV from the beginning over its own outputs (the plugin runs
//!   `--check` first, so that the reason also reaches the slurmd log).
//! - Otherwise ARGV runs under `ckpt launch`, through `ckpt slurm-exec`
//!   ([`program_command`]).
//! - The "checkpoint now" signal (`--signal`, the site's `signal=`) takes a
//!   blocking checkpoint; in the batch step (`--batch`) the job is then
//!   requeued with `scontrol requeue` (of `$SLURM_JOB_ID`, or `<array>_<task>`), and Slurm starts it
//!   again, which resumes it here. If that checkpoint fails, the job is
//!   requeued only when an older checkpoint exists (it resumes from there);
//!   without any checkpoint it is left running, so that a job that cannot be
//!   checkpointed is never requeued and restarted from scratch in a loop.
//! - `--interval`: periodic checkpoints, driven by an `ITIMER_REAL` of this
//!   process (its SIGALRM is consumed here, never forwarded to the job).
//! - When the program exits with status 0 and the job was not requeued, the
//!   images are removed unless `--keep-images` (any other status keeps them:
//!   a failed restore, a crash, or a kill must not lose the checkpoint).
//! - Before running (a resume too), the site's `TaskProlog` and the step's
//!   `--task-prolog` are run and their output applied
//!   ([`super::task_prolog`]), then the resource limits propagated by Slurm
//!   (`SLURM_RLIMIT_*`) and a default `TMPDIR` are applied, as slurmstepd
//!   would have done after the plugin's `task_init`
//!   (docs/slurm-task-order.md).
//!
//! Output continuity (the task's output files as they were at each
//! checkpoint) is in [`super::outputs`].
//!
//! Messages go to the task's stderr, prefixed `ckpt:`.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use super::{Failure, Opts, job, outputs};
use crate::coord::Coordinator;
use ckpt::image::generation::{CheckpointDir, LoadedGeneration};
use ckpt::image::manifest::FdKind;

/// Options of `ckpt slurm-task`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TaskOpts {
    /// The task's own checkpoint directory.
    pub dir: PathBuf,
    /// Periodic interval, seconds (0 = none).
    pub interval: u64,
    /// The "checkpoint now" signal number.
    pub signal: i32,
    /// This is the batch step: requeue the job after a signal checkpoint.
    pub batch: bool,
    /// Keep the images after the program finished.
    pub keep_images: bool,
    /// `--incremental off`: periodic checkpoints are full (the site's
    /// `incremental=no`); otherwise they track written pages.
    pub no_incremental: bool,
    /// `--compress`: images are compressed (the site's `compress=zstd`).
    pub compress: bool,
    /// The preload library to use (`CKPT_LIB` for launch).
    pub lib: Option<PathBuf>,
    /// `--check`: only say whether a generation of TASKDIR can be loaded.
    pub check: bool,
    /// `--max-file-copy`: the site's `max_file_copy=` (None: the default).
    pub max_file_copy: Option<u64>,
    /// The task's command, byte for byte (need not be UTF-8).
    pub command: Vec<OsString>,
}

/// A signal name (`USR1`, `SIGUSR1`) or number to its number.
pub fn signal_number(name: &str) -> Option<i32> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    let n = match bare {
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "TERM" => libc::SIGTERM,
        "ALRM" => libc::SIGALRM,
        "URG" => libc::SIGURG,
        "WINCH" => libc::SIGWINCH,
        "XCPU" => libc::SIGXCPU,
        "XFSZ" => libc::SIGXFSZ,
        "VTALRM" => libc::SIGVTALRM,
        "PROF" => libc::SIGPROF,
        "PWR" => libc::SIGPWR,
        other => return other.parse().ok().filter(|n| (1..=64).contains(n)),
    };
    Some(n)
}

/// Parses the arguments after `slurm-task`.
pub fn parse(args: &[OsString]) -> Result<TaskOpts, String> {
    let mut o = TaskOpts {
        signal: libc::SIGUSR1,
        ..TaskOpts::default()
    };
    let mut dir = None;
    let mut i = 0;
    while i < args.len() {
        let (key, inline) = super::split_option(&args[i]);
        let mut value = |name: &str| -> Result<OsString, String> {
            if let Some(v) = inline.clone() {
                return Ok(v);
            }
            i += 1;
            args.get(i)
                .cloned()
                .ok_or_else(|| format!("slurm-task: {name} needs a value"))
        };
        let text = |name: &str, v: OsString| {
            super::text_value(name, v).map_err(|e| format!("slurm-task: {e}"))
        };
        match key.as_str() {
            "--dir" => dir = Some(PathBuf::from(value("--dir")?)),
            "--interval" => {
                o.interval = super::parse_interval(&text("--interval", value("--interval")?)?)?
            }
            "--signal" => {
                let v = text("--signal", value("--signal")?)?;
                o.signal = signal_number(&v)
                    .ok_or_else(|| format!("slurm-task: --signal={v}: not a signal name"))?;
            }
            "--lib" => o.lib = Some(PathBuf::from(value("--lib")?)),
            "--max-file-copy" => {
                let v = text("--max-file-copy", value("--max-file-copy")?)?;
                o.max_file_copy = Some(
                    super::parse_size("--max-file-copy", &v)
                        .map_err(|e| format!("slurm-task: {e}"))?,
                );
            }
            "--batch" => o.batch = true,
            "--keep-images" => o.keep_images = true,
            "--incremental" => {
                o.no_incremental =
                    super::parse_incremental(&text("--incremental", value("--incremental")?)?)?
                        == super::Incremental::Off
            }
            "--check" => o.check = true,
            "--compress" => o.compress = true,
            "--" => {
                o.command = args.get(i + 1..).unwrap_or_default().to_vec();
                break;
            }
            other => return Err(format!("slurm-task: unknown option {other}")),
        }
        i += 1;
    }
    o.dir = dir.ok_or("slurm-task: missing --dir TASKDIR")?;
    if o.command.is_empty() && !o.check {
        return Err("slurm-task: missing the task's command after --".into());
    }
    Ok(o)
}

/// Our lines since the last checkpoint taken on a signal (see
/// [`HookState::keep_lines_after`]).
static SAID: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

fn say(msg: &str) {
    say_as(false, msg);
}

/// [`say`] for a problem: an error line in the slurmd log too.
fn say_problem(msg: &str) {
    say_as(true, msg);
}

fn say_as(problem: bool, msg: &str) {
    let line = format!("ckpt: {msg}");
    eprintln!("{line}");
    super::slurmd_log::line(problem, msg);
    if let Ok(mut said) = SAID.lock() {
        said.push(line);
    }
}

/// `--check`: succeeds when TASKDIR has no complete generation or one that
/// loads and whose files are still there as they were (the files the job
/// had open, the executables and libraries it had mapped); otherwise
/// explains each generation that cannot be used. Page data is verified
/// later, by the restore itself.
fn check(o: &TaskOpts) -> Result<i32, Failure> {
    let dir = CheckpointDir::open(&o.dir)?;
    let mut reasons = Vec::new();
    for (path, r) in dir.candidates()? {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match r.map_err(|e| e.to_string()).and_then(|mut g| {
            // The batch step passes its script (see `follow_moved_script`).
            if let Some(script) = o.command.first() {
                crate::restore::names::follow_moved_script(&mut g, Path::new(script));
            }
            files_unchanged(&g)
        }) {
            Ok(()) => return Ok(0),
            Err(e) => reasons.push(format!("{name}: {e}")),
        }
    }
    if reasons.is_empty() {
        return Ok(0);
    }
    Err(Failure {
        msg: format!("no checkpoint can be restored ({})", reasons.join("; ")),
        code: 1,
    })
}

/// The checks stage 1 of the restore makes on files, made early: open
/// regular files must exist; mapped files must be the same inode, size and
/// modification time.
fn files_unchanged(g: &LoadedGeneration) -> Result<(), String> {
    use crate::restore::names::name_bytes;
    use ckpt::image::manifest::RegionKind;
    use std::os::unix::ffi::OsStrExt;
    let path_of = |name: &str| PathBuf::from(std::ffi::OsStr::from_bytes(&name_bytes(name)));
    // Files the generation keeps are put back by the restore itself.
    let kept = |path: &str| g.record.files.iter().any(|k| k.path == path);
    for m in &g.processes {
        for f in m.fds.iter().filter(|f| f.kind == FdKind::File) {
            if f.path.ends_with(" (deleted)") || kept(&f.path) {
                continue; // kept in the generation, or refused by the restore
            }
            if let Err(e) = fs::metadata(path_of(&f.path)) {
                return Err(format!(
                    "{} (open as fd {} of process {}) is gone: {e}",
                    f.path, f.fd, m.pid
                ));
            }
        }
        for r in m
            .regions
            .iter()
            .filter(|r| matches!(r.kind, RegionKind::File | RegionKind::SharedFile))
            .filter(|r| !kept(&r.name))
        {
            let md = fs::metadata(path_of(&r.name))
                .map_err(|e| format!("mapped file {} is gone: {e}", r.name))?;
            let mtime = u64::try_from(md.mtime())
                .unwrap_or(0)
                .wrapping_mul(1_000_000_000)
                .wrapping_add(u64::try_from(md.mtime_nsec()).unwrap_or(0));
            if md.ino() != r.inode || md.size() != r.file_size || mtime != r.file_mtime_ns {
                return Err(format!(
                    "{} changed since the checkpoint (replaced, rewritten or upgraded)",
                    r.name
                ));
            }
        }
    }
    Ok(())
}

/// Applies the resource limits the job propagated from the submission host
/// (`SLURM_RLIMIT_<NAME>`, what slurmstepd's `set_user_limits` would do
/// after the plugin's `task_init`): soft limits only, never above the hard
/// limit.
fn apply_rlimits() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let all = [
        ("CPU", Resource::RLIMIT_CPU),
        ("FSIZE", Resource::RLIMIT_FSIZE),
        ("DATA", Resource::RLIMIT_DATA),
        ("STACK", Resource::RLIMIT_STACK),
        ("CORE", Resource::RLIMIT_CORE),
        ("RSS", Resource::RLIMIT_RSS),
        ("NPROC", Resource::RLIMIT_NPROC),
        ("NOFILE", Resource::RLIMIT_NOFILE),
        ("MEMLOCK", Resource::RLIMIT_MEMLOCK),
        ("AS", Resource::RLIMIT_AS),
    ];
    for (name, res) in all {
        let Ok(v) = std::env::var(format!("SLURM_RLIMIT_{name}")) else {
            continue;
        };
        // slurm writes "U<value>" when the submitting user's limit was
        // unlimited in some versions; accept a bare number or that form.
        let v = v.trim().trim_start_matches('U');
        let Ok(want) = v.parse::<u64>() else {
            continue;
        };
        let Ok((_, hard)) = getrlimit(res) else {
            continue;
        };
        let soft = if hard == libc::RLIM_INFINITY {
            want
        } else {
            want.min(hard)
        };
        let _ = setrlimit(res, soft, hard);
    }
}

/// Runs `ckpt slurm-task ARGS`.
pub fn run(args: &[OsString]) -> Result<i32, Failure> {
    let mut o = parse(args).map_err(|msg| Failure { msg, code: 2 })?;
    if o.check {
        return check(&o);
    }
    // In a batch job checkpointed periodically, its steps' tasks are
    // checkpointed with it (cli/job.rs), not on timers of their own: each
    // job checkpoint names the task images it goes with.
    if !o.batch && std::env::var_os(job::ENV_JOB_PERIODIC).is_some() {
        o.interval = 0;
    }
    let rank: u32 = std::env::var("SLURM_PROCID")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    // Before any thread: takes the plugin's pipe out of the environment.
    super::slurmd_log::init(rank);
    // `srun --multi-prog`: slurmstepd would pick this task's command after
    // the plugin's task_init; done here (cli/multi_prog.rs).
    if !o.batch && super::multi_prog::is_multi_prog(&o.command) {
        o.command = super::multi_prog::task_argv(&o.command, rank)
            .map_err(|msg| Failure { msg, code: 1 })?;
    }
    block_alarm(o.signal);
    note_slurmstepd();
    // slurmstepd's order after task_init: task prologs, TMPDIR, limits.
    let prolog_output = super::task_prolog::run(&o.dir)?;
    apply_rlimits();
    if std::env::var_os("TMPDIR").is_none() {
        // SAFETY: single-threaded (no thread started yet).
        unsafe { std::env::set_var("TMPDIR", "/tmp") };
    }
    if let Some(lib) = &o.lib {
        // SAFETY: single-threaded at this point (no thread is started before
        // launch/restart), so nothing reads the environment concurrently.
        unsafe { std::env::set_var("CKPT_LIB", lib) };
    }
    if !o.batch && std::env::var("SLURM_MPI_TYPE").is_ok_and(|t| t.starts_with("pmix")) {
        for (name, value, why) in super::mpi::open_mpi_settings(|k| std::env::var_os(k)) {
            // SAFETY: single-threaded (no thread started yet), so nothing
            // reads the environment concurrently.
            unsafe { std::env::set_var(name, value) };
            if rank == 0 {
                say(&format!(
                    "note: {name}={value} is set for this step: {why} (set {name} yourself to \
                     choose otherwise; docs/mpi.md)"
                ));
            }
        }
    }
    if !o.batch {
        // The step's checkpoint signal reaches every process of the step:
        // the job's init and libckpt leave Slurm's to ckpt (ns::supervise,
        // ckpt-core/src/preload/ask.rs).
        // SAFETY: single-threaded (no thread started yet).
        unsafe { std::env::set_var(ckpt::preload::ask::ENV_ASK_SIGNAL, o.signal.to_string()) };
    }
    let dir = CheckpointDir::create(&o.dir)?;
    let restart_count: u32 = std::env::var("SLURM_RESTART_COUNT")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    // The job's directory: the batch step's directory's parent, a task's
    // directory's grandparent (docs/batch-jobs.md).
    let job_dir = if o.batch {
        o.dir.parent().map(Path::to_path_buf)
    } else {
        std::env::var_os(job::ENV_JOB_DIR).map(PathBuf::from)
    };
    if o.batch
        && let Some(j) = &job_dir
    {
        // SAFETY: single-threaded (no thread started yet).
        unsafe {
            std::env::set_var(job::ENV_JOB_DIR, j);
            if o.interval > 0 {
                std::env::set_var(job::ENV_JOB_PERIODIC, o.interval.to_string());
            } else {
                std::env::remove_var(job::ENV_JOB_PERIODIC);
            }
        }
    }
    if !o.batch
        && let Some(j) = &job_dir
    {
        // Where the ends of the job's connections between tasks meet when
        // this restart of the job resumes them (docs/batch-jobs.md).
        let meet = j.join(format!("{}{restart_count}", job::MEETING_PREFIX));
        // SAFETY: single-threaded (no thread started yet).
        unsafe { std::env::set_var(ckpt::objects::inet_socket::across::ENV_MEETING, &meet) };
        // A rank of `srun --mpi=pmix` that resumes gets a stand-in for its
        // PMIx server (docs/mpi.md, "The PMIx stand-in"); also checked at
        // its next checkpoint.
        if restart_count > 0
            && std::env::var("SLURM_MPI_TYPE").is_ok_and(|t| t.starts_with("pmix"))
            && let Some(b) = crate::pmix_stand_in::barrier_from_env(&meet)
        {
            match crate::pmix_stand_in::listen(b) {
                Ok((env, serve)) => {
                    // SAFETY: single-threaded (the serving thread starts next).
                    unsafe {
                        std::env::set_var(ckpt::objects::inet_socket::across::ENV_STAND_IN, env)
                    };
                    std::thread::spawn(serve);
                }
                Err(e) => say_problem(&format!("cannot serve a stand-in PMIx server: {e}")),
            }
        }
    }
    // A task of a step the batch step started again after a requeue
    // resumes from exactly the generation the job's checkpoint names
    // (checked below, once the directory is listed).
    let resume_from = if o.batch {
        None
    } else {
        job::resume_generation(rank)
    };
    let outputs = outputs::output_files();
    let engine = Opts {
        dir: Some(dir.path().to_path_buf()),
        interval: 0,
        keep: ckpt::image::generation::DEFAULT_KEEP,
        no_verify: false,
        // The periodic timer is this process's own (not the engine's).
        incremental: if o.interval > 0 && !o.no_incremental {
            super::Incremental::On
        } else {
            super::Incremental::Off
        },
        compress: o.compress,
        generation: resume_from,
        exact_generation: resume_from.is_some(),
        batch_script: o
            .batch
            .then(|| o.command.first().map(PathBuf::from))
            .flatten(),
        max_file_copy: o.max_file_copy,
        // The output files have their own copy (`outputs`).
        exclude_files: outputs.iter().map(outputs::Output::id).collect(),
        command: program_command(&o),
    };
    let mut state = HookState {
        opts: &o,
        dir: &dir,
        outputs: &outputs,
        requeued: false,
        terminated: false,
        job_dir: job_dir.as_deref(),
        held: None,
    };
    // A batch job that already ran to its end is not run again when Slurm
    // starts it once more (a requeue after it completed: Slurm 25.11 does
    // this to a job that was requeued during a preemption's grace time).
    let job_id = std::env::var("SLURM_JOB_ID").unwrap_or_default();
    if let Some(done) = completed_record(&dir) {
        if o.batch && restart_count > 0 && done.job == job_id {
            for problem in outputs::restore_final(&dir, &outputs) {
                say_problem(&problem);
            }
            say(&format!(
                "job {job_id} already ran to its end (exit status {}) before Slurm started it                  again (SLURM_RESTART_COUNT={restart_count}): not running it a second time;                  remove {}/{COMPLETED} to run it again",
                done.code,
                dir.path().display()
            ));
            return Ok(done.code);
        }
        // Another job's record (the directory is reused), or a new start:
        // not ours. Its copy of the outputs goes with it (the copies of
        // existing generations stay).
        let _ = dir.remove(COMPLETED);
        outputs::remove_saved(&dir, false);
        // A step's task keeps its images when it ends, for the job's
        // checkpoints (below); a step that starts in its place afresh (the
        // batch script started over) does not resume from them.
        if !o.batch && resume_from.is_none() {
            if let Err(e) = dir.remove_all() {
                say(&format!("cannot remove the images of the run before: {e}"));
            }
            let _ = dir.remove(ckpt::image::generation::PINNED);
            outputs::remove_saved(&dir, true);
        }
    }
    let complete: Vec<_> = dir
        .list()?
        .into_iter()
        .filter(|g| g.state != "incomplete")
        .collect();
    if let Some(n) = resume_from
        && !complete.iter().any(|g| g.number == n)
    {
        return Err(Failure {
            msg: format!(
                "the job's checkpoint resumes this task from generation {n} of {}, which is not \
                 there (removed?); it is NOT started again from the beginning, to protect its \
                 outputs: inspect it with `ckpt status --dir {}`",
                dir.path().display(),
                dir.path().display()
            ),
            code: 1,
        });
    }
    // Steps started from here on take directories of their own when the
    // batch step resumes (job::EPOCH); not when it starts over.
    if o.batch
        && let Some(j) = &job_dir
    {
        let epoch = j.join(job::EPOCH);
        let r = if complete.is_empty() {
            fs::remove_file(&epoch).or_else(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(e)
                }
            })
        } else {
            fs::write(&epoch, format!("{restart_count}\n"))
        };
        if let Err(e) = r {
            say(&format!("cannot update {}: {e}", epoch.display()));
        }
    }
    start_timer(o.interval);
    let mut prolog_output = Some(prolog_output);
    let result = if complete.is_empty() {
        if let Some(p) = prolog_output.take() {
            p.emit();
        }
        if restart_count > 0 {
            say(&format!(
                "job requeued (SLURM_RESTART_COUNT={restart_count}) but {} holds no checkpoint: \
                 starting {} from the beginning",
                dir.path().display(),
                o.command
                    .iter()
                    .map(|a| a.to_string_lossy())
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
        }
        super::launch::run_with(&engine, &mut |sig, coord| state.on_signal(sig, coord))
    } else {
        let newest = newest_loadable(&dir);
        if let Some(g) = &newest {
            for problem in outputs::restore(&dir, g, &outputs) {
                say_problem(&problem);
            }
            // After the output files are back where the program left them.
            if let Some(p) = prolog_output.take() {
                p.emit();
            }
            say(&format!(
                "resuming from {} (SLURM_RESTART_COUNT={restart_count})",
                g.path.display()
            ));
        }
        if let Some(p) = prolog_output.take() {
            p.emit();
        }
        super::restart::run_with(&engine, &mut |sig, coord| state.on_signal(sig, coord)).map_err(
            |f| Failure {
                msg: format!(
                    "cannot resume this task from its checkpoints in {}: {}; it is NOT started \
                     again from the beginning, to protect its outputs: inspect them with \
                     `ckpt status --dir {}`, then remove that directory to start over",
                    dir.path().display(),
                    f.msg,
                    dir.path().display()
                ),
                code: f.code,
            },
        )
    };
    stop_timer();
    let code = result?;
    let step_of_job = !o.batch && job_dir.is_some();
    if step_of_job && !state.requeued && code == 0 && !o.keep_images && !state.terminated {
        // A task of a step in a batch job: its images may be named by the
        // job's checkpoint (a requeue without warning resumes the job from
        // there); the batch step removes them when the job ends.
        record_completion(&dir, &[], &job_id, code);
    } else if !state.requeued && code == 0 && !o.keep_images {
        if let Err(e) = dir.remove_all() {
            say(&format!("cannot remove the checkpoints: {e}"));
        }
        outputs::remove_saved(&dir, true);
        if o.batch
            && let Some(j) = &job_dir
        {
            remove_step_dirs(j);
        }
    }
    // Only a run that ended by itself, successfully: a job Slurm requeued
    // or cancelled, or one that failed, runs again when started again.
    if o.batch && code == 0 && !state.requeued && !state.terminated && !job_id.is_empty() {
        record_completion(&dir, &outputs, &job_id, code);
    }
    Ok(code)
}

/// The record a batch task leaves when its program ran to its end
/// (`completed`: `job <id> exit <status>`), with a copy of its output files.
const COMPLETED: &str = "completed";

/// What [`COMPLETED`] says.
struct Completed {
    job: String,
    code: i32,
}

fn completed_record(dir: &CheckpointDir) -> Option<Completed> {
    let mut f = dir.open_file(COMPLETED, false).ok()?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::Read::take(&mut f, 256), &mut text).ok()?;
    let w: Vec<&str> = text.split_whitespace().collect();
    match w.as_slice() {
        ["job", job, "exit", code] => Some(Completed {
            job: (*job).to_owned(),
            code: code.parse().ok()?,
        }),
        _ => None,
    }
}

fn record_completion(dir: &CheckpointDir, outputs: &[outputs::Output], job: &str, code: i32) {
    for problem in outputs::save_final(dir, outputs) {
        say_problem(&problem);
    }
    let r = dir.create_file(COMPLETED, true).and_then(|mut f| {
        std::io::Write::write_all(&mut f, format!("job {job} exit {code}\n").as_bytes())
            .and_then(|()| f.sync_all())
    });
    if let Err(e) = r {
        say(&format!("cannot record that the job ran to its end: {e}"));
    }
}

/// The command `ckpt launch` runs: ARGV through `ckpt slurm-exec`, which
/// execs it with the signal dispositions a task gets from slurmstepd
/// (`SIGPIPE` back to default: the Rust runtime of `ckpt` ignores it, and
/// `ckpt launch` passes that on).
///
/// In an srun step it also ignores the checkpoint signal: Slurm delivers a
/// step's signals (`srun --signal=USR1@N`, `scancel --signal=USR1 JOBID`) to
/// every process of the step, so the program would die of the signal that
/// ckpt consumes. An ignored signal stays ignored across exec; a program that
/// installs its own handler or resets it never sees Slurm's signal either:
/// libckpt keeps the signal aside (`ckpt-core/src/preload/ask.rs`). The
/// batch step gets `--signal=B:...` alone.
fn program_command(o: &TaskOpts) -> Vec<OsString> {
    let Ok(me) = std::env::current_exe() else {
        return o.command.clone();
    };
    let mut cmd = vec![me.into_os_string(), "slurm-exec".into()];
    if !o.batch {
        cmd.extend(["--ignore".into(), o.signal.to_string().into()]);
    }
    cmd.push("--".into());
    cmd.extend(o.command.iter().cloned());
    cmd
}

/// `ckpt slurm-exec [--ignore SIGNUM] -- ARGV...`: exec ARGV with `SIGPIPE`
/// at its default and SIGNUM ignored.
pub fn exec_ignoring(args: &[OsString]) -> Result<i32, Failure> {
    let bad = |msg: String| Failure { msg, code: 2 };
    let usage = || bad("usage: ckpt slurm-exec [--ignore SIGNUM] -- ARGV...".into());
    let (ignore, rest) = match args.first().and_then(|a| a.to_str()) {
        Some("--ignore") => {
            let num = args.get(1).ok_or_else(usage)?.to_string_lossy();
            let sig = num
                .parse::<i32>()
                .ok()
                .and_then(|n| nix::sys::signal::Signal::try_from(n).ok())
                .ok_or_else(|| bad(format!("slurm-exec: --ignore {num}: not a signal number")))?;
            (Some(sig), args.get(2..).unwrap_or_default())
        }
        _ => (None, args),
    };
    let Some((dashes, argv)) = rest.split_first() else {
        return Err(usage());
    };
    if dashes != "--" {
        return Err(usage());
    }
    let Some(prog) = argv.first() else {
        return Err(usage());
    };
    if let Some(sig) = ignore {
        // SAFETY: SIG_IGN installs no handler code; we are single-threaded
        // and about to exec.
        unsafe { nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::SigIgn) }
            .map_err(|e| format!("cannot ignore signal {sig}: {e}"))?;
    }
    let mut cmd = std::process::Command::new(prog);
    cmd.args(argv.get(1..).unwrap_or_default());
    if let Some(sig) = ignore {
        // libckpt keeps the signal aside in every process of the program,
        // so that one installing a handler (Open MPI's orted forwards
        // SIGUSR1 to its ranks) never sees Slurm's requests to the step
        // (ckpt-core/src/preload/ask.rs).
        cmd.env(ckpt::preload::ask::ENV_ASK_SIGNAL, (sig as i32).to_string());
    }
    // std's exec resets SIGPIPE to its default and clears the signal mask.
    let err = std::os::unix::process::CommandExt::exec(&mut cmd);
    Err(Failure {
        msg: format!("cannot run {}: {err}", prog.to_string_lossy()),
        code: if err.kind() == std::io::ErrorKind::NotFound {
            127
        } else {
            126
        },
    })
}

/// When the job ran to its end: the images of its steps' tasks (kept for
/// the job's checkpoints), and the job's own files.
fn remove_step_dirs(job_dir: &Path) {
    let Ok(rd) = fs::read_dir(job_dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let step = name
            .strip_prefix("step")
            .or_else(|| name.split_once(".step").map(|(_, n)| n))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()));
        if step && job::valid_step_dir(&name) {
            let Ok(tasks) = fs::read_dir(e.path()) else {
                continue;
            };
            for t in tasks.flatten() {
                if let Ok(d) = CheckpointDir::open(&t.path()) {
                    let _ = d.remove_all();
                    let _ = d.remove(COMPLETED);
                    let _ = d.remove(job::ACK);
                    let _ = d.remove(".ckpt.lock");
                    let _ = d.remove(ckpt::image::generation::PINNED);
                }
                let _ = fs::remove_dir(t.path());
            }
            let _ = fs::remove_dir(e.path());
        }
        // Where connections between tasks met at a restart (emptied by
        // the tasks, but for a restart that failed half-way).
        if name
            .strip_prefix(job::MEETING_PREFIX)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()))
        {
            // (remove_dir_all does not follow symbolic links.)
            let _ = fs::remove_dir_all(e.path());
        }
    }
    for f in [job::REQUEST, job::EPOCH] {
        let _ = fs::remove_file(job_dir.join(f));
    }
}

/// What the signal hook needs.
struct HookState<'a> {
    opts: &'a TaskOpts,
    dir: &'a CheckpointDir,
    outputs: &'a [outputs::Output],
    requeued: bool,
    /// A SIGTERM arrived (Slurm is ending the step).
    terminated: bool,
    /// The job's directory (batch step, or a task of a step of a batch job).
    job_dir: Option<&'a Path>,
    /// The steps' tasks held by a job checkpoint of the batch step.
    held: Option<job::Held>,
}

impl HookState<'_> {
    fn on_signal(&mut self, sig: i32, coord: &Arc<Coordinator>) -> bool {
        // Slurm ends a step it cancels or requeues with SIGTERM (then
        // SIGKILL): an end after it is not the program's own.
        if sig == libc::SIGTERM {
            self.terminated = true;
        }
        if sig == libc::SIGALRM && self.opts.interval > 0 {
            if let Err(e) = self.checkpoint(coord, false) {
                say_problem(&format!("periodic checkpoint failed: {e}"));
            }
            self.release();
            return true;
        }
        if sig != self.opts.signal {
            return false;
        }
        if self.requeued {
            return true;
        }
        let name = signal_name(sig);
        say(&format!("SIG{name} received: checkpointing"));
        let ok = match self.checkpoint(coord, true) {
            Ok(()) => true,
            Err(e) => {
                say_problem(&format!("checkpoint failed: {e}"));
                false
            }
        };
        if !self.opts.batch {
            return true;
        }
        if !ok {
            self.release();
            let older = self
                .dir
                .list()
                .map(|l| l.iter().any(|g| g.state == "complete"))
                .unwrap_or(false);
            if !older {
                say_problem(
                    "the job is NOT requeued: it has no checkpoint to resume from, so a requeue would \
                     start it again from the beginning; it keeps running until it ends or reaches its \
                     time limit",
                );
                return true;
            }
            say("requeueing the job anyway: it will resume from its previous checkpoint");
        }
        self.requeued = requeue();
        if !self.requeued {
            self.release();
        }
        if ok {
            self.keep_lines_after();
        }
        true
    }

    /// Lets the steps' tasks held by a job checkpoint continue.
    fn release(&mut self) {
        if let Some(h) = self.held.take() {
            h.release();
        }
    }

    /// Saves our lines written after the newest checkpoint (its size, the
    /// requeue) next to the saved copy of the error file: Slurm truncates
    /// that file on requeue, and the restart puts them back after the copy.
    fn keep_lines_after(&self) {
        let Some((path, _)) = outputs::stderr_end() else {
            return;
        };
        let Some(out) = self.outputs.iter().find(|o| o.path == path) else {
            return;
        };
        let Ok(Some(newest)) = self.dir.list().map(|l| {
            l.into_iter()
                .filter(|g| g.state == "complete")
                .map(|g| g.path)
                .next_back()
        }) else {
            return;
        };
        let generation = newest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let lines = SAID.lock().map(|s| s.join("\n")).unwrap_or_default();
        outputs::keep_lines_after(self.dir, out.fd, &generation, &lines);
    }

    /// A checkpoint: of the whole job in the batch step (with the steps'
    /// tasks, [`job`]), else of this task; `on_signal`: taken on the
    /// checkpoint signal (in a step's task, possibly the batch step's
    /// request).
    fn checkpoint(&mut self, coord: &Arc<Coordinator>, on_signal: bool) -> Result<(), String> {
        // Our own lines ("checkpointing") may end the error file; they belong
        // before the checkpoint too.
        let said = outputs::stderr_end();
        if let Ok(mut lines) = SAID.lock() {
            lines.clear();
        }
        let done = if self.opts.batch
            && let Some(job_dir) = self.job_dir
        {
            let outputs: Vec<PathBuf> = self.outputs.iter().map(|o| o.path.clone()).collect();
            let name = signal_name(self.opts.signal);
            let (done, held) = job::checkpoint(
                coord,
                &job::JobCheckpoint {
                    job_dir,
                    signal: &name,
                    outputs: &outputs,
                },
            )?;
            self.held = held;
            job::repin(job_dir, self.dir);
            done
        } else {
            // The batch step's request: this checkpoint is part of the job's
            // and the program stays stopped after it until released.
            let request = if on_signal && self.job_dir.is_some() {
                job::pending_request(&self.opts.dir)
            } else {
                None
            };
            let cut = request.as_deref().map(|t| job::cut(&self.opts.dir, t));
            let r = coord
                .checkpoint_with(cut.as_ref().map(|c| c as &dyn Fn() -> Result<(), String>))
                .map_err(|mut e| {
                    e.why = super::mpi::with_mpi_hint(
                        e.why,
                        std::env::var("SLURM_MPI_TYPE").ok().as_deref(),
                    );
                    e
                });
            if let Some(token) = &request
                && let Some(n) = job::answer(coord, &self.opts.dir, token, &r)
            {
                let mut pins = self.dir.pinned();
                pins.push(n);
                if let Err(e) = self.dir.pin(&pins) {
                    say_problem(&format!(
                        "cannot keep generation {n} for the job's checkpoint: {e}"
                    ));
                }
            }
            // A condition that passes by itself (bytes on their way between
            // tasks) fails only this attempt: the batch step tries the job's
            // checkpoint again and reports its outcome, so a task says
            // nothing about it.
            if request.is_some()
                && let Err(e) = &r
                && e.passes
            {
                return Ok(());
            }
            r.map_err(|e| e.to_string())?
        };
        say(&format!(
            "checkpoint {} written ({} process{}, {}, program paused {:.1} ms, durable after {:.1} ms)",
            done.path.display(),
            done.processes,
            if done.processes == 1 { "" } else { "es" },
            super::checkpoint::human_bytes(done.bytes),
            done.pause_us as f64 / 1000.0,
            done.total_us as f64 / 1000.0
        ));
        match self.dir.load(&done.path) {
            Ok(g) => {
                for problem in outputs::save(self.dir, &g, self.outputs, said.as_ref()) {
                    say_problem(&problem);
                }
            }
            Err(e) => say(&format!("cannot read back {}: {e}", done.path.display())),
        }
        Ok(())
    }
}

fn signal_name(sig: i32) -> String {
    [
        "USR1", "USR2", "HUP", "INT", "QUIT", "TERM", "ALRM", "URG", "WINCH", "XCPU", "XFSZ",
        "VTALRM", "PROF", "PWR",
    ]
    .iter()
    .find(|n| signal_number(n) == Some(sig))
    .map_or_else(|| sig.to_string(), |n| (*n).to_owned())
}

/// How this job is named to `scontrol` and `scancel`: `$SLURM_JOB_ID`, or
/// `<array job id>_<task id>` for a task of a job array. The job id of an
/// array's task can be the array's own id (the task that holds the array's
/// record), and Slurm takes that id for the whole array: `scontrol requeue`
/// would requeue every task, before they have checkpointed, and `scontrol
/// show step` would list every task's steps (docs/batch-jobs.md).
pub fn job_ref() -> Result<String, String> {
    job_ref_from(|k| std::env::var(k).ok())
}

fn job_ref_from(var: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let number =
        |k: &str| var(k).filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()));
    match (number("SLURM_ARRAY_JOB_ID"), number("SLURM_ARRAY_TASK_ID")) {
        (Some(array), Some(task)) => Ok(format!("{array}_{task}")),
        _ => number("SLURM_JOB_ID")
            .ok_or_else(|| "SLURM_JOB_ID is not set (not running under Slurm?)".to_string()),
    }
}

/// `scontrol requeue` of this job ([`job_ref`]); true when Slurm accepted it.
fn requeue() -> bool {
    let job = match job_ref() {
        Ok(j) => j,
        Err(e) => {
            say_problem(&format!("cannot requeue: {e}"));
            return false;
        }
    };
    let tried = scontrol_candidates(
        SLURMSTEPD.get().cloned().flatten(),
        std::env::var_os("PATH").as_deref(),
    );
    let Some(scontrol) = tried.iter().find(|p| p.is_file()) else {
        say_problem(&format!(
            "cannot requeue job {job}: no scontrol found (tried {}); the checkpoint is kept",
            tried
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        return false;
    };
    let scontrol = scontrol.display().to_string();
    match Command::new(&scontrol).args(["requeue", &job]).output() {
        Ok(out) if out.status.success() => {
            say(&format!(
                "job {job} requeued: it resumes from this checkpoint when Slurm starts it again"
            ));
            true
        }
        Ok(out) => {
            say_problem(&format!(
                "`scontrol requeue {job}` failed ({}): {}; the checkpoint is kept: the job ends at \
                 its time limit, then `scontrol requeue {job}` or resubmitting with the same \
                 --checkpoint-dir resumes it",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
            false
        }
        Err(e) => {
            say_problem(&format!(
                "cannot run {scontrol} to requeue job {job}: {e}; the checkpoint is kept"
            ));
            false
        }
    }
}

/// The `slurmstepd` that started this task (our parent when the plugin
/// exec'ed us), read once at start: its installation has the `scontrol`
/// that matches the running Slurm.
static SLURMSTEPD: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();

fn note_slurmstepd() {
    let exe = std::fs::read_link(format!("/proc/{}/exe", std::os::unix::process::parent_id()))
        .ok()
        .filter(|p| p.file_name().is_some_and(|n| n == "slurmstepd"));
    let _ = SLURMSTEPD.set(exe);
}

/// Where to look for the Slurm command `name` (`scancel`, ...): as for
/// `scontrol` ([`scontrol_candidates`]).
pub fn tool_candidates(name: &str) -> Vec<PathBuf> {
    scontrol_candidates(
        SLURMSTEPD.get().cloned().flatten(),
        std::env::var_os("PATH").as_deref(),
    )
    .into_iter()
    .map(|p| p.with_file_name(name))
    .collect()
}

/// Where to look for `scontrol`, best first: next to the `slurmstepd` that
/// runs the job (`<prefix>/sbin/slurmstepd` → `<prefix>/bin/scontrol`), then
/// the task's `PATH`, then the usual places.
fn scontrol_candidates(stepd: Option<PathBuf>, path: Option<&std::ffi::OsStr>) -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(prefix) = stepd
        .as_deref()
        .and_then(Path::parent)
        .and_then(Path::parent)
    {
        v.push(prefix.join("bin/scontrol"));
    }
    if let Some(path) = path {
        v.extend(std::env::split_paths(path).map(|d| d.join("scontrol")));
    }
    for p in ["/usr/bin/scontrol", "/usr/local/bin/scontrol"] {
        v.push(PathBuf::from(p));
    }
    let mut seen = std::collections::HashSet::new();
    v.retain(|p| seen.insert(p.clone()));
    v
}

/// Blocks SIGALRM (the interval timer) and the checkpoint signal from the
/// start, so that one arriving before `ckpt launch`/`restart` blocks its
/// signals waits for the hook instead of killing the task.
fn block_alarm(signal: i32) {
    let mut set = nix::sys::signal::SigSet::empty();
    set.add(nix::sys::signal::Signal::SIGALRM);
    if let Ok(sig) = nix::sys::signal::Signal::try_from(signal) {
        set.add(sig);
    }
    let _ = set.thread_block();
}

fn set_timer(secs: u64) {
    let secs = libc::time_t::try_from(secs).unwrap_or(libc::time_t::MAX);
    let tv = libc::timeval {
        tv_sec: secs,
        tv_usec: 0,
    };
    let it = libc::itimerval {
        it_interval: tv,
        it_value: tv,
    };
    // SAFETY: `it` is a valid itimerval; the old value is not wanted (null).
    unsafe { libc::setitimer(libc::ITIMER_REAL, &it, std::ptr::null_mut()) };
}

/// Periodic checkpoints: SIGALRM every `secs` to this process (blocked, so
/// it reaches the supervisor's `sigwaitinfo` and the hook).
fn start_timer(secs: u64) {
    if secs > 0 {
        set_timer(secs);
    }
}

fn stop_timer() {
    set_timer(0);
}

/// The newest generation that loads (the one the restart tries first).
fn newest_loadable(dir: &CheckpointDir) -> Option<LoadedGeneration> {
    dir.candidates().ok()?.into_iter().find_map(|(_, r)| r.ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_tasks_are_named_by_array_and_task() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| (*v).to_string())
            }
        };
        assert_eq!(
            job_ref_from(env(&[("SLURM_JOB_ID", "41")])),
            Ok("41".into())
        );
        assert_eq!(
            job_ref_from(env(&[
                ("SLURM_JOB_ID", "27"),
                ("SLURM_ARRAY_JOB_ID", "27"),
                ("SLURM_ARRAY_TASK_ID", "2")
            ])),
            Ok("27_2".into())
        );
        // Half an array pair, or a value that is not a number, is not used.
        assert_eq!(
            job_ref_from(env(&[("SLURM_JOB_ID", "29"), ("SLURM_ARRAY_JOB_ID", "27")])),
            Ok("29".into())
        );
        assert_eq!(
            job_ref_from(env(&[
                ("SLURM_JOB_ID", "29"),
                ("SLURM_ARRAY_JOB_ID", "27"),
                ("SLURM_ARRAY_TASK_ID", "1 2")
            ])),
            Ok("29".into())
        );
        assert!(job_ref_from(env(&[])).is_err());
        assert!(job_ref_from(env(&[("SLURM_JOB_ID", "27;rm")])).is_err());
    }

    fn args(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    fn latin1(b: &[u8]) -> OsString {
        use std::os::unix::ffi::OsStringExt;
        OsString::from_vec(b.to_vec())
    }

    #[test]
    fn non_utf8_dirs_and_arguments_reach_the_program_unchanged() {
        let o = parse(&[
            latin1(b"--dir=/ck/caf\xe9"),
            "--lib".into(),
            latin1(b"/l/\xff.so"),
            "--".into(),
            "/bin/echo".into(),
            latin1(b"caf\xe9"),
        ])
        .unwrap();
        assert_eq!(o.dir, PathBuf::from(latin1(b"/ck/caf\xe9")));
        assert_eq!(o.lib, Some(PathBuf::from(latin1(b"/l/\xff.so"))));
        assert_eq!(o.command, vec!["/bin/echo".into(), latin1(b"caf\xe9")]);
        let cmd = program_command(&o);
        assert_eq!(cmd.last(), Some(&latin1(b"caf\xe9")));
        let o = parse(&["--check".into(), "--dir".into(), latin1(b"/\xe9")]).unwrap();
        assert_eq!(o.dir, PathBuf::from(latin1(b"/\xe9")));
        let e = parse(&[
            "--dir".into(),
            "/d".into(),
            "--signal".into(),
            latin1(b"USR\xe9"),
            "--".into(),
            "x".into(),
        ])
        .unwrap_err();
        assert!(e.contains("not valid UTF-8"), "{e}");
    }

    #[test]
    fn parses_everything_the_plugin_passes() {
        let o = parse(&args(&[
            "--dir",
            "/ck/batch",
            "--interval=60",
            "--signal",
            "USR2",
            "--batch",
            "--keep-images",
            "--incremental",
            "off",
            "--compress",
            "--lib",
            "/l/libckpt.so",
            "--",
            "/bin/prog",
            "--dir",
        ]))
        .unwrap();
        assert_eq!(
            o,
            TaskOpts {
                dir: "/ck/batch".into(),
                interval: 60,
                signal: libc::SIGUSR2,
                batch: true,
                keep_images: true,
                no_incremental: true,
                compress: true,
                lib: Some("/l/libckpt.so".into()),
                check: false,
                max_file_copy: None,
                command: args(&["/bin/prog", "--dir"]),
            }
        );
    }

    #[test]
    fn refuses_what_it_cannot_use() {
        for (a, want) in [
            (&["--", "x"][..], "missing --dir"),
            (&["--dir", "/d"][..], "missing the task's command"),
            (
                &["--dir", "/d", "--signal", "KILLME", "--", "x"][..],
                "not a signal",
            ),
            (&["--bogus"][..], "unknown option --bogus"),
        ] {
            let e = parse(&args(a)).unwrap_err();
            assert!(e.contains(want), "{a:?}: {e}");
        }
    }

    #[test]
    fn the_program_starts_through_slurm_exec() {
        let mut o = parse(&args(&["--dir", "/d", "--batch", "--", "prog", "a"])).unwrap();
        let cmd = program_command(&o);
        assert_eq!(cmd[1..], args(&["slurm-exec", "--", "prog", "a"])[..]);
        o.batch = false;
        o.signal = libc::SIGUSR2;
        let cmd = program_command(&o);
        assert_eq!(
            cmd[1..],
            args(&["slurm-exec", "--ignore", "12", "--", "prog", "a"])[..]
        );
        for bad in [
            &["--ignore"][..],
            &["x"],
            &["--"],
            &["--ignore", "999", "--", "p"],
        ] {
            assert!(exec_ignoring(&args(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn scontrol_comes_from_the_running_slurm_first() {
        let v = scontrol_candidates(
            Some("/opt/slurm-25.11/sbin/slurmstepd".into()),
            Some(std::ffi::OsStr::new("/usr/bin:/opt/x/bin")),
        );
        assert_eq!(
            v,
            [
                "/opt/slurm-25.11/bin/scontrol",
                "/usr/bin/scontrol",
                "/opt/x/bin/scontrol",
                "/usr/local/bin/scontrol"
            ]
            .map(PathBuf::from)
        );
        assert_eq!(
            scontrol_candidates(None, None)[0],
            PathBuf::from("/usr/bin/scontrol")
        );
    }

    #[test]
    fn signal_names() {
        assert_eq!(signal_number("USR1"), Some(libc::SIGUSR1));
        assert_eq!(signal_number("sigusr2"), Some(libc::SIGUSR2));
        assert_eq!(signal_number("10"), Some(10));
        assert_eq!(signal_number("KILLME"), None);
        assert_eq!(signal_name(libc::SIGUSR1), "USR1");
    }
}
