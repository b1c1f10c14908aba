//! epoll: an interest list of (descriptor, events, data) registrations and
//! a ready list.
//!
//! fdinfo: one line per registration, in the kernel's tree order:
//! `tfd: N events: X data: Y pos: P ino: I sdev: D` (hexadecimal `events`,
//! `data`, `ino`, `sdev`). `tfd` is the descriptor number the file had when
//! it was registered, in the process that registered it; `events` holds
//! `EPOLLET`, `EPOLLONESHOT`, `EPOLLEXCLUSIVE`, and for a one-shot
//! registration that fired, no event bit at all (disabled until
//! `EPOLL_CTL_MOD`).
//!
//! Capture, per registration:
//! - whether the descriptor number still holds the registered file, asked
//!   with `kcmp(KCMP_EPOLL_TFD)` (or, without kcmp, by device and inode):
//!   `target` is `open`, `closed` or `replaced`; the coordinator refuses the
//!   checkpoint unless every target is `open` ([`Kind::validate`]), since
//!   registrations are recreated through descriptor numbers;
//! - `ready`: whether it was on the ready list. Only edge-triggered
//!   registrations need it (a level-triggered or an armed one-shot
//!   registration is ready exactly when its target is; an edge-triggered
//!   one is ready only if an edge came after the last `epoll_wait` that
//!   reported it). The kernel does not show the ready list, so when the
//!   instance has edge-triggered registrations the capture takes it with
//!   `epoll_wait(timeout 0)` and puts back at once what that consumed:
//!   edge-triggered and one-shot registrations it reported are armed again
//!   with `EPOLL_CTL_MOD` (`EPOLL_CTL_DEL` + `EPOLL_CTL_ADD` for
//!   `EPOLLEXCLUSIVE` ones, which cannot be modified), which polls their
//!   target and puts them back on the ready list. The reported events are
//!   matched to registrations by `data`; when several edge-triggered
//!   registrations share one `data`, they are all taken as ready (at worst
//!   one more edge is reported, which edge-triggered programs handle).
//!   This is done only when every target is a pipe, a FIFO, a character
//!   device, an eventfd, a timerfd, or an epoll instance whose targets all
//!   are such, whose poll answers the same whoever asks: `epoll_wait` drops
//!   from the ready list what its poll says is not ready, and a signalfd
//!   polled from the checkpointing thread or a snapshot child looks at
//!   *their* pending signals. Otherwise every edge-triggered registration
//!   is taken as ready (again: at worst one more edge after a restart).
//!
//! Restore ([`Kind::connect`], once every descriptor of the process exists,
//! so that targets that are eventfds, timerfds, signalfds, pipes or other
//! epoll instances are all in place with their state; an epoll instance
//! registered in another is connected first, [`Kind::depends_on`]):
//! 1. edge-triggered registrations that were not ready, and one-shot
//!    registrations that had fired, are added first (the latter with every
//!    event bit), and `epoll_wait(timeout 0)` takes whatever is ready: that
//!    consumes the edges and disables the fired one-shots exactly as the
//!    program left them. A disabled one-shot whose target is not ready at
//!    all cannot be disabled that way; it is set to its saved events with
//!    `EPOLL_CTL_MOD`, which the kernel always extends by `EPOLLERR` and
//!    `EPOLLHUP`: it stays silent except for an error or hang-up;
//! 2. every other registration is added with its saved events and data:
//!    the kernel polls the target, so what was ready (the target's restored
//!    state: a counter, buffered bytes, pending expirations) is ready again.
//!
//! Not kept: the order of the ready list (which ready registration one
//! `epoll_wait` reports first); a signalfd target is ready only once the
//! restore has queued the process's pending signals again, which for an
//! edge-triggered registration is a new edge.

use core::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::{Capture, Kind, check_fd, close_on_error, dec, hex, pair};
use crate::signal_safe::buf::{MmapBuf, StackBuf};
use crate::signal_safe::procfs;
use crate::signal_safe::raw::{self, Errno};

const EPOLLERR: u32 = 0x008;
const EPOLLHUP: u32 = 0x010;
const EPOLLEXCLUSIVE: u32 = 1 << 28;
const EPOLLWAKEUP: u32 = 1 << 29;
const EPOLLONESHOT: u32 = 1 << 30;
const EPOLLET: u32 = 1 << 31;
/// Bits that are not events.
const PRIVATE: u32 = EPOLLEXCLUSIVE | EPOLLWAKEUP | EPOLLONESHOT | EPOLLET;
/// Every event a target can report.
const ALL_EVENTS: u32 = 0x001 | 0x002 | 0x004 | 0x040 | 0x080 | 0x100 | 0x200 | 0x400 | 0x2000;

const NR_EPOLL_WAIT: usize = 232;
const NR_EPOLL_CTL: usize = 233;
const NR_KCMP: usize = 312;
const KCMP_EPOLL_TFD: usize = 7;
/// `struct epoll_event` is packed on x86_64.
const EVENT_LEN: usize = 12;

/// Whether the descriptor number of a registration still holds the file
/// that was registered.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// It does.
    #[default]
    Open,
    /// No descriptor has that number any more.
    Closed,
    /// The number now refers to another file.
    Replaced,
}

/// One registration.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Item {
    /// The descriptor number of the target.
    pub tfd: i32,
    /// `EPOLL*` bits, including `EPOLLET`, `EPOLLONESHOT`, `EPOLLEXCLUSIVE`.
    pub events: u32,
    /// The user data.
    pub data: u64,
    /// Inode of the target (as fdinfo shows it).
    pub ino: u64,
    /// Device of the target's file system (kernel encoding, as fdinfo shows it).
    pub sdev: u64,
    /// Whether `tfd` still holds the target.
    #[serde(default)]
    pub target: Target,
    /// It was on the ready list (known only when the instance has
    /// edge-triggered registrations; used only for those).
    #[serde(default)]
    pub ready: bool,
}

impl Item {
    /// Parse one `tfd:` line of fdinfo. **Async-signal-safe.**
    pub fn parse(line: &[u8]) -> Option<Item> {
        Some(Item {
            tfd: i32::try_from(pair(line, b"tfd").and_then(dec)?).ok()?,
            events: u32::try_from(pair(line, b"events").and_then(hex)?).ok()?,
            data: pair(line, b"data").and_then(hex)?,
            ino: pair(line, b"ino").and_then(hex).unwrap_or(0),
            sdev: pair(line, b"sdev").and_then(hex).unwrap_or(0),
            target: Target::Open,
            ready: false,
        })
    }

    /// Write as JSON. **Async-signal-safe.**
    pub fn write_json(&self, j: &mut MmapBuf) {
        let target = match self.target {
            Target::Open => "open",
            Target::Closed => "closed",
            Target::Replaced => "replaced",
        };
        let _ = write!(
            j,
            "{{\"tfd\":{},\"events\":{},\"data\":{},\"ino\":{},\"sdev\":{},\"target\":\"{target}\",\"ready\":{}}}",
            self.tfd, self.events, self.data, self.ino, self.sdev, self.ready
        );
    }

    /// It reports something (a fired one-shot registration does not).
    fn enabled(&self) -> bool {
        self.events & !PRIVATE != 0
    }

    /// Edge-triggered, not one-shot, enabled.
    fn edge(&self) -> bool {
        self.events & EPOLLET != 0 && self.events & EPOLLONESHOT == 0 && self.enabled()
    }

    /// A one-shot registration that fired.
    fn disabled(&self) -> bool {
        self.events & EPOLLONESHOT != 0 && !self.enabled()
    }
}

/// The `tfd:` lines of epoll fdinfo text.
fn item_lines(info: &[u8]) -> impl Iterator<Item = &[u8]> {
    procfs::lines(info).filter(|l| l.starts_with(b"tfd:"))
}

/// An epoll instance's interest list.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Epoll {
    /// Registrations, in fdinfo order.
    pub items: Vec<Item>,
}

impl Epoll {
    /// Parse fdinfo text (every target `open`, nothing `ready`).
    pub fn parse(info: &[u8]) -> Option<Epoll> {
        item_lines(info)
            .map(Item::parse)
            .collect::<Option<Vec<_>>>()
            .map(|items| Epoll { items })
    }
}

// ---- capture (async-signal-safe) ----

/// Per-item capture state, one byte each.
const ST_CLOSED: u8 = 1;
const ST_REPLACED: u8 = 2;
const ST_READY: u8 = 4;

/// The kernel encoding of a device number (`MKDEV`) from `st_dev`.
fn kernel_dev(st_dev: u64) -> u64 {
    let major = ((st_dev >> 8) & 0xfff) | ((st_dev >> 32) & !0xfff);
    let minor = (st_dev & 0xff) | ((st_dev >> 12) & !0xff);
    (major << 20) | minor
}

/// Whether descriptor `it.tfd` of this process is the `toff`-th file
/// registered under that number in `epfd`.
fn target_state(epfd: i32, it: &Item, toff: u32) -> Target {
    let slot = [epfd as u32, it.tfd as u32, toff];
    let pid = raw::getpid();
    // SAFETY: kcmp reads a struct kcmp_epoll_slot (3 u32) from slot.
    let r = unsafe {
        raw::syscall6(
            NR_KCMP,
            pid as usize,
            pid as usize,
            KCMP_EPOLL_TFD,
            it.tfd as usize,
            slot.as_ptr() as usize,
            0,
        )
    };
    match r {
        Ok(0) => Target::Open,
        Ok(_) => Target::Replaced,
        Err(Errno(libc::EBADF)) => Target::Closed,
        Err(_) => {
            // No kcmp: compare device and inode.
            // SAFETY: stat is plain old data; zeroed is valid.
            let mut st: libc::stat = unsafe { core::mem::zeroed() };
            match raw::fstat(it.tfd, &mut st) {
                Err(_) => Target::Closed,
                Ok(()) if st.st_ino == it.ino && kernel_dev(st.st_dev) == it.sdev => Target::Open,
                Ok(()) => Target::Replaced,
            }
        }
    }
}

/// Whether polling this target from here (the checkpointing thread, or a
/// snapshot child) says what it would say to the program, so that an
/// `epoll_wait` here leaves the ready list as the program's own would: true
/// for pipes, FIFOs, character devices, eventfds, timerfds, and epoll
/// instances whose own targets all are (polling an epoll instance drops
/// not-ready entries from its ready list, as its own `epoll_wait` would,
/// and consumes nothing). Not for a signalfd (its poll looks at the pending
/// signals of the polling thread: an `epoll_wait` from another thread or
/// process would drop it from the ready list while a signal is pending for
/// the program), nor anything unknown. `depth` bounds the nesting (the
/// kernel allows 4 levels).
fn poll_is_neutral(tfd: i32, depth: u32) -> bool {
    // SAFETY: stat is plain old data; zeroed is valid.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    if raw::fstat(tfd, &mut st).is_err() {
        return false;
    }
    let fmt = st.st_mode & libc::S_IFMT;
    if fmt == libc::S_IFIFO || fmt == libc::S_IFCHR {
        return true;
    }
    let mut p = StackBuf::<64>::new();
    let _ = write!(p, "/proc/self/fd/{tfd}");
    let mut link = [0u8; 64];
    let Ok(n) = raw::readlink(p.as_cstr(), &mut link) else {
        return false;
    };
    let link = link.get(..n).unwrap_or(&[]);
    if link == <Epoll as Kind>::LINK {
        return depth < 5 && epoll_is_neutral(tfd, depth + 1);
    }
    link == <super::eventfd::Eventfd as Kind>::LINK
        || link == <super::timerfd::Timerfd as Kind>::LINK
}

/// Every target of the epoll instance `epfd` is open and neutral
/// ([`poll_is_neutral`]).
fn epoll_is_neutral(epfd: i32, depth: u32) -> bool {
    let mut info = MmapBuf::new();
    let mut p = StackBuf::<64>::new();
    let _ = write!(p, "/proc/self/fdinfo/{epfd}");
    let ok = info.read_file(p.as_cstr()).is_ok()
        && item_lines(info.as_slice()).all(|l| {
            Item::parse(l).is_some_and(|it| {
                target_state(epfd, &it, 0) == Target::Open && poll_is_neutral(it.tfd, depth)
            })
        });
    info.free();
    ok
}

fn ctl(epfd: i32, op: i32, tfd: i32, events: u32, data: u64) -> Result<(), Errno> {
    let mut ev = [0u8; EVENT_LEN];
    ev[..4].copy_from_slice(&events.to_ne_bytes());
    ev[4..].copy_from_slice(&data.to_ne_bytes());
    // SAFETY: epoll_ctl reads a packed struct epoll_event (12 bytes) from ev.
    unsafe {
        raw::syscall6(
            NR_EPOLL_CTL,
            epfd as usize,
            op as usize,
            tfd as usize,
            ev.as_ptr() as usize,
            0,
            0,
        )
    }
    .map(|_| ())
}

/// Arm again a registration that a capture-time `epoll_wait` reported.
fn rearm(epfd: i32, it: &Item) {
    if it.events & EPOLLEXCLUSIVE != 0 {
        let _ = ctl(epfd, libc::EPOLL_CTL_DEL, it.tfd, 0, 0);
        let _ = ctl(epfd, libc::EPOLL_CTL_ADD, it.tfd, it.events, it.data);
    } else {
        let _ = ctl(epfd, libc::EPOLL_CTL_MOD, it.tfd, it.events, it.data);
    }
}

fn push_zeros(b: &mut MmapBuf, mut n: usize) -> Result<(), Errno> {
    b.reserve(n)?;
    let zeros = [0u8; 256];
    while n > 0 {
        let k = n.min(zeros.len());
        b.push(zeros.get(..k).unwrap_or(&[]))?;
        n -= k;
    }
    Ok(())
}

struct Scratch {
    seen: MmapBuf,
    state: MmapBuf,
    events: MmapBuf,
}

fn capture_items(
    epfd: i32,
    own: &[i32],
    info: &[u8],
    j: &mut MmapBuf,
    s: &mut Scratch,
) -> Result<(), Errno> {
    let mut n = 0usize;
    let mut max_tfd = 0usize;
    for line in item_lines(info) {
        let it = Item::parse(line).ok_or(Errno(libc::EINVAL))?;
        n += 1;
        max_tfd = max_tfd.max(it.tfd.max(0) as usize);
    }
    // Which descriptor numbers were seen (a number registered twice needs
    // its index among the registrations of that number for kcmp).
    push_zeros(&mut s.seen, max_tfd / 8 + 1)?;
    push_zeros(&mut s.state, n)?;
    let mut all_open = true;
    let mut any_edge = false;
    let mut neutral = true;
    for (k, line) in item_lines(info).enumerate() {
        let it = Item::parse(line).ok_or(Errno(libc::EINVAL))?;
        let t = it.tfd.max(0) as usize;
        let (byte, bit) = (t / 8, 1u8 << (t % 8));
        let seen = s.seen.as_slice().get(byte).copied().unwrap_or(0);
        let toff = if seen & bit == 0 {
            s.seen.overwrite(byte, &[seen | bit]);
            0
        } else {
            item_lines(info)
                .take(k)
                .filter(|l| Item::parse(l).is_some_and(|o| o.tfd == it.tfd))
                .count() as u32
        };
        // A number ckpt holds while writing: the program's descriptor is closed.
        let state = if own.contains(&it.tfd) {
            Target::Closed
        } else {
            target_state(epfd, &it, toff)
        };
        let st = match state {
            Target::Open => 0,
            Target::Closed => ST_CLOSED,
            Target::Replaced => ST_REPLACED,
        };
        all_open &= st == 0;
        any_edge |= it.edge();
        neutral &= st == 0 && poll_is_neutral(it.tfd, 0);
        s.state.overwrite(k, &[st]);
    }
    if any_edge && !neutral {
        // The ready list cannot be read without harm: take every
        // edge-triggered registration as ready (at worst one more edge).
        for (k, line) in item_lines(info).enumerate() {
            if Item::parse(line).is_some_and(|it| it.edge()) {
                let st = s.state.as_slice().get(k).copied().unwrap_or(0);
                s.state.overwrite(k, &[st | ST_READY]);
            }
        }
    }
    // The ready list, for edge-triggered registrations. Never when the
    // checkpoint will be refused anyway (a registration could not be put
    // back through its descriptor number), nor when polling a target here
    // could change it.
    if all_open && any_edge && neutral && n > 0 {
        push_zeros(&mut s.events, n * EVENT_LEN)?;
        let buf = s.events.mapping().0;
        // SAFETY: the buffer holds n packed epoll_events (n * 12 bytes,
        // mapped writable and owned by s.events); epoll_wait with timeout 0
        // writes at most n of them and does not block.
        let got =
            unsafe { raw::syscall6(NR_EPOLL_WAIT, epfd as usize, buf, n, 0, 0, 0) }.unwrap_or(0);
        for e in s.events.as_slice().chunks_exact(EVENT_LEN).take(got) {
            let mut d = [0u8; 8];
            d.copy_from_slice(e.get(4..).unwrap_or(&[0; 8]));
            let data = u64::from_ne_bytes(d);
            for (k, line) in item_lines(info).enumerate() {
                let Some(it) = Item::parse(line) else {
                    continue;
                };
                if it.data != data || !it.enabled() {
                    continue;
                }
                let st = s.state.as_slice().get(k).copied().unwrap_or(0);
                if st & ST_READY != 0 {
                    continue;
                }
                s.state.overwrite(k, &[st | ST_READY]);
                // What epoll_wait consumed: an edge, an armed one-shot.
                if it.events & (EPOLLET | EPOLLONESHOT) != 0 {
                    rearm(epfd, &it);
                }
            }
        }
    }
    let _ = write!(j, "{{\"items\":[");
    for (k, line) in item_lines(info).enumerate() {
        let mut it = Item::parse(line).ok_or(Errno(libc::EINVAL))?;
        let st = s.state.as_slice().get(k).copied().unwrap_or(0);
        it.target = if st & ST_CLOSED != 0 {
            Target::Closed
        } else if st & ST_REPLACED != 0 {
            Target::Replaced
        } else {
            Target::Open
        };
        it.ready = st & ST_READY != 0;
        if k > 0 {
            let _ = write!(j, ",");
        }
        it.write_json(j);
    }
    let _ = write!(j, "]}}");
    Ok(())
}

// ---- restore ----

fn ctl_restore(epfd: i32, op: i32, it: &Item, events: u32) -> Result<(), String> {
    match ctl(epfd, op, it.tfd, events, it.data) {
        Ok(()) | Err(Errno(libc::EEXIST)) => Ok(()),
        Err(e) => Err(format!(
            "cannot register fd {} (events {:#x}) in the epoll instance: {}",
            it.tfd,
            it.events,
            std::io::Error::from_raw_os_error(e.raw())
        )),
    }
}

impl Kind for Epoll {
    const LINK: &'static [u8] = b"anon_inode:[eventpoll]";
    const TAG: &'static str = "epoll";
    const WHAT: &'static str = "an epoll instance";

    fn capture(cx: &mut Capture<'_>) -> Result<(), Errno> {
        let (epfd, own) = (cx.fd, cx.own);
        let (info, j) = cx.split();
        let mut s = Scratch {
            seen: MmapBuf::new(),
            state: MmapBuf::new(),
            events: MmapBuf::new(),
        };
        let r = capture_items(epfd, own, info, j, &mut s);
        s.seen.free();
        s.state.free();
        s.events.free();
        r
    }

    fn validate(&self) -> Result<(), String> {
        for it in &self.items {
            let why = match it.target {
                Target::Open => continue,
                Target::Closed => "was closed after it was registered",
                Target::Replaced => {
                    "was closed after it was registered and its number now refers to another file"
                }
            };
            return Err(format!(
                "the file registered in it as fd {} (events {:#x}) {why}; an epoll registration can only be recreated through the descriptor number it was made with, so keep the descriptor open or remove it from the epoll instance (EPOLL_CTL_DEL) before closing it",
                it.tfd, it.events
            ));
        }
        Ok(())
    }

    fn create(&self, flags: u32) -> Result<i32, String> {
        self.validate()?;
        // SAFETY: epoll_create1 takes no pointers.
        let fd = check_fd(
            unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) },
            "epoll_create1",
        )?;
        if super::nonblocking(flags) {
            // SAFETY: fcntl on our descriptor.
            let r = unsafe { libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK) };
            close_on_error(
                fd,
                if r < 0 {
                    Err(format!("fcntl(O_NONBLOCK): {}", super::last_error()))
                } else {
                    Ok(())
                },
            )?;
        }
        Ok(fd)
    }

    /// Every holder's capture reads the ready list (the processes write
    /// their images at the same time): a registration is ready if any saw
    /// it ready (one capture may have consumed an edge that another was
    /// putting back).
    fn merge(&mut self, other: &Self) {
        if self.items.len() != other.items.len() {
            return;
        }
        for (a, b) in self.items.iter_mut().zip(&other.items) {
            if (a.tfd, a.data, a.ino) == (b.tfd, b.data, b.ino) {
                a.ready |= b.ready;
            }
        }
    }

    fn depends_on(&self) -> Vec<i32> {
        self.items.iter().map(|it| it.tfd).collect()
    }

    fn connect(&self, epfd: i32) -> Result<(), String> {
        let quiet = |it: &&Item| (it.edge() && !it.ready) || it.disabled();
        // 1. Registrations that must not be ready: add, then consume.
        let first: Vec<&Item> = self.items.iter().filter(quiet).collect();
        for it in &first {
            let events = if it.disabled() {
                it.events | ALL_EVENTS
            } else {
                it.events
            };
            ctl_restore(epfd, libc::EPOLL_CTL_ADD, it, events)?;
        }
        if !first.is_empty() {
            let mut buf = vec![libc::epoll_event { events: 0, u64: 0 }; first.len()];
            for _ in 0..=first.len() {
                // SAFETY: buf holds first.len() events; timeout 0.
                let n = unsafe { libc::epoll_wait(epfd, buf.as_mut_ptr(), buf.len() as i32, 0) };
                if n <= 0 {
                    break;
                }
            }
        }
        if first.iter().any(|it| it.disabled()) {
            // Fired one-shots whose target was not ready are still armed.
            let now = std::fs::read(format!("/proc/self/fdinfo/{epfd}"))
                .ok()
                .and_then(|t| Epoll::parse(&t))
                .unwrap_or_default();
            for it in first.iter().filter(|it| it.disabled()) {
                if now
                    .items
                    .iter()
                    .any(|n| n.tfd == it.tfd && n.events & ALL_EVENTS != 0)
                {
                    ctl_restore(
                        epfd,
                        libc::EPOLL_CTL_MOD,
                        it,
                        it.events | EPOLLERR | EPOLLHUP,
                    )?;
                }
            }
        }
        // 2. Everything else: ready exactly when its target is.
        for it in self.items.iter().filter(|it| !quiet(it)) {
            ctl_restore(epfd, libc::EPOLL_CTL_ADD, it, it.events)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{capture_live, json_of};
    use super::super::{Kind, Object};
    use super::*;

    const SAMPLE: &[u8] = b"pos:\t0\nflags:\t02000002\nmnt_id:\t17\nino:\t1038\n\
tfd:        7 events: 40000000 data:                2  pos:0 ino:4404f sdev:f\n\
tfd:       11 events:       19 data:                4  pos:0 ino:4404f sdev:f\n\
tfd:        4 events: 10000019 data:                3  pos:0 ino:40e sdev:10\n\
tfd:        3 events: 80000019 data: 1122334455667788  pos:0 ino:40e sdev:10\n";

    #[test]
    fn round_trip() {
        let e = Epoll::parse(SAMPLE).unwrap();
        assert_eq!(e.items.len(), 4);
        assert_eq!(
            e.items[3],
            Item {
                tfd: 3,
                events: 0x8000_0019,
                data: 0x1122_3344_5566_7788,
                ino: 0x40e,
                sdev: 0x10,
                target: Target::Open,
                ready: false
            }
        );
        assert!(e.items[0].disabled() && !e.items[0].enabled());
        assert!(e.items[3].edge());
        let mut items = e.items.clone();
        items[1].target = Target::Closed;
        items[2].target = Target::Replaced;
        items[3].ready = true;
        let text = json_of(|j| {
            let _ = write!(j, "{{\"items\":[");
            for (k, it) in items.iter().enumerate() {
                if k > 0 {
                    let _ = write!(j, ",");
                }
                it.write_json(j);
            }
            let _ = write!(j, "]}}");
        });
        let back: Epoll = serde_json::from_str(&text).unwrap();
        assert_eq!(back.items, items);
        let err = back.validate().unwrap_err();
        assert!(err.contains("fd 11") && err.contains("closed"), "{err}");
        assert!(Epoll::parse(b"tfd: x events: 1 data: 0\n").is_none());
    }

    #[test]
    fn kernel_dev_encoding() {
        // st_dev of 0:15 and of 254:0 (8-bit and 12-bit majors).
        assert_eq!(kernel_dev(0xf), 0xf);
        assert_eq!(kernel_dev(0xfe00), 0xfe0_0000);
        assert_eq!(
            kernel_dev(libc::makedev(259, 0x12345)),
            (259 << 20) | 0x12345
        );
    }

    struct Fds(Vec<i32>);
    impl Drop for Fds {
        fn drop(&mut self) {
            for fd in &self.0 {
                // SAFETY: closing our test descriptors.
                unsafe { libc::close(*fd) };
            }
        }
    }

    fn add(ep: i32, fd: i32, events: u32, data: u64) {
        let mut ev = libc::epoll_event { events, u64: data };
        // SAFETY: valid event.
        let r = unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) };
        assert_eq!(r, 0);
    }

    fn wait(ep: i32) -> Vec<(u32, u64)> {
        let mut buf = vec![libc::epoll_event { events: 0, u64: 0 }; 16];
        // SAFETY: 16 events, timeout 0.
        let n = unsafe { libc::epoll_wait(ep, buf.as_mut_ptr(), 16, 0) };
        let mut v: Vec<(u32, u64)> = buf[..n.max(0) as usize]
            .iter()
            .map(|e| (e.events, e.u64))
            .collect();
        v.sort_by_key(|e| e.1);
        v
    }

    fn eventfd(count: u32) -> i32 {
        // SAFETY: no pointers.
        let fd = unsafe { libc::eventfd(count, libc::EFD_NONBLOCK) };
        assert!(fd >= 0);
        fd
    }

    fn epoll_of(fd: i32) -> Epoll {
        let Object::Epoll(e) = capture_live(fd).unwrap() else {
            panic!("not an epoll")
        };
        e
    }

    /// The restore, where the descriptors keep their numbers: a new epoll
    /// instance connected to the same targets.
    #[test]
    fn live_ready_state() {
        let ready = eventfd(1);
        let later = eventfd(0);
        let quiet = eventfd(1);
        let fired = eventfd(1);
        let armed = eventfd(0);
        // SAFETY: no pointers.
        let ep = unsafe { libc::epoll_create1(0) };
        let _fds = Fds(vec![ready, later, quiet, fired, armed, ep]);
        let (i, et, os) = (
            libc::EPOLLIN as u32,
            libc::EPOLLET as u32,
            libc::EPOLLONESHOT as u32,
        );
        add(ep, ready, i, 1); // level-triggered, ready
        add(ep, quiet, i | et, 3); // edge consumed below
        add(ep, fired, i | os, 4); // fires below
        assert_eq!(wait(ep).len(), 3);
        add(ep, later, i | et, 2); // an edge not consumed yet
        add(ep, armed, i | os, 5); // armed, not ready
        let one = 1u64.to_ne_bytes();
        // SAFETY: 8 bytes.
        assert_eq!(unsafe { libc::write(later, one.as_ptr().cast(), 8) }, 8);

        let e = epoll_of(ep);
        let by = |d: u64| e.items.iter().find(|x| x.data == d).copied().unwrap();
        assert!(by(2).ready && !by(3).ready && by(1).ready);
        assert!(by(4).disabled());
        assert!(e.validate().is_ok());
        // The capture left the original as it was.
        assert_eq!(wait(ep).iter().map(|x| x.1).collect::<Vec<_>>(), vec![1, 2]);
    }

    #[test]
    fn live_restore() {
        let ready = eventfd(1);
        let later = eventfd(0);
        let quiet = eventfd(1);
        let fired = eventfd(1);
        let armed = eventfd(0);
        // SAFETY: no pointers.
        let ep = unsafe { libc::epoll_create1(0) };
        let mut fds = Fds(vec![ready, later, quiet, fired, armed, ep]);
        let (i, et, os) = (
            libc::EPOLLIN as u32,
            libc::EPOLLET as u32,
            libc::EPOLLONESHOT as u32,
        );
        add(ep, ready, i, 1);
        add(ep, quiet, i | et, 3);
        add(ep, fired, i | os, 4);
        assert_eq!(wait(ep).len(), 3);
        add(ep, later, i | et, 2);
        add(ep, armed, i | os, 5);
        let one = 1u64.to_ne_bytes();
        // SAFETY: 8 bytes.
        assert_eq!(unsafe { libc::write(later, one.as_ptr().cast(), 8) }, 8);
        let e = epoll_of(ep);
        let new = e.create(2).unwrap();
        fds.0.push(new);
        e.connect(new).unwrap();
        // Same registrations (one-shot that fired: disabled again, since its
        // target is ready), same ready set.
        let mut a = epoll_of(ep).items;
        let mut b = epoll_of(new).items;
        a.sort_by_key(|x| x.data);
        b.sort_by_key(|x| x.data);
        let strip = |v: &mut Vec<Item>| v.iter_mut().for_each(|x| x.ready = false);
        strip(&mut a);
        strip(&mut b);
        assert_eq!(a, b);
        let ready_of = |ep| wait(ep).iter().map(|x| x.1).collect::<Vec<_>>();
        assert_eq!(ready_of(new), vec![1, 2]);
        assert_eq!(ready_of(new), vec![1]);
        // Edge semantics persist: a new write is a new edge for 3.
        // SAFETY: 8 bytes.
        assert_eq!(unsafe { libc::write(quiet, one.as_ptr().cast(), 8) }, 8);
        assert_eq!(ready_of(new), vec![1, 3]);
        // One-shot: 5 fires once.
        // SAFETY: 8 bytes.
        assert_eq!(unsafe { libc::write(armed, one.as_ptr().cast(), 8) }, 8);
        assert_eq!(ready_of(new), vec![1, 5]);
        assert_eq!(ready_of(new), vec![1]);
    }

    #[test]
    fn live_closed_target_is_refused() {
        let a = eventfd(0);
        let b = eventfd(0);
        let other = eventfd(0);
        // SAFETY: no pointers.
        let ep = unsafe { libc::epoll_create1(0) };
        let _fds = Fds(vec![a, other, ep]);
        add(ep, a, libc::EPOLLIN as u32, 1);
        add(ep, b, libc::EPOLLIN as u32, 2);
        // A dup keeps the registered file (and its registration) alive.
        // SAFETY: dup of our descriptor.
        let keep = unsafe { libc::dup(b) };
        let _keep = Fds(vec![keep]);
        let e = epoll_of(ep);
        assert!(e.items.iter().all(|x| x.target == Target::Open));
        // The number now refers to another file.
        // SAFETY: dup2 onto our own descriptor.
        assert_eq!(unsafe { libc::dup2(other, b) }, b);
        let e = epoll_of(ep);
        let it = e.items.iter().find(|x| x.data == 2).unwrap();
        assert_eq!(it.target, Target::Replaced);
        let err = e.validate().unwrap_err();
        assert!(
            err.contains(&format!("fd {b}")) && err.contains("another file"),
            "{err}"
        );
        // Closed (another test thread may take the number meanwhile).
        // SAFETY: closing our descriptor.
        unsafe { libc::close(b) };
        let e = epoll_of(ep);
        let it = e.items.iter().find(|x| x.data == 2).unwrap();
        assert_ne!(it.target, Target::Open);
        assert!(e.validate().unwrap_err().contains(&format!("fd {b}")));
    }

    /// A signal pending for this thread, seen through a signalfd in an
    /// epoll instance that also has an edge-triggered registration: a
    /// capture from another thread must not drop the signalfd from the
    /// ready list (its poll there sees no signal).
    #[test]
    fn live_capture_leaves_signalfd_ready() {
        let sig = libc::SIGUSR2;
        // SAFETY: sigset manipulation on locals; blocks SIGUSR2 in this thread only.
        unsafe {
            let mut set: libc::sigset_t = core::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, sig);
            assert_eq!(
                libc::pthread_sigmask(libc::SIG_BLOCK, &set, core::ptr::null_mut()),
                0
            );
        }
        let mask: u64 = 1 << (sig - 1);
        // SAFETY: signalfd4 reads 8 bytes from a local.
        let sfd = unsafe {
            libc::syscall(
                libc::SYS_signalfd4,
                -1,
                &mask as *const u64,
                8,
                libc::SFD_NONBLOCK,
            )
        } as i32;
        let ev = eventfd(1);
        // SAFETY: no pointers.
        let ep = unsafe { libc::epoll_create1(0) };
        let _fds = Fds(vec![sfd, ev, ep]);
        add(ep, sfd, libc::EPOLLIN as u32, 1);
        add(ep, ev, (libc::EPOLLIN | libc::EPOLLET) as u32, 2);
        // SAFETY: a signal to this very thread (blocked: it stays pending).
        unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), libc::gettid(), sig) };
        assert_eq!(
            wait(ep),
            vec![(libc::EPOLLIN as u32, 1), (libc::EPOLLIN as u32, 2)]
        );
        let e = std::thread::spawn(move || epoll_of(ep)).join().unwrap();
        // The ready list could not be read: the edge is taken as pending.
        assert!(e.items.iter().find(|x| x.data == 2).unwrap().ready);
        assert_eq!(wait(ep), vec![(libc::EPOLLIN as u32, 1)]);
        let mut si = [0u8; 128];
        // SAFETY: reading one signalfd_siginfo (128 bytes) into a local.
        assert_eq!(unsafe { libc::read(sfd, si.as_mut_ptr().cast(), 128) }, 128);
    }
}
