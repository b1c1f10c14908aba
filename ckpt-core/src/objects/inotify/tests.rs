use super::super::testing::{capture_live, fdinfo};
use super::super::{Kind, Object};
use super::*;

#[test]
fn parses_watch_lines() {
    let text = b"pos:\t0\nflags:\t04000\nmnt_id:\t17\nino:\t1038\n\
        inotify wd:2 ino:124074 sdev:fe00000 mask:2 ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:74401200f77bf607\n\
        inotify wd:1a ino:992305 sdev:800011 mask:84000300 ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:0523990022c939b1\n";
    let i = Inotify::parse(text);
    assert_eq!(i.watches.len(), 2);
    assert_eq!(
        (
            i.watches[0].wd,
            i.watches[0].ino,
            i.watches[0].dev.as_str(),
            i.watches[0].mask
        ),
        (2, 0x124074, "254:0", 2)
    );
    assert_eq!(
        (
            i.watches[1].wd,
            i.watches[1].dev.as_str(),
            i.watches[1].mask
        ),
        (0x1a, "8:17", 0x8400_0300)
    );
    assert!(Inotify::parse(b"pos:\t0\n").watches.is_empty());
}

#[test]
fn json_round_trip_and_refusals() {
    let w = Watch {
        wd: 3,
        mask: 0x300,
        path: "/tmp/a \"b\"".into(),
        ino: 9,
        dev: "8:1".into(),
        moved: false,
    };
    let i = Inotify {
        watches: vec![w.clone()],
        queued: 0,
        table_full: false,
    };
    let text = serde_json::to_string(&Object::Inotify(i.clone())).expect("json");
    let back: Object = serde_json::from_str(&text).expect("parse");
    assert_eq!(back, Object::Inotify(i.clone()));
    assert!(i.validate().is_ok() && !i.passes());

    let unknown = Inotify {
        watches: vec![Watch {
            path: String::new(),
            ..w.clone()
        }],
        queued: 0,
        table_full: false,
    };
    let e = unknown.validate().expect_err("refused");
    assert!(
        e.contains("watch 3 (inode 9 on device 8:1)") && e.contains("inotify_add_watch"),
        "{e}"
    );
    let moved = Inotify {
        watches: vec![Watch {
            moved: true,
            ..w.clone()
        }],
        queued: 0,
        table_full: false,
    };
    let e = moved.validate().expect_err("refused");
    assert!(e.contains("names another file now"), "{e}");
    assert!(!moved.passes());
    let busy = Inotify {
        watches: vec![w.clone()],
        queued: 32,
        table_full: false,
    };
    let e = busy.validate().expect_err("refused");
    assert!(e.contains("32 bytes of events") && busy.passes(), "{e}");
    let full = Inotify {
        watches: vec![Watch {
            path: String::new(),
            ..w.clone()
        }],
        queued: 0,
        table_full: true,
    };
    let e = full.validate().expect_err("refused");
    assert!(e.contains("at most 1024") && !full.passes(), "{e}");
    let high = Inotify {
        watches: vec![Watch {
            wd: MAX_WD + 1,
            ..w
        }],
        queued: 0,
        table_full: false,
    };
    assert!(high.validate().is_err_and(|e| e.contains("too high")));
}

fn path_c(p: &std::path::Path) -> std::ffi::CString {
    use std::os::unix::ffi::OsStrExt as _;
    std::ffi::CString::new(p.as_os_str().as_bytes()).expect("path")
}

/// Real instance (the wrappers record the paths): capture, restore into a
/// new instance with the same watch descriptors (one removed: a gap),
/// events seen by the new one; a renamed file and unread events refused.
#[test]
fn live() {
    let dir = std::env::temp_dir().join(format!("ckpt-inotify-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("sub")).expect("mkdir");
    std::fs::write(dir.join("f"), b"x").expect("write");
    std::fs::write(dir.join("g"), b"x").expect("write");
    // SAFETY: inotify calls on our own instance with NUL-terminated paths.
    unsafe {
        let fd = libc::inotify_init1(libc::IN_NONBLOCK);
        assert!(fd >= 0);
        let wd1 = libc::inotify_add_watch(fd, path_c(&dir.join("f")).as_ptr(), libc::IN_MODIFY);
        let wd2 = libc::inotify_add_watch(fd, path_c(&dir.join("g")).as_ptr(), libc::IN_MODIFY);
        let wd3 = libc::inotify_add_watch(
            fd,
            path_c(&dir.join("sub")).as_ptr(),
            libc::IN_CREATE | libc::IN_ONLYDIR | libc::IN_EXCL_UNLINK,
        );
        assert_eq!((wd1, wd2, wd3), (1, 2, 3));
        assert_eq!(libc::inotify_rm_watch(fd, wd2), 0);
        // Read away the IN_IGNORED of the removal.
        let mut buf = [0u8; 4096];
        while libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) > 0 {}

        let Object::Inotify(saved) = capture_live(fd).expect("capture") else {
            panic!("not inotify")
        };
        let wds: Vec<i32> = saved.watches.iter().map(|w| w.wd).collect();
        assert_eq!(wds.len(), 2, "{saved:?}");
        assert!(saved.validate().is_ok(), "{saved:?}");
        let sub = saved.watches.iter().find(|w| w.wd == 3).expect("watch 3");
        assert!(
            sub.path.ends_with("/sub") && sub.mask & libc::IN_ONLYDIR != 0,
            "{sub:?}"
        );
        assert!(sub.mask & libc::IN_EXCL_UNLINK != 0);

        let new = saved.create(0o4000).expect("restore");
        let info = fdinfo(new);
        assert!(
            info.contains("inotify wd:1 ") && info.contains("inotify wd:3 "),
            "{info}"
        );
        assert!(!info.contains("inotify wd:2 "), "{info}");
        let mut avail: i32 = 0;
        libc::ioctl(new, libc::FIONREAD, &mut avail);
        assert_eq!(avail, 0, "the gap's IN_IGNORED was read away");
        std::fs::write(dir.join("sub/new"), b"y").expect("create");
        let n = libc::read(new, buf.as_mut_ptr().cast(), buf.len());
        assert!(n >= 16, "an event for the new file");
        let ev_wd = i32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]);
        assert_eq!(ev_wd, 3);
        libc::close(new);

        // Events not read yet: refused, and it passes by itself.
        let Object::Inotify(busy) = capture_live(fd).expect("capture") else {
            panic!("not inotify")
        };
        assert!(busy.queued > 0 && busy.passes(), "{busy:?}");
        while libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) > 0 {}

        // The watched file renamed and another put in its place.
        std::fs::rename(dir.join("f"), dir.join("f.old")).expect("rename");
        std::fs::write(dir.join("f"), b"z").expect("write");
        let Object::Inotify(moved) = capture_live(fd).expect("capture") else {
            panic!("not inotify")
        };
        let e = moved.validate().expect_err("refused");
        assert!(
            e.contains("watch 1") && e.contains("names another file now"),
            "{e}"
        );
        libc::close(fd);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
