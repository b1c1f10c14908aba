//! Restore: stage 1 (ordinary Rust in the new process) and the stage 2
//! argument block; stage 2 itself is `restorer/restorer.c`.

pub mod aliases;
pub mod blob;
pub mod chain;
pub mod expand;
pub mod names;
pub mod pids;
pub mod shared;
pub mod stage1;
pub mod tree;
pub mod vdso;
