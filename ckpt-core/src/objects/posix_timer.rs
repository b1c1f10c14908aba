//! POSIX timers (`timer_create`): not restored yet, so refused at
//! checkpoint time, with what the timer is.
//!
//! A restart that dropped a process's POSIX timers would leave a program
//! waiting forever for a signal that no timer sends any more: silently
//! different. The kernel lists a process's timers in `/proc/PID/timers`
//! (`docs/kernel.md` §10); the coordinator reads it for every process of
//! the job while the job is stopped and refuses the checkpoint when one
//! is there. Restoring them needs each timer's id back (`timer_create`
//! picks the lowest free one; Linux 6.17's `PR_TIMER_CREATE_RESTORE_IDS`
//! lets a restorer ask for a given one): open work.

/// One timer as `/proc/PID/timers` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PosixTimer {
    /// The timer id `timer_create` returned.
    pub id: i64,
    /// The signal it sends (0: none).
    pub signal: i32,
    /// `signal`, `none` or `thread`, and the target: `pid.N` or `tid.N`.
    pub notify: String,
    /// The clock (`CLOCK_REALTIME` = 0, `CLOCK_MONOTONIC` = 1, ...).
    pub clock: i32,
}

/// Parses the text of `/proc/PID/timers` (one block of `ID:`, `signal:`,
/// `notify:`, `ClockID:` lines per timer).
pub fn parse(text: &str) -> Vec<PosixTimer> {
    let mut out: Vec<PosixTimer> = Vec::new();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if key == "ID" {
            out.push(PosixTimer {
                id: value.parse().unwrap_or(-1),
                signal: 0,
                notify: String::new(),
                clock: -1,
            });
            continue;
        }
        let Some(t) = out.last_mut() else { continue };
        match key {
            "signal" => {
                t.signal = value
                    .split('/')
                    .next()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
            }
            "notify" => t.notify = value.to_owned(),
            "ClockID" => t.clock = value.parse().unwrap_or(-1),
            _ => {}
        }
    }
    out
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
        c if c < 0 => format!("CPU clock {c}"),
        c => format!("clock {c}"),
    }
}

/// The refusal for process `pid` (running `exe`) holding `timers` (not
/// empty), naming the first and the way out.
pub fn refusal(pid: i32, exe: &str, timers: &[PosixTimer]) -> String {
    let mut s = format!(
        "process {pid} ({exe}) has {} POSIX timer{} (timer_create)",
        timers.len(),
        if timers.len() == 1 { "" } else { "s" }
    );
    if let Some(t) = timers.first() {
        let notify = if t.notify.starts_with("none") {
            "no notification".to_owned()
        } else {
            format!("signal {} ({})", t.signal, t.notify)
        };
        s.push_str(&format!(
            ": timer {} on {}, {notify}",
            t.id,
            clock_name(t.clock)
        ));
    }
    s.push_str(
        ", which ckpt cannot checkpoint yet: a restart would lose it and the program would \
         wait for a signal no timer sends; use setitimer or a timerfd (both are restored), \
         or run this program without checkpoints",
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_block() {
        let text = "ID: 0\nsignal: 14/0000000000000000\nnotify: signal/pid.12\nClockID: 1\n\
                    ID: 1\nsignal: 34/00007f0000001000\nnotify: signal/tid.13\nClockID: 0\n\
                    ID: 2\nsignal: 0/0000000000000000\nnotify: none/pid.12\nClockID: 7\n";
        let t = parse(text);
        assert_eq!(t.len(), 3);
        assert_eq!(
            t[0],
            PosixTimer {
                id: 0,
                signal: 14,
                notify: "signal/pid.12".into(),
                clock: 1
            }
        );
        assert_eq!((t[1].id, t[1].signal, t[1].clock), (1, 34, 0));
        assert_eq!(t[1].notify, "signal/tid.13");
        assert_eq!((t[2].id, t[2].clock), (2, 7));
        assert!(parse("").is_empty());
    }

    #[test]
    fn refusal_names_process_timer_and_way_out() {
        let t = parse("ID: 0\nsignal: 14/0\nnotify: signal/pid.12\nClockID: 1\n");
        let m = refusal(3, "/usr/bin/prog", &t);
        for want in [
            "process 3 (/usr/bin/prog)",
            "1 POSIX timer (timer_create)",
            "timer 0 on CLOCK_MONOTONIC",
            "signal 14",
            "setitimer or a timerfd",
        ] {
            assert!(m.contains(want), "{want:?} missing from {m}");
        }
    }

    #[test]
    fn live_timer_is_listed() {
        // SAFETY: zeroed sigevent is valid; SIGEV_NONE needs no signal.
        let mut ev: libc::sigevent = unsafe { core::mem::zeroed() };
        ev.sigev_notify = libc::SIGEV_NONE;
        let mut id: libc::timer_t = core::ptr::null_mut();
        // SAFETY: valid pointers to our sigevent and timer id.
        let r = unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut ev, &mut id) };
        assert_eq!(r, 0);
        let text = std::fs::read_to_string("/proc/self/timers").unwrap_or_default();
        // SAFETY: deleting the timer we created.
        unsafe { libc::timer_delete(id) };
        let t = parse(&text);
        assert!(
            t.iter()
                .any(|t| t.clock == 1 && t.notify.starts_with("none")),
            "{text}"
        );
    }
}
