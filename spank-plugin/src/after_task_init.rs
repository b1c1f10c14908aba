//! What slurmstepd does for a task after `slurm_spank_task_init`, where a
//! checkpointed task execs `ckpt slurm-task` (docs/slurm-task-order.md):
//!
//! | slurmstepd step          | a checkpointed task                                        |
//! |--------------------------|------------------------------------------------------------|
//! | SELinux `setexeccon`     | refused on a node where it would apply ([`check_selinux`]) |
//! | `--container`            | refused ([`check_container`])                              |
//! | site `TaskProlog`        | run by `ckpt slurm-task`; the path comes in [`ENV_SITE_TASK_PROLOG`], read here from slurmstepd's `slurm_conf` |
//! | `srun --task-prolog`     | run by `ckpt slurm-task`; srun puts the path in [`ENV_USER_TASK_PROLOG`] ([`pass_user_task_prolog`]) |
//! | `TMPDIR`, resource limits | applied by `ckpt slurm-task`                              |
//!
//! Besides the SPANK calls of `spank.rs`, the plugin's one other look into
//! its host process is here: [`site_task_prolog`] reads the `TaskProlog`
//! field of slurmstepd's global `slurm_conf` (exported by slurmstepd and
//! libslurmfull; its type is the public `slurm_conf_t` of `<slurm/slurm.h>`,
//! whose layout is that of the Slurm the plugin is built for, which is the
//! only Slurm that loads it). No SPANK item tells the `TaskProlog`.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use slurm_headers::sys;

use crate::error::PluginError;
use crate::spank::Spank;

/// The site's `TaskProlog` (slurm.conf), for `ckpt slurm-task` only: set by
/// the plugin in the environment `ckpt` starts with (never taken from the
/// job's), and removed by `ckpt` before the program starts.
pub const ENV_SITE_TASK_PROLOG: &str = "CKPT_SITE_TASK_PROLOG";

/// The step's `srun --task-prolog`, set by the plugin in srun. Its name
/// starts with `SLURM` so that srun passes it to the tasks even with
/// `--export=NONE`; `ckpt slurm-task` removes it before the program starts.
pub const ENV_USER_TASK_PROLOG: &str = "SLURM_CKPT_TASK_PROLOG";

/// srun's own variable for `--task-prolog` (an input variable of srun).
const SRUN_ENV_TASK_PROLOG: &str = "SLURM_TASK_PROLOG";

/// The `TaskProlog` of slurm.conf as slurmstepd has it, `None` when the
/// site has none. Fails when slurmstepd's configuration cannot be found:
/// the task is then refused rather than started without the site's prolog.
pub fn site_task_prolog() -> Result<Option<OsString>, PluginError> {
    // SAFETY: dlsym with a valid NUL-terminated name; RTLD_DEFAULT searches
    // the process's global symbols, where slurmstepd exports `slurm_conf`.
    let conf = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"slurm_conf".as_ptr()) };
    if conf.is_null() {
        return Err(PluginError::NotAvailable(
            "cannot read slurmstepd's configuration (no slurm_conf symbol), so the site's \
             TaskProlog could not be run for a checkpointed task; tell the administrator \
             (this ckpt plugin does not match this Slurm)"
                .to_owned(),
        ));
    }
    // SAFETY: `slurm_conf` is slurmstepd's `slurm_conf_t`, loaded before
    // any task is forked; this task is a single-threaded fork of slurmstepd
    // (nothing rewrites it concurrently), and slurmstepd itself reads
    // `task_prolog` the same way right after this callback.
    let prolog = unsafe { (*conf.cast::<sys::slurm_conf_t>()).task_prolog };
    if prolog.is_null() {
        return Ok(None);
    }
    // SAFETY: a non-null `task_prolog` is a NUL-terminated string owned by
    // slurm_conf for the life of the process.
    let bytes = unsafe { CStr::from_ptr(prolog) }.to_bytes();
    Ok((!bytes.is_empty()).then(|| OsString::from_vec(bytes.to_vec())))
}

/// `env` with [`ENV_SITE_TASK_PROLOG`] set to `prolog`, or removed when the
/// site has none (a value from the job's own environment never survives).
pub fn with_site_prolog(env: Vec<CString>, prolog: Option<&OsStr>) -> Vec<CString> {
    let prefix = format!("{ENV_SITE_TASK_PROLOG}=");
    let mut out: Vec<CString> = env
        .into_iter()
        .filter(|v| !v.as_bytes().starts_with(prefix.as_bytes()))
        .collect();
    if let Some(p) = prolog {
        let mut entry = prefix.into_bytes();
        entry.extend(p.as_bytes().iter().filter(|&&b| b != 0));
        out.push(CString::new(entry).unwrap_or_default());
    }
    out
}

/// Where libselinux looks: SELinux is enabled on this node when its file
/// system is mounted.
fn selinux_mounted(mounts: &str) -> bool {
    mounts
        .lines()
        .any(|l| l.split_whitespace().nth(2) == Some("selinuxfs"))
}

/// Whether a slurmstepd binary applies SELinux contexts: one built without
/// SELinux support holds the message it gives for a job with a context.
fn stepd_has_selinux(binary: &[u8]) -> bool {
    const WITHOUT: &[u8] = b"Built without SELinux support";
    !binary.windows(WITHOUT.len()).any(|w| w == WITHOUT)
}

/// Refuses a checkpointed task on a node where slurmstepd would switch the
/// task into the job's SELinux context (`setexeccon`, right after this
/// callback, in 22.05 and 25.11): `ckpt` is exec'ed before that, so the task
/// would keep slurmstepd's context, and a restored program cannot be put in
/// one. Nodes without SELinux (Debian) pass at the cost of reading
/// `/proc/self/mounts`.
pub fn check_selinux() -> Result<(), PluginError> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    if !selinux_mounted(&mounts) {
        return Ok(());
    }
    // This task is still slurmstepd: /proc/self/exe is its binary.
    let applies = std::fs::read("/proc/self/exe").map_or(true, |b| stepd_has_selinux(&b));
    if !applies {
        return Ok(());
    }
    Err(PluginError::NotAvailable(
        "this node runs SELinux and slurmstepd puts each task into the job's SELinux context \
         after the point where ckpt takes over the task; ckpt cannot apply that context (and \
         cannot restore a program into one), so checkpointing is refused on this node: submit \
         without --checkpoint, or ask the administrator"
            .to_owned(),
    ))
}

/// Refuses a checkpointed task of a job or step that asked for an OCI
/// container (`--container`, which srun, sbatch and salloc also put in
/// `SLURM_CONTAINER`, `container`): slurmstepd sets the container up around
/// the task's `execve`, after this callback, so the program would run
/// outside it.
pub fn check_container(container: Option<&str>) -> Result<(), PluginError> {
    match container.filter(|c| !c.is_empty()) {
        None => Ok(()),
        Some(c) => Err(PluginError::NotAvailable(format!(
            "this job runs in the OCI container {c} (--container), which slurmstepd sets up \
             after the point where ckpt takes over the task: checkpointing cannot be combined \
             with --container; submit without one of them"
        ))),
    }
}

/// The step's `--task-prolog`, found in srun's command line: the options
/// are the words before the command (`command`, from `S_JOB_ARGV`: the last
/// words of its `:`-separated component, its first word possibly resolved
/// by srun to a full path). Accepts `--task-prolog=P`, `--task-prolog P`
/// and the abbreviations getopt allows (`--task-p...`); the last one given
/// wins; without any, srun's `SLURM_TASK_PROLOG` (`env`). An empty value
/// means none, as in slurmstepd.
pub fn srun_task_prolog(
    cmdline: &[OsString],
    command: &[OsString],
    env: Option<&OsStr>,
) -> Option<OsString> {
    let words = cmdline.get(1..).unwrap_or_default();
    let (program, tail) = command.split_first()?;
    // The program as typed, or as srun resolved it (a full path).
    let same_program = |typed: &OsString| {
        typed == program || {
            let mut slash_typed = b"/".to_vec();
            slash_typed.extend(typed.as_bytes());
            program.as_bytes().ends_with(&slash_typed)
        }
    };
    let options = words
        .split(|w| w.as_bytes() == b":")
        .find(|part| {
            part.len() > tail.len()
                && part.ends_with(tail)
                && same_program(&part[part.len() - tail.len() - 1])
        })
        .map(|part| &part[..part.len() - tail.len() - 1]);
    let mut found: Option<OsString> = None;
    if let Some(options) = options {
        let mut i = 0;
        while i < options.len() {
            let w = options[i].as_bytes();
            if w == b"--" {
                break;
            }
            let (name, inline) = match w.iter().position(|&b| b == b'=') {
                Some(eq) => (&w[..eq], Some(&w[eq + 1..])),
                None => (w, None),
            };
            let long = name.strip_prefix(b"--").unwrap_or_default();
            if long.len() >= "task-p".len() && b"task-prolog".starts_with(long) {
                match inline {
                    Some(v) => found = Some(OsString::from_vec(v.to_vec())),
                    None => {
                        i += 1;
                        found = options.get(i).cloned();
                    }
                }
            }
            i += 1;
        }
    }
    found
        .or_else(|| env.map(OsStr::to_os_string))
        .filter(|p| !p.is_empty())
}

/// In srun (`slurm_spank_local_user_init`, before the step's environment
/// is taken from srun's): puts the step's `--task-prolog` in
/// [`ENV_USER_TASK_PROLOG`], or removes that variable, so that `ckpt
/// slurm-task` runs the prolog slurmstepd will skip.
pub fn pass_user_task_prolog(spank: &Spank) -> Result<(), PluginError> {
    let cmdline: Vec<OsString> = std::fs::read("/proc/self/cmdline")
        .unwrap_or_default()
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| OsString::from_vec(a.to_vec()))
        .collect();
    let command: Vec<OsString> = spank
        .job_argv()?
        .into_iter()
        .map(|a| OsString::from_vec(a.into_bytes()))
        .collect();
    let env = std::env::var_os(SRUN_ENV_TASK_PROLOG);
    match srun_task_prolog(&cmdline, &command, env.as_deref()) {
        // SAFETY: srun calls this callback from its main thread before it
        // launches the step; srun's own threads do not read the
        // environment concurrently with its SPANK callbacks.
        Some(p) => unsafe { std::env::set_var(ENV_USER_TASK_PROLOG, p) },
        // SAFETY: as above.
        None => unsafe { std::env::remove_var(ENV_USER_TASK_PROLOG) },
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn task_prolog_from_the_srun_command_line() {
        let cmd = words(&["prog", "--task-prolog=/not/this", "a"]);
        let find = |line: &[&str], env: Option<&str>| {
            srun_task_prolog(&words(line), &cmd, env.map(OsStr::new))
        };
        let got = |p: &str| Some(OsString::from(p));
        assert_eq!(
            find(
                &[
                    "srun",
                    "--task-prolog=/p/one",
                    "-n2",
                    "prog",
                    "--task-prolog=/not/this",
                    "a"
                ],
                None
            ),
            got("/p/one")
        );
        assert_eq!(
            find(
                &[
                    "srun",
                    "--task-prolog",
                    "/p/two",
                    "prog",
                    "--task-prolog=/not/this",
                    "a"
                ],
                None
            ),
            got("/p/two")
        );
        // An abbreviation, the last one wins, the command line beats the
        // environment.
        assert_eq!(
            find(
                &[
                    "srun",
                    "--task-p=/p/1",
                    "--task-prol",
                    "/p/3",
                    "prog",
                    "--task-prolog=/not/this",
                    "a"
                ],
                Some("/env")
            ),
            got("/p/3")
        );
        // Not an abbreviation of --task-prolog (--task-epilog, ambiguous).
        assert_eq!(
            find(
                &[
                    "srun",
                    "--task-epilog=/e",
                    "--task-=/x",
                    "prog",
                    "--task-prolog=/not/this",
                    "a"
                ],
                None
            ),
            None
        );
        // Only in the command's arguments: none; srun's variable otherwise.
        assert_eq!(
            find(&["srun", "prog", "--task-prolog=/not/this", "a"], None),
            None
        );
        assert_eq!(
            find(
                &["srun", "-N1", "prog", "--task-prolog=/not/this", "a"],
                Some("/env")
            ),
            got("/env")
        );
        assert_eq!(
            find(
                &[
                    "srun",
                    "--task-prolog=",
                    "prog",
                    "--task-prolog=/not/this",
                    "a"
                ],
                Some("/env")
            ),
            None
        );
        // srun resolved the command's first word to a full path.
        let full = words(&["/usr/bin/prog", "--task-prolog=/not/this", "a"]);
        assert_eq!(
            srun_task_prolog(
                &words(&[
                    "srun",
                    "--task-prolog=/p",
                    "prog",
                    "--task-prolog=/not/this",
                    "a"
                ]),
                &full,
                None
            ),
            got("/p")
        );
    }

    #[test]
    fn task_prolog_of_the_right_heterogeneous_component() {
        let line = words(&[
            "srun",
            "--task-prolog=/p/a",
            "a",
            ":",
            "-n1",
            "--task-prolog=/p/b",
            "b",
            "x",
        ]);
        assert_eq!(
            srun_task_prolog(&line, &words(&["b", "x"]), None),
            Some(OsString::from("/p/b"))
        );
        let line = words(&[
            "srun",
            "--task-prolog=/p/a",
            "a",
            ":",
            "--task-prolog=/p/b",
            "b",
        ]);
        assert_eq!(
            srun_task_prolog(&line, &words(&["/bin/b"]), None),
            Some(OsString::from("/p/b"))
        );
        assert_eq!(
            srun_task_prolog(&line, &words(&["a"]), None),
            Some(OsString::from("/p/a"))
        );
    }

    #[test]
    fn the_site_prolog_variable_is_always_ours() {
        let env = vec![
            CString::new("A=1").unwrap(),
            CString::new("CKPT_SITE_TASK_PROLOG=/from/the/user").unwrap(),
        ];
        let set = with_site_prolog(env.clone(), Some(OsStr::new("/etc/slurm/taskprolog")));
        assert_eq!(
            set,
            vec![
                CString::new("A=1").unwrap(),
                CString::new("CKPT_SITE_TASK_PROLOG=/etc/slurm/taskprolog").unwrap(),
            ]
        );
        assert_eq!(
            with_site_prolog(env, None),
            vec![CString::new("A=1").unwrap()]
        );
    }

    #[test]
    fn containers_are_refused() {
        check_container(None).unwrap();
        check_container(Some("")).unwrap();
        // (Not through Display: it links spank_strerror, absent from tests.)
        let e = check_container(Some("/scratch/u/bundle")).unwrap_err();
        assert!(
            matches!(&e, PluginError::NotAvailable(m) if m.contains("--container")),
            "{e:?}"
        );
    }

    #[test]
    fn selinux_detection() {
        let debian = "sysfs /sys sysfs rw 0 0\nproc /proc proc rw 0 0\n";
        let rhel = "sysfs /sys sysfs rw 0 0\nselinuxfs /sys/fs/selinux selinuxfs rw 0 0\n";
        assert!(!selinux_mounted(debian));
        assert!(selinux_mounted(rhel));
        assert!(!stepd_has_selinux(
            b"\0error: Built without SELinux support but context was specified\0"
        ));
        assert!(stepd_has_selinux(
            b"\0Failed to set SELinux context to '%s': %m\0"
        ));
    }

    #[test]
    fn debian_slurmstepd_is_built_without_selinux() {
        // The installed 22.05 package (Debian 12); skipped where absent.
        if let Ok(b) = std::fs::read("/usr/sbin/slurmstepd") {
            assert!(!stepd_has_selinux(&b));
        }
    }
}
