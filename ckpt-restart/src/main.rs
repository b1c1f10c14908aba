//! `ckpt`: run programs under checkpoint control, checkpoint them, restart them.
//!
//! ```text
//! ckpt launch     --dir D [--interval T] [--keep N] [--incremental M] -- CMD [ARGS...]
//! ckpt checkpoint --dir D
//! ckpt restart    --dir D [--interval T] [--keep N] [--incremental M] [--no-verify]
//! ckpt status     --dir D
//! ckpt check
//! ckpt slurm-task --dir TASKDIR [...] -- ARGV   (run by the SPANK plugin)
//! ```
//! Module map: `cli/` (one file per verb), `coord` (the coordinator),
//! `ns` (namespaces and the job's init), `sock` (seqpacket sockets),
//! `sockets` (what a socket of the job is, for a refused checkpoint),
//! `restore/` (stage 1 and the stage 2 argument block), `restorer/`
//! (stage 2, freestanding C).

mod cli;
mod coord;
mod cpu;
mod ns;
mod pmix_stand_in;
mod proc_fds;
mod relaunch;
mod restore;
mod saved_files;
mod sock;
mod sockets;
mod tree;

const USAGE: &str = "usage:
  ckpt launch     --dir DIR [--interval T] [--keep N] [--incremental M] [--compress] -- COMMAND [ARGS...]
                  run COMMAND under checkpoint control (foreground; exits with its status)
  ckpt checkpoint --dir DIR
                  checkpoint the program running under DIR; returns when the image is durable
  ckpt restart    --dir DIR [--interval T] [--keep N] [--incremental M] [--compress] [--no-verify]
                  resume the newest complete checkpoint in DIR (foreground)
  ckpt status     --dir DIR
                  list the checkpoints in DIR and the files each keeps
  ckpt check
                  can this node run checkpointed jobs? (one line per kernel feature; exit 1 if not)
  ckpt slurm-task --dir TASKDIR [--interval T] [--signal NAME] [--batch] [--keep-images] [--incremental off] -- ARGV...
                  run or resume one Slurm task (the SPANK plugin execs this)

  T is seconds, or a number with s, m or h (30s, 5m, 2h); 0 means no periodic checkpoints.
  --keep N keeps the newest N complete checkpoints (default 2), and the older
  ones an incremental checkpoint refers to.
  --incremental auto|on|off: track written pages so that a checkpoint writes only
  the memory changed since the previous one (auto: when --interval is set).
  --compress: write memory as zstd frames, compressed once the job runs again
  (not in its pause); --compress=off is the default.
  DIR defaults to $CKPT_DIR.";

fn main() {
    // Arguments are bytes: a task's command line (and a directory name) need
    // not be UTF-8, and is passed on byte for byte.
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let Some(verb) = args.first() else {
        eprintln!("{USAGE}");
        std::process::exit(2);
    };
    let verb = verb.to_string_lossy();
    let rest = &args[1..];
    let result = match &*verb {
        "launch" | "checkpoint" | "restart" | "status" => {
            match cli::parse(rest, verb == "launch") {
                Err(e) => Err(cli::Failure { msg: e, code: 2 }),
                Ok(o) => match &*verb {
                    "launch" => cli::launch::run(&o),
                    "checkpoint" => cli::checkpoint::run(&o),
                    "restart" => cli::restart::run(&o),
                    _ => cli::status::run(&o),
                },
            }
        }
        "slurm-task" => cli::slurm::run(rest),
        "check" => cli::check::run(rest),
        "slurm-exec" => cli::slurm::exec_ignoring(rest),
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            Ok(0)
        }
        "--version" | "version" => {
            println!("ckpt {}", env!("CARGO_PKG_VERSION"));
            Ok(0)
        }
        other => Err(cli::Failure {
            msg: format!("unknown command {other:?}\n{USAGE}"),
            code: 2,
        }),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(f) => {
            eprintln!("ckpt: {}", f.msg);
            std::process::exit(f.code);
        }
    }
}
