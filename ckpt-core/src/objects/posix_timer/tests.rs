use super::*;

const TEXT: &str = "ID: 0\nsignal: 32/000055b46549d460\nnotify: signal/tid.13\nClockID: 1\n\
                    ID: 3\nsignal: 36/000000000000004d\nnotify: signal/pid.12\nClockID: 0\n\
                    ID: 4\nsignal: 0/0000000000000000\nnotify: none/pid.12\nClockID: 7\n\
                    ID: 5\nsignal: 14/0000000000000000\nnotify: signal/pid.12\nClockID: -6\n";

#[test]
fn parses_every_block() {
    let t = parse(TEXT);
    assert_eq!(t.len(), 4);
    assert_eq!(
        t[0],
        PosixTimer {
            id: 0,
            clock: 1,
            signal: 32,
            notify: SIGEV_SIGNAL | SIGEV_THREAD_ID,
            target: 13,
            sigev_value: 0x55b4_6549_d460,
            ..PosixTimer::default()
        }
    );
    assert_eq!(
        (t[1].id, t[1].signal, t[1].clock, t[1].target),
        (3, 36, 0, 12)
    );
    assert_eq!((t[1].notify, t[1].sigev_value), (SIGEV_SIGNAL, 0x4d));
    assert_eq!((t[2].notify, t[2].clock), (SIGEV_NONE, 7));
    assert!(!t[2].signals() && t[1].signals());
    assert_eq!(t[3].clock, -6);
    assert!(parse("").is_empty());
}

#[test]
fn unreadable_fields_are_marked_not_guessed() {
    let t = parse("ID: 4\nsignal: 14/zz\nnotify: signal/pid.12\nClockID: 1\n");
    assert_eq!(t[0].id, -1);
    assert!(refusal(2, "x", &t).is_some_and(|m| m.contains("could not be read")));
    let t = parse("ID: 4\nsignal: 14/0\nnotify: signal/tid.x\nClockID: 1\n");
    assert_eq!(t[0].id, -1);
}

#[test]
fn a_pending_signal_two_timers_send_is_refused() {
    let one = |id, target, notify| PosixTimer {
        id,
        clock: 1,
        signal: 34,
        notify,
        target,
        ..PosixTimer::default()
    };
    let bit = 1u64 << 33;
    let two = [one(0, 5, SIGEV_SIGNAL), one(1, 5, SIGEV_SIGNAL)];
    let m = pending_conflict(&two, bit, &[]).expect("refused");
    assert!(
        m.contains("signal 34 is pending and 2 of its POSIX timers"),
        "{m}"
    );
    assert_eq!(pending_conflict(&two, 0, &[]), None);
    assert_eq!(pending_conflict(&two[..1], bit, &[]), None);
    // To different threads: each pending mask is its own.
    let threads = [
        one(0, 7, SIGEV_SIGNAL | SIGEV_THREAD_ID),
        one(1, 8, SIGEV_SIGNAL | SIGEV_THREAD_ID),
    ];
    assert_eq!(pending_conflict(&threads, 0, &[(7, bit), (8, 0)]), None);
    let same = [
        one(0, 7, SIGEV_SIGNAL | SIGEV_THREAD_ID),
        one(1, 7, SIGEV_SIGNAL | SIGEV_THREAD_ID),
    ];
    assert!(pending_conflict(&same, 0, &[(7, bit)]).is_some_and(|m| m.contains("to thread 7")));
}

#[test]
fn json_round_trip() {
    for mut t in parse(TEXT) {
        t.value_ns = 1_500_000_000;
        t.interval_ns = 30_000_000;
        let mut s = String::new();
        t.write_json(&mut s).expect("write");
        let back: PosixTimer = serde_json::from_str(&s).expect("parse");
        assert_eq!(back, t, "{s}");
    }
}

#[test]
fn refusal_names_process_timer_and_way_out() {
    let all = parse(TEXT);
    assert_eq!(refusal(3, "/usr/bin/prog", &all[..3]), None);
    let cpu = parse("ID: 2\nsignal: 14/0\nnotify: signal/pid.12\nClockID: 2\n");
    let m = refusal(3, "/usr/bin/prog", &cpu).expect("refused");
    for want in [
        "process 3 (/usr/bin/prog)",
        "POSIX timer (timer_create) on CLOCK_PROCESS_CPUTIME_ID",
        "timer 2",
        "signal 14 to pid 12",
        "starts again from zero",
        "CLOCK_MONOTONIC timer",
    ] {
        assert!(m.contains(want), "{want:?} missing from {m}");
    }
    // -6: glibc's CLOCK_PROCESS_CPUTIME_ID as the kernel holds it; -2 the
    // calling thread's; (~7 << 3) | 2: process 7's.
    assert!(refusal(3, "x", &all[3..]).is_some_and(|m| m.contains("on CLOCK_PROCESS_CPUTIME_ID")));
    let thread = PosixTimer {
        clock: -2,
        ..PosixTimer::default()
    };
    assert!(refusal(3, "x", &[thread]).is_some_and(|m| m.contains("on CLOCK_THREAD_CPUTIME_ID")));
    let other = PosixTimer {
        clock: (!7 << 3) | 2,
        ..PosixTimer::default()
    };
    assert!(refusal(3, "x", &[other]).is_some_and(|m| m.contains("the CPU clock of process 7")));
    let many = vec![PosixTimer::default(); MAX_TIMERS + 1];
    assert!(refusal(3, "x", &many).is_some_and(|m| m.contains("more than the 64")));
}

#[test]
fn pending_signals_go_to_their_timer() {
    let mut t = parse(TEXT);
    let mut shared = (1u64 << 35) | (1u64 << 1);
    let mut thread13 = 1u64 << 31;
    claim_pending(&mut t, &mut shared, |tid, bit| {
        let was = tid == 13 && thread13 & bit != 0;
        thread13 &= !bit;
        was
    });
    assert_eq!(
        (t[0].queued, t[1].queued, t[2].queued, t[3].queued),
        (1, 1, 0, 0)
    );
    assert_eq!((shared, thread13), (1u64 << 1, 0));
}

/// In a new process (fork): creates timers, captures them, deletes them,
/// restores them (with the prctl or by walking the id counter) and checks
/// ids, times, and a pending expiration. Returns a failure description.
fn live_round_trip(by_prctl: bool) -> Result<(), String> {
    // SAFETY: the child only makes system calls and exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let code = match child(by_prctl) {
            Ok(()) => 0,
            Err(step) => step,
        };
        // SAFETY: leave the child without running the test harness's code.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        Ok(())
    } else {
        Err(format!("child failed at step {status:#x}"))
    }
}

fn child(by_prctl: bool) -> Result<(), i32> {
    let sig = libc::SIGRTMIN() + 3;
    // Block the signal: the one-shot timer's expiration stays pending.
    raw::sigprocmask(libc::SIG_BLOCK, 1u64 << (sig - 1)).map_err(|_| 1)?;
    let mk = |clock: i32, notify: i32, signo: i32, value: u64| {
        let t = PosixTimer {
            clock,
            notify,
            signal: signo,
            sigev_value: value,
            ..PosixTimer::default()
        };
        create(&t, 0)
    };
    let a = mk(1, SIGEV_NONE, 0, 0).map_err(|_| 2)?;
    let gone = mk(1, SIGEV_NONE, 0, 0).map_err(|_| 2)?;
    let b = mk(0, SIGEV_SIGNAL, sig, 0x77).map_err(|_| 2)?;
    delete(gone);
    let periodic = PosixTimer {
        id: a,
        value_ns: 3600 * NS,
        interval_ns: 600 * NS,
        ..PosixTimer::default()
    };
    arm(&periodic).map_err(|_| 3)?;
    let once = PosixTimer {
        id: b,
        value_ns: 1000,
        ..PosixTimer::default()
    };
    arm(&once).map_err(|_| 3)?;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 5_000_000,
    };
    // SAFETY: sleeping on a local timespec.
    unsafe { libc::nanosleep(&ts, &mut ts) };
    let mut shared = 0u64;
    let n = capture_self(|_| {
        shared = crate::preload::stop::pending_mask(b"/proc/self/status\0", b"ShdPnd");
    });
    if n != 2 || SAVED.failed.load(Ordering::Acquire) {
        return Err(4);
    }
    let mut timers: Vec<PosixTimer> = SAVED.timers().to_vec();
    timers.sort_by_key(|t| t.id);
    claim_pending(&mut timers, &mut shared, |_, _| false);
    let ids: Vec<i32> = timers.iter().map(|t| t.id).collect();
    if ids != [a, b] || timers[1].queued != 1 || timers[1].sigev_value != 0x77 {
        return Err(5);
    }
    if !(timers[0].value_ns > 3500 * NS && timers[0].interval_ns == 600 * NS) {
        return Err(6);
    }
    // Take the pending signal away, as a restart's new process has none.
    let mut info: libc::siginfo_t = unsafe_zeroed();
    let set = sigset(sig);
    let zero = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid set, info and timeout.
    if unsafe { libc::sigtimedwait(&set, &mut info, &zero) } != sig {
        return Err(7);
    }
    let restore_in_new_process = || -> Result<(), i32> {
        restore_with(&timers, by_prctl).map_err(|_| 8)?;
        let (v, i) = gettime(a).map_err(|_| 9)?;
        if !(v > 3500 * NS && i == 600 * NS) {
            return Err(10);
        }
        let mut info: libc::siginfo_t = unsafe_zeroed();
        // SAFETY: valid set, info and timeout.
        if unsafe { libc::sigtimedwait(&set, &mut info, &zero) } != sig {
            return Err(11);
        }
        // SAFETY: the kernel filled a timer siginfo.
        let (timerid, value) = unsafe { (info.si_timerid(), info.si_value().sival_ptr as u64) };
        if info.si_code != SI_TIMER || timerid != b || value != 0x77 {
            return Err(12);
        }
        Ok(())
    };
    // The timers' owner is this process: delete them, then restore in a
    // new process (fork), whose id counter starts at 0.
    for t in &timers {
        delete(t.id);
    }
    // SAFETY: the grandchild only makes system calls and exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let code = restore_in_new_process().err().unwrap_or(0);
        // SAFETY: plain exit of the grandchild.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        Ok(())
    } else {
        Err(100 + libc::WEXITSTATUS(status))
    }
}

fn unsafe_zeroed() -> libc::siginfo_t {
    // SAFETY: an all-zero siginfo_t is a valid value.
    unsafe { core::mem::zeroed() }
}

fn sigset(sig: i32) -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise a local set.
    unsafe {
        let mut s: libc::sigset_t = core::mem::zeroed();
        libc::sigemptyset(&mut s);
        libc::sigaddset(&mut s, sig);
        s
    }
}

#[test]
fn live_capture_and_restore_by_prctl() {
    if !kernel_restores_ids() {
        eprintln!("PR_TIMER_CREATE_RESTORE_IDS missing: the walk covers this kernel");
    }
    live_round_trip(true).expect("restored");
}

#[test]
fn live_capture_and_restore_by_walking_ids() {
    live_round_trip(false).expect("restored");
}
