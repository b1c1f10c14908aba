//! timerfd: a timer on a clock, read as a count of expirations.
//!
//! fdinfo: `clockid`, `ticks` (expirations not read yet), `settime flags`
//! (octal: `TFD_TIMER_ABSTIME`, `TFD_TIMER_CANCEL_ON_SET`), `it_value`
//! (time left until the next expiration, `(sec, nsec)`, 0 when disarmed or
//! expired) and `it_interval`.
//!
//! Capture: the kernel counts the periods of a periodic timer that passed
//! since its last expiration only when asked (a `read`, or
//! `timerfd_gettime`); until then fdinfo shows one tick and no time left.
//! So the capture first calls `timerfd_gettime` (which brings `ticks` and
//! the next expiration up to date without consuming anything: a later read
//! returns the same total), then reads fdinfo, whose values are taken
//! together under the timer's lock. If the timer expires again in between,
//! it does so again (at most three times); the time left is then taken as
//! one interval (off by the microseconds between the two calls). The
//! timer's clock is read with fdinfo (`clock_ns`).
//!
//! Restore:
//! - `timerfd_create(clockid, TFD_NONBLOCK?)`;
//! - armed timers are armed again with the time that was left and their
//!   interval: CLOCK_MONOTONIC and CLOCK_BOOTTIME timers keep their time
//!   left (the restart runs in a time namespace in which those clocks go on
//!   from where they were, `ns::setup_time`), with `TFD_TIMER_ABSTIME` kept
//!   (now + time left); CLOCK_REALTIME timers set with `TFD_TIMER_ABSTIME`
//!   keep their absolute wall-clock time (`clock_ns` + time left), with
//!   `TFD_TIMER_CANCEL_ON_SET` kept: if that time passed while the job was
//!   down, the timer expires at once, and a periodic one counts the periods
//!   missed; relative CLOCK_REALTIME timers keep their time left;
//! - expirations not read yet come back exactly with the
//!   `TFD_IOC_SET_TICKS` ioctl (made for checkpoint/restore; it needs
//!   `CONFIG_CHECKPOINT_RESTORE`), after arming (arming clears the count),
//!   plus any expiration that happened since arming. Without the ioctl, a
//!   single expiration of a disarmed timer is delivered by arming a 1 ns
//!   one-shot timer; any other count cannot be recreated exactly and the
//!   restore fails naming the descriptor.
//!
//! Not kept: the "canceled" state of a `TFD_TIMER_CANCEL_ON_SET` timer
//! whose clock was set (fdinfo does not show it).

use core::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::{Capture, Kind, check_fd, close_on_error, dec, line_value, nonblocking, oct, signed};
use crate::signal_safe::buf::MmapBuf;
use crate::signal_safe::raw::{self, Errno};

const NR_TIMERFD_GETTIME: usize = 287;
/// `TFD_IOC_SET_TICKS` = `_IOW('T', 0, u64)`.
const TFD_IOC_SET_TICKS: u64 = 0x4008_5400;
const TFD_TIMER_ABSTIME: u32 = 1;
const TFD_TIMER_CANCEL_ON_SET: u32 = 2;
const NS: u64 = 1_000_000_000;

/// A timerfd's state.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Timerfd {
    /// The clock (`CLOCK_*`).
    pub clockid: i32,
    /// Expirations not read yet.
    pub ticks: u64,
    /// Flags of the last `timerfd_settime` (`TFD_TIMER_*`).
    pub settime_flags: u32,
    /// Time left until the next expiration, ns (0: disarmed).
    pub value_ns: u64,
    /// Period, ns (0: one-shot).
    pub interval_ns: u64,
    /// The timer's clock when `value_ns` was read, ns.
    pub clock_ns: u64,
}

fn timespec_pair(s: &[u8]) -> Option<u64> {
    // "(3599, 175054352)"
    let s = s.strip_prefix(b"(")?.strip_suffix(b")")?;
    let comma = s.iter().position(|&c| c == b',')?;
    let sec = dec(s.get(..comma)?)?;
    let nsec = dec(s.get(comma + 1..)?)?;
    sec.checked_mul(NS)?.checked_add(nsec)
}

fn timespec(ns: u64) -> libc::timespec {
    libc::timespec {
        tv_sec: (ns / NS) as libc::time_t,
        tv_nsec: (ns % NS) as libc::c_long,
    }
}

fn now_ns(clock: i32) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(NS)
        .saturating_add(ts.tv_nsec as u64)
}

impl Timerfd {
    /// Parse fdinfo text (`clock_ns` is left 0). **Async-signal-safe.**
    pub fn parse(info: &[u8]) -> Option<Timerfd> {
        Some(Timerfd {
            clockid: i32::try_from(line_value(info, b"clockid").and_then(signed)?).ok()?,
            ticks: line_value(info, b"ticks").and_then(dec)?,
            settime_flags: line_value(info, b"settime flags").and_then(oct)? as u32,
            value_ns: line_value(info, b"it_value").and_then(timespec_pair)?,
            interval_ns: line_value(info, b"it_interval").and_then(timespec_pair)?,
            clock_ns: 0,
        })
    }

    /// Write as JSON. **Async-signal-safe.**
    pub fn write_json(&self, j: &mut MmapBuf) {
        let _ = write!(
            j,
            "{{\"clockid\":{},\"ticks\":{},\"settime_flags\":{},\"value_ns\":{},\"interval_ns\":{},\"clock_ns\":{}}}",
            self.clockid,
            self.ticks,
            self.settime_flags,
            self.value_ns,
            self.interval_ns,
            self.clock_ns
        );
    }

    fn realtime(&self) -> bool {
        matches!(
            self.clockid,
            libc::CLOCK_REALTIME | libc::CLOCK_REALTIME_ALARM
        )
    }

    /// Arm `fd` with the saved time left and interval.
    fn arm(&self, fd: i32) -> Result<(), String> {
        if self.value_ns == 0 {
            return Ok(());
        }
        let abs = self.settime_flags & TFD_TIMER_ABSTIME != 0;
        let (flags, value) = if abs {
            let base = if self.realtime() {
                self.clock_ns
            } else {
                now_ns(self.clockid)
            };
            (
                self.settime_flags & (TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET),
                base.saturating_add(self.value_ns),
            )
        } else {
            (0, self.value_ns)
        };
        let its = libc::itimerspec {
            it_interval: timespec(self.interval_ns),
            it_value: timespec(value),
        };
        // SAFETY: valid itimerspec; no old value wanted.
        if unsafe { libc::timerfd_settime(fd, flags as i32, &its, core::ptr::null_mut()) } != 0 {
            return Err(format!("timerfd_settime: {}", super::last_error()));
        }
        Ok(())
    }

    /// Give `fd` the saved count of expirations not read yet.
    fn set_ticks(&self, fd: i32) -> Result<(), String> {
        if self.ticks == 0 {
            return Ok(());
        }
        // Expirations since arming (a wall-clock time that passed): kept too.
        let since = std::fs::read(format!("/proc/self/fdinfo/{fd}"))
            .ok()
            .and_then(|t| Timerfd::parse(&t))
            .map_or(0, |t| t.ticks);
        let ticks = self.ticks.saturating_add(since);
        // SAFETY: the ioctl reads a u64 from a local.
        let r = unsafe { libc::ioctl(fd, TFD_IOC_SET_TICKS as _, &ticks as *const u64) };
        if r == 0 {
            return Ok(());
        }
        let err = super::last_error();
        if self.ticks == 1 && self.value_ns == 0 && self.interval_ns == 0 {
            // One expiration of a disarmed timer: a 1 ns one-shot delivers it.
            let its = libc::itimerspec {
                it_interval: timespec(0),
                it_value: timespec(1),
            };
            // SAFETY: valid itimerspec.
            if unsafe { libc::timerfd_settime(fd, 0, &its, core::ptr::null_mut()) } == 0 {
                return Ok(());
            }
        }
        Err(format!(
            "{} expirations were not read yet and this kernel cannot set them again (TFD_IOC_SET_TICKS: {err}; it needs CONFIG_CHECKPOINT_RESTORE)",
            self.ticks
        ))
    }
}

impl Kind for Timerfd {
    const LINK: &'static [u8] = b"anon_inode:[timerfd]";
    const TAG: &'static str = "timerfd";
    const WHAT: &'static str = "a timerfd";

    fn capture(cx: &mut Capture<'_>) -> Result<(), Errno> {
        // The clock never changes: take it from the fdinfo already read.
        let clock = line_value(cx.fdinfo(), b"clockid")
            .and_then(signed)
            .and_then(|c| i32::try_from(c).ok())
            .ok_or(Errno(libc::EINVAL))?;
        let mut t = Timerfd::default();
        for _ in 0..3 {
            let mut its = [0u64; 4];
            // SAFETY: timerfd_gettime writes a struct itimerspec (32 bytes) into its.
            unsafe {
                raw::syscall3(
                    NR_TIMERFD_GETTIME,
                    cx.fd as usize,
                    its.as_mut_ptr() as usize,
                    0,
                )
            }?;
            let before = raw::clock_ns(clock);
            cx.reread()?;
            let after = raw::clock_ns(clock);
            t = Timerfd::parse(cx.fdinfo()).ok_or(Errno(libc::EINVAL))?;
            // fdinfo was read between the two clock readings.
            t.clock_ns = before + after.saturating_sub(before) / 2;
            if !(t.value_ns == 0 && t.interval_ns != 0) {
                break;
            }
        }
        if t.value_ns == 0 && t.interval_ns != 0 {
            // It keeps expiring between the two calls: the next one is about
            // one interval away.
            t.value_ns = t.interval_ns;
        }
        t.write_json(cx.json());
        Ok(())
    }

    fn validate(&self) -> Result<(), String> {
        match self.clockid {
            libc::CLOCK_REALTIME
            | libc::CLOCK_MONOTONIC
            | libc::CLOCK_BOOTTIME
            | libc::CLOCK_REALTIME_ALARM
            | libc::CLOCK_BOOTTIME_ALARM => Ok(()),
            c => Err(format!("its clock {c} is not one timerfd supports")),
        }
    }

    fn create(&self, flags: u32) -> Result<i32, String> {
        self.validate()?;
        let mut f = libc::TFD_CLOEXEC;
        if nonblocking(flags) {
            f |= libc::TFD_NONBLOCK;
        }
        // SAFETY: timerfd_create takes no pointers.
        let fd = check_fd(
            unsafe { libc::timerfd_create(self.clockid, f) },
            "timerfd_create",
        )?;
        close_on_error(fd, self.arm(fd).and_then(|()| self.set_ticks(fd)))?;
        Ok(fd)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{capture_live, fdinfo, json_of};
    use super::super::{Kind, Object};
    use super::*;

    #[test]
    fn round_trip() {
        let text = b"pos:\t0\nflags:\t04002\nmnt_id:\t17\nino:\t1038\nclockid: 1\nticks: 10\nsettime flags: 03\nit_value: (3599, 175054352)\nit_interval: (0, 2000000)\n";
        let mut t = Timerfd::parse(text).unwrap();
        assert_eq!(
            t,
            Timerfd {
                clockid: 1,
                ticks: 10,
                settime_flags: 3,
                value_ns: 3_599_175_054_352,
                interval_ns: 2_000_000,
                clock_ns: 0
            }
        );
        t.clock_ns = 1_700_000_000_123_456_789;
        let back: Timerfd = serde_json::from_str(&json_of(|j| t.write_json(j))).unwrap();
        assert_eq!(back, t);
        assert!(Timerfd::parse(b"clockid: 1\nticks: 1\n").is_none());
    }

    fn set(fd: i32, flags: i32, value_ns: u64, interval_ns: u64) {
        let its = libc::itimerspec {
            it_interval: timespec(interval_ns),
            it_value: timespec(value_ns),
        };
        // SAFETY: valid itimerspec.
        let r = unsafe { libc::timerfd_settime(fd, flags, &its, core::ptr::null_mut()) };
        assert_eq!(r, 0);
    }

    fn live_one(clock: i32) -> (i32, Timerfd) {
        // SAFETY: timerfd_create takes no pointers.
        let fd = unsafe { libc::timerfd_create(clock, libc::TFD_NONBLOCK) };
        assert!(fd >= 0);
        (fd, Timerfd::default())
    }

    fn captured(fd: i32) -> Timerfd {
        let Object::Timerfd(t) = capture_live(fd).unwrap() else {
            panic!("not a timerfd")
        };
        t
    }

    fn read_ticks(fd: i32) -> u64 {
        let mut v = 0u64;
        // SAFETY: reading 8 bytes into a local.
        let n = unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) };
        if n == 8 { v } else { 0 }
    }

    #[test]
    fn live() {
        // An expired one-shot timer with its expiration unread.
        let (a, _) = live_one(libc::CLOCK_MONOTONIC);
        set(a, 0, 1, 0);
        std::thread::sleep(std::time::Duration::from_millis(5));
        let ta = captured(a);
        assert_eq!((ta.ticks, ta.value_ns, ta.interval_ns), (1, 0, 0));
        let na = ta.create(libc::O_NONBLOCK as u32).unwrap();
        assert_eq!(read_ticks(na), 1);
        assert_eq!(read_ticks(na), 0);

        // A periodic timer that expired several times, unread.
        let (b, _) = live_one(libc::CLOCK_MONOTONIC);
        set(b, 0, 1, 40_000_000);
        std::thread::sleep(std::time::Duration::from_millis(100));
        let tb = captured(b);
        assert!(tb.ticks >= 3, "{tb:?}");
        assert!(tb.value_ns > 0 && tb.value_ns <= 40_000_000, "{tb:?}");
        let nb = tb.create(libc::O_NONBLOCK as u32).unwrap();
        let rb = read_ticks(nb);
        assert!(rb >= tb.ticks && rb <= tb.ticks + 1, "{rb} {tb:?}");

        // A wall-clock time one hour ahead, cancelled if the clock is set.
        let (c, _) = live_one(libc::CLOCK_REALTIME);
        let abs = now_ns(libc::CLOCK_REALTIME) + 3600 * NS;
        set(
            c,
            (TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET) as i32,
            abs,
            0,
        );
        let tc = captured(c);
        assert_eq!(tc.settime_flags, 3);
        let got = tc.clock_ns + tc.value_ns;
        assert!(got.abs_diff(abs) < 5_000_000, "{got} vs {abs}");
        let nc = tc.create(0).unwrap();
        let again = captured(nc);
        assert_eq!(again.settime_flags, 3);
        assert!((again.clock_ns + again.value_ns).abs_diff(abs) < 5_000_000);

        // A relative monotonic timer keeps its time left; a disarmed one stays so.
        let (d, _) = live_one(libc::CLOCK_BOOTTIME);
        set(d, 0, 3600 * NS, 60 * NS);
        let td = captured(d);
        let nd = captured(td.create(0).unwrap());
        assert!(nd.value_ns <= td.value_ns && td.value_ns - nd.value_ns < 100_000_000);
        assert_eq!(
            (nd.interval_ns, nd.settime_flags, nd.ticks),
            (60 * NS, 0, 0)
        );
        let (e, _) = live_one(libc::CLOCK_MONOTONIC);
        let te = captured(e);
        assert_eq!((te.ticks, te.value_ns, te.interval_ns), (0, 0, 0));
        let ne = te.create(0).unwrap();
        assert!(fdinfo(ne).contains("it_value: (0, 0)"));
    }
}
