//! Kernel objects behind anonymous-inode descriptors that event loops use:
//! eventfd, timerfd, signalfd, epoll and inotify (and, in their own
//! modules, sockets, POSIX timers and the vDSO).
//!
//! Each kind lives in one file of this module, which holds everything about
//! it:
//! - its schema: a serde type, the reader's definition of the JSON the image
//!   writer emits (the `object` field of an fd in the process manifest);
//! - its capture: parsing the descriptor's `/proc/self/fdinfo` text (and
//!   whatever else the kernel tells about it) into that JSON with the
//!   allocation-free writer. Runs in the stop handler: **async-signal-safe**
//!   (raw syscalls, [`MmapBuf`], no allocation);
//! - its validation at checkpoint time (in the coordinator): what makes the
//!   image unrestorable is refused while the job still runs;
//! - its restore, in stage 1 of a restart (ordinary Rust in the restored
//!   process): creating the object with the saved state and, once every
//!   descriptor of the process exists, linking it to other descriptors;
//! - a round-trip test (fdinfo text → JSON → serde → equal) and a live test
//!   (real object → capture → restore → same state).
//!
//! Adding a kind: one file implementing [`Kind`], one line in the
//! `kinds!` list below (which makes the [`Object`] variant and the
//! dispatch), and its tests.
//!
//! The kernel facts this relies on are in `docs/kernel.md` §9; the JSON is
//! described in `docs/image-format.md`.
//!
//! Descriptors whose link is not one of these kinds stay `other` in the
//! manifest and are refused at checkpoint time ([`unsupported`] names
//! them).

use core::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::signal_safe::buf::{MmapBuf, StackBuf};
use crate::signal_safe::procfs;
use crate::signal_safe::raw::Errno;

pub mod epoll;
pub mod eventfd;
pub mod inet_socket;
pub mod inotify;
pub mod posix_timer;
pub mod pty;
pub mod signalfd;
pub mod timerfd;
pub mod unix_socket;
pub mod vdso;

/// What a kind's capture works with. **Async-signal-safe.**
pub struct Capture<'a> {
    /// The descriptor.
    pub fd: i32,
    /// Its file status flags (`flags` of fdinfo: `O_NONBLOCK`...).
    pub flags: u64,
    /// Descriptors ckpt itself holds while writing the image (not the
    /// program's: a registration naming one refers to a closed descriptor).
    pub own: &'a [i32],
    info: &'a mut MmapBuf,
    json: &'a mut MmapBuf,
}

impl<'a> Capture<'a> {
    /// A capture of `fd` whose fdinfo text is in `info`, writing into `json`.
    pub fn new(fd: i32, flags: u64, info: &'a mut MmapBuf, json: &'a mut MmapBuf) -> Self {
        Capture {
            fd,
            flags,
            own: &[],
            info,
            json,
        }
    }

    /// Name the descriptors ckpt holds (see [`Capture::own`]).
    pub fn with_own(mut self, own: &'a [i32]) -> Self {
        self.own = own;
        self
    }

    /// The fdinfo text.
    pub fn fdinfo(&self) -> &[u8] {
        self.info.as_slice()
    }

    /// The fdinfo text and the JSON output at once.
    pub fn split(&mut self) -> (&[u8], &mut MmapBuf) {
        (self.info.as_slice(), self.json)
    }

    /// The JSON output.
    pub fn json(&mut self) -> &mut MmapBuf {
        self.json
    }

    /// Read `/proc/self/fdinfo/<fd>` again (after asking the kernel to
    /// bring the object's state up to date).
    pub fn reread(&mut self) -> Result<(), Errno> {
        let mut p = StackBuf::<64>::new();
        let _ = write!(p, "/proc/self/fdinfo/{}", self.fd);
        self.info.read_file(p.as_cstr())
    }
}

/// One kind of object. See the module documentation.
pub trait Kind: Sized {
    /// The `/proc/self/fd/N` link of such a descriptor.
    const LINK: &'static [u8];
    /// Its name in the JSON (`{"<TAG>": {...}}`), the serde name of its
    /// [`Object`] variant.
    const TAG: &'static str;
    /// What it is, for messages ("an eventfd").
    const WHAT: &'static str;

    /// Write the object's state as a JSON value. **Async-signal-safe.**
    fn capture(cx: &mut Capture<'_>) -> Result<(), Errno>;

    /// At checkpoint time: why this object cannot be restored, if it cannot.
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }

    /// Whether the refusal of [`Kind::validate`] passes by itself once the
    /// program runs a moment (events it has not read yet): the checkpoint
    /// is then tried again.
    fn passes(&self) -> bool {
        false
    }

    /// Stage 1 of a restart: create the object with its saved state and
    /// return a close-on-exec descriptor of it. `flags` are the saved file
    /// status flags.
    fn create(&self, flags: u32) -> Result<i32, String>;

    /// Combine what another holder's image says about this same object (a
    /// description shared by several processes is captured by each).
    fn merge(&mut self, _other: &Self) {}

    /// Descriptors whose objects must be connected before this one (an
    /// epoll instance's targets: an inner instance must have its own
    /// registrations, and so its readiness, before the outer one polls it).
    fn depends_on(&self) -> Vec<i32> {
        Vec::new()
    }

    /// Stage 1, once every descriptor of the process is in place: make the
    /// links to other descriptors (the epoll interest list). Called once per
    /// object, by one of the processes holding it.
    fn connect(&self, _fd: i32) -> Result<(), String> {
        Ok(())
    }
}

macro_rules! kinds {
    ($($(#[$doc:meta])* $variant:ident($module:ident::$ty:ident)),* $(,)?) => {
        /// The saved state of a kernel object (the `object` field of an fd
        /// whose `kind` is `object`). Externally tagged:
        /// `{"eventfd": {...}}`.
        #[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
        #[serde(rename_all = "snake_case")]
        pub enum Object {
            $($(#[$doc])* $variant($module::$ty),)*
        }

        /// Whether a descriptor with this `/proc/self/fd` link is a kind
        /// ckpt saves. **Async-signal-safe.**
        pub fn known(link: &[u8]) -> bool {
            $(link == <$module::$ty as Kind>::LINK)||*
        }

        /// Write `{"<tag>": <state>}` for the descriptor of `cx`, whose link
        /// is `link`. **Async-signal-safe.** On failure the caller drops
        /// what was written.
        pub fn capture(link: &[u8], cx: &mut Capture<'_>) -> Result<(), Errno> {
            $(if link == <$module::$ty as Kind>::LINK {
                let _ = write!(cx.json(), "{{\"{}\":", <$module::$ty as Kind>::TAG);
                <$module::$ty as Kind>::capture(cx)?;
                let _ = write!(cx.json(), "}}");
                return if cx.json().overflow { Err(Errno(libc::ENOMEM)) } else { Ok(()) };
            })*
            Err(Errno(libc::ENOTSUP))
        }

        impl Object {
            /// What it is, for messages.
            pub fn what(&self) -> &'static str {
                match self {
                    $(Object::$variant(_) => <$module::$ty as Kind>::WHAT,)*
                }
            }

            /// Its JSON tag.
            pub fn tag(&self) -> &'static str {
                match self {
                    $(Object::$variant(_) => <$module::$ty as Kind>::TAG,)*
                }
            }

            /// See [`Kind::validate`].
            pub fn validate(&self) -> Result<(), String> {
                match self {
                    $(Object::$variant(o) => o.validate(),)*
                }
            }

            /// See [`Kind::passes`].
            pub fn passes(&self) -> bool {
                match self {
                    $(Object::$variant(o) => o.passes(),)*
                }
            }

            /// See [`Kind::create`].
            pub fn create(&self, flags: u32) -> Result<i32, String> {
                match self {
                    $(Object::$variant(o) => o.create(flags),)*
                }
            }

            /// See [`Kind::merge`]; objects of different kinds are left alone.
            pub fn merge(&mut self, other: &Object) {
                match (self, other) {
                    $((Object::$variant(a), Object::$variant(b)) => a.merge(b),)*
                    #[allow(unreachable_patterns)]
                    _ => {}
                }
            }

            /// See [`Kind::depends_on`].
            pub fn depends_on(&self) -> Vec<i32> {
                match self {
                    $(Object::$variant(o) => o.depends_on(),)*
                }
            }

            /// See [`Kind::connect`].
            pub fn connect(&self, fd: i32) -> Result<(), String> {
                match self {
                    $(Object::$variant(o) => o.connect(fd),)*
                }
            }
        }
    };
}

kinds! {
    /// An eventfd: counter and semaphore mode.
    Eventfd(eventfd::Eventfd),
    /// A timerfd: clock, flags, time left, interval, pending expirations.
    Timerfd(timerfd::Timerfd),
    /// A signalfd: its signal mask.
    Signalfd(signalfd::Signalfd),
    /// An epoll instance: its interest list.
    Epoll(epoll::Epoll),
    /// An inotify instance: its watches, by path.
    Inotify(inotify::Inotify),
}

/// What a descriptor ckpt cannot save is, named from its `/proc/self/fd`
/// link, for the checkpoint's refusal ("an io_uring instance").
pub fn unsupported(link: &str) -> String {
    let what = if link.starts_with("socket:") {
        "a socket"
    } else if link == "anon_inode:[io_uring]" {
        "an io_uring instance"
    } else if link == "anon_inode:inotify" {
        "an inotify instance whose watches could not be read"
    } else if link == "anon_inode:[fanotify]" {
        "a fanotify instance"
    } else if link == "anon_inode:[userfaultfd]" {
        "a userfaultfd"
    } else if link == "anon_inode:[pidfd]" || link.starts_with("pidfd:") {
        "a pidfd"
    } else if link == "anon_inode:[perf_event]" {
        "a perf event"
    } else if link.starts_with("anon_inode:bpf") {
        "a BPF object"
    } else if link == "anon_inode:[signalfd]"
        || link == "anon_inode:[eventfd]"
        || link == "anon_inode:[timerfd]"
        || link == "anon_inode:[eventpoll]"
    {
        "an event object whose state could not be read from /proc/self/fdinfo"
    } else if link.starts_with("anon_inode:") {
        "a kernel object"
    } else {
        "a kind of file"
    };
    what.to_string()
}

// ---- fdinfo parsing helpers (async-signal-safe) ----

fn is_space(c: u8) -> bool {
    c == b' ' || c == b'\t'
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [c, rest @ ..] = s
        && is_space(*c)
    {
        s = rest;
    }
    while let [rest @ .., c] = s
        && (is_space(*c) || *c == b'\n')
    {
        s = rest;
    }
    s
}

/// The rest of the line `key: ...` of fdinfo text, trimmed.
pub(crate) fn line_value<'a>(info: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    procfs::lines(info).find_map(|l| {
        l.strip_prefix(key)
            .and_then(|r| r.strip_prefix(b":"))
            .map(trim)
    })
}

/// The value after `key:` in a line of `key:value` pairs separated by
/// spaces (`tfd: 7 events: 19 data: 2 pos:0 ino:4404f sdev:f`).
pub(crate) fn pair<'a>(line: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let mut i = 0usize;
    while i + key.len() < line.len() {
        let at_start = i == 0 || line.get(i - 1).copied().is_some_and(is_space);
        if at_start
            && line.get(i..i + key.len()) == Some(key)
            && line.get(i + key.len()) == Some(&b':')
        {
            let rest = trim(line.get(i + key.len() + 1..)?);
            let end = rest.iter().position(|&c| is_space(c)).unwrap_or(rest.len());
            return rest.get(..end);
        }
        i += 1;
    }
    None
}

/// Parse a hexadecimal number (no prefix).
pub(crate) fn hex(s: &[u8]) -> Option<u64> {
    let s = trim(s);
    crate::signal_safe::procfs::hex(s.strip_prefix(b"0x").unwrap_or(s))
}

/// Parse a decimal number, possibly negative (as i64).
pub(crate) fn signed(s: &[u8]) -> Option<i64> {
    let s = trim(s);
    match s.strip_prefix(b"-") {
        Some(n) => procfs::dec(n)
            .and_then(|v| i64::try_from(v).ok())
            .map(|v| -v),
        None => procfs::dec(s).and_then(|v| i64::try_from(v).ok()),
    }
}

/// Parse an unsigned decimal number.
pub(crate) fn dec(s: &[u8]) -> Option<u64> {
    procfs::dec(trim(s))
}

/// Parse an octal number.
pub(crate) fn oct(s: &[u8]) -> Option<u64> {
    procfs::oct(trim(s))
}

/// `O_NONBLOCK` in saved file status flags.
pub(crate) fn nonblocking(flags: u32) -> bool {
    flags as i32 & libc::O_NONBLOCK != 0
}

/// The `errno` of the last libc call, as text.
pub(crate) fn last_error() -> String {
    std::io::Error::last_os_error().to_string()
}

/// A descriptor returned by a libc call, or the error.
pub(crate) fn check_fd(r: i32, what: &str) -> Result<i32, String> {
    if r < 0 {
        Err(format!("{what}: {}", last_error()))
    } else {
        Ok(r)
    }
}

/// Close a descriptor created here when setting it up failed.
pub(crate) fn close_on_error<T>(fd: i32, r: Result<T, String>) -> Result<T, String> {
    if r.is_err() {
        // SAFETY: fd was created by the caller and is not handed out.
        unsafe { libc::close(fd) };
    }
    r
}

#[cfg(test)]
pub(crate) mod testing {
    //! Helpers for the kinds' tests.
    use super::*;

    /// Run a kind's JSON writer into a buffer and return the text.
    pub fn json_of(f: impl FnOnce(&mut MmapBuf)) -> String {
        let mut j = MmapBuf::new();
        f(&mut j);
        let s = String::from_utf8(j.as_slice().to_vec()).unwrap();
        j.free();
        s
    }

    /// Capture a real descriptor of this process through [`capture`] and
    /// parse the result.
    pub fn capture_live(fd: i32) -> Result<Object, String> {
        let mut link = [0u8; 256];
        let path = format!("/proc/self/fd/{fd}\0");
        let n = crate::signal_safe::raw::readlink(path.as_bytes(), &mut link)
            .map_err(|e| format!("readlink: {}", e.raw()))?;
        let link = &link[..n];
        let mut info = MmapBuf::new();
        let mut json = MmapBuf::new();
        let p = format!("/proc/self/fdinfo/{fd}\0");
        info.read_file(p.as_bytes()).unwrap();
        let flags = line_value(info.as_slice(), b"flags")
            .and_then(oct)
            .unwrap_or(0);
        let r = {
            let mut cx = Capture::new(fd, flags, &mut info, &mut json);
            capture(link, &mut cx)
        };
        let text = String::from_utf8(json.as_slice().to_vec()).unwrap();
        info.free();
        json.free();
        r.map_err(|e| format!("capture: errno {}", e.raw()))?;
        serde_json::from_str(&text).map_err(|e| format!("{text}: {e}"))
    }

    /// The fdinfo text of a descriptor of this process.
    pub fn fdinfo(fd: i32) -> String {
        std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_the_serde_names() {
        let all = [
            Object::Eventfd(eventfd::Eventfd {
                count: 1,
                semaphore: false,
            }),
            Object::Timerfd(timerfd::Timerfd::default()),
            Object::Signalfd(signalfd::Signalfd { mask: 0 }),
            Object::Epoll(epoll::Epoll { items: Vec::new() }),
        ];
        for o in all {
            let v = serde_json::to_value(&o).unwrap();
            let key = v.as_object().unwrap().keys().next().unwrap().clone();
            assert_eq!(key, o.tag());
        }
    }

    #[test]
    fn helpers() {
        assert_eq!(hex(b"   fffffffe07"), Some(0xfffffffe07));
        assert_eq!(signed(b"-3"), Some(-3));
        let line = b"tfd:        7 events: 40000019 data:                2  pos:0 ino:4404f sdev:f";
        assert_eq!(pair(line, b"tfd"), Some(&b"7"[..]));
        assert_eq!(pair(line, b"events"), Some(&b"40000019"[..]));
        assert_eq!(pair(line, b"ino"), Some(&b"4404f"[..]));
        assert_eq!(pair(line, b"sdev"), Some(&b"f"[..]));
        assert_eq!(pair(line, b"dev"), None);
        let info = b"pos:\t0\nflags:\t04002\nsettime flags: 03\nit_value: (3599, 175054352)\n";
        assert_eq!(line_value(info, b"flags").and_then(oct), Some(0o4002));
        assert_eq!(line_value(info, b"settime flags"), Some(&b"03"[..]));
        assert_eq!(
            line_value(info, b"it_value"),
            Some(&b"(3599, 175054352)"[..])
        );
    }

    #[test]
    fn unsupported_kinds_are_named() {
        assert!(unsupported("anon_inode:[io_uring]").contains("io_uring"));
        assert!(unsupported("anon_inode:inotify").contains("inotify"));
        assert!(unsupported("socket:[1234]").contains("socket"));
        assert!(unsupported("anon_inode:[pidfd]").contains("pidfd"));
    }
}
