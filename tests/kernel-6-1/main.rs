//! A subset of the C/R suite (`tests/cr`) on Debian 12's own kernel, Linux 6.1 (issue 17:
//! clusters run distribution kernels, not the newest one). One test boots Debian's
//! `linux-image-amd64` (6.1) once with virtme-ng (`vng`) under QEMU, on this machine's
//! own file system (shared read-only over 9p, plus one writable results directory), and
//! runs the already built `cr` test binary inside it, once per test of `SUBSET`, against
//! the same `ckpt` binary as the host suite. The guest:
//!
//! - runs under QEMU's TCG (`--disable-kvm`): KVM fails on some hosts ("emulation
//!   failure"), and TCG works everywhere; booting takes 15 to 25 s;
//! - mounts a tmpfs for the scratch directories (`CKPT_TEST_SCRATCH`): a unix socket
//!   cannot be created on the 9p share (ENXIO), and `ckpt` makes one in every checkpoint
//!   directory;
//! - closes its descriptors above 2 (the console leaves virtio ports open, which a
//!   restart would try to reopen) and gives each test `/dev/null` as stdin;
//! - sets `CI=true`, so that no inner test can skip, and names each test with `--exact`.
//!
//! After the subset, the guest checkpoints a python3 program (its work directory on the
//! writable share), copies the generation to the share, and the host restarts it on its
//! own kernel: another kernel build, so the restart sends the program's vDSO calls to
//! this kernel's vDSO (docs/kernel.md, "The vDSO on another kernel"); the guest's CPU
//! model is QEMU's `qemu64`, whose features every x86-64 host has (an image needs them).
//! The other direction (an image of this host restarted in the guest) needs the host's
//! CPU features in the guest, which TCG does not give.
//!
//! Asserted: the guest ran Linux 6.1 (`uname -r` starts with `6.1.`); every test of
//! `SUBSET` ran, in order, exited 0 and reported exactly one passed test; the guest's
//! `ckpt check` reports no written-page tracking (6.1 has neither `PAGEMAP_SCAN` nor
//! asynchronous userfaultfd write-protect, both 6.7), so the `incremental` case
//! exercises the fallback to full checkpoints.
//!
//! Prerequisites (`scripts/install-deps.sh` installs them): `qemu-system-x86_64`,
//! `vng` (virtme-ng, on PATH or in /opt/virtme-ng), `busybox` (virtme-ng builds its
//! initramfs from it), and `/boot/vmlinuz-6.1.*` with its `/lib/modules`. Outside CI a
//! missing one skips the test with a message; under `CI=true` it fails. The `cr` test
//! binary must be built and current (`cargo test` builds every test target before
//! running any); it is found beside this one (`$CKPT_CR_TEST_BIN` overrides).
//! `cargo test --release -p ckpt-tests --test kernel-6-1 -- --nocapture` prints the
//! boot and per-test times.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use ckpt_tests::cr::{
    Scratch, Spawn, describe, locate_ckpt, out_file, prerequisite, required, shell_quote,
};

/// The `cr` tests run in the guest, in this order.
const SUBSET: &[&str] = &[
    // Threads: a producer and consumers checkpointed in futex waits.
    "threads_futex::cli",
    // python3: a select.epoll loop over eventfds and a pipe fed by a worker thread.
    "epoll_py::cli",
    // A process tree: producer and consumer processes, a pipe with data in flight,
    // MAP_SHARED memory, waitpid.
    "tree_prodcons::cli",
    // A pipe holding unread bytes and a thread blocked reading an empty one.
    "pipe00::cli",
    // Loopback TCP and UDP between two processes, bytes queued both ways: without
    // IP_LOCAL_PORT_RANGE (6.3) a connecting end's port is bound instead.
    "sock_tcp::cli",
    // Unix sockets of every kind, a listener on a path (in the guest's tmpfs).
    "sock_unix::cli",
    // `--incremental on` without written-page tracking: full checkpoints, said so.
    "brk_grow::incremental",
    // POSIX timers without PR_TIMER_CREATE_RESTORE_IDS (6.17): ids got back by walking
    // the per-process counter; SIGEV_THREAD, pending expirations.
    "posix_timers::cli",
    // Memory advised MADV_WIPEONFORK: without PAGEMAP_SCAN (6.7) the snapshot child
    // reads both page maps to find it zeroed in its copy, and the advice is lifted
    // for a second snapshot.
    "fork_advice::cli",
    // And MADV_DONTFORK, right above the checkpoint's scratch memory: the regions the
    // first snapshot lacks are found by comparing the two processes' maps.
    "fork_advice::below_cli",
];

/// How long the whole guest run may take before it is killed as hung (it takes about
/// a minute on 2 cores, up to two when the machine is busy).
const GUEST_LIMIT: Duration = Duration::from_secs(600);

/// Where the scratch tmpfs is mounted in the guest.
const GUEST_SCRATCH: &str = "/run/ckpt-kernel-6-1";

/// Run in the guest as `bash inner.sh RESULTS CR CKPT TEST...`. Writes to RESULTS (the
/// writable share): `boot-secs` (guest uptime when the script starts), `uname`,
/// `check.txt` (`ckpt check`), one `test-I.log` per test, `results` (one line per test:
/// `I STATUS START END NAME`, uptimes in seconds) and `finished`.
const INNER: &str = r#"set -u
R=$1 CR=$2 CKPT=$3
shift 3
cut -d' ' -f1 /proc/uptime >"$R/boot-secs"
uname -r >"$R/uname"
# The console's virtio ports stay open above 2: a job must not inherit them (its
# restart would reopen /dev/vport*).
for fd in $(ls /proc/$$/fd); do
  if [ "$fd" -gt 2 ]; then eval "exec $fd>&-"; fi
done
exec </dev/null
mkdir -p "$GUEST_SCRATCH" &&
  mount -t tmpfs -o mode=0755 ckpt-scratch "$GUEST_SCRATCH" || {
  echo "cannot mount a tmpfs on $GUEST_SCRATCH" >"$R/error.txt"; exit 1; }
export CI=true CKPT_TEST_SCRATCH="$GUEST_SCRATCH" CKPT_BIN="$CKPT"
unset CKPT_TEST_KEEP
"$CKPT" check >"$R/check.txt" 2>&1
i=0
for t in "$@"; do
  i=$((i + 1))
  echo "kernel-6-1: running $t"
  s=$(cut -d' ' -f1 /proc/uptime)
  "$CR" --exact --test-threads=1 "$t" >"$R/test-$i.log" 2>&1
  rc=$?
  e=$(cut -d' ' -f1 /proc/uptime)
  echo "$i $rc $s $e $t" >>"$R/results"
done
# Checkpointed here, restarted on the host after the guest is gone: a python3
# program whose work directory is on the writable share, its checkpoint
# directory on the tmpfs (the coordinator's socket), copied to the share.
X="$R/from-guest"
mkdir -m 700 "$GUEST_SCRATCH/xk" && cd "$X/work" &&
  "$CKPT" launch --dir "$GUEST_SCRATCH/xk" -- python3 xk.py >out.txt 2>err.txt &
for n in $(seq 300); do
  [ "$(grep -c . "$X/work/out.txt" 2>/dev/null)" -ge 10 ] && break
  sleep 0.2
done
"$CKPT" checkpoint --dir "$GUEST_SCRATCH/xk" >"$X/checkpoint.txt" 2>&1
pkill -9 -f "python3 xk.py"
sleep 0.5
# (Without the dead coordinator's socket: 9p cannot hold one.)
rm -f "$GUEST_SCRATCH/xk/ckpt.sock"
cp -a "$GUEST_SCRATCH/xk" "$X/ck" && echo ok >"$X/copied"
echo ok >"$R/finished"
"#;

/// The program checkpointed in the guest and restarted on the host: it reads the
/// clocks through the vDSO (`time.time`, `time.monotonic`) before and after, so a
/// restart that sent its vDSO calls to the wrong place would crash or fail the check.
const XK: &str = r#"import time
t0 = time.time(); m0 = time.monotonic()
for i in range(60):
    t = time.time(); m = time.monotonic()
    assert t >= t0 - 1 and m >= m0
    print(i, flush=True)
    time.sleep(0.1)
print("PASS", flush=True)
"#;

#[test]
fn cr_subset_on_linux_6_1() {
    let Some(g) = Guest::prepare() else {
        return;
    };
    let s = Scratch::new("kernel-6-1");
    let results = s.dir("results");
    let from_guest = results.join("from-guest");
    let xk_work = from_guest.join("work");
    fs::create_dir_all(&xk_work).unwrap_or_else(|e| panic!("{}: {e}", xk_work.display()));
    fs::write(xk_work.join("xk.py"), XK).unwrap_or_else(|e| panic!("xk.py: {e}"));
    let script = results.join("inner.sh");
    let inner = INNER.replace("$GUEST_SCRATCH", GUEST_SCRATCH);
    fs::write(&script, inner).unwrap_or_else(|e| panic!("write {}: {e}", script.display()));
    let q = |p: &Path| shell_quote(&p.to_string_lossy());
    let mut command = format!(
        "/bin/bash {} {} {} {}",
        q(&script),
        q(&results),
        q(&g.cr),
        q(&g.ckpt)
    );
    for t in SUBSET {
        command.push(' ');
        command.push_str(&shell_quote(t));
    }
    let mut sp = Spawn::new(&g.vng, &s.path)
        .arg("-r")
        .arg(&g.kernel)
        .args([
            "--disable-kvm",
            "--user",
            "root",
            "--cpus",
            "2",
            "--memory",
            "4G",
            // A CPU model whose features this host has: an image taken in the guest
            // restarts here only on a CPU with every feature it was checkpointed with.
            "--qemu-opts=-cpu qemu64",
        ])
        .arg("--rwdir")
        .arg(&results)
        .arg("--")
        .arg(&command);
    sp.stdout = out_file(&s.join("vng.out")).into();
    sp.stderr = out_file(&s.join("vng.err")).into();
    sp.env.push(("PATH".into(), g.path.clone()));
    let started = Instant::now();
    let mut vm = sp.spawn("vng (the Linux 6.1 guest)");
    let status = vm.wait(GUEST_LIMIT);
    let elapsed = started.elapsed();
    drop(vm);
    let fail = |msg: String| -> ! {
        panic!(
            "Linux 6.1 guest ({}): {msg}\n==== logs ====\n{}",
            g.kernel.display(),
            s.tails(4000)
        )
    };
    match status {
        Ok(st) if st.success() => {}
        Ok(st) => fail(format!("vng ended with {}", describe(st))),
        Err(e) => fail(e),
    }
    let read = |name: &str| fs::read_to_string(results.join(name)).unwrap_or_default();
    let uname = read("uname");
    if !uname.trim().starts_with("6.1.") {
        fail(format!(
            "the guest ran kernel {:?}, not 6.1 (booted {})",
            uname.trim(),
            g.kernel.display()
        ));
    }
    if read("finished").trim() != "ok" {
        fail("the guest script did not finish".into());
    }
    let check = read("check.txt");
    let tracking = check
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|w| w.get(1) == Some(&"incremental"))
        .and_then(|w| w.first().map(|s| s.to_string()));
    match tracking.as_deref() {
        Some("ok") => fail(format!(
            "`ckpt check` reports written-page tracking on 6.1, which has neither \
             PAGEMAP_SCAN nor asynchronous userfaultfd write-protect:\n{check}"
        )),
        None => fail(format!(
            "`ckpt check` in the guest printed no `incremental` line:\n{check}"
        )),
        Some(_) => {}
    }

    let lines: Vec<String> = read("results").lines().map(str::to_owned).collect();
    let mut errors = Vec::new();
    let mut report = Vec::new();
    for (i, name) in SUBSET.iter().enumerate() {
        let Some(line) = lines.get(i) else {
            errors.push(format!("{name}: did not run"));
            continue;
        };
        let w: Vec<&str> = line.split_whitespace().collect();
        let secs = |k: usize| w.get(k).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        if w.len() != 5 || w[0] != (i + 1).to_string() || w[4] != *name {
            errors.push(format!(
                "results line {} is {line:?}, expected test {name}",
                i + 1
            ));
            continue;
        }
        report.push(format!("{name}: {:.1} s", secs(3) - secs(2)));
        let log = read(&format!("test-{}.log", i + 1));
        let passed_one = log
            .lines()
            .any(|l| l.starts_with("test result: ok. 1 passed; 0 failed;"));
        let ok_line = log.lines().any(|l| l == format!("test {name} ... ok"));
        if w[1] != "0" || !passed_one || !ok_line {
            errors.push(format!(
                "{name}: exit status {} in the guest, one test passed: {passed_one}, \
                 `test {name} ... ok`: {ok_line}; its output (test-{}.log):\n{}",
                w[1],
                i + 1,
                last_chars(&log, 6000)
            ));
        }
    }
    if lines.len() != SUBSET.len() {
        errors.push(format!(
            "{} results for {} tests: {lines:?}",
            lines.len(),
            SUBSET.len()
        ));
    }
    if !errors.is_empty() {
        fail(errors.join("\n\n"));
    }
    let cross = restart_here(&g, &from_guest).unwrap_or_else(|e| fail(e));
    println!(
        "Linux {} guest ({}): booted in {} s (guest uptime at the script's start); \
         {} tests passed; whole run {:.0} s\n  {}\nckpt check in the guest:\n{check}",
        uname.trim(),
        g.kernel.display(),
        read("boot-secs").trim(),
        SUBSET.len(),
        elapsed.as_secs_f64(),
        report.join("\n  ")
    );
    println!("checkpointed on 6.1, restarted on this kernel: {cross}");
}

/// Restarts on this kernel the generation the guest wrote to `x/ck` (its program
/// ran in `x/work`): the restart must say that it sends the vDSO calls to this
/// kernel's vDSO (6.1's differs), and the program's output must be that of an
/// uninterrupted run. Returns what the restart said.
fn restart_here(g: &Guest, x: &Path) -> Result<String, String> {
    let read = |p: PathBuf| fs::read_to_string(p).unwrap_or_default();
    if read(x.join("copied")).trim() != "ok" {
        return Err(format!(
            "the guest did not checkpoint and copy its python3 program; checkpoint: {}",
            read(x.join("checkpoint.txt"))
        ));
    }
    let work = x.join("work");
    let mut sp = Spawn::new(&g.ckpt, &work)
        .arg("restart")
        .arg("--dir")
        .arg(x.join("ck"));
    sp.stdout = out_file(&x.join("restart.out")).into();
    sp.stderr = out_file(&x.join("restart.err")).into();
    let mut r = sp.spawn("ckpt restart (on this kernel) of the 6.1 guest's checkpoint");
    let st = r.wait(Duration::from_secs(120))?;
    let said = read(x.join("restart.err"));
    let out = read(work.join("out.txt"));
    let want: String = (0..60)
        .map(|i| format!("{i}\n"))
        .chain(["PASS\n".to_string()])
        .collect();
    if !st.success()
        || !said.contains("the program's calls into the vDSO are sent to this kernel's vDSO")
        || out != want
    {
        return Err(format!(
            "restart here of the 6.1 checkpoint: {}, it said:\n{said}\nthe program printed \
             (want 0..59 and PASS):\n{}\nits stderr: {}",
            describe(st),
            last_chars(&out, 2000),
            read(work.join("err.txt"))
        ));
    }
    Ok(said.trim().replace('\n', " / "))
}

/// Everything the guest run needs, found on this machine.
struct Guest {
    /// virtme-ng's `vng`.
    vng: PathBuf,
    /// PATH for `vng`: its own directory first (it runs `virtme-run` from PATH).
    path: OsString,
    /// `/boot/vmlinuz-6.1.*`.
    kernel: PathBuf,
    /// The `cr` test binary.
    cr: PathBuf,
    /// The `ckpt` binary (with `libckpt.so` beside it).
    ckpt: PathBuf,
}

impl Guest {
    /// None when a prerequisite is missing outside CI (then the test is skipped).
    fn prepare() -> Option<Guest> {
        let qemu = which("qemu-system-x86_64");
        if !prerequisite(
            qemu.is_some(),
            "qemu-system-x86_64 (Debian package qemu-system-x86; scripts/install-deps.sh)",
        ) {
            return None;
        }
        let vng = which("vng")
            .or_else(|| executable(Path::new("/opt/virtme-ng/bin/vng")))
            .and_then(|p| fs::canonicalize(p).ok());
        let Some(vng) = vng else {
            prerequisite(
                false,
                "vng (virtme-ng from PyPI, in /opt/virtme-ng: scripts/install-deps.sh)",
            );
            return None;
        };
        let busybox = ["busybox-static", "busybox.static", "busybox"]
            .iter()
            .find_map(|b| which(b));
        if !prerequisite(
            busybox.is_some(),
            "busybox (virtme-ng's initramfs; Debian package busybox-static)",
        ) {
            return None;
        }
        let kernel = required(debian_6_1_kernel())?;
        let ckpt = required(locate_ckpt())?;
        let cr = cr_test_binary().unwrap_or_else(|e| panic!("{e}"));
        let mut dirs = vec![vng.parent().map(Path::to_path_buf).unwrap_or_default()];
        dirs.extend(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        ));
        let path = std::env::join_paths(dirs).expect("PATH entries without ':'");
        Some(Guest {
            vng,
            path,
            kernel,
            cr,
            ckpt,
        })
    }
}

/// The executable `name` in a directory of PATH (or /usr/sbin, /sbin).
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .find_map(|d| executable(&d.join(name)))
}

fn executable(p: &Path) -> Option<PathBuf> {
    let m = fs::metadata(p).ok()?;
    (m.is_file() && m.permissions().mode() & 0o111 != 0).then(|| p.to_path_buf())
}

/// The newest `/boot/vmlinuz-6.1.*` that is readable and has its modules in
/// `/lib/modules` (virtme-ng loads 9p and virtio from there).
fn debian_6_1_kernel() -> Result<PathBuf, String> {
    let missing = "a Linux 6.1 kernel in /boot with its modules (Debian 12's linux-image-amd64; \
                   scripts/install-deps.sh)";
    let rd = fs::read_dir("/boot").map_err(|e| format!("{missing}: /boot: {e}"))?;
    let mut found: Vec<(Vec<u64>, PathBuf)> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let version = name.strip_prefix("vmlinuz-")?.to_string();
            let ok = version.starts_with("6.1.")
                && Path::new("/lib/modules").join(&version).is_dir()
                && fs::File::open(e.path()).is_ok();
            ok.then(|| (version_key(&version), e.path()))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, p)| p)
        .ok_or_else(|| missing.to_string())
}

/// "6.1.0-57-amd64" -> [6, 1, 0, 57]: the numbers in order, for sorting versions.
fn version_key(v: &str) -> Vec<u64> {
    v.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// The `cr` test binary of this build: `$CKPT_CR_TEST_BIN`, else the newest `cr-<hash>`
/// executable beside this test binary whose dep-info names this build's `OUT_DIR`
/// (so a binary from another profile or from clippy is never taken). It must be newer
/// than every source of the C/R suite: a stale one would test old code.
fn cr_test_binary() -> Result<PathBuf, String> {
    let build = "build every test target first: cargo test --release -p ckpt-tests --no-run";
    if let Some(p) = std::env::var_os("CKPT_CR_TEST_BIN") {
        let p = PathBuf::from(p);
        return executable(&p)
            .ok_or_else(|| format!("CKPT_CR_TEST_BIN={} is not an executable", p.display()));
    }
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let deps = exe
        .parent()
        .ok_or_else(|| format!("{} has no directory", exe.display()))?;
    let out_dir = format!("# env-dep:OUT_DIR={}", env!("OUT_DIR"));
    let mut candidates: Vec<(SystemTime, PathBuf)> = fs::read_dir(deps)
        .map_err(|e| format!("{}: {e}", deps.display()))?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let hash = name.strip_prefix("cr-")?;
            let is_hash = hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit());
            let path = executable(&e.path()).filter(|_| is_hash)?;
            let dep_info = fs::read_to_string(path.with_file_name(format!("{name}.d"))).ok()?;
            if !dep_info.lines().any(|l| l == out_dir) {
                return None;
            }
            Some((e.metadata().ok()?.modified().ok()?, path))
        })
        .collect();
    candidates.sort();
    let (built, cr) = candidates.pop().ok_or_else(|| {
        format!(
            "no cr test binary of this build in {} ({build})",
            deps.display()
        )
    })?;
    let src = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut sources = Vec::new();
    for d in ["cr", "harness", "programs"] {
        collect(&src.join(d), &mut sources);
    }
    sources.push(src.join("build.rs"));
    for f in sources {
        let modified = fs::metadata(&f).and_then(|m| m.modified());
        if modified.is_ok_and(|m| m > built) {
            return Err(format!(
                "{} is older than {}: it is stale ({build})",
                cr.display(),
                f.display()
            ));
        }
    }
    Ok(cr)
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        match e.file_type() {
            Ok(t) if t.is_dir() => collect(&e.path(), out),
            Ok(_) => out.push(e.path()),
            Err(_) => {}
        }
    }
}

/// The last `max` characters of `s` (on a character boundary).
fn last_chars(s: &str, max: usize) -> &str {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

#[test]
fn version_key_orders_debian_abis() {
    assert!(version_key("6.1.0-58-amd64") > version_key("6.1.0-57-amd64"));
    assert!(version_key("6.1.0-100-amd64") > version_key("6.1.0-99-amd64"));
}
