//! The vDSO: what the image records of it, and how a restart on another
//! kernel build sends the program's calls to the new one (docs/kernel.md,
//! "The vDSO on another kernel").
//!
//! A program's C library looks up the vDSO's functions once, at start, and
//! keeps their addresses (glibc: `clock_gettime`, `gettimeofday`, `time`,
//! `getcpu`, `clock_getres`). A restart on the same kernel build maps the
//! vDSO back at its saved address and those addresses stay right. On
//! another build the vDSO's code and layout differ, so the restart maps the
//! new vDSO elsewhere and fills the old vDSO's address range with one jump
//! per exported function, at the function's old offset, to the same
//! function of the new vDSO (CRIU does the same with its "vDSO proxy").
//! Everything else in that range traps (`int3`). A thread that was stopped
//! inside the vDSO's code (not at an entry point) would resume in the jump
//! table: such a restart is refused, naming the thread.
//!
//! - capture ([`for_each_function`], async-signal-safe): the exported
//!   functions and their offsets, from the vDSO's own ELF symbol table;
//! - restore ([`jump_table`]): the bytes of the old range;
//! - round trip: the table built for this process's own vDSO, executed.

use crate::image::manifest::VdsoInfo;

/// Most functions recorded (the x86-64 vDSO exports 6 functions, each
/// also under a `__vdso_` name).
pub const MAX_SYMBOLS: usize = 32;

/// Longest function name recorded.
pub const MAX_NAME: usize = 40;

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}

/// Calls `f(name, offset)` for each function the vDSO image `elf` exports
/// (defined, global or weak, with a plain identifier for a name); the
/// offset is from the image's start. **Async-signal-safe**: no allocation.
/// `None` when `elf` is not a 64-bit little-endian ELF image whose tables
/// lie inside it.
pub fn for_each_function(elf: &[u8], mut f: impl FnMut(&[u8], u64)) -> Option<()> {
    if elf.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    // Offsets are taken from the lowest loadable segment's address (the
    // x86-64 vDSO is linked at 0).
    let phoff = u64_at(elf, 0x20)? as usize;
    let phentsize = u16_at(elf, 0x36)? as usize;
    let phnum = u16_at(elf, 0x38)? as usize;
    let mut base = u64::MAX;
    for i in 0..phnum {
        let p = phoff.checked_add(i.checked_mul(phentsize)?)?;
        if u32_at(elf, p)? == 1 {
            base = base.min(u64_at(elf, p + 0x10)?);
        }
    }
    if base == u64::MAX {
        return None;
    }
    let shoff = u64_at(elf, 0x28)? as usize;
    let shentsize = u16_at(elf, 0x3a)? as usize;
    let shnum = u16_at(elf, 0x3c)? as usize;
    let section = |i: usize| shoff.checked_add(i.checked_mul(shentsize)?);
    for i in 0..shnum {
        let s = section(i)?;
        if u32_at(elf, s + 4)? != 11 {
            continue; // not SHT_DYNSYM
        }
        let (off, size, link, entsize) = (
            u64_at(elf, s + 0x18)? as usize,
            u64_at(elf, s + 0x20)? as usize,
            u32_at(elf, s + 0x28)? as usize,
            u64_at(elf, s + 0x38)? as usize,
        );
        let strs = section(link)?;
        let (str_off, str_size) = (
            u64_at(elf, strs + 0x18)? as usize,
            u64_at(elf, strs + 0x20)? as usize,
        );
        let strtab = elf.get(str_off..str_off.checked_add(str_size)?)?;
        if entsize < 24 {
            return None;
        }
        for k in 1..size / entsize {
            let e = off.checked_add(k * entsize)?;
            let name = u32_at(elf, e)? as usize;
            let info = *elf.get(e + 4)?;
            let shndx = u16_at(elf, e + 6)?;
            let value = u64_at(elf, e + 8)?;
            let (bind, kind) = (info >> 4, info & 0xf);
            if kind != 2 || !(bind == 1 || bind == 2) || shndx == 0 || value < base {
                continue;
            }
            let rest = strtab.get(name..)?;
            let n = rest.iter().position(|&c| c == 0)?;
            let nm = rest.get(..n)?;
            if nm.is_empty()
                || nm.len() > MAX_NAME
                || !nm.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
            {
                continue;
            }
            f(nm, value - base);
        }
        return Some(());
    }
    None
}

/// The exported functions of a vDSO image, as the manifest records them.
pub fn functions(elf: &[u8]) -> Option<Vec<(String, u64)>> {
    let mut v = Vec::new();
    for_each_function(elf, |n, o| {
        v.push((String::from_utf8_lossy(n).into_owned(), o));
    })?;
    Some(v)
}

/// Why a restart cannot send the old vDSO's functions to the new one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedirectError {
    /// The image predates recording the vDSO's functions.
    NotRecorded,
    /// A function the program may call is missing from this kernel's vDSO.
    Missing(String),
    /// Two entry points too close for a jump that reaches the new vDSO.
    TooClose(u64, u64),
    /// A thread's saved instruction pointer is inside the old vDSO.
    ThreadInside(i32),
}

impl core::fmt::Display for RedirectError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RedirectError::NotRecorded => write!(
                f,
                "the image does not list the vDSO's functions (written by an older ckpt)"
            ),
            RedirectError::Missing(n) => write!(
                f,
                "this kernel's vDSO has no {n} (the program's C library may call it)"
            ),
            RedirectError::TooClose(a, b) => write!(
                f,
                "the vDSO functions at offsets {a:#x} and {b:#x} are too close for a jump"
            ),
            RedirectError::ThreadInside(t) => {
                write!(f, "thread {t} was stopped inside the vDSO's code")
            }
        }
    }
}

impl std::error::Error for RedirectError {}

#[derive(Clone, Copy)]
enum Target {
    /// The same function in the new vDSO.
    Jump(u64),
    /// Nothing: the entry traps (`int3`).
    Trap,
    /// The system call that does what the function does, with the same
    /// arguments in the same registers and the same return convention
    /// (negative errno), for a function the new vDSO lacks.
    Syscall(u32),
}

/// A function only SGX enclave runtimes call (6.1's vDSO has
/// `__vdso_sgx_enter_enclave`, later builds without SGX support do not): an
/// enclave is bound to the CPU it was built on and never moves with a
/// checkpoint, so its entry is left to trap rather than refuse every
/// program the restart could carry.
fn only_for_enclaves(name: &str) -> bool {
    name.starts_with("__vdso_sgx_")
}

/// The x86-64 system call a vDSO function stands for.
fn syscall_of(name: &str) -> Option<u32> {
    Some(match name.strip_prefix("__vdso_").unwrap_or(name) {
        "clock_gettime" => 228,
        "gettimeofday" => 96,
        "time" => 201,
        "getcpu" => 309,
        "clock_getres" => 229,
        "getrandom" => 318,
        _ => return None,
    })
}

/// `jmp rel32` (5 bytes) when the target is reachable, else
/// `jmp [rip+0]` followed by the 8-byte target (14 bytes; no register is
/// touched).
fn jump(from: u64, to: u64) -> Vec<u8> {
    let rel = to as i128 - (from as i128 + 5);
    if let Ok(r) = i32::try_from(rel) {
        let mut v = vec![0xe9];
        v.extend_from_slice(&r.to_le_bytes());
        v
    } else {
        let mut v = vec![0xff, 0x25, 0, 0, 0, 0];
        v.extend_from_slice(&to.to_le_bytes());
        v
    }
}

/// The contents of the old vDSO's range `[old.vdso, old.vdso + len)`: at
/// each function's old offset a jump to the same function in the new vDSO
/// mapped at `new_vdso` with functions `new` (a function the new vDSO lacks
/// makes its system call instead: `getrandom` is in 6.11's vDSO, not in
/// 6.1's); `int3` everywhere else.
/// `rips` are the saved instruction pointers of the process's threads
/// (tid, rip): one inside the old range but not at an entry point refuses.
pub fn jump_table(
    old: &VdsoInfo,
    new_vdso: u64,
    new: &[(String, u64)],
    rips: &[(i32, u64)],
) -> Result<Vec<u8>, RedirectError> {
    if old.symbols.is_empty() {
        return Err(RedirectError::NotRecorded);
    }
    // One entry per old offset (a function and its aliases): where it goes.
    let mut entries: Vec<(u64, Target)> = Vec::new();
    for (_, off) in &old.symbols {
        if entries.iter().any(|e| e.0 == *off) {
            continue;
        }
        let names = || old.symbols.iter().filter(|(_, o)| o == off).map(|(n, _)| n);
        let target = names()
            .find_map(|name| new.iter().find(|(n, _)| n == name))
            .map(|(_, o)| Target::Jump(new_vdso + o))
            .or_else(|| names().find_map(|n| syscall_of(n)).map(Target::Syscall))
            .or_else(|| {
                names()
                    .any(|n| only_for_enclaves(n))
                    .then_some(Target::Trap)
            })
            .ok_or_else(|| RedirectError::Missing(names().next().cloned().unwrap_or_default()))?;
        entries.push((*off, target));
    }
    entries.sort_unstable_by_key(|e| e.0);
    let len = old.vdso_len as usize;
    let mut out = vec![0xccu8; len];
    for (i, &(off, target)) in entries.iter().enumerate() {
        let code = match target {
            Target::Jump(to) => jump(old.vdso + off, to),
            Target::Trap => Vec::new(),
            Target::Syscall(nr) => {
                // mov eax, nr; syscall; ret
                let mut v = vec![0xb8];
                v.extend_from_slice(&nr.to_le_bytes());
                v.extend_from_slice(&[0x0f, 0x05, 0xc3]);
                v
            }
        };
        let room = entries.get(i + 1).map_or(len as u64, |n| n.0) - off;
        if (code.len() as u64) > room {
            let next = entries.get(i + 1).map_or(len as u64, |n| n.0);
            return Err(RedirectError::TooClose(off, next));
        }
        let at = off as usize;
        out.get_mut(at..at + code.len())
            .ok_or(RedirectError::TooClose(off, len as u64))?
            .copy_from_slice(&code);
    }
    for &(tid, rip) in rips {
        if rip >= old.vdso
            && rip < old.vdso + old.vdso_len
            && !entries.iter().any(|e| old.vdso + e.0 == rip)
        {
            return Err(RedirectError::ThreadInside(tid));
        }
    }
    Ok(out)
}

/// This process's own vDSO: (start, bytes).
pub fn own() -> Option<(u64, &'static [u8])> {
    // SAFETY: getauxval has no preconditions.
    let start = unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) };
    if start == 0 {
        return None;
    }
    let maps = std::fs::read("/proc/self/maps").ok()?;
    let m = crate::signal_safe::procfs::lines(&maps)
        .filter_map(crate::signal_safe::procfs::parse_maps_line)
        .find(|m| m.path == b"[vdso]" && m.start == start)?;
    // SAFETY: the vDSO stays mapped readable for the life of the process.
    let bytes =
        unsafe { core::slice::from_raw_parts(m.start as *const u8, (m.end - m.start) as usize) };
    Some((m.start, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(vdso: u64, len: u64, symbols: &[(&str, u64)]) -> VdsoInfo {
        VdsoInfo {
            vvar: vdso - 0x4000,
            vdso,
            vdso_len: len,
            crc: 0,
            symbols: symbols
                .iter()
                .map(|(n, o)| ((*n).to_string(), *o))
                .collect(),
        }
    }

    #[test]
    fn this_vdso_exports_the_time_functions() {
        let (_, elf) = own().expect("a vDSO");
        let f = functions(elf).expect("its symbol table");
        for name in ["__vdso_clock_gettime", "__vdso_gettimeofday", "__vdso_time"] {
            assert!(f.iter().any(|(n, _)| n == name), "{f:?}");
        }
        assert!(f.len() <= MAX_SYMBOLS, "{f:?}");
        assert!(f.iter().all(|(_, o)| (*o as usize) < elf.len()));
        assert!(functions(&elf[..100]).is_none());
        assert!(functions(b"not an elf at all").is_none());
    }

    /// The round trip: a jump table for an "old" vDSO laid out differently
    /// (the functions at other offsets), aimed at this process's vDSO,
    /// executed: `clock_gettime` through it answers like the real one.
    #[test]
    fn calls_through_the_jump_table_reach_the_new_vdso() {
        let (start, elf) = own().expect("a vDSO");
        // As on a kernel whose vDSO has no getrandom (before 6.11).
        let new: Vec<_> = functions(elf)
            .expect("symbols")
            .into_iter()
            .filter(|(n, _)| !n.ends_with("getrandom"))
            .collect();
        let len = 0x2000u64;
        // SAFETY: a fresh private anonymous mapping.
        let at = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(at, libc::MAP_FAILED);
        let base = at as u64;
        let old = info(
            base,
            len,
            &[
                ("__vdso_clock_gettime", 0x100),
                ("clock_gettime", 0x100),
                ("__vdso_time", 0x180),
                ("__vdso_getrandom", 0x200),
            ],
        );
        let table = jump_table(&old, start, &new, &[(7, base + 0x100)]).expect("a table");
        assert_eq!(table.len(), len as usize);
        assert_eq!(table[0], 0xcc);
        assert_eq!(table[0x1ff], 0xcc);
        // SAFETY: writing our own mapping, then making it executable.
        unsafe {
            core::ptr::copy_nonoverlapping(table.as_ptr(), at.cast::<u8>(), table.len());
            assert_eq!(
                libc::mprotect(at, len as usize, libc::PROT_READ | libc::PROT_EXEC),
                0
            );
        }
        type ClockGettime = unsafe extern "C" fn(libc::clockid_t, *mut libc::timespec) -> i32;
        type Time = unsafe extern "C" fn(*mut libc::time_t) -> libc::time_t;
        // SAFETY: the table's entries jump to the vDSO's functions of these types.
        let (cg, tm) = unsafe {
            (
                core::mem::transmute::<u64, ClockGettime>(base + 0x100),
                core::mem::transmute::<u64, Time>(base + 0x180),
            )
        };
        let mut via = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let mut direct = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid timespec pointers.
        unsafe {
            assert_eq!(cg(libc::CLOCK_REALTIME, &mut via), 0);
            libc::clock_gettime(libc::CLOCK_REALTIME, &mut direct);
        }
        assert!(
            (direct.tv_sec - via.tv_sec).abs() <= 1,
            "{} {}",
            direct.tv_sec,
            via.tv_sec
        );
        // SAFETY: a null pointer is allowed by time().
        let t = unsafe { tm(core::ptr::null_mut()) };
        assert!((t - direct.tv_sec).abs() <= 1);
        // A function this vDSO lacks, made a system call.
        type GetRandom = unsafe extern "C" fn(*mut u8, usize, u32) -> isize;
        // SAFETY: the entry is `mov eax, SYS_getrandom; syscall; ret`.
        let gr = unsafe { core::mem::transmute::<u64, GetRandom>(base + 0x200) };
        let mut buf = [0u8; 64];
        // SAFETY: a valid buffer of that length.
        assert_eq!(unsafe { gr(buf.as_mut_ptr(), buf.len(), 0) }, 64);
        assert!(buf.iter().any(|&b| b != 0));
        // SAFETY: unmapping what we mapped.
        unsafe { libc::munmap(at, len as usize) };
    }

    #[test]
    fn refusals_name_what_is_wrong() {
        let new = vec![("__vdso_time".to_string(), 0x40u64)];
        let old = info(0x7000_0000, 0x1000, &[("__vdso_frobnicate", 0x10)]);
        assert_eq!(
            jump_table(&old, 0x7100_0000, &new, &[]),
            Err(RedirectError::Missing("__vdso_frobnicate".into()))
        );
        // The enclave entry of 6.1's vDSO traps.
        let old = info(0x7000_0000, 0x1000, &[("__vdso_sgx_enter_enclave", 0x10)]);
        let t = jump_table(&old, 0x7100_0000, &new, &[]).expect("a table");
        assert!(t.iter().all(|&b| b == 0xcc));
        // A function with a system call of its own is emulated.
        let old = info(
            0x7000_0000,
            0x1000,
            &[("__vdso_getrandom", 0x10), ("getrandom", 0x10)],
        );
        let t = jump_table(&old, 0x7100_0000, &new, &[]).expect("a table");
        assert_eq!(&t[0x10..0x18], &[0xb8, 62, 1, 0, 0, 0x0f, 0x05, 0xc3]);
        assert_eq!(
            jump_table(&info(0x7000_0000, 0x1000, &[]), 0x7100_0000, &new, &[]),
            Err(RedirectError::NotRecorded)
        );
        let both = vec![("a".to_string(), 0x40u64), ("b".to_string(), 0x80)];
        // Far away: 14-byte jumps, which do not fit 8 bytes apart.
        let close = info(0x7000_0000, 0x1000, &[("a", 0x10), ("b", 0x18)]);
        assert_eq!(
            jump_table(&close, 0x7000_0000_0000, &both, &[]),
            Err(RedirectError::TooClose(0x10, 0x18))
        );
        // Near: 5-byte jumps fit.
        assert!(jump_table(&close, 0x7100_0000, &both, &[]).is_ok());
        // A thread stopped inside a function, not at its entry.
        let one = info(0x7000_0000, 0x1000, &[("a", 0x10)]);
        assert_eq!(
            jump_table(&one, 0x7100_0000, &both, &[(5, 0x7000_0020)]),
            Err(RedirectError::ThreadInside(5))
        );
        assert!(jump_table(&one, 0x7100_0000, &both, &[(5, 0x7000_0010), (6, 0x1234)]).is_ok());
    }

    #[test]
    fn jumps_encode_their_target() {
        let near = jump(0x1000, 0x2000);
        assert_eq!(near[0], 0xe9);
        assert_eq!(
            i32::from_le_bytes(near[1..5].try_into().unwrap()),
            0x2000 - 0x1005
        );
        let far = jump(0x1000, 0x7000_0000_0000);
        assert_eq!(&far[..6], &[0xff, 0x25, 0, 0, 0, 0]);
        assert_eq!(
            u64::from_le_bytes(far[6..].try_into().unwrap()),
            0x7000_0000_0000
        );
    }
}
