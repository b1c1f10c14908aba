"""mp_forkserver: a Python multiprocessing pool with the forkserver start method
(issues 12, 13; the default start method on Linux from Python 3.14): the forkserver
process listens on a unix socket and receives descriptors with SCM_RIGHTS, the pool's
workers take tasks and return results over pipes, and the parent also talks to a
worker-side process over a multiprocessing.Pipe (a socketpair). Checkpointed between
and during batches; every result arrives exactly once.

usage: mp_forkserver.py [BATCH]   (default 400)"""
import multiprocessing as mp
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from crtest import fail, gate, line, ready  # noqa: E402


def work(i):
    x = i
    for _ in range(2000):
        x = (x * 6364136223846793005 + 1442695040888963407) % (1 << 64)
    return i, x % 1000003


def echo(conn):
    while True:
        m = conn.recv()
        if m is None:
            conn.close()
            return
        conn.send(("echo", m, sum(m)))


def main():
    batch = int(sys.argv[1]) if len(sys.argv) > 1 else 400
    ctx = mp.get_context("forkserver")
    parent, child = ctx.Pipe()
    helper = ctx.Process(target=echo, args=(child,))
    helper.start()
    child.close()
    with ctx.Pool(2) as pool:
        ready()
        total = 0
        for g in range(1, 4):
            results = pool.map(work, range((g - 1) * batch, g * batch), chunksize=7)
            for k, (i, v) in enumerate(results):
                if i != (g - 1) * batch + k:
                    fail(f"result {k} of batch {g} is for {i}")
                total = (total + v) % (1 << 61)
            parent.send(list(range(g, g + 50)))
            tag, m, s = parent.recv()
            if tag != "echo" or s != sum(range(g, g + 50)):
                fail(f"echo {tag} {s}")
            line(f"batch {g}: {len(results)} results, total {total}")
            gate(g)
    parent.send(None)
    helper.join()
    if helper.exitcode != 0:
        fail(f"helper exit code {helper.exitcode}")
    line(f"total {total}")
    line("PASS")


if __name__ == "__main__":
    main()
