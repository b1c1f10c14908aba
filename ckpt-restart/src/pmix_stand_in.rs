//! A stand-in for the PMIx server of a rank of `srun --mpi=pmix` that
//! resumed from a job checkpoint (docs/mpi.md, "The PMIx stand-in").
//!
//! A rank's PMIx client is connected to its node's slurmstepd, which
//! served the step the rank was started in. After a restart the step is a
//! new one, whose slurmstepd knows nothing of the old rank; so the
//! restart connects the rank's PMIx socket to this stand-in, served by the
//! task's `ckpt slurm-task`, which answers what a rank asks of its server
//! once it is running: the fence of `MPI_Finalize` (a barrier across the
//! step's ranks, kept in the job's directory) and `PMIx_Finalize`.
//!
//! The wire format (PMIx 4, non-described buffers, measured on the
//! connection between a rank and slurmstepd here): each message is a
//! 16-byte header, `pindex` (i32), `tag` (u32) and the payload's length
//! (u32), big-endian, then 4 bytes of padding, and the payload. A request's
//! payload is packed values, each preceded by its count (a varint): the
//! command first (`02 03` a fence, `02 05` finalize, `02 0e` an event
//! handler's deregistration). A fence and finalize are answered with the
//! request's tag and a status (`02 00`: success); a deregistration is not
//! answered. Anything else gets "not supported".
//!
//! A fence is timed as Slurm's server times it: once every rank of this
//! node is in it (libpmix waits for those without a limit), the ranks of
//! the other nodes must keep coming within the step's PMIx timeout
//! (`SLURM_PMIX_TIMEOUT`, else Slurm's default of 300 s), counted again
//! from each rank that enters. Past it the fence is answered
//! `PMIX_ERR_TIMEOUT`, so that a rank whose peers on other nodes died
//! after the restart ends with an error instead of waiting for ever.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ckpt::objects::inet_socket::meeting::MeetingDir;

/// The commands answered.
const FENCE: u8 = 3;
const FINALIZE: u8 = 5;
const DEREGISTER_EVENTS: u8 = 14;
/// Packed replies: one status, success or `PMIX_ERR_NOT_SUPPORTED` (-47,
/// zigzag varint).
const OK: [u8; 2] = [0x02, 0x00];
const NOT_SUPPORTED: [u8; 2] = [0x02, 0x5d];
/// `PMIX_ERR_TIMEOUT` (-24, zigzag varint 47).
const TIMED_OUT: [u8; 2] = [0x02, 0x2f];
/// Slurm's PMIx timeout when the step does not set `SLURM_PMIX_TIMEOUT`
/// (`PMIxTimeout` of mpi.conf, which a task cannot read, defaults to it).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// The barrier of the step's ranks: rank `rank` of `ranks` enters fence
/// `n` by publishing `pmix-fence.<step>.<n>.<rank>` in the meeting
/// directory `dir` and leaves once every rank's is there.
#[derive(Clone, Debug)]
pub struct Barrier {
    /// The job's meeting directory of this restart.
    pub dir: PathBuf,
    /// The step's directory name (`step0`): the job's steps fence apart.
    pub step: String,
    /// This task's rank.
    pub rank: u32,
    /// The step's ranks.
    pub ranks: u32,
    /// The ranks of the step on this node (`SLURM_GTIDS`), this one
    /// included: a fence waits for them without a limit.
    pub local: Vec<u32>,
    /// How long a fence waits, once this node's ranks are all in it, for
    /// the next rank of another node.
    pub timeout: Duration,
}

impl Barrier {
    fn name(&self, n: u64, rank: u32) -> String {
        format!("pmix-fence.{}.{n}.{rank}", self.step)
    }

    /// Waits until every rank of the step has entered fence `n`: each
    /// publishes its name in the meeting directory. `Ok(missing)`: the
    /// ranks that had not entered it when the timeout passed (none: every
    /// rank is in). The clock runs only while every missing rank is on
    /// another node, and starts again whenever one more rank enters.
    fn wait(&self, n: u64) -> std::io::Result<Vec<u32>> {
        let dir = MeetingDir::open(&self.dir).map_err(std::io::Error::other)?;
        dir.publish(&self.name(n, self.rank), "")
            .map_err(std::io::Error::other)?;
        let mut since = std::time::Instant::now();
        let mut seen = usize::MAX;
        loop {
            let missing: Vec<u32> = (0..self.ranks)
                .filter(|&r| !dir.has(&self.name(n, r)))
                .collect();
            if missing.is_empty() {
                return Ok(missing);
            }
            if missing.len() != seen || missing.iter().any(|r| self.local.contains(r)) {
                seen = missing.len();
                since = std::time::Instant::now();
            } else if since.elapsed() >= self.timeout {
                return Ok(missing);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Listens on loopback and serves every connection the restart makes
/// there (each must first send `token`). Returns what the restart is told
/// (`IP:PORT TOKEN`, [`ckpt::objects::inet_socket::across::ENV_STAND_IN`]);
/// the caller sets it in the environment before it starts the thread with
/// the returned closure.
pub fn listen(barrier: Barrier) -> std::io::Result<(String, impl FnOnce() + Send + 'static)> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let at = l.local_addr()?;
    let mut token = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut token)?;
    let hex: String = token.iter().map(|b| format!("{b:02x}")).collect();
    let serve = move || {
        for conn in l.incoming().flatten() {
            let b = barrier.clone();
            std::thread::spawn(move || {
                // The rank learns nothing of it (its fence or finalize is
                // left unanswered): the cause is said in the job's stderr.
                if let Err(e) = serve_one(conn, &token, &b) {
                    eprintln!("ckpt: the PMIx stand-in of rank {}: {e}", b.rank);
                }
            });
        }
    };
    Ok((format!("{at} {hex}"), serve))
}

/// One rank's connection: the token, then requests until it closes.
fn serve_one(mut s: TcpStream, token: &[u8; 16], b: &Barrier) -> std::io::Result<()> {
    let mut got = [0u8; 16];
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    // Anyone may connect to loopback: only a connection that knows the
    // token is the rank's, and only its failures are said.
    if s.read_exact(&mut got).is_err() || &got != token {
        return Ok(());
    }
    s.set_read_timeout(None)?;
    let mut fences = 0u64;
    loop {
        let mut hdr = [0u8; 16];
        if s.read_exact(&mut hdr).is_err() {
            return Ok(());
        }
        let tag = [hdr[4], hdr[5], hdr[6], hdr[7]];
        let len = u32::from_be_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]) as usize;
        if len > 64 << 20 {
            return Ok(());
        }
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload)?;
        let cmd = (payload.first() == Some(&0x02))
            .then(|| payload.get(1).copied())
            .flatten();
        let reply: Option<&[u8]> = match cmd {
            Some(FENCE) => {
                fences += 1;
                let missing = b.wait(fences)?;
                if missing.is_empty() {
                    Some(&OK)
                } else {
                    eprintln!(
                        "ckpt: the PMIx stand-in of rank {}: rank(s) {missing:?} of other nodes \
                         did not enter fence {fences} within {} s of the last rank that did \
                         (SLURM_PMIX_TIMEOUT): answered PMIX_ERR_TIMEOUT, as Slurm's server does",
                        b.rank,
                        b.timeout.as_secs()
                    );
                    Some(&TIMED_OUT)
                }
            }
            Some(FINALIZE) => Some(&OK),
            Some(DEREGISTER_EVENTS) => None,
            _ => Some(&NOT_SUPPORTED),
        };
        if let Some(r) = reply {
            s.write_all(&message(tag, r))?;
        }
    }
}

/// A message: the header (pindex 0, `tag`, the length) and `payload`.
fn message(tag: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(16 + payload.len());
    m.extend_from_slice(&0i32.to_be_bytes());
    m.extend_from_slice(&tag);
    m.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    m.extend_from_slice(&[0; 4]);
    m.extend_from_slice(payload);
    m
}

/// The barrier of this task's rank in the job's meeting directory `meet`,
/// from the step's environment (`SLURM_PROCID`, `SLURM_STEP_NUM_TASKS`).
pub fn barrier_from_env(meet: &Path) -> Option<Barrier> {
    let num = |k: &str| std::env::var(k).ok()?.trim().parse::<u32>().ok();
    let rank = num("SLURM_PROCID")?;
    Some(Barrier {
        dir: meet.to_path_buf(),
        step: std::env::var(crate::relaunch::ENV_STEP_DIR)
            .ok()
            .filter(|d| crate::cli::job::valid_step_dir(d))
            .unwrap_or_else(|| "step".into()),
        rank,
        ranks: num("SLURM_STEP_NUM_TASKS").or_else(|| num("SLURM_NTASKS"))?,
        local: local_ranks(rank, std::env::var("SLURM_GTIDS").ok().as_deref()),
        timeout: timeout_from(std::env::var("SLURM_PMIX_TIMEOUT").ok().as_deref()),
    })
}

/// The step's ranks on this node: `SLURM_GTIDS` (comma-separated), and
/// `rank` in any case.
fn local_ranks(rank: u32, gtids: Option<&str>) -> Vec<u32> {
    let mut v: Vec<u32> = gtids
        .unwrap_or("")
        .split(',')
        .filter_map(|t| t.trim().parse().ok())
        .collect();
    if !v.contains(&rank) {
        v.push(rank);
    }
    v
}

/// The fence timeout a step's `SLURM_PMIX_TIMEOUT` gives (seconds; Slurm's
/// default when absent, empty or not a positive number).
fn timeout_from(v: Option<&str>) -> Duration {
    v.and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&s| s > 0)
        .map_or(DEFAULT_TIMEOUT, Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(s: &mut TcpStream, tag: u32, payload: &[u8]) {
        s.write_all(&message(tag.to_be_bytes(), payload)).unwrap();
    }

    fn reply(s: &mut TcpStream) -> (u32, Vec<u8>) {
        let mut hdr = [0u8; 16];
        s.read_exact(&mut hdr).unwrap();
        let len = u32::from_be_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]) as usize;
        let mut p = vec![0u8; len];
        s.read_exact(&mut p).unwrap();
        (u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]), p)
    }

    /// A stand-in serving `b` on its own thread: its address and token.
    fn serve(b: Barrier) -> (String, Vec<u8>) {
        let (env, serve) = listen(b).unwrap();
        std::thread::spawn(serve);
        let (at, tok) = env.split_once(' ').unwrap();
        let token = (0..16)
            .map(|i| u8::from_str_radix(&tok[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        (at.to_string(), token)
    }

    /// Two ranks' connections, as Open MPI's `MPI_Finalize` uses them: a
    /// fence (answered only once both ranks are in it), deregistrations (not
    /// answered), finalize; a connection without the token is dropped.
    #[test]
    fn ranks_are_answered_as_their_pmix_server_would() {
        let dir = std::env::temp_dir().join(format!("ckpt-pmix-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut served = Vec::new();
        for rank in 0..2 {
            served.push(serve(Barrier {
                dir: dir.clone(),
                step: "step0".into(),
                rank,
                ranks: 2,
                local: vec![rank],
                timeout: DEFAULT_TIMEOUT,
            }));
        }
        // A stranger without the token gets nothing and is dropped.
        let mut stranger = TcpStream::connect(&served[0].0).unwrap();
        stranger.write_all(&[0u8; 16]).unwrap();
        request(&mut stranger, 7, &[0x02, FINALIZE]);
        let mut buf = [0u8; 1];
        assert_eq!(stranger.read(&mut buf).unwrap_or(0), 0);
        let mut conns: Vec<TcpStream> = served
            .iter()
            .map(|(at, tok)| {
                let mut c = TcpStream::connect(at).unwrap();
                c.write_all(tok).unwrap();
                c
            })
            .collect();
        let fence = [
            0x02, FENCE, 0x02, 0x01, 0x02, 0x1e, b's', b'l', b'u', b'r', b'm', b'.', b'p', b'm',
            b'i', b'x', b'.', b'3', b'.', b'0', 0, 0xfe, 0xff, 0xff, 0xff, 0x0f, 0x02, 0x00,
        ];
        request(&mut conns[0], 109, &fence);
        // Rank 0 waits in the fence until rank 1 is in it too.
        conns[0]
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut hdr = [0u8; 16];
        assert!(conns[0].read_exact(&mut hdr).is_err());
        conns[0].set_read_timeout(None).unwrap();
        request(&mut conns[1], 109, &fence);
        assert_eq!(reply(&mut conns[1]), (109, OK.to_vec()));
        // (The part of the header rank 0 had not read yet timed out empty.)
        assert_eq!(reply(&mut conns[0]), (109, OK.to_vec()));
        for c in conns.iter_mut() {
            request(c, 110, &[0x02, DEREGISTER_EVENTS]);
            request(c, 111, &[0x02, DEREGISTER_EVENTS, 0x02, 0xa5, 0x02]);
            request(c, 112, &[0x02, FINALIZE]);
            assert_eq!(reply(c), (112, OK.to_vec()));
            request(c, 113, &[0x02, 0x40]);
            assert_eq!(reply(c), (113, NOT_SUPPORTED.to_vec()));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A fence a rank of another node never enters is answered
    /// `PMIX_ERR_TIMEOUT` once the timeout has passed, not left waiting;
    /// one that a rank of this node has not entered waits.
    #[test]
    fn a_fence_a_rank_of_another_node_never_enters_times_out_with_an_error() {
        let dir = std::env::temp_dir().join(format!("ckpt-pmix-t-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // Ranks 0 and 1 on this node, 2 on another: rank 1 comes late.
        let (at, token) = serve(Barrier {
            dir: dir.clone(),
            step: "step0".into(),
            rank: 0,
            ranks: 3,
            local: vec![0, 1],
            timeout: Duration::from_millis(300),
        });
        let mut c = TcpStream::connect(at).unwrap();
        c.write_all(&token).unwrap();
        request(&mut c, 9, &[0x02, FENCE]);
        c.set_read_timeout(Some(Duration::from_millis(800)))
            .unwrap();
        let mut hdr = [0u8; 16];
        assert!(
            c.read_exact(&mut hdr).is_err(),
            "a rank of this node is missing: no timeout"
        );
        c.set_read_timeout(None).unwrap();
        let t0 = std::time::Instant::now();
        let d = MeetingDir::open(&dir).unwrap();
        d.publish("pmix-fence.step0.1.1", "").unwrap();
        assert_eq!(reply(&mut c), (9, TIMED_OUT.to_vec()));
        assert!(t0.elapsed() >= Duration::from_millis(300));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn this_nodes_ranks_are_slurm_gtids_and_this_one() {
        assert_eq!(local_ranks(2, Some("2,3")), vec![2, 3]);
        assert_eq!(local_ranks(2, Some("0,1")), vec![0, 1, 2]);
        assert_eq!(local_ranks(5, None), vec![5]);
        assert_eq!(local_ranks(5, Some("x, 4")), vec![4, 5]);
    }

    #[test]
    fn the_timeout_is_the_steps_or_slurms_default() {
        assert_eq!(timeout_from(Some("20")), Duration::from_secs(20));
        assert_eq!(timeout_from(Some(" 7\n")), Duration::from_secs(7));
        for v in [None, Some(""), Some("0"), Some("-3"), Some("soon")] {
            assert_eq!(timeout_from(v), DEFAULT_TIMEOUT, "{v:?}");
        }
    }
}
