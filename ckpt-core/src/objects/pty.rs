//! Pseudo-terminals the job made itself: a master (`/dev/ptmx`) held by a
//! process of the job and its slave (`/dev/pts/N`) held by others, as
//! `mpirun` does for its ranks' output, or `script`, `expect`, a Python
//! `pty.spawn`. A slave whose master is outside the job is the user's
//! terminal (or tmux's): the restart gives its own terminal instead, and
//! this module is not involved.
//!
//! Capture (in the stop handler, **async-signal-safe**): the descriptor's
//! pseudo-terminal, named by the devpts instance it lives in and its index
//! (a master's index from `TIOCGPTN`, its instance the `pts` directory next
//! to the `ptmx` it was opened as: nothing is opened on the pair, as even a
//! moment's open and close of a slave tells the master its other end
//! closed), whether it is the master, the bytes waiting to be read at that
//! end (`FIONREAD`) and the window size. Its termios words are saved with
//! every terminal (the `termios` field of the fd).
//!
//! Checkpoint: a pair is the job's when some process holds its master.
//! Bytes waiting in such a pair are refused (passing: the reader takes them
//! within moments); so is a process whose controlling terminal is such a
//! pair (not restored yet).
//!
//! Restore (the restart's init, before the processes are forked): a new
//! pair per saved pair ([`open_pair`]), with the termios and window size;
//! every master descriptor takes the new master, every slave descriptor a
//! new slave opened from it ([`open_peer`]; one per open file description).
//! The new slave's index may differ: programs hold descriptors, not names.
//!
//! Kernel facts: `docs/kernel.md` §13.

use core::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::signal_safe::buf::MmapBuf;
use crate::signal_safe::raw::{self, Errno};

/// `TIOCGPTN`: the index of a master's slave.
const TIOCGPTN: u64 = 0x8004_5430;
/// `TIOCSPTLCK`: lock or unlock a master's slave.
const TIOCSPTLCK: u64 = 0x4004_5431;
/// `TIOCGPTPEER` (Linux 4.13): open the slave of a master.
const TIOCGPTPEER: u64 = 0x5441;
/// How a master is named (`/dev/ptmx`, `/dev/pts/ptmx`); `TIOCGPTN` alone
/// does not tell, as it answers for a slave too (through `/dev/tty`).
const PTMX: &[u8] = b"/ptmx";
/// Major device numbers of pseudo-terminal slaves (`UNIX98_PTY_SLAVE_MAJOR`
/// and the seven after it).
const SLAVE_MAJORS: core::ops::RangeInclusive<u32> = 136..=143;

/// One end of a pseudo-terminal.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Pty {
    /// The devpts instance (`st_dev` of the slave).
    pub devpts: u64,
    /// The slave's index (`/dev/pts/<index>`).
    pub index: u32,
    /// The master end (else the slave).
    pub master: bool,
    /// Bytes waiting to be read at this end.
    #[serde(default)]
    pub queued: u32,
    /// `struct winsize`: rows, columns, x and y pixels.
    #[serde(default)]
    pub winsize: [u16; 4],
}

/// The index of the pseudo-terminal slave with device number
/// `major:minor` (`/dev/pts/<index>`), or `None` for another device.
pub fn slave_index(major: u32, minor: u32) -> Option<u32> {
    SLAVE_MAJORS
        .contains(&major)
        .then(|| (major - 136) * 256 + minor)
}

impl Pty {
    /// The pair this end belongs to.
    pub fn pair(&self) -> (u64, u32) {
        (self.devpts, self.index)
    }

    /// Capture the pseudo-terminal end `fd` (whose `fstat` is `st` and
    /// whose link in `/proc/self/fd` is `path`), or `None` when it is no
    /// pseudo-terminal (a console, a serial line, `/dev/tty`).
    /// **Async-signal-safe.**
    pub fn capture(fd: i32, st: &libc::stat, path: &[u8]) -> Option<Pty> {
        let slave = slave_index(libc::major(st.st_rdev), libc::minor(st.st_rdev));
        let (devpts, index, master) = if let Some(index) = slave {
            (st.st_dev, index, false)
        } else if path.ends_with(PTMX) {
            let mut n: u32 = 0;
            // SAFETY: TIOCGPTN writes one unsigned int into n.
            unsafe { raw::ioctl(fd, TIOCGPTN, &mut n as *mut u32 as usize) }.ok()?;
            (devpts_of_master(st, path)?, n, true)
        } else {
            return None;
        };
        let mut queued: i32 = 0;
        // SAFETY: FIONREAD writes one int into queued.
        let _ = unsafe { raw::ioctl(fd, libc::FIONREAD, &mut queued as *mut i32 as usize) };
        let mut ws = [0u16; 4];
        // SAFETY: TIOCGWINSZ writes a struct winsize (four unsigned shorts) into ws.
        let _ = unsafe { raw::ioctl(fd, libc::TIOCGWINSZ, ws.as_mut_ptr() as usize) };
        Some(Pty {
            devpts,
            index,
            master,
            queued: queued.max(0) as u32,
            winsize: ws,
        })
    }

    /// Write it as JSON. **Async-signal-safe.**
    pub fn write(&self, j: &mut MmapBuf) {
        let _ = write!(
            j,
            "{{\"devpts\":{},\"index\":{},\"master\":{},\"queued\":{},\"winsize\":[{},{},{},{}]}}",
            self.devpts,
            self.index,
            self.master,
            self.queued,
            self.winsize[0],
            self.winsize[1],
            self.winsize[2],
            self.winsize[3]
        );
    }
}

/// The devpts instance of a master opened as `path`: its own when it is
/// `<devpts>/ptmx`, else that of the `pts` directory beside it, where the
/// kernel looks for the instance when `/dev/ptmx` is opened.
/// **Async-signal-safe.**
fn devpts_of_master(st: &libc::stat, path: &[u8]) -> Option<u64> {
    let dir = path.get(..path.len() - PTMX.len())?;
    if dir.ends_with(b"/pts") {
        return Some(st.st_dev);
    }
    let mut p = crate::signal_safe::buf::StackBuf::<4200>::new();
    p.push(dir);
    p.push(b"/pts");
    let d = raw::open(
        p.as_cstr(),
        libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        0,
    )
    .ok()?;
    // SAFETY: stat is plain old data; zeroed is valid.
    let mut ds: libc::stat = unsafe { core::mem::zeroed() };
    let r = raw::fstat(d, &mut ds);
    raw::close(d);
    r.ok()?;
    Some(ds.st_dev)
}

/// A new pseudo-terminal: its master (`/dev/ptmx`, opened with `flags`
/// beyond `O_RDWR | O_NOCTTY | O_CLOEXEC`) with its slave unlocked, the
/// slave's terminal settings `termios` (15 words of `struct termios`, when
/// given) and the window size.
pub fn open_pair(flags: i32, termios: &[u32], winsize: [u16; 4]) -> Result<i32, Errno> {
    let m = raw::open(
        b"/dev/ptmx\0",
        libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC | (flags & libc::O_NONBLOCK),
        0,
    )?;
    let set = || -> Result<(), Errno> {
        let unlock: i32 = 0;
        // SAFETY: TIOCSPTLCK reads one int.
        unsafe { raw::ioctl(m, TIOCSPTLCK, &unlock as *const i32 as usize) }?;
        if termios.len() == 15 {
            // SAFETY: TCSETS reads a 60-byte struct termios (15 words).
            unsafe { raw::ioctl(m, libc::TCSETS, termios.as_ptr() as usize) }?;
        }
        // SAFETY: TIOCSWINSZ reads a struct winsize (four unsigned shorts).
        unsafe { raw::ioctl(m, libc::TIOCSWINSZ, winsize.as_ptr() as usize) }?;
        Ok(())
    };
    if let Err(e) = set() {
        raw::close(m);
        return Err(e);
    }
    Ok(m)
}

/// A new open file description of the slave of `master`, with the access
/// mode and `O_NONBLOCK` of `flags` (never becoming a controlling terminal).
pub fn open_peer(master: i32, flags: i32) -> Result<i32, Errno> {
    let f = (flags & (libc::O_ACCMODE | libc::O_NONBLOCK)) | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: TIOCGPTPEER takes open flags and returns a new descriptor.
    unsafe { raw::ioctl(master, TIOCGPTPEER, f as usize) }.map(|fd| fd as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fstat(fd: i32) -> libc::stat {
        // SAFETY: stat is plain old data; zeroed is valid.
        let mut st: libc::stat = unsafe { core::mem::zeroed() };
        raw::fstat(fd, &mut st).expect("fstat");
        st
    }

    fn capture(fd: i32) -> Option<Pty> {
        let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).expect("link");
        Pty::capture(
            fd,
            &fstat(fd),
            std::os::unix::ffi::OsStrExt::as_bytes(link.as_os_str()),
        )
    }

    fn read_all(fd: i32, want: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 256];
        while out.len() < want {
            // SAFETY: reading into our buffer.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            assert!(n > 0, "read: {}", std::io::Error::last_os_error());
            out.extend_from_slice(&buf[..n as usize]);
        }
        out
    }

    #[test]
    fn both_ends_name_one_pair_and_the_state_round_trips() {
        let m = open_pair(0, &[], [24, 80, 0, 0]).expect("a pseudo-terminal");
        let s = open_peer(m, libc::O_RDWR).expect("its slave");
        // Bytes the slave wrote wait at the master.
        // SAFETY: writing our buffer to our descriptor.
        assert_eq!(unsafe { libc::write(s, b"abc".as_ptr().cast(), 3) }, 3);
        std::thread::sleep(std::time::Duration::from_millis(50));
        let pm = capture(m).expect("master captured");
        let ps = capture(s).expect("slave captured");
        assert!(pm.master && !ps.master);
        assert_eq!(pm.pair(), ps.pair(), "one pair from either end");
        // Output processing (ONLCR) is on: no newline, so 3 bytes.
        assert_eq!((pm.queued, ps.queued), (3, 0));
        assert_eq!(pm.winsize, [24, 80, 0, 0]);
        for p in [pm, ps] {
            let mut j = MmapBuf::new();
            p.write(&mut j);
            let back: Pty = serde_json::from_slice(j.as_slice()).expect("parse");
            assert_eq!(back, p);
            j.free();
        }
        raw::close(s);
        raw::close(m);
    }

    #[test]
    fn capturing_a_master_leaves_its_pair_as_it_was() {
        // A master whose slave was never opened: a read finds nothing yet
        // (EAGAIN). Opening and closing the slave, even for a moment, would
        // turn that into EIO (the other end closed) for the program.
        let m = open_pair(libc::O_NONBLOCK, &[], [0; 4]).expect("a pseudo-terminal");
        let p = capture(m).expect("master captured");
        assert!(p.master);
        let mut b = [0u8; 8];
        // SAFETY: reading into our buffer.
        let n = unsafe { libc::read(m, b.as_mut_ptr().cast(), b.len()) };
        let e = std::io::Error::last_os_error().raw_os_error();
        assert_eq!((n, e), (-1, Some(libc::EAGAIN)));
        raw::close(m);
    }

    #[test]
    fn a_new_pair_carries_the_settings_and_joins_its_ends() {
        let m0 = open_pair(0, &[], [0; 4]).expect("a pseudo-terminal");
        let mut t = [0u32; 15];
        // SAFETY: TCGETS writes a 60-byte struct termios into t.
        unsafe { raw::ioctl(m0, libc::TCGETS, t.as_mut_ptr() as usize) }.expect("TCGETS");
        // Raw-ish: no echo, no output processing (what mpirun sets).
        t[1] &= !libc::OPOST;
        t[3] &= !(libc::ECHO | libc::ICANON);
        raw::close(m0);
        let m = open_pair(libc::O_NONBLOCK, &t, [50, 132, 0, 0]).expect("a new pair");
        let s = open_peer(m, libc::O_WRONLY).expect("its slave");
        let mut got = [0u32; 15];
        // SAFETY: TCGETS writes a 60-byte struct termios into got.
        unsafe { raw::ioctl(s, libc::TCGETS, got.as_mut_ptr() as usize) }.expect("TCGETS");
        assert_eq!(got[1] & libc::OPOST, 0);
        assert_eq!(got[3] & libc::ECHO, 0);
        let p = capture(s).expect("slave captured");
        assert_eq!(p.winsize, [50, 132, 0, 0]);
        // SAFETY: writing our buffer to our descriptor.
        assert_eq!(unsafe { libc::write(s, b"x\ny\n".as_ptr().cast(), 4) }, 4);
        // The master is non-blocking as asked: wait for the bytes first.
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(read_all(m, 4), b"x\ny\n", "no output processing");
        raw::close(s);
        raw::close(m);
    }
}
