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
