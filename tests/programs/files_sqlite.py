"""files_sqlite: a python3 program that inserts rows into an sqlite3 database, one
transaction per step, and reads its own totals back from the database at every step
(so rows committed after a checkpoint and inserted again after a restart would show).
Gates like the C programs (see lib/crtest.h).

usage: files_sqlite.py MODE   (MODE: delete = rollback journal, wal)"""
import hashlib
import os
import sqlite3
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from crtest import fail, gate, line, ready  # noqa: E402


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else "delete"
    for f in ("data.db", "data.db-wal", "data.db-shm", "data.db-journal"):
        if os.path.exists(f):
            os.unlink(f)
    db = sqlite3.connect("data.db", isolation_level=None)
    got = db.execute(f"PRAGMA journal_mode={mode}").fetchone()[0]
    line(f"journal {got}")
    db.execute("CREATE TABLE t (step INTEGER, i INTEGER, v INTEGER, s TEXT)")
    ready()
    for step in range(1, 13):
        db.execute("BEGIN")
        prev = db.execute("SELECT COALESCE(SUM(v), 0) FROM t").fetchone()[0]
        rows = [(step, i, (prev + i * step) % 1000003, f"r{step}-{i}") for i in range(1000)]
        db.executemany("INSERT INTO t VALUES (?, ?, ?, ?)", rows)
        db.execute("DELETE FROM t WHERE step = ? AND i % 7 = 0", (step - 1,))
        db.execute("COMMIT")
        n, total = db.execute("SELECT COUNT(*), SUM(v) FROM t").fetchone()
        h = hashlib.sha256()
        for r in db.execute("SELECT step, i, v, s FROM t ORDER BY step, i"):
            h.update(repr(r).encode())
        line(f"step {step} rows {n} sum {total} hash {h.hexdigest()[:16]}")
        if step % 4 == 0:
            gate(step // 4)
    db.close()
    line("PASS")


main()
