//! Security suite: the checkpoint directory against a second user.
//!
//! Each case reproduces a finding of the security review of the checkpoint
//! directory handling (see `docs/security.md`) with two unprivileged users,
//! `ckpt-sec-a` (whose job it is) and `ckpt-sec-b` (the other user), and
//! root standing in for whoever could rename or plant entries:
//! - `shared_parent_refused`: a directory below one that B can change (a
//!   0777 directory inside a sticky one) is refused by `ckpt launch` and
//!   `ckpt status`, for A and for root, before the program runs;
//! - `group_writable_dir_kept_and_refused`: a 2775 directory is refused and
//!   keeps its mode (it used to be chmod'ed to 0700, losing setgid); a 0750
//!   one is used with a note, and what ckpt writes in it is 0700/0600;
//! - `renamed_directory_checkpoint_stays_in_the_opened_one`: the directory
//!   renamed and replaced (with planted symlinks) under a running job: the
//!   checkpoint lands in the directory that was opened, nothing goes
//!   through the symlinks, and it restarts;
//! - `planted_socket_gets_nothing`, `planted_socket_gets_nothing_from_the_job`:
//!   B's listener put in place of `ckpt.sock` receives no byte, neither from
//!   `ckpt checkpoint` (which says the listener runs as another uid) nor
//!   from the job's processes at a periodic checkpoint (no `STOPPED`); the
//!   job keeps running and ends correctly;
//! - `long_socket_path_works`: a directory whose socket path is longer than
//!   `sun_path` (108 bytes): launch, checkpoint, kill -9, restart;
//! - `planted_symlinks_not_followed`: symlinks named like the files ckpt
//!   creates (`.ckpt.lock`, `.latest.tmp`, `latest`, `gen-N.tmp`,
//!   `ckpt.sock`) never lead it to create or change their targets.
//!
//! The tests need root: they create the two users when missing (`useradd -M
//! -s /bin/sh`) and run commands as them with `setpriv`. Without root, or
//! when the users cannot be created, a test prints a SKIP line (under
//! `CI=true` it fails instead). Each test has its own scratch directory (a
//! root-owned 0755 directory under /tmp) holding copies of `ckpt`,
//! `libckpt.so` and the ticker (so that the users can run them wherever the
//! build is), the users' directories and the logs.
//!
//! No assertion is on time; every wait has a deadline.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::OnceLock;

use ckpt_tests::cr::{
    Running, Scratch, Spawn, alive, deadline, describe, find_by_inner_pid, locate_ckpt,
    prerequisite, required, tail, wait_until,
};
use ckpt_tests::faults::{expected_output, gen_numbers, ticker};

const USER_A: &str = "ckpt-sec-a";
const USER_B: &str = "ckpt-sec-b";

/// B's listener: a `SOCK_SEQPACKET` socket (mode 0777, so that A can
/// connect) that logs every connection and every byte it receives, and
/// closes a connection after 5 s without data (an old client waiting for
/// an answer then gets EOF instead of hanging).
const LISTENER_PY: &str = r#"
import os, socket, sys, threading
path, log = sys.argv[1], sys.argv[2]
lock = threading.Lock()
def note(line):
    with lock:
        with open(log, "a") as f:
            f.write(line + "\n")
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.bind(path)
os.chmod(path, 0o777)
s.listen(64)
def serve(c, n):
    total = 0
    c.settimeout(5)
    try:
        while True:
            d = c.recv(65536)
            if not d:
                break
            total += len(d)
            note("data %d %s" % (n, d.hex()))
    except Exception as e:
        note("error %d %r" % (n, e))
    note("closed %d %d" % (n, total))
    c.close()
note("listening")
n = 0
while True:
    c, _ = s.accept()
    n += 1
    note("accepted %d" % n)
    threading.Thread(target=serve, args=(c, n), daemon=True).start()
"#;

#[derive(Clone, Debug)]
struct User {
    name: String,
    uid: u32,
    gid: u32,
}

fn lookup(name: &str) -> Option<User> {
    let u = nix::unistd::User::from_name(name).ok().flatten()?;
    Some(User {
        name: name.to_string(),
        uid: u.uid.as_raw(),
        gid: u.gid.as_raw(),
    })
}

/// The user `name`, created (no home directory, /bin/sh) when missing.
fn ensure_user(name: &str) -> Result<User, String> {
    if let Some(u) = lookup(name) {
        return Ok(u);
    }
    let o = Command::new("useradd")
        .args(["-M", "-s", "/bin/sh", name])
        .output()
        .map_err(|e| format!("run useradd: {e}"))?;
    // Another test process may have created it meanwhile: look again.
    lookup(name).ok_or_else(|| {
        format!(
            "useradd -M -s /bin/sh {name}: {} {}",
            describe(o.status),
            String::from_utf8_lossy(&o.stderr).trim()
        )
    })
}

fn users() -> Result<(User, User), String> {
    static U: OnceLock<Result<(User, User), String>> = OnceLock::new();
    U.get_or_init(|| Ok((ensure_user(USER_A)?, ensure_user(USER_B)?)))
        .clone()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn first_file(candidates: &[&str]) -> Option<PathBuf> {
    candidates.iter().map(PathBuf::from).find(|p| p.is_file())
}

/// Descriptors this process inherited (a jobserver pipe, say) must not
/// reach the jobs: a job of another user cannot reopen root's pipe through
/// `/proc/self/fd` when its image is written.
fn close_inherited_on_exec() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let fds: Vec<i32> = fs::read_dir("/proc/self/fd")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .filter(|&fd| fd > 2)
            .collect();
        for fd in fds {
            let _ = nix::fcntl::fcntl(
                fd,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            );
        }
    });
}

fn os(s: impl AsRef<OsStr>) -> OsString {
    s.as_ref().to_owned()
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).map_or(0, |m| m.mode() & 0o7777)
}

fn io<T>(what: &str, p: &Path, r: std::io::Result<T>) -> Result<T, String> {
    r.map_err(|e| format!("{what} {}: {e}", p.display()))
}

/// Names in a directory, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Who runs a command: a test user, or root (`None`).
type Who<'a> = Option<&'a User>;

/// One test's world: scratch directory, binaries the users can run, users.
struct Env {
    s: Scratch,
    ckpt: PathBuf,
    ticker: PathBuf,
    setpriv: PathBuf,
    python: Option<PathBuf>,
    listener_py: PathBuf,
    logs: PathBuf,
    a: User,
    b: User,
}

/// The test's environment, or `None` (after a SKIP line) when a
/// prerequisite is missing.
fn setup(label: &str) -> Option<Env> {
    if !prerequisite(
        is_root(),
        &format!("{label} needs root (it creates two users and runs ckpt as them)"),
    ) {
        return None;
    }
    let ckpt = required(locate_ckpt())?;
    let Some(setpriv) = first_file(&["/usr/bin/setpriv", "/bin/setpriv"]) else {
        prerequisite(
            false,
            "setpriv (util-linux), to run commands as the test users",
        );
        return None;
    };
    let (a, b) = match users() {
        Ok(u) => u,
        Err(e) => {
            prerequisite(false, &format!("the test users {USER_A} and {USER_B}: {e}"));
            return None;
        }
    };
    close_inherited_on_exec();
    match Env::new(label, &ckpt, setpriv, a, b) {
        Ok(env) => Some(env),
        Err(e) => panic!("{label}: setting up: {e}"),
    }
}

impl Env {
    fn new(label: &str, ckpt: &Path, setpriv: PathBuf, a: User, b: User) -> Result<Env, String> {
        let s = Scratch::new(&format!("security-{label}"));
        io(
            "chmod",
            &s.path,
            fs::set_permissions(&s.path, fs::Permissions::from_mode(0o755)),
        )?;
        let bin = s.join("bin");
        let logs = s.join("logs");
        for d in [&bin, &logs] {
            io("mkdir", d, fs::create_dir(d))?;
            io(
                "chmod",
                d,
                fs::set_permissions(d, fs::Permissions::from_mode(0o755)),
            )?;
        }
        // Copies the users can run wherever the build is (a 0700 home,
        // say); libckpt.so beside ckpt, where `ckpt launch` looks for it.
        let lib = std::env::var_os("CKPT_LIB")
            .map(PathBuf::from)
            .unwrap_or_else(|| ckpt.with_file_name("libckpt.so"));
        let copy = |from: &Path, name: &str| -> Result<PathBuf, String> {
            let to = bin.join(name);
            io("copy", from, fs::copy(from, &to))?;
            io(
                "chmod",
                &to,
                fs::set_permissions(&to, fs::Permissions::from_mode(0o755)),
            )?;
            Ok(to)
        };
        let ckpt = copy(ckpt, "ckpt")?;
        copy(&lib, "libckpt.so")?;
        let ticker = copy(&ticker(), "ticker")?;
        let listener_py = bin.join("listener.py");
        io("write", &listener_py, fs::write(&listener_py, LISTENER_PY))?;
        io(
            "chmod",
            &listener_py,
            fs::set_permissions(&listener_py, fs::Permissions::from_mode(0o644)),
        )?;
        let python = first_file(&["/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3"]);
        Ok(Env {
            s,
            ckpt,
            ticker,
            setpriv,
            python,
            listener_py,
            logs,
            a,
            b,
        })
    }

    /// Creates `rel` under the scratch directory (parents must exist),
    /// owned by `owner` (root when `None`), with exactly `mode`.
    fn mkdir(&self, rel: impl AsRef<Path>, mode: u32, owner: Who<'_>) -> Result<PathBuf, String> {
        let p = self.s.join(rel);
        io("mkdir", &p, fs::create_dir(&p))?;
        self.own(&p, owner)?;
        io(
            "chmod",
            &p,
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)),
        )?;
        Ok(p)
    }

    fn own(&self, p: &Path, owner: Who<'_>) -> Result<(), String> {
        if let Some(u) = owner {
            io(
                "chown",
                p,
                std::os::unix::fs::lchown(p, Some(u.uid), Some(u.gid)),
            )?;
        }
        Ok(())
    }

    /// A new (truncated) file for a child's output, owned by whoever runs it.
    fn owned_file(&self, p: &Path, owner: Who<'_>) -> Result<File, String> {
        let f = io("create", p, File::create(p))?;
        self.own(p, owner)?;
        Ok(f)
    }

    /// `program` as `who` (through setpriv, with no supplementary groups).
    fn cmd<'a>(&'a self, who: Who<'_>, program: &'a Path) -> Spawn<'a> {
        match who {
            None => Spawn::new(program, &self.s.path),
            Some(u) => Spawn::new(&self.setpriv, &self.s.path)
                .arg(format!("--reuid={}", u.uid))
                .arg(format!("--regid={}", u.gid))
                .arg("--clear-groups")
                .arg("--")
                .arg(program),
        }
    }

    /// Runs `program args` as `who` to completion; its stdout and stderr
    /// go to `logs/<tag>.out|err`. Returns (status, stdout, stderr).
    fn run(
        &self,
        who: Who<'_>,
        program: &Path,
        args: &[OsString],
        tag: &str,
    ) -> Result<(ExitStatus, String, String), String> {
        let (out, err) = (
            self.logs.join(format!("{tag}.out")),
            self.logs.join(format!("{tag}.err")),
        );
        let mut sp = self.cmd(who, program).args(args);
        sp.stdout = self.owned_file(&out, who)?.into();
        sp.stderr = self.owned_file(&err, who)?.into();
        let mut r = sp.spawn(tag);
        let st = r.wait(deadline());
        let (o, e) = (tail(&out, 1 << 16), tail(&err, 1 << 16));
        match st {
            Ok(st) => Ok((st, o, e)),
            Err(why) => Err(format!("{tag}: {why}\nstdout: {o}\nstderr: {e}")),
        }
    }

    /// [`Env::run`] of `ckpt`.
    fn ckpt(
        &self,
        who: Who<'_>,
        args: &[OsString],
        tag: &str,
    ) -> Result<(ExitStatus, String, String), String> {
        self.run(who, &self.ckpt, args, tag)
    }

    /// [`Env::run`] that must succeed.
    fn run_ok(
        &self,
        who: Who<'_>,
        program: &str,
        args: &[OsString],
        tag: &str,
    ) -> Result<(), String> {
        let (st, out, err) = self.run(who, Path::new(program), args, tag)?;
        if !st.success() {
            return Err(format!(
                "{tag}: {program} {args:?}: {}\nstdout: {out}\nstderr: {err}",
                describe(st)
            ));
        }
        Ok(())
    }

    /// Starts B's listener at `dir/listen.sock` (`dir` belongs to B);
    /// returns it with its log and its socket, once it listens.
    fn listener(&self, dir: &Path, tag: &str) -> Result<(Running, PathBuf, PathBuf), String> {
        let Some(python) = self.python.as_deref() else {
            return Err("no python3 in /usr/bin, /usr/local/bin or /bin".into());
        };
        let sock = dir.join("listen.sock");
        let log = dir.join("received.log");
        let mut sp = self
            .cmd(Some(&self.b), python)
            .arg(&self.listener_py)
            .arg(&sock)
            .arg(&log);
        let b = Some(&self.b);
        sp.stdout = self
            .owned_file(&self.logs.join(format!("{tag}.out")), b)?
            .into();
        sp.stderr = self
            .owned_file(&self.logs.join(format!("{tag}.err")), b)?
            .into();
        let mut l = sp.spawn(tag);
        wait_until("B's listener to listen", deadline(), || {
            if fs::read_to_string(&log).is_ok_and(|t| t.contains("listening")) {
                return Ok(Some(()));
            }
            match l.poll() {
                Some(st) => Err(format!(
                    "B's listener exited: {}\n{}",
                    describe(st),
                    tail(&self.logs.join(format!("{tag}.err")), 4096)
                )),
                None => Ok(None),
            }
        })?;
        Ok((l, log, sock))
    }

    /// Turns a failure into a panic with the logs.
    fn finish(&self, r: Result<(), String>) {
        if let Err(e) = r {
            panic!("{e}\n{}", self.s.tails(8192));
        }
    }
}

/// A refusal: a non-zero exit (not a crash) whose stderr has every word.
fn refused(what: &str, r: &(ExitStatus, String, String), words: &[&str]) -> Result<(), String> {
    let (st, out, err) = r;
    if st.success() || st.code().is_none() || !words.iter().all(|w| err.contains(w)) {
        return Err(format!(
            "{what}: {} (want a refusal whose message says all of {words:?})\nstdout: {out}\nstderr: {err}",
            describe(*st)
        ));
    }
    eprintln!("{what}: refused: {}", err.trim());
    Ok(())
}

/// The ticker (`faults/programs/ticker.c`, 4 MiB heap) run by a user.
struct Ticker<'e> {
    env: &'e Env,
    user: &'e User,
    dir: PathBuf,
    work: PathBuf,
    tag: String,
}

impl<'e> Ticker<'e> {
    fn new(env: &'e Env, user: &'e User, dir: &Path, tag: &str) -> Result<Ticker<'e>, String> {
        let work = env.mkdir(format!("work-{tag}"), 0o700, Some(user))?;
        Ok(Ticker {
            env,
            user,
            dir: dir.to_path_buf(),
            work,
            tag: tag.to_string(),
        })
    }

    fn out(&self) -> PathBuf {
        self.work.join("out")
    }

    fn launch_err_path(&self) -> PathBuf {
        self.env.logs.join(format!("launch-{}.err", self.tag))
    }

    fn launch_err(&self) -> String {
        tail(&self.launch_err_path(), 1 << 16)
    }

    /// `ckpt launch --dir DIR EXTRA -- ticker WORK 4` as the user.
    fn launch(&self, extra: &[&str]) -> Result<Running, String> {
        let who = Some(self.user);
        let mut sp = self
            .env
            .cmd(who, &self.env.ckpt)
            .arg("launch")
            .arg("--dir")
            .arg(&self.dir)
            .args(extra)
            .arg("--")
            .arg(&self.env.ticker)
            .arg(&self.work)
            .arg("4");
        sp.stdout = self.env.owned_file(&self.out(), who)?.into();
        sp.stderr = self.env.owned_file(&self.launch_err_path(), who)?.into();
        Ok(sp.spawn(&format!("ckpt launch ({})", self.tag)))
    }

    fn wait_ready(&self, l: &mut Running) -> Result<(), String> {
        wait_until("the ticker's READY", deadline(), || {
            if fs::read(self.out()).is_ok_and(|b| b.starts_with(b"READY\n")) {
                return Ok(Some(()));
            }
            match l.poll() {
                Some(st) => Err(format!(
                    "ckpt launch ({}) exited before READY: {}\nstderr: {}",
                    self.tag,
                    describe(st),
                    self.launch_err()
                )),
                None => Ok(None),
            }
        })
    }

    /// The launch and the program (pid 2 of the job) are alive.
    fn still_running(&self, l: &mut Running) -> Result<(), String> {
        l.check_running()?;
        let p = wait_until("the program's host pid", deadline(), || {
            Ok(find_by_inner_pid(l.pid(), 2))
        })?;
        if !alive(p) {
            return Err(format!("the program ({p}) died"));
        }
        Ok(())
    }

    /// `ckpt checkpoint --dir DIR` as the user; must succeed. Returns stdout.
    fn checkpoint(&self, dir: &Path, tag: &str) -> Result<String, String> {
        let (st, out, err) = self.env.ckpt(
            Some(self.user),
            &[os("checkpoint"), os("--dir"), os(dir)],
            &format!("checkpoint-{}-{tag}", self.tag),
        )?;
        if !st.success() {
            return Err(format!(
                "checkpoint {tag} of {}: {}\nstdout: {out}\nstderr: {err}\nlaunch: {}",
                dir.display(),
                describe(st),
                self.launch_err()
            ));
        }
        Ok(out)
    }

    /// `ckpt restart --dir DIR` as the user, lets the program finish, and
    /// requires exit 0 and the output of an uninterrupted run.
    fn restart_and_verify(&self, dir: &Path) -> Result<(), String> {
        let go = self.work.join("go");
        io("create", &go, fs::write(&go, b""))?;
        let (st, out, err) = self.env.ckpt(
            Some(self.user),
            &[os("restart"), os("--dir"), os(dir)],
            &format!("restart-{}", self.tag),
        )?;
        let got = fs::read_to_string(self.out()).unwrap_or_default();
        if !st.success() || got != expected_output() {
            return Err(format!(
                "restart of {}: {}\nstdout: {out}\nstderr: {err}\nprogram output: {got:?}",
                dir.display(),
                describe(st)
            ));
        }
        Ok(())
    }
}

/// Finding: a checkpoint directory below a directory another user can
/// change was used (that user could move it away and put their own in its
/// place). B's 0777 directory inside a sticky directory (like /tmp): A's
/// directory below it is refused by `ckpt launch` (the program never runs)
/// and `ckpt status`, the message naming B's directory; root's too.
#[test]
fn shared_parent_refused() {
    let Some(env) = setup("shared_parent_refused") else {
        return;
    };
    let r = (|| -> Result<(), String> {
        let (a, b) = (&env.a, &env.b);
        let sticky = env.mkdir("sticky", 0o1777, None)?;
        let bdir = sticky.join("bdir");
        env.run_ok(
            Some(b),
            "/bin/mkdir",
            &[os("-m"), os("777"), os(&bdir)],
            "mkdir-b",
        )?;
        let ck = bdir.join("a").join("ck");
        for d in [bdir.join("a"), ck.clone()] {
            env.run_ok(
                Some(a),
                "/bin/mkdir",
                &[os("-m"), os("700"), os(&d)],
                "mkdir-a",
            )?;
        }
        let home = env.mkdir("a-home", 0o700, Some(a))?;
        let b_dir = bdir.to_string_lossy().into_owned();
        let words = [
            b_dir.as_str(),
            b.name.as_str(),
            "can be changed by users other than",
        ];
        let touch = |mark: &Path| {
            vec![
                os("--"),
                os("/bin/sh"),
                os("-c"),
                os(r#"touch "$1""#),
                os("sh"),
                os(mark),
            ]
        };

        let mark = home.join("MARK");
        let mut args = vec![os("launch"), os("--dir"), os(&ck)];
        args.extend(touch(&mark));
        refused(
            "A's launch below B's directory",
            &env.ckpt(Some(a), &args, "launch-a")?,
            &words,
        )?;
        if mark.exists() {
            return Err("A's program ran although its checkpoint directory was refused".into());
        }
        refused(
            "A's status below B's directory",
            &env.ckpt(Some(a), &[os("status"), os("--dir"), os(&ck)], "status-a")?,
            &words,
        )?;

        // Root's job, its directory below B's: refused all the same.
        let rck = bdir.join("r").join("ck");
        io(
            "mkdir",
            &rck,
            fs::DirBuilder::new().recursive(true).create(&rck),
        )?;
        io(
            "chmod",
            &rck,
            fs::set_permissions(&rck, fs::Permissions::from_mode(0o700)),
        )?;
        let rmark = env.s.join("root-MARK");
        let mut args = vec![os("launch"), os("--dir"), os(&rck)];
        args.extend(touch(&rmark));
        refused(
            "root's launch below B's directory",
            &env.ckpt(None, &args, "launch-root")?,
            &words,
        )?;
        if rmark.exists() {
            return Err("root's program ran although its checkpoint directory was refused".into());
        }
        refused(
            "root's status below B's directory",
            &env.ckpt(None, &[os("status"), os("--dir"), os(&rck)], "status-root")?,
            &words,
        )
    })();
    env.finish(r);
}

/// Finding: a group-writable directory was silently chmod'ed to 0700 (a
/// 2775 team directory lost its setgid bit and its group's access) and
/// then used. Now it is refused, naming the mode, and left as it was; a
/// 0750 one is used as it is, with a note, and everything ckpt creates in
/// it is private.
#[test]
fn group_writable_dir_kept_and_refused() {
    let Some(env) = setup("group_writable_dir_kept_and_refused") else {
        return;
    };
    let r = (|| -> Result<(), String> {
        let a = &env.a;
        let team = env.mkdir("team", 0o2775, Some(a))?;
        if mode(&team) != 0o2775 {
            return Err(format!(
                "test setup: {} has mode {:o}, not 2775",
                team.display(),
                mode(&team)
            ));
        }
        let home = env.mkdir("a-home", 0o700, Some(a))?;
        let mark = home.join("MARK");
        refused(
            "status of a 2775 directory",
            &env.ckpt(
                Some(a),
                &[os("status"), os("--dir"), os(&team)],
                "status-2775",
            )?,
            &["mode 2775"],
        )?;
        refused(
            "launch in a 2775 directory",
            &env.ckpt(
                Some(a),
                &[
                    os("launch"),
                    os("--dir"),
                    os(&team),
                    os("--"),
                    os("/bin/sh"),
                    os("-c"),
                    os(r#"touch "$1""#),
                    os("sh"),
                    os(&mark),
                ],
                "launch-2775",
            )?,
            &["mode 2775"],
        )?;
        if mark.exists() {
            return Err("the program ran in a refused 2775 directory".into());
        }
        if mode(&team) != 0o2775 {
            return Err(format!(
                "{} has mode {:04o} after ckpt refused it: want 2775 kept",
                team.display(),
                mode(&team)
            ));
        }
        if !names(&team).is_empty() {
            return Err(format!(
                "ckpt created {:?} in the refused 2775 directory",
                names(&team)
            ));
        }

        // 0750: usable (others cannot write it), kept, and noted.
        let d = env.mkdir("group-readable", 0o750, Some(a))?;
        let job = Ticker::new(&env, a, &d, "m750")?;
        let mut l = job.launch(&[])?;
        job.wait_ready(&mut l)?;
        job.checkpoint(&d, "one")?;
        job.checkpoint(&d, "two")?;
        l.kill_tree()?;
        let err = job.launch_err();
        if !err.contains("note") || !err.contains("mode 0750") {
            return Err(format!(
                "ckpt launch in a 0750 directory printed no note about its mode:\n{err}"
            ));
        }
        let mut bad = Vec::new();
        if mode(&d) != 0o750 {
            bad.push(format!("{}: {:04o}, want 0750 kept", d.display(), mode(&d)));
        }
        let gens = gen_numbers(&d, false);
        if gens.is_empty() {
            bad.push(format!("no complete generation in {}", d.display()));
        }
        let mut files = 0;
        for n in gens {
            let g = d.join(format!("gen-{n:06}"));
            if mode(&g) != 0o700 {
                bad.push(format!("{}: {:04o}, want 0700", g.display(), mode(&g)));
            }
            for e in io("list", &g, fs::read_dir(&g))?.flatten() {
                files += 1;
                if mode(&e.path()) != 0o600 {
                    bad.push(format!(
                        "{}: {:04o}, want 0600",
                        e.path().display(),
                        mode(&e.path())
                    ));
                }
            }
        }
        if files < 3 {
            bad.push(format!("only {files} files in the generations"));
        }
        if bad.is_empty() {
            Ok(())
        } else {
            Err(format!("in a 0750 checkpoint directory: {bad:?}"))
        }
    })();
    env.finish(r);
}

/// Finding: ckpt worked on the directory by its name, so a directory
/// renamed under a running job and replaced by another (here with symlinks
/// named like the generation being written) received the checkpoint. Now
/// the coordinator works through the descriptor it opened and checked:
/// the generation lands in the moved directory and restarts, the
/// replacement holds no generation, and nothing went through the symlinks.
#[test]
fn renamed_directory_checkpoint_stays_in_the_opened_one() {
    let Some(env) = setup("renamed_directory") else {
        return;
    };
    let r = (|| -> Result<(), String> {
        let a = &env.a;
        let who = Some(a);
        // Root-owned 0755 parent: only root can rename in it (the rule
        // safe-dir enforces); root plays the part of the one who does.
        let parent = env.mkdir("jobs", 0o755, None)?;
        let d = env.mkdir("jobs/d", 0o700, who)?;
        let moved = parent.join("d.moved");
        let victim = env.mkdir("victim", 0o755, who)?;
        let (vfile, vkeep) = (victim.join("file"), victim.join("keep"));
        for (p, data) in [
            (&vfile, "victim file\n"),
            (&vkeep, "victim directory entry\n"),
        ] {
            io("write", p, fs::write(p, data))?;
            env.own(p, who)?;
        }
        let victim_before = names(&victim);

        let job = Ticker::new(&env, a, &d, "renamed")?;
        let mut l = job.launch(&[])?;
        job.wait_ready(&mut l)?;

        io("rename", &d, fs::rename(&d, &moved))?;
        let d = env.mkdir("jobs/d", 0o700, who)?;
        // The job's processes find their coordinator by the socket's name
        // (CKPT_SOCKET, d/ckpt.sock): without a link to the moved socket
        // in the replacement they could not reach it and no checkpoint
        // could be taken at all. The other links are what a replacement
        // would hold to catch the checkpoint.
        let planted: Vec<(&str, PathBuf)> = vec![
            ("ckpt.sock", moved.join("ckpt.sock")),
            ("gen-000001.tmp", victim.clone()),
            (".latest.tmp", vfile.clone()),
            ("latest", vfile.clone()),
        ];
        for (name, target) in &planted {
            let link = d.join(name);
            io("symlink", &link, std::os::unix::fs::symlink(target, &link))?;
            env.own(&link, who)?;
        }

        let out = job.checkpoint(&moved, "after-rename")?;
        eprintln!("checkpoint through the moved directory: {}", out.trim());
        job.still_running(&mut l)?;

        let mut bad = Vec::new();
        if gen_numbers(&moved, false) != [1] || !gen_numbers(&moved, true).is_empty() {
            bad.push(format!(
                "the moved directory (the one opened) holds {:?}: want exactly gen-000001 complete",
                names(&moved)
            ));
        }
        if fs::read_link(moved.join("latest")).ok() != Some(PathBuf::from("gen-000001")) {
            bad.push(format!(
                "{}/latest is {:?}, want -> gen-000001",
                moved.display(),
                fs::read_link(moved.join("latest"))
            ));
        }
        let mut want: Vec<String> = planted.iter().map(|(n, _)| n.to_string()).collect();
        want.sort();
        if names(&d) != want {
            bad.push(format!(
                "the replacement directory holds {:?}: want only the planted {want:?}",
                names(&d)
            ));
        }
        for (name, target) in &planted {
            if fs::read_link(d.join(name)).ok().as_ref() != Some(target) {
                bad.push(format!("the planted link {name} was changed"));
            }
        }
        if names(&victim) != victim_before
            || fs::read_to_string(&vfile).ok().as_deref() != Some("victim file\n")
            || fs::read_to_string(&vkeep).ok().as_deref() != Some("victim directory entry\n")
        {
            bad.push(format!(
                "the victim directory changed: {:?} (was {victim_before:?})",
                names(&victim)
            ));
        }
        if !bad.is_empty() {
            return Err(bad.join("\n"));
        }
        l.kill_tree()?;
        job.restart_and_verify(&moved)
    })();
    env.finish(r);
}

/// Finding: `ckpt checkpoint` talked to whatever listened at `ckpt.sock`.
/// B's listener moved into A's directory as `ckpt.sock` (no job there):
/// A's `ckpt checkpoint` refuses it, saying the listener runs as another
/// uid, and the listener receives no byte (no `CHECKPOINT`); `ckpt status`
/// does not take it for a job and sends nothing either.
#[test]
fn planted_socket_gets_nothing() {
    let Some(env) = setup("planted_socket_gets_nothing") else {
        return;
    };
    let r = (|| -> Result<(), String> {
        let (a, b) = (&env.a, &env.b);
        let d = env.mkdir("d", 0o700, Some(a))?;
        let bdir = env.mkdir("b", 0o755, Some(b))?;
        let (_listener, log, sock) = env.listener(&bdir, "listener")?;
        let planted = d.join("ckpt.sock");
        io("rename", &sock, fs::rename(&sock, &planted))?;

        let uid = format!("runs as uid {}", b.uid);
        let checkpoint = env.ckpt(
            Some(a),
            &[os("checkpoint"), os("--dir"), os(&d)],
            "checkpoint",
        )?;
        let status = env.ckpt(Some(a), &[os("status"), os("--dir"), os(&d)], "status")?;
        // Both connections reached B's listener (they are refused after
        // connecting, on the listener's uid): wait until it saw them end.
        let text = wait_until(
            "B's listener to see both connections end",
            deadline(),
            || {
                let t = fs::read_to_string(&log).unwrap_or_default();
                Ok(t.lines()
                    .filter(|l| l.starts_with("closed "))
                    .nth(1)
                    .map(|_| t.clone()))
            },
        )?;
        if text.lines().any(|l| l.starts_with("data ")) || !text.contains("closed 1 0") {
            return Err(format!("B's listener received data from A:\n{text}"));
        }
        refused(
            "checkpoint through B's socket",
            &checkpoint,
            &[&uid, "not as you"],
        )?;
        let (st, out, err) = status;
        if !st.success() || !out.contains("no job running") {
            return Err(format!(
                "status with B's socket planted: {} (want success, \"no job running\")\nstdout: {out}\nstderr: {err}",
                describe(st)
            ));
        }
        Ok(())
    })();
    env.finish(r);
}

/// Finding: the job's processes said `STOPPED` (and would have written
/// where told) to whatever listened at `ckpt.sock`. A's job checkpoints
/// every second; root replaces its `ckpt.sock` by B's listener: the job's
/// processes connect to it at the next checkpoint and send no byte, the
/// checkpoint fails on the launch's stderr, and the job keeps running to a
/// correct end.
#[test]
fn planted_socket_gets_nothing_from_the_job() {
    let Some(env) = setup("planted_socket_job") else {
        return;
    };
    let r = (|| -> Result<(), String> {
        let (a, b) = (&env.a, &env.b);
        let d = env.mkdir("d2", 0o700, Some(a))?;
        let bdir = env.mkdir("b", 0o755, Some(b))?;
        let (_listener, log, sock) = env.listener(&bdir, "listener")?;
        let job = Ticker::new(&env, a, &d, "periodic")?;
        let mut l = job.launch(&["--interval", "1"])?;
        job.wait_ready(&mut l)?;
        wait_until("the first periodic checkpoint", deadline(), || {
            Ok((!gen_numbers(&d, false).is_empty()).then_some(()))
        })?;
        let failures = |t: &str| {
            t.lines()
                .filter(|l| l.contains("periodic checkpoint failed"))
                .count()
        };
        let before = failures(&job.launch_err());
        let real = d.join("ckpt.sock");
        io(
            "rename",
            &real,
            fs::rename(&real, d.join("coordinator.sock")),
        )?;
        io("rename", &sock, fs::rename(&sock, &real))?;

        wait_until("a job process to connect to B's socket", deadline(), || {
            Ok(fs::read_to_string(&log)
                .is_ok_and(|t| t.contains("closed 1 "))
                .then_some(()))
        })?;
        let msg = wait_until(
            "a periodic checkpoint failure on the launch's stderr",
            deadline(),
            || {
                let t = job.launch_err();
                Ok((failures(&t) > before).then(|| {
                    t.lines()
                        .rfind(|l| l.contains("periodic checkpoint failed"))
                        .unwrap_or_default()
                        .to_string()
                }))
            },
        )?;
        eprintln!("with B's socket in place: {msg}");
        job.still_running(&mut l)?;
        let text = fs::read_to_string(&log).unwrap_or_default();
        if text.lines().any(|l| l.starts_with("data ")) {
            return Err(format!("B's listener received data from A's job:\n{text}"));
        }
        // The job ends as if nothing had happened.
        let go = job.work.join("go");
        io("create", &go, fs::write(&go, b""))?;
        let st = l.wait(deadline())?;
        let got = fs::read_to_string(job.out()).unwrap_or_default();
        if !st.success() || got != expected_output() {
            return Err(format!(
                "the job ended with {}: {got:?}\nstderr: {}",
                describe(st),
                job.launch_err()
            ));
        }
        let text = fs::read_to_string(&log).unwrap_or_default();
        if text.lines().any(|l| l.starts_with("data ")) {
            return Err(format!("B's listener received data from A's job:\n{text}"));
        }
        Ok(())
    })();
    env.finish(r);
}

/// Finding: a socket path longer than `sun_path` (108 bytes) could not be
/// bound or reached. A directory nested in two 60-character names: launch,
/// status, checkpoint, kill -9 of the whole tree, restart to a correct end.
#[test]
fn long_socket_path_works() {
    let Some(env) = setup("long_socket_path") else {
        return;
    };
    let r = (|| -> Result<(), String> {
        let a = &env.a;
        let first = format!("long/{}", "a".repeat(60));
        let second = format!("{first}/{}", "b".repeat(60));
        env.mkdir("long", 0o755, None)?;
        env.mkdir(&first, 0o755, None)?;
        env.mkdir(&second, 0o755, None)?;
        let d = env.mkdir(format!("{second}/ck"), 0o700, Some(a))?;
        let sock_len = d.join("ckpt.sock").as_os_str().len();
        if sock_len <= 108 {
            return Err(format!(
                "test setup: the socket path is only {sock_len} bytes"
            ));
        }
        let job = Ticker::new(&env, a, &d, "long")?;
        let mut l = job.launch(&[])?;
        job.wait_ready(&mut l)?;
        let (st, out, err) = env.ckpt(Some(a), &[os("status"), os("--dir"), os(&d)], "status")?;
        if !st.success() || !out.contains("a job is running") {
            return Err(format!(
                "status of a job with a {sock_len}-byte socket path: {}\nstdout: {out}\nstderr: {err}",
                describe(st)
            ));
        }
        let out = job.checkpoint(&d, "one")?;
        eprintln!("{sock_len}-byte socket path: {}", out.trim());
        l.kill_tree()?;
        job.restart_and_verify(&d)
    })();
    env.finish(r);
}

/// Finding: files ckpt creates in the directory were opened by name and
/// followed symlinks. A plants, in her own directory, symlinks named like
/// them: `.ckpt.lock` to a file that does not exist (ckpt must not create
/// it), then `.latest.tmp`, `latest` and `ckpt.sock` to a victim file and
/// `gen-000002.tmp` to a victim directory; after a launch and two
/// checkpoints the victims are unchanged and `latest` is a link to a real
/// generation.
#[test]
fn planted_symlinks_not_followed() {
    let Some(env) = setup("planted_symlinks") else {
        return;
    };
    let r = (|| -> Result<(), String> {
        let a = &env.a;
        let who = Some(a);
        let d = env.mkdir("d", 0o700, who)?;
        let victims = env.mkdir("victims", 0o755, who)?;
        let vdir = env.mkdir("victims/dir", 0o755, who)?;
        let (vfile, vkeep) = (victims.join("file"), vdir.join("keep"));
        for (p, data) in [
            (&vfile, "victim file\n"),
            (&vkeep, "victim directory entry\n"),
        ] {
            io("write", p, fs::write(p, data))?;
            env.own(p, who)?;
        }
        let lock_target = victims.join("lock-target");
        let ln = |target: &Path, name: &str| {
            env.run_ok(
                who,
                "/bin/ln",
                &[os("-s"), os(target), os(d.join(name))],
                &format!("ln-{name}"),
            )
        };
        let unchanged = || -> Result<(), String> {
            let ok = names(&victims) == ["dir", "file"]
                && names(&vdir) == ["keep"]
                && fs::read_to_string(&vfile).ok().as_deref() == Some("victim file\n")
                && fs::read_to_string(&vkeep).ok().as_deref() == Some("victim directory entry\n")
                && mode(&vfile) == 0o644
                && mode(&vdir) == 0o755;
            if ok {
                Ok(())
            } else {
                Err(format!(
                    "a victim changed: {:?} {:?} file {:?} mode {:o}",
                    names(&victims),
                    names(&vdir),
                    fs::read_to_string(&vfile),
                    mode(&vfile)
                ))
            }
        };

        // `.ckpt.lock` -> a file that does not exist.
        ln(&lock_target, ".ckpt.lock")?;
        let home = env.mkdir("a-home", 0o700, who)?;
        let mark = home.join("MARK");
        let (st, _, err) = env.ckpt(
            who,
            &[
                os("launch"),
                os("--dir"),
                os(&d),
                os("--"),
                os("/bin/sh"),
                os("-c"),
                os(r#"touch "$1""#),
                os("sh"),
                os(&mark),
            ],
            "launch-lock",
        )?;
        eprintln!(
            "launch with .ckpt.lock a symlink: {} {}",
            describe(st),
            err.trim()
        );
        if lock_target.exists() {
            return Err(format!(
                "ckpt launch created {} through the .ckpt.lock symlink",
                lock_target.display()
            ));
        }
        unchanged()?;
        let lock = d.join(".ckpt.lock");
        io("remove", &lock, fs::remove_file(&lock))?;

        for (target, name) in [
            (&vfile, ".latest.tmp"),
            (&vfile, "latest"),
            (&vfile, "ckpt.sock"),
            (&vdir, "gen-000002.tmp"),
        ] {
            ln(target, name)?;
        }
        let job = Ticker::new(&env, a, &d, "symlinks")?;
        let mut l = job.launch(&[])?;
        job.wait_ready(&mut l)?;
        job.checkpoint(&d, "one")?;
        job.checkpoint(&d, "two")?;
        job.still_running(&mut l)?;
        l.kill_tree()?;
        unchanged()?;
        if lock_target.exists() {
            return Err(format!("{} was created", lock_target.display()));
        }
        let gens = gen_numbers(&d, false);
        let newest = gens.last().copied().unwrap_or(0);
        let latest = fs::read_link(d.join("latest")).ok();
        if gens.len() != 2 || latest != Some(PathBuf::from(format!("gen-{newest:06}"))) {
            return Err(format!(
                "after two checkpoints: {:?}, latest -> {latest:?}",
                names(&d)
            ));
        }
        for n in gens {
            let g = d.join(format!("gen-{n:06}"));
            if !fs::symlink_metadata(&g).is_ok_and(|m| m.is_dir()) {
                return Err(format!("{} is not a real directory", g.display()));
            }
        }
        Ok(())
    })();
    env.finish(r);
}
