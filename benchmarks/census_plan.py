"""Planning memory of a Census download: a 60M-cell plan built from a synthetic soma_joinid array.

The plan must not hold a Python object per cell. Prints the id array's size, the extra memory the plan
allocates (tracemalloc peak) and the pickled size of one unit (what a worker receives).

    python benchmarks/census_plan.py --cells 60000000 --chunk-size 100000
"""

from __future__ import annotations

import argparse
import pickle
import time
import tracemalloc
from pathlib import Path

import numpy as np

from cellcorpus.sources.census import plan_census


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", type=int, default=60_000_000)
    ap.add_argument("--genes", type=int, default=60_000)
    ap.add_argument("--chunk-size", type=int, default=100_000)
    args = ap.parse_args()
    obs_ids = np.sort(np.random.default_rng(0).choice(args.cells * 2, args.cells, replace=False)).astype(np.int64)
    var_ids = np.arange(args.genes, dtype=np.int64)
    tracemalloc.start()
    t0 = time.perf_counter()
    units = plan_census(obs_ids, var_ids, args.chunk_size, Path("/tmp/census"), 1)
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"cells {args.cells:,}  chunks {len(units):,}  plan {elapsed:.2f} s")
    print(f"id array {obs_ids.nbytes / 2**20:,.0f} MiB; plan allocates {peak / 2**20:,.1f} MiB beyond it")
    print(f"one unit pickled: {len(pickle.dumps(units[0])) / 2**20:,.2f} MiB")


if __name__ == "__main__":
    main()
