//! `srun --multi-prog CONF`: the command of one task.
//!
//! slurmstepd picks each task's command from the configuration after the
//! plugin's `task_init` has run (docs/slurm-task-order.md), so the argv the
//! plugin sees is the step's: `[CONF, <content of CONF>, extra args...]`.
//! `ckpt slurm-task` picks the task's command itself, with slurmstepd's rules
//! (`multi_prog_get_argv()` in src/slurmd/slurmstepd/multi_prog.c, 22.05 and
//! 25.11): one line per rank set (`*`, `N`, `N-M`, comma lists), `#` starts a
//! whole-line comment, arguments split at blanks, `'...'` keeps everything
//! inside, `\` escapes the next character or continues the line, `%t` is the
//! task's rank and `%o` its offset within the line's ranks; the step's extra
//! arguments are appended.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

/// Whether `argv` is that of a `--multi-prog` step: its first word is a
/// file whose content is its second word (srun sends both).
pub fn is_multi_prog(argv: &[OsString]) -> bool {
    let (Some(conf), Some(data)) = (argv.first(), argv.get(1)) else {
        return false;
    };
    std::fs::read(conf).is_ok_and(|c| c.trim_ascii_end() == data.as_bytes().trim_ascii_end())
}

/// Whether `rank` is in `spec`, and its offset there.
fn in_range(rank: u32, spec: &str) -> Option<u32> {
    if spec == "*" {
        return Some(rank);
    }
    let mut passed = 0u32;
    for range in spec.split(',').filter(|r| !r.is_empty()) {
        if let Ok(n) = range.parse::<u32>() {
            if n == rank {
                return Some(passed);
            }
            passed += 1;
        } else if let Some((lo, hi)) = range.split_once('-')
            && let (Ok(lo), Ok(hi)) = (lo.parse::<u32>(), hi.parse::<u32>())
        {
            if (lo..=hi).contains(&rank) {
                return Some(passed + (rank - lo));
            }
            passed += hi.saturating_sub(lo) + 1;
        }
    }
    None
}

/// The command of task `rank` from a `--multi-prog` step's argv.
pub fn task_argv(argv: &[OsString], rank: u32) -> Result<Vec<OsString>, String> {
    let data = argv.get(1).map(|d| d.as_bytes()).unwrap_or_default();
    let text = String::from_utf8_lossy(data);
    let lines: Vec<&str> = text.split('\n').filter(|l| !l.is_empty()).collect();
    let mut i = 0;
    let mut continued = false;
    while i < lines.len() {
        let line = lines[i];
        i += 1;
        let was_continued = continued;
        continued = line.ends_with('\\');
        if was_continued {
            continue;
        }
        let line = line.trim_start();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let Some(split) = line.find(char::is_whitespace) else {
            return Err(format!("invalid --multi-prog line {i}: {line:?}"));
        };
        let (spec, rest) = line.split_at(split);
        let Some(offset) = in_range(rank, spec) else {
            continue;
        };
        // The arguments, possibly continued on the next lines.
        let mut chars: Vec<char> = rest.trim_start().chars().collect();
        let mut out: Vec<String> = Vec::new();
        let mut arg: Option<String> = None;
        let mut k = 0;
        while let Some(&c) = chars.get(k) {
            match c {
                '%' => {
                    let a = arg.get_or_insert_with(String::new);
                    match chars.get(k + 1) {
                        Some('t') => a.push_str(&rank.to_string()),
                        Some('o') => a.push_str(&offset.to_string()),
                        _ => {}
                    }
                    k += 2;
                }
                '\\' => {
                    if let Some(&n) = chars.get(k + 1) {
                        arg.get_or_insert_with(String::new).push(n);
                        k += 2;
                    } else if i < lines.len() {
                        chars = lines[i].chars().collect();
                        i += 1;
                        k = 0;
                    } else {
                        break;
                    }
                }
                '\'' => {
                    let a = arg.get_or_insert_with(String::new);
                    k += 1;
                    loop {
                        match chars.get(k) {
                            Some('\'') => {
                                k += 1;
                                break;
                            }
                            Some(&q) => {
                                a.push(q);
                                k += 1;
                            }
                            None => {
                                if chars.last() == Some(&'\\') && i < lines.len() {
                                    a.pop();
                                    chars = lines[i].chars().collect();
                                    i += 1;
                                    k = 0;
                                } else {
                                    return Err(format!("--multi-prog line {i}: no closing quote"));
                                }
                            }
                        }
                    }
                }
                c if c.is_whitespace() => {
                    if let Some(a) = arg.take() {
                        out.push(a);
                    }
                    k += 1;
                }
                c => {
                    arg.get_or_insert_with(String::new).push(c);
                    k += 1;
                }
            }
        }
        if let Some(a) = arg.take() {
            out.push(a);
        }
        let mut v: Vec<OsString> = out
            .into_iter()
            .map(|s| OsString::from_vec(s.into_bytes()))
            .collect();
        v.extend(argv.iter().skip(2).cloned());
        if v.is_empty() {
            return Err(format!("--multi-prog line {i}: no program for task {rank}"));
        }
        return Ok(v);
    }
    Err(format!("--multi-prog: no program for task {rank}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(conf: &str) -> Vec<OsString> {
        vec!["mp.conf".into(), conf.into()]
    }

    fn words(v: Vec<OsString>) -> Vec<String> {
        v.into_iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn picks_the_rank_line_as_slurmstepd_does() {
        let conf = "# a comment\n\n0 python3 pi.py 30 0.5\n1-3,5 ./sim -r %t -o %o 'a b'\n* echo rest\\ x\n";
        let a = argv(conf);
        assert_eq!(
            words(task_argv(&a, 0).unwrap()),
            ["python3", "pi.py", "30", "0.5"]
        );
        assert_eq!(
            words(task_argv(&a, 2).unwrap()),
            ["./sim", "-r", "2", "-o", "1", "a b"]
        );
        assert_eq!(
            words(task_argv(&a, 5).unwrap()),
            ["./sim", "-r", "5", "-o", "3", "a b"]
        );
        assert_eq!(words(task_argv(&a, 4).unwrap()), ["echo", "rest x"]);
        let mut extra = argv("0 prog\n");
        extra.push("--more".into());
        assert_eq!(words(task_argv(&extra, 0).unwrap()), ["prog", "--more"]);
        assert!(task_argv(&argv("1 prog\n"), 0).is_err());
    }

    #[test]
    fn a_continued_line_is_one_command() {
        let a = argv("0 prog a \\\nb\n1 other\n");
        assert_eq!(words(task_argv(&a, 0).unwrap()), ["prog", "a", "b"]);
        assert_eq!(words(task_argv(&a, 1).unwrap()), ["other"]);
    }

    #[test]
    fn detects_a_multi_prog_argv() {
        let p = std::env::temp_dir().join(format!("ckpt-mp-{}.conf", std::process::id()));
        std::fs::write(&p, "0 true\n").unwrap();
        let a = vec![p.clone().into_os_string(), "0 true\n".into()];
        assert!(is_multi_prog(&a));
        assert!(!is_multi_prog(&[p.clone().into_os_string(), "x".into()]));
        assert!(!is_multi_prog(&["/bin/true".into()]));
        let _ = std::fs::remove_file(&p);
    }
}
