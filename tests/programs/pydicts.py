"""pydicts: a python3 loop over large dicts (int and str keys), rebuilt and mutated each
round, with a checksum line per round and gates like the C programs (see lib/crtest.h).
At the end the dicts are checked against an independent recomputation.

usage: pydicts.py [N [ROUNDS]]   (defaults 300000, 12)"""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from crtest import fail, gate, line, ready  # noqa: E402


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 12
    step = rounds // 4
    ints = {i: (i * i) % 1000003 for i in range(n)}
    strs = {f"k{i}": i for i in range(n)}
    line(f"dicts {len(ints)} {len(strs)}")
    ready()
    for r in range(1, rounds + 1):
        for i in range(r % 3, n, 3):
            ints[i] = (ints[i] * 31 + r) % 1000003
        strs = {k: v + r for k, v in strs.items()}
        for i in range(r, n, 97):
            del strs[f"k{i}"]
        for i in range(r, n, 97):
            strs[f"k{i}"] = i + r * (r + 1) // 2
        total = sum(ints.values())
        stotal = sum(strs.values())
        line(f"round {r} ints {total} strs {len(strs)} {stotal}")
        if r % step == 0 and r // step <= 3:
            gate(r // step)
        time.sleep(0.05)

    # Independent recomputation, one key at a time.
    for i in range(0, n, 7):
        v = (i * i) % 1000003
        for r in range(1, rounds + 1):
            if i % 3 == r % 3:
                v = (v * 31 + r) % 1000003
        if ints[i] != v:
            line(f"FAIL: ints[{i}] = {ints[i]}, expected {v}")
            return 1
    if len(strs) != n:
        line(f"FAIL: {len(strs)} str keys, expected {n}")
        return 1
    bump = rounds * (rounds + 1) // 2
    for i in range(n):
        if strs[f"k{i}"] != i + bump:
            line(f"FAIL: strs['k{i}'] = {strs[f'k{i}']}, expected {i + bump}")
            return 1
    line("PASS")
    return 0


sys.exit(main())
