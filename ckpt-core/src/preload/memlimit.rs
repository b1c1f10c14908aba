//! How much memory the job's cgroup still allows (v1 `memory` controller
//! or v2 unified), to decide whether a copy-on-write snapshot is safe.
//! **Async-signal-safe** (raw syscalls, stack buffers).

use crate::signal_safe::buf::StackBuf;
use crate::signal_safe::procfs;
use crate::signal_safe::raw;

fn read_small(path: &[u8], out: &mut [u8]) -> Option<usize> {
    let fd = raw::open(path, libc::O_RDONLY | libc::O_CLOEXEC, 0).ok()?;
    let n = raw::read_into(fd, out).ok();
    raw::close(fd);
    n
}

/// The number file `dir``file` holds (a sysctl, a cgroup limit); `None`
/// when it cannot be read or is not a number. **Async-signal-safe.**
pub(super) fn number_at(dir: &[u8], file: &[u8]) -> Option<u64> {
    let mut p = StackBuf::<1024>::new();
    p.push(dir);
    p.push(file);
    let mut b = [0u8; 64];
    let n = read_small(p.as_cstr(), &mut b)?;
    let t = b.get(..n)?;
    let t = t.strip_suffix(b"\n").unwrap_or(t);
    procfs::dec(t) // "max" (v2, unlimited) parses as None
}

/// A value of `memory.stat` (page cache the kernel reclaims before it
/// would kill anything does not count as used). 0 when unknown.
fn stat_value(dir: &[u8], key: &[u8]) -> u64 {
    let mut p = StackBuf::<1024>::new();
    p.push(dir);
    p.push(b"/memory.stat");
    let mut b = [0u8; 4096];
    let Some(n) = read_small(p.as_cstr(), &mut b) else {
        return 0;
    };
    for line in procfs::lines(b.get(..n).unwrap_or(&[])) {
        if let Some(v) = line.strip_prefix(key).and_then(|r| r.strip_prefix(b" ")) {
            return procfs::dec(v).unwrap_or(0);
        }
    }
    0
}

/// Bytes the cgroup may still grow by, or `None` when there is no limit
/// (or it cannot be read).
pub fn headroom() -> Option<u64> {
    let mut cg = [0u8; 4096];
    let n = read_small(b"/proc/self/cgroup\0", &mut cg)?;
    for line in procfs::lines(cg.get(..n)?) {
        let mut parts = line.splitn(3, |&c| c == b':');
        let _id = parts.next();
        let ctrl = parts.next()?;
        let path = parts.next()?;
        let mut dir = StackBuf::<1024>::new();
        if ctrl.split(|&c| c == b',').any(|c| c == b"memory") {
            dir.push(b"/sys/fs/cgroup/memory");
            dir.push(path);
            let limit = number_at(dir.as_bytes(), b"/memory.limit_in_bytes")?;
            let usage = number_at(dir.as_bytes(), b"/memory.usage_in_bytes")?;
            let cache = stat_value(dir.as_bytes(), b"total_inactive_file");
            return Some(limit.saturating_sub(usage.saturating_sub(cache)));
        }
        if ctrl.is_empty() {
            dir.push(b"/sys/fs/cgroup");
            dir.push(path);
            if let (Some(limit), Some(usage)) = (
                number_at(dir.as_bytes(), b"/memory.max"),
                number_at(dir.as_bytes(), b"/memory.current"),
            ) {
                let cache = stat_value(dir.as_bytes(), b"inactive_file");
                return Some(limit.saturating_sub(usage.saturating_sub(cache)));
            }
        }
    }
    None
}
