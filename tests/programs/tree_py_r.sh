#!/bin/bash
# tree_py_r: a job script that runs python3 and then Rscript, each long enough
# to be checkpointed while it runs (checkpoint 1 lands in python3, 2 in R,
# 3 in a second python3).
. "$(dirname "$0")/lib/crtest.sh"
cr_ready
/usr/bin/python3 - <<'PY'
import time
d = {}
acc = 0
for r in range(10):
    for i in range(20000):
        d[(r, i)] = r * i % 977
    acc = (acc + sum(d.values())) % 1000003
    print(f"py round {r} acc {acc}", flush=True)
    time.sleep(0.15)
PY
cr_gate 1
Rscript -e '
set.seed(7); hits <- 0; n <- 0
for (i in 1:10) { x <- runif(50000); y <- runif(50000); hits <- hits + sum(x*x + y*y <= 1); n <- n + 50000
  cat(sprintf("R iter %d pi %.6f\n", i, 4 * hits / n)); flush(stdout()); Sys.sleep(0.15) }
'
cr_gate 2
/usr/bin/python3 -c '
import time
for i in range(8):
    print("py again", i, sum(range(i * 1000)), flush=True)
    time.sleep(0.1)
'
cr_gate 3
echo PASS
