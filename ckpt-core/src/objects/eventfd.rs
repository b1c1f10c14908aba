//! eventfd: a 64-bit counter, optionally in semaphore mode.
//!
//! fdinfo: `eventfd-count: <hex>` and, since Linux 6.7,
//! `eventfd-semaphore: 0|1` (older kernels do not show the mode: it is then
//! saved as off). `O_NONBLOCK` is in the file status flags.
//!
//! Restore: `eventfd(count, EFD_SEMAPHORE? | EFD_NONBLOCK?)`; a count above
//! `u32::MAX` (the argument of eventfd(2) is an unsigned int) is written to
//! the new eventfd instead, which adds it to the counter.

use core::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::{Capture, Kind, check_fd, close_on_error, hex, line_value, nonblocking};
use crate::signal_safe::buf::MmapBuf;
use crate::signal_safe::raw::Errno;

/// The largest value an eventfd counter holds.
const MAX_COUNT: u64 = u64::MAX - 1;

/// An eventfd's state.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Eventfd {
    /// The counter.
    pub count: u64,
    /// `EFD_SEMAPHORE`: each read takes 1.
    #[serde(default)]
    pub semaphore: bool,
}

impl Eventfd {
    /// Parse fdinfo text. **Async-signal-safe.**
    pub fn parse(info: &[u8]) -> Option<Eventfd> {
        Some(Eventfd {
            count: line_value(info, b"eventfd-count").and_then(hex)?,
            semaphore: line_value(info, b"eventfd-semaphore") == Some(b"1"),
        })
    }

    /// Write as JSON. **Async-signal-safe.**
    pub fn write_json(&self, j: &mut MmapBuf) {
        let _ = write!(
            j,
            "{{\"count\":{},\"semaphore\":{}}}",
            self.count, self.semaphore
        );
    }
}

impl Kind for Eventfd {
    const LINK: &'static [u8] = b"anon_inode:[eventfd]";
    const TAG: &'static str = "eventfd";
    const WHAT: &'static str = "an eventfd";

    fn capture(cx: &mut Capture<'_>) -> Result<(), Errno> {
        let e = Eventfd::parse(cx.fdinfo()).ok_or(Errno(libc::EINVAL))?;
        e.write_json(cx.json());
        Ok(())
    }

    fn validate(&self) -> Result<(), String> {
        if self.count > MAX_COUNT {
            return Err(format!("its counter {} is out of range", self.count));
        }
        Ok(())
    }

    fn create(&self, flags: u32) -> Result<i32, String> {
        self.validate()?;
        let mut f = libc::EFD_CLOEXEC;
        if self.semaphore {
            f |= libc::EFD_SEMAPHORE;
        }
        if nonblocking(flags) {
            f |= libc::EFD_NONBLOCK;
        }
        let initial = u32::try_from(self.count).unwrap_or(0);
        // SAFETY: eventfd takes no pointers.
        let fd = check_fd(unsafe { libc::eventfd(initial, f) }, "eventfd")?;
        if u64::from(initial) == self.count {
            return Ok(fd);
        }
        let v = self.count.to_ne_bytes();
        // SAFETY: writing 8 bytes from a local array to our eventfd (never
        // blocks: the counter is 0 and the value below the maximum).
        let n = unsafe { libc::write(fd, v.as_ptr().cast(), v.len()) };
        let r = if n == 8 {
            Ok(fd)
        } else {
            Err(format!(
                "cannot set the eventfd counter to {}: {}",
                self.count,
                super::last_error()
            ))
        };
        close_on_error(fd, r)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{capture_live, fdinfo, json_of};
    use super::super::{Kind, Object};
    use super::*;

    #[test]
    fn round_trip() {
        let text = b"pos:\t0\nflags:\t04002\nmnt_id:\t17\nino:\t1038\neventfd-count:       fffffffe07\neventfd-id: 1\neventfd-semaphore: 1\n";
        let e = Eventfd::parse(text).unwrap();
        assert_eq!(
            e,
            Eventfd {
                count: 0xfffffffe07,
                semaphore: true
            }
        );
        let back: Eventfd = serde_json::from_str(&json_of(|j| e.write_json(j))).unwrap();
        assert_eq!(back, e);
        // A kernel without eventfd-semaphore.
        let old = Eventfd::parse(b"eventfd-count:                5\n").unwrap();
        assert_eq!(
            old,
            Eventfd {
                count: 5,
                semaphore: false
            }
        );
        assert!(Eventfd::parse(b"flags: 02\n").is_none());
    }

    #[test]
    fn live() {
        for (count, flags, sem) in [
            (7u64, libc::EFD_SEMAPHORE | libc::EFD_NONBLOCK, true),
            (0x1_0000_0005, 0, false),
        ] {
            // SAFETY: eventfd takes no pointers.
            let fd = unsafe { libc::eventfd(0, flags) };
            assert!(fd >= 0);
            let v = count.to_ne_bytes();
            // SAFETY: 8 bytes from a local array.
            assert_eq!(unsafe { libc::write(fd, v.as_ptr().cast(), 8) }, 8);
            let Object::Eventfd(e) = capture_live(fd).unwrap() else {
                panic!("not an eventfd")
            };
            assert_eq!(
                e,
                Eventfd {
                    count,
                    semaphore: sem
                }
            );
            let saved_flags = super::super::line_value(fdinfo(fd).as_bytes(), b"flags")
                .and_then(super::super::oct)
                .unwrap() as u32;
            let new = e.create(saved_flags).unwrap();
            let a = fdinfo(fd);
            let b = fdinfo(new);
            let strip = |s: &str| {
                s.lines()
                    .filter(|l| {
                        !l.starts_with("eventfd-id")
                            && !l.starts_with("ino")
                            && !l.starts_with("mnt_id")
                    })
                    .map(|l| l.replace("02004002", "04002").replace("02000002", "02"))
                    .collect::<Vec<_>>()
            };
            assert_eq!(strip(&a), strip(&b));
            // SAFETY: closing our descriptors.
            unsafe {
                libc::close(fd);
                libc::close(new);
            }
        }
    }
}
