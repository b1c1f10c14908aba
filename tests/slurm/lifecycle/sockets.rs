//! A batch job whose processes talk over loopback TCP (issue 13): a server
//! and a client process of the job, connected through 127.0.0.1, with
//! requests and answers going back and forth at every step. On the
//! warning signal the job is checkpointed with the connection and its
//! bytes, requeued, and resumes on another node, where the connection
//! comes back between the same addresses and ports; the output is that of
//! an uninterrupted run, each step once.

use super::*;

/// `python3 tcp_pi.py STEPS DELAY`: the parent serves, a forked child asks,
/// one request and one answer per step, both kept in flight while the child
/// sleeps between steps; the child prints the steps and the result.
const TCP_PY: &str = r#"import os, random, socket, struct, sys, time
steps, delay = int(sys.argv[1]), float(sys.argv[2])
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 0))
srv.listen(1)
port = srv.getsockname()[1]
pid = os.fork()
if pid == 0:
    srv.close()
    c = socket.create_connection(("127.0.0.1", port))
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    total = 0
    c.sendall(struct.pack("!Q", 1))
    for step in range(1, steps + 1):
        got = b""
        while len(got) < 8:
            part = c.recv(8 - len(got))
            if not part:
                print("FAIL: the server went away", flush=True)
                os._exit(1)
            got += part
        (value,) = struct.unpack("!Q", got)
        total = (total * 31 + value) % 1000000007
        print(f"step {step} total {total}", flush=True)
        # The next request is sent before the pause: it waits, unread, in
        # the server's socket while the job may be checkpointed.
        if step < steps:
            c.sendall(struct.pack("!Q", step + 1))
        time.sleep(delay)
    print(f"RESULT tcp total={total}", flush=True)
    os._exit(0)
conn, _ = srv.accept()
rng = random.Random(20261204)
while True:
    got = b""
    while len(got) < 8:
        part = conn.recv(8 - len(got))
        if not part:
            break
        got += part
    if len(got) < 8:
        break
    (n,) = struct.unpack("!Q", got)
    conn.sendall(struct.pack("!Q", rng.randrange(1 << 40) ^ n))
os.waitpid(pid, 0)
"#;

#[test]
fn a_batch_job_whose_processes_talk_over_loopback_tcp_resumes_on_another_node() {
    let Some(c) = slurm::cluster() else { return };
    let dir = setup(&c, "tcp-move");
    c.write_script(&dir.join("tcp_pi.py"), TCP_PY);
    const STEPS: u32 = 30;
    let want = user_ok(&c, &dir, &["python3", "tcp_pi.py", &STEPS.to_string(), "0"]);
    let want = result_line(&want).unwrap_or_else(|| panic!("no RESULT: {want}"));
    let script = format!(
        "#!/bin/bash\n\
         #SBATCH -p multi -N1 --checkpoint-dir=ck --signal=B:USR1@10\n\
         python3 tcp_pi.py {STEPS} 0.4\n"
    );
    // Its node goes out of service: the job must come back elsewhere.
    moved_to_another_node(&c, &dir, &script, STEPS, &want);
}

/// `python3 tcp_ranks.py STEPS DELAY`, two ranks of one step
/// (`SLURM_PROCID` 0 and 1), on two nodes: rank 0 listens on the node's
/// own address and publishes it in `addr`, rank 1 connects. Rank 1 sends a
/// 40000-byte record, rank 0 answers with a 20000-byte one, one of each per
/// step; each side sleeps before reading, so a record waits in its
/// receiver at nearly every moment. Every record is checked against what
/// an uninterrupted run sends; each rank prints its steps and a digest of
/// what it received.
const TCP_RANKS_PY: &str = r#"import hashlib, os, socket, subprocess, sys, time
steps, delay = int(sys.argv[1]), float(sys.argv[2])
rank = int(os.environ["SLURM_PROCID"])
N = 40000
def block(tag, i, n):
    out, h = bytearray(), hashlib.sha256(f"{tag}{i}".encode()).digest()
    while len(out) < n:
        h = hashlib.sha256(h).digest()
        out += h
    return bytes(out[:n])
def recv_exact(s, n):
    buf = bytearray()
    while len(buf) < n:
        b = s.recv(n - len(buf))
        if not b:
            sys.exit(f"FAIL: rank {rank}: connection closed after {len(buf)} of {n} bytes")
        buf += b
    return bytes(buf)
if rank == 0:
    l = socket.socket()
    l.bind(("0.0.0.0", 0))
    l.listen(1)
    ips = subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()
    with open("addr.tmp", "w") as f:
        f.write(f"{(ips or ['127.0.0.1'])[0]} {l.getsockname()[1]}\n")
    os.rename("addr.tmp", "addr")
    s, _ = l.accept()
    l.close()
else:
    while True:
        try:
            ip, port = open("addr").read().split()
            break
        except (FileNotFoundError, ValueError):
            time.sleep(0.1)
    s = socket.create_connection((ip, int(port)))
total = hashlib.sha256()
if rank == 1:
    s.sendall(block("a", 1, N))
for i in range(1, steps + 1):
    time.sleep(delay)
    if rank == 0:
        got = recv_exact(s, N)
        if got != block("a", i, N):
            sys.exit(f"FAIL: rank 0: record {i} differs from the uninterrupted run's")
        s.sendall(block("b", i, N // 2))
    else:
        got = recv_exact(s, N // 2)
        if got != block("b", i, N // 2):
            sys.exit(f"FAIL: rank 1: answer {i} differs from the uninterrupted run's")
        if i < steps:
            s.sendall(block("a", i + 1, N))
    total.update(got)
    print(f"step {i} rank {rank}", flush=True)
print(f"RESULT rank {rank} {total.hexdigest()[:16]}", flush=True)
"#;

/// Two ranks of one step on two nodes, joined by a TCP connection between
/// the nodes with a record in flight at nearly every moment (issue 16,
/// docs/batch-jobs.md "Connections between tasks"): the warning signal
/// checkpoints the job as one cut (every task stopped before any is
/// captured), the job is requeued and resumes on another pair of nodes,
/// where the two ranks' inits make the connection again through the job's
/// directory with the bytes each had received and not read. Each rank's
/// output is its steps once each and the uninterrupted run's result.
#[test]
fn two_ranks_joined_by_tcp_across_nodes_resume_on_another_pair_of_nodes() {
    let Some(c) = slurm::cluster() else { return };
    let dir = setup(&c, "tcp-ranks");
    c.write_script(&dir.join("tcp_ranks.py"), TCP_RANKS_PY);
    const STEPS: u32 = 30;
    let both = user_ok(
        &c,
        &dir,
        &[
            "sh",
            "-c",
            &format!(
                "rm -f addr; SLURM_PROCID=0 python3 tcp_ranks.py {STEPS} 0 > r0 & \
                 SLURM_PROCID=1 python3 tcp_ranks.py {STEPS} 0 > r1; wait; cat r0 r1; rm -f addr r0 r1"
            ),
        ],
    );
    let wants: Vec<String> = (0..2)
        .map(|r| {
            both.lines()
                .find(|l| l.starts_with(&format!("RESULT rank {r} ")))
                .map(str::to_owned)
                .unwrap_or_else(|| panic!("no RESULT for rank {r}: {both}"))
        })
        .collect();
    let script = format!(
        "#!/bin/bash\n\
         #SBATCH -p multi -N2 --ntasks-per-node=1 --checkpoint-dir=ck --signal=B:USR1@10\n\
         srun -Q -l python3 tcp_ranks.py {STEPS} 0.4\n\
         echo \"post done\"\n"
    );
    let job = submit(&c, &dir, &["-t", "10"], &script);
    let rank_step = |rank: u32| {
        last_step(&rank_lines(&fs::read_to_string(&job.out).unwrap_or_default(), rank).join("\n"))
    };
    wait_until(&c, Some(&job), "step 4 of both ranks", || {
        (0..2).all(|r| rank_step(r) >= 4)
    });
    let (first, second, drained) = move_by_warning(&c, &dir, &job, 2);
    let end = final_state(&c, &job);
    drop(drained);
    let run = job.run();
    c.check(end == "COMPLETED", &format!("final state {end}"), &run);
    c.check(
        !run.stderr.contains("checkpoint failed") && !run.stdout.contains("FAIL"),
        "a checkpoint failed or a rank found a record different from the uninterrupted run's",
        &run,
    );
    check_moved_and_continuous(&c, &run, &first, &second, &wants, STEPS);
    check_ranks_resumed(&c, &run, &dir, "step0", 2);
    // Where the two ends met is gone with the job's images.
    let meet = dir.join("ck/meet.1");
    c.check(
        !meet.exists(),
        &format!("{} is left after the job ended", meet.display()),
        &run,
    );
}
