//! signalfd: a descriptor that reads the signals of a mask.
//!
//! fdinfo: `sigmask: <16 hex digits>` (bit n-1 = signal n). `O_NONBLOCK` is
//! in the file status flags.
//!
//! The signals themselves are not in the signalfd: they are pending in the
//! process that reads it. The image keeps them with the process
//! (`shared_pending` from `ShdPnd`, each thread's `pending` from `SigPnd`)
//! and the restore queues them again (`preload::finish`) while every thread
//! still blocks all signals, so they are readable from the restored
//! signalfd. What the kernel does not show is not kept: the sender
//! (`ssi_pid`, `ssi_uid`, `ssi_code` become those of a signal the process
//! sent itself), the value of a `sigqueue`, and the second and later
//! instances of a real-time signal queued several times.
//!
//! Restore: `signalfd(-1, mask, SFD_NONBLOCK?)`.

use core::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::{Capture, Kind, check_fd, hex, line_value, nonblocking};
use crate::signal_safe::buf::MmapBuf;
use crate::signal_safe::raw::Errno;

/// A signalfd's state.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Signalfd {
    /// The signals it reads (bit n-1 = signal n).
    pub mask: u64,
}

impl Signalfd {
    /// Parse fdinfo text. **Async-signal-safe.**
    pub fn parse(info: &[u8]) -> Option<Signalfd> {
        Some(Signalfd {
            mask: line_value(info, b"sigmask").and_then(hex)?,
        })
    }

    /// Write as JSON. **Async-signal-safe.**
    pub fn write_json(&self, j: &mut MmapBuf) {
        let _ = write!(j, "{{\"mask\":{}}}", self.mask);
    }
}

impl Kind for Signalfd {
    const LINK: &'static [u8] = b"anon_inode:[signalfd]";
    const TAG: &'static str = "signalfd";
    const WHAT: &'static str = "a signalfd";

    fn capture(cx: &mut Capture<'_>) -> Result<(), Errno> {
        let s = Signalfd::parse(cx.fdinfo()).ok_or(Errno(libc::EINVAL))?;
        s.write_json(cx.json());
        Ok(())
    }

    fn create(&self, flags: u32) -> Result<i32, String> {
        let mut f = libc::SFD_CLOEXEC;
        if nonblocking(flags) {
            f |= libc::SFD_NONBLOCK;
        }
        // The kernel's sigset_t: 8 bytes on x86_64.
        let mask = self.mask;
        // SAFETY: signalfd4 reads an 8-byte mask from a local.
        let r = unsafe {
            libc::syscall(
                libc::SYS_signalfd4,
                -1,
                &mask as *const u64,
                core::mem::size_of::<u64>(),
                f,
            )
        };
        check_fd(r as i32, "signalfd")
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{capture_live, fdinfo, json_of};
    use super::super::{Kind, Object};
    use super::*;

    #[test]
    fn round_trip() {
        let text = b"pos:\t0\nflags:\t04002\nmnt_id:\t17\nino:\t1038\nsigmask:\t0000000400000200\n";
        let s = Signalfd::parse(text).unwrap();
        assert_eq!(s.mask, 0x0000_0004_0000_0200);
        let back: Signalfd = serde_json::from_str(&json_of(|j| s.write_json(j))).unwrap();
        assert_eq!(back, s);
        assert!(Signalfd::parse(b"flags: 02\n").is_none());
    }

    #[test]
    fn live() {
        // SIGUSR1 and SIGRTMIN+1 (35), not blocked: a signalfd does not need that.
        let mask: u64 = (1 << (libc::SIGUSR1 - 1)) | (1 << 34);
        // SAFETY: signalfd4 reads 8 bytes from a local.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_signalfd4,
                -1,
                &mask as *const u64,
                8,
                libc::SFD_NONBLOCK,
            )
        } as i32;
        assert!(fd >= 0);
        let Object::Signalfd(s) = capture_live(fd).unwrap() else {
            panic!("not a signalfd")
        };
        assert_eq!(s.mask, mask);
        let new = s.create(libc::O_NONBLOCK as u32 | 2).unwrap();
        let sigmask = |fd| {
            fdinfo(fd)
                .lines()
                .filter(|l| l.starts_with("sigmask") || l.starts_with("flags"))
                .map(|l| l.replace("02004002", "04002"))
                .collect::<Vec<_>>()
        };
        assert_eq!(sigmask(fd), sigmask(new));
        // SAFETY: closing our descriptors.
        unsafe {
            libc::close(fd);
            libc::close(new);
        }
    }
}
