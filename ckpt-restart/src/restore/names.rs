//! Paths in manifests: the writer escapes every non-ASCII byte as `\u00XX`,
//! so each char of the decoded string is one byte of the original path.

/// The original bytes of a manifest path.
pub fn name_bytes(s: &str) -> Vec<u8> {
    s.chars()
        .map(|c| {
            if (c as u32) < 256 {
                c as u32 as u8
            } else {
                b'?'
            }
        })
        .collect()
}

/// A manifest name for `bytes` (the inverse of [`name_bytes`]).
pub fn encode_name(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| b as char).collect()
}

/// The batch script the generation was checkpointed with, when it is not
/// `current` but the same job's script under another directory: the job
/// resumes on a node whose slurmd spool directory differs
/// (`SlurmdSpoolDir=/var/spool/slurmd.%n`). Every descriptor of it (bash
/// reads its script through one) then refers to `current`, whose content
/// is the same: slurmd writes the job's script again on every start.
/// Returns the old path when something was changed.
pub fn follow_moved_script(
    g: &mut ckpt::image::generation::LoadedGeneration,
    current: &std::path::Path,
) -> Option<String> {
    use std::os::unix::ffi::OsStrExt;
    let name = current.file_name()?;
    let parent = current.parent()?.file_name()?;
    let new = encode_name(current.as_os_str().as_bytes());
    let old = g
        .record
        .command
        .iter()
        .find(|c| {
            let p = std::path::PathBuf::from(std::ffi::OsStr::from_bytes(&name_bytes(c)));
            **c != new
                && p.file_name() == Some(name)
                && p.parent().and_then(|d| d.file_name()) == Some(parent)
        })?
        .clone();
    if !current.is_file() {
        return None;
    }
    let mut changed = false;
    let fds = g
        .processes
        .iter_mut()
        .flat_map(|m| m.fds.iter_mut())
        .chain(g.record.relaunch.iter_mut().flat_map(|r| r.fds.iter_mut()));
    for f in fds {
        if f.path == old {
            f.path = new.clone();
            changed = true;
        }
    }
    for c in g.record.command.iter_mut().filter(|c| **c == old) {
        *c = new.clone();
    }
    changed.then_some(old)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_moved_batch_script_is_followed() {
        use ckpt::image::manifest::{Fd, FdKind, GenerationRecord, Relaunch};
        let base = std::env::temp_dir().join(format!("ckpt-moved-{}", std::process::id()));
        let now = base.join("n2/job00005/slurm_script");
        std::fs::create_dir_all(now.parent().unwrap()).unwrap();
        std::fs::write(&now, "#!/bin/bash\n").unwrap();
        let old = base.join("n1/job00005/slurm_script").display().to_string();
        let record: GenerationRecord = serde_json::from_value(serde_json::json!({
            "format": "ckpt-generation", "version": [1, 0], "number": 1, "created_unix": 0,
            "uid": 0, "command": ["ckpt", "slurm-exec", "--", old], "processes": [],
            "pause_us": 0, "bytes": 0, "tool_version": "x"
        }))
        .unwrap();
        let fd = |path: &str| Fd {
            fd: 255,
            kind: FdKind::File,
            path: path.into(),
            flags: 0,
            pos: 10,
            cloexec: true,
            termios: vec![],
            dev: 0,
            inode: 0,
            pipe_data: None,
            pipe_crc: None,
            object: None,
            socket: None,
            inet: None,
            pty: None,
        };
        let r = Relaunch {
            pid: 2,
            ppid: 1,
            pgid: 0,
            sid: 0,
            exe: "/bin/bash".into(),
            argv: vec![],
            env: vec![],
            cwd: "/".into(),
            umask: 0,
            fds: vec![fd(&old), fd("/etc/passwd")],
            step: None,
        };
        let mut g = ckpt::image::generation::LoadedGeneration {
            path: base.clone(),
            record,
            processes: vec![crate::relaunch::placeholder(&r)],
            bases: vec![],
        };
        assert_eq!(follow_moved_script(&mut g, &now), Some(old.clone()));
        let paths: Vec<&str> = g.processes[0].fds.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, [now.display().to_string().as_str(), "/etc/passwd"]);
        // Another job's script, or a missing one: nothing changes.
        assert_eq!(
            follow_moved_script(&mut g, &base.join("n2/job00006/slurm_script")),
            None
        );
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn bytes_round_trip() {
        let raw = b"/tmp/caf\xc3\xa9 \"x\"";
        let mut b = ckpt::signal_safe::buf::MmapBuf::new();
        b.push_json_str(raw).unwrap();
        let s: String = serde_json::from_slice(b.as_slice()).unwrap();
        assert_eq!(name_bytes(&s), raw.to_vec());
    }
}
