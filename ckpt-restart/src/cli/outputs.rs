//! Output continuity for Slurm tasks: the task's stdout/stderr files as
//! they were at each checkpoint.
//!
//! Slurm opens a batch job's output files with `O_APPEND` and, on requeue,
//! truncates them unless `--open-mode=append`. After each checkpoint the
//! bytes each output file had at that moment are kept in the task's
//! checkpoint directory, and before resuming each output file is made
//! exactly that long again (see the README's "Output files").
//!
//! Layout in the task directory (all created by `ckpt` relative to the
//! directory's descriptor, `O_EXCL|O_NOFOLLOW`, mode 0600):
//! - `output-<fd>.saved`: one copy per descriptor that only grows: each
//!   checkpoint appends what the file gained since the previous one (an
//!   output file is appended to), so a long job does not copy its whole
//!   output at every checkpoint. When the file was rewritten instead
//!   (shorter, or its last saved bytes differ), the copy is written anew.
//! - `output-<fd>-<generation>.len`: `<length> <crc32c>` of the file at
//!   that generation's checkpoint, i.e. of the copy's first `length` bytes.
//!   A restore checks the checksum, so a copy rewritten since (or damaged)
//!   is never used for an older generation.
//! - `output-<fd>-<generation>.after`: our own `ckpt:` lines written after a
//!   signal checkpoint (Slurm cuts them too when it truncates).
//!
//! The output files themselves are reached through the task's own
//! descriptors (`/proc/self/fd/N`, compared by device and inode with what
//! the descriptor was at start), never through their names, and are read
//! and copied in bounded pieces.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::PathBuf;

use ckpt::image::checksum::Crc32c;
use ckpt::image::generation::{CheckpointDir, LoadedGeneration};
use ckpt::image::manifest::FdKind;

/// An output file of the task: one of its descriptors 1 and 2 that is a
/// regular file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    /// The task's descriptor.
    pub fd: i32,
    /// The file's path when the task started (how images name it).
    pub path: PathBuf,
    dev: u64,
    ino: u64,
}

/// Pieces copied or compared at a time.
const CHUNK: usize = 1 << 20;
/// Bytes at the end of the saved copy compared with the file before only
/// the new part is appended.
const TAIL_CHECK: u64 = 4096;
/// Most bytes of our own `ckpt:` lines kept from a cut part.
const OURS_MAX: usize = 1 << 20;

/// The task's stdout and stderr when they are regular files (batch jobs,
/// `srun -o FILE`), one entry per file.
pub fn output_files() -> Vec<Output> {
    let mut out: Vec<Output> = Vec::new();
    for fd in [1, 2] {
        let Ok(path) = fs::read_link(format!("/proc/self/fd/{fd}")) else {
            continue;
        };
        // metadata of the magic link: the open file itself.
        let Ok(md) = fs::metadata(format!("/proc/self/fd/{fd}")) else {
            continue;
        };
        if !md.is_file() || md.file_type().is_fifo() {
            continue;
        }
        if out.iter().all(|o| (o.dev, o.ino) != (md.dev(), md.ino())) {
            out.push(Output {
                fd,
                path,
                dev: md.dev(),
                ino: md.ino(),
            });
        }
    }
    out
}

impl Output {
    /// `(device, inode)` of the file.
    pub fn id(&self) -> (u64, u64) {
        (self.dev, self.ino)
    }

    /// The task's descriptor opened again (read, or read and write), after
    /// checking it is still the same file.
    fn reopen(&self, write: bool) -> Result<fs::File, String> {
        let f = fs::OpenOptions::new()
            .read(true)
            .write(write)
            .custom_flags(libc::O_CLOEXEC)
            .open(format!("/proc/self/fd/{}", self.fd))
            .map_err(|e| format!("cannot open it again through descriptor {}: {e}", self.fd))?;
        let md = f.metadata().map_err(|e| e.to_string())?;
        if (md.dev(), md.ino()) != (self.dev, self.ino) {
            return Err(format!(
                "descriptor {} no longer refers to the file it had at the start",
                self.fd
            ));
        }
        Ok(f)
    }
}

fn saved_name(fd: i32) -> String {
    format!("output-{fd}.saved")
}

fn len_name(fd: i32, generation: &str) -> String {
    format!("output-{fd}-{generation}.len")
}

/// Name of the file with our lines written after generation `generation`.
pub fn after_name(fd: i32, generation: &str) -> String {
    format!("output-{fd}-{generation}.after")
}

fn gen_of(g: &LoadedGeneration) -> String {
    g.path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The size the output had at the checkpoint: the largest offset of the
/// job's descriptors on it (Slurm opens output files with `O_APPEND`, so
/// each offset is the file's end after that descriptor's last write).
fn size_at_checkpoint(g: &LoadedGeneration, o: &Output) -> Option<u64> {
    let want = o.path.to_string_lossy();
    g.processes
        .iter()
        .flat_map(|m| m.fds.iter())
        .filter(|f| f.kind == FdKind::File && f.path == want)
        .map(|f| f.pos)
        .max()
}

/// Copies `n` bytes from `src` (at its position) to `dst`, feeding `crc`.
fn copy_n(src: &mut fs::File, dst: &mut fs::File, n: u64, crc: &mut Crc32c) -> Result<(), String> {
    let mut buf = vec![0u8; CHUNK];
    let mut left = n;
    while left > 0 {
        let want = usize::try_from(left).unwrap_or(CHUNK).min(CHUNK);
        let got = src.read(&mut buf[..want]).map_err(|e| e.to_string())?;
        if got == 0 {
            return Err(format!("it holds {} bytes fewer than recorded", left));
        }
        crc.update(&buf[..got]);
        dst.write_all(&buf[..got]).map_err(|e| e.to_string())?;
        left -= got as u64;
    }
    Ok(())
}

/// Reads `len` bytes at `off`.
fn read_at(f: &mut fs::File, off: u64, len: u64) -> Option<Vec<u8>> {
    let mut v = vec![0u8; usize::try_from(len).ok()?];
    f.seek(SeekFrom::Start(off)).ok()?;
    f.read_exact(&mut v).ok()?;
    Some(v)
}

/// The newest `(length, crc state)` recorded for descriptor `fd`, with the
/// copy as long as that.
fn newest_len(dir: &CheckpointDir, fd: i32) -> Option<(u64, u32)> {
    let prefix = format!("output-{fd}-gen-");
    let mut names: Vec<String> = dir
        .names()
        .ok()?
        .into_iter()
        .filter(|n| n.starts_with(&prefix) && n.ends_with(".len"))
        .collect();
    names.sort();
    read_len(dir, names.last()?)
}

fn read_len(dir: &CheckpointDir, name: &str) -> Option<(u64, u32)> {
    let mut s = String::new();
    dir.open_file(name, false)
        .ok()?
        .take(64)
        .read_to_string(&mut s)
        .ok()?;
    let (n, crc) = s.trim().split_once(' ')?;
    Some((n.parse().ok()?, u32::from_str_radix(crc, 16).ok()?))
}

fn write_small(dir: &CheckpointDir, name: &str, data: &[u8]) -> std::io::Result<()> {
    let tmp = format!(".{name}.tmp");
    let mut f = dir.create_file(&tmp, true)?;
    f.write_all(data)?;
    f.sync_all()?;
    dir.rename(&tmp, name)
}

/// After checkpoint `g`: keep the first N bytes of each output file (N =
/// its size at the checkpoint, or the end of our own line before it).
pub fn save(
    dir: &CheckpointDir,
    g: &LoadedGeneration,
    outputs: &[Output],
    said: Option<&(PathBuf, u64)>,
) -> Vec<String> {
    let mut problems = Vec::new();
    for o in outputs {
        let ours = said.filter(|(p, _)| *p == o.path).map(|(_, n)| *n);
        let Some(n) = size_at_checkpoint(g, o).max(ours) else {
            continue;
        };
        if let Err(e) = save_one(dir, o, n, &gen_of(g)) {
            problems.push(format!(
                "cannot save a copy of {} for the restart: {e}; use --open-mode=append so that \
                 Slurm keeps it on requeue",
                o.path.display()
            ));
        }
    }
    remove_saved(dir, false);
    problems
}

fn save_one(dir: &CheckpointDir, o: &Output, n: u64, generation: &str) -> Result<(), String> {
    let mut src = o.reopen(false)?;
    let saved = saved_name(o.fd);
    // What the copy holds already, if it is a prefix of the file now.
    let mut have = newest_len(dir, o.fd).filter(|&(m, _)| m <= n);
    if let Some((m, _)) = have {
        let copy = dir.open_file(&saved, true).ok();
        let same = copy.and_then(|mut c| {
            let from = m.saturating_sub(TAIL_CHECK);
            let a = read_at(&mut c, from, m - from)?;
            let b = read_at(&mut src, from, m - from)?;
            (a == b).then_some(c)
        });
        match same {
            Some(c) => {
                // Drop anything a cut-short earlier save appended.
                c.set_len(m).map_err(|e| e.to_string())?;
            }
            None => have = None,
        }
    }
    let (mut dst, mut crc, from) = match have {
        Some((m, state)) => {
            let mut c = dir.open_file(&saved, true).map_err(|e| e.to_string())?;
            c.seek(SeekFrom::End(0)).map_err(|e| e.to_string())?;
            (c, Crc32c::resume(state), m)
        }
        None => {
            // Rewritten, or the first time: a new copy replaces the old
            // one (whose .len records stop matching and are ignored).
            let c = dir.create_file(&saved, true).map_err(|e| e.to_string())?;
            (c, Crc32c::new(), 0)
        }
    };
    src.seek(SeekFrom::Start(from)).map_err(|e| e.to_string())?;
    copy_n(&mut src, &mut dst, n - from, &mut crc)?;
    dst.sync_all().map_err(|e| e.to_string())?;
    let state = crc.state();
    write_small(
        dir,
        &len_name(o.fd, generation),
        format!("{n} {state:08x}\n").as_bytes(),
    )
    .map_err(|e| e.to_string())
}

/// The record name of the output files as they were when the program
/// finished (see [`save_final`]).
const FINAL: &str = "final";

/// Keeps a copy of each output file as it is now, when the program has
/// finished: a batch job that Slurm requeues after it completed is not run
/// again, and its output files are put back ([`restore_final`]).
pub fn save_final(dir: &CheckpointDir, outputs: &[Output]) -> Vec<String> {
    let mut problems = Vec::new();
    for o in outputs {
        let n = o
            .reopen(false)
            .and_then(|f| f.metadata().map(|m| m.size()).map_err(|e| e.to_string()));
        if let Err(e) = n.and_then(|n| save_one(dir, o, n, FINAL)) {
            problems.push(format!("cannot keep a copy of {}: {e}", o.path.display()));
        }
    }
    problems
}

/// Puts back each output file as [`save_final`] kept it.
pub fn restore_final(dir: &CheckpointDir, outputs: &[Output]) -> Vec<String> {
    let mut problems = Vec::new();
    for o in outputs {
        let Some((copy, n)) = verified_copy(dir, o, FINAL) else {
            problems.push(format!(
                "{}: no intact copy of it as the job left it ({})",
                o.path.display(),
                saved_name(o.fd)
            ));
            continue;
        };
        let r = o
            .reopen(true)
            .and_then(|mut f| restore_output(&mut f, Some(copy), None, n, &saved_name(o.fd)));
        if let Err(e) = r {
            problems.push(format!("{}: {e}", o.path.display()));
        }
    }
    problems
}

/// Keeps our lines written after generation `generation` (see
/// [`after_name`]).
pub fn keep_lines_after(dir: &CheckpointDir, fd: i32, generation: &str, lines: &str) {
    if !lines.is_empty() {
        let _ = write_small(
            dir,
            &after_name(fd, generation),
            format!("{lines}\n").as_bytes(),
        );
    }
}

/// Removes the records of generations that are gone (pruned), or all.
pub fn remove_saved(dir: &CheckpointDir, all: bool) {
    let Ok(names) = dir.names() else {
        return;
    };
    for name in names {
        let Some(rest) = name.strip_prefix("output-") else {
            continue;
        };
        if all && rest.ends_with(".saved") {
            let _ = dir.remove(&name);
            continue;
        }
        let Some(rest) = rest
            .strip_suffix(".len")
            .or_else(|| rest.strip_suffix(".after"))
            .or_else(|| rest.strip_suffix(".saved"))
        else {
            continue;
        };
        let generation = rest.split_once('-').map_or("", |(_, g)| g);
        if generation.is_empty() && !all {
            continue; // output-<fd>.saved: shared by the generations
        }
        if all || !dir.has_generation(generation) {
            let _ = dir.remove(&name);
        }
    }
}

/// The file of our stderr and its size now.
pub fn stderr_end() -> Option<(PathBuf, u64)> {
    let path = fs::read_link("/proc/self/fd/2").ok()?;
    let md = fs::metadata("/proc/self/fd/2").ok()?;
    md.is_file().then_some((path, md.len()))
}

/// The saved copy of `o` at generation `g`, checked: its first `n` bytes
/// have the recorded checksum.
fn verified_copy(dir: &CheckpointDir, o: &Output, generation: &str) -> Option<(fs::File, u64)> {
    let (n, state) = read_len(dir, &len_name(o.fd, generation))?;
    let mut f = dir.open_file(&saved_name(o.fd), false).ok()?;
    let mut crc = Crc32c::new();
    let mut buf = vec![0u8; CHUNK];
    let mut left = n;
    while left > 0 {
        let want = usize::try_from(left).unwrap_or(CHUNK).min(CHUNK);
        let got = f.read(&mut buf[..want]).ok()?;
        if got == 0 {
            return None;
        }
        crc.update(&buf[..got]);
        left -= got as u64;
    }
    (crc.state() == state).then_some((f, n))
}

/// Makes each output file exactly as long as it was at the checkpoint of
/// `g`, before the resumed program writes to it again. Returns what could
/// not be done.
pub fn restore(dir: &CheckpointDir, g: &LoadedGeneration, outputs: &[Output]) -> Vec<String> {
    let generation = gen_of(g);
    let mut problems = Vec::new();
    for o in outputs {
        // The saved copy is exactly the file at the checkpoint; without
        // one, the job's own offsets tell its length.
        let copy = verified_copy(dir, o, &generation);
        let copy_ok = copy.is_some();
        let n = match &copy {
            Some((_, n)) => Some(*n),
            None => size_at_checkpoint(g, o),
        };
        let Some(n) = n else {
            continue;
        };
        let after = dir
            .open_file(&after_name(o.fd, &generation), false)
            .ok()
            .and_then(|f| {
                let mut v = Vec::new();
                f.take(OURS_MAX as u64).read_to_end(&mut v).ok().map(|_| v)
            });
        let r = o.reopen(true).and_then(|mut f| {
            restore_output(
                &mut f,
                copy.map(|(c, _)| c),
                after.as_deref(),
                n,
                &saved_name(o.fd),
            )
        });
        if let Err(e) = r {
            problems.push(format!(
                "{} may not continue exactly where it stopped: {e}",
                o.path.display()
            ));
        }
        // The copy goes on from this generation's length.
        if copy_ok && let Ok(c) = dir.open_file(&saved_name(o.fd), true) {
            let _ = c.set_len(n);
        }
    }
    problems
}

/// Our `ckpt:` lines of `f` from offset `n` on (when `n` is at the start of
/// a line), read in pieces; at most [`OURS_MAX`] bytes.
fn our_lines_from(f: &mut fs::File, n: u64) -> Result<Vec<u8>, String> {
    let at_line_start = n == 0 || read_at(f, n - 1, 1).is_some_and(|b| b == b"\n");
    if !at_line_start {
        return Ok(Vec::new());
    }
    f.seek(SeekFrom::Start(n)).map_err(|e| e.to_string())?;
    let mut ours = Vec::new();
    let mut line: Vec<u8> = Vec::new();
    let mut line_is_ours = true; // undecided until 6 bytes are seen
    let mut buf = vec![0u8; CHUNK.min(1 << 16)];
    loop {
        let got = f.read(&mut buf).map_err(|e| e.to_string())?;
        if got == 0 {
            break;
        }
        for &b in &buf[..got] {
            if line_is_ours {
                line.push(b);
                if line.len() <= 6 && !b"ckpt: ".starts_with(&line) {
                    line_is_ours = false;
                    line.clear();
                }
            }
            if b == b'\n' {
                if line_is_ours && ours.len() + line.len() <= OURS_MAX {
                    ours.extend_from_slice(&line);
                }
                line.clear();
                line_is_ours = true;
            } else if line_is_ours && line.len() > OURS_MAX {
                line_is_ours = false;
                line.clear();
            }
        }
    }
    Ok(ours)
}

/// Makes the output `f` (the task's file, open read-write) `n` bytes long:
/// a longer one is cut (our `ckpt:` lines in the cut part are kept), a
/// shorter one (truncated by Slurm) gets the saved copy's first `n` bytes
/// back, and then our lines written after the checkpoint (`after`).
fn restore_output(
    f: &mut fs::File,
    copy: Option<fs::File>,
    after: Option<&[u8]>,
    n: u64,
    copy_name: &str,
) -> Result<(), String> {
    let size = f.metadata().map_err(|e| e.to_string())?.size();
    if size > n {
        // Output written after the checkpoint: the resumed program writes it
        // again. Keep our own `ckpt:` lines from that part.
        let ours = our_lines_from(f, n)?;
        f.set_len(n)
            .map_err(|e| format!("cannot truncate it: {e}"))?;
        f.seek(SeekFrom::End(0)).map_err(|e| e.to_string())?;
        f.write_all(&ours).map_err(|e| e.to_string())?;
        return Ok(());
    }
    if size == n {
        return Ok(());
    }
    // Shorter: Slurm truncated it on requeue (--open-mode=truncate).
    let Some(mut copy) = copy else {
        return Err(format!(
            "it is shorter ({size} bytes) than at the checkpoint ({n} bytes) and no intact copy \
             was saved ({copy_name}); the output written before the checkpoint is lost — submit \
             with --open-mode=append to keep it"
        ));
    };
    // What is there must be the beginning of what the job had written.
    let mut a = vec![0u8; CHUNK];
    let mut b = vec![0u8; CHUNK];
    f.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    copy.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    let mut left = size;
    while left > 0 {
        let want = usize::try_from(left).unwrap_or(CHUNK).min(CHUNK);
        f.read_exact(&mut a[..want]).map_err(|e| e.to_string())?;
        copy.read_exact(&mut b[..want]).map_err(|e| e.to_string())?;
        if a[..want] != b[..want] {
            // Something else wrote it since; do not guess.
            return Err(format!(
                "its first {size} bytes differ from what the job had written; left as it is"
            ));
        }
        left -= want as u64;
    }
    // Append the rest of the copy (the file is O_APPEND for the job; here
    // it is open read-write: write at the end).
    f.seek(SeekFrom::End(0)).map_err(|e| e.to_string())?;
    let mut crc = Crc32c::new();
    copy_n(&mut copy, f, n - size, &mut crc)?;
    // Our own lines written after the checkpoint (Slurm cut them too).
    if let Some(after) = after {
        f.write_all(after).map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ckpt-outputs-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn rw(p: &std::path::Path) -> fs::File {
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(p)
            .unwrap()
    }

    #[test]
    fn a_truncated_output_gets_the_saved_bytes_back() {
        let d = scratch("trunc");
        let (out, saved) = (d.join("job.out"), d.join("saved"));
        fs::write(&saved, "line 1\nline 2\nmore after").unwrap();
        fs::write(&out, "").unwrap();
        let copy = || Some(fs::File::open(&saved).unwrap());
        restore_output(&mut rw(&out), copy(), None, 14, "saved").unwrap();
        assert_eq!(fs::read_to_string(&out).unwrap(), "line 1\nline 2\n");
        // Our lines written after the checkpoint come back after the copy.
        fs::write(&out, "line 1\n").unwrap();
        restore_output(
            &mut rw(&out),
            copy(),
            Some(b"ckpt: requeued\n"),
            14,
            "saved",
        )
        .unwrap();
        assert_eq!(
            fs::read_to_string(&out).unwrap(),
            "line 1\nline 2\nckpt: requeued\n"
        );
        // A file someone else rewrote is left alone, with a reason.
        fs::write(&out, "other").unwrap();
        let e = restore_output(&mut rw(&out), copy(), None, 14, "saved").unwrap_err();
        assert!(e.contains("differ"), "{e}");
        assert_eq!(fs::read_to_string(&out).unwrap(), "other");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn output_after_the_checkpoint_is_cut_but_our_lines_stay() {
        let d = scratch("long");
        let out = d.join("job.err");
        fs::write(&out, "a\nckpt: checkpointing\nb\nckpt: requeued\nckpt").unwrap();
        restore_output(&mut rw(&out), None, None, 2, "none").unwrap();
        assert_eq!(
            fs::read_to_string(&out).unwrap(),
            "a\nckpt: checkpointing\nckpt: requeued\n"
        );
        // Same length: untouched; shorter without a copy: an explanation.
        let len = fs::metadata(&out).unwrap().len();
        restore_output(&mut rw(&out), None, None, len, "none").unwrap();
        assert_eq!(fs::metadata(&out).unwrap().len(), len);
        let e = restore_output(&mut rw(&out), None, None, 1000, "none").unwrap_err();
        assert!(e.contains("--open-mode=append"), "{e}");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_huge_cut_part_is_read_in_pieces() {
        let d = scratch("huge");
        let out = d.join("job.out");
        let mut f = fs::File::create(&out).unwrap();
        f.write_all(b"kept\n").unwrap();
        // 8 MiB in one line without a newline, then one of our lines.
        f.write_all(&vec![b'x'; 8 << 20]).unwrap();
        f.write_all(b"\nckpt: note\n").unwrap();
        drop(f);
        restore_output(&mut rw(&out), None, None, 5, "none").unwrap();
        assert_eq!(fs::read_to_string(&out).unwrap(), "kept\nckpt: note\n");
        let _ = fs::remove_dir_all(&d);
    }
}
