//! The process manifest (`proc-<pid>.json`) and the generation record
//! (`generation.json`).
//!
//! The process manifest is written by the stopped process itself with the
//! allocation-free writer in `preload::emit`; these serde types are the
//! reader's (and the tests') definition of the same JSON. A round-trip test
//! in `preload::emit` keeps the two in step.

use serde::{Deserialize, Serialize};

/// `format` value of a process manifest.
pub const PROCESS_FORMAT: &str = "ckpt-process";
/// `format` value of a generation record.
pub const GENERATION_FORMAT: &str = "ckpt-generation";

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Everything needed to rebuild one process.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ProcessManifest {
    /// Always [`PROCESS_FORMAT`].
    pub format: String,
    /// `[major, minor]` of the image format.
    pub version: [u16; 2],
    /// Pid inside the job's pid namespace.
    pub pid: i32,
    /// Parent pid (namespace view; 0 when the parent is outside).
    pub ppid: i32,
    /// Process group (namespace view; 0 when the group leader is outside).
    #[serde(default)]
    pub pgid: i32,
    /// Session (namespace view; 0 when the session leader is outside).
    #[serde(default)]
    pub sid: i32,
    /// Its controlling terminal's device number (0: none).
    #[serde(default)]
    pub ctty: u64,
    /// Real uid of the process (the restorer refuses another user).
    pub uid: u32,
    /// Path of the executable.
    pub exe: String,
    /// Wall-clock time of the checkpoint, ns since the epoch.
    pub realtime_ns: u64,
    /// CLOCK_MONOTONIC as the program saw it.
    pub monotonic_ns: u64,
    /// CLOCK_BOOTTIME as the program saw it.
    pub boottime_ns: u64,
    /// CPU identity the program's libraries may depend on.
    pub cpu: CpuInfo,
    /// Where the vDSO and its data pages were.
    pub vdso: VdsoInfo,
    /// Memory-descriptor fields for `PR_SET_MM_MAP`.
    pub mm: MmInfo,
    /// Addresses inside the preloaded libckpt used by the restorer.
    pub hooks: Hooks,
    /// Memory regions in address order.
    pub regions: Vec<Region>,
    /// Threads (the first is the thread group leader).
    pub threads: Vec<Thread>,
    /// Open file descriptors.
    pub fds: Vec<Fd>,
    /// Non-default signal actions.
    pub sigactions: Vec<SigAction>,
    /// Signals pending for the whole process (bit n-1 = signal n).
    #[serde(default)]
    pub shared_pending: u64,
    /// PMIx fences the process was waiting in (`preload::pmix_fence`): a
    /// generation with one is refused (passing).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pmix_fences: u32,
    /// Working directory.
    pub cwd: String,
    /// File-creation mask.
    pub umask: u32,
    /// `[resource, soft, hard]` for every resource.
    pub rlimits: Vec<[u64; 3]>,
    /// `[which, interval_us, value_us]` of armed interval timers.
    pub itimers: Vec<[u64; 3]>,
    /// POSIX timers (`timer_create`), by id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub posix_timers: Vec<crate::objects::posix_timer::PosixTimer>,
    /// Name of the data file and its total size.
    pub image: ImageRef,
    /// Incremental image: the generation whose image of this process holds
    /// the pages listed as `inherited` (at the same addresses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<u64>,
}

impl ProcessManifest {
    /// A manifest of process `pid` with nothing in it (no memory, no
    /// thread, no descriptor): what a process started again rather than
    /// restored is given (`ckpt-restart/src/relaunch.rs`), and a base for
    /// tests.
    pub fn bare(pid: i32, ppid: i32, uid: u32, exe: &str) -> ProcessManifest {
        ProcessManifest {
            format: PROCESS_FORMAT.into(),
            version: [
                crate::image::format::FORMAT_MAJOR,
                crate::image::format::FORMAT_MINOR,
            ],
            pid,
            ppid,
            pgid: 0,
            sid: 0,
            ctty: 0,
            uid,
            exe: exe.into(),
            realtime_ns: 0,
            monotonic_ns: 0,
            boottime_ns: 0,
            cpu: CpuInfo {
                features: [0; 4],
                xcr0: 0,
            },
            vdso: VdsoInfo {
                vvar: 0,
                vdso: 0,
                vdso_len: 0,
                crc: 0,
                symbols: Vec::new(),
            },
            mm: MmInfo::default(),
            hooks: Hooks {
                restore_info: 0,
                finish_args: 0,
                finish: 0,
                finish_args_size: 0,
            },
            regions: Vec::new(),
            threads: Vec::new(),
            fds: Vec::new(),
            sigactions: Vec::new(),
            shared_pending: 0,
            pmix_fences: 0,
            cwd: "/".into(),
            umask: 0o022,
            rlimits: Vec::new(),
            itimers: Vec::new(),
            posix_timers: Vec::new(),
            image: ImageRef {
                file: String::new(),
                size: 0,
            },
            base: None,
        }
    }
}

/// CPU identity.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CpuInfo {
    /// CPUID leaf 1 ECX, EDX and leaf 7 EBX, ECX.
    pub features: [u32; 4],
    /// Enabled XSAVE features (XCR0).
    pub xcr0: u64,
}

impl CpuInfo {
    /// The CPU this code runs on: CPUID leaf 1 ECX (without bit 27,
    /// OSXSAVE, which varies per boot) and EDX, leaf 7 EBX and ECX, and XCR0
    /// (`xgetbv`, read only when OSXSAVE says it may be). No allocation, no
    /// system call: safe in the stop handler.
    pub fn current() -> CpuInfo {
        use core::arch::x86_64::{__cpuid, __cpuid_count};
        let l1 = __cpuid(1);
        let l7 = __cpuid_count(7, 0);
        let xcr0 = if l1.ecx & (1 << 27) != 0 {
            let lo: u32;
            let hi: u32;
            // SAFETY: XGETBV with ECX=0 is valid when OSXSAVE is set (checked).
            unsafe {
                core::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi,
                    options(nomem, nostack))
            };
            (u64::from(hi) << 32) | u64::from(lo)
        } else {
            0
        };
        CpuInfo {
            features: [l1.ecx & !(1 << 27), l1.edx, l7.ebx, l7.ecx],
            xcr0,
        }
    }
}

/// vDSO placement and identity.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct VdsoInfo {
    /// Start of `[vvar]` (the vDSO block starts here).
    pub vvar: u64,
    /// Start of `[vdso]`.
    pub vdso: u64,
    /// Length of `[vdso]`.
    pub vdso_len: u64,
    /// CRC-32C of the vDSO text (the same kernel build maps it back as it
    /// was; another build is redirected, `objects::vdso`).
    pub crc: u32,
    /// The functions the vDSO exports, with their offsets (1.4; absent in
    /// older images, which only restart on the same kernel build).
    #[serde(default)]
    pub symbols: Vec<(String, u64)>,
}

/// Memory descriptor fields.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct MmInfo {
    /// start_code.
    pub start_code: u64,
    /// end_code.
    pub end_code: u64,
    /// start_data.
    pub start_data: u64,
    /// end_data.
    pub end_data: u64,
    /// start_brk.
    pub start_brk: u64,
    /// Current brk.
    pub brk: u64,
    /// start_stack.
    pub start_stack: u64,
    /// arg_start.
    pub arg_start: u64,
    /// arg_end.
    pub arg_end: u64,
    /// env_start.
    pub env_start: u64,
    /// env_end.
    pub env_end: u64,
    /// The auxiliary vector as u64 words.
    pub auxv: Vec<u64>,
}

/// Restorer hooks in libckpt.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Hooks {
    /// Address of libckpt's `RestoreInfo` block.
    pub restore_info: u64,
    /// Address of libckpt's `FinishArgs` block.
    pub finish_args: u64,
    /// Address of `ckpt_restore_finish`.
    pub finish: u64,
    /// Size of that libckpt's `FinishArgs` (format 1.5; 0 before): the
    /// restart copies its own `FinishArgs` there, so the two must agree.
    #[serde(default)]
    pub finish_args_size: u64,
}

/// How a region is rebuilt.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RegionKind {
    /// Private anonymous memory (heap, stacks, anonymous mmaps).
    Anon,
    /// Shared anonymous memory (`MAP_SHARED|MAP_ANONYMOUS`, memfd, deleted shm).
    SharedAnon,
    /// Private file mapping: the file is mapped again, written pages are restored over it.
    File,
    /// Shared file mapping: the file is mapped again; its data lives in the file.
    SharedFile,
}

/// One memory region.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Region {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// PROT_* bits.
    pub prot: u32,
    /// How to rebuild it.
    pub kind: RegionKind,
    /// Path or pseudo-name as `/proc/self/maps` showed it.
    pub name: String,
    /// File offset (file kinds).
    pub offset: u64,
    /// Device and inode of the file (file kinds), to detect a changed file.
    pub dev: u64,
    /// Inode.
    pub inode: u64,
    /// Size and mtime (ns) of the file at checkpoint time.
    pub file_size: u64,
    /// mtime in ns.
    pub file_mtime_ns: u64,
    /// Where this region's saved pages start in the image file.
    pub data_offset: u64,
    /// Saved page runs `[first page index in the region, page count]`, in order,
    /// stored back to back from `data_offset`.
    pub runs: Vec<[u64; 2]>,
    /// Page runs not written again (incremental image): their content is
    /// that of the same addresses in the base generation's image. In order,
    /// never overlapping `runs`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inherited: Vec<[u64; 2]>,
    /// CRC-32C of the region's pages, `runs` and `inherited` together, in
    /// address order.
    pub crc: u32,
    /// Grows down (main stack).
    pub growsdown: bool,
    /// Transparent huge pages were advised.
    pub hugepage: bool,
    /// What the program advised for its forks (1.9; absent in older images:
    /// none).
    #[serde(default, skip_serializing_if = "ForkAdvice::is_none")]
    pub fork: ForkAdvice,
}

/// The fork advice of a region, as `madvise(2)` set it: bit 0
/// `MADV_DONTFORK` (a child of `fork` does not have the region), bit 1
/// `MADV_WIPEONFORK` (a child has it zeroed). Both are kept by a restore,
/// since a program relies on them in its children (a TLS library's
/// fork-detection page is `MADV_WIPEONFORK`).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct ForkAdvice(pub u8);

impl ForkAdvice {
    /// `MADV_DONTFORK`.
    pub const DONTFORK: u8 = 1;
    /// `MADV_WIPEONFORK`.
    pub const WIPEONFORK: u8 = 2;

    /// Neither advice.
    pub fn is_none(&self) -> bool {
        self.0 == 0
    }

    /// Whether `MADV_DONTFORK` was advised.
    pub fn dontfork(self) -> bool {
        self.0 & Self::DONTFORK != 0
    }

    /// Whether `MADV_WIPEONFORK` was advised.
    pub fn wipeonfork(self) -> bool {
        self.0 & Self::WIPEONFORK != 0
    }
}

impl Region {
    /// Bytes saved for this region.
    pub fn saved_bytes(&self) -> u64 {
        self.runs.iter().map(|r| r[1]).sum::<u64>() * super::format::PAGE_SIZE
    }
}

/// One thread.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Thread {
    /// Thread id (namespace view).
    pub tid: i32,
    /// Address of the `ucontext_t` the kernel wrote when the thread was
    /// stopped; `rt_sigreturn` from there resumes it.
    pub ucontext: u64,
    /// FS base (TLS).
    pub fs_base: u64,
    /// GS base.
    pub gs_base: u64,
    /// Registered rseq area (0 if none) and its signature.
    pub rseq: u64,
    /// rseq signature.
    pub rseq_sig: u32,
    /// Robust futex list head and length.
    pub robust_head: u64,
    /// Robust list length.
    pub robust_len: u64,
    /// clear_child_tid address.
    pub clear_tid: u64,
    /// A stack address below which the thread's stack is free (scratch for the restorer).
    pub scratch_sp: u64,
    /// Signals pending for this thread (bit n-1 = signal n).
    #[serde(default)]
    pub pending: u64,
    /// The instruction pointer the thread resumes at (1.4; 0 in older
    /// images).
    #[serde(default)]
    pub rip: u64,
    /// The thread's name (`/proc/.../comm`).
    #[serde(default)]
    pub name: String,
}

/// What an fd refers to.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FdKind {
    /// A regular file, reopened by path at its offset.
    File,
    /// A directory.
    Dir,
    /// `/dev/null`, `/dev/zero`, `/dev/urandom` and the like.
    Device,
    /// A pipe or FIFO.
    Pipe,
    /// A terminal.
    Tty,
    /// A socket.
    Socket,
    /// A kernel object ckpt saves and recreates (eventfd, timerfd,
    /// signalfd, epoll): its state is in [`Fd::object`].
    Object,
    /// Anything else (`anon_inode:` objects ckpt does not save: io_uring,
    /// inotify...), refused at checkpoint time.
    Other,
}

/// One file descriptor.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Fd {
    /// Descriptor number.
    pub fd: i32,
    /// Kind.
    pub kind: FdKind,
    /// Target as `/proc/self/fd/N` showed it.
    pub path: String,
    /// Open flags (`O_*`, from fdinfo).
    pub flags: u32,
    /// File offset.
    pub pos: u64,
    /// Close-on-exec.
    pub cloexec: bool,
    /// Terminal settings (`struct termios` words) for ttys.
    pub termios: Vec<u32>,
    /// Device/inode of the object (to spot shared descriptions).
    pub dev: u64,
    /// Inode.
    pub inode: u64,
    /// Bytes that were buffered in a pipe: `[offset in the data file, length]`.
    #[serde(default)]
    pub pipe_data: Option<[u64; 2]>,
    /// CRC-32C of those bytes (absent in images written before it was
    /// added; their pipe data is restored unchecked).
    #[serde(default)]
    pub pipe_crc: Option<u32>,
    /// The state of a [`FdKind::Object`] (`ckpt-core/src/objects`); absent
    /// when it could not be read (the checkpoint is then refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<crate::objects::Object>,
    /// The state of a unix socket (`ckpt-core/src/objects/unix_socket.rs`);
    /// absent for other families and when it could not be read (the
    /// checkpoint is then refused unless the socket is at 0..2 with its
    /// peer outside the job).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<crate::objects::unix_socket::UnixSocket>,
    /// The state of a TCP or UDP socket
    /// (`ckpt-core/src/objects/inet_socket.rs`); absent for other families
    /// and when it could not be read (the checkpoint is then refused unless
    /// the socket is at 0..2 with its peer outside the job).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inet: Option<crate::objects::inet_socket::InetSocket>,
    /// A pseudo-terminal end (`ckpt-core/src/objects/pty.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pty: Option<crate::objects::pty::Pty>,
}

/// One signal action (kernel layout).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SigAction {
    /// Signal number.
    pub sig: i32,
    /// Handler address (0 = default, 1 = ignore).
    pub handler: u64,
    /// SA_* flags.
    pub flags: u64,
    /// Restorer trampoline.
    pub restorer: u64,
    /// Mask during the handler.
    pub mask: u64,
}

/// The data file of a process.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageRef {
    /// File name inside the generation directory.
    pub file: String,
    /// Its size in bytes, header included.
    pub size: u64,
}

/// The record that makes a generation complete (`generation.json`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct GenerationRecord {
    /// Always [`GENERATION_FORMAT`].
    pub format: String,
    /// `[major, minor]` of the image format.
    pub version: [u16; 2],
    /// Generation number.
    pub number: u64,
    /// Wall-clock time of the checkpoint, seconds since the epoch.
    pub created_unix: u64,
    /// Owner uid.
    pub uid: u32,
    /// The command that was launched.
    pub command: Vec<String>,
    /// Processes in this generation.
    pub processes: Vec<ProcessRef>,
    /// How long the program stood still, microseconds.
    pub pause_us: u64,
    /// Bytes written (all files).
    pub bytes: u64,
    /// The tool version that wrote it.
    pub tool_version: String,
    /// Children that had exited but were not yet waited for.
    #[serde(default)]
    pub zombies: Vec<Zombie>,
    /// Groups of `[pid, fd]` that shared one open file description (one
    /// offset), found with kcmp(2) while the job was stopped.
    #[serde(default)]
    pub shared_fds: Vec<Vec<[i32; 2]>>,
    /// Incremental generation: the generation it refers to for unchanged
    /// pages (which must be kept while this one is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<u64>,
    /// Number of generations this one depends on through `base`.
    #[serde(default)]
    pub chain: u32,
    /// Files whose content at the checkpoint is kept in the generation
    /// (open for writing, mapped shared and writable, or deleted while
    /// open); a restart puts them back before the program runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<SavedFile>,
    /// Processes that are not restored from memory but started again with
    /// the same command (`srun` in a batch job: its tasks are checkpointed
    /// in their own step, docs/batch-jobs.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relaunch: Vec<Relaunch>,
    /// The job asked for connections to processes outside it to come back
    /// closed, as reset by the peer (`CKPT_EXTERNAL_SOCKETS=closed`,
    /// docs/sockets.md) rather than be refused.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reset_outside: bool,
    /// TCP connections whose other end is in another task of the same job
    /// (a task's part of a job checkpoint): the batch step checks that some
    /// task holds each other end, and a restart makes them again together
    /// (docs/batch-jobs.md, "Connections between tasks").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub across: Vec<AcrossEnd>,
    /// Listening sockets the task inherited from slurmstepd (the abort
    /// agent of Slurm's PMIx plugin, `SLURM_PMIXP_ABORT_AGENT_PORT`), which
    /// every task of a node holds and no program uses: a restart makes them
    /// listen on a port the kernel picks (docs/mpi.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inherited: Vec<u64>,
}

/// This task's end of a TCP connection to another task of the same job.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AcrossEnd {
    /// The socket's inode at checkpoint time.
    pub inode: u64,
    /// Its address.
    pub local: crate::objects::inet_socket::Addr,
    /// Its peer's address.
    pub peer: crate::objects::inet_socket::Addr,
    /// Who holds it, for messages ("fd 5 of /usr/bin/ring (process 3)"),
    /// with what it is.
    pub who: String,
    /// Its peer is the task's PMIx server (the node's slurmstepd, or after
    /// a restart ckpt's stand-in for it): not matched with another task's
    /// end; a restart connects it to the stand-in (docs/mpi.md).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pmix: bool,
    /// Bytes it sent that its peer acknowledged, and bytes it received, at
    /// its capture (`InetSocket::acked`): the batch step checks them
    /// against the other end's.
    #[serde(default)]
    pub acked: u64,
    /// See [`Self::acked`].
    #[serde(default)]
    pub received: u64,
}

/// A process started again at restart with the command, environment,
/// working directory and standard descriptors it had, under its saved pid
/// and parent (`ckpt-restart/src/relaunch.rs`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Relaunch {
    /// Pid inside the job's namespace.
    pub pid: i32,
    /// Parent pid (namespace view).
    pub ppid: i32,
    /// Process group (namespace view; 0 when the leader is outside).
    pub pgid: i32,
    /// Session (namespace view; 0 when the leader is outside).
    pub sid: i32,
    /// The executable, encoded like other names in images.
    pub exe: String,
    /// Arguments (each encoded like a name).
    pub argv: Vec<String>,
    /// The environment it was started with (`NAME=value`, encoded).
    pub env: Vec<String>,
    /// Working directory.
    pub cwd: String,
    /// File-creation mask.
    pub umask: u32,
    /// Its standard descriptors (0, 1, 2), as for any process.
    pub fds: Vec<Fd>,
    /// The Slurm step it was running, whose tasks resume from their images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<StepRef>,
}

/// A Slurm step of a batch job, checkpointed with the job.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct StepRef {
    /// Its id when it was checkpointed (`JOB.STEP`).
    pub id: String,
    /// Its directory in the job's checkpoint directory (`step1`).
    pub dir: String,
    /// Generation number of each task's image, by rank.
    pub tasks: Vec<u64>,
    /// The node each task ran on, by rank.
    #[serde(default)]
    pub nodes: Vec<String>,
}

/// A file whose content at the checkpoint is kept in the generation
/// (`ckpt-restart/src/saved_files.rs`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SavedFile {
    /// Its path when the checkpoint was taken (without ` (deleted)`),
    /// encoded like other names in images.
    pub path: String,
    /// It had been unlinked while still open or mapped.
    #[serde(default)]
    pub deleted: bool,
    /// Device and inode at the checkpoint (how descriptors and mappings of
    /// the image refer to it).
    pub dev: u64,
    /// Inode.
    pub inode: u64,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits (to recreate a removed file).
    pub mode: u32,
    /// Modification and status-change times, ns (to tell whether it changed
    /// after the checkpoint, and to reuse an unchanged copy).
    pub mtime_ns: u64,
    /// Status change time, ns.
    pub ctime_ns: u64,
    /// The copy's name in the generation directory.
    pub data: String,
    /// CRC-32C of the copy.
    pub crc: u32,
}

/// An exited child its parent has not waited for yet.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Zombie {
    /// Its pid.
    pub pid: i32,
    /// Its parent.
    pub ppid: i32,
    /// Its wait status (as `waitpid` reports it).
    pub status: i32,
}

/// A process entry of a generation.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcessRef {
    /// Pid inside the job's namespace.
    pub pid: i32,
    /// Manifest file name.
    pub manifest: String,
    /// CRC-32C of the manifest file.
    pub manifest_crc: u32,
    /// Data file name.
    pub image: String,
    /// Data file size.
    pub image_size: u64,
}
