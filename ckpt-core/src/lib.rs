//! ckpt-core: the checkpoint engine.
//!
//! - [`image`]: the versioned on-disk format (header, manifests, checksums,
//!   generations with atomic publish and fallback).
//! - [`signal_safe`]: the fence: raw syscalls, an mmap-backed buffer and
//!   allocation-free /proc parsers, usable while other threads are stopped.
//! - [`preload`]: what runs inside the checkpointed program when the crate
//!   is loaded as `libckpt.so` (constructor, checkpoint thread, stop handler,
//!   image writer, and the last stage of restore).
//! - [`objects`]: kernel objects event loops use (eventfd, timerfd,
//!   signalfd, epoll): one module per kind with its schema, capture,
//!   validation, restore and tests.
//! - [`coord`]: the coordinator protocol.
//! - [`error`]: error types.
//! - [`fault`]: named fault points for the reliability tests (`CKPT_FAULT`).
#![warn(missing_docs)]

pub mod coord;
pub mod error;
pub mod fault;
pub mod image;
pub mod objects;
pub mod preload;
pub mod signal_safe;
