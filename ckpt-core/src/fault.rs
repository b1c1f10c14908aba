//! Named fault points for the reliability tests (after CRIU's
//! `criu/include/fault-injection.h`).
//!
//! `CKPT_FAULT=<point>:<action>[:<n>]` in the environment of `ckpt launch` /
//! `ckpt restart` arms one point of the coordinator's checkpoint sequence:
//! the `n`-th time (default 1) the coordinator passes `<point>` it performs
//! `<action>`:
//! - `kill-self`: SIGKILL of the coordinator itself (`kill -9` of `ckpt launch`);
//! - `kill-job`: SIGKILL of every process of the job being checkpointed (the
//!   program and its children, each of which is a checkpoint leader), then the
//!   coordinator carries on as it would after a real crash of the job.
//!
//! The variable is read once; when it is unset every check is one relaxed
//! atomic load. It is used by `tests/faults` and has no other purpose.

use std::sync::Mutex;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// Environment variable that arms a fault point.
pub const ENV_FAULT: &str = "CKPT_FAULT";

/// The points of a checkpoint, in the order the coordinator passes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Point {
    /// `gen-N.tmp` was created, nothing signalled yet.
    Begun,
    /// Every process is stopped (their leaders said STOPPED).
    Stopped,
    /// `WRITE` was sent to every leader; they are writing their images.
    WriteSent,
    /// Every leader said DONE (images written, not yet fsynced).
    Written,
    /// `RELEASE` was sent; the job runs again while leaders fsync.
    Released,
    /// Every leader said SYNCED.
    Synced,
    /// The written files were checked; the record is about to be made.
    Checked,
    /// Commit: every image and manifest was fsynced.
    FilesSynced,
    /// Commit: half of `generation.json` is written.
    RecordHalf,
    /// Commit: `generation.json` is written and fsynced.
    RecordWritten,
    /// Commit: `gen-N.tmp` was renamed to `gen-N`, parent not yet fsynced.
    Renamed,
    /// Commit: `.latest.tmp` points at the new generation.
    LatestTmp,
    /// Commit: `latest` was replaced.
    LatestUpdated,
    /// Commit: the first old generation was removed by pruning.
    PrunedOne,
    /// Commit finished; the client has not been answered yet.
    Committed,
}

impl Point {
    /// Every point, in order.
    pub const ALL: [Point; 15] = [
        Point::Begun,
        Point::Stopped,
        Point::WriteSent,
        Point::Written,
        Point::Released,
        Point::Synced,
        Point::Checked,
        Point::FilesSynced,
        Point::RecordHalf,
        Point::RecordWritten,
        Point::Renamed,
        Point::LatestTmp,
        Point::LatestUpdated,
        Point::PrunedOne,
        Point::Committed,
    ];

    /// The name used in `CKPT_FAULT`.
    pub fn name(self) -> &'static str {
        match self {
            Point::Begun => "begun",
            Point::Stopped => "stopped",
            Point::WriteSent => "write-sent",
            Point::Written => "written",
            Point::Released => "released",
            Point::Synced => "synced",
            Point::Checked => "checked",
            Point::FilesSynced => "files-synced",
            Point::RecordHalf => "record-half",
            Point::RecordWritten => "record-written",
            Point::Renamed => "renamed",
            Point::LatestTmp => "latest-tmp",
            Point::LatestUpdated => "latest-updated",
            Point::PrunedOne => "pruned-one",
            Point::Committed => "committed",
        }
    }
}

/// What an armed point does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// SIGKILL of the coordinator's own process.
    KillSelf,
    /// SIGKILL of the job's processes (see [`set_victims`]).
    KillJob,
}

#[derive(Debug)]
struct Armed {
    point: Point,
    action: Action,
    nth: u32,
}

/// Parse a `CKPT_FAULT` value.
pub fn parse(v: &str) -> Result<(Point, Action, u32), String> {
    let mut f = v.split(':');
    let p = f.next().unwrap_or("");
    let point = Point::ALL
        .into_iter()
        .find(|x| x.name() == p)
        .ok_or_else(|| format!("{ENV_FAULT}={v}: unknown fault point {p:?}"))?;
    let action = match f.next() {
        Some("kill-self") => Action::KillSelf,
        Some("kill-job") => Action::KillJob,
        other => {
            return Err(format!(
                "{ENV_FAULT}={v}: action {other:?} is not kill-self or kill-job"
            ));
        }
    };
    let nth = match f.next() {
        None => 1,
        Some(n) => n
            .parse::<u32>()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| format!("{ENV_FAULT}={v}: count {n:?} is not a number >= 1"))?,
    };
    if f.next().is_some() {
        return Err(format!("{ENV_FAULT}={v}: expected <point>:<action>[:<n>]"));
    }
    Ok((point, action, nth))
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let v = std::env::var(ENV_FAULT).ok()?;
            match parse(&v) {
                Ok((point, action, nth)) => Some(Armed { point, action, nth }),
                Err(e) => {
                    log::error!("{e}");
                    None
                }
            }
        })
        .as_ref()
}

static HITS: AtomicU32 = AtomicU32::new(0);
static VICTIMS: Mutex<Vec<i32>> = Mutex::new(Vec::new());

/// Record the host pids of the job's processes for [`Action::KillJob`].
pub fn set_victims(pids: &[i32]) {
    if armed().is_none() {
        return;
    }
    if let Ok(mut v) = VICTIMS.lock() {
        v.clear();
        v.extend_from_slice(pids);
    }
}

/// Pass point `p`: performs the armed action when this is its `n`-th pass.
pub fn hit(p: Point) {
    let Some(a) = armed() else {
        return;
    };
    if a.point != p || HITS.fetch_add(1, Ordering::Relaxed) + 1 != a.nth {
        return;
    }
    match a.action {
        Action::KillSelf => {
            // SAFETY: kill(2) of our own process takes plain integers.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        }
        Action::KillJob => {
            let pids = VICTIMS.lock().map(|v| v.clone()).unwrap_or_default();
            for pid in pids {
                // SAFETY: kill(2) takes plain integers; the pids are processes
                // of the job, stopped or being checkpointed by us.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_values() {
        assert_eq!(
            parse("write-sent:kill-job").unwrap(),
            (Point::WriteSent, Action::KillJob, 1)
        );
        assert_eq!(
            parse("renamed:kill-self:3").unwrap(),
            (Point::Renamed, Action::KillSelf, 3)
        );
        for bad in [
            "",
            "nope:kill-self",
            "renamed",
            "renamed:x",
            "renamed:kill-self:0",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert!(parse("renamed:kill-self:1:2").is_err());
    }

    #[test]
    fn names_are_unique() {
        for (i, a) in Point::ALL.iter().enumerate() {
            for b in &Point::ALL[i + 1..] {
                assert_ne!(a.name(), b.name());
            }
        }
    }
}
