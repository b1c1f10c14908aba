//! A real single-node Slurm cluster for the `slurm` test targets.
//!
//! One suite (`tests/slurm/`), two test targets, two Slurm releases
//! ([`Release`]): `slurm` runs it against Debian's packages (22.05, in
//! `/usr`), `slurm-25-11` against Slurm 25.11 built from source into
//! `/opt/slurm-25.11` (`scripts/install-deps.sh` builds it from
//! `vendor/`); the plugin is built again against that release's headers
//! (`target/slurm-25.11/`), because slurmd loads only a plugin built for its
//! own major.minor. The engine (`ckpt`, `libckpt.so`) is the same for both.
//!
//! [`cluster()`] starts it once per test binary and hands out a guard that
//! serializes the tests (a process-wide mutex, plus an `flock` so that two
//! test binaries on one machine never share the fixed Slurm ports):
//! - it installs the plugin, `libckpt.so` and the `ckpt` binary, taken from
//!   the cargo target directory of the test executable
//!   (`target/<profile>/deps/slurm-HASH` → `target/<profile>/`), into the
//!   root-owned prefix [`PREFIX`]`/install` (files replaced by `rename`);
//! - it writes `plugstack.conf` with [`plugin_args`] and a `TaskProlog`
//!   that exports [`SITE_PROLOG_VAR`], and runs
//!   `scripts/slurm-cluster.sh start`, which installs missing packages,
//!   creates the user [`TEST_USER`], writes `slurm.conf` and (re)starts
//!   munged, slurmctld and slurmd, waiting with deadlines;
//! - at exit it stops the cluster (`CKPT_SLURM_KEEP=1` leaves it running).
//!
//! Jobs are submitted as [`TEST_USER`] with `runuser`, with a clean
//! environment and a deadline ([`JOB_DEADLINE_SECS`]).
//!
//! Without root the tests are skipped with a loud message, except under
//! `CI=true`, where every missing prerequisite fails the test.

use std::fmt;
use std::fs::{self, File};
use std::io::Write as _;
use std::os::unix::fs::{PermissionsExt, chown};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard, OnceLock};

use nix::fcntl::{Flock, FlockArg};

/// Root of everything the test cluster writes (conf, state, logs, installed
/// artifacts, test directories) for Debian's Slurm; another release gets
/// its own (`-25.11` appended). Distinct from the demo's prefix.
pub const PREFIX: &str = "/var/tmp/ckpt-slurm-test";

/// Where Slurm 25.11 is installed (`CKPT_SLURM_25_11_HOME` overrides).
pub const SLURM_25_11_HOME: &str = "/opt/slurm-25.11";

/// The Slurm release a test binary runs against.
#[derive(Debug, Clone)]
pub struct Release {
    /// For messages: `22.05 (Debian)`, `25.11`.
    pub name: &'static str,
    /// Installation prefix of a release built from source (`bin/`, `sbin/`,
    /// `include/`); `None`: Debian's packages.
    pub home: Option<PathBuf>,
    /// This release's cluster prefix.
    pub prefix: PathBuf,
}

impl Release {
    /// The release of the running test binary, from its name (cargo names
    /// a test executable after its target: `slurm-HASH`, `slurm_25_11-HASH`).
    pub fn of_this_binary() -> Release {
        let exe = std::env::current_exe().ok();
        let name = exe
            .as_deref()
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with("slurm_25_11") {
            let home = std::env::var_os("CKPT_SLURM_25_11_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(SLURM_25_11_HOME));
            Release {
                name: "25.11",
                home: Some(home),
                prefix: PathBuf::from(format!("{PREFIX}-25.11")),
            }
        } else {
            Release {
                name: "22.05 (Debian)",
                home: None,
                prefix: PathBuf::from(PREFIX),
            }
        }
    }

    /// `PATH` for commands run against this release.
    pub fn path_env(&self) -> String {
        let base = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin";
        match &self.home {
            Some(h) => format!("{}/bin:{}/sbin:{base}", h.display(), h.display()),
            None => base.to_owned(),
        }
    }
}
/// The unprivileged user that submits every job.
pub const TEST_USER: &str = "slurmtest";
/// Deadline of one `sbatch --wait` or `srun`, seconds.
pub const JOB_DEADLINE_SECS: u32 = 120;
/// The `min_interval=` of the test cluster's plugstack line.
pub const MIN_INTERVAL: u64 = 10;
/// The variable the test cluster's `TaskProlog` exports to every task, set
/// to `ran-` and the prolog's `SLURM_SCRIPT_CONTEXT` (`prolog_task`).
pub const SITE_PROLOG_VAR: &str = "CKPT_TEST_SITE_PROLOG";

/// Inside [`PREFIX`] (created root-owned first): `/run/lock` is missing on
/// minimal systems without an init.
const LOCK_FILE: &str = "/var/tmp/ckpt-slurm-test/.lock";

/// True under CI (`CI=true`): missing prerequisites fail instead of skipping.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Paths of the installed artifacts.
#[derive(Debug, Clone)]
pub struct Install {
    /// The SPANK plugin.
    pub plugin: PathBuf,
    /// The preload library.
    pub libckpt: PathBuf,
    /// The `ckpt` binary.
    pub ckpt_bin: PathBuf,
}

/// The running test cluster.
#[derive(Debug)]
pub struct Cluster {
    /// The Slurm it runs.
    pub release: Release,
    /// [`Release::prefix`].
    pub prefix: PathBuf,
    /// Its `slurm.conf`.
    pub conf: PathBuf,
    /// Installed artifacts.
    pub install: Install,
    /// uid of [`TEST_USER`].
    pub uid: u32,
    /// gid of [`TEST_USER`].
    pub gid: u32,
    /// The repository (for `scripts/`).
    pub repo: PathBuf,
    /// Held for the life of the process: serializes test binaries.
    _lock: Flock<File>,
}

/// Exclusive use of the cluster for one test.
pub struct ClusterGuard {
    cluster: &'static Cluster,
    _serial: MutexGuard<'static, ()>,
}

impl std::ops::Deref for ClusterGuard {
    type Target = Cluster;
    fn deref(&self) -> &Cluster {
        self.cluster
    }
}

static SERIAL: Mutex<()> = Mutex::new(());
static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();

/// The cluster, started on first use; `None` (after a loud message) when the
/// tests cannot run here and `CI` is not set.
pub fn cluster() -> Option<ClusterGuard> {
    // A test that panicked while holding the lock must not fail the others.
    let serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !nix::unistd::geteuid().is_root() {
        let message = "the Slurm tests need root (they start munged, slurmctld and slurmd)";
        if under_ci() {
            panic!("{message}; CI=true, so this is a failure");
        }
        eprintln!(
            "\n*** SKIPPED: {message}; run them as root (or with CI=true to make this fatal) ***\n"
        );
        return None;
    }
    let release = Release::of_this_binary();
    if let Some(home) = &release.home
        && !home.join("sbin/slurmctld").is_file()
    {
        let message = format!(
            "Slurm {} is not installed in {} (scripts/install-deps.sh builds it from vendor/)",
            release.name,
            home.display()
        );
        if under_ci() {
            panic!("{message}; CI=true, so this is a failure");
        }
        eprintln!("\n*** SKIPPED: {message} ***\n");
        return None;
    }
    match CLUSTER.get_or_init(|| start(release)) {
        Ok(cluster) => Some(ClusterGuard {
            cluster,
            _serial: serial,
        }),
        Err(e) => panic!("test cluster did not start: {e}"),
    }
}

/// The plugstack.conf arguments of the test cluster.
pub fn plugin_args(install: &Install, prefix: &Path) -> Vec<String> {
    vec![
        format!("libckpt={}", install.libckpt.display()),
        format!("ckpt={}", install.ckpt_bin.display()),
        format!("default_dir={}/%u/%j", default_dir_root(prefix).display()),
        format!("min_interval={MIN_INTERVAL}"),
        "signal=USR1".to_owned(),
    ]
}

/// The world-writable, sticky parent of the test cluster's `default_dir`.
pub fn default_dir_root(prefix: &Path) -> PathBuf {
    prefix.join("work/default")
}

/// `target/<profile>/` of the running test executable.
pub fn artifact_dir() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    // target/<profile>/deps/slurm-HASH
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .ok_or_else(|| format!("unexpected test executable path {}", exe.display()))
}

/// Builds the plugin against the headers of the release installed in
/// `home`, in its own target directory next to the workspace's; returns
/// the built library.
fn build_plugin_for(home: &Path, repo: &Path, built: &Path) -> Result<PathBuf, String> {
    let target = built
        .parent()
        .ok_or("target directory has no parent")?
        .join(format!(
            "slurm-{}",
            home.file_name()
                .map(|n| n.to_string_lossy().replace("slurm-", ""))
                .unwrap_or_default()
        ));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!(
        "[slurm harness] building the plugin against {} into {}",
        home.display(),
        target.display()
    );
    let out = Command::new(&cargo)
        .current_dir(repo)
        .args(["build", "--release", "-p", "spank-plugin", "--target-dir"])
        .arg(&target)
        .env("SLURM_INCLUDE_DIR", home.join("include"))
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "building the plugin against {} failed:\n{}",
            home.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(target.join("release/libspank_ckpt.so"))
}

fn start(release: Release) -> Result<Cluster, String> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("CARGO_MANIFEST_DIR has no parent")?
        .to_path_buf();
    // The lock lives in the first prefix, whatever the release: the ports
    // are the same for every test cluster.
    for prefix in [Path::new(PREFIX), &release.prefix] {
        mkdir_mode(prefix, 0o755)?;
        // The installed plugin and libraries must not be replaceable by users.
        chown(prefix, Some(0), Some(0))
            .map_err(|e| format!("chown root {}: {e}", prefix.display()))?;
    }
    let prefix = release.prefix.clone();
    let lock = take_lock()?;

    let built = artifact_dir()?;
    let plugin = match &release.home {
        Some(home) => build_plugin_for(home, &repo, &built)?,
        None => built.join("libspank_ckpt.so"),
    };
    let sources = [
        (plugin, "lib/slurm/spank_ckpt.so"),
        (built.join("libckpt.so"), "lib/ckpt/libckpt.so"),
        (built.join("ckpt"), "bin/ckpt"),
    ];
    let mut installed = Vec::new();
    for (src, dest) in sources {
        if !src.is_file() {
            return Err(format!(
                "{} not found: build the workspace in the same profile first \
                 (cargo build --release --workspace && cargo test --release --workspace)",
                src.display()
            ));
        }
        let dest = prefix.join("install").join(dest);
        install_file(&src, &dest)?;
        installed.push(dest);
    }
    let install = Install {
        plugin: installed[0].clone(),
        libckpt: installed[1].clone(),
        ckpt_bin: installed[2].clone(),
    };

    mkdir_mode(&prefix.join("etc"), 0o755)?;
    let plugstack = prefix.join("etc/plugstack.conf");
    let line = format!(
        "required {} {}\n",
        install.plugin.display(),
        plugin_args(&install, &prefix).join(" ")
    );
    write_file(&plugstack, &line)?;
    // The site's TaskProlog (slurm.conf): exports only, so that no job's
    // output changes.
    let task_prolog = prefix.join("etc/taskprolog.sh");
    write_file(
        &task_prolog,
        &format!(
            "#!/bin/sh\n# TaskProlog of the ckpt test cluster\n\
             echo \"export {SITE_PROLOG_VAR}=ran-$SLURM_SCRIPT_CONTEXT\"\n"
        ),
    )?;
    fs::set_permissions(&task_prolog, fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("chmod {}: {e}", task_prolog.display()))?;

    let script = repo.join("scripts/slurm-cluster.sh");
    let mut cmd = Command::new("bash");
    if let Some(home) = &release.home {
        cmd.env("CKPT_SLURM_HOME", home);
    }
    let _ = STOP.set((prefix.clone(), release.home.clone()));
    let out = cmd
        .arg(&script)
        .arg("start")
        .env("CKPT_SLURM_PREFIX", &prefix)
        .env("CKPT_SLURM_PLUGSTACK", &plugstack)
        .env("CKPT_SLURM_TASK_PROLOG", &task_prolog)
        .env("CKPT_SLURM_USER", TEST_USER)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} start failed ({}):\n{}{}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let user = nix::unistd::User::from_name(TEST_USER)
        .map_err(|e| format!("getpwnam({TEST_USER}): {e}"))?
        .ok_or_else(|| format!("user {TEST_USER} missing after slurm-cluster.sh start"))?;

    let work = prefix.join("work");
    if work.exists() {
        fs::remove_dir_all(&work).map_err(|e| format!("rm -r {}: {e}", work.display()))?;
    }
    mkdir_mode(&work, 0o755)?;
    mkdir_mode(&default_dir_root(&prefix), 0o1777)?;

    if std::env::var_os("CKPT_SLURM_KEEP").is_none() {
        // SAFETY: registers a plain extern "C" fn with no arguments; atexit
        // only stores the pointer.
        unsafe { libc::atexit(stop_at_exit) };
    }
    Ok(Cluster {
        conf: prefix.join("etc/slurm.conf"),
        release,
        prefix,
        install,
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        repo,
        _lock: lock,
    })
}

/// What `stop_at_exit` stops: the cluster prefix and the release's home.
static STOP: OnceLock<(PathBuf, Option<PathBuf>)> = OnceLock::new();

extern "C" fn stop_at_exit() {
    let Some((prefix, home)) = STOP.get() else {
        return;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/slurm-cluster.sh");
    let mut cmd = Command::new("bash");
    if let Some(home) = home {
        cmd.env("CKPT_SLURM_HOME", home);
    }
    let _ = cmd
        .arg(script)
        .arg("stop")
        .env("CKPT_SLURM_PREFIX", prefix)
        .output();
}

fn take_lock() -> Result<Flock<File>, String> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK_FILE)
        .map_err(|e| format!("open {LOCK_FILE}: {e}"))?;
    eprintln!("[slurm harness] taking {LOCK_FILE} (waits while another Slurm test run holds it)");
    // Kept in the static Cluster: released when the process exits.
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| format!("flock {LOCK_FILE}: {e}"))
}

fn mkdir_mode(dir: &Path, mode: u32) -> Result<(), String> {
    fs::create_dir_all(dir).map_err(|e| format!("mkdir -p {}: {e}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {mode:o} {}: {e}", dir.display()))
}

fn write_file(path: &Path, text: &str) -> Result<(), String> {
    fs::write(path, text).map_err(|e| format!("write {}: {e}", path.display()))
}

/// Copies `src` to `dest` through a temporary name and `rename`, mode 0755:
/// a running slurmstepd may have the old file mapped.
fn install_file(src: &Path, dest: &Path) -> Result<(), String> {
    let dir = dest
        .parent()
        .ok_or_else(|| format!("{} has no parent", dest.display()))?;
    let mut level = Some(dir);
    let mut levels = Vec::new();
    while let Some(d) = level {
        if d == Path::new(PREFIX).parent().unwrap_or(Path::new("/")) {
            break;
        }
        levels.push(d.to_path_buf());
        level = d.parent();
    }
    for d in levels.iter().rev() {
        mkdir_mode(d, 0o755)?;
        chown(d, Some(0), Some(0)).map_err(|e| format!("chown root {}: {e}", d.display()))?;
    }
    let tmp = dir.join(format!(
        ".{}.tmp",
        dest.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    fs::copy(src, &tmp).map_err(|e| format!("cp {} {}: {e}", src.display(), tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("chmod {}: {e}", tmp.display()))?;
    fs::rename(&tmp, dest).map_err(|e| format!("mv {} {}: {e}", tmp.display(), dest.display()))
}

/// One finished submission.
#[derive(Debug)]
pub struct JobRun {
    /// What was run (for messages).
    pub command: String,
    /// Job id, when the submission printed one.
    pub id: Option<u32>,
    /// Exit status of `sbatch --wait` / `srun` (the job's exit code).
    pub success: bool,
    /// Exit code, if any.
    pub code: Option<i32>,
    /// stdout of the submitting command.
    pub submit_stdout: String,
    /// stderr of the submitting command.
    pub submit_stderr: String,
    /// The job's output file (batch jobs).
    pub stdout: String,
    /// The job's error file (batch jobs).
    pub stderr: String,
}

impl fmt::Display for JobRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "command: {}", self.command)?;
        writeln!(f, "job id: {:?}, exit code: {:?}", self.id, self.code)?;
        writeln!(f, "--- submit stdout:\n{}", self.submit_stdout)?;
        writeln!(f, "--- submit stderr:\n{}", self.submit_stderr)?;
        writeln!(f, "--- job stdout:\n{}", self.stdout)?;
        write!(f, "--- job stderr:\n{}", self.stderr)
    }
}

impl Cluster {
    /// A fresh directory for one test, owned by [`TEST_USER`], mode 0755.
    pub fn workdir(&self, name: &str) -> PathBuf {
        let dir = self.prefix.join("work").join(name);
        if dir.exists() {
            fs::remove_dir_all(&dir).unwrap_or_else(|e| panic!("rm -r {}: {e}", dir.display()));
        }
        mkdir_mode(&dir, 0o755).unwrap_or_else(|e| panic!("{e}"));
        self.give_to_user(&dir);
        dir
    }

    /// chown to the test user.
    pub fn give_to_user(&self, path: &Path) {
        chown(path, Some(self.uid), Some(self.gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    }

    /// Writes an executable script owned by the test user.
    /// Created with `O_EXCL` (never through an existing name or symlink),
    /// as it is written by root into the user's directory.
    pub fn write_script(&self, path: &Path, text: &str) {
        let mut f = File::options()
            .write(true)
            .create_new(true)
            .open(path)
            .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        f.write_all(text.as_bytes())
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        drop(f);
        fs::set_permissions(path, fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
        self.give_to_user(path);
    }

    /// A command run as [`TEST_USER`] in `dir`, with a clean environment
    /// pointing at this cluster and a deadline.
    pub fn user_command(&self, dir: &Path, conf: &Path, argv: &[&str]) -> Command {
        let mut cmd = Command::new("/usr/sbin/runuser");
        cmd.env_clear()
            .current_dir(dir)
            .args(["-u", TEST_USER, "--", "/usr/bin/env"])
            .arg(format!("PATH={}", self.release.path_env()))
            .arg(format!("HOME=/home/{TEST_USER}"))
            .arg(format!("USER={TEST_USER}"))
            .arg("LANG=C.UTF-8")
            .arg(format!("SLURM_CONF={}", conf.display()))
            .args(["timeout", "-k", "5", &JOB_DEADLINE_SECS.to_string()])
            .args(argv);
        cmd
    }

    /// Runs a command as the test user against this cluster.
    pub fn run_as_user(&self, dir: &Path, argv: &[&str]) -> JobRun {
        self.run_with_conf(dir, &self.conf, argv)
    }

    /// Runs a command as the test user with another `slurm.conf` (see
    /// [`Cluster::conf_with_plugstack`]).
    pub fn run_with_conf(&self, dir: &Path, conf: &Path, argv: &[&str]) -> JobRun {
        let out = self
            .user_command(dir, conf, argv)
            .output()
            .unwrap_or_else(|e| panic!("cannot run runuser: {e}"));
        job_run(argv.join(" "), &out, None)
    }

    /// `sbatch --wait --parsable -o OUT -e ERR ARGS SCRIPT` as the test user
    /// in `dir`; returns once the job has ended.
    pub fn sbatch(&self, dir: &Path, args: &[&str], script: &str) -> JobRun {
        let out_file = dir.join("job.out");
        let err_file = dir.join("job.err");
        for f in [&out_file, &err_file] {
            let _ = fs::remove_file(f);
        }
        let out_arg = format!("--output={}", out_file.display());
        let err_arg = format!("--error={}", err_file.display());
        let mut argv = vec![
            "sbatch",
            "--wait",
            "--parsable",
            "-t",
            "5",
            &out_arg,
            &err_arg,
        ];
        argv.extend_from_slice(args);
        argv.push(script);
        let out = self
            .user_command(dir, &self.conf, &argv)
            .output()
            .unwrap_or_else(|e| panic!("cannot run runuser: {e}"));
        let mut run = job_run(argv.join(" "), &out, None);
        run.id = run
            .submit_stdout
            .lines()
            .next()
            .and_then(|l| l.split(';').next())
            .and_then(|id| id.trim().parse().ok());
        run.stdout = fs::read_to_string(&out_file).unwrap_or_default();
        run.stderr = fs::read_to_string(&err_file).unwrap_or_default();
        run
    }

    /// A Slurm command of this cluster's release, run as root.
    pub fn tool(&self, prog: &str) -> Command {
        let mut cmd = Command::new(prog);
        cmd.env("PATH", self.release.path_env())
            .env("SLURM_CONF", &self.conf);
        cmd
    }

    /// Jobs named `name` that slurmctld knows in any state (`squeue -t all`).
    pub fn jobs_named(&self, name: &str) -> String {
        let out = self
            .tool("squeue")
            .args(["-h", "-t", "all", "-o", "%i %T", "-n", name])
            .output()
            .unwrap_or_else(|e| panic!("cannot run squeue: {e}"));
        assert!(
            out.status.success(),
            "squeue failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A copy of `slurm.conf` whose `PlugStackConfig` holds `plugstack_line`.
    /// Only the submitting commands read it (srun, sbatch, salloc load the
    /// plugin themselves); the daemons keep the cluster's plugstack.
    pub fn conf_with_plugstack(&self, name: &str, plugstack_line: &str) -> PathBuf {
        let dir = self.prefix.join("etc/alt").join(name);
        mkdir_mode(&dir, 0o755).unwrap_or_else(|e| panic!("{e}"));
        let plugstack = dir.join("plugstack.conf");
        write_file(&plugstack, &format!("{plugstack_line}\n")).unwrap_or_else(|e| panic!("{e}"));
        let main = fs::read_to_string(&self.conf).unwrap_or_else(|e| panic!("read conf: {e}"));
        let text: String = main
            .lines()
            .map(|l| {
                if l.starts_with("PlugStackConfig=") {
                    format!("PlugStackConfig={}\n", plugstack.display())
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        let conf = dir.join("slurm.conf");
        write_file(&conf, &text).unwrap_or_else(|e| panic!("{e}"));
        conf
    }

    /// Panics with `what`, the job's outputs and the daemons' log tails.
    pub fn fail(&self, what: &str, run: Option<&JobRun>) -> ! {
        let mut text = format!("{what}\n");
        if let Some(run) = run {
            text.push_str(&format!("{run}\n"));
        }
        for log in ["slurmctld.log", "slurmd.log"] {
            let path = self.prefix.join("log").join(log);
            let content = fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = content.lines().collect();
            let tail = lines.len().saturating_sub(30);
            text.push_str(&format!("--- last lines of {}:\n", path.display()));
            for l in lines.get(tail..).unwrap_or_default() {
                text.push_str(l);
                text.push('\n');
            }
        }
        panic!("{text}");
    }

    /// Asserts `cond`, failing with [`Cluster::fail`].
    pub fn check(&self, cond: bool, what: &str, run: &JobRun) {
        if !cond {
            self.fail(what, Some(run));
        }
    }
}

fn job_run(command: String, out: &Output, id: Option<u32>) -> JobRun {
    JobRun {
        command,
        id,
        success: out.status.success(),
        code: out.status.code(),
        submit_stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        submit_stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        stdout: String::new(),
        stderr: String::new(),
    }
}
