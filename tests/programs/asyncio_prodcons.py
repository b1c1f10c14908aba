"""asyncio_prodcons: a Python asyncio program (issues 12 and 13): producers and a
consumer on an asyncio.Queue, timers (call_later), and a stream over a socketpair
between two coroutines (asyncio's own event loop also holds a socketpair for its
self-pipe and an epoll instance), checkpointed while bytes are in flight. Every item
arrives exactly once and each producer's in its order (how the two producers
interleave depends on timing, so it is not printed); the progress at each gate and the
totals are printed.

usage: asyncio_prodcons.py [ITEMS]   (default 3000)"""
import asyncio
import os
import socket
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from crtest import fail, gate, line, ready  # noqa: E402

RECORD = 23


async def main():
    items = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    a, b = socket.socketpair()
    # Both transports stay referenced: a dropped writer closes its socket.
    reader, a_writer = await asyncio.open_connection(sock=a)
    b_reader, writer = await asyncio.open_connection(sock=b)
    queue = asyncio.Queue(maxsize=50)
    ticks = 0

    def tick():
        nonlocal ticks
        ticks += 1
        if ticks < 40:
            asyncio.get_running_loop().call_later(0.01, tick)

    asyncio.get_running_loop().call_later(0.01, tick)

    async def producer(k):
        for i in range(k, items, 2):
            await queue.put(i)
            if i % 97 == 0:
                await asyncio.sleep(0.001)

    async def relay():
        # Items go through the socketpair as fixed-size records.
        for _ in range(items):
            i = await queue.get()
            writer.write(f"item {i:08d} {i * i % 1000003:08d}\n".encode()[:RECORD])
            if i % 50 == 0:
                await writer.drain()
        await writer.drain()

    ready()
    tasks = [asyncio.create_task(producer(0)), asyncio.create_task(producer(1)),
             asyncio.create_task(relay())]
    seen = set()
    last = [-2, -1]  # each producer's items arrive in its order
    gates = 0
    for n in range(items):
        rec = await reader.readexactly(RECORD)
        f = rec.split()
        i = int(f[1])
        if i in seen or int(f[2]) != i * i % 1000003:
            fail(f"record {n}: {rec!r}")
        if i != last[i % 2] + 2:
            fail(f"record {n}: item {i} after {last[i % 2]}")
        last[i % 2] = i
        seen.add(i)
        if gates < 3 and n + 1 >= (gates + 1) * items // 3:
            gates += 1
            line(f"records {n + 1}")
            gate(gates)
    await asyncio.gather(*tasks)
    while ticks < 40:
        await asyncio.sleep(0.01)
    if seen != set(range(items)):
        fail("items missing")
    line(f"items {len(seen)}, ticks {ticks}")
    writer.close()
    a_writer.close()
    del b_reader
    line("PASS")


asyncio.run(main())
