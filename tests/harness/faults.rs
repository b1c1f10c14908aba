//! Helpers for the reliability suite (`tests/faults`): a small self-checking
//! program (`faults/programs/ticker.c`, built here with `cc` on first use), a
//! job around it (launch, checkpoint, restart, verify), and the bits of the
//! image layout the hostile-input cases rewrite.
//!
//! Like the rest of the harness, nothing here asserts on time: waits have
//! deadlines so that a hang becomes a failure with diagnostics.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use crate::cr::{
    Running, Scratch, Spawn, deadline, describe, find_by_inner_pid, out_file, run_logged, tail,
    wait_until,
};

/// The lines the ticker prints after READY when its checks pass.
pub fn expected_output() -> String {
    let mut s = String::from("READY\n");
    for i in 0..20 {
        s.push_str(&format!("line {i}\n"));
    }
    s.push_str("PASS\n");
    s
}

/// Builds a C program of `faults/programs/` into `out` with `cc`; `extra`
/// are compiler arguments (libraries, defines).
pub fn build_program_into(name: &str, out: &Path, extra: &[&str]) -> Result<(), String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("faults/programs/{name}.c"));
    let o = Command::new("cc")
        .args(["-O1", "-g", "-Wall", "-pthread", "-o"])
        .arg(out)
        .arg(&src)
        .args(extra)
        .output()
        .map_err(|e| format!("run cc: {e} (the faults suite needs a C compiler)"))?;
    if !o.status.success() {
        return Err(format!(
            "cc {}: {}\n{}",
            src.display(),
            describe(o.status),
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    Ok(())
}

/// Builds a program of `faults/programs/` once: into `faults-bin/` of the
/// test executable's profile directory (not /tmp, whose names anyone can
/// take first), named after a checksum of its source, so later runs reuse it.
pub fn build_program(name: &str) -> Result<PathBuf, String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("faults/programs/{name}.c"));
    let text = fs::read(&src).map_err(|e| format!("{}: {e}", src.display()))?;
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("the test executable has no profile directory")?
        .join("faults-bin");
    fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    let out = dir.join(format!("{name}-{:08x}", crc32c(&text)));
    if out.is_file() {
        return Ok(out);
    }
    // Build beside it and rename: another test process may be building too.
    let tmp = dir.join(format!(".{name}-{}", std::process::id()));
    build_program_into(name, &tmp, &[])?;
    fs::rename(&tmp, &out).map_err(|e| format!("rename to {}: {e}", out.display()))?;
    Ok(out)
}

/// The ticker, built once.
pub fn ticker() -> PathBuf {
    static T: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match T.get_or_init(|| build_program("ticker")) {
        Ok(p) => p.clone(),
        Err(e) => panic!("{e}"),
    }
}

/// The busy program, built once.
pub fn busy() -> PathBuf {
    static T: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match T.get_or_init(|| build_program("busy")) {
        Ok(p) => p.clone(),
        Err(e) => panic!("{e}"),
    }
}

/// A ticker job: a scratch directory holding the checkpoint dir `ckpt/`, the
/// program's work dir `work/` (its `go` file and its stdout `work/out`).
pub struct Job {
    /// The scratch directory (kept on failure).
    pub s: Scratch,
    /// The `ckpt` binary.
    pub ckpt: PathBuf,
    /// The program run under `ckpt launch`.
    pub program: PathBuf,
    /// The checkpoint directory.
    pub dir: PathBuf,
    /// The program's work directory.
    pub work: PathBuf,
    /// The program's arguments.
    pub args: Vec<OsString>,
    /// Its output when all went well.
    pub expected: String,
    /// `--compress` on every launch and restart (the compression mode of
    /// the suite): memory goes out as zstd frames.
    pub compress: bool,
}

impl Job {
    /// A fresh job around the ticker with a `heap_mib` MiB heap.
    pub fn new(label: &str, ckpt: &Path, heap_mib: u32) -> Job {
        let s = Scratch::new(&format!("faults-{label}"));
        let dir = s.dir("ckpt");
        let work = s.dir("work");
        let args = vec![work.clone().into(), heap_mib.to_string().into()];
        Job {
            s,
            ckpt: ckpt.to_path_buf(),
            program: ticker(),
            dir,
            work,
            args,
            expected: expected_output(),
            compress: false,
        }
    }

    /// A job around `faults/programs/busy.c` in `mode`.
    pub fn busy(label: &str, ckpt: &Path, mode: &str) -> Job {
        let mut j = Job::new(label, ckpt, 0);
        j.program = busy();
        j.args = vec![mode.into(), j.work.clone().into()];
        j.expected = "READY\nPASS\n".into();
        j
    }

    /// The program's stdout file.
    pub fn out(&self) -> PathBuf {
        self.work.join("out")
    }

    /// `ckpt launch` of the program, stdout to `work/out`, stderr to
    /// `launch-<tag>.err`; `env` is added to its environment.
    pub fn launch(&self, tag: &str, extra: &[&str], env: &[(&str, &str)]) -> Running {
        self.launch_in(tag, extra, env, None)
    }

    /// [`Job::launch`], inside the cgroup `cgroup` when given (a shell moves
    /// itself there, then execs `ckpt launch`).
    pub fn launch_in(
        &self,
        tag: &str,
        extra: &[&str],
        env: &[(&str, &str)],
        cgroup: Option<&Path>,
    ) -> Running {
        let sh = Path::new("/bin/sh");
        let mut sp = match cgroup {
            Some(cg) => Spawn::new(sh, &self.s.path)
                .arg("-c")
                .arg(r#"echo $$ > "$1/cgroup.procs" && shift && exec "$@""#)
                .arg("sh")
                .arg(cg)
                .arg(&self.ckpt),
            None => Spawn::new(&self.ckpt, &self.s.path),
        }
        .arg("launch")
        .arg("--dir")
        .arg(&self.dir)
        .args(self.compress.then_some("--compress"))
        .args(extra)
        .arg("--")
        .arg(&self.program)
        .args(&self.args);
        sp.stdout = out_file(&self.out()).into();
        sp.stderr = out_file(&self.s.join(format!("launch-{tag}.err"))).into();
        sp.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        sp.spawn(&format!("ckpt launch ({tag})"))
    }

    /// Waits until the program printed READY.
    pub fn wait_ready(&self, l: &mut Running) -> Result<(), String> {
        let out = self.out();
        wait_until("the program's READY", deadline(), || {
            if fs::read(&out).is_ok_and(|b| b.starts_with(b"READY\n")) {
                return Ok(Some(()));
            }
            if let Some(st) = l.poll() {
                return Err(format!(
                    "ckpt launch exited before READY: {}\nstderr: {}",
                    describe(st),
                    self.stderr_of("launch")
                ));
            }
            Ok(None)
        })
    }

    /// The stderr files of one kind (`launch`, `restart`, `checkpoint`), for messages.
    pub fn stderr_of(&self, kind: &str) -> String {
        let mut out = String::new();
        for e in fs::read_dir(&self.s.path).into_iter().flatten().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(kind) && n.ends_with(".err") {
                out.push_str(&format!("[{n}] {}\n", tail(&e.path(), 4096)));
            }
        }
        out
    }

    /// `ckpt <sub> --dir D [args]` to completion: (status, stdout, stderr).
    pub fn ckpt_cmd(
        &self,
        sub: &str,
        tag: &str,
        args: &[&str],
    ) -> Result<(ExitStatus, String, String), String> {
        let mut a: Vec<OsString> = vec![sub.into(), "--dir".into(), self.dir.clone().into()];
        a.extend(args.iter().map(OsString::from));
        run_logged(
            &self.ckpt,
            &a,
            &self.s.path,
            &self.s.join(format!("{sub}-{tag}")),
        )
    }

    /// A checkpoint that must succeed; returns its stdout.
    pub fn checkpoint_ok(&self, tag: &str) -> Result<String, String> {
        let (st, out, err) = self.ckpt_cmd("checkpoint", tag, &[])?;
        if !st.success() {
            return Err(format!(
                "checkpoint {tag}: {}\nstdout: {out}\nstderr: {err}\nlaunch: {}",
                describe(st),
                self.stderr_of("launch")
            ));
        }
        Ok(out)
    }

    /// `ckpt checkpoint` started in the background.
    pub fn checkpoint_async(&self, tag: &str) -> Running {
        let mut sp = Spawn::new(&self.ckpt, &self.s.path)
            .arg("checkpoint")
            .arg("--dir")
            .arg(&self.dir);
        sp.stdout = out_file(&self.s.join(format!("checkpoint-{tag}.out"))).into();
        sp.stderr = out_file(&self.s.join(format!("checkpoint-{tag}.err"))).into();
        sp.spawn(&format!("ckpt checkpoint ({tag})"))
    }

    /// Host pid of the program (pid 2 of the job) under a running `ckpt launch`.
    pub fn program_pid(&self, l: &Running) -> Result<i32, String> {
        wait_until("the program's host pid", deadline(), || {
            Ok(find_by_inner_pid(l.pid(), 2))
        })
    }

    /// Numbers of the complete generations (`gen-N`, not `.tmp`), oldest first.
    pub fn complete(&self) -> Vec<u64> {
        gen_numbers(&self.dir, false)
    }

    /// Numbers of the `.tmp` generations.
    pub fn partial(&self) -> Vec<u64> {
        gen_numbers(&self.dir, true)
    }

    /// Restarts the newest generation, lets the program finish (creates `go`)
    /// and checks: exit 0, no complaint about an unusable generation, and the
    /// program's output equal to an uninterrupted run's.
    pub fn restart_and_verify(&self, tag: &str) -> Result<(), String> {
        let go = self.work.join("go");
        let _ = fs::remove_file(&go);
        let mut sp = Spawn::new(&self.ckpt, &self.s.path)
            .arg("restart")
            .arg("--dir")
            .arg(&self.dir)
            .args(self.compress.then_some("--compress"));
        let err_path = self.s.join(format!("restart-{tag}.err"));
        sp.stdout = out_file(&self.s.join(format!("restart-{tag}.out"))).into();
        sp.stderr = out_file(&err_path).into();
        sp.stdin = Stdio::null();
        let mut r = sp.spawn(&format!("ckpt restart ({tag})"));
        // The program may only see `go` once it runs again, but creating it
        // early is harmless: it checks for it between ticks.
        fs::write(&go, b"").map_err(|e| format!("create {}: {e}", go.display()))?;
        let st = r.wait(deadline())?;
        let err = tail(&err_path, 1 << 16);
        let out = fs::read_to_string(self.out()).unwrap_or_default();
        if !st.success() {
            return Err(format!(
                "restart {tag}: {}\nstderr: {err}\nprogram output: {out:?}",
                describe(st)
            ));
        }
        if err.contains("cannot use") || err.contains("falling back") || err.contains("failed") {
            return Err(format!(
                "restart {tag} skipped the newest complete generation:\n{err}"
            ));
        }
        if out != self.expected {
            return Err(format!(
                "restart {tag}: the program's output differs from an uninterrupted run:\n{out:?}\nstderr: {err}"
            ));
        }
        Ok(())
    }
}

/// `(images, compressed)` over the complete generations of `dir` (see
/// [`crate::cr::count_compressed_in`]).
pub fn count_compressed(dir: &Path) -> (usize, usize) {
    gen_numbers(dir, false)
        .into_iter()
        .map(|n| crate::cr::count_compressed_in(&dir.join(format!("gen-{n:06}"))))
        .fold((0, 0), |(a, b), (c, d)| (a + c, b + d))
}

/// Generation numbers in a checkpoint dir, complete ones or `.tmp` ones.
pub fn gen_numbers(dir: &Path, tmp: bool) -> Vec<u64> {
    let mut v: Vec<u64> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            let rest = n.strip_prefix("gen-")?;
            let num = if tmp {
                rest.strip_suffix(".tmp")?
            } else {
                rest
            };
            num.parse().ok()
        })
        .collect();
    v.sort_unstable();
    v
}

/// Waits until `l` exits (it was killed or its job died).
pub fn wait_exit(l: &mut Running) -> Result<ExitStatus, String> {
    l.wait(deadline())
}

/// Parses "durable after X ms" from `ckpt checkpoint`'s output.
pub fn durable_ms(out: &str) -> Option<f64> {
    let at = out.find("durable after ")? + "durable after ".len();
    out[at..].split(' ').next()?.parse().ok()
}

/// A short sleep used to space kills over a checkpoint (not an assertion).
pub fn pause(d: Duration) {
    std::thread::sleep(d);
}

/// CRC-32C, as the image format uses it (bitwise; only for rewriting test images).
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0x82F6_3B78 & mask);
        }
    }
    !crc
}

/// Reads a JSON file.
pub fn read_json(p: &Path) -> Result<serde_json::Value, String> {
    let data = fs::read(p).map_err(|e| format!("read {}: {e}", p.display()))?;
    serde_json::from_slice(&data).map_err(|e| format!("parse {}: {e}", p.display()))
}

/// Writes a process manifest and records its new checksum in the
/// generation's `generation.json`, so that only the edited content is wrong.
pub fn rewrite_manifest(gen_dir: &Path, pid: i64, m: &serde_json::Value) -> Result<(), String> {
    let mp = gen_dir.join(format!("proc-{pid}.json"));
    let data = serde_json::to_vec(m).map_err(|e| e.to_string())?;
    fs::write(&mp, &data).map_err(|e| format!("write {}: {e}", mp.display()))?;
    let gp = gen_dir.join("generation.json");
    let mut g = read_json(&gp)?;
    let procs = g
        .get_mut("processes")
        .and_then(|p| p.as_array_mut())
        .ok_or("generation.json has no processes")?;
    for p in procs {
        if p.get("pid").and_then(|x| x.as_i64()) == Some(pid) {
            p["manifest_crc"] = serde_json::json!(crc32c(&data));
        }
    }
    write_json(&gp, &g)
}

/// Writes a JSON file.
pub fn write_json(p: &Path, v: &serde_json::Value) -> Result<(), String> {
    let data = serde_json::to_vec_pretty(v).map_err(|e| e.to_string())?;
    fs::write(p, data).map_err(|e| format!("write {}: {e}", p.display()))
}

/// Rewrites bytes of an image header and fixes its header checksum.
pub fn patch_header(img: &Path, at: usize, bytes: &[u8]) -> Result<(), String> {
    let mut data = fs::read(img).map_err(|e| format!("read {}: {e}", img.display()))?;
    if data.len() < 4096 || at + bytes.len() > 32 {
        return Err(format!(
            "{}: cannot patch the header at {at}",
            img.display()
        ));
    }
    data[at..at + bytes.len()].copy_from_slice(bytes);
    let c = crc32c(&data[0..32]);
    data[32..36].copy_from_slice(&c.to_le_bytes());
    fs::write(img, data).map_err(|e| format!("write {}: {e}", img.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_vector() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn durable_parse() {
        let o = "checkpoint written: /x/gen-000001 (1 process, 8.2 MiB, program paused 25.9 ms, durable after 146.4 ms)";
        assert_eq!(durable_ms(o), Some(146.4));
        assert_eq!(durable_ms("nothing"), None);
    }
}
