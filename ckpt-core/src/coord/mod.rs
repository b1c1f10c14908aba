//! The coordinator protocol between `ckpt` (the coordinator) and the
//! preloaded library in each process.
//!
//! Transport: a `SOCK_SEQPACKET` unix socket (`DIR/ckpt.sock`), one short
//! ASCII message per packet, at most [`MAX_MSG`] bytes.
//!
//! | from | message | meaning |
//! |---|---|---|
//! | process | `HELLO <pid> <exe>` | a process registers (pid as seen in the job's namespace) |
//! | coordinator | `CKPT <generation dir>` | stop, write `proc-<pid>.{img,json}` there, resume |
//! | process | `DONE <pid> <bytes> <pause_us>` | image written and fsynced |
//! | process | `FAIL <pid> <message>` | the checkpoint failed; the process keeps running |
//! | client | `CHECKPOINT` | `ckpt checkpoint` asks for a blocking checkpoint |
//! | coordinator | `OK <generation dir> <bytes> <pause_us> <total_us>` / `ERR <message>` | its answer |

/// Largest message.
pub const MAX_MSG: usize = 4096;
/// Environment variable that carries the coordinator socket path into the program.
pub const ENV_SOCKET: &str = "CKPT_SOCKET";
/// Signal used internally to stop threads at a safe point (SIGRTMIN+28 with
/// glibc; glibc itself uses only SIGRTMIN-2 and SIGRTMIN-1).
pub const STOP_SIGNAL: i32 = 62;
