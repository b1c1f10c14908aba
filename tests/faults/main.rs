//! Reliability and security suite (issue 8): nothing is lost under faults, and
//! hostile input is refused.
//!
//! Every case runs `faults/programs/ticker.c` (a two-thread program that
//! keeps a checksum invariant over its heap and a thread stack, and prints
//! the same output whatever happened before it is told to finish) under
//! `ckpt launch`, breaks something, and checks what `ckpt` says and that the
//! newest complete generation restarts into a correct run.
//!
//! Kill points, two ways:
//! - named: `CKPT_FAULT=<point>:<kill-self|kill-job>:2` (see
//!   `ckpt-core/src/fault.rs`) kills the coordinator, or every process of the
//!   job, at one of 15 points of the third checkpoint: 30 cases;
//! - timed: SIGKILL of the coordinator or of the program at a sweep of delays
//!   spread over a checkpoint of a 48 MiB program (the delays are scaled by
//!   the duration of the same job's first checkpoint), and SIGKILL of the whole
//!   tree at a sweep of moments during periodic checkpoints (node failure).
//!
//! No assertion is on time; the delays only place the kills.

use std::fs;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use ckpt_tests::cr::{
    Running, Scratch, alive, ci, copy_tree, deadline, describe, locate_ckpt, prerequisite,
    required, send_signal, tail, wait_until,
};
use ckpt_tests::faults::{
    Job, count_compressed, durable_ms, gen_numbers, patch_header, pause, read_json,
    rewrite_manifest, wait_exit, write_json,
};

/// Files a job rewrites: refusals and reports (`files.rs`).
mod files;
/// Sockets: the refusal says what each is and where it goes (`sockets.rs`).
mod sockets;

/// Every named point of `ckpt-core/src/fault.rs`, in checkpoint order.
const POINTS: [&str; 15] = [
    "begun",
    "stopped",
    "write-sent",
    "written",
    "released",
    "synced",
    "checked",
    "files-synced",
    "record-half",
    "record-written",
    "renamed",
    "latest-tmp",
    "latest-updated",
    "pruned-one",
    "committed",
];

/// Index of the first point at which the new generation is complete (renamed).
const RENAMED: usize = 10;

fn ckpt_bin() -> Option<PathBuf> {
    required(locate_ckpt())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs `cases` on two worker threads; returns the failures.
fn run_parallel<T: Sync>(cases: &[T], f: impl Fn(&T) -> Result<(), String> + Sync) -> Vec<String> {
    let next = Mutex::new(0usize);
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                loop {
                    let i = {
                        let Ok(mut n) = next.lock() else { return };
                        let i = *n;
                        *n += 1;
                        i
                    };
                    let Some(c) = cases.get(i) else { return };
                    if let Err(e) = f(c)
                        && let Ok(mut v) = failures.lock()
                    {
                        v.push(e);
                    }
                }
            });
        }
    });
    failures.into_inner().unwrap_or_default()
}

/// After a fault: no complete generation is corrupt (`ckpt status`), the
/// newest complete one is in `allowed`, and it restarts into a correct run.
fn check_after_fault(job: &Job, case: &str, allowed: &[u64]) -> Result<(), String> {
    let complete = job.complete();
    let newest = complete.last().copied();
    if !newest.is_some_and(|n| allowed.contains(&n)) {
        return Err(format!(
            "{case}: complete generations {complete:?} (partial {:?}), expected the newest in {allowed:?}",
            job.partial()
        ));
    }
    let (st, out, err) = job.ckpt_cmd("status", case, &[])?;
    if !st.success() || out.contains("corrupt") {
        return Err(format!("{case}: ckpt status: {}\n{out}{err}", describe(st)));
    }
    if job.compress {
        let (images, compressed) = count_compressed(&job.dir);
        if images == 0 || compressed != images {
            return Err(format!(
                "{case}: {compressed} of the {images} images of complete generations are compressed \
                 (with --compress every image a snapshot child writes is)"
            ));
        }
    }
    job.restart_and_verify(case)
        .map_err(|e| format!("{case}: {e}"))
}

fn named_case(ckpt: &Path, point_idx: usize, action: &str, compress: bool) -> Result<(), String> {
    let point = POINTS[point_idx];
    let z = if compress { "-z" } else { "" };
    let case = format!("{point}:{action}{z}");
    let mut job = Job::new(&format!("{point}-{action}{z}"), ckpt, 8);
    job.compress = compress;
    // Two clean checkpoints, then the fault in the third (the first that
    // prunes a generation, so `pruned-one` is passed once, there).
    let nth = if point == "pruned-one" { 1 } else { 3 };
    let fault = format!("{point}:{action}:{nth}");
    let mut l = job.launch("run", &[], &[("CKPT_FAULT", &fault)]);
    job.wait_ready(&mut l)?;
    job.checkpoint_ok("first")?;
    job.checkpoint_ok("second")?;
    let (st, out, err) = job.ckpt_cmd("checkpoint", "faulted", &[])?;
    let allowed: &[u64] = if action == "kill-self" {
        // The coordinator died: the client must fail, loudly.
        if st.success() || !err.contains("ended before answering") {
            return Err(format!(
                "{case}: the checkpoint whose coordinator was killed reported {} (want a failure that says the coordinator ended)\nstdout: {out}\nstderr: {err}",
                describe(st)
            ));
        }
        let ls = wait_exit(&mut l)?;
        if ls.code().is_some() {
            return Err(format!(
                "{case}: ckpt launch survived its fault point ({}): the point was not reached",
                describe(ls)
            ));
        }
        if point_idx < RENAMED { &[2] } else { &[3] }
    } else {
        // The job was killed at the point: launch ends with its status.
        let ls = wait_exit(&mut l)?;
        if ls.code() != Some(128 + libc::SIGKILL) {
            return Err(format!(
                "{case}: ckpt launch ended with {} (want exit 137, the program killed at the point)",
                describe(ls)
            ));
        }
        if point_idx <= 2 {
            // The job died before it said its images were written: never
            // complete. (From `written` on, a copy-on-write snapshot child
            // may finish the images of the killed job: complete, and correct.)
            &[2]
        } else {
            // Afterwards the images may be complete; the coordinator may or
            // may not outlive the job long enough to commit them.
            &[2, 3]
        }
    };
    l.kill_tree()?;
    check_after_fault(&job, &case, allowed)
}

/// kill -9 of the coordinator, or of the whole job, at each of the 15 named
/// points of a checkpoint (30 cases): the newest complete generation always
/// restores into a correct run, and a `.tmp` one is never used.
#[test]
fn kill_at_named_points() {
    named_points(false);
}

/// The same 30 cases with `--compress` (the suite's compression mode): the
/// images go out as zstd frames while the job runs on, and a kill at any
/// point still leaves the newest complete generation restorable.
#[test]
fn kill_at_named_points_compressed() {
    named_points(true);
}

fn named_points(compress: bool) {
    let Some(ckpt) = ckpt_bin() else { return };
    let mut cases = Vec::new();
    for i in 0..POINTS.len() {
        cases.push((i, "kill-self"));
        cases.push((i, "kill-job"));
    }
    let failures = run_parallel(&cases, |(i, a)| named_case(&ckpt, *i, a, compress));
    eprintln!(
        "named kill points{}: {} cases, {} failed",
        if compress { " (--compress)" } else { "" },
        cases.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[derive(Clone, Copy, Debug)]
enum Victim {
    Coordinator,
    Program,
}

/// One timed kill: returns whether the faulted checkpoint still completed.
fn timed_case(ckpt: &Path, victim: Victim, k: u32, of: u32, compress: bool) -> Result<(), String> {
    let case = format!("{victim:?}-{k}{}", if compress { "-z" } else { "" });
    let mut job = Job::new(&format!("timed-{case}"), ckpt, 48);
    job.compress = compress;
    let mut l = job.launch("run", &[], &[]);
    job.wait_ready(&mut l)?;
    let first = job.checkpoint_ok("first")?;
    let t_ms = durable_ms(&first).unwrap_or(200.0).max(5.0);
    // Spread over 0 ..= 1.2 x the first checkpoint's duration.
    let delay = Duration::from_secs_f64(t_ms * 1.2 * f64::from(k) / f64::from(of - 1) / 1000.0);
    let prog = job.program_pid(&l)?;
    let mut c = job.checkpoint_async("faulted");
    pause(delay);
    let target = match victim {
        Victim::Coordinator => l.pid(),
        Victim::Program => prog,
    };
    send_signal(target, libc::SIGKILL)?;
    let st = c.wait(deadline())?;
    let err = tail(&job.s.join("checkpoint-faulted.err"), 4096);
    if !st.success() && err.trim().is_empty() {
        return Err(format!(
            "{case}: the interrupted checkpoint failed without a message ({})",
            describe(st)
        ));
    }
    l.kill_tree()?;
    eprintln!(
        "{case}: kill after {delay:?} of a {t_ms:.0} ms checkpoint: {}",
        if st.success() {
            "it completed"
        } else {
            "it failed"
        }
    );
    let allowed: &[u64] = if st.success() { &[2] } else { &[1, 2] };
    check_after_fault(&job, &case, allowed)
}

/// kill -9 of the coordinator (`ckpt launch`) at 12 moments spread over a
/// checkpoint of a 48 MiB program.
#[test]
fn kill_coordinator_timed() {
    let Some(ckpt) = ckpt_bin() else { return };
    let cases: Vec<u32> = (0..12).collect();
    let failures = run_parallel(&cases, |k| {
        timed_case(&ckpt, Victim::Coordinator, *k, 12, false)
    });
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// kill -9 of the program (its checkpoint leader) at 12 moments spread over a
/// checkpoint of a 48 MiB program.
#[test]
fn kill_program_timed() {
    let Some(ckpt) = ckpt_bin() else { return };
    let cases: Vec<u32> = (0..12).collect();
    let failures = run_parallel(&cases, |k| {
        timed_case(&ckpt, Victim::Program, *k, 12, false)
    });
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Both timed sweeps with `--compress`: kill -9 of the coordinator, then of
/// the program, at 12 moments each over a compressed checkpoint of the same
/// 48 MiB program (its compression runs in the snapshot child while the job
/// runs on, so the kills land in it too).
#[test]
fn kill_timed_compressed() {
    let Some(ckpt) = ckpt_bin() else { return };
    let cases: Vec<(Victim, u32)> = [Victim::Coordinator, Victim::Program]
        .into_iter()
        .flat_map(|v| (0..12).map(move |k| (v, k)))
        .collect();
    let failures = run_parallel(&cases, |(v, k)| timed_case(&ckpt, *v, *k, 12, true));
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

fn node_failure_case(ckpt: &Path, k: u32, of: u32, compress: bool) -> Result<(), String> {
    let case = format!("node-{k}{}", if compress { "-z" } else { "" });
    let mut job = Job::new(&case, ckpt, 16);
    job.compress = compress;
    let mut l = job.launch("run", &["--interval", "1"], &[]);
    job.wait_ready(&mut l)?;
    wait_until("the first periodic checkpoint", deadline(), || {
        Ok((!job.complete().is_empty()).then_some(()))
    })?;
    // Somewhere within the next period (a checkpoint may be under way).
    pause(Duration::from_millis(u64::from(k) * 1000 / u64::from(of)));
    // Every process of the job and the coordinator, without warning.
    l.kill_tree()?;
    let complete = job.complete();
    check_after_fault(&job, &case, &complete)
}

/// A node failure during a job with periodic checkpoints (`--interval 1`):
/// the whole tree, coordinator included, is killed at 8 moments spread over a
/// period; the newest complete generation resumes correctly.
#[test]
fn node_failure_during_periodic_checkpoints() {
    let Some(ckpt) = ckpt_bin() else { return };
    let cases: Vec<u32> = (0..8).collect();
    let failures = run_parallel(&cases, |k| node_failure_case(&ckpt, *k, 8, false));
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The node failure sweep with `--compress`.
#[test]
fn node_failure_during_periodic_checkpoints_compressed() {
    let Some(ckpt) = ckpt_bin() else { return };
    let cases: Vec<u32> = (0..8).collect();
    let failures = run_parallel(&cases, |k| node_failure_case(&ckpt, *k, 8, true));
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

// ---- The checkpoint directory misbehaves under a running job ----

/// A mount made by a test, lazily unmounted on drop.
struct Mounted(PathBuf);

impl Mounted {
    fn run(args: &[&str], target: &Path) -> Result<Mounted, String> {
        let o = Command::new("mount")
            .args(args)
            .arg(target)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !o.status.success() {
            return Err(format!(
                "mount {args:?} {}: {}",
                target.display(),
                String::from_utf8_lossy(&o.stderr)
            ));
        }
        Ok(Mounted(target.to_path_buf()))
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn needs_root(what: &str) -> bool {
    prerequisite(is_root(), &format!("{what} needs root (mount)"))
}

fn must_fail_clearly(job: &Job, tag: &str, words: &[&str]) -> Result<String, String> {
    let (st, out, err) = job.ckpt_cmd("checkpoint", tag, &[])?;
    if st.success() || st.code().is_none() || !words.iter().any(|w| err.contains(w)) {
        return Err(format!(
            "checkpoint {tag}: {} (want a failure whose message says one of {words:?})\nstdout: {out}\nstderr: {err}",
            describe(st)
        ));
    }
    Ok(err)
}

fn job_keeps_running(job: &Job, l: &mut Running) -> Result<(), String> {
    l.check_running()?;
    let p = job.program_pid(l)?;
    if !alive(p) {
        return Err("the program died".into());
    }
    Ok(())
}

/// Disk full: a 24 MiB tmpfs as the checkpoint dir, mostly filled by another
/// file. The checkpoint fails with a message saying so, the program keeps
/// running, the previous generation stays complete and no partial one is left
/// behind; once space is back the next checkpoint succeeds and restores.
#[test]
fn disk_full() {
    disk_full_case(false);
}

/// Disk full with `--compress`: the frames of private memory are written
/// after the job runs on again, and an ENOSPC there fails the checkpoint just
/// as cleanly. The filler leaves 256 KiB, less than any compressed image of
/// the program.
#[test]
fn disk_full_compressed() {
    disk_full_case(true);
}

/// Free bytes of the filesystem holding `p`.
fn free_bytes(p: &Path) -> Result<u64, String> {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: statvfs is plain old data, zeroed is valid; c is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c and st are valid for the call.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(format!(
            "statvfs {}: {}",
            p.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(st.f_bavail * st.f_frsize)
}

fn disk_full_case(compress: bool) {
    let Some(ckpt) = ckpt_bin() else { return };
    if !needs_root("disk_full") {
        return;
    }
    let mut job = Job::new(if compress { "diskfull-z" } else { "diskfull" }, &ckpt, 8);
    job.compress = compress;
    let _m = Mounted::run(
        &["-t", "tmpfs", "-o", "size=24m,mode=0700", "tmpfs"],
        &job.dir,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut l = job.launch("run", &[], &[]);
    let r = (|| -> Result<(), String> {
        job.wait_ready(&mut l)?;
        job.checkpoint_ok("first")?;
        let filler = job.dir.join("filler");
        let fill = if compress {
            free_bytes(&job.dir)?.saturating_sub(256 << 10)
        } else {
            12 << 20
        };
        fs::write(&filler, vec![7u8; fill as usize]).map_err(|e| format!("filler: {e}"))?;
        let err = must_fail_clearly(&job, "full", &["No space left", "space"])?;
        eprintln!("disk full message: {}", err.trim());
        job_keeps_running(&job, &mut l)?;
        if job.complete() != [1] || !job.partial().is_empty() {
            return Err(format!(
                "after the failed checkpoint: complete {:?}, partial {:?} (want [1], [])",
                job.complete(),
                job.partial()
            ));
        }
        fs::remove_file(&filler).map_err(|e| e.to_string())?;
        job.checkpoint_ok("space-back")?;
        l.kill_tree()?;
        check_after_fault(&job, if compress { "diskfull-z" } else { "diskfull" }, &[2])
    })();
    if let Err(e) = r {
        panic!("{e}\nlaunch: {}", job.stderr_of("launch"));
    }
}

/// The checkpoint dir made read-only (a read-only bind mount over it, since
/// root ignores permissions) under a running job: the checkpoint fails with a
/// message, the job keeps running, and once writable again it checkpoints.
#[test]
fn dir_read_only() {
    let Some(ckpt) = ckpt_bin() else { return };
    if !needs_root("dir_read_only") {
        return;
    }
    let job = Job::new("readonly", &ckpt, 8);
    let mut l = job.launch("run", &[], &[]);
    let r = (|| -> Result<(), String> {
        job.wait_ready(&mut l)?;
        job.checkpoint_ok("first")?;
        let d = job.dir.to_string_lossy().into_owned();
        let bind = Mounted::run(&["--bind", &d], &job.dir)?;
        // `mount --bind D D` then a read-only remount of that bind.
        let o = Command::new("mount")
            .args(["-o", "remount,bind,ro"])
            .arg(&job.dir)
            .output()
            .map_err(|e| e.to_string())?;
        if !o.status.success() {
            return Err(format!(
                "remount ro: {}",
                String::from_utf8_lossy(&o.stderr)
            ));
        }
        must_fail_clearly(&job, "ro", &["Read-only", "read-only", "not writable"])?;
        job_keeps_running(&job, &mut l)?;
        drop(bind);
        wait_until("the read-only mount to go", deadline(), || {
            Ok(fs::metadata(&job.dir)
                .ok()
                .filter(|_| {
                    let t = job.dir.join(".probe");
                    let ok = fs::write(&t, b"").is_ok();
                    let _ = fs::remove_file(&t);
                    ok
                })
                .map(|_| ()))
        })?;
        job.checkpoint_ok("writable")?;
        l.kill_tree()?;
        check_after_fault(&job, "readonly", &[2])
    })();
    if let Err(e) = r {
        panic!("{e}\nlaunch: {}", job.stderr_of("launch"));
    }
}

/// The checkpoint dir removed under a running job with periodic checkpoints:
/// each periodic checkpoint fails with a message naming the directory, and
/// the program runs on to a correct end.
#[test]
fn dir_removed() {
    let Some(ckpt) = ckpt_bin() else { return };
    let job = Job::new("removed", &ckpt, 8);
    let mut l = job.launch("run", &["--interval", "1"], &[]);
    let r = (|| -> Result<(), String> {
        job.wait_ready(&mut l)?;
        wait_until("the first periodic checkpoint", deadline(), || {
            Ok((!job.complete().is_empty()).then_some(()))
        })?;
        fs::remove_dir_all(&job.dir).map_err(|e| e.to_string())?;
        let errf = job.s.join("launch-run.err");
        let dir = job.dir.to_string_lossy().into_owned();
        let msg = wait_until("a periodic checkpoint failure message", deadline(), || {
            let t = tail(&errf, 1 << 16);
            Ok(t.lines()
                .find(|l| l.contains("periodic checkpoint failed") && l.contains(&dir))
                .map(str::to_string))
        })?;
        eprintln!("removed dir message: {msg}");
        job_keeps_running(&job, &mut l)?;
        fs::write(job.work.join("go"), b"").map_err(|e| e.to_string())?;
        let st = wait_exit(&mut l)?;
        let out = fs::read_to_string(job.out()).unwrap_or_default();
        if !st.success() || out != job.expected {
            return Err(format!(
                "the program under a removed checkpoint dir ended with {}: {out:?}",
                describe(st)
            ));
        }
        Ok(())
    })();
    if let Err(e) = r {
        panic!("{e}\nlaunch: {}", job.stderr_of("launch"));
    }
}

// ---- Hostile and damaged images ----

/// One pristine image of the ticker (8 MiB), killed after the checkpoint.
fn pristine(ckpt: &Path, label: &str) -> Job {
    let job = Job::new(label, ckpt, 8);
    let mut l = job.launch("run", &[], &[]);
    let r = job
        .wait_ready(&mut l)
        .and_then(|()| job.checkpoint_ok("image"));
    if let Err(e) = r {
        panic!("{e}");
    }
    l.kill_tree().unwrap_or_else(|e| panic!("{e}"));
    // The killed coordinator's socket stays behind; copies do not need it.
    let _ = fs::remove_file(job.dir.join("ckpt.sock"));
    job
}

/// A damaged copy of the pristine image: `damage` edits the generation dir.
struct Hostile {
    name: &'static str,
    /// What the message must contain (one of).
    says: &'static [&'static str],
    damage: fn(&Path) -> Result<(), String>,
}

fn manifest_path(g: &Path) -> PathBuf {
    g.join("proc-2.json")
}

fn edit_manifest(g: &Path, f: impl FnOnce(&mut serde_json::Value)) -> Result<(), String> {
    let mut m = read_json(&manifest_path(g))?;
    f(&mut m);
    rewrite_manifest(g, 2, &m)
}

fn flip(p: &Path, at: impl FnOnce(usize) -> usize) -> Result<(), String> {
    let mut d = fs::read(p).map_err(|e| e.to_string())?;
    let i = at(d.len());
    d[i] ^= 0x5a;
    fs::write(p, d).map_err(|e| e.to_string())
}

fn set_len(p: &Path, f: impl FnOnce(u64) -> u64) -> Result<(), String> {
    let h = fs::OpenOptions::new()
        .write(true)
        .open(p)
        .map_err(|e| e.to_string())?;
    let n = h.metadata().map_err(|e| e.to_string())?.len();
    h.set_len(f(n)).map_err(|e| e.to_string())
}

fn hostile_cases() -> Vec<Hostile> {
    vec![
        Hostile {
            name: "manifest byte flipped",
            says: &["proc-2.json"],
            damage: |g| flip(&manifest_path(g), |n| n / 2),
        },
        Hostile {
            name: "manifest truncated",
            says: &["proc-2.json"],
            damage: |g| set_len(&manifest_path(g), |n| n / 3),
        },
        Hostile {
            name: "generation record truncated",
            says: &["generation.json"],
            damage: |g| set_len(&g.join("generation.json"), |n| n / 2),
        },
        Hostile {
            name: "generation record points outside its directory",
            says: &["outside its generation"],
            damage: |g| {
                let p = g.join("generation.json");
                let mut v = read_json(&p)?;
                v["processes"][0]["manifest"] = "../../../../etc/passwd".into();
                write_json(&p, &v)
            },
        },
        Hostile {
            name: "generation record names an absolute image path",
            says: &["outside its generation"],
            damage: |g| {
                let p = g.join("generation.json");
                let mut v = read_json(&p)?;
                v["processes"][0]["image"] = "/etc/passwd".into();
                write_json(&p, &v)
            },
        },
        Hostile {
            name: "manifest from a newer minor format",
            says: &["not supported"],
            damage: |g| edit_manifest(g, |m| m["version"] = serde_json::json!([1, 99])),
        },
        Hostile {
            name: "manifest from another major format",
            says: &["not supported"],
            damage: |g| edit_manifest(g, |m| m["version"] = serde_json::json!([2, 0])),
        },
        Hostile {
            name: "image header from a newer format",
            says: &["proc-2.img"],
            damage: |g| patch_header(&g.join("proc-2.img"), 10, &99u16.to_le_bytes()),
        },
        Hostile {
            name: "image from another architecture (aarch64)",
            says: &["architecture"],
            damage: |g| patch_header(&g.join("proc-2.img"), 24, &183u32.to_le_bytes()),
        },
        Hostile {
            name: "image header checksum wrong",
            says: &["proc-2.img"],
            damage: |g| flip(&g.join("proc-2.img"), |_| 20),
        },
        Hostile {
            name: "XSAVE state this CPU lacks",
            says: &["XSAVE component 63", "--constraint"],
            damage: |g| edit_manifest(g, |m| m["cpu"]["xcr0"] = serde_json::json!(1u64 << 63 | 3)),
        },
        Hostile {
            name: "CPU features this CPU lacks",
            says: &["lacks features"],
            damage: |g| {
                edit_manifest(g, |m| {
                    m["cpu"]["features"] =
                        serde_json::json!([u32::MAX, u32::MAX, u32::MAX, u32::MAX])
                })
            },
        },
        // Another kernel's vDSO is redirected to this one's (cr mode
        // vdso_moved) unless it cannot stand in for it.
        Hostile {
            name: "another kernel's vDSO with a function this one lacks",
            says: &["vDSO", "__vdso_frobnicate", "kernel it was checkpointed on"],
            damage: |g| {
                edit_manifest(g, |m| {
                    let c = m["vdso"]["crc"].as_u64().unwrap_or(0);
                    m["vdso"]["crc"] = serde_json::json!(c ^ 1);
                    if let Some(v) = m["vdso"]["symbols"].as_array_mut() {
                        v.push(serde_json::json!(["__vdso_frobnicate", 8]));
                    }
                })
            },
        },
        Hostile {
            name: "a thread stopped inside another kernel's vDSO",
            says: &["vDSO", "stopped inside the vDSO's code"],
            damage: |g| {
                edit_manifest(g, |m| {
                    let c = m["vdso"]["crc"].as_u64().unwrap_or(0);
                    m["vdso"]["crc"] = serde_json::json!(c ^ 1);
                    let v = m["vdso"]["vdso"].as_u64().unwrap_or(0);
                    m["threads"][0]["rip"] = serde_json::json!(v + 1);
                })
            },
        },
        Hostile {
            name: "another kernel's vDSO, from an image that does not list its functions",
            says: &["vDSO", "older ckpt"],
            damage: |g| {
                edit_manifest(g, |m| {
                    let c = m["vdso"]["crc"].as_u64().unwrap_or(0);
                    m["vdso"]["crc"] = serde_json::json!(c ^ 1);
                    m["vdso"]["symbols"] = serde_json::json!([]);
                })
            },
        },
        Hostile {
            name: "region at an absurd address",
            says: &["absurd addresses"],
            damage: |g| {
                edit_manifest(g, |m| {
                    m["regions"][0]["start"] = serde_json::json!(0x7fff_ffff_f000u64);
                    m["regions"][0]["end"] = serde_json::json!(0x8000_0000_0000u64 + 4096);
                })
            },
        },
        Hostile {
            name: "region data outside its file",
            says: &["outside its data file"],
            damage: |g| {
                edit_manifest(g, |m| {
                    let last = m["regions"].as_array().map_or(0, |r| r.len()) - 1;
                    m["regions"][last]["data_offset"] = serde_json::json!(1u64 << 40);
                })
            },
        },
        Hostile {
            name: "page run beyond its region",
            says: &["outside region", "outside its data file"],
            damage: |g| {
                edit_manifest(g, |m| {
                    m["regions"][0]["runs"] = serde_json::json!([[0, 1u64 << 50]]);
                })
            },
        },
        Hostile {
            name: "thread context at the end of the address space",
            says: &["saved context outside saved memory"],
            damage: |g| {
                edit_manifest(g, |m| {
                    m["threads"][0]["ucontext"] = serde_json::json!(u64::MAX - 512);
                })
            },
        },
        Hostile {
            name: "memory data byte flipped",
            says: &["proc-2.img"],
            damage: |g| flip(&g.join("proc-2.img"), |n| n - 4096 + 17),
        },
        Hostile {
            name: "buffered pipe data byte flipped",
            says: &["pipe"],
            damage: |g| {
                let m = read_json(&manifest_path(g))?;
                let off = m["fds"]
                    .as_array()
                    .and_then(|fds| fds.iter().find_map(|f| f["pipe_data"][0].as_u64()))
                    .ok_or("the manifest has no pipe data")?;
                flip(&g.join("proc-2.img"), |_| {
                    usize::try_from(off + 100).unwrap_or(usize::MAX)
                })
            },
        },
        Hostile {
            name: "image truncated",
            says: &["proc-2.img"],
            damage: |g| set_len(&g.join("proc-2.img"), |n| n - 4096),
        },
        Hostile {
            name: "image appended to",
            says: &["proc-2.img"],
            damage: |g| set_len(&g.join("proc-2.img"), |n| n + 4096),
        },
        Hostile {
            name: "image belongs to another user",
            says: &["belongs to uid 65534"],
            damage: |g| chown(&g.join("proc-2.img"), 65534),
        },
        Hostile {
            name: "generation dir belongs to another user",
            says: &["belongs to uid 65534"],
            damage: |g| chown(g, 65534),
        },
        Hostile {
            name: "manifest of another user's process",
            says: &["belongs to uid 4242"],
            damage: |g| edit_manifest(g, |m| m["uid"] = serde_json::json!(4242)),
        },
    ]
}

fn chown(p: &Path, uid: u32) -> Result<(), String> {
    std::os::unix::fs::chown(p, Some(uid), None).map_err(|e| format!("chown {}: {e}", p.display()))
}

/// Restarts `dir` and requires: a non-zero exit (not a crash), a message with
/// one of `says`, no panic, and a program that never ran (its `go` file exists
/// and its output did not change).
fn restart_refused(job: &Job, dir: &Path, tag: &str, says: &[&str]) -> Result<String, String> {
    fs::write(job.out(), b"READY\n").map_err(|e| e.to_string())?;
    fs::write(job.work.join("go"), b"").map_err(|e| e.to_string())?;
    let args = ["restart".into(), "--dir".into(), dir.as_os_str().to_owned()];
    let (st, _out, err) = ckpt_tests::cr::run_logged(
        &job.ckpt,
        &args,
        &job.s.path,
        &job.s.join(format!("refused-{tag}")),
    )?;
    // Give a wrongly started program a moment to write (not an assertion on time).
    pause(Duration::from_millis(100));
    let out = fs::read_to_string(job.out()).unwrap_or_default();
    let mut why = Vec::new();
    if st.success() {
        why.push("it succeeded".to_string());
    }
    if st.code().is_none() {
        why.push(format!("ckpt crashed ({})", describe(st)));
    }
    if !says.iter().any(|w| err.contains(w)) {
        why.push(format!("the message does not say any of {says:?}"));
    }
    if err.contains("panicked") {
        why.push("ckpt panicked".into());
    }
    if out != "READY\n" {
        why.push(format!("the program ran: {out:?}"));
    }
    if why.is_empty() {
        Ok(err)
    } else {
        Err(format!("{tag}: {}\nstderr: {err}", why.join("; ")))
    }
}

/// Every kind of damaged or hostile image gets a clear message and a
/// non-zero exit, never a crash of ckpt and never a run of the image.
#[test]
fn hostile_images() {
    let Some(ckpt) = ckpt_bin() else { return };
    let job = pristine(&ckpt, "hostile");
    let mut failures = Vec::new();
    let cases = hostile_cases();
    for (i, c) in cases.iter().enumerate() {
        if c.says.iter().any(|s| s.contains("65534")) && !is_root() {
            // chown to another uid needs root; tested below as a user instead.
            if ci() {
                failures.push(format!("{}: needs root", c.name));
            }
            continue;
        }
        let d = job.s.join(format!("case-{i}"));
        if let Err(e) = copy_tree(&job.dir, &d) {
            failures.push(format!("{}: copy: {e}", c.name));
            continue;
        }
        let g = d.join("gen-000001");
        if let Err(e) = (c.damage)(&g) {
            failures.push(format!("{}: damage: {e}", c.name));
            continue;
        }
        match restart_refused(&job, &d, &format!("case-{i}"), c.says) {
            Ok(msg) => eprintln!("{}: {}", c.name, msg.lines().last().unwrap_or("")),
            Err(e) => failures.push(format!("{}: {e}", c.name)),
        }
        // `ckpt status` reads the same files: it reports, it does not crash.
        let args = ["status".into(), "--dir".into(), d.as_os_str().to_owned()];
        match ckpt_tests::cr::run_logged(
            &job.ckpt,
            &args,
            &job.s.path,
            &job.s.join(format!("status-{i}")),
        ) {
            Ok((st, out, err)) if st.code().is_some() && !err.contains("panicked") => {
                if st.success() && !out.contains("gen-000001") {
                    failures.push(format!(
                        "{}: ckpt status does not list the generation:\n{out}",
                        c.name
                    ));
                }
            }
            Ok((st, out, err)) => failures.push(format!(
                "{}: ckpt status {}\n{out}{err}",
                c.name,
                describe(st)
            )),
            Err(e) => failures.push(format!("{}: ckpt status: {e}", c.name)),
        }
    }
    // One flipped byte at 16 places spread over the memory data: each is
    // caught by the region checksums before the program runs.
    let img_len = fs::metadata(job.dir.join("gen-000001/proc-2.img"))
        .map(|m| m.len())
        .unwrap_or(0);
    let spots = 16u64;
    for k in 0..spots {
        let at = 4096 + (img_len - 4096) / spots * k + 123;
        let d = job.s.join(format!("flip-{k}"));
        let r = copy_tree(&job.dir, &d).and_then(|()| {
            flip(&d.join("gen-000001/proc-2.img"), |_| {
                usize::try_from(at).unwrap_or(usize::MAX)
            })
        });
        if let Err(e) = r.and_then(|()| {
            restart_refused(&job, &d, &format!("flip-{k}"), &["proc-2.img"]).map(|_| ())
        }) {
            failures.push(format!("data byte {at} of {img_len} flipped: {e}"));
        }
    }
    // The pristine image itself restarts (the damage, not the copy, is refused).
    let d = job.s.join("case-pristine");
    copy_tree(&job.dir, &d).unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "hostile images: {} cases and {spots} data flips, {} failed",
        cases.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    job.restart_and_verify("pristine")
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Another user's image that the restarting user can read (mode 0644,
/// owned by nobody when we are root).
fn readable(p: &Path) -> Result<(), String> {
    fs::set_permissions(p, fs::Permissions::from_mode(0o644)).map_err(|e| e.to_string())?;
    if is_root() {
        chown(p, 65534)?;
    }
    Ok(())
}

/// An inotify watch for opens and reads of one file.
struct ReadWatch(i32);

impl ReadWatch {
    fn on(p: &Path) -> Result<ReadWatch, String> {
        // SAFETY: plain syscall, no pointers.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(format!("inotify: {}", std::io::Error::last_os_error()));
        }
        let w = ReadWatch(fd);
        let c =
            std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
        // SAFETY: fd is our inotify instance, c a valid C string.
        if unsafe { libc::inotify_add_watch(fd, c.as_ptr(), libc::IN_OPEN | libc::IN_ACCESS) } < 0 {
            return Err(format!(
                "inotify watch {}: {}",
                p.display(),
                std::io::Error::last_os_error()
            ));
        }
        Ok(w)
    }

    /// Whether the file was opened or read since the watch was set.
    fn touched(&self) -> bool {
        let mut buf = [0u8; 4096];
        // SAFETY: reading into our buffer of its stated length from our (non-blocking) fd.
        let n = unsafe { libc::read(self.0, buf.as_mut_ptr().cast(), buf.len()) };
        n > 0
    }
}

impl Drop for ReadWatch {
    fn drop(&mut self) {
        // SAFETY: closing the inotify fd we own.
        unsafe { libc::close(self.0) };
    }
}

/// A manifest whose `image.file` names another image than the one the
/// generation record lists and checked (an absolute path to another user's
/// image, a path out of the generation, another file in it), with the
/// manifest checksum in generation.json fixed: the restart is refused with a
/// message naming the file, and the other file is never opened. The other
/// file is a copy of the real image, so that its checksums pass.
#[test]
fn manifest_redirects_image_file() {
    let Some(ckpt) = ckpt_bin() else { return };
    let job = pristine(&ckpt, "redirect");
    let img = job.dir.join("gen-000001/proc-2.img");
    let foreign = job.s.join("other-user");
    fs::create_dir_all(&foreign).unwrap_or_else(|e| panic!("{e}"));
    let other = foreign.join("proc-2.img");
    fs::copy(&img, &other).unwrap_or_else(|e| panic!("{e}"));
    readable(&other).unwrap_or_else(|e| panic!("{e}"));
    let other_name = other.display().to_string();
    // (tag, name written into image.file, where the copy is, relative to the copy of the dir)
    let cases: [(&str, &str, Option<&str>); 3] = [
        ("absolute", &other_name, None),
        ("dotdot", "../x", Some("x")),
        ("sibling", "proc-9.img", Some("gen-000001/proc-9.img")),
    ];
    let mut failures = Vec::new();
    for (tag, name, local) in cases {
        let d = job.s.join(format!("redirect-{tag}"));
        let r = (|| -> Result<(), String> {
            copy_tree(&job.dir, &d)?;
            let target = match local {
                Some(rel) => {
                    let t = d.join(rel);
                    fs::copy(&img, &t).map_err(|e| e.to_string())?;
                    readable(&t)?;
                    t
                }
                None => other.clone(),
            };
            edit_manifest(&d.join("gen-000001"), |m| {
                m["image"]["file"] = name.into();
            })?;
            let watch = ReadWatch::on(&target)?;
            let r = restart_refused(&job, &d, &format!("redirect-{tag}"), &[name]);
            if watch.touched() {
                return Err(format!(
                    "the restart opened or read {} ({})",
                    target.display(),
                    r.err().unwrap_or_default()
                ));
            }
            eprintln!("{tag}: {}", r?.lines().last().unwrap_or(""));
            Ok(())
        })();
        if let Err(e) = r {
            failures.push(format!("image.file = {name:?}: {e}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    // The untouched image restarts: the refusal is for the redirect.
    job.restart_and_verify("redirect-pristine")
        .unwrap_or_else(|e| panic!("{e}"));
}

// ---- Security ----

/// Images and directories are private: the checkpoint dir is tightened to
/// 0700, generations are 0700 and every file in them 0600.
/// Incremental generations refer to older ones for unchanged memory: a
/// removed or damaged base is named, never silently restored around, and the
/// intact chain restores into a correct run.
#[test]
fn incremental_chain_damage() {
    chain_damage(false);
}

/// The same chain written with `--compress`: damage inside the base's
/// compressed frames is refused like damaged pages, and the intact chain
/// restores through the frames of every generation.
#[test]
fn incremental_chain_damage_compressed() {
    chain_damage(true);
}

fn chain_damage(compress: bool) {
    let Some(ckpt) = ckpt_bin() else { return };
    let mut job = Job::new(if compress { "chain-z" } else { "chain" }, &ckpt, 32);
    job.compress = compress;
    let mut l = job.launch("run", &["--incremental", "on"], &[]);
    let mut made = || -> Result<(), String> {
        job.wait_ready(&mut l)?;
        for k in 1..=3 {
            job.checkpoint_ok(&format!("chain-{k}"))?;
            pause(Duration::from_millis(300));
        }
        Ok(())
    };
    if let Err(e) = made() {
        panic!("{e}");
    }
    l.kill_tree().unwrap_or_else(|e| panic!("{e}"));
    let _ = fs::remove_file(job.dir.join("ckpt.sock"));
    if compress {
        let (images, compressed) = count_compressed(&job.dir);
        assert!(
            images == 3 && compressed == 3,
            "{compressed} of {images} images in the chain are compressed (want 3 of 3)"
        );
    }
    let base_of = |n: u64| -> Option<u64> {
        read_json(&job.dir.join(format!("gen-{n:06}/generation.json")))
            .ok()
            .and_then(|r| r["base"].as_u64())
    };
    assert_eq!(
        (base_of(1), base_of(2), base_of(3)),
        (None, Some(1), Some(2)),
        "the second and third checkpoints must be incremental (ticker rewrites few pages)"
    );
    let mut failures = Vec::new();
    // The base of the chain is gone: both incremental generations name it.
    let d = job.s.join("no-base");
    let r = copy_tree(&job.dir, &d)
        .and_then(|()| fs::remove_dir_all(d.join("gen-000001")).map_err(|e| e.to_string()))
        .and_then(|()| {
            restart_refused(&job, &d, "no-base", &["generation 1, which cannot be used"])
        });
    if let Err(e) = r {
        failures.push(format!("base removed: {e}"));
    }
    // Every data page of the base is damaged (with --compress: its frames):
    // whatever the newest image inherits from it fails its checksum or its
    // frame.
    let d = job.s.join("bad-base");
    let r = copy_tree(&job.dir, &d)
        .and_then(|()| {
            let img = d.join("gen-000001/proc-2.img");
            let mut data = fs::read(&img).map_err(|e| e.to_string())?;
            // (A compressed file need not end on a whole page.)
            for b in data.chunks_mut(4096).skip(1).filter_map(|p| p.get_mut(100)) {
                *b ^= 0x5a;
            }
            fs::write(&img, data).map_err(|e| e.to_string())
        })
        .and_then(|()| {
            restart_refused(
                &job,
                &d,
                "bad-base",
                &["checksum", "compressed frame", "frame table"],
            )
        });
    match r {
        // A damaged frame (or the table of frames) is found where it is
        // read, in the base's own file: the message names that file and what
        // is damaged.
        Ok(msg)
            if compress
                && !(msg.contains("gen-000001/proc-2.img")
                    && (msg.contains("compressed frame") || msg.contains("frame table"))) =>
        {
            failures.push(format!(
                "damaged base: the message does not name the base's image and its damaged frame \
                 (or frame table): {msg}"
            ))
        }
        // A failed checksum is found in the assembled region of the newest
        // image: the message says where else its pages came from.
        Ok(msg) if !compress && !msg.contains("older generations") => failures.push(format!(
            "damaged base: the message does not say that the image refers to older generations: {msg}"
        )),
        Ok(_) => {}
        Err(e) => failures.push(format!("damaged base: {e}")),
    }
    // The base's manifest names another (readable, checksum-valid) image
    // than its record lists: the base is refused, and that file never read.
    let d = job.s.join("redirected-base");
    let other = job.s.join("other-base.img");
    let r = copy_tree(&job.dir, &d)
        .and_then(|()| {
            fs::copy(d.join("gen-000001/proc-2.img"), &other).map_err(|e| e.to_string())?;
            readable(&other)?;
            edit_manifest(&d.join("gen-000001"), |m| {
                m["image"]["file"] = other.display().to_string().into();
            })
        })
        .and_then(|()| {
            let watch = ReadWatch::on(&other)?;
            let r = restart_refused(
                &job,
                &d,
                "redirected-base",
                &[other.display().to_string().as_str()],
            );
            if watch.touched() {
                return Err(format!("the restart read {}", other.display()));
            }
            r
        });
    if let Err(e) = r {
        failures.push(format!("base manifest redirects its image file: {e}"));
    }
    // The intact chain restores the newest generation, correctly.
    if let Err(e) = job.restart_and_verify("chain-intact") {
        failures.push(format!("intact chain: {e}"));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn images_are_private() {
    let Some(ckpt) = ckpt_bin() else { return };
    let job = Job::new("modes", &ckpt, 8);
    fs::set_permissions(&job.dir, fs::Permissions::from_mode(0o755)).unwrap();
    let mut l = job.launch("run", &[], &[]);
    job.wait_ready(&mut l).unwrap_or_else(|e| panic!("{e}"));
    job.checkpoint_ok("a").unwrap_or_else(|e| panic!("{e}"));
    job.checkpoint_ok("b").unwrap_or_else(|e| panic!("{e}"));
    l.kill_tree().unwrap_or_else(|e| panic!("{e}"));
    let mode = |p: &Path| {
        fs::symlink_metadata(p)
            .map(|m| m.mode() & 0o7777)
            .unwrap_or(0)
    };
    let mut bad = Vec::new();
    // A directory ckpt did not create keeps its mode (a 2775 team
    // directory must not lose its setgid bit); everything ckpt creates in
    // it is private.
    if mode(&job.dir) != 0o755 {
        bad.push(format!(
            "{}: {:o}, expected 755 kept",
            job.dir.display(),
            mode(&job.dir)
        ));
    }
    let mut files = 0;
    for n in gen_numbers(&job.dir, false) {
        let g = job.dir.join(format!("gen-{n:06}"));
        if mode(&g) != 0o700 {
            bad.push(format!("{}: {:o}", g.display(), mode(&g)));
        }
        for e in fs::read_dir(&g).unwrap().flatten() {
            files += 1;
            if mode(&e.path()) != 0o600 {
                bad.push(format!("{}: {:o}", e.path().display(), mode(&e.path())));
            }
        }
    }
    assert!(files >= 6, "expected two generations of 3 files: {files}");
    assert!(bad.is_empty(), "not private: {bad:?}");
}

/// The bytes an image holds at `addr` of process `pid` in generation `g`
/// (a plain image: each region's saved runs one after another from its
/// `data_offset`).
fn image_bytes_at(g: &Path, pid: u32, addr: u64, n: usize) -> Result<Vec<u8>, String> {
    let m = read_json(&g.join(format!("proc-{pid}.json")))?;
    let regions = m["regions"].as_array().ok_or("no regions")?;
    let r = regions
        .iter()
        .find(|r| r["start"].as_u64() <= Some(addr) && Some(addr) < r["end"].as_u64())
        .ok_or(format!("no region holds {addr:#x}"))?;
    let start = r["start"].as_u64().unwrap_or(0);
    let page = (addr - start) / 4096;
    let mut off = r["data_offset"].as_u64().ok_or("no data_offset")?;
    for run in r["runs"].as_array().ok_or("no runs")? {
        let (first, count) = (run[0].as_u64().unwrap_or(0), run[1].as_u64().unwrap_or(0));
        if (first..first + count).contains(&page) {
            let at = off + (page - first) * 4096 + addr % 4096;
            let img = fs::read(g.join(format!("proc-{pid}.img"))).map_err(|e| e.to_string())?;
            return img
                .get(at as usize..at as usize + n)
                .map(<[u8]>::to_vec)
                .ok_or(format!("offset {at} is past the image"));
        }
        off += count * 4096;
    }
    Err(format!("the page of {addr:#x} is not saved"))
}

/// The kernel writes a thread's rseq area (its CPU number) whenever the
/// thread is preempted or moves to another CPU. The checkpointing thread,
/// or the snapshot child copying it, unregisters its area while memory is
/// written (docs/kernel.md, "rseq while memory is written"): otherwise a
/// page could be checksummed before such a write and copied after it, and
/// the restore would refuse a checkpoint reported good. The image then
/// holds `cpu_id` -1 (unregistered), both written from a snapshot and
/// while stopped, and still restores.
#[test]
fn rseq_area_is_quiet_while_memory_is_written() {
    let Some(ckpt) = ckpt_bin() else { return };
    for snapshot in ["1", "0"] {
        let job = Job::new(&format!("rseq-{snapshot}"), &ckpt, 8);
        let mut l = job.launch("run", &[], &[("CKPT_SNAPSHOT", snapshot)]);
        job.wait_ready(&mut l).unwrap_or_else(|e| panic!("{e}"));
        job.checkpoint_ok("image").unwrap_or_else(|e| panic!("{e}"));
        l.kill_tree().unwrap_or_else(|e| panic!("{e}"));
        let _ = fs::remove_file(job.dir.join("ckpt.sock"));
        let g = job.dir.join("gen-000001");
        let m = read_json(&g.join("proc-2.json")).unwrap_or_else(|e| panic!("{e}"));
        let rseq = m["threads"][0]["rseq"].as_u64().unwrap_or(0);
        assert_ne!(
            rseq, 0,
            "CKPT_SNAPSHOT={snapshot}: glibc registered no rseq area"
        );
        let b = image_bytes_at(&g, 2, rseq, 8).unwrap_or_else(|e| panic!("{e}"));
        let cpu_id = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        assert_eq!(
            cpu_id,
            u32::MAX,
            "CKPT_SNAPSHOT={snapshot}: the saved rseq area holds cpu_id {cpu_id}: it was \
             registered while memory was written"
        );
        job.restart_and_verify("after")
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

/// An unprivileged user cannot restart root's image, even with read access
/// to a copy: the refusal names the owner.
#[test]
fn other_user_cannot_restart() {
    let Some(ckpt) = ckpt_bin() else { return };
    if !needs_root("other_user_cannot_restart (runuser)") {
        return;
    }
    let job = pristine(&ckpt, "otheruser");
    // A copy the user owns the directory of, but whose generation is root's.
    let base = Scratch::new("faults-otheruser-dir");
    fs::set_permissions(&base.path, fs::Permissions::from_mode(0o755)).unwrap();
    let d = base.join("d");
    copy_tree(&job.dir, &d).unwrap();
    fs::set_permissions(&d, fs::Permissions::from_mode(0o700)).unwrap();
    chown(&d, 65534).unwrap();
    let o = Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .arg(&ckpt)
        .args(["restart", "--dir"])
        .arg(&d)
        .output()
        .expect("runuser");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && o.status.code().is_some() && err.contains("belongs to uid 0"),
        "restart by another user: {} {err}",
        describe(o.status)
    );
}

/// The executable changed on disk since the checkpoint: the restart refuses,
/// naming it.
#[test]
fn changed_executable_detected() {
    let Some(ckpt) = ckpt_bin() else { return };
    let mut job = Job::new("exe", &ckpt, 8);
    let exe = job.s.join("ticker-copy");
    fs::copy(&job.program, &exe).unwrap();
    job.program = exe.clone();
    let mut l = job.launch("run", &[], &[]);
    job.wait_ready(&mut l).unwrap_or_else(|e| panic!("{e}"));
    job.checkpoint_ok("a").unwrap_or_else(|e| panic!("{e}"));
    l.kill_tree().unwrap_or_else(|e| panic!("{e}"));
    // Rewritten in place (same inode, new size and mtime), like an upgrade.
    let mut data = fs::read(&exe).unwrap();
    data.extend_from_slice(&[0u8; 4096]);
    fs::write(&exe, data).unwrap();
    let dir = job.dir.clone();
    let msg =
        restart_refused(&job, &dir, "exe", &["ticker-copy"]).unwrap_or_else(|e| panic!("{e}"));
    assert!(msg.contains("changed"), "{msg}");
}

/// A shared library changed on disk since the checkpoint: the restart
/// refuses, naming it.
#[test]
fn changed_library_detected() {
    let Some(ckpt) = ckpt_bin() else { return };
    let mut job = Job::new("lib", &ckpt, 8);
    let libdir = job.s.dir("lib");
    let lib = libdir.join("libtick.so");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("faults/programs/libtick.c");
    let st = Command::new("cc")
        .args(["-O1", "-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg(&src)
        .status()
        .expect("cc");
    assert!(st.success(), "cc libtick");
    let rpath = format!("-Wl,-rpath,{}", libdir.display());
    let libflag = format!("-L{}", libdir.display());
    let exe = job.s.join("ticker-lib");
    ckpt_tests::faults::build_program_into(
        "ticker",
        &exe,
        &["-DWITH_LIB", &libflag, "-ltick", &rpath],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    job.program = exe;
    let mut l = job.launch("run", &[], &[]);
    job.wait_ready(&mut l).unwrap_or_else(|e| panic!("{e}"));
    job.checkpoint_ok("a").unwrap_or_else(|e| panic!("{e}"));
    l.kill_tree().unwrap_or_else(|e| panic!("{e}"));
    // Rebuilt in place: same path and inode, new contents and mtime.
    let mut data = fs::read(&lib).unwrap();
    data.extend_from_slice(b"rebuilt");
    fs::write(&lib, data).unwrap();
    let dir = job.dir.clone();
    let msg = restart_refused(&job, &dir, "lib", &["libtick.so"]).unwrap_or_else(|e| panic!("{e}"));
    assert!(msg.contains("changed"), "{msg}");
}

// ---- Checkpoints in the middle of things ----

fn busy_case(ckpt: &Path, mode: &str) -> Result<(), String> {
    let job = Job::busy(&format!("busy-{mode}"), ckpt, mode);
    let mut l = job.launch("run", &[], &[]);
    job.wait_ready(&mut l)?;
    // Four checkpoints at uneven spacing, each landing wherever the program
    // is; more for the exec modes, whose window (between the exec wrapper
    // and the new program's constructor) is narrow.
    let spacing: &[u64] = if mode.starts_with("exec") {
        &[13, 41, 7, 97, 3, 29, 1, 17, 5, 61, 2, 11]
    } else {
        &[13, 41, 7, 97]
    };
    for (i, ms) in spacing.iter().enumerate() {
        pause(Duration::from_millis(*ms));
        job.checkpoint_ok(&format!("c{i}"))
            .map_err(|e| format!("{mode}: {e}"))?;
    }
    job_keeps_running(&job, &mut l).map_err(|e| format!("{mode}: {e}"))?;
    l.kill_tree()?;
    job.restart_and_verify(mode)
        .map_err(|e| format!("{mode}: {e}"))
}

/// Checkpoints while the program is forking and reaping children, forking
/// children that exec, running `popen`, creating and joining threads, blocked in a long read
/// on a pipe, in a 2 s nanosleep, or in a signal handler (a thread sends it
/// SIGUSR1 every millisecond): each restarts from the newest generation and
/// finishes with its checks passing, its own handlers for SIGUSR1, SIGUSR2,
/// SIGTERM and two real-time signals still running.
#[test]
fn checkpoint_in_the_middle_of_things() {
    let Some(ckpt) = ckpt_bin() else { return };
    let modes = [
        "fork", "exec", "execl", "popen", "thread", "pipe", "sleep", "signal",
    ];
    let failures = run_parallel(&modes, |m| busy_case(&ckpt, m));
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// A checkpoint requested while the program really blocks every signal (a
/// raw `rt_sigprocmask` system call, which libckpt cannot see) waits, and is
/// taken once the program unblocks them. (Masks set through libc keep the
/// stop signal deliverable: see `checkpoint_of_program_blocking_every_signal`.)
#[test]
fn checkpoint_waits_for_blocked_signals() {
    let Some(ckpt) = ckpt_bin() else { return };
    let job = Job::busy("blocked", &ckpt, "rawblocked");
    let mut l = job.launch("run", &[], &[]);
    let r = (|| -> Result<(), String> {
        job.wait_ready(&mut l)?;
        let mut c = job.checkpoint_async("blocked");
        pause(Duration::from_millis(500));
        if let Some(st) = c.poll() {
            return Err(format!(
                "the checkpoint of a program blocking all signals ended early: {}\n{}",
                describe(st),
                job.stderr_of("checkpoint")
            ));
        }
        fs::write(job.work.join("unblock"), b"").map_err(|e| e.to_string())?;
        let st = c.wait(deadline())?;
        if !st.success() {
            return Err(format!(
                "the checkpoint did not complete once signals were unblocked: {}\n{}",
                describe(st),
                job.stderr_of("checkpoint")
            ));
        }
        l.kill_tree()?;
        job.restart_and_verify("blocked")
    })();
    if let Err(e) = r {
        panic!("{e}\nlaunch: {}", job.stderr_of("launch"));
    }
}

/// A checkpoint of a program that keeps every signal blocked with a raw
/// `rt_sigprocmask` system call fails clearly after the coordinator's stop
/// deadline (30 s), the program keeps running, and the next checkpoint after
/// it unblocks them succeeds (the stale stop signal it then receives does no
/// harm).
#[test]
fn checkpoint_of_blocked_program_times_out() {
    let Some(ckpt) = ckpt_bin() else { return };
    let job = Job::busy("blocked-timeout", &ckpt, "rawblocked");
    let mut l = job.launch("run", &[], &[]);
    let r = (|| -> Result<(), String> {
        job.wait_ready(&mut l)?;
        let err = must_fail_clearly(&job, "timeout", &["did not stop"])?;
        eprintln!("blocked signals message: {}", err.trim());
        job_keeps_running(&job, &mut l)?;
        if !job.complete().is_empty() || !job.partial().is_empty() {
            return Err(format!(
                "a failed checkpoint left generations: {:?} {:?}",
                job.complete(),
                job.partial()
            ));
        }
        fs::write(job.work.join("unblock"), b"").map_err(|e| e.to_string())?;
        job.checkpoint_ok("after")?;
        l.kill_tree()?;
        job.restart_and_verify("blocked-timeout")
    })();
    if let Err(e) = r {
        panic!("{e}\nlaunch: {}", job.stderr_of("launch"));
    }
}

/// A program that blocks every signal with `pthread_sigmask` (issue 12) is
/// checkpointed at once (libckpt keeps its stop signal deliverable), keeps
/// its mask, and restarts into a correct run.
#[test]
fn checkpoint_of_program_blocking_every_signal() {
    let Some(ckpt) = ckpt_bin() else { return };
    let job = Job::busy("masked", &ckpt, "blocked");
    let mut l = job.launch("run", &[], &[]);
    let r = (|| -> Result<(), String> {
        job.wait_ready(&mut l)?;
        job.checkpoint_ok("masked")?;
        job_keeps_running(&job, &mut l)?;
        l.kill_tree()?;
        fs::write(job.work.join("unblock"), b"").map_err(|e| e.to_string())?;
        job.restart_and_verify("masked")
    })();
    if let Err(e) = r {
        panic!("{e}\nlaunch: {}", job.stderr_of("launch"));
    }
}

/// A thread that blocks every signal with a raw `rt_sigprocmask` (as the Go
/// runtime or static code may) cannot be stopped: the checkpoint fails after
/// the stop timeout with a message naming the thread and saying why, the
/// program keeps running, and once the thread unblocks a checkpoint succeeds.
#[test]
fn checkpoint_names_thread_blocking_with_raw_syscall() {
    let Some(ckpt) = ckpt_bin() else { return };
    let job = Job::busy("rawthread", &ckpt, "rawthread");
    let mut l = job.launch("run", &[], &[]);
    let r = (|| -> Result<(), String> {
        job.wait_ready(&mut l)?;
        // The thread names itself just after READY.
        pause(Duration::from_millis(300));
        let err = must_fail_clearly(&job, "raw", &["did not stop"])?;
        eprintln!("raw-blocked thread message: {}", err.trim());
        if !err.contains("rawblocker") || !err.contains("rt_sigprocmask") {
            return Err(format!(
                "the message does not name the thread that blocks the stop signal: {err}"
            ));
        }
        job_keeps_running(&job, &mut l)?;
        fs::write(job.work.join("unblock"), b"").map_err(|e| e.to_string())?;
        job.checkpoint_ok("after")?;
        l.kill_tree()?;
        job.restart_and_verify("rawthread")
    })();
    if let Err(e) = r {
        panic!("{e}\nlaunch: {}", job.stderr_of("launch"));
    }
}

/// io_uring (issue 12): inside a job, `io_uring_setup` fails with ENOSYS as on
/// a kernel without io_uring (a seccomp filter of the job's init), so
/// programs fall back to epoll; so it does after a checkpoint and a restart
/// (the restart's init installs the filter too). The program checks both.
#[test]
fn io_uring_is_unavailable_in_a_job() {
    let Some(ckpt) = ckpt_bin() else { return };
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup(4 entries, params) writes at most 120 bytes into params.
    let fd = unsafe { libc::syscall(425, 4, params.as_mut_ptr()) };
    if fd >= 0 {
        // SAFETY: closing the ring we just opened.
        unsafe { libc::close(fd as i32) };
    } else {
        eprintln!(
            "note: io_uring is unavailable outside ckpt too ({}): the test only checks ENOSYS",
            std::io::Error::last_os_error()
        );
    }
    let job = Job::busy("uring", &ckpt, "uring");
    let mut l = job.launch("run", &[], &[]);
    let r = (|| -> Result<(), String> {
        job.wait_ready(&mut l)?;
        job.checkpoint_ok("uring")?;
        l.kill_tree()?;
        job.restart_and_verify("uring")
    })();
    if let Err(e) = r {
        panic!(
            "{e}\nprogram output: {}\nlaunch: {}",
            fs::read_to_string(job.out()).unwrap_or_default(),
            job.stderr_of("launch")
        );
    }
}

// ---- Memory limits and copy-on-write snapshots ----

/// A memory cgroup made by a test (v1 `memory` controller or v2), removed on drop.
struct MemCgroup {
    dir: PathBuf,
    v1: bool,
}

impl MemCgroup {
    fn new(label: &str, limit: u64) -> Result<MemCgroup, String> {
        let own = fs::read_to_string("/proc/self/cgroup").map_err(|e| e.to_string())?;
        let (base, v1) = own
            .lines()
            .find_map(|l| {
                let mut f = l.splitn(3, ':');
                let (_, ctrl, path) = (f.next()?, f.next()?, f.next()?);
                if ctrl.split(',').any(|c| c == "memory") {
                    Some((format!("/sys/fs/cgroup/memory{path}"), true))
                } else {
                    None
                }
            })
            .or_else(|| {
                own.lines()
                    .find_map(|l| l.strip_prefix("0::"))
                    .map(|p| (format!("/sys/fs/cgroup{p}"), false))
            })
            .ok_or("no memory cgroup in /proc/self/cgroup")?;
        let dir = PathBuf::from(base).join(format!("ckpt-faults-{}-{label}", std::process::id()));
        fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let cg = MemCgroup { dir, v1 };
        let file = if v1 {
            "memory.limit_in_bytes"
        } else {
            "memory.max"
        };
        fs::write(cg.dir.join(file), limit.to_string())
            .map_err(|e| format!("{}/{file}: {e}", cg.dir.display()))?;
        Ok(cg)
    }

    /// The kernel's count of OOM kills in the cgroup.
    fn oom_kills(&self) -> Result<u64, String> {
        let file = if self.v1 {
            "memory.oom_control"
        } else {
            "memory.events"
        };
        let t = fs::read_to_string(self.dir.join(file)).map_err(|e| e.to_string())?;
        t.lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse().ok())
            .ok_or(format!("no oom_kill in {file}: {t}"))
    }
}

impl Drop for MemCgroup {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.dir);
    }
}

/// A 64 MiB program that rewrites pages of its heap all the time, under a
/// memory limit, checkpointed three times: never killed for memory. With
/// 100 MiB the limit leaves no room for a copy-on-write snapshot and ckpt
/// says it wrote the image while the job stood still; with 200 MiB the first
/// checkpoint uses the snapshot. Both restart into a correct run.
#[test]
fn memory_limit_never_oom() {
    let Some(ckpt) = ckpt_bin() else { return };
    if !needs_root("memory_limit_never_oom (cgroups)") {
        return;
    }
    for (limit_mib, cow_first) in [(100u64, false), (200, true)] {
        let mut job = Job::new(&format!("mem{limit_mib}"), &ckpt, 64);
        job.args.push("churn".into());
        let cg = MemCgroup::new(&format!("{limit_mib}"), limit_mib << 20)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut l = job.launch_in("run", &[], &[], Some(&cg.dir));
        let r = (|| -> Result<(), String> {
            job.wait_ready(&mut l)?;
            for i in 0..3 {
                pause(Duration::from_millis(50));
                let (st, out, err) = job.ckpt_cmd("checkpoint", &format!("c{i}"), &[])?;
                if !st.success() {
                    return Err(format!("checkpoint {i}: {}\n{out}{err}", describe(st)));
                }
                let in_place = format!("{out}{err}").contains("written while the job stood still");
                if i == 0 && in_place == cow_first {
                    return Err(format!(
                        "limit {limit_mib} MiB: the first checkpoint {} a copy-on-write snapshot\n{out}{err}",
                        if cow_first { "did not use" } else { "used" }
                    ));
                }
            }
            let kills = cg.oom_kills()?;
            if kills != 0 {
                return Err(format!("{kills} OOM kill(s) in the job's cgroup"));
            }
            job_keeps_running(&job, &mut l)?;
            l.kill_tree()?;
            job.restart_and_verify(&format!("mem{limit_mib}"))
        })();
        if let Err(e) = r {
            panic!(
                "limit {limit_mib} MiB: {e}\nlaunch: {}",
                job.stderr_of("launch")
            );
        }
    }
}

// ---- Faults around restarts and concurrent requests ----

fn restart_killed_case(ckpt: &Path, delay_ms: u64) -> Result<(), String> {
    let case = format!("restart-killed-{delay_ms}ms");
    let job = Job::new(&case, ckpt, 48);
    let mut l = job.launch("run", &[], &[]);
    job.wait_ready(&mut l)?;
    job.checkpoint_ok("image")?;
    l.kill_tree()?;
    let _ = fs::remove_file(job.dir.join("ckpt.sock"));
    // A restart killed (with everything it started) part-way through.
    let mut sp = ckpt_tests::cr::Spawn::new(&job.ckpt, &job.s.path)
        .arg("restart")
        .arg("--dir")
        .arg(&job.dir);
    sp.stderr = ckpt_tests::cr::out_file(&job.s.join("restart-killed.err")).into();
    let mut r = sp.spawn("ckpt restart (to be killed)");
    pause(Duration::from_millis(delay_ms));
    r.kill_tree()?;
    let _ = fs::remove_file(job.dir.join("ckpt.sock"));
    check_after_fault(&job, &case, &[1])
}

/// `kill -9` of a restart (and of the tree it is rebuilding) at 8 moments
/// from its start to a running program: the image is untouched and the next
/// restart resumes correctly.
#[test]
fn kill_during_restart() {
    let Some(ckpt) = ckpt_bin() else { return };
    let cases = [0u64, 3, 10, 25, 50, 100, 200, 400];
    let failures = run_parallel(&cases, |d| restart_killed_case(&ckpt, *d));
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Four `ckpt checkpoint` requests at once: each gets an answer, every one
/// that says it succeeded made its own complete generation, and the newest
/// restores correctly.
#[test]
fn concurrent_checkpoint_requests() {
    let Some(ckpt) = ckpt_bin() else { return };
    let job = Job::new("concurrent", &ckpt, 16);
    let mut l = job.launch("run", &["--keep", "10"], &[]);
    let r = (|| -> Result<(), String> {
        job.wait_ready(&mut l)?;
        let mut cs: Vec<Running> = (0..4)
            .map(|i| job.checkpoint_async(&format!("c{i}")))
            .collect();
        let mut ok = 0;
        for (i, c) in cs.iter_mut().enumerate() {
            let st = c.wait(deadline())?;
            let err = tail(&job.s.join(format!("checkpoint-c{i}.err")), 4096);
            if st.success() {
                ok += 1;
            } else if err.trim().is_empty() {
                return Err(format!(
                    "request {i} failed without a message ({})",
                    describe(st)
                ));
            }
        }
        if ok != job.complete().len() || ok == 0 {
            return Err(format!(
                "{ok} requests succeeded but the complete generations are {:?}",
                job.complete()
            ));
        }
        l.kill_tree()?;
        let n = job.complete().len() as u64;
        check_after_fault(&job, "concurrent", &[n])
    })();
    if let Err(e) = r {
        panic!("{e}\nlaunch: {}", job.stderr_of("launch"));
    }
}

// ---- Malformed command lines ----

/// Every malformed `ckpt` option value and unusable `--dir` gets a non-zero
/// exit and a message that names the value, never a panic; the program is
/// never started.
#[test]
fn malformed_command_lines() {
    let Some(ckpt) = ckpt_bin() else { return };
    let s = Scratch::new("faults-cli");
    let dir = s.dir("d");
    let file = s.join("a-file");
    fs::write(&file, b"").unwrap();
    let link = s.join("a-link");
    std::os::unix::fs::symlink(&dir, &link).unwrap();
    let foreign = s.dir("foreign");
    if is_root() {
        chown(&foreign, 65534).unwrap();
    }
    let marker = s.join("ran");
    let d = dir.to_string_lossy().into_owned();
    let touch = ["--", "/bin/touch", &*marker.to_string_lossy()].map(str::to_string);
    let launch = |extra: &[&str]| -> Vec<String> {
        let mut v = vec!["launch".to_string()];
        v.extend(extra.iter().map(|x| x.to_string()));
        v.extend(touch.iter().cloned());
        v
    };
    let p = |x: &Path| x.to_string_lossy().into_owned();
    let mut cases: Vec<(Vec<String>, String)> = vec![
        (
            launch(&["--dir", &d, "--interval", "5x"]),
            "--interval=5x".into(),
        ),
        (
            launch(&["--dir", &d, "--interval=-5"]),
            "--interval=-5".into(),
        ),
        (launch(&["--dir", &d, "--interval="]), "--interval=".into()),
        (
            launch(&["--dir", &d, "--interval", "99999999999999999999h"]),
            "99999999999999999999h".into(),
        ),
        (launch(&["--dir", &d, "--keep", "0"]), "--keep=0".into()),
        (launch(&["--dir", &d, "--keep=abc"]), "--keep=abc".into()),
        (launch(&["--dir", &d, "--bogus"]), "--bogus".into()),
        (
            vec!["launch".into(), "--dir".into()],
            "--dir needs a value".into(),
        ),
        (
            vec!["launch".into(), "--dir".into(), d.clone()],
            "missing the command".into(),
        ),
        (vec!["frobnicate".into()], "frobnicate".into()),
        (
            launch(&["--dir", &p(&s.join("missing"))]),
            p(&s.join("missing")),
        ),
        (launch(&["--dir", &p(&file)]), "not a directory".into()),
        (launch(&["--dir", &p(&link)]), "symbolic link".into()),
        (
            vec!["restart".into(), "--dir".into(), p(&s.join("missing"))],
            p(&s.join("missing")),
        ),
        (
            vec!["checkpoint".into(), "--dir".into(), p(&file)],
            "not a directory".into(),
        ),
        (vec!["status".into()], "--dir".into()),
    ];
    if is_root() {
        cases.push((
            launch(&["--dir", &p(&foreign)]),
            "owned by uid 65534".into(),
        ));
    }
    let mut failures = Vec::new();
    for (i, (args, says)) in cases.iter().enumerate() {
        let a: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
        let mut sp = ckpt_tests::cr::Spawn::new(&ckpt, &s.path);
        sp.args = a;
        sp.stdout = ckpt_tests::cr::out_file(&s.join(format!("cli-{i}.out"))).into();
        sp.stderr = ckpt_tests::cr::out_file(&s.join(format!("cli-{i}.err"))).into();
        sp.env = vec![("CKPT_DIR".into(), "".into())];
        let mut r = sp.spawn(&format!("ckpt {args:?}"));
        let st = match r.wait(deadline()) {
            Ok(st) => st,
            Err(e) => {
                failures.push(e);
                continue;
            }
        };
        let err = tail(&s.join(format!("cli-{i}.err")), 4096);
        if st.success()
            || st.code().is_none()
            || !err.contains(says.as_str())
            || err.contains("panicked")
        {
            failures.push(format!(
                "ckpt {args:?}: {} (want a failure saying {says:?})\n{err}",
                describe(st)
            ));
        }
    }
    assert!(
        !marker.exists(),
        "a malformed command line started the program"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
