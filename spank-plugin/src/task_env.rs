//! The environment a checkpointed task starts with.
//!
//! | variable        | value                                                       |
//! |-----------------|-------------------------------------------------------------|
//! | `LD_PRELOAD`    | `libckpt=` path, then whatever the task already preloaded    |
//! | `CKPT_DIR`      | the expanded, absolute checkpoint directory                 |
//! | `CKPT_INTERVAL` | periodic interval in seconds, `0` = none                    |
//! | `CKPT_SIGNAL`   | name of the "checkpoint now" signal, without `SIG` (`USR1`) |
//! | `CKPT_BIN`      | path of the `ckpt` binary                                   |
//!
//! A job that did not ask for checkpointing gets none of these.

use std::path::Path;

/// Checkpoint directory of the task.
pub const ENV_DIR: &str = "CKPT_DIR";
/// Periodic checkpoint interval, seconds; `0` means none.
pub const ENV_INTERVAL: &str = "CKPT_INTERVAL";
/// Signal name (without `SIG`) that asks for a checkpoint now.
pub const ENV_SIGNAL: &str = "CKPT_SIGNAL";
/// Path of the `ckpt` binary.
pub const ENV_BIN: &str = "CKPT_BIN";
/// The dynamic loader's preload list.
pub const ENV_PRELOAD: &str = "LD_PRELOAD";

/// `LD_PRELOAD` with `lib` first, keeping every library already listed.
/// Idempotent: a step started from a checkpointed batch script inherits
/// `LD_PRELOAD` with `lib` in it already, and keeps it as is.
pub fn preload_with(existing: Option<&str>, lib: &str) -> String {
    let existing = existing.map(str::trim).unwrap_or_default();
    // ld.so separates entries with ':' or white space.
    if existing
        .split(|c: char| c == ':' || c.is_whitespace())
        .any(|entry| entry == lib)
    {
        return existing.to_owned();
    }
    if existing.is_empty() {
        lib.to_owned()
    } else {
        format!("{lib}:{existing}")
    }
}

/// Everything [`vars`] needs.
#[derive(Debug)]
pub struct TaskSettings<'a> {
    /// Expanded checkpoint directory.
    pub dir: &'a Path,
    /// Interval, seconds.
    pub interval: u64,
    /// Signal name.
    pub signal: &'a str,
    /// Path of the `ckpt` binary.
    pub ckpt_bin: &'a str,
    /// Path of `libckpt.so`.
    pub libckpt: &'a str,
}

/// The variables to set in the task, given its current `LD_PRELOAD`.
pub fn vars(
    settings: &TaskSettings<'_>,
    existing_preload: Option<&str>,
) -> Vec<(&'static str, String)> {
    vec![
        (
            ENV_PRELOAD,
            preload_with(existing_preload, settings.libckpt),
        ),
        (ENV_DIR, settings.dir.display().to_string()),
        (ENV_INTERVAL, settings.interval.to_string()),
        (ENV_SIGNAL, settings.signal.to_owned()),
        (ENV_BIN, settings.ckpt_bin.to_owned()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIB: &str = "/usr/local/lib/ckpt/libckpt.so";

    #[test]
    fn preload_is_prepended_never_replaced() {
        assert_eq!(preload_with(None, LIB), LIB);
        assert_eq!(preload_with(Some(""), LIB), LIB);
        assert_eq!(preload_with(Some("/x/a.so"), LIB), format!("{LIB}:/x/a.so"));
        assert_eq!(
            preload_with(Some("/x/a.so /y/b.so"), LIB),
            format!("{LIB}:/x/a.so /y/b.so")
        );
    }

    #[test]
    fn preload_is_idempotent() {
        let once = preload_with(Some("/x/a.so"), LIB);
        assert_eq!(preload_with(Some(&once), LIB), once);
        assert_eq!(
            preload_with(Some("/x/a.so /usr/local/lib/ckpt/libckpt.so"), LIB),
            "/x/a.so /usr/local/lib/ckpt/libckpt.so"
        );
        // A different library whose name merely contains ours is kept and ours added.
        assert_eq!(
            preload_with(Some("/usr/local/lib/ckpt/libckpt.so.old"), LIB),
            format!("{LIB}:/usr/local/lib/ckpt/libckpt.so.old")
        );
    }

    #[test]
    fn all_settings_are_exported() {
        let s = TaskSettings {
            dir: Path::new("/ck/42"),
            interval: 300,
            signal: "USR1",
            ckpt_bin: "/usr/local/bin/ckpt",
            libckpt: LIB,
        };
        let v = vars(&s, Some("/x/a.so"));
        assert_eq!(
            v,
            vec![
                ("LD_PRELOAD", format!("{LIB}:/x/a.so")),
                ("CKPT_DIR", "/ck/42".to_owned()),
                ("CKPT_INTERVAL", "300".to_owned()),
                ("CKPT_SIGNAL", "USR1".to_owned()),
                ("CKPT_BIN", "/usr/local/bin/ckpt".to_owned()),
            ]
        );
    }
}
