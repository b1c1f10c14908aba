//! Sockets (issue 13, `ckpt-restart/src/sockets.rs`): ckpt cannot
//! checkpoint them yet, and the checkpoint of a process holding one fails
//! with a message saying what the socket is and where it goes, with
//! `faults/programs/sockprog.c`:
//! - a TCP connection to a server outside the job (a listener of this test):
//!   the message names the fd, the program, both addresses, the state and
//!   "outside the job"; the job keeps running, no partial generation is
//!   left, the connection still works, and once the program closed it a
//!   checkpoint succeeds and the program finishes correctly;
//! - a listening TCP socket and a loopback TCP connection inside the job are
//!   checkpointed and restored; a port taken by another process at restart
//!   fails the restart at once, naming the address.
//!
//! Run: `cargo test --release -p ckpt-tests --test faults -- sockets::`.

use std::fs;
use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use ckpt_tests::cr::{Running, deadline, describe, wait_until};
use ckpt_tests::faults::{Job, build_program, wait_exit};

use super::ckpt_bin;

/// `faults/programs/sockprog.c`, built once.
fn sockprog() -> PathBuf {
    static T: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match T.get_or_init(|| build_program("sockprog")) {
        Ok(p) => p.clone(),
        Err(e) => panic!("{e}"),
    }
}

/// A job around `sockprog MODE WORK [ARGS]`.
fn sock_job(label: &str, ckpt: &Path, mode: &str, args: &[String]) -> Job {
    let mut j = Job::new(label, ckpt, 0);
    j.program = sockprog();
    j.args = vec![mode.into(), j.work.clone().into()];
    j.args.extend(args.iter().map(Into::into));
    j
}

/// The program's line starting with `prefix` (after READY), once complete.
fn line_of(j: &Job, l: &mut Running, prefix: &str) -> Result<String, String> {
    let out = j.out();
    wait_until(
        &format!("{prefix:?} in {}", out.display()),
        deadline(),
        || {
            let text = fs::read_to_string(&out).unwrap_or_default();
            if let Some(at) = text.find(prefix)
                && let Some(end) = text[at..].find('\n')
            {
                return Ok(Some(text[at..at + end].to_string()));
            }
            l.check_running().map(|()| None)
        },
    )
}

fn touch(p: &Path) -> Result<(), String> {
    fs::write(p, b"").map_err(|e| format!("create {}: {e}", p.display()))
}

/// A checkpoint that must fail with a message holding every one of
/// `words`; then the job still runs and no generation, partial or not, is
/// in the checkpoint directory. Returns the message.
fn refused(j: &Job, l: &mut Running, tag: &str, words: &[&str]) -> Result<String, String> {
    let (st, out, err) = j.ckpt_cmd("checkpoint", tag, &[])?;
    let msg = format!("{out}{err}");
    if st.success() {
        return Err(format!(
            "checkpoint {tag} of a program holding a socket succeeded:\n{msg}"
        ));
    }
    for w in words {
        if !msg.contains(w) {
            return Err(format!(
                "checkpoint {tag}: the message does not say {w:?}:\n{msg}"
            ));
        }
    }
    l.check_running()
        .map_err(|e| format!("after the refused checkpoint {tag}: {e}"))?;
    let (complete, partial) = (j.complete(), j.partial());
    if !complete.is_empty() || !partial.is_empty() {
        return Err(format!(
            "after the refused checkpoint {tag}: complete {complete:?}, partial {partial:?}"
        ));
    }
    Ok(msg)
}

/// Lets the program close its socket, checkpoints it, lets it finish and
/// checks its output.
fn close_checkpoint_finish(j: &Job, l: &mut Running, expected: &str) -> Result<(), String> {
    touch(&j.work.join("close"))?;
    line_of(j, l, "closed")?;
    j.checkpoint_ok("after-close")?;
    touch(&j.work.join("go"))?;
    let st = wait_exit(l)?;
    let out = fs::read_to_string(j.out()).unwrap_or_default();
    if !st.success() || out != expected {
        return Err(format!(
            "the program ended with {} and printed {out:?}, expected exit 0 and {expected:?}",
            describe(st)
        ));
    }
    Ok(())
}

/// Runs `f` on a launched job; on failure, panics with the launch's stderr.
fn with_job(j: &Job, f: impl FnOnce(&mut Running) -> Result<(), String>) {
    let mut l = j.launch("1", &[], &[]);
    let r = j.wait_ready(&mut l).and_then(|()| f(&mut l));
    let _ = l.kill_tree();
    if let Err(e) = r {
        panic!("{e}\nlaunch: {}", j.stderr_of("launch"));
    }
}

/// A connection to a server outside the job (a database, a license
/// server): the refusal names the fd, the program, the server's address,
/// and says the other end is outside the job.
#[test]
fn connection_to_outside_named() {
    let Some(ckpt) = ckpt_bin() else { return };
    let server = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("listen: {e}"));
    let port = server
        .local_addr()
        .unwrap_or_else(|e| panic!("local_addr: {e}"))
        .port();
    let j = sock_job("sockets-outside", &ckpt, "connect", &[port.to_string()]);
    with_job(&j, |l| {
        let (mut conn, from) = server.accept().map_err(|e| format!("accept: {e}"))?;
        conn.set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(|e| e.to_string())?;
        let mut hello = [0u8; 6];
        conn.read_exact(&mut hello)
            .map_err(|e| format!("read hello: {e}"))?;
        let program = j.program.to_string_lossy().into_owned();
        let msg = refused(
            &j,
            l,
            "connected",
            &[
                &format!(
                    "fd 3 of {program} is a TCP connection {from} -> 127.0.0.1:{port} (ESTABLISHED) to a process outside the job (socket:["
                ),
                "which ckpt cannot checkpoint yet",
                "close it before the checkpoint",
                "keeps running",
            ],
        )?;
        if !msg.contains("process 2: ") {
            return Err(format!("the message does not name the process:\n{msg}"));
        }
        // The connection still works after the refusal.
        touch(&j.work.join("close"))?;
        let mut bye = [0u8; 4];
        conn.read_exact(&mut bye)
            .map_err(|e| format!("read bye: {e}"))?;
        if &bye != b"bye\n" {
            return Err(format!("the program sent {bye:?}, not bye"));
        }
        conn.write_all(b"ok\n")
            .map_err(|e| format!("write ok: {e}"))?;
        close_checkpoint_finish(&j, l, "READY\nclosed\nPASS\n")
    });
}

/// Restart the job (`ckpt restart`, in the background): stdout and stderr
/// to `restart-<tag>.out`/`.err` in the job's scratch directory.
fn restart_bg(j: &Job, tag: &str) -> Result<std::process::Child, String> {
    let dir = j.out().parent().map(Path::to_path_buf).unwrap_or_default();
    let file = |ext: &str| {
        fs::File::create(dir.join(format!("restart-{tag}.{ext}")))
            .map_err(|e| format!("restart-{tag}.{ext}: {e}"))
    };
    std::process::Command::new(&j.ckpt)
        .arg("restart")
        .arg("--dir")
        .arg(&j.dir)
        .stdin(std::process::Stdio::null())
        .stdout(file("out")?)
        .stderr(file("err")?)
        .spawn()
        .map_err(|e| format!("ckpt restart: {e}"))
}

/// Waits for `child` to end; its status and stderr.
fn finish(j: &Job, tag: &str, mut child: std::process::Child) -> Result<(bool, String), String> {
    let dir = j.out().parent().map(Path::to_path_buf).unwrap_or_default();
    let until = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
            let err =
                fs::read_to_string(dir.join(format!("restart-{tag}.err"))).unwrap_or_default();
            return Ok((st.success(), err));
        }
        if std::time::Instant::now() > until {
            let _ = child.kill();
            return Err(format!("ckpt restart ({tag}) did not end within 120 s"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Checkpoints the running job, kills it, restarts it; `during` runs while
/// the restored program waits for `close`; then the program closes its
/// sockets, prints "closed" and finishes with `expected`.
fn checkpoint_kill_restart(
    j: &Job,
    l: &mut Running,
    before_restart: impl FnOnce() -> Result<(), String>,
    during: impl FnOnce() -> Result<(), String>,
    expected: &str,
) -> Result<(), String> {
    j.checkpoint_ok("sockets")?;
    let _ = l.kill_tree();
    before_restart()?;
    let mut r = restart_bg(j, "1")?;
    let r1 = (|| {
        during()?;
        touch(&j.work.join("close"))?;
        touch(&j.work.join("go"))?;
        Ok(())
    })();
    if let Err(e) = r1 {
        let _ = r.kill();
        return Err(e);
    }
    let (ok, err) = finish(j, "1", r)?;
    let out = fs::read_to_string(j.out()).unwrap_or_default();
    if !ok || out != expected {
        return Err(format!(
            "the restarted program printed {out:?} (ok: {ok}), expected {expected:?}\nrestart: {err}"
        ));
    }
    Ok(())
}

/// A listening TCP socket is checkpointed and listens again after a
/// restart on its address and port; when a process outside the job holds
/// that port at restart, the restart fails at once naming the address.
#[test]
fn listening_socket_restored_taken_port_named() {
    let Some(ckpt) = ckpt_bin() else { return };
    let j = sock_job("sockets-listen", &ckpt, "listen", &[]);
    with_job(&j, |l| {
        let line = line_of(&j, l, "port ")?;
        let port = line.trim_start_matches("port ").to_string();
        let addr = format!("127.0.0.1:{port}");
        checkpoint_kill_restart(
            &j,
            l,
            || {
                // Someone else listens there now: refused at once.
                let s = TcpListener::bind(&addr).map_err(|e| format!("bind {addr}: {e}"))?;
                let t0 = std::time::Instant::now();
                let (ok, err) = finish(&j, "taken", restart_bg(&j, "taken")?)?;
                if ok || !err.contains(&addr) || !err.contains("in use") {
                    return Err(format!(
                        "a restart with {addr} taken: ok {ok}, stderr:\n{err}"
                    ));
                }
                if t0.elapsed() > Duration::from_secs(30) {
                    return Err(format!("the refusal took {:?}", t0.elapsed()));
                }
                drop(s);
                Ok(())
            },
            || {
                // The restored program listens again at the same port.
                wait_until(&format!("a connection to {addr}"), deadline(), || {
                    Ok(std::net::TcpStream::connect(&addr).ok().map(|_| ()))
                })
            },
            &format!("READY\n{line}\nclosed\nPASS\n"),
        )
    });
}

/// A TCP connection between descriptors of the job (loopback) is
/// checkpointed and comes back connected: after the restart a byte goes
/// each way over it.
#[test]
fn connections_inside_the_job_restored() {
    let Some(ckpt) = ckpt_bin() else { return };
    let j = sock_job("sockets-pair", &ckpt, "pair", &[]);
    with_job(&j, |l| {
        let line = line_of(&j, l, "fds ")?;
        checkpoint_kill_restart(
            &j,
            l,
            || Ok(()),
            || Ok(()),
            &format!("READY\n{line}\nclosed\nPASS\n"),
        )
    });
}

/// A unix socket connected to a server outside the job: refused, naming
/// the path; the connection keeps working.
#[test]
fn unix_connection_to_outside_named() {
    let Some(ckpt) = ckpt_bin() else { return };
    let dir = std::env::temp_dir().join(format!("ckpt-unixout-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let path = dir.join("server.sock");
    let server = std::os::unix::net::UnixListener::bind(&path)
        .unwrap_or_else(|e| panic!("bind {}: {e}", path.display()));
    let j = sock_job(
        "sockets-unixout",
        &ckpt,
        "unixout",
        &[path.to_string_lossy().into_owned()],
    );
    with_job(&j, |l| {
        let (mut conn, _) = server.accept().map_err(|e| format!("accept: {e}"))?;
        conn.set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(|e| e.to_string())?;
        let mut hello = [0u8; 6];
        conn.read_exact(&mut hello)
            .map_err(|e| format!("read hello: {e}"))?;
        let line = line_of(&j, l, "fds ")?;
        let fd = line.trim_start_matches("fds ");
        let program = j.program.to_string_lossy().into_owned();
        refused(
            &j,
            l,
            "unixout",
            &[
                &format!(
                    "fd {fd} of {program} is a unix stream socket connected to {}, to a process outside the job",
                    path.display()
                ),
                "keeps running",
            ],
        )?;
        touch(&j.work.join("close"))?;
        let mut bye = [0u8; 4];
        conn.read_exact(&mut bye)
            .map_err(|e| format!("read bye: {e}"))?;
        conn.write_all(b"ok\n")
            .map_err(|e| format!("write ok: {e}"))?;
        close_checkpoint_finish(&j, l, &format!("READY\n{line}\nclosed\nPASS\n"))
    });
    let _ = fs::remove_dir_all(&dir);
}

/// A descriptor in flight (sent with SCM_RIGHTS, not received) that a
/// restart could not make again (the program's stdin, a device): tried
/// again for a while (a program receives it soon), then refused, naming the
/// socket and why; once the program has received it, the checkpoint
/// succeeds. (Pipes, unix sockets, files and directories in flight are
/// saved: the C/R program `sock_rights`.)
#[test]
fn descriptor_in_flight_refused() {
    let Some(ckpt) = ckpt_bin() else { return };
    let j = sock_job("sockets-fdflight", &ckpt, "fdflight", &[]);
    with_job(&j, |l| {
        let line = line_of(&j, l, "fds ")?;
        let f: Vec<&str> = line.split(' ').collect();
        let b = f.get(2).copied().unwrap_or("?");
        let program = j.program.to_string_lossy().into_owned();
        refused(
            &j,
            l,
            "fdflight",
            &[
                &format!(
                    "fd {b} of {program} (process 2) is a unix socket that ckpt cannot checkpoint"
                ),
                "SCM_RIGHTS",
                "not a pipe, unix socket, file or directory",
                "still so after",
                "keeps running",
            ],
        )?;
        close_checkpoint_finish(&j, l, &format!("READY\n{line}\nclosed\nPASS\n"))
    });
}

/// A POSIX timer on a CPU-time clock (not a socket, the same kind of
/// refusal; timers on other clocks are restored, C/R test
/// `posix_timers`): the checkpoint fails naming the process, the timer
/// and the way out, the job keeps running; once the program deleted it,
/// the checkpoint succeeds.
#[test]
fn posix_timer_refused() {
    let Some(ckpt) = ckpt_bin() else { return };
    let j = sock_job("ptimer", &ckpt, "ptimer", &[]);
    with_job(&j, |l| {
        line_of(&j, l, "timer")?;
        let program = j.program.to_string_lossy().into_owned();
        refused(
            &j,
            l,
            "ptimer",
            &[
                &format!(
                    "process 2 ({program}) has a POSIX timer (timer_create) on CLOCK_PROCESS_CPUTIME_ID"
                ),
                "starts again from zero",
                "use a CLOCK_MONOTONIC timer",
                "keeps running",
            ],
        )?;
        close_checkpoint_finish(&j, l, "READY\ntimer\nclosed\nPASS\n")
    });
}

/// An inotify watch added by a raw system call (libckpt never saw its
/// path): refused naming the watch and its inode, the job keeps running;
/// once the program removed it, the checkpoint succeeds.
#[test]
fn inotify_unknown_watch_refused() {
    let Some(ckpt) = ckpt_bin() else { return };
    let j = sock_job("inotify-raw", &ckpt, "inotify_raw", &[]);
    with_job(&j, |l| {
        line_of(&j, l, "watch")?;
        let program = j.program.to_string_lossy().into_owned();
        refused(
            &j,
            l,
            "inotify-raw",
            &[
                &format!(
                    "of {program} is an inotify instance (anon_inode:inotify) that ckpt cannot checkpoint"
                ),
                "its watch 1 (inode ",
                "was not added through inotify_add_watch",
                "keeps running",
            ],
        )?;
        close_checkpoint_finish(&j, l, "READY\nwatch\nclosed\nPASS\n")
    });
}

/// Events queued in an inotify instance and never read: the checkpoint is
/// tried again for a while (the program may read them), then refused
/// saying so; once they are read, it succeeds.
#[test]
fn inotify_unread_events_refused() {
    let Some(ckpt) = ckpt_bin() else { return };
    let j = sock_job("inotify-unread", &ckpt, "inotify_unread", &[]);
    with_job(&j, |l| {
        line_of(&j, l, "events")?;
        refused(
            &j,
            l,
            "inotify-unread",
            &[
                "is an inotify instance",
                "bytes of events are queued in it, not read yet",
                "still so after",
                "keeps running",
            ],
        )?;
        close_checkpoint_finish(&j, l, "READY\nevents\nclosed\nPASS\n")
    });
}

/// A UDP datagram from a sender outside the job, queued and not read: a
/// restart could not send it again from that address, so the checkpoint
/// is tried again for a while (the program may read it), then refused,
/// naming the socket and the sender; once read, it succeeds.
#[test]
fn udp_datagram_from_outside_refused() {
    let Some(ckpt) = ckpt_bin() else { return };
    let j = sock_job("udp-outside", &ckpt, "udpin", &[]);
    with_job(&j, |l| {
        let line = line_of(&j, l, "port ")?;
        let port: u16 = line
            .trim_start_matches("port ")
            .parse()
            .map_err(|e| format!("{line}: {e}"))?;
        let outside = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let from = outside.local_addr().map_err(|e| e.to_string())?;
        outside
            .send_to(b"from outside", ("127.0.0.1", port))
            .map_err(|e| e.to_string())?;
        refused(
            &j,
            l,
            "udp-outside",
            &[
                &format!("is a UDP socket bound to 127.0.0.1:{port}"),
                &format!("a datagram from {from} queued in it"),
                "not a UDP socket of the job",
                "still so after",
                "keeps running",
            ],
        )?;
        close_checkpoint_finish(&j, l, &format!("READY\n{line}\nclosed\nPASS\n"))
    });
}

/// Bytes a pseudo-terminal of the job holds, not read yet (issue 16): no
/// call reads them without taking them, so the checkpoint is tried again
/// for a while (the reader may take them), then refused, naming the master
/// and the pair; once read, it succeeds with the pair held.
#[test]
fn bytes_waiting_in_a_pseudo_terminal_of_the_job_refused() {
    let Some(ckpt) = ckpt_bin() else { return };
    let j = sock_job("pty-unread", &ckpt, "ptyq", &[]);
    with_job(&j, |l| {
        line_of(&j, l, "pty")?;
        refused(
            &j,
            l,
            "pty-unread",
            &[
                "(/dev/ptmx, the master of /dev/pts/",
                "a pseudo-terminal of the job) has 6 byte(s) not read yet",
                "still so after",
                "keeps running",
            ],
        )?;
        close_checkpoint_finish(&j, l, "READY\npty\nclosed\nPASS\n")
    });
}

/// A pseudo-terminal of the job that is a process's controlling terminal:
/// not made so again by a restart yet, so refused at once, naming the
/// process and the terminal; once that process ended, the checkpoint
/// succeeds.
#[test]
fn a_pseudo_terminal_of_the_job_as_controlling_terminal_refused() {
    let Some(ckpt) = ckpt_bin() else { return };
    let j = sock_job("pty-ctty", &ckpt, "ptyctty", &[]);
    with_job(&j, |l| {
        line_of(&j, l, "ctty")?;
        let msg = refused(
            &j,
            l,
            "pty-ctty",
            &[
                "a pseudo-terminal the job made, as its controlling terminal",
                "keeps running",
            ],
        )?;
        if msg.contains("still so after") {
            return Err(format!("refused as passing (retried): {msg}"));
        }
        close_checkpoint_finish(&j, l, "READY\nctty\nclosed\nPASS\n")
    });
}

/// A device whose state lives in its driver (an InfiniBand verbs context
/// would be one; /dev/fuse, a FUSE connection waiting to be mounted, is
/// one a Debian machine has) is refused at checkpoint time, naming it.
#[test]
fn a_device_with_state_in_its_driver_refused() {
    let Some(ckpt) = ckpt_bin() else { return };
    let j = sock_job("device", &ckpt, "device", &[]);
    with_job(&j, |l| {
        line_of(&j, l, "device")?;
        refused(
            &j,
            l,
            "device",
            &[
                "is the device /dev/fuse, whose state lives in its driver",
                "TCP or shared-memory transports",
                "keeps running",
            ],
        )?;
        close_checkpoint_finish(&j, l, "READY\ndevice\nclosed\nPASS\n")
    });
}

/// An attached System V shared memory segment (UCX's default transport
/// for MPICH) is refused at checkpoint time, naming the segment and the way
/// out: a restart could give back its contents, not the segment (shmdt
/// would fail).
#[test]
fn system_v_shared_memory_refused() {
    let Some(ckpt) = ckpt_bin() else { return };
    let j = sock_job("sysvshm", &ckpt, "sysvshm", &[]);
    with_job(&j, |l| {
        line_of(&j, l, "sysv")?;
        refused(
            &j,
            l,
            "sysv",
            &[
                "has System V shared memory attached at",
                "shmid",
                "UCX_TLS=^sysv",
                "keeps running",
            ],
        )?;
        close_checkpoint_finish(&j, l, "READY\nsysv\nclosed\nPASS\n")
    });
}

/// With `CKPT_EXTERNAL_SOCKETS=closed`, connections to servers outside the
/// job (TCP and unix) do not stop the checkpoint (a note names them) and
/// come back after a restart as closed by their peer: the bytes the server
/// had sent and the program not read yet, then end of file.
#[test]
fn connections_outside_come_back_closed_when_asked() {
    let Some(ckpt) = ckpt_bin() else { return };
    let server = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("listen: {e}"));
    let port = server
        .local_addr()
        .unwrap_or_else(|e| panic!("local_addr: {e}"))
        .port();
    let j = sock_job(
        "sockets-outside-closed",
        &ckpt,
        "outsider",
        &[port.to_string()],
    );
    let userver = std::os::unix::net::UnixListener::bind(j.work.join("outside.sock"))
        .unwrap_or_else(|e| panic!("unix listen: {e}"));
    let mut l = j.launch("1", &[], &[("CKPT_EXTERNAL_SOCKETS", "closed")]);
    let r = (|| -> Result<(), String> {
        j.wait_ready(&mut l)?;
        let (mut conn, _) = server.accept().map_err(|e| format!("accept: {e}"))?;
        let (mut uconn, _) = userver.accept().map_err(|e| format!("accept unix: {e}"))?;
        conn.set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        uconn
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        let mut hello = [0u8; 6];
        conn.read_exact(&mut hello)
            .map_err(|e| format!("read hello: {e}"))?;
        uconn
            .read_exact(&mut hello)
            .map_err(|e| format!("read hello: {e}"))?;
        // Queued in the program's sockets, not read yet.
        conn.write_all(b"data\n").map_err(|e| e.to_string())?;
        uconn.write_all(b"udata\n").map_err(|e| e.to_string())?;
        std::thread::sleep(Duration::from_millis(100));
        j.checkpoint_ok("outside-closed")?;
        let launch_err = j.stderr_of("launch");
        for want in [
            format!("-> 127.0.0.1:{port} (ESTABLISHED) to a process outside the job"),
            "outside.sock".to_string(),
            "a restart gives it back closed by its peer (CKPT_EXTERNAL_SOCKETS=closed)".to_string(),
        ] {
            if !launch_err.contains(&want) {
                return Err(format!(
                    "the checkpoint's note lacks {want:?}:\n{launch_err}"
                ));
            }
        }
        let _ = l.kill_tree();
        let r = restart_bg(&j, "1")?;
        touch(&j.work.join("close"))?;
        touch(&j.work.join("go"))?;
        let (ok, err) = finish(&j, "1", r)?;
        let out = fs::read_to_string(j.out()).unwrap_or_default();
        let expected =
            "READY\ntcp: data, then end of file\nunix: udata, then end of file\nclosed\nPASS\n";
        if !ok || out != expected {
            return Err(format!(
                "the restarted program printed {out:?} (ok: {ok}), expected {expected:?}\nrestart: {err}"
            ));
        }
        // Nothing reached the real servers after the checkpoint: the killed
        // run's ends closed, the restored program's are new.
        for (what, got) in [
            ("TCP", read_rest(&mut conn)),
            ("unix", read_rest(&mut uconn)),
        ] {
            if !got.is_empty() {
                return Err(format!(
                    "the {what} server received {got:?} after the checkpoint"
                ));
            }
        }
        Ok(())
    })();
    let _ = l.kill_tree();
    if let Err(e) = r {
        panic!("{e}\nlaunch: {}", j.stderr_of("launch"));
    }
}

/// What a server end still receives until end of file or a reset.
fn read_rest(r: &mut impl std::io::Read) -> Vec<u8> {
    let mut got = Vec::new();
    let mut b = [0u8; 256];
    while let Ok(n @ 1..) = r.read(&mut b) {
        got.extend_from_slice(&b[..n]);
    }
    got
}

/// A descriptor the restart command inherited (a slurmstepd pipe given to
/// `ckpt slurm-task`, or anything its parent left open) must not reach the
/// restored program: it never had it, and the next checkpoint would have
/// to capture it (a root-owned pipe made that checkpoint fail).
#[test]
fn descriptors_of_the_restart_command_do_not_leak_into_the_program() {
    let Some(ckpt) = ckpt_bin() else { return };
    let mut j = Job::new("strayfd", &ckpt, 0);
    j.program = PathBuf::from("/usr/bin/python3");
    j.args = vec![
        "-c".into(),
        "import os, sys, time\n\
         print('READY', flush=True)\n\
         go = os.path.join(sys.argv[1], 'go')\n\
         while not os.path.exists(go):\n\
         \x20   time.sleep(0.05)\n\
         print('fds', sorted(int(f) for f in os.listdir('/proc/self/fd')), flush=True)\n"
            .into(),
        j.work.clone().into(),
    ];
    let mut l = j.launch("1", &[], &[]);
    let r = (|| -> Result<(), String> {
        j.wait_ready(&mut l)?;
        j.checkpoint_ok("stray")?;
        let _ = l.kill_tree();
        let dir = j.out().parent().map(Path::to_path_buf).unwrap_or_default();
        let err = fs::File::create(dir.join("restart-stray.err")).map_err(|e| e.to_string())?;
        let null = fs::File::open("/dev/null").map_err(|e| e.to_string())?;
        let mut cmd = std::process::Command::new(&j.ckpt);
        cmd.arg("restart")
            .arg("--dir")
            .arg(&j.dir)
            .stdin(std::process::Stdio::null());
        cmd.stdout(std::process::Stdio::null()).stderr(err);
        use std::os::fd::AsRawFd as _;
        use std::os::unix::process::CommandExt as _;
        let nfd = null.as_raw_fd();
        // SAFETY: dup2 is async-signal-safe; it gives the child an
        // inheritable descriptor 900, above any of the program's (a stray, as slurmstepd's pipe was).
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(nfd, 900) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| format!("ckpt restart: {e}"))?;
        touch(&j.work.join("go"))?;
        let (ok, err) = finish(&j, "stray", child)?;
        let out = fs::read_to_string(j.out()).unwrap_or_default();
        let fds = out.lines().find(|l| l.starts_with("fds ")).unwrap_or("");
        if !ok || fds.is_empty() || fds.contains(" 900") {
            return Err(format!(
                "the restored program's descriptors: {fds:?} (ok: {ok}); 900 must not be there\nrestart: {err}"
            ));
        }
        Ok(())
    })();
    let _ = l.kill_tree();
    if let Err(e) = r {
        panic!("{e}\nlaunch: {}", j.stderr_of("launch"));
    }
}
