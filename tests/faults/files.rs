//! Files a job rewrites (issue 14, `ckpt-restart/src/saved_files.rs`): the
//! refusals and the reports, with `faults/programs/filer.c`.
//!
//! - a file larger than `--max-file-copy` fails the checkpoint, naming the
//!   file, its size and the option; the job keeps running, no partial
//!   generation remains, and a checkpoint after the file shrank succeeds;
//!   `--max-file-copy=bogus` is refused before anything runs;
//! - a file changed by something outside the job after the checkpoint, and
//!   one removed, are put back by the restart (content, size and mode of the
//!   checkpoint), and its stderr names them;
//! - a damaged copy (one byte flipped) makes the restart of its generation
//!   refuse, naming the copy, before any user file is changed; the restart
//!   falls back to the older generation, whose files come back.
//!
//! Run: `cargo test --release -p ckpt-tests --test faults -- files::`.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ckpt_tests::cr::{Running, Spawn, deadline, describe, out_file, run_logged, tail, wait_until};
use ckpt_tests::faults::{Job, build_program, read_json, wait_exit};

use super::ckpt_bin;

/// `faults/programs/filer.c`, built once.
fn filer() -> PathBuf {
    static T: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match T.get_or_init(|| build_program("filer")) {
        Ok(p) => p.clone(),
        Err(e) => panic!("{e}"),
    }
}

/// A job around the filer: `filer MODE WORK ARGS...`, printing `expected`.
fn filer_job(label: &str, ckpt: &Path, mode: &str, args: &[&str], expected: &str) -> Job {
    let mut j = Job::new(label, ckpt, 0);
    j.program = filer();
    j.args = vec![mode.into(), j.work.clone().into()];
    j.args.extend(args.iter().map(OsString::from));
    j.expected = expected.into();
    j
}

/// content(f, s) of filer.c.
fn content(f: usize, s: usize) -> Vec<u8> {
    (0..10000 + 1000 * s)
        .map(|i| ((i * 31 + s * 7 + f * 13) % 251) as u8)
        .collect()
}

/// Waits until the program's stdout holds `text` while `l` runs.
fn wait_out(j: &Job, l: &mut Running, text: &str) -> Result<(), String> {
    let out = j.out();
    wait_until(
        &format!("{text:?} in {}", out.display()),
        deadline(),
        || {
            if fs::read_to_string(&out).is_ok_and(|o| o.contains(text)) {
                return Ok(Some(()));
            }
            l.check_running().map(|()| None)
        },
    )
}

fn touch(p: &Path) -> Result<(), String> {
    fs::write(p, b"").map_err(|e| format!("create {}: {e}", p.display()))
}

/// `ckpt restart --dir D` in the background, stderr to `restart-<tag>.err`
/// (returned with the process); with `umask`, run under that umask.
fn restart(j: &Job, tag: &str, umask: Option<&str>) -> (Running, PathBuf) {
    // A coordinator socket left by the killed job is not ours to reuse.
    let _ = fs::remove_file(j.dir.join("ckpt.sock"));
    let err = j.s.join(format!("restart-{tag}.err"));
    let sh = Path::new("/bin/sh");
    let sp = match umask {
        Some(m) => Spawn::new(sh, &j.s.path)
            .arg("-c")
            .arg(format!("umask {m} && exec \"$0\" \"$@\""))
            .arg(&j.ckpt),
        None => Spawn::new(&j.ckpt, &j.s.path),
    };
    let mut sp = sp.arg("restart").arg("--dir").arg(&j.dir);
    sp.stdout = out_file(&j.s.join(format!("restart-{tag}.out"))).into();
    sp.stderr = out_file(&err).into();
    (sp.spawn(&format!("ckpt restart ({tag})")), err)
}

/// Creates `work/ping` and waits until the restarted program removes it:
/// then it runs its own code again, after the restore put its files back.
fn ping(j: &Job, r: &mut Running) -> Result<(), String> {
    let p = j.work.join("ping");
    touch(&p)?;
    wait_until(
        "the restarted program to remove work/ping",
        deadline(),
        || {
            r.check_running()?;
            Ok((!p.exists()).then_some(()))
        },
    )
}

/// The copy a generation keeps of `file`: `gen-N/file-*.data`, from its record.
fn copy_of(j: &Job, n: u64, file: &Path) -> Result<PathBuf, String> {
    let g = j.dir.join(format!("gen-{n:06}"));
    let rec = read_json(&g.join("generation.json"))?;
    let files = rec["files"]
        .as_array()
        .ok_or(format!("gen {n}: no files in its record: {rec}"))?;
    let want = file.to_string_lossy();
    files
        .iter()
        .find(|f| f["path"].as_str() == Some(&want))
        .and_then(|f| f["data"].as_str())
        .map(|d| g.join(d))
        .ok_or(format!("gen {n} keeps no copy of {want}: {files:?}"))
}

fn flip_byte(p: &Path, at: usize) -> Result<(), String> {
    let mut d = fs::read(p).map_err(|e| format!("read {}: {e}", p.display()))?;
    let len = d.len();
    let b = d
        .get_mut(at)
        .ok_or(format!("{}: only {len} bytes", p.display()))?;
    *b ^= 0x20;
    // The copies are read-only for others; write in place as their owner.
    fs::write(p, d).map_err(|e| format!("write {}: {e}", p.display()))
}

/// The names of a directory's entries, sorted.
fn names(d: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(d)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn check_file(p: &Path, want: &[u8], what: &str) -> Result<(), String> {
    let got = fs::read(p).map_err(|e| format!("{what}: read {}: {e}", p.display()))?;
    if got != want {
        return Err(format!(
            "{what}: {} holds {} bytes, not the {} bytes expected{}",
            p.display(),
            got.len(),
            want.len(),
            if got.len() == want.len() {
                " (same length, other bytes)"
            } else {
                ""
            }
        ));
    }
    Ok(())
}

/// A file larger than `--max-file-copy` fails the checkpoint with a message
/// naming it, its size and the option; the job keeps running and no partial
/// generation is left; once the file shrank, a checkpoint succeeds and
/// restarts. `--max-file-copy=bogus` is refused.
#[test]
fn larger_than_max_file_copy() {
    let Some(ckpt) = ckpt_bin() else { return };
    let j = filer_job("files-max-copy", &ckpt, "big", &[], "READY\nshrunk\nPASS\n");
    let mut l = j.launch("1", &["--max-file-copy", "1M"], &[]);
    let r = (|| -> Result<(), String> {
        j.wait_ready(&mut l)?;
        let big = j.work.join("big.dat");
        let (st, out, err) = j.ckpt_cmd("checkpoint", "big", &[])?;
        let msg = format!("{out}{err}");
        if st.success() {
            return Err(format!(
                "checkpoint of a job writing a 2 MiB file with --max-file-copy 1M succeeded:\n{msg}"
            ));
        }
        for want in [
            big.to_string_lossy().as_ref(),
            "2.0 MiB",
            "1.0 MiB",
            "--max-file-copy",
            "keeps running",
        ] {
            if !msg.contains(want) {
                return Err(format!(
                    "the failed checkpoint's message does not say {want:?}:\n{msg}"
                ));
            }
        }
        l.check_running()
            .map_err(|e| format!("after the refused checkpoint: {e}"))?;
        let left: Vec<String> = names(&j.dir)
            .into_iter()
            .filter(|n| n.starts_with("gen-") || n.contains("tmp"))
            .collect();
        if !left.is_empty() {
            return Err(format!(
                "the refused checkpoint left {left:?} in {}",
                j.dir.display()
            ));
        }
        // The job runs on: it shrinks the file, and now a checkpoint works.
        touch(&j.work.join("shrink"))?;
        wait_out(&j, &mut l, "shrunk\n")?;
        j.checkpoint_ok("small")?;
        let (complete, partial) = (j.complete(), j.partial());
        if complete.len() != 1 || !partial.is_empty() {
            return Err(format!(
                "after one refused and one good checkpoint: complete {complete:?}, partial {partial:?}"
            ));
        }
        let copy = copy_of(&j, complete[0], &big)?;
        let len = fs::metadata(&copy).map(|m| m.len()).unwrap_or(0);
        if len != 4096 {
            return Err(format!("{}: {len} bytes, expected 4096", copy.display()));
        }
        l.kill_tree()?;
        let _ = wait_exit(&mut l);
        // Something makes the file big again after the kill: the restart
        // puts back its 4 KiB.
        fs::write(&big, vec![7u8; 3 << 20]).map_err(|e| e.to_string())?;
        let _ = fs::remove_file(j.dir.join("ckpt.sock"));
        j.restart_and_verify("1")?;
        let len = fs::metadata(&big).map(|m| m.len()).unwrap_or(0);
        if len != 4096 {
            return Err(format!(
                "after the restart big.dat has {len} bytes, not 4096"
            ));
        }
        Ok(())
    })();
    let _ = l.kill_tree();
    if let Err(e) = r {
        panic!("{e}\nlaunch: {}", j.stderr_of("launch"));
    }

    // A bad value is refused before the program runs.
    let ran = j.work.join("ran");
    let args: Vec<OsString> = vec![
        "launch".into(),
        "--dir".into(),
        j.s.join("ckpt-bogus").into(),
        "--max-file-copy=bogus".into(),
        "--".into(),
        "/bin/sh".into(),
        "-c".into(),
        format!("touch '{}'", ran.display()).into(),
    ];
    let _ = fs::create_dir_all(j.s.join("ckpt-bogus"));
    let (st, out, err) = run_logged(&j.ckpt, &args, &j.s.path, &j.s.join("launch-bogus"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !st.success() && err.contains("--max-file-copy=bogus") && err.contains("size"),
        "ckpt launch --max-file-copy=bogus: {}, stdout {out:?}, stderr {err:?}",
        describe(st)
    );
    assert!(
        !ran.exists(),
        "ckpt launch --max-file-copy=bogus ran the program"
    );
}

/// After the checkpoint, something outside the job appends garbage to one
/// file the job writes and removes the other: the restart puts both back as
/// they were at the checkpoint (content, and the removed one's mode, though
/// the restart runs under umask 077), says so naming them, and the program
/// goes on from there.
#[test]
fn changed_and_removed_files_put_back() {
    let Some(ckpt) = ckpt_bin() else { return };
    let j = filer_job(
        "files-put-back",
        &ckpt,
        "steps",
        &["3"],
        "READY\nstep 2\nstep 3\nPASS\n",
    );
    let (a, b) = (j.work.join("a.dat"), j.work.join("b.dat"));
    let mut l = j.launch("1", &[], &[]);
    let mut restarted: Option<Running> = None;
    let r = (|| -> Result<(), String> {
        j.wait_ready(&mut l)?;
        j.checkpoint_ok("1")?;
        // More work after the checkpoint, then kill -9.
        touch(&j.work.join("step-2"))?;
        wait_out(&j, &mut l, "step 2\n")?;
        l.kill_tree()?;
        let _ = wait_exit(&mut l);
        let _ = fs::remove_file(j.work.join("step-2"));
        // Outside the job: garbage appended to a.dat, b.dat removed.
        let mut d = fs::read(&a).map_err(|e| e.to_string())?;
        d.extend_from_slice(b"garbage from outside the job\n");
        fs::write(&a, d).map_err(|e| e.to_string())?;
        let a_ino = fs::metadata(&a).map(|m| m.ino()).unwrap_or(0);
        fs::remove_file(&b).map_err(|e| e.to_string())?;
        let (mut r, err) = restart(&j, "1", Some("077"));
        let res = ping(&j, &mut r);
        restarted = Some(r);
        res.map_err(|e| format!("{e}\nrestart stderr: {}", tail(&err, 8192)))?;
        check_file(
            &a,
            &content(0, 1),
            "a.dat (appended to after the checkpoint)",
        )?;
        check_file(&b, &content(1, 1), "b.dat (removed after the checkpoint)")?;
        match fs::metadata(&b).map(|m| m.permissions().mode() & 0o7777) {
            Ok(0o640) => {}
            Ok(m) => return Err(format!("b.dat came back with mode {m:o}, not 640")),
            Err(e) => return Err(format!("b.dat: {e}")),
        }
        if fs::metadata(&a).map(|m| m.ino()).unwrap_or(0) != a_ino {
            return Err("a.dat was replaced by another file, not written back in place".into());
        }
        let text = tail(&err, 8192);
        let line = text
            .lines()
            .find(|l| l.contains("put back"))
            .ok_or(format!(
                "the restart does not report the files it put back:\n{text}"
            ))?;
        for p in [&a, &b] {
            if !line.contains(p.to_string_lossy().as_ref()) {
                return Err(format!(
                    "the restart's report does not name {}: {line}",
                    p.display()
                ));
            }
        }
        if !line.contains("file(s)") {
            return Err(format!("unexpected report: {line}"));
        }
        // The program goes on from the checkpoint, with its files as then.
        for n in ["step-2", "step-3", "go"] {
            touch(&j.work.join(n))?;
        }
        let r = restarted.as_mut().ok_or("no restart")?;
        let st = r.wait(deadline())?;
        let out = fs::read_to_string(j.out()).unwrap_or_default();
        if !st.success() || out != j.expected {
            return Err(format!(
                "the restarted program: {}, output {out:?} (expected {:?})\nrestart stderr: {text}",
                describe(st),
                j.expected
            ));
        }
        Ok(())
    })();
    let _ = l.kill_tree();
    if let Some(mut r) = restarted {
        let _ = r.kill_tree();
    }
    if let Err(e) = r {
        panic!("{e}\nlaunch: {}", j.stderr_of("launch"));
    }
}

/// A byte flipped in a generation's copy of a file: the restart of that
/// generation refuses, naming the copy and its checksum, before any user
/// file is changed; with the older generation damaged too nothing is
/// restored and the user's files stay as they are; with the older one
/// intact the restart falls back to it and its files come back.
#[test]
fn damaged_copy_refused() {
    let Some(ckpt) = ckpt_bin() else { return };
    let j = filer_job(
        "files-damaged",
        &ckpt,
        "steps",
        &["4"],
        "READY\nstep 2\nstep 3\nstep 4\nPASS\n",
    );
    let (a, b) = (j.work.join("a.dat"), j.work.join("b.dat"));
    let mut l = j.launch("1", &[], &[]);
    let mut restarted: Option<Running> = None;
    let r = (|| -> Result<(), String> {
        j.wait_ready(&mut l)?;
        j.checkpoint_ok("1")?;
        touch(&j.work.join("step-2"))?;
        wait_out(&j, &mut l, "step 2\n")?;
        j.checkpoint_ok("2")?;
        touch(&j.work.join("step-3"))?;
        wait_out(&j, &mut l, "step 3\n")?;
        l.kill_tree()?;
        let _ = wait_exit(&mut l);
        for n in ["step-2", "step-3"] {
            let _ = fs::remove_file(j.work.join(n));
        }
        let gens = j.complete();
        let [g1, g2] = gens[..] else {
            return Err(format!("expected two generations, found {gens:?}"));
        };
        let (c1, c2) = (copy_of(&j, g1, &a)?, copy_of(&j, g2, &a)?);
        if fs::metadata(&c1).map(|m| m.ino()).ok() == fs::metadata(&c2).map(|m| m.ino()).ok() {
            return Err(format!(
                "{} and {} are one file: a.dat changed between the checkpoints",
                c1.display(),
                c2.display()
            ));
        }
        // Both generations damaged: nothing to restore, nothing changed.
        flip_byte(&c1, 5000)?;
        flip_byte(&c2, 5000)?;
        let before: Vec<_> = [&a, &b]
            .iter()
            .map(|p| {
                (
                    fs::read(p).ok(),
                    fs::metadata(p)
                        .ok()
                        .map(|m| (m.ino(), m.mtime_nsec(), m.mtime())),
                )
            })
            .collect();
        let listing = names(&j.work);
        let (mut r, err) = restart(&j, "both-damaged", None);
        let st = r.wait(deadline())?;
        let text = tail(&err, 8192);
        if st.success() {
            return Err(format!(
                "the restart of two damaged generations succeeded:\n{text}"
            ));
        }
        for c in [&c1, &c2] {
            let named = text.lines().any(|l| {
                l.contains(c.to_string_lossy().as_ref())
                    && l.contains("corrupt copy")
                    && l.contains("checksum")
            });
            if !named {
                return Err(format!(
                    "the refused restart does not name the damaged copy {} (corrupt copy ... checksum):\n{text}",
                    c.display()
                ));
            }
        }
        let after: Vec<_> = [&a, &b]
            .iter()
            .map(|p| {
                (
                    fs::read(p).ok(),
                    fs::metadata(p)
                        .ok()
                        .map(|m| (m.ino(), m.mtime_nsec(), m.mtime())),
                )
            })
            .collect();
        if before != after {
            return Err(format!("a refused restart changed a.dat or b.dat:\n{text}"));
        }
        check_file(&a, &content(0, 3), "a.dat after a refused restart")?;
        if names(&j.work) != listing {
            return Err(format!(
                "a refused restart left files in the work directory: {:?} (before {listing:?})",
                names(&j.work)
            ));
        }
        // The older generation intact again: the restart falls back to it.
        flip_byte(&c1, 5000)?;
        let (mut r, err) = restart(&j, "fallback", None);
        let res = ping(&j, &mut r);
        restarted = Some(r);
        let text = || tail(&err, 8192);
        res.map_err(|e| format!("{e}\nrestart stderr: {}", text()))?;
        let t = text();
        if !(t.contains(c2.to_string_lossy().as_ref())
            && t.contains("corrupt copy")
            && t.contains("falling back"))
        {
            return Err(format!(
                "the restart does not say that it refused {} and fell back:\n{t}",
                c2.display()
            ));
        }
        check_file(
            &a,
            &content(0, 1),
            "a.dat after falling back to generation 1",
        )?;
        check_file(
            &b,
            &content(1, 1),
            "b.dat after falling back to generation 1",
        )?;
        for n in ["step-2", "step-3", "step-4", "go"] {
            touch(&j.work.join(n))?;
        }
        let r = restarted.as_mut().ok_or("no restart")?;
        let st = r.wait(deadline())?;
        let out = fs::read_to_string(j.out()).unwrap_or_default();
        if !st.success() || out != j.expected {
            return Err(format!(
                "the program restarted from generation 1: {}, output {out:?} (expected {:?})\nrestart stderr: {}",
                describe(st),
                j.expected,
                text()
            ));
        }
        Ok(())
    })();
    let _ = l.kill_tree();
    if let Some(mut r) = restarted {
        let _ = r.kill_tree();
    }
    if let Err(e) = r {
        panic!("{e}\nlaunch: {}", j.stderr_of("launch"));
    }
}
