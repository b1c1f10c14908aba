//! The plugin's error type: every failure ends as one SPANK log line (and,
//! in a task, one line on the job's stderr) and a `-1` to Slurm.

use std::fmt;

use crate::ckpt_dir::DirError;
use crate::options::OptionError;
use crate::spank::SpankError;

/// Why a plugin callback failed.
#[derive(Debug)]
pub enum PluginError {
    /// A user option or a plugstack.conf argument was refused.
    Option(OptionError),
    /// The plugstack.conf line is broken: the plugin refuses to load.
    Config(OptionError),
    /// The plugstack.conf line is broken, so checkpointing is unavailable.
    SiteMisconfigured(OptionError),
    /// The checkpoint directory cannot be used.
    Dir(DirError),
    /// A SPANK call failed.
    Spank(SpankError),
    /// The task runs under another uid than the job's user: the directory
    /// would be created by the wrong user.
    WrongUser {
        /// Effective uid of the task.
        euid: u32,
        /// The job's uid.
        uid: u32,
    },
    /// The preload library is not installed on this node.
    LibckptMissing {
        /// The `libckpt=` path.
        path: String,
        /// The error.
        error: String,
    },
    /// `ckpt slurm-task` could not be started.
    Exec {
        /// The `ckpt=` path.
        path: String,
        /// The error.
        error: String,
    },
    /// The task has checkpoints and none of them can be restored.
    CannotResume {
        /// The task's checkpoint directory.
        dir: String,
        /// What `ckpt` said.
        why: String,
    },
    /// Checkpointing cannot keep what slurmstepd does for a task on this
    /// node (after_task_init): the task is refused.
    NotAvailable(String),
    /// A callback panicked (a bug); caught at the FFI boundary.
    Panic(&'static str),
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Option(e) => write!(f, "{e}"),
            Self::Config(e) => write!(f, "the ckpt plugin is not loaded: {e}"),
            Self::SiteMisconfigured(e) => write!(
                f,
                "checkpointing is unavailable on this cluster: {e}; ask the administrator \
                 to fix the ckpt line of plugstack.conf"
            ),
            Self::Dir(e) => write!(f, "{e}"),
            Self::Spank(e) => write!(f, "{e}"),
            Self::WrongUser { euid, uid } => write!(
                f,
                "task runs as uid {euid}, not as the job's uid {uid}: refusing to create the \
                 checkpoint directory as another user"
            ),
            Self::LibckptMissing { path, error } => write!(
                f,
                "preload library {path} is not usable on this node ({error}): install ckpt \
                 here or fix libckpt= in plugstack.conf"
            ),
            Self::Exec { path, error } => write!(
                f,
                "cannot run {path} ({error}): install ckpt on this node or fix ckpt= in \
                 plugstack.conf"
            ),
            Self::CannotResume { dir, why } => write!(
                f,
                "cannot resume this task from its checkpoints in {dir}: {why}; the task is not \
                 started again from the beginning, to protect its outputs: inspect them with \
                 `ckpt status --dir {dir}`, then remove that directory to start over"
            ),
            Self::NotAvailable(why) => write!(f, "{why}"),
            Self::Panic(callback) => {
                write!(f, "internal error (panic) in {callback}; please report it")
            }
        }
    }
}

impl std::error::Error for PluginError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Option(e) | Self::Config(e) | Self::SiteMisconfigured(e) => Some(e),
            Self::Dir(e) => Some(e),
            Self::Spank(e) => Some(e),
            _ => None,
        }
    }
}

impl From<OptionError> for PluginError {
    fn from(e: OptionError) -> Self {
        Self::Option(e)
    }
}

impl From<DirError> for PluginError {
    fn from(e: DirError) -> Self {
        Self::Dir(e)
    }
}

impl From<SpankError> for PluginError {
    fn from(e: SpankError) -> Self {
        Self::Spank(e)
    }
}
