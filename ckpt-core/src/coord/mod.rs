//! The coordinator protocol between `ckpt` (the coordinator) and the
//! preloaded library in each process.
//!
//! Transport: a `SOCK_SEQPACKET` unix socket (`DIR/ckpt.sock`), one short
//! ASCII message per packet, at most [`MAX_MSG`] bytes. Both ends check with
//! `SO_PEERCRED` that the other runs as the same user (`docs/security.md`).
//!
//! | from | message | meaning |
//! |---|---|---|
//! | leader | `STOPPED <pid>` | every thread of the process is parked |
//! | leader | `FAIL <pid> <why>` | it could not stop; the checkpoint is abandoned |
//! | coordinator | `WRITE <generation> <base> <flags> <dir>` + the generation directory's descriptor (`SCM_RIGHTS`) | the whole job is stopped: write `proc-<pid>.{img,json}` there ([`WRITE_TRACK`], [`WRITE_DEFER`]) |
//! | coordinator | `ABORT` | resume without writing |
//! | leader | `DONE <pid> <bytes> <pause_us> [snap=<pid>] [inplace \| inplace=advice]` / `FAIL <pid> <why>` | the image is written (not yet synced) |
//! | coordinator | `RELEASE` | the job may run again |
//! | leader or its snapshot child | `SYNCED <pid> <bytes> <pause_us>` / `FAIL <pid> <why>` | the image is fsynced |
//! | client | `CHECKPOINT` | `ckpt checkpoint` asks for a blocking checkpoint |
//! | coordinator | `OK <dir> <bytes> <pause_us> <total_us> <processes> <in_place> <base> <in_place_advice>` / `ERR <message>` | its answer |

/// `WRITE` flag: track written pages from now on (incremental checkpoints).
pub const WRITE_TRACK: u64 = 1;
/// `WRITE` flag: a snapshot child writes private memory only after its
/// process is released (not when the job is held after the checkpoint: a
/// held process could never tell its child).
pub const WRITE_DEFER: u64 = 2;
/// `WRITE` flag: a snapshot child compresses the private memory it writes
/// after the release (`image::compress`).
pub const WRITE_COMPRESS: u64 = 4;

/// Largest message.
pub const MAX_MSG: usize = 4096;
/// Longest coordinator socket path the job's processes can hold, plus its
/// NUL (the size of their buffers, also in images).
pub const MAX_SOCKET_PATH: usize = 256;
/// Environment variable that carries the coordinator socket path into the program.
pub const ENV_SOCKET: &str = "CKPT_SOCKET";
/// Signal used internally to stop threads at a safe point (SIGRTMIN+28 with
/// glibc; glibc itself uses only SIGRTMIN-2 and SIGRTMIN-1).
pub const STOP_SIGNAL: i32 = 62;
