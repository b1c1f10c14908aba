//! `ckpt checkpoint --dir D`: ask the running job for a durable checkpoint.

use super::{Failure, Opts, need_dir};
use ckpt::image::generation::CheckpointDir;

/// Run the subcommand.
pub fn run(o: &Opts) -> Result<i32, Failure> {
    let dir = CheckpointDir::open(&need_dir(o)?)?;
    let sock = dir.socket_path();
    if !sock.exists() {
        return Err(Failure {
            msg: format!(
                "nothing is running under {} (no coordinator socket); start the program with `ckpt launch --dir {}`",
                dir.path().display(),
                dir.path().display()
            ),
            code: 1,
        });
    }
    let reply = crate::coord::request(&sock).map_err(|e| Failure {
        // Unreachable: nothing runs there. Reached but gone: say what happened.
        msg: if e.starts_with("cannot reach") {
            format!("nothing is running under {} ({e})", dir.path().display())
        } else {
            format!(
                "checkpoint of the job under {} failed: {e}",
                dir.path().display()
            )
        },
        code: 1,
    })?;
    if let Some(rest) = reply.strip_prefix("OK ") {
        let f: Vec<&str> = rest.split(' ').collect();
        let num = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
        println!(
            "checkpoint written: {} ({} process{}, {}{}, program paused {:.1} ms, durable after {:.1} ms)",
            f.first().unwrap_or(&"?"),
            num(4),
            if num(4) == 1 { "" } else { "es" },
            human_bytes(num(1)),
            if num(6) > 0 {
                format!(" incremental: unchanged memory is in generation {}", num(6))
            } else {
                String::new()
            },
            num(2) as f64 / 1000.0,
            num(3) as f64 / 1000.0
        );
        if num(5) > 0 {
            println!("{}", in_place_note(num(5), num(7)));
        }
        return Ok(0);
    }
    Err(Failure {
        msg: reply.strip_prefix("ERR ").unwrap_or(&reply).to_string(),
        code: 1,
    })
}

/// Why `total` processes were written while the job stood still, `advice`
/// of them because a copy-on-write snapshot lacks memory they advised for
/// forks (the count comes first: tests and scripts read it).
fn in_place_note(total: u64, advice: u64) -> String {
    const LIMIT: &str = "the job's memory limit leaves no room for a copy-on-write snapshot \
                         (or CKPT_SNAPSHOT=0)";
    const ADVICE: &str = "a copy-on-write snapshot lacks memory the program advised \
                          MADV_DONTFORK or MADV_WIPEONFORK (docs/signals.md)";
    let advice = advice.min(total);
    let why = if advice == 0 {
        LIMIT.to_string()
    } else if advice == total {
        ADVICE.to_string()
    } else {
        format!(
            "{advice} because {ADVICE}; {} because {LIMIT}",
            total - advice
        )
    };
    format!(
        "note: {total} process{} written while the job stood still: {why}",
        if total == 1 { " was" } else { "es were" }
    )
}

/// Bytes in a human unit.
pub fn human_bytes(b: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

#[cfg(test)]
mod tests {
    use super::in_place_note;

    #[test]
    fn the_in_place_note_gives_the_count_first_and_each_reason() {
        let limit = in_place_note(2, 0);
        assert!(limit.starts_with("note: 2 processes were written while the job stood still: "));
        assert!(limit.contains("memory limit") && !limit.contains("MADV_"));
        let advice = in_place_note(1, 1);
        assert!(advice.starts_with("note: 1 process was written"));
        assert!(advice.contains("MADV_WIPEONFORK") && !advice.contains("memory limit"));
        let both = in_place_note(3, 1);
        assert!(both.contains("1 because a copy-on-write snapshot lacks"));
        assert!(both.contains("2 because the job's memory limit"));
    }
}
