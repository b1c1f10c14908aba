//! Allocation-free parsers for `/proc/self/{maps,stat,status}` text.
//!
//! Every function here is **async-signal-safe** (pure functions over byte
//! slices) and is unit-tested on captured text.

/// One line of `/proc/PID/maps`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapsLine<'a> {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// `r`, `w`, `x` as PROT_* bits.
    pub prot: u32,
    /// `s` (shared) rather than `p` (private).
    pub shared: bool,
    /// File offset.
    pub offset: u64,
    /// Device major.
    pub dev_major: u32,
    /// Device minor.
    pub dev_minor: u32,
    /// Inode (0 for anonymous).
    pub inode: u64,
    /// Path or pseudo-name (`[heap]`), possibly empty; may end in ` (deleted)`.
    pub path: &'a [u8],
}

/// Parse a hexadecimal number (no prefix, no spaces). **Async-signal-safe.**
pub(crate) fn hex(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 16 {
        return None;
    }
    let mut v: u64 = 0;
    for &c in s {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => return None,
        };
        v = (v << 4) | u64::from(d);
    }
    Some(v)
}

/// Parse a decimal unsigned number.
pub fn dec(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let mut v: u64 = 0;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
    }
    Some(v)
}

fn split_once(s: &[u8], sep: u8) -> Option<(&[u8], &[u8])> {
    let i = s.iter().position(|&c| c == sep)?;
    Some((s.get(..i)?, s.get(i + 1..)?))
}

fn next_field(s: &[u8]) -> Option<(&[u8], &[u8])> {
    let s = trim_start(s);
    match s.iter().position(|&c| c == b' ') {
        Some(i) => Some((s.get(..i)?, s.get(i..)?)),
        None => Some((s, &[])),
    }
}

fn trim_start(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    s
}

/// Parse one maps line (without the trailing newline).
pub fn parse_maps_line(line: &[u8]) -> Option<MapsLine<'_>> {
    let (range, rest) = next_field(line)?;
    let (a, b) = split_once(range, b'-')?;
    let (perms, rest) = next_field(rest)?;
    let (off, rest) = next_field(rest)?;
    let (dev, rest) = next_field(rest)?;
    let (ino, rest) = next_field(rest)?;
    let (maj, min) = split_once(dev, b':')?;
    let p = perms;
    if p.len() < 4 {
        return None;
    }
    let mut prot = 0;
    if p.first() == Some(&b'r') {
        prot |= libc::PROT_READ as u32;
    }
    if p.get(1) == Some(&b'w') {
        prot |= libc::PROT_WRITE as u32;
    }
    if p.get(2) == Some(&b'x') {
        prot |= libc::PROT_EXEC as u32;
    }
    Some(MapsLine {
        start: hex(a)?,
        end: hex(b)?,
        prot,
        shared: p.get(3) == Some(&b's'),
        offset: hex(off)?,
        dev_major: hex(maj)? as u32,
        dev_minor: hex(min)? as u32,
        inode: dec(ino)?,
        path: trim_start(rest),
    })
}

impl<'a> MapsLine<'a> {
    /// The parts of this mapping outside every `(start, end)` range of
    /// `own`, in address order. `own` holds libckpt's own buffers: the
    /// kernel merges an anonymous buffer with an adjacent mapping of the
    /// program that has the same flags (`MADV_DONTFORK`, say), and maps then
    /// shows one line for both. **Async-signal-safe.**
    pub fn outside(self, own: &'a [(u64, u64)]) -> impl Iterator<Item = MapsLine<'a>> + 'a {
        let mut at = self.start;
        core::iter::from_fn(move || {
            // Step over the ranges that cover `at` (they may touch).
            while let Some(&(_, e)) = own.iter().find(|&&(s, e)| s < e && s <= at && at < e) {
                at = e;
            }
            if at >= self.end {
                return None;
            }
            let end = own
                .iter()
                .filter(|&&(s, e)| s < e && s > at)
                .map(|&(s, _)| s)
                .fold(self.end, u64::min);
            let piece = MapsLine {
                start: at,
                end,
                offset: self.offset + (at - self.start),
                ..self
            };
            at = end;
            Some(piece)
        })
    }
}

/// Iterate over the lines of a text buffer.
pub fn lines(buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    buf.split(|&c| c == b'\n').filter(|l| !l.is_empty())
}

/// Field `n` (1-based, as in proc(5)) of `/proc/self/stat`, parsed as a number.
/// The command name (field 2) may contain spaces and parentheses, so parsing
/// starts after the last `)`.
pub fn stat_field(stat: &[u8], n: usize) -> Option<u64> {
    let close = stat.iter().rposition(|&c| c == b')')?;
    let rest = stat.get(close + 2..)?;
    // rest starts at field 3
    let f = rest.split(|&c| c == b' ').nth(n.checked_sub(3)?)?;
    let f = f.strip_suffix(b"\n").unwrap_or(f);
    if let Some(neg) = f.strip_prefix(b"-") {
        return dec(neg).map(|v| v.wrapping_neg());
    }
    dec(f)
}

/// The value of `Key:` in `/proc/self/status`-style text (first token).
pub fn status_value<'a>(status: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    for l in lines(status) {
        if let Some(rest) = l.strip_prefix(key)
            && let Some(rest) = rest.strip_prefix(b":")
        {
            return next_field(rest).map(|(f, _)| f);
        }
    }
    None
}

/// Parse an octal number.
pub fn oct(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let mut v: u64 = 0;
    for &c in s {
        if !(b'0'..=b'7').contains(&c) {
            return None;
        }
        v = v.checked_mul(8)?.checked_add(u64::from(c - b'0'))?;
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines() {
        let l = parse_maps_line(b"7f1c2a000000-7f1c2a022000 r--p 00000000 fe:01 1835068                    /usr/lib/x86_64-linux-gnu/libc.so.6").unwrap();
        assert_eq!(l.start, 0x7f1c2a000000);
        assert_eq!(l.end, 0x7f1c2a022000);
        assert_eq!(l.prot, libc::PROT_READ as u32);
        assert!(!l.shared);
        assert_eq!(l.dev_major, 0xfe);
        assert_eq!(l.inode, 1835068);
        assert_eq!(l.path, b"/usr/lib/x86_64-linux-gnu/libc.so.6");
        let a = parse_maps_line(b"55d0c1a00000-55d0c1a21000 rw-p 00000000 00:00 0 ").unwrap();
        assert_eq!(a.path, b"");
        let h = parse_maps_line(
            b"ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]",
        )
        .unwrap();
        assert_eq!(h.path, b"[vsyscall]");
        assert_eq!(h.prot, libc::PROT_EXEC as u32);
        let s = parse_maps_line(
            b"7f0000000000-7f0000001000 rw-s 00000000 00:01 12 /dev/zero (deleted)",
        )
        .unwrap();
        assert!(s.shared);
        assert_eq!(s.path, b"/dev/zero (deleted)");
        assert!(parse_maps_line(b"garbage").is_none());
    }

    #[test]
    fn parts_outside_own_buffers() {
        let m = parse_maps_line(b"10000-20000 rw-p 00001000 00:00 0 ").unwrap();
        let parts = |own: &[(u64, u64)]| -> Vec<(u64, u64, u64)> {
            m.outside(own).map(|p| (p.start, p.end, p.offset)).collect()
        };
        // Nothing of ours inside: the whole line.
        assert_eq!(parts(&[]), [(0x10000, 0x20000, 0x1000)]);
        assert_eq!(
            parts(&[(0x20000, 0x30000), (0, 0)]),
            [(0x10000, 0x20000, 0x1000)]
        );
        // A buffer merged below the program's mapping, one above, both.
        assert_eq!(parts(&[(0x10000, 0x14000)]), [(0x14000, 0x20000, 0x5000)]);
        assert_eq!(parts(&[(0x1c000, 0x20000)]), [(0x10000, 0x1c000, 0x1000)]);
        assert_eq!(
            parts(&[(0x1c000, 0x20000), (0x10000, 0x14000)]),
            [(0x14000, 0x1c000, 0x5000)]
        );
        // One in the middle; two that touch; one that covers the line.
        assert_eq!(
            parts(&[(0x14000, 0x18000)]),
            [(0x10000, 0x14000, 0x1000), (0x18000, 0x20000, 0x9000)]
        );
        assert_eq!(
            parts(&[(0x16000, 0x18000), (0x14000, 0x16000)]),
            [(0x10000, 0x14000, 0x1000), (0x18000, 0x20000, 0x9000)]
        );
        assert_eq!(parts(&[(0x8000, 0x28000)]), []);
    }

    #[test]
    fn stat_fields() {
        let stat = b"1234 (a b) c) S 1 1234 1234 0 -1 4194304 100 0 0 0 0 0 0 0 20 0 1 0 100 1000 10 18446744073709551615 94000 95000 140000 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0 96000 97000 98000 140001 140002 140003 140004 0\n";
        assert_eq!(stat_field(stat, 4), Some(1));
        assert_eq!(stat_field(stat, 26), Some(94000));
        assert_eq!(stat_field(stat, 28), Some(140000));
        assert_eq!(stat_field(stat, 45), Some(96000));
        assert_eq!(stat_field(stat, 51), Some(140004));
        assert_eq!(stat_field(stat, 7), Some(0));
        assert_eq!(stat_field(stat, 8), Some(u64::MAX));
    }

    #[test]
    fn status() {
        let s = b"Name:\tpython3\nUmask:\t0022\nState:\tS (sleeping)\n";
        assert_eq!(status_value(s, b"Umask"), Some(&b"0022"[..]));
        assert_eq!(oct(b"0022"), Some(0o22));
        assert_eq!(status_value(s, b"Missing"), None);
    }
}
