//! Helpers for the end-to-end checkpoint/restart suite (`tests/cr`), after CRIU's zdtm:
//! locating the `ckpt` binary, scratch directories, starting `ckpt` subcommands with
//! deadlines, killing whole process trees, reading the state of a process that is
//! visible from outside (`/proc`), comparing outputs, the image layout, and tmux.
//!
//! Nothing here asserts on time: every wait has a deadline only so that a hang becomes
//! a failure with diagnostics instead of a stuck CI run.

use std::collections::BTreeSet;
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// Waits that have already run out in this test process.
static HANGS: AtomicUsize = AtomicUsize::new(0);

/// How long any single wait may take before it is reported as a hang: 120 s (override
/// with `CKPT_TEST_DEADLINE_SECS`). Generous: this is not a timing assertion. Once two
/// waits have run out in this test process the suite is failing anyway, and later waits
/// get 30 s so that a hanging engine cannot hold CI for hours.
pub fn deadline() -> Duration {
    let secs = std::env::var("CKPT_TEST_DEADLINE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    if HANGS.load(Ordering::Relaxed) >= 2 {
        Duration::from_secs(secs.min(30))
    } else {
        Duration::from_secs(secs)
    }
}

/// True under CI (`CI=true`): a missing prerequisite then fails instead of skipping.
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Checks a prerequisite. Under CI a missing one panics; elsewhere it prints a SKIP
/// line and returns false so the test can return early.
pub fn prerequisite(ok: bool, what: &str) -> bool {
    if ok {
        return true;
    }
    if ci() {
        panic!("missing prerequisite (CI=true, so this fails instead of skipping): {what}");
    }
    eprintln!("SKIP (CI is not true): missing prerequisite: {what}");
    false
}

/// [`prerequisite`] for one found by a lookup that says why it failed: the
/// value, or `None` after the SKIP line (a panic under CI).
pub fn required<T>(found: Result<T, String>) -> Option<T> {
    match found {
        Ok(v) => Some(v),
        Err(e) => {
            prerequisite(false, &e);
            None
        }
    }
}

/// Finds the `ckpt` binary: `$CKPT_BIN`, else beside the test executable's profile
/// directory (`target/<profile>/deps/cr-* -> target/<profile>/ckpt`), then
/// `target/release/ckpt` and `target/debug/ckpt`. Without `$CKPT_BIN`, `libckpt.so`
/// must sit beside the binary.
pub fn locate_ckpt() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("CKPT_BIN") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("CKPT_BIN={} is not a file", p.display()))
        };
    }
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut candidates = Vec::new();
    if let Some(profile) = exe.parent().and_then(Path::parent) {
        candidates.push(profile.join("ckpt"));
        if let Some(target) = profile.parent() {
            for p in ["release/ckpt", "debug/ckpt"] {
                if !candidates.contains(&target.join(p)) {
                    candidates.push(target.join(p));
                }
            }
        }
    }
    for c in &candidates {
        if c.is_file() && c.with_file_name("libckpt.so").is_file() {
            return Ok(c.clone());
        }
    }
    Err(format!(
        "no ckpt binary with libckpt.so beside it in {:?}; build the engine \
         (cargo build --release -p ckpt-restart -p ckpt-core) or set CKPT_BIN",
        candidates
    ))
}

/// Where scratch directories are made: `$CKPT_TEST_SCRATCH` when set (the 6.1 guest of
/// `tests/kernel-6-1` points it to a tmpfs: its root file system is the host's, shared
/// read-only over 9p, where unix sockets cannot be created), else /tmp.
pub fn scratch_base() -> PathBuf {
    std::env::var_os("CKPT_TEST_SCRATCH")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from("/tmp"), PathBuf::from)
}

/// A scratch directory under `scratch_base()` (/tmp by default), unique per test;
/// removed when the test passes, kept (and its path printed) when it fails.
pub struct Scratch {
    pub path: PathBuf,
}

impl Scratch {
    pub fn new(label: &str) -> Scratch {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = scratch_base().join(format!("ckpt-cr-{label}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(&path)
            .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        Scratch { path }
    }

    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.path.join(p)
    }

    /// Creates a subdirectory with mode 0700 and returns its path.
    pub fn dir(&self, p: impl AsRef<Path>) -> PathBuf {
        let d = self.path.join(p);
        fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(&d)
            .unwrap_or_else(|e| panic!("create {}: {e}", d.display()));
        d
    }

    /// The last `max` bytes of every regular file directly in the scratch directory and
    /// one level below, for failure messages.
    pub fn tails(&self, max: u64) -> String {
        let mut out = String::new();
        let mut files = Vec::new();
        collect_files(&self.path, 2, &mut files);
        files.sort();
        for f in files {
            let ext = f.extension().and_then(OsStr::to_str).unwrap_or("");
            if !matches!(ext, "log" | "txt" | "err" | "out") {
                continue;
            }
            out.push_str(&format!("---- {} ----\n{}\n", f.display(), tail(&f, max)));
        }
        out
    }
}

fn collect_files(dir: &Path, depth: u32, out: &mut Vec<PathBuf>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_file() => out.push(p),
            Ok(t) if t.is_dir() && depth > 0 => collect_files(&p, depth - 1, out),
            _ => {}
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("CKPT_TEST_KEEP").is_some() {
            eprintln!("kept scratch directory {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// The last `max` bytes of a file, lossily decoded.
pub fn tail(path: &Path, max: u64) -> String {
    let Ok(mut f) = File::open(path) else {
        return "(missing)".into();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// Opens (creating or truncating) a file for a child's stdout/stderr. Not O_APPEND:
/// a restarted program must write at its saved offset.
pub fn out_file(path: &Path) -> File {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()))
}

/// Polls `f` until it returns `Ok(Some(_))`, fails fast on `Err`, and fails after the
/// deadline with `what` in the message.
pub fn wait_until<T>(
    what: &str,
    limit: Duration,
    mut f: impl FnMut() -> Result<Option<T>, String>,
) -> Result<T, String> {
    let start = Instant::now();
    let mut delay = Duration::from_millis(2);
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if start.elapsed() > limit {
            HANGS.fetch_add(1, Ordering::Relaxed);
            return Err(format!("gave up after {limit:?} waiting for {what}"));
        }
        sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(50));
    }
}

/// True when `text` has a line exactly equal to `line`.
pub fn has_line(text: &[u8], line: &str) -> bool {
    text.split(|&b| b == b'\n').any(|l| l == line.as_bytes())
}

/// Describes the first difference between two byte strings, or None when equal.
pub fn first_difference(expected: &[u8], actual: &[u8]) -> Option<String> {
    if expected == actual {
        return None;
    }
    let at = expected
        .iter()
        .zip(actual)
        .position(|(a, b)| a != b)
        .unwrap_or(expected.len().min(actual.len()));
    let ctx = |b: &[u8]| {
        let from = b[..at.min(b.len())]
            .iter()
            .rposition(|&c| c == b'\n')
            .map_or(0, |p| p + 1);
        let to = (at + 200).min(b.len());
        String::from_utf8_lossy(&b[from..to]).into_owned()
    };
    Some(format!(
        "lengths expected {} actual {}, first difference at byte {at}\n  expected from that line: {:?}\n  actual from that line:   {:?}",
        expected.len(),
        actual.len(),
        ctx(expected),
        ctx(actual)
    ))
}

/// One line of `/proc/PID/stat`.
#[derive(Debug, Clone)]
pub struct Stat {
    pub pid: i32,
    pub comm: String,
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    /// Start time in clock ticks after boot: with the pid, it names a process uniquely.
    pub starttime: u64,
}

pub fn stat(pid: i32) -> Option<Stat> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s.get(open + 1..close)?.to_string();
    let mut rest = s.get(close + 2..)?.split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    let pgrp = rest.next()?.parse().ok()?;
    // Fields 6..=21 of stat(5) lie between pgrp and starttime (field 22).
    let starttime = rest.nth(16)?.parse().ok()?;
    Some(Stat {
        pid,
        comm,
        state,
        ppid,
        pgrp,
        starttime,
    })
}

pub fn all_stats() -> Vec<Stat> {
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(stat)
        .collect()
}

/// Every descendant of `root` (not `root` itself), parents before children.
pub fn descendants(root: i32) -> Vec<i32> {
    let stats = all_stats();
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for s in stats.iter().filter(|s| s.ppid == p && s.pid != root) {
            if !out.contains(&s.pid) {
                out.push(s.pid);
                frontier.push(s.pid);
            }
        }
    }
    out
}

/// Alive and not a zombie.
pub fn alive(pid: i32) -> bool {
    stat(pid).is_some_and(|s| s.state != 'Z' && s.state != 'X')
}

/// A field of `/proc/PID/status`, e.g. `SigCgt`.
pub fn status_field(pid: i32, field: &str) -> Option<String> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
}

/// The pid numbers of a process from the host down to its innermost pid namespace.
pub fn ns_pids(pid: i32) -> Option<Vec<i32>> {
    let v = status_field(pid, "NSpid")?;
    v.split_whitespace().map(|x| x.parse().ok()).collect()
}

/// The host pid of the process among `root`'s descendants whose innermost pid is
/// `inner` (a process in its own pid namespace reports a small getpid()).
pub fn find_by_inner_pid(root: i32, inner: i32) -> Option<i32> {
    descendants(root)
        .into_iter()
        .filter(|&p| alive(p))
        .find(|&p| ns_pids(p).and_then(|v| v.last().copied()) == Some(inner))
}

/// Sends `sig` to `pid`.
pub fn send_signal(pid: i32, sig: i32) -> Result<(), String> {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    let rc = unsafe { libc::kill(pid, sig) };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!(
            "kill({pid}, {sig}): {}",
            std::io::Error::last_os_error()
        ))
    }
}

/// A `ckpt` (or other) child process started by the suite, in its own process group.
/// Dropping it kills its whole tree.
pub struct Running {
    pub what: String,
    child: Child,
    status: Option<ExitStatus>,
}

/// How to start a child.
pub struct Spawn<'a> {
    pub program: &'a Path,
    pub args: Vec<OsString>,
    pub cwd: &'a Path,
    pub stdin: Stdio,
    pub stdout: Stdio,
    pub stderr: Stdio,
    pub env: Vec<(String, OsString)>,
    /// Run the child in a private mount namespace where `.0` is bind-mounted over `.1`
    /// (needs root), so concurrent restarts of one image each get their own files.
    pub bind: Option<(PathBuf, PathBuf)>,
}

impl<'a> Spawn<'a> {
    pub fn new(program: &'a Path, cwd: &'a Path) -> Spawn<'a> {
        Spawn {
            program,
            args: Vec::new(),
            cwd,
            stdin: Stdio::null(),
            stdout: Stdio::null(),
            stderr: Stdio::null(),
            env: Vec::new(),
            bind: None,
        }
    }

    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.args.push(a.as_ref().to_owned());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, a: I) -> Self {
        self.args
            .extend(a.into_iter().map(|s| s.as_ref().to_owned()));
        self
    }

    pub fn spawn(self, what: &str) -> Running {
        let mut cmd = Command::new(self.program);
        cmd.args(&self.args)
            .current_dir(self.cwd)
            .stdin(self.stdin)
            .stdout(self.stdout)
            .stderr(self.stderr)
            .env_remove("LD_PRELOAD")
            .env_remove("TMUX")
            .process_group(0);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if let Some((src, dst)) = &self.bind {
            let src = cstring(src);
            let dst = cstring(dst);
            let root = cstring(Path::new("/"));
            // SAFETY: the closure runs in the forked child before exec and only makes raw
            // unshare(2)/mount(2) system calls on C strings built before the fork, which
            // is async-signal-safe; it allocates nothing and takes no locks.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::unshare(libc::CLONE_NEWNS) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let none = std::ptr::null();
                    if libc::mount(
                        none,
                        root.as_ptr(),
                        none,
                        libc::MS_REC | libc::MS_PRIVATE,
                        none.cast(),
                    ) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                    if libc::mount(src.as_ptr(), dst.as_ptr(), none, libc::MS_BIND, none.cast())
                        != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "{what}: spawn {} {:?}: {e}",
                self.program.display(),
                self.args
            )
        });
        Running {
            what: what.to_string(),
            child,
            status: None,
        }
    }
}

fn cstring(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

impl Running {
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid fits i32")
    }

    /// The child's stdout pipe (when spawned with `Stdio::piped()`).
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    /// The exit status, if the child has exited (reaping it).
    pub fn poll(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Waits for the child to exit, up to the deadline.
    pub fn wait(&mut self, limit: Duration) -> Result<ExitStatus, String> {
        let what = format!("{} (pid {}) to exit", self.what, self.pid());
        wait_until(&what, limit, || Ok(self.poll()))
    }

    /// Error unless the child is still running.
    pub fn check_running(&mut self) -> Result<(), String> {
        match self.poll() {
            None => Ok(()),
            Some(st) => Err(format!("{} exited early: {}", self.what, describe(st))),
        }
    }

    /// kill -9 of the whole tree: the child, every descendant (found through /proc before
    /// anything dies, so reparenting cannot hide one) and its process group; then waits
    /// until none of them is alive.
    pub fn kill_tree(&mut self) -> Result<(), String> {
        if self.status.is_some() || self.exited_unreaped() {
            // Its descendants were reparented when it died: only the process group can
            // still be named, and only while the child is unreaped (until then neither its
            // pid nor its group id can be reused).
            if self.status.is_none() {
                let _ = send_signal(-self.pid(), libc::SIGKILL);
            }
            let _ = self.child.wait().map(|st| self.status = Some(st));
            return Ok(());
        }
        let root = self.pid();
        let victims = freeze_and_kill(root);
        // The group may hold processes that left the tree (double fork).
        let _ = send_signal(-root, libc::SIGKILL);
        let _ = self.child.wait().map(|st| self.status = Some(st));
        wait_gone(&self.what, &victims)
    }

    /// True when the child has exited but is not reaped yet (waitid with WNOWAIT).
    fn exited_unreaped(&self) -> bool {
        // SAFETY: an all-zero siginfo_t is a valid value; waitid(2) writes into the
        // struct we own and with WNOWAIT leaves the child waitable.
        unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let rc = libc::waitid(
                libc::P_PID,
                self.child.id(),
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            );
            rc == 0 && info.si_pid() != 0
        }
    }
}

/// kill -9 of `root` and all its descendants, without ever signalling a reused pid:
/// every process is stopped first (a stopped process neither forks nor reaps, so the
/// tree stays put and every pid stays valid), then each gets SIGKILL once. Returns the
/// victims as (pid, start time).
pub fn freeze_and_kill(root: i32) -> Vec<(i32, u64)> {
    let mut victims: Vec<(i32, u64)> = Vec::new();
    let mut frontier = vec![root];
    for _ in 0..50 {
        for &p in &frontier {
            if let Some(st) = stat(p) {
                let _ = send_signal(p, libc::SIGSTOP);
                victims.push((p, st.starttime));
            }
        }
        frontier = descendants(root)
            .into_iter()
            .filter(|p| !victims.iter().any(|v| v.0 == *p))
            .collect();
        if frontier.is_empty() {
            break;
        }
    }
    for &(p, start) in &victims {
        if stat(p).is_some_and(|s| s.starttime == start) {
            let _ = send_signal(p, libc::SIGKILL);
        }
    }
    victims
}

/// Waits until none of the (pid, start time) processes is alive.
pub fn wait_gone(what: &str, victims: &[(i32, u64)]) -> Result<(), String> {
    let what = format!("the killed tree of {what} ({victims:?}) to disappear");
    wait_until(&what, deadline(), || {
        let left = victims.iter().any(|&(p, start)| {
            stat(p).is_some_and(|s| s.starttime == start && s.state != 'Z' && s.state != 'X')
        });
        Ok((!left).then_some(()))
    })
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.poll().is_none() {
            let _ = self.kill_tree();
        }
    }
}

/// "exit 0", "signal 9", ...
pub fn describe(st: ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit {c}"),
        (_, Some(s)) => format!("signal {s}"),
        _ => format!("{st:?}"),
    }
}

/// Runs a command to completion with stdout and stderr in files, up to the deadline.
/// Returns (status, stdout, stderr).
pub fn run_logged(
    program: &Path,
    args: &[OsString],
    cwd: &Path,
    log_base: &Path,
) -> Result<(ExitStatus, String, String), String> {
    let out = log_base.with_extension("out");
    let err = log_base.with_extension("err");
    let mut s = Spawn::new(program, cwd);
    s.args = args.to_vec();
    s.stdout = out_file(&out).into();
    s.stderr = out_file(&err).into();
    let mut r = s.spawn(&format!("{} {:?}", program.display(), args));
    let st = r.wait(deadline());
    let (o, e) = (tail(&out, 1 << 16), tail(&err, 1 << 16));
    match st {
        Ok(st) => Ok((st, o, e)),
        Err(why) => Err(format!("{why}\nstdout: {o}\nstderr: {e}")),
    }
}

/// The state of a process that can be seen from outside, after zdtm's
/// `check_visible_state`: it must be the same before the checkpoint and after the restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Visible {
    /// One line per item, prefixed by its kind (`task`, `map`, `fd`, `cwd`, ...).
    pub lines: Vec<String>,
}

fn normalize_link(t: &str) -> String {
    for kind in ["pipe:", "socket:"] {
        if t.strip_prefix(kind)
            .is_some_and(|rest| rest.starts_with('['))
        {
            return format!("{kind}[]");
        }
    }
    t.to_string()
}

/// Reads the visible state of `pid` (host pid): thread ids inside the namespace,
/// memory map (addresses, permissions, offsets, paths), fd targets with offset and flags,
/// cwd, umask, signal masks and handlers, and resource limits.
pub fn visible_state(pid: i32) -> Result<Visible, String> {
    let p = format!("/proc/{pid}");
    let mut lines = Vec::new();
    let mut tids = Vec::new();
    for e in fs::read_dir(format!("{p}/task"))
        .map_err(|e| format!("{p}/task: {e}"))?
        .flatten()
    {
        let tid: i32 = e
            .file_name()
            .to_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let inner = ns_pids(tid).and_then(|v| v.last().copied()).unwrap_or(-1);
        tids.push(inner);
    }
    tids.sort_unstable();
    lines.extend(tids.iter().map(|t| format!("task {t}")));
    let maps = fs::read_to_string(format!("{p}/maps")).map_err(|e| format!("{p}/maps: {e}"))?;
    // start-end perms offset dev inode path: drop dev and inode, and merge adjacent
    // anonymous mappings with the same permissions (whether the kernel keeps them as one
    // VMA or two depends on flags that maps does not show, e.g. MAP_STACK's no-THP).
    let mut regions: Vec<(u64, u64, String, String)> = Vec::new();
    for l in maps.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 5 {
            continue;
        }
        let (start, end) = f[0].split_once('-').unwrap_or((f[0], f[0]));
        let start = u64::from_str_radix(start, 16).unwrap_or(0);
        let end = u64::from_str_radix(end, 16).unwrap_or(0);
        let path = f[5..].join(" ");
        let anon = path.is_empty();
        let merge = anon
            && regions
                .last()
                .is_some_and(|l| l.3.is_empty() && l.1 == start && l.2 == f[1]);
        if merge {
            if let Some(last) = regions.last_mut() {
                last.1 = end;
            }
            continue;
        }
        let what = if anon {
            String::new()
        } else {
            format!("{} {path}", f[2])
        };
        regions.push((start, end, f[1].to_string(), what));
    }
    for (start, end, perms, what) in regions {
        lines.push(format!("map {start:x}-{end:x} {perms} {what}"));
    }
    let mut fds: Vec<i32> = fs::read_dir(format!("{p}/fd"))
        .map_err(|e| format!("{p}/fd: {e}"))?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort_unstable();
    for fd in fds {
        let target = fs::read_link(format!("{p}/fd/{fd}"))
            .map(|t| normalize_link(&t.to_string_lossy()))
            .unwrap_or_else(|e| format!("? {e}"));
        let info = fs::read_to_string(format!("{p}/fdinfo/{fd}")).unwrap_or_default();
        let field = |k: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        lines.push(format!(
            "fd {fd} {target} pos={} flags={}",
            field("pos:"),
            field("flags:")
        ));
    }
    let cwd = fs::read_link(format!("{p}/cwd")).map_err(|e| format!("{p}/cwd: {e}"))?;
    lines.push(format!("cwd {}", cwd.display()));
    for k in ["Umask", "SigBlk", "SigIgn", "SigCgt"] {
        lines.push(format!("{k} {}", status_field(pid, k).unwrap_or_default()));
    }
    let limits = fs::read_to_string(format!("{p}/limits")).unwrap_or_default();
    lines.extend(limits.lines().skip(1).map(|l| {
        format!(
            "limit {}",
            l.split_whitespace().collect::<Vec<_>>().join(" ")
        )
    }));
    Ok(Visible { lines })
}

/// Lines only in `a` ("-") and only in `b` ("+").
pub fn diff_lines(a: &[String], b: &[String]) -> String {
    let sa: BTreeSet<&String> = a.iter().collect();
    let sb: BTreeSet<&String> = b.iter().collect();
    let mut out = String::new();
    for l in a.iter().filter(|l| !sb.contains(l)) {
        out.push_str(&format!("- {l}\n"));
    }
    for l in b.iter().filter(|l| !sa.contains(l)) {
        out.push_str(&format!("+ {l}\n"));
    }
    out
}

/// Copies a directory tree (regular files, directories and symlinks).
pub fn copy_tree(from: &Path, to: &Path) -> Result<(), String> {
    fs::create_dir_all(to).map_err(|e| format!("mkdir {}: {e}", to.display()))?;
    let mode = fs::metadata(from)
        .map_err(|e| e.to_string())?
        .permissions()
        .mode();
    fs::set_permissions(to, fs::Permissions::from_mode(mode)).map_err(|e| e.to_string())?;
    for e in fs::read_dir(from)
        .map_err(|e| format!("{}: {e}", from.display()))?
        .flatten()
    {
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let t = e.file_type().map_err(|e| e.to_string())?;
        if t.is_dir() {
            copy_tree(&src, &dst)?;
        } else if t.is_symlink() {
            let l = fs::read_link(&src).map_err(|e| e.to_string())?;
            std::os::unix::fs::symlink(l, &dst).map_err(|e| e.to_string())?;
        } else if std::os::unix::fs::FileTypeExt::is_socket(&t) {
            // A unix socket's file has no content; a restart binds the name
            // again.
            continue;
        } else {
            fs::copy(&src, &dst).map_err(|e| format!("copy {}: {e}", src.display()))?;
        }
    }
    Ok(())
}

// ---- The image layout. Everything that knows it is here, so it is easy to adapt. ----
//
// D/gen-NNNNNN/{generation.json, proc-<pid>.json, proc-<pid>.img}, D/latest -> gen-NNNNNN.

/// The complete generation directories of a checkpoint dir (not `*.tmp`), oldest first.
pub fn generations(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.is_dir()
                        && p.file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .is_some_and(|n| n.starts_with("gen-") && !n.ends_with(".tmp"))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The newest complete generation: where `D/latest` points, else the last `gen-*`.
pub fn latest_generation(dir: &Path) -> Result<PathBuf, String> {
    if let Ok(t) = fs::read_link(dir.join("latest")) {
        let g = if t.is_absolute() { t } else { dir.join(t) };
        return if g.is_dir() {
            Ok(g)
        } else {
            Err(format!(
                "{}/latest points at {}, not a directory",
                dir.display(),
                g.display()
            ))
        };
    }
    generations(dir)
        .pop()
        .ok_or_else(|| format!("no generation in {}: {:?}", dir.display(), list_dir(dir)))
}

/// The process image data files of a generation (`proc-*.img`).
pub fn image_data_files(gen_dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(gen_dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    let n = p
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    n.starts_with("proc-") && n.ends_with(".img")
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Names in a directory, for messages.
pub fn list_dir(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Flips `len` bytes in the middle of a file (keeps its size).
pub fn corrupt_middle(path: &Path, len: usize) -> Result<(), String> {
    let mut data = fs::read(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    if data.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    let mid = data.len() / 2;
    let end = (mid + len).min(data.len());
    for b in &mut data[mid..end] {
        *b ^= 0xa5;
    }
    fs::write(path, data).map_err(|e| format!("write {}: {e}", path.display()))
}

/// Truncates a file to half its size.
pub fn truncate_half(path: &Path) -> Result<(), String> {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| format!("open {}: {e}", path.display()))?;
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    f.set_len(len / 2)
        .map_err(|e| format!("truncate {}: {e}", path.display()))
}

// ---- tmux ----

/// A private tmux server (its own socket), killed on drop. Panes stay after their
/// command exits (`remain-on-exit`), so the exit status can be read, and the server
/// stays when its last session is killed (`exit-empty off`), so a new session never
/// races with a server that is shutting down.
pub struct Tmux {
    socket: String,
    conf: PathBuf,
}

impl Tmux {
    pub fn new(scratch: &Scratch) -> Tmux {
        let conf = scratch.join("tmux.conf");
        fs::write(
            &conf,
            "set -s exit-empty off\nset -g remain-on-exit on\nset -g history-limit 5000\n",
        )
        .expect("write tmux.conf");
        let socket = format!(
            "ckpt-cr-{}-{}",
            std::process::id(),
            scratch
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        );
        Tmux { socket, conf }
    }

    /// Runs a tmux command; returns its stdout.
    pub fn cmd<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<String, String> {
        let out = Command::new("/usr/bin/tmux")
            .arg("-L")
            .arg(&self.socket)
            .arg("-f")
            .arg(&self.conf)
            .args(args)
            .env_remove("TMUX")
            .env("TERM", "xterm")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("tmux: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            let a: Vec<String> = args
                .iter()
                .map(|a| a.as_ref().to_string_lossy().into_owned())
                .collect();
            Err(format!(
                "tmux {a:?}: {}: {}",
                describe(out.status),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// A new detached 160x48 session running `shell_cmd` (through /bin/sh).
    pub fn new_session(&self, name: &str, cwd: &Path, shell_cmd: &str) -> Result<(), String> {
        let cwd = cwd.to_string_lossy();
        self.cmd(&[
            "new-session",
            "-d",
            "-s",
            name,
            "-x",
            "160",
            "-y",
            "48",
            "-c",
            &cwd,
            shell_cmd,
        ])
        .map(|_| ())
    }

    /// Types `text` literally, then Enter.
    pub fn send_line(&self, target: &str, text: &str) -> Result<(), String> {
        self.cmd(&["send-keys", "-t", target, "-l", text])?;
        self.cmd(&["send-keys", "-t", target, "Enter"]).map(|_| ())
    }

    /// The visible pane plus its history.
    pub fn capture(&self, target: &str) -> Result<String, String> {
        self.cmd(&["capture-pane", "-p", "-J", "-S", "-", "-t", target])
    }

    pub fn pane_pid(&self, target: &str) -> Result<i32, String> {
        let s = self.cmd(&["display-message", "-p", "-t", target, "#{pane_pid}"])?;
        s.trim().parse().map_err(|e| format!("pane_pid {s:?}: {e}"))
    }

    /// How the pane's command ended ("exit N" or "signal N"), once it has.
    pub fn dead_status(&self, target: &str) -> Result<Option<String>, String> {
        let s = self.cmd(&[
            "display-message",
            "-p",
            "-t",
            target,
            "#{pane_dead} x#{pane_dead_status} x#{pane_dead_signal}",
        ])?;
        let f: Vec<&str> = s.split_whitespace().collect();
        if f.first() != Some(&"1") {
            return Ok(None);
        }
        let status = f.get(1).and_then(|v| v.strip_prefix('x')).unwrap_or("");
        let signal = f.get(2).and_then(|v| v.strip_prefix('x')).unwrap_or("");
        if status.is_empty() && signal.is_empty() {
            // Dead on EOF of its terminal, but the process is not reaped yet.
            return Ok(None);
        }
        Ok(Some(if !status.is_empty() {
            format!("exit {status}")
        } else {
            format!("signal {signal}")
        }))
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

/// Shell-quotes one word for /bin/sh.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// `(images, compressed)` of one generation directory: how many
/// `proc-*.img` files it holds and how many of them are compressed (the
/// header's compression field, bytes 36..40, is 1; docs/image-format.md).
pub fn count_compressed_in(gen_dir: &Path) -> (usize, usize) {
    let (mut images, mut compressed) = (0, 0);
    for e in fs::read_dir(gen_dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("proc-") && name.ends_with(".img")) {
            continue;
        }
        images += 1;
        let mut head = [0u8; 40];
        let read = File::open(e.path()).and_then(|mut f| f.read_exact(&mut head));
        if read.is_ok() && head[36..40] == 1u32.to_le_bytes() {
            compressed += 1;
        }
    }
    (images, compressed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn has_line_matches_whole_lines_only() {
        let text = b"READY\nhold 1\ngo 1\npartial";
        assert!(has_line(text, "READY"));
        assert!(has_line(text, "go 1"));
        assert!(!has_line(text, "hold"));
        assert!(!has_line(text, "go 11"));
        assert!(has_line(text, "partial"));
    }

    #[test]
    fn first_difference_points_at_the_line() {
        assert!(first_difference(b"a\nb\n", b"a\nb\n").is_none());
        let d = first_difference(b"a\nbcd\n", b"a\nbxd\n").expect("differs");
        assert!(d.contains("byte 3"), "{d}");
        assert!(d.contains("\"bcd\\n\"") && d.contains("\"bxd\\n\""), "{d}");
        let d = first_difference(b"a\nb\n", b"a\n").expect("differs");
        assert!(d.contains("expected 4 actual 2"), "{d}");
    }

    #[test]
    fn links_of_pipes_and_sockets_lose_their_inode() {
        assert_eq!(normalize_link("pipe:[1234]"), "pipe:[]");
        assert_eq!(normalize_link("socket:[99]"), "socket:[]");
        assert_eq!(normalize_link("/tmp/x"), "/tmp/x");
        assert_eq!(
            normalize_link("anon_inode:[eventfd]"),
            "anon_inode:[eventfd]"
        );
    }

    #[test]
    fn kill_tree_kills_every_descendant() {
        let s = Scratch::new("unit-kill");
        let mut sp = Spawn::new(Path::new("/bin/sh"), &s.path);
        sp.args = vec![
            "-c".into(),
            "sleep 1000 & (sleep 1000 & sleep 1000) & wait".into(),
        ];
        let mut r = sp.spawn("sh with sleeping children");
        let root = r.pid();
        let kids = wait_until("three descendants", Duration::from_secs(30), || {
            let d = descendants(root);
            Ok((d.len() >= 3).then_some(d))
        })
        .expect("descendants appear");
        r.kill_tree().expect("kill_tree");
        assert!(r.poll().is_some(), "the child is reaped");
        for k in kids {
            assert!(!alive(k), "descendant {k} survived");
        }
    }

    #[test]
    fn image_helpers_follow_the_layout() {
        let s = Scratch::new("unit-layout");
        let d = s.dir("ckpt");
        assert!(latest_generation(&d).is_err());
        for g in ["gen-000001", "gen-000002", "gen-000003.tmp"] {
            fs::create_dir(d.join(g)).expect("mkdir");
        }
        assert_eq!(
            generations(&d),
            vec![d.join("gen-000001"), d.join("gen-000002")]
        );
        assert_eq!(latest_generation(&d).expect("latest"), d.join("gen-000002"));
        std::os::unix::fs::symlink("gen-000001", d.join("latest")).expect("symlink");
        let g = latest_generation(&d).expect("latest");
        assert_eq!(g, d.join("gen-000001"));
        fs::write(g.join("proc-2.img"), vec![7u8; 100]).expect("write");
        fs::write(g.join("proc-2.json"), b"{}").expect("write");
        let files = image_data_files(&g);
        assert_eq!(files, vec![g.join("proc-2.img")]);
        corrupt_middle(&files[0], 8).expect("corrupt");
        let data = fs::read(&files[0]).expect("read");
        assert_eq!(data.len(), 100);
        assert_eq!(data.iter().filter(|&&b| b != 7).count(), 8);
        truncate_half(&files[0]).expect("truncate");
        assert_eq!(fs::metadata(&files[0]).expect("stat").len(), 50);
    }

    #[test]
    fn copy_tree_copies_files_dirs_and_links() {
        let s = Scratch::new("unit-copy");
        let a = s.dir("a");
        fs::create_dir(a.join("sub")).expect("mkdir");
        fs::write(a.join("sub/f"), b"data").expect("write");
        std::os::unix::fs::symlink("sub/f", a.join("l")).expect("symlink");
        copy_tree(&a, &s.join("b")).expect("copy");
        assert_eq!(fs::read(s.join("b/sub/f")).expect("read"), b"data");
        assert_eq!(
            fs::read_link(s.join("b/l")).expect("link"),
            PathBuf::from("sub/f")
        );
    }

    #[test]
    fn visible_state_of_ourselves_is_stable() {
        let me = i32::try_from(std::process::id()).expect("pid");
        let v = visible_state(me).expect("state");
        assert!(v.lines.iter().any(|l| l.starts_with("map ")));
        assert!(v.lines.iter().any(|l| l.starts_with("fd 0 ")));
        assert!(v.lines.iter().any(|l| l.starts_with("cwd ")));
    }
}
