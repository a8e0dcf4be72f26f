"""What verify's and report's main process holds as the corpus grows: their per-file merges, without cell data.

    python benchmarks/merge_at_scale.py [--cells 10000000 100000000 270000000]

verify folds each data file's ids into a bit per input row (`_IdTracker`); report merges each file's small
distributions (`_Totals`: genes and counts per cell as distinct-value counts, entries per input file, tokens seen,
metadata value counts). Here each scale runs, in a fresh process, exactly those merges over synthetic per-file
results of the real shape (32,768-cell shuffled data files holding cells of every input; ~5,400 cells per input
file as in the 270M-cell plan; ~2,000 genes per cell; raw-count totals; 380 drugs) and prints time and peak RSS.
The workers' side is measured end to end by `benchmarks/e2e.py`. Nothing is asserted; numbers go in
docs/scaling.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np

FILE_CELLS = 32_768
CELLS_PER_INPUT = 5_400
VOCAB = 62_713


def job(cells: int) -> dict:
    from cellcorpus.core.sketch import ValueCounts
    from cellcorpus.stages.report import _FileStats, _Totals
    from cellcorpus.stages.verify import _IdTracker

    rng = np.random.default_rng(0)
    n_inputs = max(1, cells // CELLS_PER_INPUT)
    tracker = _IdTracker(dict.fromkeys(range(n_inputs), CELLS_PER_INPUT), "mds")
    totals = _Totals(["train"], list(range(n_inputs)), ("drug",))
    drugs = [f"drug{i}" for i in range(380)]
    t = time.perf_counter()
    merge = 0.0
    n_files = -(-cells // FILE_CELLS)
    for k in range(n_files):  # every cell once; file k holds cells k, k + n_files, ...: a slice of every input
        cell = np.arange(k, cells, n_files, dtype=np.int64)
        files, rows = cell // CELLS_PER_INPUT, cell % CELLS_PER_INPUT
        ids = (files.astype(np.int64) << 32) | rows
        n_genes = rng.integers(200, 4_000, len(cell))
        counts = np.round(n_genes * rng.lognormal(1.2, 0.3, len(cell)))
        uniq, inverse = np.unique(files, return_inverse=True)
        per_drug = dict(zip(drugs, rng.multinomial(len(cell), [1 / 380] * 380).tolist(), strict=True))
        got = _FileStats("train", ValueCounts.of(n_genes), ValueCounts.of(counts), uniq,
                         np.bincount(inverse, weights=n_genes).astype(np.int64),
                         np.unique(rng.integers(3, VOCAB, 20_000)), {"drug": per_drug})  # fmt: skip
        m = time.perf_counter()
        tracker.add(f"train/{k}", ids)
        totals.add(got)
        merge += time.perf_counter() - m
    assert tracker.uniq.failed == 0 and totals.genes["train"].n == cells
    return {
        "cells": cells,
        "files": -(-cells // FILE_CELLS),
        "inputs": n_inputs,
        "merge_s": merge,
        "total_s": time.perf_counter() - t,
        "bitmap_mb": tracker.bits.nbytes / 2**20,
        "distinct_counts": len(totals.counts["train"].values),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, nargs="+", default=[10_000_000, 100_000_000, 270_000_000])
    ap.add_argument("--job", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.job:
        print(json.dumps(job(args.job)))
        return
    print(f"{'cells':>12} {'data files':>10} {'inputs':>7} {'merges':>9} {'in all':>9} {'id bits':>8} "
          f"{'distinct totals':>15} {'peak RSS':>9}")  # fmt: skip
    for n in args.cells:
        done = subprocess.run([sys.executable, __file__, "--job", str(n)], capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(done.stderr[-3000:])
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{r['cells']:>12,} {r['files']:>10,} {r['inputs']:>7,} {r['merge_s']:>8.1f}s {r['total_s']:>8.1f}s "
              f"{r['bitmap_mb']:>6.0f}MB {r['distinct_counts']:>15,} {r['peak_rss_mb']:>7.0f}MB")  # fmt: skip


if __name__ == "__main__":
    main()
