"""The C/R test protocol for Python programs (the same as lib/crtest.h): print
"READY" once set up, pass gates ("hold k", wait while $CR_GATE_DIR/gate-k exists,
answering the runner's pings, "go k"), print "FAIL: why" and exit 1 on a wrong
result, "PASS" at the end.

Programs import it with
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
    from crtest import line, gate, ready, fail"""
import os
import sys
import time

GATE_DIR = os.environ.get("CR_GATE_DIR", "")


def line(text):
    print(text, flush=True)


def fail(why):
    line(f"FAIL: {why}")
    sys.exit(1)


def gate(k):
    line(f"hold {k}")
    if GATE_DIR:
        path = os.path.join(GATE_DIR, f"gate-{k}")
        while os.path.exists(path):
            try:
                os.unlink(path + ".ping")
            except FileNotFoundError:
                pass
            time.sleep(0.005)
    line(f"go {k}")


def ready():
    """Appends READY to $CR_STARTS_LOG (a restored program never runs this again,
    so the runner tells a restore from a rerun), then prints READY."""
    starts = os.environ.get("CR_STARTS_LOG", "")
    if starts:
        with open(starts, "a") as f:
            f.write("READY\n")
    line("READY")
