//! One function per SPANK callback, each checking its context first.
//!
//! | callback        | context                | does                                        |
//! |-----------------|------------------------|---------------------------------------------|
//! | `init`          | all                    | registers the options (srun, sbatch, salloc, slurmstepd); parses the plugstack.conf arguments; in slurmd, runs the node check ([`crate::node_check`]) |
//! | option callback | srun, sbatch, salloc, slurmstepd | validates a value, records it      |
//! | `init_post_opt` | srun, sbatch, salloc   | checks the options together (a directory must come from somewhere) |
//! | `local_user_init` | srun, once the step exists | passes a checkpointed step's `--task-prolog` on to `ckpt slurm-task` |
//! | `init_post_opt` | slurmstepd             | for a checkpointed step, starts the relay of `ckpt slurm-task`'s messages to the slurmd log ([`crate::log_relay`]) |
//! | `task_init`     | slurmstepd, as the user, in the forked task just before `execve` | creates the checkpoint directory, sets `LD_PRELOAD` and `CKPT_*` (and the relay's descriptor), checks the task's images, execs `ckpt slurm-task` |
//! | `exit`          | slurmstepd             | logs what is left in the relay and stops it |
//!
//! Option values travel from sbatch to the batch step and to every `srun`
//! inside it in `_SLURM_SPANK_OPTION_ckpt_*` variables; slurmstepd may run
//! an option callback twice, so callbacks only overwrite what they record.

use std::ffi::{OsStr, OsString, c_int};
use std::io::Read;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use slurm_headers::sys;

use crate::after_task_init;
use crate::ckpt_dir;
use crate::error::PluginError;
use crate::options::{self, JobValues, OptionError, PluginConfig, UserOptions};
use crate::spank::{self, Context, OptionSpec, Spank};
use crate::task_env::{self, TaskSettings};

const VAL_ENABLE: c_int = 1;
const VAL_DIR: c_int = 2;
const VAL_INTERVAL: c_int = 3;

/// The options, as shown by `srun --help`, `sbatch --help`, `salloc --help`.
pub static OPTIONS: [OptionSpec; 3] = [
    OptionSpec {
        name: c"checkpoint",
        arginfo: None,
        usage: c"Checkpoint this job into the site's default directory, at the site's default interval (see --checkpoint-dir and --checkpoint-interval).",
        val: VAL_ENABLE,
    },
    OptionSpec {
        name: c"checkpoint-dir",
        arginfo: Some(c"DIR"),
        usage: c"Checkpoint this job into DIR (created as you, mode 0700, if missing). DIR may contain %j (job id), %u (user), %x (job name), %A and %a (array job and task id); a relative DIR is taken against the submit directory.",
        val: VAL_DIR,
    },
    OptionSpec {
        name: c"checkpoint-interval",
        arginfo: Some(c"SECONDS"),
        usage: c"Checkpoint this job every SECONDS, or 30s, 5m, 2h; 0 means no periodic checkpoint (only on signal or preemption).",
        val: VAL_INTERVAL,
    },
];

/// What the plugin remembers between callbacks of one process.
struct State {
    /// The plugstack.conf arguments, once `init` has parsed them.
    config: Option<Result<PluginConfig, OptionError>>,
    /// The options seen by the option callbacks.
    user: UserOptions,
}

static STATE: Mutex<State> = Mutex::new(State {
    config: None,
    user: UserOptions {
        enable: false,
        dir: None,
        interval: None,
    },
});

/// The state; a panic in an earlier callback does not make it unusable.
fn state() -> MutexGuard<'static, State> {
    STATE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `slurm_spank_init`: registers the options, then parses the plugin's
/// arguments. The options are registered even when the arguments are bad, so
/// that a user who asks for checkpointing is told why it is unavailable
/// instead of getting "unrecognized option".
pub fn init(
    spank: &Spank,
    args: &[OsString],
    option_cb: sys::spank_opt_cb_f,
) -> Result<(), PluginError> {
    let context = spank::context();
    if matches!(
        context,
        Context::Local | Context::Remote | Context::Allocator
    ) {
        for spec in &OPTIONS {
            spank.register_option(spec, option_cb)?;
        }
    }
    let parsed = PluginConfig::parse(args);
    let result = parsed.clone().map(drop).map_err(PluginError::Config);
    if context == Context::Slurmd
        && let Ok(config) = &parsed
    {
        for f in crate::node_check::run(&config.ckpt_bin) {
            if f.error {
                spank::log_error(&f.text);
            } else {
                spank::log_info(&f.text);
            }
        }
    }
    state().config = Some(parsed);
    result
}

/// The option callback: refuses a bad value at submission (srun/sbatch
/// print the message and exit without queueing anything). The value is
/// bytes: a directory need not be UTF-8.
pub fn option(val: c_int, optarg: Option<&OsStr>) -> Result<(), PluginError> {
    let mut state = state();
    let config = match &state.config {
        Some(Ok(config)) => config.clone(),
        Some(Err(e)) => return Err(PluginError::SiteMisconfigured(e.clone())),
        None => PluginConfig::default(),
    };
    let value = optarg.unwrap_or_default();
    match val {
        VAL_ENABLE => state.user.enable = true,
        VAL_DIR => {
            options::validate_dir_pattern(&format!("--{}", options::OPT_DIR), value)?;
            state.user.dir = Some(value.to_owned());
        }
        VAL_INTERVAL => {
            let value = options::text(&format!("--{}", options::OPT_INTERVAL), value)?;
            config.user_interval(value)?;
            state.user.interval = Some(value.to_owned());
        }
        _ => {}
    }
    Ok(())
}

/// `slurm_spank_init_post_opt`: in srun, sbatch and salloc, checks that the
/// options make sense together with the site's defaults; in slurmstepd,
/// for a checkpointed step, starts the relay of `ckpt slurm-task`'s
/// messages to the slurmd log ([`crate::log_relay`]).
pub fn init_post_opt(spank: &Spank) -> Result<(), PluginError> {
    if spank::context() == Context::Remote {
        if !state().user.any() {
            return Ok(());
        }
        let job = spank.item_u32(sys::spank_item::S_JOB_ID, "S_JOB_ID")?;
        let step = spank.item_u32(sys::spank_item::S_JOB_STEPID, "S_JOB_STEPID")?;
        if step == task_env::EXTERN_STEP || step == task_env::INTERACTIVE_STEP {
            return Ok(());
        }
        // Without it the messages still reach the job's stderr.
        if let Err(e) = crate::log_relay::start(job, step) {
            spank::log_error(&format!(
                "job {job} step {step}: cannot relay ckpt's messages to this log: {e}"
            ));
        }
        return Ok(());
    }
    if !matches!(spank::context(), Context::Local | Context::Allocator) {
        return Ok(());
    }
    let state = state();
    if !state.user.any() {
        return Ok(());
    }
    match &state.config {
        Some(Ok(config)) => {
            config.resolve(&state.user)?;
            if spank::context() == Context::Allocator {
                note_missing_signal(config);
            }
            Ok(())
        }
        Some(Err(e)) => Err(PluginError::SiteMisconfigured(e.clone())),
        None => Ok(()),
    }
}

/// `slurm_spank_exit`: in slurmstepd, logs what is left of the relay's
/// pipe and stops it.
pub fn exit() -> Result<(), PluginError> {
    if spank::context() == Context::Remote {
        crate::log_relay::stop();
    }
    Ok(())
}

/// `slurm_spank_local_user_init` (srun, once the step exists, before it is
/// launched): a checkpointed step's `--task-prolog` is passed to `ckpt
/// slurm-task` (slurmstepd runs it after `task_init`, too late for ckpt).
pub fn local_user_init(spank: &Spank) -> Result<(), PluginError> {
    if spank::context() != Context::Local || !state().user.any() {
        return Ok(());
    }
    after_task_init::pass_user_task_prolog(spank)
}

/// In sbatch: a checkpointed job without a warning signal is checkpointed
/// only periodically, never just before its time limit or at preemption.
/// A SPANK plugin cannot add `--signal` to the job (22.05: no item for it,
/// and `SBATCH_SIGNAL` is read before the plugin sees the options), so the
/// user is told how to ask for one.
fn note_missing_signal(config: &PluginConfig) {
    let Ok(cmdline) = std::fs::read("/proc/self/cmdline") else {
        return;
    };
    // Arguments as bytes: a script path need not be UTF-8.
    let args: Vec<&OsStr> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(OsStr::from_bytes)
        .collect();
    let Some((argv0, rest)) = args.split_first() else {
        return;
    };
    if !argv0.as_bytes().ends_with(b"sbatch") {
        return;
    }
    // The script: the first argument naming a regular file that starts
    // with "#!" (sbatch reads it from stdin otherwise).
    let script = rest.iter().find_map(|a| script_head(Path::new(a)));
    // Only to look for `--signal`: text is enough.
    let rest: Vec<String> = rest
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let env = std::env::var("SBATCH_SIGNAL").ok();
    if options::sbatch_has_signal(&rest, env.as_deref(), script.as_deref()) {
        return;
    }
    let sig = &config.signal;
    spank::log_note(&format!(
        "note: this job has no warning signal, so it is checkpointed only every \
         --checkpoint-interval, not before its time limit or when it is preempted; add \
         --signal=B:{sig}@120 (or '#SBATCH --signal=B:{sig}@120') to have it checkpointed and \
         requeued 120 s before its time limit and at preemption"
    ));
}

/// How much of a script is read for its `#SBATCH` lines (sbatch stops at
/// the first command; they are at the top).
pub const SCRIPT_HEAD_MAX: u64 = 64 * 1024;

/// The start of `path` (at most [`SCRIPT_HEAD_MAX`] bytes) when it is a
/// regular file that starts with `#!`. Any argument of sbatch may be given
/// here: a FIFO, a device (`/dev/zero`), a huge file. So: `stat` first and
/// only regular files are opened; the open is non-blocking and takes no
/// controlling terminal, and `fstat` checks that the file opened is still a
/// regular one; then at most two bytes, and if they are `#!`, at most
/// [`SCRIPT_HEAD_MAX`] bytes are read. Symlinks are followed (a script may be
/// one), as sbatch follows them.
pub fn script_head(path: &Path) -> Option<String> {
    if !std::fs::metadata(path).ok()?.is_file() {
        return None;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut head = Vec::new();
    let mut limited = file.take(SCRIPT_HEAD_MAX);
    Read::by_ref(&mut limited)
        .take(2)
        .read_to_end(&mut head)
        .ok()?;
    if head != b"#!" {
        return None;
    }
    limited.read_to_end(&mut head).ok()?;
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// The checkpoint settings of one task.
#[derive(Debug)]
pub struct TaskCheckpoint {
    /// The expanded, created and checked checkpoint directory.
    pub dir: PathBuf,
    /// Interval in seconds, 0 = none.
    pub interval: u64,
    /// The site's settings.
    pub config: PluginConfig,
}

/// `slurm_spank_task_init` (slurmstepd, in the task, as the job's user, just
/// before `execve`). A job without the options is left untouched. A
/// checkpointed task execs `ckpt slurm-task` here, which runs the task's
/// command under checkpoint control or resumes it from its images.
///
/// What slurmstepd would still do between this callback and its own
/// `execve` (`exec_task()` in src/slurmd/slurmstepd/task.c, 22.05 and
/// 25.11): set the job's SELinux context, run the site `TaskProlog` and the
/// user's `--task-prolog`, set `TMPDIR`, stop for a parallel debugger,
/// resolve a relative `argv[0]` in `PATH`, apply the propagated resource
/// limits (`set_user_limits`) and, with `--container`, run the task in its
/// OCI container. `ckpt slurm-task` runs the prologs (the site's path is
/// passed from here, see [`after_task_init`]), then applies `TMPDIR` and
/// the limits; a node where the SELinux context would apply and a job with
/// `--container` are refused here; the rest is in docs/slurm-task-order.md.
pub fn task_init(spank: &Spank, args: &[OsString]) -> Result<(), PluginError> {
    if spank::context() != Context::Remote {
        return Ok(());
    }
    let Some(task) = task_checkpoint(spank, args)? else {
        return Ok(());
    };
    let original_preload = spank.getenv_os(task_env::ENV_PRELOAD)?;
    set_task_env(spank, &task)?;
    let step = spank.item_u32(sys::spank_item::S_JOB_STEPID, "S_JOB_STEPID")?;
    if step == task_env::EXTERN_STEP || step == task_env::INTERACTIVE_STEP {
        return Ok(());
    }
    let rank = spank.item_u32(sys::spank_item::S_TASK_GLOBAL_ID, "S_TASK_GLOBAL_ID")?;
    let env_dir = spank.getenv(task_env::ENV_STEP_DIR)?;
    // Read as the job's user (slurmstepd has dropped to it), in the user's
    // own directory.
    let epoch = std::fs::read_to_string(task.dir.join(task_env::EPOCH_FILE)).ok();
    let step_dir = task_env::step_dir(step, env_dir.as_deref(), epoch.as_deref());
    let task_dir = task_env::task_dir(&task.dir, step, rank, &step_dir);
    after_task_init::check_selinux()?;
    after_task_init::check_container(spank.getenv("SLURM_CONTAINER")?.as_deref())?;
    let site_prolog = after_task_init::site_task_prolog()?;
    let job_argv = spank.job_argv()?;
    // The batch script is a file of slurmd's spool directory, which may
    // have another path on the node the job resumes on.
    let script = (step == task_env::BATCH_STEP)
        .then(|| job_argv.first())
        .flatten()
        .map(|a| std::ffi::OsStr::from_bytes(a.as_bytes()));
    preflight(&task, &task_dir, script)?;
    let exec = task_env::TaskExec {
        ckpt_bin: &task.config.ckpt_bin,
        task_dir: &task_dir,
        interval: task.interval,
        signal: &task.config.signal,
        batch: step == task_env::BATCH_STEP,
        keep_images: task.config.keep_images,
        incremental: task.config.incremental,
        compress: task.config.compress,
        max_file_copy: task.config.max_file_copy.as_deref(),
        libckpt: &task.config.libckpt,
    };
    let argv = task_env::exec_argv(&exec, &job_argv);
    let preload = task_env::preload_without(original_preload.as_deref(), &task.config.libckpt);
    let mut env = task_env::exec_env(&spank.job_env()?, preload.as_deref());
    if let Some(fd) = crate::log_relay::task_fd()
        && let Ok(v) = std::ffi::CString::new(format!("{}={fd}", crate::log_relay::ENV_FD))
    {
        env.push(v);
    }
    let env = after_task_init::with_site_prolog(env, site_prolog.as_deref());
    let path = std::ffi::CString::new(task.config.ckpt_bin.as_str()).unwrap_or_default();
    // Only returns on failure.
    let Err(e) = nix::unistd::execve(&path, &argv, &env);
    Err(PluginError::Exec {
        path: task.config.ckpt_bin.clone(),
        error: e.desc().to_owned(),
    })
}

/// Before resuming a task, checks (as the user, with `ckpt slurm-task
/// --check`) that one of its generations can be loaded, so that a corrupt or
/// incomplete checkpoint is reported here, where the message reaches both
/// the job's stderr and the slurmd log, and the task fails instead of
/// starting over.
fn preflight(
    task: &TaskCheckpoint,
    task_dir: &std::path::Path,
    script: Option<&std::ffi::OsStr>,
) -> Result<(), PluginError> {
    let has_images = std::fs::read_dir(task_dir).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            let name = e.file_name();
            let name = name.as_bytes();
            name.starts_with(b"gen-") && !name.ends_with(b".tmp")
        })
    });
    if !has_images {
        return Ok(());
    }
    let out = std::process::Command::new(&task.config.ckpt_bin)
        .args(["slurm-task", "--check", "--dir"])
        .arg(task_dir)
        .args(
            script
                .map(|s| [std::ffi::OsStr::new("--"), s])
                .into_iter()
                .flatten(),
        )
        .env_clear()
        .output()
        .map_err(|e| PluginError::Exec {
            path: task.config.ckpt_bin.clone(),
            error: e.to_string(),
        })?;
    if out.status.success() {
        return Ok(());
    }
    let why = String::from_utf8_lossy(&out.stderr);
    let why = why
        .lines()
        .map(|l| l.strip_prefix("ckpt: ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("; ");
    Err(PluginError::CannotResume {
        dir: task_dir.display().to_string(),
        why,
    })
}

/// The user's options as slurmstepd received them.
fn user_options(spank: &Spank) -> Result<UserOptions, PluginError> {
    let [enable, dir, interval] = &OPTIONS;
    let interval = match spank.getopt(interval)?.flatten() {
        Some(v) => {
            let what = format!("--{}", options::OPT_INTERVAL);
            Some(options::text(&what, &v)?.to_owned())
        }
        None => None,
    };
    Ok(UserOptions {
        enable: spank.getopt(enable)?.is_some(),
        dir: spank.getopt(dir)?.flatten(),
        interval,
    })
}

/// Works out, creates and checks the task's checkpoint directory; `None`
/// when the job did not ask for checkpointing.
pub fn task_checkpoint(
    spank: &Spank,
    args: &[OsString],
) -> Result<Option<TaskCheckpoint>, PluginError> {
    let user = user_options(spank)?;
    if !user.any() {
        return Ok(None);
    }
    let config = PluginConfig::parse(args).map_err(PluginError::SiteMisconfigured)?;
    let Some(resolved) = config.resolve(&user)? else {
        return Ok(None);
    };
    let uid = spank.item_u32(sys::spank_item::S_JOB_UID, "S_JOB_UID")?;
    let euid = nix::unistd::geteuid().as_raw();
    if euid != uid {
        return Err(PluginError::WrongUser { euid, uid });
    }
    let job = job_values(spank, uid)?;
    let dir = options::expand_dir(&resolved.pattern, &job)?;
    ckpt_dir::prepare(&dir, uid)?;
    if let Err(e) = std::fs::File::open(&config.libckpt) {
        return Err(PluginError::LibckptMissing {
            path: config.libckpt.clone(),
            error: e.to_string(),
        });
    }
    Ok(Some(TaskCheckpoint {
        dir,
        interval: resolved.interval,
        config,
    }))
}

fn job_values(spank: &Spank, uid: u32) -> Result<JobValues, PluginError> {
    let job_id = spank.item_u32(sys::spank_item::S_JOB_ID, "S_JOB_ID")?;
    let array_id = spank.item_u32(sys::spank_item::S_JOB_ARRAY_ID, "S_JOB_ARRAY_ID")?;
    let array = if array_id == 0 {
        None
    } else {
        let task = spank.item_u32(sys::spank_item::S_JOB_ARRAY_TASK_ID, "S_JOB_ARRAY_TASK_ID")?;
        Some((array_id, task))
    };
    let user = user_name(uid);
    Ok(JobValues {
        job_id,
        user,
        // Byte for byte: a name or a directory need not be UTF-8.
        job_name: spank.getenv_os("SLURM_JOB_NAME")?,
        array,
        submit_dir: spank.getenv_os("SLURM_SUBMIT_DIR")?.map(PathBuf::from),
    })
}

/// The name of `uid`, byte for byte (`nix::unistd::User` converts it
/// lossily, and `%u` names a directory); `None` when it has none.
fn user_name(uid: u32) -> Option<OsString> {
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: passwd is plain data (integers and pointers); all-zero is a
        // valid value, overwritten by getpwuid_r.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: `pwd` and `result` are valid for writes; `buf` holds
        // `buf.len()` writable bytes; all outlive the call.
        let rc = unsafe {
            libc::getpwuid_r(
                uid,
                &mut pwd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && buf.len() < (1 << 20) {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 || result.is_null() || pwd.pw_name.is_null() {
            return None;
        }
        // SAFETY: on success pw_name points at a NUL-terminated string
        // inside `buf`, which is still alive.
        let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
        return Some(OsString::from_vec(name.to_bytes().to_vec()));
    }
}

fn set_task_env(spank: &Spank, task: &TaskCheckpoint) -> Result<(), PluginError> {
    let existing = spank.getenv_os(task_env::ENV_PRELOAD)?;
    let settings = TaskSettings {
        dir: &task.dir,
        interval: task.interval,
        signal: &task.config.signal,
        ckpt_bin: &task.config.ckpt_bin,
        libckpt: &task.config.libckpt,
    };
    for (name, value) in task_env::vars(&settings, existing.as_deref()) {
        spank.setenv_os(name, &value)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ckpt-hooks-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// `script_head(path)` in a thread: it must answer within seconds.
    fn head_in_time(path: PathBuf) -> Option<String> {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(script_head(&path));
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("script_head hung")
    }

    #[test]
    fn the_script_check_never_hangs_or_reads_without_bound() {
        let d = scratch("head");
        // A FIFO nobody writes to: opening it for reading would block.
        let fifo = d.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert_eq!(head_in_time(fifo), None);
        // An endless device.
        assert_eq!(head_in_time("/dev/zero".into()), None);
        // A huge (sparse) script: only the first 64 KiB are read.
        let big = d.join("big.sh");
        let mut text = b"#!/bin/bash\n#SBATCH --signal=B:USR1@60\n".to_vec();
        text.resize(100_000, b'\n');
        std::fs::write(&big, &text).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&big)
            .unwrap()
            .set_len(64 << 30)
            .unwrap();
        let head = head_in_time(big).unwrap();
        assert_eq!(head.len() as u64, SCRIPT_HEAD_MAX);
        assert!(options::sbatch_has_signal(&[], None, Some(&head)));
        // A big file that is not a script: two bytes are enough.
        let data = d.join("data");
        std::fs::File::create(&data)
            .unwrap()
            .set_len(64 << 30)
            .unwrap();
        assert_eq!(head_in_time(data), None);
        // A script reached through a symlink, with a Latin-1 name.
        let script = d.join(OsString::from_vec(b"job-\xe9.sh".to_vec()));
        std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
        let link = d.join("link.sh");
        std::os::unix::fs::symlink(&script, &link).unwrap();
        assert_eq!(
            head_in_time(script).as_deref(),
            Some("#!/bin/sh\necho hi\n")
        );
        assert_eq!(head_in_time(link).as_deref(), Some("#!/bin/sh\necho hi\n"));
        assert_eq!(head_in_time(d.join("missing")), None);
        assert_eq!(head_in_time(d.clone()), None);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn user_names_come_from_the_password_database() {
        let me = nix::unistd::geteuid();
        let nix_name = nix::unistd::User::from_uid(me).unwrap().map(|u| u.name);
        assert_eq!(
            user_name(me.as_raw()).map(|n| n.into_string().unwrap()),
            nix_name
        );
        assert_eq!(user_name(0xfff_fff0), None);
    }

    #[test]
    fn a_latin1_checkpoint_dir_option_is_kept_byte_for_byte() {
        let dir = OsString::from_vec(b"/scratch/caf\xe9/%j".to_vec());
        option(VAL_DIR, Some(&dir)).unwrap();
        assert_eq!(state().user.dir.as_ref(), Some(&dir));
        let bad = OsString::from_vec(b"5\xe9".to_vec());
        let e = option(VAL_INTERVAL, Some(&bad)).unwrap_err();
        // (Matched, not displayed: SpankError's Display needs slurm.)
        assert!(
            matches!(e, PluginError::Option(OptionError::NotText { .. })),
            "{e:?}"
        );
    }
}
