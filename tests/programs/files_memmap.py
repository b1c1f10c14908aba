"""files_memmap: a numpy memmap (Debian's python3-numpy) of a 32 MiB file of float64,
rewritten through the mapping at every step (issue 14).

np.memmap maps data.bin MAP_SHARED and closes its descriptor: the file is reached only
through the mapping. Every step:
  - checks the whole array against the CRC-32 the program kept after the previous step
    (the pages come from the file: a restart that did not put the file back shows the
    values written after the checkpoint);
  - rewrites a slice (a quarter of the file, moving with the step) from its previous
    values and from another slice, and a few scattered elements;
  - .flush() (msync), prints the step's checksums.
Gates like the C programs (see lib/crtest.h).

usage: files_memmap.py [MIB] [STEPS]   (defaults 32 and 12; gates at every 4th step)"""
import os
import sys
import zlib

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from crtest import fail, gate, line, ready  # noqa: E402


def crc(a):
    return zlib.crc32(memoryview(np.ascontiguousarray(a)).cast("B"))


def main():
    mib = int(sys.argv[1]) if len(sys.argv) > 1 else 32
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 12
    n = (mib << 20) // 8
    if os.path.exists("data.bin"):
        os.unlink("data.bin")
    m = np.memmap("data.bin", dtype="f8", mode="w+", shape=(n,))
    m[:] = np.arange(n, dtype="f8") % 1009.0
    m.flush()
    kept = crc(m)
    ready()
    q = n // 4
    idx = (np.arange(4096, dtype=np.int64) * 7919) % n
    for step in range(1, steps + 1):
        now = crc(m)
        if now != kept:
            fail(f"step {step}: data.bin changed behind the program's back "
                 f"(crc {now:08x}, expected {kept:08x})")
        lo = (step * (n // 7)) % (n - q)
        src = (lo + n // 3) % (n - q)
        # Read-modify-write: the slice from its own previous values and another slice.
        m[lo:lo + q] = np.mod(m[lo:lo + q] * 3.0 + m[src:src + q] + step, 1000003.0)
        # Scattered elements, each from its previous value.
        m[idx] = np.mod(m[idx] * 7.0 + step, 65521.0)
        m.flush()
        kept = crc(m)
        part = float(m[lo:lo + 1024].sum())
        line(f"step {step} slice {lo} sum {part:.1f} crc {kept:08x}")
        if step % 4 == 0:
            gate(step // 4)
    del m
    line("PASS")


main()
