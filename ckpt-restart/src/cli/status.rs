//! `ckpt status --dir D`: list the generations.

use super::{Failure, Opts, need_dir};
use ckpt::image::generation::CheckpointDir;

/// Run the subcommand.
pub fn run(o: &Opts) -> Result<i32, Failure> {
    let path = need_dir(o)?;
    let dir = CheckpointDir::open(&path)?;
    let gens = dir.list()?;
    // A batch job's directory: its generations are the batch step's, each
    // naming the images of its steps' tasks (docs/batch-jobs.md).
    if gens.is_empty() && path.join("batch").is_dir() {
        println!(
            "{}: a batch job's directory: its checkpoints are those of {}",
            path.display(),
            path.join("batch").display()
        );
        let batch = Opts {
            dir: Some(path.join("batch")),
            ..Opts::default()
        };
        return run(&batch);
    }
    let running = crate::sock::is_live(&dir.socket_path());
    println!(
        "{}: {}",
        dir.path().display(),
        if running {
            "a job is running"
        } else {
            "no job running"
        }
    );
    if gens.is_empty() {
        println!("no checkpoints");
        return Ok(0);
    }
    println!(
        "{:<12} {:<20} {:>10} {:>10}  {:<10} {:<12} command",
        "generation", "time (UTC)", "size", "pause", "state", "type"
    );
    for g in gens {
        let name = g
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match &g.record {
            Some(r) => println!(
                "{:<12} {:<20} {:>10} {:>8.1}ms  {:<10} {:<12} {}",
                name,
                utc(r.created_unix),
                super::checkpoint::human_bytes(r.bytes),
                r.pause_us as f64 / 1000.0,
                g.state,
                // An incremental generation needs the one it refers to.
                r.base
                    .map_or_else(|| "full".to_string(), |b| format!("incr. of {b}")),
                shown_command(&r.command)
            ),
            None => println!(
                "{:<12} {:<20} {:>10} {:>10}  {}",
                name, "-", "-", "-", g.state
            ),
        }
        // The steps checkpointed with a batch job, their tasks and nodes.
        for r in g.record.iter().flat_map(|r| r.relaunch.iter()) {
            let cmd: Vec<String> = r
                .argv
                .iter()
                .map(|a| {
                    String::from_utf8_lossy(&crate::restore::names::name_bytes(a)).into_owned()
                })
                .collect();
            let Some(step) = &r.step else {
                println!(
                    "{:<12} restarts `{}` (pid {}) from its beginning: it had not started its step",
                    "",
                    cmd.join(" "),
                    r.pid
                );
                continue;
            };
            println!(
                "{:<12} step {} `{}`: {} task(s) in {}",
                "",
                step.id,
                cmd.join(" "),
                step.tasks.len(),
                step.dir
            );
            let job_dir = dir.path().parent().unwrap_or(dir.path());
            for (rank, n) in step.tasks.iter().enumerate() {
                let gen_dir = job_dir
                    .join(&step.dir)
                    .join(format!("task{rank}"))
                    .join(format!("gen-{n:06}"));
                let size = std::fs::read_dir(&gen_dir)
                    .map(|d| {
                        d.flatten()
                            .filter_map(|e| e.metadata().ok())
                            .map(|m| m.len())
                            .sum::<u64>()
                    })
                    .map_or_else(|_| "missing".to_string(), super::checkpoint::human_bytes);
                println!(
                    "{:<12}   task {rank}: gen-{n:06} ({size}){}",
                    "",
                    step.nodes
                        .get(rank)
                        .filter(|n| !n.is_empty())
                        .map(|n| format!(" on {n}"))
                        .unwrap_or_default()
                );
            }
        }
        // The files it puts back at a restart (docs/files.md).
        for f in g.record.iter().flat_map(|r| r.files.iter()) {
            println!(
                "{:<12} keeps {} ({}{})",
                "",
                String::from_utf8_lossy(&crate::restore::names::name_bytes(&f.path)),
                super::checkpoint::human_bytes(f.size),
                if f.deleted {
                    ", deleted while open"
                } else {
                    ""
                }
            );
        }
    }
    // What the newest restorable generation needs of a CPU, for choosing
    // nodes (docs/kernel.md §11).
    if let Some(g) = dir.candidates()?.into_iter().find_map(|(_, g)| g.ok()) {
        let mut need = ckpt::image::manifest::CpuInfo {
            features: [0; 4],
            xcr0: 0,
        };
        for m in &g.processes {
            for (n, f) in need.features.iter_mut().zip(m.cpu.features) {
                *n |= f;
            }
            need.xcr0 |= m.cpu.xcr0;
        }
        println!(
            "generation {} needs a CPU with: {}",
            g.record.number,
            crate::cpu::named(&need).join(", ")
        );
        let lack = crate::cpu::missing(&need, &crate::cpu::current());
        if !lack.is_empty() {
            println!("this node lacks: {}", lack.join(", "));
        }
    }
    Ok(0)
}

/// The program's command line: a Slurm task runs it through `ckpt
/// slurm-exec [--ignore N] --`, which is not what the user started.
fn shown_command(cmd: &[String]) -> String {
    if cmd.get(1).is_some_and(|v| v == "slurm-exec")
        && let Some(dashes) = cmd.iter().position(|a| a == "--")
    {
        return cmd.get(dashes + 1..).unwrap_or(&[]).join(" ");
    }
    cmd.join(" ")
}

fn utc(t: u64) -> String {
    let days = t / 86400;
    let s = t % 86400;
    // civil-from-days (Howard Hinnant)
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        s / 3600,
        s % 3600 / 60,
        s % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn slurm_wrapper_is_not_shown() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            super::shown_command(&v(&[
                "/usr/bin/ckpt",
                "slurm-exec",
                "--ignore",
                "10",
                "--",
                "./sim",
                "-n",
                "3"
            ])),
            "./sim -n 3"
        );
        assert_eq!(
            super::shown_command(&v(&["python3", "--", "x"])),
            "python3 -- x"
        );
    }

    #[test]
    fn utc_dates() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00");
        assert_eq!(super::utc(1_795_000_000), "2026-11-18 11:06:40");
    }
}
