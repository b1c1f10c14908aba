"""epoll_py: a Python event loop on select.epoll (issue 12) over an eventfd, a
semaphore-mode eventfd and an edge-triggered pipe fed by a worker thread, checkpointed
while events are in flight. (asyncio is not used: its event loop always makes a
socketpair for its self-pipe, and ckpt refuses sockets.) Every increment, token and
record is seen exactly once; the progress at each gate and the totals are printed.

usage: epoll_py.py [RECORDS]   (default 300)"""
import os
import select
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from crtest import fail, gate, line, ready  # noqa: E402

RECORD = 16


def main():
    records = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    counter = os.eventfd(0, os.EFD_NONBLOCK)
    tokens = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_SEMAPHORE)
    rfd, wfd = os.pipe2(os.O_NONBLOCK)
    os.set_blocking(wfd, True)
    ep = select.epoll()
    ep.register(counter, select.EPOLLIN)
    ep.register(tokens, select.EPOLLIN)
    ep.register(rfd, select.EPOLLIN | select.EPOLLET)

    def worker():
        for i in range(records):
            os.eventfd_write(counter, 2)
            if i % 3 == 0:
                os.eventfd_write(tokens, 1)
            os.write(wfd, f"rec {i:012d}".encode())
            time.sleep(0.0005)

    th = threading.Thread(target=worker)
    th.start()
    ready()
    incs = toks = recs = gates = 0
    part = b""
    want_tokens = (records + 2) // 3
    while incs < 2 * records or toks < want_tokens or recs < records:
        for fd, _ in ep.poll(1.0):
            if fd == counter:
                incs += os.eventfd_read(counter)
            elif fd == tokens:
                toks += os.eventfd_read(tokens)  # one token per read
            elif fd == rfd:
                while True:
                    try:
                        data = os.read(rfd, 4096)
                    except BlockingIOError:
                        break
                    if not data:
                        fail("pipe closed")
                    part += data
                    while len(part) >= RECORD:
                        rec, part = part[:RECORD], part[RECORD:]
                        if rec != f"rec {recs:012d}".encode():
                            fail(f"record {recs} is {rec!r}")
                        recs += 1
            else:
                fail(f"event for fd {fd}")
        if gates < 3 and recs >= (gates + 1) * records // 3:
            gates += 1
            line(f"records {gates * records // 3}")
            gate(gates)
    th.join()
    line(f"increments {incs}, tokens {toks}, records {recs}")
    line("PASS")
    return 0


sys.exit(main())
