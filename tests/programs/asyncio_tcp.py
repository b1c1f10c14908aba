"""asyncio_tcp: a Python asyncio server and a client process talking over
loopback TCP (issue 13), the way Jupyter kernels, Dask and web services do:
the parent runs `asyncio.start_server` on 127.0.0.1 (a port of the kernel's
choice), a forked child connects with `asyncio.open_connection` and sends
numbered requests without waiting for the answers; the server answers each.
At each gate requests and answers are in flight in both directions. Every
answer arrives exactly once, in order; the progress at each gate and the
totals are printed.

usage: asyncio_tcp.py [REQUESTS]   (default 3000)"""
import asyncio
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from crtest import fail, gate, line, ready  # noqa: E402

RECORD = 22


def answer(i):
    return f"ans {i:08d} {i * 7919 % 1000003:08d}\n".encode()[:RECORD]


async def client(port, n, ctl):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def send():
        for i in range(n):
            writer.write(f"req {i:08d} {i % 97:08d}\n".encode()[:RECORD])
            if i % 64 == 0:
                await writer.drain()
        await writer.drain()

    sender = asyncio.create_task(send())
    for i in range(n):
        rec = await reader.readexactly(RECORD)
        if rec != answer(i):
            fail(f"answer {i}: {rec!r}")
    await sender
    writer.close()
    os.write(ctl, b"D")


async def server(n, port_w, ctl_r):
    done = asyncio.Event()
    served = 0

    async def handle(reader, writer):
        nonlocal served
        gates = 0
        for i in range(n):
            rec = await reader.readexactly(RECORD)
            if int(rec.split()[1]) != i:
                fail(f"request {i}: {rec!r}")
            writer.write(answer(i))
            served = i + 1
            if gates < 3 and i + 1 >= (gates + 1) * n // 4:
                gates += 1
                await writer.drain()
                line(f"served {i + 1}")
                gate(gates)
        await writer.drain()
        done.set()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    os.write(port_w, str(srv.sockets[0].getsockname()[1]).encode() + b"\n")
    ready()
    await done.wait()
    if await asyncio.get_running_loop().run_in_executor(None, os.read, ctl_r, 1) != b"D":
        fail("the client did not finish")
    srv.close()
    await srv.wait_closed()
    return served


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    port_r, port_w = os.pipe()
    ctl_r, ctl_w = os.pipe()
    # The client is forked before either side makes an event loop: an
    # epoll instance shared across fork would let one process's loop
    # change the other's registrations.
    pid = os.fork()
    if pid == 0:
        os.close(port_w)
        os.close(ctl_r)
        port = int(os.read(port_r, 32).decode())
        asyncio.run(client(port, n, ctl_w))
        os._exit(0)
    os.close(port_r)
    os.close(ctl_w)
    served = asyncio.run(server(n, port_w, ctl_r))
    _, status = os.waitpid(pid, 0)
    if status != 0:
        fail(f"client status {status}")
    line(f"served {served}")
    line("PASS")


main()
