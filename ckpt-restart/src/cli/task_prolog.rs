//! The task prologs of a checkpointed Slurm task, run by `ckpt slurm-task`
//! the way slurmstepd runs them for any other task (docs/slurm-task-order.md).
//!
//! slurmstepd runs the site's `TaskProlog` (slurm.conf) and then the step's
//! `srun --task-prolog` after the SPANK `task_init` callback, where the
//! plugin has already exec'ed `ckpt slurm-task`; so `ckpt` runs them itself,
//! before it starts or resumes the program:
//!
//! - the paths come from the plugin: the site's in `CKPT_SITE_TASK_PROLOG`
//!   (read from slurmstepd's configuration), the step's in
//!   `SLURM_CKPT_TASK_PROLOG` (set by the plugin in srun); both are removed
//!   from the environment before anything runs;
//! - each runs as the user (this process), in the task's working directory,
//!   with argv `[PATH]`, stdin `/dev/null`, stdout and stderr into one pipe,
//!   in its own process group, descriptors above 2 closed, and the task's
//!   environment plus `SLURM_SCRIPT_CONTEXT=prolog_task` (which, as under
//!   slurmstepd, stays in the program's environment); the step's prolog sees
//!   what the site's exported;
//! - a PATH that is not absolute or not readable and executable fails with
//!   status 127, like slurmstepd's; a prolog that exits non-zero fails the
//!   task with its status, one killed by a signal with 1; the output of one
//!   that exited is applied in both cases, line by line:
//!   `export NAME=value` sets NAME (the value is the rest of the line, as
//!   is), `unset NAME` removes it, `print TEXT` writes TEXT to the task's
//!   stdout, anything else is ignored (stderr lines included);
//! - they run at every start of the task, a resume from a checkpoint too
//!   (slurmstepd runs them at every start of a requeued job); but a resumed
//!   program keeps the environment it had when it was checkpointed, so there
//!   their `export`/`unset` lines change nothing it sees (a note says so).
//!
//! Then `TMPDIR` as slurmstepd sets it after the prologs: in the first task
//! of the node (`SLURM_LOCALID` 0), a `TMPDIR` that cannot be created (mode
//! 0700) or used is replaced by `/tmp`.

use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Stdio};

use super::Failure;

/// The site's `TaskProlog`, from the plugin.
pub const ENV_SITE: &str = "CKPT_SITE_TASK_PROLOG";
/// The step's `--task-prolog`, from the plugin in srun.
pub const ENV_USER: &str = "SLURM_CKPT_TASK_PROLOG";
/// What slurmstepd tells a task prolog it is.
const SCRIPT_CONTEXT: (&str, &str) = ("SLURM_SCRIPT_CONTEXT", "prolog_task");

/// One line of a prolog's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// `export NAME=value`.
    Export(OsString, OsString),
    /// `unset NAME`.
    Unset(OsString),
    /// `print TEXT`: the bytes to write, with the line's newline if it had one.
    Print(Vec<u8>),
    /// Anything else, malformed directives included (ignored, as slurmstepd
    /// ignores them).
    Other,
}

fn trim_start(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|c| c.is_ascii_whitespace()).count();
    &b[n..]
}

fn trim_end(b: &[u8]) -> &[u8] {
    let n = b
        .iter()
        .rev()
        .take_while(|c| c.is_ascii_whitespace())
        .count();
    &b[..b.len() - n]
}

/// An environment name the process can set: not empty, no `=` (and no NUL,
/// which [`parse_output`] never leaves).
fn settable(name: &[u8]) -> bool {
    !name.is_empty() && !name.contains(&b'=') && !name.contains(&0)
}

/// Parses a prolog's output (stdout and stderr together) as slurmstepd
/// does: it stops at a NUL byte (slurmstepd handles it as a C string).
pub fn parse_output(out: &[u8]) -> Vec<Line> {
    let out = out.split(|&b| b == 0).next().unwrap_or_default();
    out.split_inclusive(|&b| b == b'\n')
        .map(|raw| {
            let line = raw.strip_suffix(b"\n").unwrap_or(raw);
            if line.starts_with(b"print ") {
                Line::Print(trim_start(&raw[6..]).to_vec())
            } else if let Some(rest) = line.strip_prefix(b"export ") {
                let rest = trim_start(rest);
                let Some(eq) = rest.iter().position(|&b| b == b'=') else {
                    return Line::Other;
                };
                let name = trim_end(&rest[..eq]);
                if !settable(name) {
                    return Line::Other;
                }
                Line::Export(
                    OsString::from_vec(name.to_vec()),
                    OsString::from_vec(rest[eq + 1..].to_vec()),
                )
            } else if let Some(rest) = line.strip_prefix(b"unset ") {
                let name = trim_end(trim_start(rest));
                if !settable(name) {
                    return Line::Other;
                }
                Line::Unset(OsString::from_vec(name.to_vec()))
            } else {
                Line::Other
            }
        })
        .collect()
}

/// A prolog that stops the task: the message and the task's exit status.
fn failed(kind: &str, path: &OsStr, why: &str, status: i32) -> Failure {
    Failure {
        msg: format!(
            "{kind} {} failed status={status}: {why}; the task is not started (as under \
             slurmstepd)",
            path.to_string_lossy()
        ),
        code: status,
    }
}

/// Marks every descriptor above 2 close-on-exec (in the child, between fork
/// and exec: only async-signal-safe calls). slurmstepd closes them.
fn cloexec_above_stderr() {
    // SAFETY: close_range takes no pointers; with CLOSE_RANGE_CLOEXEC it only
    // sets flags (std's own exec-error pipe is close-on-exec already).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc == 0 {
        return;
    }
    // Kernels before 5.11: one fcntl per possible descriptor.
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit for getrlimit to fill.
    let max = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        libc::c_int::try_from(lim.rlim_cur).unwrap_or(libc::c_int::MAX)
    } else {
        1024
    };
    for fd in 3..max {
        // SAFETY: fcntl on a descriptor number that may not be open (EBADF
        // is ignored); no pointers.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}

/// Runs one prolog with the current environment and returns its output
/// lines, or the failure that stops the task.
fn run_one(kind: &str, path: &OsStr) -> Result<Vec<Line>, Failure> {
    if !path.as_bytes().starts_with(b"/") {
        return Err(failed(kind, path, "not a fully qualified pathname", 127));
    }
    if let Err(e) = nix::unistd::access(
        Path::new(path),
        nix::unistd::AccessFlags::R_OK | nix::unistd::AccessFlags::X_OK,
    ) {
        return Err(failed(
            kind,
            path,
            &format!("cannot be executed ({e})"),
            127,
        ));
    }
    // SAFETY: single-threaded (called before launch/restart start threads).
    unsafe { std::env::set_var(SCRIPT_CONTEXT.0, SCRIPT_CONTEXT.1) };
    let (mut reader, writer) =
        std::io::pipe().map_err(|e| failed(kind, path, &format!("pipe: {e}"), 127))?;
    let writer2 = writer
        .try_clone()
        .map_err(|e| failed(kind, path, &format!("pipe: {e}"), 127))?;
    let mut cmd = Command::new(path);
    cmd.stdin(Stdio::null())
        .stdout(writer)
        .stderr(writer2)
        .process_group(0);
    // SAFETY: the closure only makes async-signal-safe system calls.
    unsafe {
        cmd.pre_exec(|| {
            cloexec_above_stderr();
            Ok(())
        })
    };
    let spawned = cmd.spawn();
    // Our copies of the pipe's write end must be closed before reading.
    drop(cmd);
    let mut child =
        spawned.map_err(|e| failed(kind, path, &format!("cannot be run ({e})"), 127))?;
    let mut out = Vec::new();
    let read = reader.read_to_end(&mut out);
    let status = child
        .wait()
        .map_err(|e| failed(kind, path, &format!("wait: {e}"), 1))?;
    if let Some(sig) = status.signal() {
        return Err(failed(kind, path, &format!("killed by signal {sig}"), 1));
    }
    if let Err(e) = read {
        eprintln!(
            "ckpt: cannot read the output of {kind} {}: {e}",
            path.to_string_lossy()
        );
    }
    let lines = parse_output(&out);
    let code = status.code().unwrap_or(1);
    if code != 0 {
        // slurmstepd applies the output (its print lines appear) and then
        // fails the task.
        let mut now = Deferred::default();
        apply(&lines, &mut now);
        now.emit();
        return Err(failed(kind, path, "it exited non-zero", code));
    }
    Ok(lines)
}

/// What the prologs print, held back until the task's output files are
/// where the program left them (a resume first puts its output files back
/// as they were at the checkpoint; lines written before that would be in
/// the way).
#[derive(Debug, Default)]
pub struct Deferred {
    stdout: Vec<u8>,
    notes: Vec<String>,
}

impl Deferred {
    /// Writes the prologs' print lines to stdout and our notes to stderr.
    pub fn emit(self) {
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(&self.stdout).and_then(|()| stdout.flush());
        for n in self.notes {
            eprintln!("ckpt: {n}");
        }
    }
}

/// Applies `lines` to this process's environment (which the program
/// inherits) and keeps the print lines for stdout; true when the
/// environment was to change.
fn apply(lines: &[Line], out: &mut Deferred) -> bool {
    let mut changed = false;
    for line in lines {
        match line {
            // SAFETY: single-threaded (before launch/restart); the names
            // are settable (checked by parse_output).
            Line::Export(name, value) => unsafe {
                std::env::set_var(name, value);
                changed = true;
            },
            // SAFETY: as above.
            Line::Unset(name) => unsafe {
                std::env::remove_var(name);
                changed = true;
            },
            Line::Print(text) => out.stdout.extend_from_slice(text),
            Line::Other => {}
        }
    }
    changed
}

/// Whether `dir` holds a complete checkpoint (the task will be resumed).
fn has_checkpoint(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            let name = e.file_name();
            let name = name.as_bytes();
            name.starts_with(b"gen-")
                && !name.ends_with(b".tmp")
                && e.path().join("generation.json").is_file()
        })
    })
}

/// slurmstepd's `TMPDIR` handling after the prologs (first task of the
/// node only): a `TMPDIR` that cannot be created or used becomes `/tmp`.
fn make_tmpdir() {
    if std::env::var_os("SLURM_LOCALID").is_some_and(|id| id != "0") {
        return;
    }
    let Some(tmpdir) = std::env::var_os("TMPDIR") else {
        return; // slurm-task sets the default /tmp next
    };
    let Err(e) = std::fs::DirBuilder::new().mode(0o700).create(&tmpdir) else {
        return;
    };
    let shown = Path::new(&tmpdir).display().to_string();
    let why = match std::fs::metadata(&tmpdir) {
        Err(_) => format!("cannot create TMPDIR {shown}: {e}"),
        Ok(md) if !md.is_dir() => format!("TMPDIR {shown} is not a directory"),
        Ok(_) => {
            let usable = nix::unistd::access(
                Path::new(&tmpdir),
                nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
            );
            match usable {
                Ok(()) => return,
                Err(_) => format!("TMPDIR {shown} is not writable"),
            }
        }
    };
    eprintln!("ckpt: {why}; setting TMPDIR to /tmp");
    // SAFETY: single-threaded (before launch/restart).
    unsafe { std::env::set_var("TMPDIR", "/tmp") };
}

/// Runs the task prologs the plugin passed, applies their output, then
/// handles `TMPDIR`; `dir` is the task's checkpoint directory (a resume
/// when it holds a checkpoint). Called by `ckpt slurm-task` before it starts
/// or resumes the program, before the resource limits are applied.
pub fn run(dir: &Path) -> Result<Deferred, Failure> {
    let site = std::env::var_os(ENV_SITE);
    let user = std::env::var_os(ENV_USER);
    // SAFETY: single-threaded (before launch/restart start any thread).
    unsafe {
        std::env::remove_var(ENV_SITE);
        std::env::remove_var(ENV_USER);
    }
    let prologs = [("TaskProlog", site), ("--task-prolog", user)];
    let mut changed = false;
    let mut out = Deferred::default();
    for (kind, path) in prologs {
        let Some(path) = path.filter(|p| !p.is_empty()) else {
            continue;
        };
        changed |= apply(&run_one(kind, &path)?, &mut out);
    }
    if changed && has_checkpoint(dir) {
        out.notes.push(
            "the resumed program keeps the environment it was checkpointed with, which holds \
             what the task prologs exported at its first start; their export/unset lines of \
             this start do not change it"
                .to_owned(),
        );
    }
    make_tmpdir();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(s: &str) -> OsString {
        OsString::from(s)
    }

    #[test]
    fn export_unset_and_print() {
        let out =
            b"export A=1\nexport  B = two words \nunset   C  \nprint   hello world\nprint last";
        assert_eq!(
            parse_output(out),
            vec![
                Line::Export(os("A"), os("1")),
                Line::Export(os("B"), os(" two words ")),
                Line::Unset(os("C")),
                Line::Print(b"hello world\n".to_vec()),
                Line::Print(b"last".to_vec()),
            ]
        );
        // The value is the rest of the line: '=' and quotes kept as they are.
        assert_eq!(
            parse_output(b"export X=a=b \"c\"\n"),
            vec![Line::Export(os("X"), os("a=b \"c\""))]
        );
        assert_eq!(
            parse_output(b"export EMPTY=\n"),
            vec![Line::Export(os("EMPTY"), os(""))]
        );
    }

    #[test]
    fn bad_and_foreign_lines_are_ignored() {
        for bad in [
            &b"export NOVALUE"[..],
            b"export =nothing",
            b"export \t =x",
            b"unset ",
            b"unset  \t",
            b"unset A=B",
            b" export A=1",
            b"EXPORT A=1",
            b"export\tA=1",
            b"printed",
            b"some error on stderr",
            b"",
        ] {
            assert_eq!(
                parse_output(bad),
                if bad.is_empty() {
                    vec![]
                } else {
                    vec![Line::Other]
                },
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // Stops at a NUL byte; non-UTF-8 bytes are kept.
        assert_eq!(
            parse_output(b"export A=\xe9\nexport B=1\0\nexport C=2\n"),
            vec![
                Line::Export(os("A"), OsString::from_vec(b"\xe9".to_vec())),
                Line::Export(os("B"), os("1")),
            ]
        );
    }

    fn scratch(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("ckpt-prolog-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn script(dir: &Path, name: &str, body: &str) -> OsString {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p.into_os_string()
    }

    /// One test for everything that touches the process environment (tests
    /// run in threads).
    #[test]
    fn runs_real_shell_prologs() {
        let d = scratch("run");
        // A descriptor without close-on-exec, as a task may inherit one.
        // SAFETY: dup of the always-open stderr; closed below.
        let probe = unsafe { libc::dup(2) };
        assert!(probe > 2);
        let site = script(
            &d,
            "site.sh",
            &format!(
                "#!/bin/sh\n\
                 echo \"export FROM_SITE=ctx:$SLURM_SCRIPT_CONTEXT\"\n\
                 echo 'unset CKPT_TEST_GONE'\n\
                 echo 'export CKPT_TEST_ORDER=site'\n\
                 echo 'not a directive' >&2\n\
                 echo \"export STDERR_TOO=1\" >&2\n\
                 if [ -e /proc/self/fd/{probe} ]; then echo 'export LEAKED_FD=1'; fi\n\
                 read x && echo 'export STDIN_NOT_NULL=1'\n\
                 echo \"export GROUP=$(cut -d' ' -f5 /proc/$$/stat)/$$\"\n"
            ),
        );
        let user = script(
            &d,
            "user.sh",
            "#!/bin/sh\necho \"export FROM_USER=$CKPT_TEST_ORDER\"\n",
        );
        // SAFETY: this is the only test of this module that touches the
        // environment.
        unsafe {
            std::env::set_var("CKPT_TEST_GONE", "x");
            std::env::set_var(ENV_SITE, &site);
            std::env::set_var(ENV_USER, &user);
        }
        run(&d).unwrap();
        let get = |n: &str| std::env::var(n).ok();
        assert_eq!(get("FROM_SITE").as_deref(), Some("ctx:prolog_task"));
        assert_eq!(get("CKPT_TEST_GONE"), None);
        assert_eq!(get("STDERR_TOO").as_deref(), Some("1"));
        assert_eq!(get("FROM_USER").as_deref(), Some("site"));
        assert_eq!(get("SLURM_SCRIPT_CONTEXT").as_deref(), Some("prolog_task"));
        assert_eq!(
            get("LEAKED_FD"),
            None,
            "descriptor {probe} reached the prolog"
        );
        assert_eq!(get("STDIN_NOT_NULL"), None);
        let group = get("GROUP").unwrap();
        let (pgid, pid) = group.split_once('/').unwrap();
        assert_eq!(pgid, pid, "the prolog runs in its own process group");
        assert_eq!(std::env::var_os(ENV_SITE), None);
        assert_eq!(std::env::var_os(ENV_USER), None);
        // SAFETY: our own descriptor from dup above.
        unsafe { libc::close(probe) };

        // A failing prolog stops the task with its status, after its output
        // was applied.
        let bad = script(
            &d,
            "bad.sh",
            "#!/bin/sh\necho export BEFORE_FAIL=1\nexit 3\n",
        );
        // SAFETY: as above.
        unsafe { std::env::set_var(ENV_SITE, &bad) };
        let f = run(&d).unwrap_err();
        assert_eq!(f.code, 3);
        assert!(
            f.msg.contains("TaskProlog") && f.msg.contains("status=3"),
            "{}",
            f.msg
        );
        assert_eq!(get("BEFORE_FAIL").as_deref(), Some("1"));
        // Not absolute, or not executable: 127, as slurmstepd.
        for (p, why) in [
            ("relative.sh", "fully qualified"),
            (d.join("missing").to_str().unwrap(), "cannot be executed"),
        ] {
            // SAFETY: as above.
            unsafe { std::env::set_var(ENV_USER, p) };
            let f = run(&d).unwrap_err();
            assert_eq!(f.code, 127, "{}", f.msg);
            assert!(
                f.msg.contains("--task-prolog") && f.msg.contains(why),
                "{}",
                f.msg
            );
        }
        // Killed by a signal: 1.
        let killed = script(&d, "killed.sh", "#!/bin/sh\nkill -9 $$\n");
        // SAFETY: as above.
        unsafe { std::env::set_var(ENV_SITE, &killed) };
        assert_eq!(run(&d).unwrap_err().code, 1);
        // Nothing configured: nothing runs.
        run(&d).unwrap();
        let _ = std::fs::remove_dir_all(&d);
    }
}
