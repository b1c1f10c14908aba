//! Raw Linux x86_64 system calls.
//!
//! Every function here is **async-signal-safe**: it issues the `syscall`
//! instruction directly, never touches `errno`, never allocates and never
//! takes a lock. Errors come back as [`Errno`] values.

use core::arch::asm;

/// A kernel error number (positive), as returned by a failed system call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    /// The raw error number.
    pub const fn raw(self) -> i32 {
        self.0
    }
}

/// Result of a raw system call.
pub type SysResult = Result<usize, Errno>;

#[inline]
fn check(ret: isize) -> SysResult {
    if (-4095..0).contains(&ret) {
        Err(Errno((-ret) as i32))
    } else {
        Ok(ret as usize)
    }
}

/// Issue system call `nr` with up to six arguments.
///
/// # Safety
/// The caller must uphold the contract of the specific system call: pointer
/// arguments must be valid for the access the kernel performs.
#[inline]
pub unsafe fn syscall6(
    nr: usize,
    a: usize,
    b: usize,
    c: usize,
    d: usize,
    e: usize,
    f: usize,
) -> SysResult {
    let ret: isize;
    // SAFETY: the `syscall` instruction clobbers rcx and r11 and returns in
    // rax; all of that is declared. Memory effects are the caller's contract.
    unsafe {
        asm!("syscall",
            inlateout("rax") nr as isize => ret,
            in("rdi") a, in("rsi") b, in("rdx") c, in("r10") d, in("r8") e, in("r9") f,
            lateout("rcx") _, lateout("r11") _,
            options(nostack));
    }
    check(ret)
}

/// # Safety
/// See [`syscall6`].
#[inline]
pub unsafe fn syscall3(nr: usize, a: usize, b: usize, c: usize) -> SysResult {
    // SAFETY: forwarded contract.
    unsafe { syscall6(nr, a, b, c, 0, 0, 0) }
}

macro_rules! nr {
    ($($name:ident = $v:expr),* $(,)?) => { $(#[allow(missing_docs)] pub const $name: usize = $v;)* };
}
/// System call numbers (x86_64).
pub mod nr {
    nr!(
        READ = 0,
        WRITE = 1,
        OPEN = 2,
        CLOSE = 3,
        FSTAT = 5,
        LSEEK = 8,
        MMAP = 9,
        MPROTECT = 10,
        MUNMAP = 11,
        BRK = 12,
        RT_SIGACTION = 13,
        RT_SIGPROCMASK = 14,
        IOCTL = 16,
        PREAD64 = 17,
        PWRITE64 = 18,
        WRITEV = 20,
        MREMAP = 25,
        MADVISE = 28,
        GETPID = 39,
        SOCKET = 41,
        CONNECT = 42,
        SENDTO = 44,
        RECVFROM = 45,
        SHUTDOWN = 48,
        EXIT = 60,
        UMASK = 95,
        GETRLIMIT = 97,
        GETPPID = 110,
        GETPGID = 121,
        GETSID = 124,
        CAPSET = 126,
        SIGALTSTACK = 131,
        PRCTL = 157,
        ARCH_PRCTL = 158,
        FSYNC = 74,
        FDATASYNC = 75,
        GETTID = 186,
        FUTEX = 202,
        GETDENTS64 = 217,
        SET_TID_ADDRESS = 218,
        CLOCK_GETTIME = 228,
        EXIT_GROUP = 231,
        TGKILL = 234,
        OPENAT = 257,
        MKDIRAT = 258,
        READLINKAT = 267,
        PPOLL = 271,
        SET_ROBUST_LIST = 273,
        GET_ROBUST_LIST = 274,
        PRLIMIT64 = 302,
        GETCPU = 309,
        RSEQ = 334,
        CLONE3 = 435,
        CLONE = 56,
        FLOCK = 73,
        FADVISE64 = 221,
        RT_SIGRETURN = 15,
        GETITIMER = 36,
        SETITIMER = 38,
        CLOCK_NANOSLEEP = 230,
        FCNTL = 72
    );
}

/// `read(2)`.
///
/// # Safety
/// `buf` must be valid for `len` bytes of writes.
#[inline]
pub unsafe fn read(fd: i32, buf: *mut u8, len: usize) -> SysResult {
    // SAFETY: caller guarantees buf/len.
    unsafe { syscall3(nr::READ, fd as usize, buf as usize, len) }
}

/// Read into a slice.
#[inline]
pub fn read_into(fd: i32, buf: &mut [u8]) -> SysResult {
    // SAFETY: the slice is valid for its length.
    unsafe { read(fd, buf.as_mut_ptr(), buf.len()) }
}

/// `recv(2)` into a slice (`recvfrom` without an address), retried when a
/// signal interrupts it.
pub fn recv(fd: i32, buf: &mut [u8], flags: i32) -> SysResult {
    loop {
        // SAFETY: the slice is valid for writes of its length; no address.
        match unsafe {
            syscall6(
                nr::RECVFROM,
                fd as usize,
                buf.as_mut_ptr() as usize,
                buf.len(),
                flags as usize,
                0,
                0,
            )
        } {
            Err(Errno(libc::EINTR)) => continue,
            r => return r,
        }
    }
}

/// `write(2)` of a slice.
#[inline]
pub fn write(fd: i32, buf: &[u8]) -> SysResult {
    // SAFETY: the slice is valid for reads of its length.
    unsafe { syscall3(nr::WRITE, fd as usize, buf.as_ptr() as usize, buf.len()) }
}

/// `write(2)` from a raw address range of this process.
///
/// # Safety
/// `[addr, addr+len)` must be mapped readable (the kernel returns EFAULT
/// otherwise, so a violation is an error, not undefined behaviour, but the
/// caller must not pass addresses that alias memory being mutated).
#[inline]
pub unsafe fn write_raw(fd: i32, addr: usize, len: usize) -> SysResult {
    // SAFETY: forwarded.
    unsafe { syscall3(nr::WRITE, fd as usize, addr, len) }
}

/// Write all of `buf`, retrying short writes and EINTR.
pub fn write_all(fd: i32, mut buf: &[u8]) -> Result<(), Errno> {
    while !buf.is_empty() {
        match write(fd, buf) {
            Ok(0) => return Err(Errno(libc::EIO)),
            Ok(n) => buf = buf.get(n..).unwrap_or(&[]),
            Err(Errno(libc::EINTR)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `pwrite64(2)` of a slice.
pub fn pwrite(fd: i32, buf: &[u8], off: u64) -> SysResult {
    // SAFETY: the slice is valid for reads of its length.
    unsafe {
        syscall6(
            nr::PWRITE64,
            fd as usize,
            buf.as_ptr() as usize,
            buf.len(),
            off as usize,
            0,
            0,
        )
    }
}

/// `openat(AT_FDCWD, path, flags, mode)`; `path` must be NUL-terminated.
pub fn open(path: &[u8], flags: i32, mode: u32) -> Result<i32, Errno> {
    if path.last() != Some(&0) {
        return Err(Errno(libc::EINVAL));
    }
    // SAFETY: path is a NUL-terminated byte string that outlives the call.
    unsafe {
        syscall6(
            nr::OPENAT,
            libc::AT_FDCWD as usize,
            path.as_ptr() as usize,
            flags as usize,
            mode as usize,
            0,
            0,
        )
    }
    .map(|fd| fd as i32)
}

/// `posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED)`: drop the file's clean
/// pages from the page cache (an image, once durable, is not read again by
/// the job; docs/image-format.md, "Page cache").
pub fn drop_cached(fd: i32) {
    // SAFETY: fadvise64 takes no pointers.
    let _ = unsafe { syscall6(nr::FADVISE64, fd as usize, 0, 0, 4, 0, 0) };
}

/// `sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE)`: start writeback of
/// the file's dirty pages not under writeback yet, without waiting for it
/// (an image's writer, so that the disk works while it goes on;
/// docs/image-format.md, "Writing private memory"). It can wait for the
/// device's queue: not for use while the job stands still.
pub fn start_writeback(fd: i32) {
    // SAFETY: sync_file_range (277) takes no pointers; flag 2 is
    // SYNC_FILE_RANGE_WRITE.
    let _ = unsafe { syscall6(277, fd as usize, 0, 0, 2, 0, 0) };
}

/// Bytes an image's writer writes between two [`start_writeback`] calls.
pub const WRITEBACK_EVERY: u64 = 8 << 20;

/// `close(2)`.
pub fn close(fd: i32) {
    // SAFETY: closing an fd has no memory-safety contract.
    let _ = unsafe { syscall3(nr::CLOSE, fd as usize, 0, 0) };
}

/// `fsync(2)`.
pub fn fsync(fd: i32) -> Result<(), Errno> {
    // SAFETY: no pointers.
    unsafe { syscall3(nr::FSYNC, fd as usize, 0, 0) }.map(|_| ())
}

/// `readlinkat(AT_FDCWD, path, buf)`; returns the length written.
pub fn readlink(path: &[u8], buf: &mut [u8]) -> SysResult {
    if path.last() != Some(&0) {
        return Err(Errno(libc::EINVAL));
    }
    // SAFETY: NUL-terminated path; buf valid for its length.
    unsafe {
        syscall6(
            nr::READLINKAT,
            libc::AT_FDCWD as usize,
            path.as_ptr() as usize,
            buf.as_mut_ptr() as usize,
            buf.len(),
            0,
            0,
        )
    }
}

/// `fstat(2)`.
pub fn fstat(fd: i32, st: &mut libc::stat) -> Result<(), Errno> {
    // SAFETY: st is a valid, writable stat buffer.
    unsafe { syscall3(nr::FSTAT, fd as usize, st as *mut libc::stat as usize, 0) }.map(|_| ())
}

/// `getpid(2)`.
pub fn getpid() -> i32 {
    // SAFETY: no arguments.
    unsafe { syscall3(nr::GETPID, 0, 0, 0) }.map_or(0, |v| v as i32)
}

/// `gettid(2)`.
pub fn gettid() -> i32 {
    // SAFETY: no arguments.
    unsafe { syscall3(nr::GETTID, 0, 0, 0) }.map_or(0, |v| v as i32)
}

/// `tgkill(2)`.
pub fn tgkill(tgid: i32, tid: i32, sig: i32) -> Result<(), Errno> {
    // SAFETY: no pointers.
    unsafe { syscall3(nr::TGKILL, tgid as usize, tid as usize, sig as usize) }.map(|_| ())
}

/// Anonymous private read/write mapping of `len` bytes.
pub fn mmap_anon(len: usize) -> Result<*mut u8, Errno> {
    mmap_anon_flags(len, libc::MAP_PRIVATE)
}

/// Anonymous **shared** read/write mapping of `len` bytes: a `fork` child
/// writes into the same memory as its parent.
pub fn mmap_shared_anon(len: usize) -> Result<*mut u8, Errno> {
    mmap_anon_flags(len, libc::MAP_SHARED)
}

fn mmap_anon_flags(len: usize, kind: i32) -> Result<*mut u8, Errno> {
    // SAFETY: a fresh anonymous mapping at a kernel-chosen address cannot
    // alias anything.
    unsafe {
        syscall6(
            nr::MMAP,
            0,
            len,
            (libc::PROT_READ | libc::PROT_WRITE) as usize,
            (kind | libc::MAP_ANONYMOUS) as usize,
            usize::MAX,
            0,
        )
    }
    .map(|a| a as *mut u8)
}

/// `munmap(2)`.
///
/// # Safety
/// No live reference may point into the range.
pub unsafe fn munmap(addr: usize, len: usize) -> Result<(), Errno> {
    // SAFETY: forwarded.
    unsafe { syscall3(nr::MUNMAP, addr, len, 0) }.map(|_| ())
}

/// `mremap(2)` with MREMAP_MAYMOVE.
///
/// # Safety
/// No live reference may point into the old range.
pub unsafe fn mremap_maymove(addr: usize, old: usize, new: usize) -> Result<*mut u8, Errno> {
    // SAFETY: forwarded.
    unsafe {
        syscall6(
            nr::MREMAP,
            addr,
            old,
            new,
            libc::MREMAP_MAYMOVE as usize,
            0,
            0,
        )
    }
    .map(|a| a as *mut u8)
}

/// `mprotect(2)`.
///
/// # Safety
/// Changing protections must not invalidate live references.
pub unsafe fn mprotect(addr: usize, len: usize, prot: i32) -> Result<(), Errno> {
    // SAFETY: forwarded.
    unsafe { syscall3(nr::MPROTECT, addr, len, prot as usize) }.map(|_| ())
}

/// `futex(FUTEX_WAIT_PRIVATE)` with an optional relative timeout in ns.
pub fn futex_wait(
    word: &core::sync::atomic::AtomicU32,
    expected: u32,
    timeout_ns: Option<u64>,
) -> Result<(), Errno> {
    let ts;
    let tsp = match timeout_ns {
        Some(ns) => {
            ts = libc::timespec {
                tv_sec: (ns / 1_000_000_000) as i64,
                tv_nsec: (ns % 1_000_000_000) as i64,
            };
            &ts as *const libc::timespec as usize
        }
        None => 0,
    };
    // SAFETY: the futex word is a live AtomicU32; ts lives across the call.
    unsafe {
        syscall6(
            nr::FUTEX,
            word.as_ptr() as usize,
            (libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG) as usize,
            expected as usize,
            tsp,
            0,
            0,
        )
    }
    .map(|_| ())
}

/// `futex(FUTEX_WAKE_PRIVATE)` waking all waiters.
pub fn futex_wake_all(word: &core::sync::atomic::AtomicU32) {
    // SAFETY: the futex word is a live AtomicU32.
    let _ = unsafe {
        syscall3(
            nr::FUTEX,
            word.as_ptr() as usize,
            (libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG) as usize,
            i32::MAX as usize,
        )
    };
}

/// `clock_gettime(2)` as nanoseconds (raw syscall, not the vDSO).
pub fn clock_ns(clock: i32) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec.
    let _ = unsafe {
        syscall3(
            nr::CLOCK_GETTIME,
            clock as usize,
            &mut ts as *mut libc::timespec as usize,
            0,
        )
    };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

/// `rt_sigprocmask(2)` on a 64-bit mask; returns the old mask.
pub fn sigprocmask(how: i32, set: u64) -> Result<u64, Errno> {
    let mut old: u64 = 0;
    // SAFETY: set/old are valid 8-byte kernel sigsets.
    unsafe {
        syscall6(
            nr::RT_SIGPROCMASK,
            how as usize,
            &set as *const u64 as usize,
            &mut old as *mut u64 as usize,
            8,
            0,
            0,
        )
    }?;
    Ok(old)
}

/// The kernel's `struct sigaction` layout on x86_64.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelSigaction {
    /// Handler address, or SIG_DFL (0) / SIG_IGN (1).
    pub handler: u64,
    /// SA_* flags.
    pub flags: u64,
    /// The sa_restorer trampoline.
    pub restorer: u64,
    /// Blocked-signal mask while the handler runs.
    pub mask: u64,
}

/// `rt_sigaction(2)`: read the current action of `sig` (and optionally set one).
pub fn sigaction(sig: i32, new: Option<&KernelSigaction>) -> Result<KernelSigaction, Errno> {
    let mut old = KernelSigaction::default();
    let np = new.map_or(0, |n| n as *const KernelSigaction as usize);
    // SAFETY: np is null or a valid struct; old is writable.
    unsafe {
        syscall6(
            nr::RT_SIGACTION,
            sig as usize,
            np,
            &mut old as *mut KernelSigaction as usize,
            8,
            0,
            0,
        )
    }?;
    Ok(old)
}

/// `arch_prctl(ARCH_GET_FS)`.
pub fn get_fs_base() -> u64 {
    let mut v: u64 = 0;
    // SAFETY: v is a valid writable u64.
    let _ = unsafe { syscall3(nr::ARCH_PRCTL, 0x1003, &mut v as *mut u64 as usize, 0) };
    v
}

/// `arch_prctl(ARCH_GET_GS)`.
pub fn get_gs_base() -> u64 {
    let mut v: u64 = 0;
    // SAFETY: v is a valid writable u64.
    let _ = unsafe { syscall3(nr::ARCH_PRCTL, 0x1004, &mut v as *mut u64 as usize, 0) };
    v
}

/// `prctl(PR_GET_TID_ADDRESS)`: the thread's clear_child_tid pointer.
pub fn get_tid_address() -> u64 {
    let mut v: u64 = 0;
    // SAFETY: v is a valid writable u64 (PR_GET_TID_ADDRESS = 40).
    let _ = unsafe { syscall6(nr::PRCTL, 40, &mut v as *mut u64 as usize, 0, 0, 0, 0) };
    v
}

/// `get_robust_list(0, ...)`: the calling thread's robust list head and length.
pub fn get_robust_list() -> (u64, u64) {
    let mut head: u64 = 0;
    let mut len: u64 = 0;
    // SAFETY: both out-pointers are valid.
    let _ = unsafe {
        syscall3(
            nr::GET_ROBUST_LIST,
            0,
            &mut head as *mut u64 as usize,
            &mut len as *mut u64 as usize,
        )
    };
    (head, len)
}

/// `prlimit64(0, res, NULL, &old)`.
pub fn getrlimit(res: u32) -> Option<(u64, u64)> {
    let mut lim = [0u64; 2];
    // SAFETY: lim is a writable rlimit64.
    unsafe {
        syscall6(
            nr::PRLIMIT64,
            0,
            res as usize,
            0,
            lim.as_mut_ptr() as usize,
            0,
            0,
        )
    }
    .ok()?;
    Some((lim[0], lim[1]))
}

/// `brk(0)`: the current program break.
pub fn current_brk() -> u64 {
    // SAFETY: brk(0) only queries.
    unsafe { syscall3(nr::BRK, 0, 0, 0) }.map_or(0, |v| v as u64)
}

/// `getdents64(2)` into `buf`.
pub fn getdents64(fd: i32, buf: &mut [u8]) -> SysResult {
    // SAFETY: buf valid for its length.
    unsafe {
        syscall3(
            nr::GETDENTS64,
            fd as usize,
            buf.as_mut_ptr() as usize,
            buf.len(),
        )
    }
}

/// `ioctl(2)` with a pointer argument.
///
/// # Safety
/// `arg` must point to memory matching the request's contract.
pub unsafe fn ioctl(fd: i32, req: u64, arg: usize) -> SysResult {
    // SAFETY: forwarded.
    unsafe { syscall3(nr::IOCTL, fd as usize, req as usize, arg) }
}

/// `lseek(2)`.
pub fn lseek(fd: i32, off: i64, whence: i32) -> SysResult {
    // SAFETY: no pointers.
    unsafe { syscall3(nr::LSEEK, fd as usize, off as usize, whence as usize) }
}

/// `fcntl(fd, F_GETFL/F_GETFD)`.
pub fn fcntl_get(fd: i32, cmd: i32) -> SysResult {
    // SAFETY: no pointers.
    unsafe { syscall3(nr::FCNTL, fd as usize, cmd as usize, 0) }
}

/// `getitimer(2)`; returns (interval_us, value_us).
pub fn getitimer(which: i32) -> (u64, u64) {
    let mut v = [0i64; 4];
    // SAFETY: v is a writable struct itimerval (4 longs).
    let _ = unsafe { syscall3(nr::GETITIMER, which as usize, v.as_mut_ptr() as usize, 0) };
    (
        (v[0] as u64) * 1_000_000 + v[1] as u64,
        (v[2] as u64) * 1_000_000 + v[3] as u64,
    )
}

/// `exit_group(2)`.
pub fn exit_group(code: i32) -> ! {
    loop {
        // SAFETY: exit_group does not return.
        let _ = unsafe { syscall3(nr::EXIT_GROUP, code as usize, 0, 0) };
    }
}

/// Call `f` with every numeric entry name of the directory open at `dfd`
/// (`/proc/self/task`, `/proc/self/fd`): a `getdents64` loop over a stack
/// buffer. **Async-signal-safe.**
pub fn for_each_numeric_entry(dfd: i32, mut f: impl FnMut(u64)) -> Result<(), Errno> {
    let mut buf = [0u8; 4096];
    loop {
        let len = match getdents64(dfd, &mut buf) {
            Ok(0) => return Ok(()),
            Ok(l) => l,
            Err(e) => return Err(e),
        };
        let mut off = 0usize;
        while off + 19 < len {
            let reclen = u16::from_le_bytes([
                buf.get(off + 16).copied().unwrap_or(0),
                buf.get(off + 17).copied().unwrap_or(0),
            ]) as usize;
            if reclen == 0 {
                break;
            }
            let name = buf.get(off + 19..off + reclen).unwrap_or(&[]);
            let name = name.split(|&c| c == 0).next().unwrap_or(&[]);
            if let Some(v) = super::procfs::dec(name) {
                f(v);
            }
            off += reclen;
        }
    }
}

/// `struct clone_args` of clone3(2).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CloneArgs {
    /// CLONE_* flags.
    pub flags: u64,
    /// Where to store a pidfd.
    pub pidfd: u64,
    /// Child tid pointer.
    pub child_tid: u64,
    /// Parent tid pointer.
    pub parent_tid: u64,
    /// Signal sent to the parent when the child exits.
    pub exit_signal: u64,
    /// Lowest address of the child's stack.
    pub stack: u64,
    /// Size of the child's stack.
    pub stack_size: u64,
    /// TLS for CLONE_SETTLS.
    pub tls: u64,
    /// Pointer to the array of pids to choose (one per pid namespace level).
    pub set_tid: u64,
    /// Number of entries in `set_tid`.
    pub set_tid_size: u64,
    /// cgroup fd for CLONE_INTO_CGROUP.
    pub cgroup: u64,
}
