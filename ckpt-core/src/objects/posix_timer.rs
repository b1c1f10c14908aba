//! POSIX timers (`timer_create`): captured in the process, created again
//! with the same ids by the restored process itself.
//!
//! A timer belongs to its process and is known to it only by its id, so
//! everything here runs inside the process (`docs/kernel.md` §10):
//! - **Capture** (leader thread, job stopped, **async-signal-safe**):
//!   `/proc/self/timers` lists each timer's id, clock, signal, the value the
//!   signal carries (`sigev_value`), how it notifies (`signal`, `none`,
//!   `thread`) and to whom (`pid.N`, or `tid.N` for `SIGEV_THREAD_ID`, in
//!   the job's pid namespace); `timer_gettime` gives the time left and the
//!   interval. A timer that expires while it is read would leave its
//!   signal and its next expiration out of step, so the values are read
//!   again after the pending signals and the capture repeats when one
//!   moved ([`capture_self`]).
//! - **Restore** ([`restore_all`], in `preload::finish`, once every thread
//!   exists: a timer may target one thread): each timer is created with its
//!   old id, through `PR_TIMER_CREATE_RESTORE_IDS` (Linux 6.17+) or, before,
//!   by creating and deleting it until the kernel's per-process counter (new processes start at 0, ids are never reused
//!   before it wraps) reaches the id. Armed timers are armed again with the
//!   time that was left and their interval: CLOCK_MONOTONIC and
//!   CLOCK_BOOTTIME go on from where they were in the restart's time
//!   namespace, so the timer keeps its meaning; a CLOCK_REALTIME timer keeps
//!   the time it had left too (the kernel does not say whether it was set
//!   for an absolute time: one that was fires that much later).
//! - A timer's signal that was pending at the checkpoint is queued again as
//!   the timer's own (`SI_TIMER`, the timer id and its value), not as a
//!   plain `kill`: glibc's `SIGEV_THREAD` helper thread only runs the
//!   callback for such a signal ([`queue_expiration`]).
//! - `SIGEV_THREAD` timers are made by libckpt (`preload::sigev_thread`,
//!   as glibc does it but with a helper thread that can be stopped): one
//!   kernel timer sending signal 32 to that helper, restored like any
//!   timer, the helper thread and libckpt's records being restored memory.
//! - A timer whose target thread has exited signals no one; it comes back
//!   without notification (the kernel would refuse the old thread id).
//! - Not kept: a re-queued expiration is an ordinary queued signal, so a
//!   `timer_delete` or re-arming after the restart does not withdraw it as
//!   the kernel would withdraw its own; the overrun count starts from 0;
//!   several queued instances of one real-time signal come back as one
//!   (pending signals are saved as masks).
//!
//! Refused at checkpoint time ([`refusal`]): timers on CPU-time clocks
//! (the restarted process's CPU time starts from zero, so the timer would
//! fire at another point of the computation), alarm clocks (they need
//! `CAP_WAKE_ALARM`), and more than [`MAX_TIMERS`] timers in one process.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicUsize, Ordering};

use serde::{Deserialize, Serialize};

use crate::signal_safe::procfs;
use crate::signal_safe::raw::{self, Errno};

/// Timers of one process that can be restored.
pub const MAX_TIMERS: usize = 64;

/// `sigev_notify` values as the kernel keeps them.
pub const SIGEV_SIGNAL: i32 = 0;
/// No notification.
pub const SIGEV_NONE: i32 = 1;
/// `SIGEV_THREAD` given to the kernel directly (glibc never does).
pub const SIGEV_THREAD: i32 = 2;
/// Flag: the signal goes to one thread (`target`).
pub const SIGEV_THREAD_ID: i32 = 4;

const NR_TIMER_CREATE: usize = 222;
const NR_TIMER_SETTIME: usize = 223;
const NR_TIMER_GETTIME: usize = 224;
const NR_TIMER_DELETE: usize = 226;
const NR_RT_SIGQUEUEINFO: usize = 129;
const NR_RT_TGSIGQUEUEINFO: usize = 297;
const NR_PRCTL: usize = 157;
const PR_TIMER_CREATE_RESTORE_IDS: usize = 77;
const SI_TIMER: i32 = -2;
const NS: u64 = 1_000_000_000;

/// Highest timer id a kernel without `PR_TIMER_CREATE_RESTORE_IDS` is
/// walked up to (two system calls per id).
pub const MAX_WALKED_ID: i32 = 1 << 20;

/// One POSIX timer: the schema of the manifest's `posix_timers` and the
/// record the restore works from (`#[repr(C)]`: it is part of
/// `preload::finish::FinishArgs`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PosixTimer {
    /// The id `timer_create` returned.
    pub id: i32,
    /// The clock (`CLOCK_REALTIME` = 0, `CLOCK_MONOTONIC` = 1, ...).
    pub clock: i32,
    /// The signal it sends (0 with `SIGEV_NONE`).
    pub signal: i32,
    /// `sigev_notify`: [`SIGEV_SIGNAL`], [`SIGEV_NONE`] or
    /// [`SIGEV_THREAD`], with [`SIGEV_THREAD_ID`] when it targets a thread.
    pub notify: i32,
    /// The thread (with `SIGEV_THREAD_ID`) or process the signal goes to.
    pub target: i32,
    /// Restore only: a signal of this timer was pending at the checkpoint
    /// and is queued again (set by the restart from the pending masks).
    #[serde(skip)]
    pub queued: i32,
    /// The value the signal carries (`sigev_value`).
    pub sigev_value: u64,
    /// Time left until the next expiration, ns (0: disarmed).
    pub value_ns: u64,
    /// Period, ns (0: one-shot).
    pub interval_ns: u64,
}

impl PosixTimer {
    /// No timer (for static tables).
    pub const NONE: PosixTimer = PosixTimer {
        id: 0,
        clock: 0,
        signal: 0,
        notify: 0,
        target: 0,
        queued: 0,
        sigev_value: 0,
        value_ns: 0,
        interval_ns: 0,
    };

    /// Whether it sends a signal at all.
    pub fn signals(&self) -> bool {
        self.notify & !SIGEV_THREAD_ID != SIGEV_NONE && self.signal > 0
    }

    /// Writes the JSON object (the manifest's form). **Async-signal-safe.**
    pub fn write_json(&self, w: &mut impl core::fmt::Write) -> core::fmt::Result {
        write!(
            w,
            "{{\"id\":{},\"clock\":{},\"signal\":{},\"notify\":{},\"target\":{},\"sigev_value\":{},\"value_ns\":{},\"interval_ns\":{}}}",
            self.id,
            self.clock,
            self.signal,
            self.notify,
            self.target,
            self.sigev_value,
            self.value_ns,
            self.interval_ns
        )
    }

    /// Why it cannot be restored, if it cannot.
    pub fn unrestorable(&self) -> Option<&'static str> {
        if self.id < 0 {
            return Some("its line in /proc/PID/timers could not be read");
        }
        match self.clock {
            0 | 1 | 7 => None,
            2 | 3 => Some(
                "the CPU time this clock counts starts again from zero in a restarted process, so the timer would fire at another point of the computation",
            ),
            8 | 9 => {
                Some("an alarm clock timer needs CAP_WAKE_ALARM, which a restart does not have")
            }
            c if c < 0 && cpu_clock_owner(c) == 0 => Some(
                "the CPU time this clock counts starts again from zero in a restarted process, so the timer would fire at another point of the computation",
            ),
            c if c < 0 => Some(
                "a timer on another process's or thread's CPU clock cannot be recreated: that clock's owner has another id after a restart",
            ),
            _ => Some("ckpt does not know this clock"),
        }
    }
}

/// Calls `f` with each timer of a `/proc/PID/timers` text (blocks of `ID:`,
/// `signal: N/VALUE`, `notify: KIND/pid.N` or `KIND/tid.N`, `ClockID:`),
/// times left at zero; a block with a field that cannot be read has id -1.
/// **Async-signal-safe.**
pub fn for_each(text: &[u8], mut f: impl FnMut(PosixTimer)) {
    let mut cur: Option<PosixTimer> = None;
    for line in procfs::lines(text) {
        let Some(colon) = line.iter().position(|&c| c == b':') else {
            continue;
        };
        let key = line.get(..colon).unwrap_or(&[]);
        let value = trim(line.get(colon + 1..).unwrap_or(&[]));
        if key == b"ID" {
            if let Some(t) = cur.take() {
                f(t);
            }
            cur = Some(PosixTimer {
                id: procfs::dec(value)
                    .and_then(|v| i32::try_from(v).ok())
                    .unwrap_or(-1),
                ..PosixTimer::default()
            });
            continue;
        }
        let Some(t) = cur.as_mut() else { continue };
        match key {
            b"signal" => {
                let (sig, val) = split_at_byte(value, b'/');
                match (
                    procfs::dec(sig).and_then(|v| i32::try_from(v).ok()),
                    procfs::hex(val),
                ) {
                    (Some(sig), Some(val)) => (t.signal, t.sigev_value) = (sig, val),
                    // Unreadable: marked, never guessed (a wrong value
                    // would send another callback's argument).
                    _ => t.id = -1,
                }
            }
            b"notify" => {
                let (kind, whom) = split_at_byte(value, b'/');
                t.notify = match kind {
                    b"none" => SIGEV_NONE,
                    b"thread" => SIGEV_THREAD,
                    _ => SIGEV_SIGNAL,
                };
                let (scope, id) = split_at_byte(whom, b'.');
                if scope == b"tid" {
                    t.notify |= SIGEV_THREAD_ID;
                }
                match procfs::dec(id).and_then(|v| i32::try_from(v).ok()) {
                    Some(target) => t.target = target,
                    None => t.id = -1,
                }
            }
            b"ClockID" => {
                t.clock = signed(value).unwrap_or(-1);
            }
            _ => {}
        }
    }
    if let Some(t) = cur {
        f(t);
    }
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    s.get(start..end).unwrap_or(&[])
}

fn split_at_byte(s: &[u8], b: u8) -> (&[u8], &[u8]) {
    match s.iter().position(|&c| c == b) {
        Some(i) => (s.get(..i).unwrap_or(&[]), s.get(i + 1..).unwrap_or(&[])),
        None => (s, &[]),
    }
}

fn signed(s: &[u8]) -> Option<i32> {
    match s.split_first() {
        Some((b'-', rest)) => procfs::dec(rest)
            .and_then(|v| i64::try_from(v).ok())
            .and_then(|v| i32::try_from(-v).ok()),
        _ => procfs::dec(s).and_then(|v| i32::try_from(v).ok()),
    }
}

/// The timers of a `/proc/PID/timers` text (the coordinator's view).
pub fn parse(text: &str) -> Vec<PosixTimer> {
    let mut out = Vec::new();
    for_each(text.as_bytes(), |t| out.push(t));
    out
}

/// The process or thread whose CPU time a (negative) CPU clock id counts;
/// 0 for the caller's own.
fn cpu_clock_owner(clock: i32) -> i32 {
    !(clock >> 3)
}

fn clock_name(clock: i32) -> String {
    match clock {
        0 => "CLOCK_REALTIME".into(),
        1 => "CLOCK_MONOTONIC".into(),
        2 => "CLOCK_PROCESS_CPUTIME_ID".into(),
        3 => "CLOCK_THREAD_CPUTIME_ID".into(),
        7 => "CLOCK_BOOTTIME".into(),
        8 => "CLOCK_REALTIME_ALARM".into(),
        9 => "CLOCK_BOOTTIME_ALARM".into(),
        // glibc passes its own CPU clocks as the kernel's encoding of
        // "this process's / this thread's" (owner 0).
        c if c < 0 && cpu_clock_owner(c) == 0 && c & 4 == 0 => "CLOCK_PROCESS_CPUTIME_ID".into(),
        c if c < 0 && cpu_clock_owner(c) == 0 => "CLOCK_THREAD_CPUTIME_ID".into(),
        c if c < 0 => format!(
            "the CPU clock of {} {}",
            if c & 4 == 0 { "process" } else { "thread" },
            cpu_clock_owner(c)
        ),
        c => format!("clock {c}"),
    }
}

/// At checkpoint time: the refusal for process `pid` (running `exe`)
/// holding `timers`, if one of them cannot be restored; names the timer
/// and the way out.
pub fn refusal(pid: i32, exe: &str, timers: &[PosixTimer]) -> Option<String> {
    if timers.len() > MAX_TIMERS {
        return Some(format!(
            "process {pid} ({exe}) has {} POSIX timers (timer_create), more than the {MAX_TIMERS} ckpt restores in one process; \
             delete the ones it no longer uses, or run this program without checkpoints",
            timers.len()
        ));
    }
    let (t, why) = timers
        .iter()
        .find_map(|t| t.unrestorable().map(|w| (t, w)))?;
    let notify = if t.signals() {
        let whom = if t.notify & SIGEV_THREAD_ID != 0 {
            "tid"
        } else {
            "pid"
        };
        format!("signal {} to {whom} {}", t.signal, t.target)
    } else {
        "no notification".to_owned()
    };
    Some(format!(
        "process {pid} ({exe}) has a POSIX timer (timer_create) on {}: timer {}, {notify}, which ckpt cannot checkpoint: {why}; \
         use a CLOCK_MONOTONIC timer, or run this program without checkpoints",
        clock_name(t.clock),
        t.id
    ))
}

// ---- capture (in the process, job stopped) ----

/// What [`capture_self`] found; read by the image writer (also in a
/// snapshot child, which has a copy of this memory but no timers).
pub struct Saved {
    timers: UnsafeCell<[PosixTimer; MAX_TIMERS]>,
    text: UnsafeCell<[u8; 8192]>,
    n: AtomicUsize,
    /// Set when the capture could not be completed (the image writer fails).
    pub failed: core::sync::atomic::AtomicBool,
}

// SAFETY: written only by the leader thread while it holds the checkpoint
// (`preload::leader`'s LEADING flag), read afterwards by the same thread or
// by a snapshot child forked from it.
unsafe impl Sync for Saved {}

/// The timers of the checkpoint being taken.
pub static SAVED: Saved = Saved {
    timers: UnsafeCell::new([PosixTimer::NONE; MAX_TIMERS]),
    text: UnsafeCell::new([0; 8192]),
    n: AtomicUsize::new(0),
    failed: core::sync::atomic::AtomicBool::new(false),
};

impl Saved {
    /// The timers saved by the last [`capture_self`].
    pub fn timers(&self) -> &[PosixTimer] {
        let n = self.n.load(Ordering::Acquire).min(MAX_TIMERS);
        // SAFETY: see `unsafe impl Sync`: no writer runs while this is read.
        unsafe { (*self.timers.get()).get(..n).unwrap_or(&[]) }
    }
}

/// `timer_gettime(id)`: (time left, interval) in ns.
fn gettime(id: i32) -> Result<(u64, u64), Errno> {
    let mut its = [0i64; 4];
    // SAFETY: timer_gettime writes a struct itimerspec (4 longs) into its.
    unsafe { raw::syscall3(NR_TIMER_GETTIME, id as usize, its.as_mut_ptr() as usize, 0) }?;
    let ns = |s: i64, n: i64| {
        (s.max(0) as u64)
            .saturating_mul(NS)
            .saturating_add(n.max(0) as u64)
    };
    Ok((ns(its[2], its[3]), ns(its[0], its[1])))
}

/// Whether a timer expired between two readings of its time left.
fn expired_between(before: u64, after: u64) -> bool {
    (before != 0 && after == 0) || after > before
}

/// Reads the calling process's timers into [`SAVED`], and calls
/// `read_pending` (which reads the pending signals the timers' signals are
/// among) between two readings of their values: when a timer expired in
/// between, the pending signals may not match the values, and everything
/// is read again (at most three times; then the last reading is kept,
/// off by at most one expiration). Returns the number of timers; on
/// error, [`Saved::failed`] is set. **Async-signal-safe.**
pub fn capture_self(mut read_pending: impl FnMut(&[PosixTimer])) -> usize {
    SAVED.failed.store(false, Ordering::Release);
    SAVED.n.store(0, Ordering::Release);
    // SAFETY: only the leader thread runs this (see `unsafe impl Sync`).
    let text = unsafe { &mut *SAVED.text.get() };
    let Ok(len) = read_whole(b"/proc/self/timers\0", text) else {
        // No /proc/PID/timers (a kernel without CONFIG_CHECKPOINT_RESTORE):
        // the coordinator cannot see timers either and says so.
        read_pending(&[]);
        return 0;
    };
    // SAFETY: as above.
    let table = unsafe { &mut *SAVED.timers.get() };
    let mut n = 0usize;
    let mut overflow = false;
    for_each(text.get(..len).unwrap_or(&[]), |t| match table.get_mut(n) {
        Some(slot) => {
            *slot = t;
            n += 1;
        }
        None => overflow = true,
    });
    if overflow || len >= text.len() || table.iter().take(n).any(|t| t.id < 0) {
        SAVED.failed.store(true, Ordering::Release);
    }
    let timers = table.get_mut(..n).unwrap_or(&mut []);
    for _ in 0..3 {
        for t in timers.iter_mut() {
            match gettime(t.id) {
                Ok((v, i)) => (t.value_ns, t.interval_ns) = (v, i),
                Err(_) => SAVED.failed.store(true, Ordering::Release),
            }
        }
        read_pending(timers);
        let moved = timers
            .iter()
            .any(|t| gettime(t.id).is_ok_and(|(v, _)| expired_between(t.value_ns, v)));
        if !moved {
            break;
        }
    }
    SAVED.n.store(n, Ordering::Release);
    n
}

fn read_whole(path: &[u8], buf: &mut [u8]) -> Result<usize, Errno> {
    let fd = raw::open(path, libc::O_RDONLY | libc::O_CLOEXEC, 0)?;
    let mut len = 0usize;
    while let Some(rest) = buf.get_mut(len..) {
        if rest.is_empty() {
            break;
        }
        match raw::read_into(fd, rest) {
            Ok(0) => break,
            Ok(k) => len += k,
            Err(e) if e.0 == libc::EINTR => {}
            Err(e) => {
                raw::close(fd);
                return Err(e);
            }
        }
    }
    raw::close(fd);
    Ok(len)
}

// ---- restore (in the restored process, every thread made) ----

/// The kernel's `struct sigevent` (64 bytes).
#[repr(C)]
struct KernelSigevent {
    value: u64,
    signo: i32,
    notify: i32,
    tid: i32,
    pad: [i32; 11],
}

fn create(t: &PosixTimer, want: i32) -> Result<i32, Errno> {
    let ev = KernelSigevent {
        value: t.sigev_value,
        signo: t.signal,
        notify: t.notify,
        tid: t.target,
        pad: [0; 11],
    };
    let mut id: i32 = want;
    // SAFETY: ev is a complete kernel sigevent; id is a writable int the
    // kernel reads (restore mode) and writes.
    unsafe {
        raw::syscall3(
            NR_TIMER_CREATE,
            t.clock as usize,
            &ev as *const KernelSigevent as usize,
            &mut id as *mut i32 as usize,
        )
    }?;
    Ok(id)
}

fn delete(id: i32) {
    // SAFETY: timer_delete takes an id only.
    let _ = unsafe { raw::syscall3(NR_TIMER_DELETE, id as usize, 0, 0) };
}

/// Whether this kernel creates a timer with a chosen id
/// (`PR_TIMER_CREATE_RESTORE_IDS`, Linux 6.17+).
pub fn kernel_restores_ids() -> bool {
    // SAFETY: PR_TIMER_CREATE_RESTORE_IDS_GET (2) reads nothing.
    unsafe { raw::syscall6(NR_PRCTL, PR_TIMER_CREATE_RESTORE_IDS, 2, 0, 0, 0, 0) }.is_ok()
}

fn restore_ids(on: bool) -> Result<(), Errno> {
    // SAFETY: prctl with integer arguments only.
    unsafe {
        raw::syscall6(
            NR_PRCTL,
            PR_TIMER_CREATE_RESTORE_IDS,
            usize::from(on),
            0,
            0,
            0,
            0,
        )
    }
    .map(|_| ())
}

/// Creates `timers` (sorted by id, in a process that has none) with their
/// ids, arms them and queues the signals marked `queued`.
/// **Async-signal-safe**; runs in `preload::finish` before the program.
pub fn restore_all(timers: &[PosixTimer]) -> Result<(), Errno> {
    restore_with(timers, true)
}

/// [`restore_all`], choosing whether `PR_TIMER_CREATE_RESTORE_IDS` may be
/// used (tests walk the counter on kernels that have it).
fn restore_with(timers: &[PosixTimer], by_prctl: bool) -> Result<(), Errno> {
    if timers.is_empty() {
        return Ok(());
    }
    if by_prctl && restore_ids(true).is_ok() {
        let r = timers.iter().try_for_each(|t| match create(t, t.id)? {
            got if got == t.id => Ok(()),
            _ => Err(Errno(libc::EEXIST)),
        });
        let _ = restore_ids(false);
        r?;
    } else {
        // Ids come from a per-process counter that starts at 0 and only
        // goes up (until it wraps): create the timer and delete it again
        // until it gets its id (an unarmed timer sends nothing).
        for t in timers {
            if t.id > MAX_WALKED_ID {
                return Err(Errno(libc::ERANGE));
            }
            loop {
                let got = create(t, 0)?;
                if got == t.id {
                    break;
                }
                delete(got);
                if got > t.id {
                    return Err(Errno(libc::EEXIST));
                }
            }
        }
    }
    for t in timers {
        if t.value_ns != 0 {
            arm(t)?;
        }
    }
    for t in timers.iter().filter(|t| t.queued != 0) {
        queue_expiration(t)?;
    }
    Ok(())
}

fn arm(t: &PosixTimer) -> Result<(), Errno> {
    let ts = |ns: u64| [(ns / NS) as i64, (ns % NS) as i64];
    let [is, ins] = ts(t.interval_ns);
    let [vs, vns] = ts(t.value_ns);
    let its: [i64; 4] = [is, ins, vs, vns];
    // SAFETY: its is a complete struct itimerspec; no old value wanted.
    unsafe {
        raw::syscall6(
            NR_TIMER_SETTIME,
            t.id as usize,
            0,
            its.as_ptr() as usize,
            0,
            0,
            0,
        )
    }
    .map(|_| ())
}

/// Queues the timer's signal as the kernel would have sent it: `SI_TIMER`
/// with the timer id and its value, to the process or to its thread.
pub fn queue_expiration(t: &PosixTimer) -> Result<(), Errno> {
    let mut info = [0u64; 16];
    // siginfo: si_signo, si_errno, si_code; then si_timerid, si_overrun,
    // si_value at offsets 16, 20 and 24.
    info[0] = u64::from(t.signal as u32);
    info[1] = u64::from(SI_TIMER as u32);
    info[2] = u64::from(t.id as u32);
    info[3] = t.sigev_value;
    let pid = raw::getpid();
    // SAFETY: info is a complete 128-byte siginfo; the signal goes to our
    // own process (SI_TIMER is a negative code, allowed to queue).
    unsafe {
        if t.notify & SIGEV_THREAD_ID != 0 {
            raw::syscall6(
                NR_RT_TGSIGQUEUEINFO,
                pid as usize,
                t.target as usize,
                t.signal as usize,
                info.as_ptr() as usize,
                0,
                0,
            )
        } else {
            raw::syscall6(
                NR_RT_SIGQUEUEINFO,
                pid as usize,
                t.signal as usize,
                info.as_ptr() as usize,
                0,
                0,
                0,
            )
        }
    }
    .map(|_| ())
}

/// Marks, in a restart, the timers whose signal was pending at the
/// checkpoint (one timer per pending signal, the first that sends it),
/// and removes those signals from the masks, which are raised with a plain
/// signal. `take_thread(tid, bit)` clears `bit` in thread `tid`'s mask and
/// says whether it was set.
pub fn claim_pending(
    timers: &mut [PosixTimer],
    shared: &mut u64,
    mut take_thread: impl FnMut(i32, u64) -> bool,
) {
    for t in timers.iter_mut().filter(|t| t.signals()) {
        let Some(bit) = 1u64.checked_shl(t.signal as u32 - 1) else {
            continue;
        };
        let taken = if t.notify & SIGEV_THREAD_ID != 0 {
            take_thread(t.target, bit)
        } else {
            let was = *shared & bit != 0;
            *shared &= !bit;
            was
        };
        if taken {
            t.queued = 1;
        }
    }
}

/// At checkpoint time: a pending signal that more than one timer sends to
/// the same process or thread cannot be told apart (the kernel shows
/// pending signals as a mask), so it could come back as the wrong timer's.
/// The refusal passes by itself once the program takes the signal.
/// `threads` are (tid, pending mask).
pub fn pending_conflict(
    timers: &[PosixTimer],
    shared: u64,
    threads: &[(i32, u64)],
) -> Option<String> {
    for t in timers.iter().filter(|t| t.signals()) {
        let Some(bit) = 1u64.checked_shl(t.signal as u32 - 1) else {
            continue;
        };
        let to_thread = t.notify & SIGEV_THREAD_ID != 0;
        let pending = if to_thread {
            threads
                .iter()
                .any(|&(tid, p)| tid == t.target && p & bit != 0)
        } else {
            shared & bit != 0
        };
        let same = timers
            .iter()
            .filter(|u| {
                u.signals()
                    && u.signal == t.signal
                    && (u.notify & SIGEV_THREAD_ID != 0) == to_thread
                    && (!to_thread || u.target == t.target)
            })
            .count();
        if pending && same > 1 {
            return Some(format!(
                "signal {} is pending and {same} of its POSIX timers send it{}: which one it came from is not \
                 visible, so ckpt waits for the program to take it",
                t.signal,
                if to_thread {
                    format!(" to thread {}", t.target)
                } else {
                    String::new()
                }
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests;
