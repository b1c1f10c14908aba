//! `libspank_ckpt.so`: the SPANK plugin that makes Slurm jobs checkpointable.
//!
//! It adds `--checkpoint`, `--checkpoint-dir=DIR` and
//! `--checkpoint-interval=SECONDS` to srun, sbatch and salloc, refuses bad
//! values at submission, and starts each task of a job that uses them with
//! `libckpt.so` preloaded and its settings in `CKPT_*` variables (see
//! [`task_env`]), after creating the checkpoint directory as the job's user.
//!
//! Modules:
//! - [`export`]: the symbols Slurm looks up (metadata, callbacks); the only
//!   `extern "C"` items, each under `catch_unwind`.
//! - [`spank`]: safe handle over the SPANK calls of the host process.
//! - [`hooks`]: one function per callback, context checked first.
//! - [`options`]: pure parsing and validation of user options and
//!   plugstack.conf arguments; directory pattern expansion.
//! - [`ckpt_dir`]: creation and checks of the checkpoint directory, as the user.
//! - [`task_env`]: the task's `LD_PRELOAD` and `CKPT_*` variables.
//! - [`after_task_init`]: what slurmstepd does after `task_init` (task
//!   prologs, SELinux context) and how a checkpointed task keeps it.
//! - [`log_relay`]: `ckpt slurm-task`'s messages into the slurmd log,
//!   through a pipe slurmstepd reads.
//! - [`node_check`]: `ckpt check` once when slurmd loads the plugin, as
//!   `nobody`, each problem one line of the slurmd log.
//! - [`error`]: the plugin's error type.
//!
//! Nothing in the plugin runs as root on a user-controlled path: the only
//! file-system work happens in `task_init`, after slurmstepd dropped to the
//! job's user; the node check in slurmd runs the admin's `ckpt=` binary as
//! `nobody`.

pub mod after_task_init;
pub mod ckpt_dir;
pub mod error;
pub mod export;
pub mod hooks;
pub mod log_relay;
pub mod node_check;
pub mod options;
pub mod spank;
pub mod task_env;
