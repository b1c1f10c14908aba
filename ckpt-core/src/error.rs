//! Errors of the ckpt engine.

use std::fmt;
use std::path::PathBuf;

/// What went wrong with a checkpoint directory or image.
#[derive(Debug)]
pub enum ImageError {
    /// The checkpoint directory cannot be used.
    Dir {
        /// The directory.
        dir: PathBuf,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// An I/O error on a named file.
    Io {
        /// The file.
        file: PathBuf,
        /// What we were doing.
        op: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file is damaged.
    Corrupt {
        /// The file.
        file: String,
        /// What is wrong.
        what: String,
    },
    /// A file is not a ckpt image at all.
    NotAnImage {
        /// The file.
        file: String,
    },
    /// Written by an incompatible format version.
    Version {
        /// The file.
        file: String,
        /// Its major.
        major: u16,
        /// Its minor.
        minor: u16,
    },
    /// Made for another machine architecture.
    ForeignArch {
        /// The file.
        file: String,
        /// Its ELF machine number.
        machine: u32,
    },
    /// The image belongs to another user.
    Foreign {
        /// The file.
        file: PathBuf,
        /// Its owner.
        owner: u32,
        /// Who we are.
        me: u32,
    },
    /// There is no complete generation.
    NoImage {
        /// The directory.
        dir: PathBuf,
    },
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageError::Dir { dir, problem } => {
                write!(f, "checkpoint directory {}: {problem}", dir.display())
            }
            ImageError::Io { file, op, source } => write!(f, "{}: {op}: {source}", file.display()),
            ImageError::Corrupt { file, what } => write!(f, "{file}: corrupt image: {what}"),
            ImageError::NotAnImage { file } => write!(f, "{file}: not a ckpt image (bad magic)"),
            ImageError::Version { file, major, minor } => write!(
                f,
                "{file}: image format {major}.{minor} is not supported by this ckpt (reads {}.0 to {}.{}); restart it with the ckpt version that wrote it",
                super::image::format::FORMAT_MAJOR,
                super::image::format::FORMAT_MAJOR,
                super::image::format::FORMAT_MINOR
            ),
            ImageError::ForeignArch { file, machine } => {
                write!(
                    f,
                    "{file}: image was made on another machine architecture (ELF machine {machine}); this host is x86_64"
                )
            }
            ImageError::Foreign { file, owner, me } => write!(
                f,
                "{}: belongs to uid {owner}, not to you (uid {me}); refusing to restore another user's image",
                file.display()
            ),
            ImageError::NoImage { dir } => write!(
                f,
                "no complete checkpoint in {} (run `ckpt status --dir {}` to see what is there)",
                dir.display(),
                dir.display()
            ),
        }
    }
}

impl std::error::Error for ImageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ImageError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl ImageError {
    /// An I/O error with its file and operation.
    pub fn io(file: impl Into<PathBuf>, op: &'static str, source: std::io::Error) -> Self {
        ImageError::Io {
            file: file.into(),
            op,
            source,
        }
    }
}
