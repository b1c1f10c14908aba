"""files_hdf5: an HDF5 file (Debian's python3-h5py) extended at every step, the h5py
File kept open from the start to the end (issue 14).

data.h5 holds the dataset "x" (float64, maxshape=(None, 64), chunked) and the attribute
"total". Every step:
  - reads the whole dataset back from the file (the chunk cache is off, so the rows
    come from the file, not from memory) and checks it against the hash the program
    kept after the previous step;
  - rewrites a band of existing rows from their previous values, in place;
  - resizes the dataset and appends new rows computed from the last rows;
  - updates the attribute "total" read-modify-write;
  - flushes the file, prints the step's hashes.
A restart that did not put data.h5 back as it was at the checkpoint reads rows written
after the checkpoint: "FAIL: ... changed" or different hashes.
Gates like the C programs (see lib/crtest.h).

usage: files_hdf5.py [STEPS]   (default 12; gates at every 4th step)"""
import hashlib
import os
import sys

import h5py
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from crtest import fail, gate, line, ready  # noqa: E402

COLS = 64
ROWS_PER_STEP = 256


def digest(a):
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


def main():
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 12
    if os.path.exists("data.h5"):
        os.unlink("data.h5")
    # rdcc_nbytes=0: no chunk cache, every read of the dataset goes to the file.
    f = h5py.File("data.h5", "w", rdcc_nbytes=0, track_order=False)
    x = f.create_dataset(
        "x",
        shape=(ROWS_PER_STEP, COLS),
        maxshape=(None, COLS),
        chunks=(64, COLS),
        dtype="f8",
        track_times=False,
    )
    x[:, :] = np.arange(ROWS_PER_STEP * COLS, dtype="f8").reshape(ROWS_PER_STEP, COLS) % 97.0
    x.attrs["total"] = np.float64(0.0)
    x.attrs["steps"] = np.int64(0)
    f.flush()
    kept = digest(x[:, :])
    ready()
    for step in range(1, steps + 1):
        # Everything comes back from the file; it must be what the program wrote.
        rows = x[:, :]
        if digest(rows) != kept:
            fail(f"step {step}: data.h5 changed behind the program's back "
                 f"(dataset hash {digest(rows)}, expected {kept})")
        n = rows.shape[0]
        # In place: a band of existing rows, from their previous values.
        lo = (step * 97) % n
        hi = min(n, lo + 200)
        band = rows[lo:hi]
        x[lo:hi, :] = np.mod(band * 1.5 + np.arange(COLS) * step, 10007.0)
        # Appended: rows from the last rows of the file and the step.
        last = x[n - 8:n, :]
        new = np.empty((ROWS_PER_STEP, COLS), dtype="f8")
        for i in range(ROWS_PER_STEP):
            new[i] = np.mod(last[i % 8] * (i + 3) + step * 13 + i, 65521.0)
        x.resize((n + ROWS_PER_STEP, COLS))
        x[n:, :] = new
        # The attribute, read-modify-write.
        total = float(x.attrs["total"])
        x.attrs["total"] = np.float64(np.mod(total * 3.0 + float(new.sum()) + float(band.sum()), 1e12))
        x.attrs["steps"] = np.int64(int(x.attrs["steps"]) + 1)
        f.flush()
        kept = digest(x[:, :])
        line(f"step {step} rows {x.shape[0]} total {float(x.attrs['total']):.1f} "
             f"steps {int(x.attrs['steps'])} hash {kept}")
        if step % 4 == 0:
            gate(step // 4)
    f.close()
    line("PASS")


main()
