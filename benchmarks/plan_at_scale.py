"""The bookkeeping of a shuffled 270M-cell, 50k-file corpus, without cell data: plan, ledger, shuffle plan, merge.

    python benchmarks/plan_at_scale.py [--fractions 0.02 0.04 0.08] [--out /tmp/plan_at_scale]

What grows with the corpus besides the cells: the tokenize units (one or more per input file), their completion
records, where every shuffle bucket starts in each part (rows and bytes, an `.npy` beside the part since issue 21;
JSON lists in the ledger before), the bucket-major plan the shuffle units read their slices from, and the MDS
index merge over every writer folder. Each step runs here on synthetic records of the real shape, through the
real code (`plan_tokenize`, `write_part_bounds`, `Ledger.record` / `Ledger.done`, `shuffle_units`,
`bucket_slices`, `merge_split_index`), in a fresh process per scale for its own peak RSS.

The bucket bounds are n_parts x n_buckets x 2 integers (50k x 8.2k x 2 = 820M at 270M cells) and both factors
grow with the corpus; they now live on disk (~6.5 GB at full scale, twice: per part, then bucket-major), so the
full scale (`--fractions 1`) runs on a machine with ~15 GB of free disk. Smaller fractions are fitted to
a + b*s^k (k = 2 for what grows with parts x buckets) to estimate the full size.
Nothing is asserted; numbers go in docs/scaling.md. Outputs are removed at the end.
"""

from __future__ import annotations

import argparse
import json
import pickle
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

FULL_CELLS = 270_000_000
FULL_FILES = 50_000
UNIT_CELLS = 16_384
BUCKET_CELLS = 32_768
TEST_SIZE = 0.01


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def job(fraction: float, out: Path) -> dict:
    """One scale, measured step by step in this process."""
    from cellcorpus.config import HuggingfaceConfig
    from cellcorpus.core.shuffle import n_buckets_for
    from cellcorpus.formats.mds.writer import merge_split_index
    from cellcorpus.formats.shuffle_plan import bucket_slices, write_part_bounds
    from cellcorpus.manifest import Ledger, UnitResult
    from cellcorpus.sources.base import InputFile
    from cellcorpus.stages.tokenize import plan_tokenize
    from cellcorpus.stages.tokenize_finalize import shuffle_units

    cells, files = int(FULL_CELLS * fraction), max(1, int(FULL_FILES * fraction))
    per_file = cells // files
    hf = HuggingfaceConfig.model_validate(
        {"adata_dir": str(out), "output_root": str(out / "work"), "merged_dataset_root": str(out / "merged"),
         "vocab_output_root": str(out), "vocab_path": "v.json", "unit_cells": UNIT_CELLS}
    )  # fmt: skip
    res: dict = {"fraction": fraction, "cells": cells, "files": files}
    steps: dict[str, float] = {}

    t = time.perf_counter()
    inputs = [InputFile(f"{out}/f{i}.h5ad", f"f{i}.h5ad", i, per_file, per_file * 900, "0" * 16) for i in range(files)]
    units = plan_tokenize(hf, inputs)
    steps["plan"] = time.perf_counter() - t
    n_train = n_buckets_for(round(cells * (1 - TEST_SIZE)), BUCKET_CELLS, 1)
    res.update(units=len(units), buckets=n_train)

    # One completion record per tokenize unit, shaped as tokenize_unit writes it (train split shuffled).
    rng = np.random.default_rng(0)
    ledger = Ledger(out / "work" / "units" / "tokenize", "h" * 16)
    parts_dir = out / "work" / "parts" / "train"
    parts_dir.mkdir(parents=True)
    t = time.perf_counter()
    for u in units:
        n = u.n_cells
        bounds = np.concatenate([[0], np.sort(rng.integers(0, n, n_train - 1)), [n]])
        name = write_part_bounds(parts_dir / f"{u.unit_id}.arrow", bounds, bounds * 9000)
        outputs = [
            {"path": f"train/{u.unit_id}.arrow", "bytes": n * 9000, "xxh64": "0" * 16, "split": "train",
             "n_cells": n, "bounds": name},
            {"path": f"valid/{u.unit_id}.arrow", "bytes": 0, "xxh64": "0" * 16, "split": "valid", "n_cells": 0},
        ]  # fmt: skip
        ledger.record(UnitResult(u.unit_id, {"cells_read": n}, outputs, {"input_checksum": "0" * 16}))
    steps["ledger write"] = time.perf_counter() - t
    res["ledger_mb"] = sum(p.stat().st_size for p in ledger.dir.iterdir()) / 2**20
    res["bounds_mb"] = sum(p.stat().st_size for p in parts_dir.iterdir()) / 2**20
    del ledger

    t = time.perf_counter()
    done = Ledger(out / "work" / "units" / "tokenize", "h" * 16).done()  # what a resumed or finishing run reads
    results = [done[u.unit_id] for u in units]
    steps["ledger read"] = time.perf_counter() - t
    res["rss_after_ledger_mb"] = _peak_mb()

    t = time.perf_counter()
    parts = [(str(parts_dir / f"{u.unit_id}.arrow"), r.outputs[0]) for u, r in zip(units, results, strict=True)]
    sunits = shuffle_units(parts, "train", out, n_train)
    steps["shuffle plan"] = time.perf_counter() - t
    res["shuffle_unit_pickle_kb"] = len(pickle.dumps(sunits[0])) / 1024
    res["rss_after_shuffle_plan_mb"] = _peak_mb()
    t = time.perf_counter()
    slices = bucket_slices(sunits[n_train // 2].plan, n_train // 2)  # what one shuffle unit reads where it runs
    steps["one bucket's slices"] = time.perf_counter() - t
    assert len(slices) <= len(parts)
    del sunits, parts, results, done, slices

    split = out / "mds" / "train"
    subs = [f"{b:05d}" for b in range(n_train)]
    indexes = [
        {"shards": [{"column_encodings": ["pkl"], "column_names": ["genes"], "column_sizes": [None],
                     "compression": "zstd", "format": "mds", "hashes": ["sha1", "xxh64"],
                     "raw_data": {"basename": f"shard.{k:05d}.mds", "bytes": 1 << 26, "hashes": {}},
                     "samples": 3000, "size_limit": 1 << 26, "version": 2,
                     "zip_data": {"basename": f"shard.{k:05d}.mds.zstd", "bytes": 1 << 24, "hashes": {}}}
                    for k in range(12)], "version": 2}
        for _ in subs
    ]  # fmt: skip
    split.mkdir(parents=True)
    t = time.perf_counter()
    merge_split_index(split, subs, indexes)
    steps["mds index merge"] = time.perf_counter() - t
    res["index_mb"] = (split / "index.json").stat().st_size / 2**20
    res["steps"] = steps
    res["peak_rss_mb"] = _peak_mb()
    return res


# How each measure grows with the corpus: with parts x buckets (both grow with it), or with one of them.
_GROWTH = {"plan": 1, "ledger write": 2, "ledger read": 1, "shuffle plan": 2, "one bucket's slices": 1,
           "mds index merge": 1, "ledger_mb": 1, "bounds_mb": 2, "peak_rss_mb": 1,
           "shuffle_unit_pickle_kb": 0}  # fmt: skip


def _fit(xs: list[float], ys: list[float], power: int) -> float:
    """Value at x=1 of the least-squares fit y = a + b*x^power."""
    a = np.vstack([np.ones(len(xs)), np.power(xs, power)]).T
    coef, *_ = np.linalg.lstsq(a, np.asarray(ys), rcond=None)
    return float(coef[0] + coef[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.02, 0.04, 0.08])
    ap.add_argument("--out", type=Path, default=Path("/tmp/plan_at_scale"))
    ap.add_argument("--job", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.job:
        print(json.dumps(job(float(args.job[0]), Path(args.job[1]))))
        return
    rows = []
    try:
        for fraction in args.fractions:
            out = args.out / f"s{fraction}"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            cmd = [sys.executable, __file__, "--job", str(fraction), str(out)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(done.stderr[-3000:])
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(args.out, ignore_errors=True)
    names = list(rows[0]["steps"])
    print(f"{'cells':>12} {'files':>6} {'units':>6} {'buckets':>7} " + " ".join(f"{n:>16}" for n in names)
          + f" {'ledger MB':>10} {'bounds MB':>10} {'peak RSS MB':>11} {'1 shuffle unit KB':>17}")  # fmt: skip
    for r in rows:
        print(f"{r['cells']:>12,} {r['files']:>6,} {r['units']:>6,} {r['buckets']:>7,} "
              + " ".join(f"{r['steps'][n]:>15.2f}s" for n in names)
              + f" {r['ledger_mb']:>10.0f} {r['bounds_mb']:>10.0f} {r['peak_rss_mb']:>11.0f}"
              + f" {r['shuffle_unit_pickle_kb']:>17.2f}")  # fmt: skip
    xs = [r["fraction"] for r in rows]
    est = {n: _fit(xs, [r["steps"][n] for r in rows], _GROWTH[n]) for n in names}
    print("\nestimated at 270M cells, 50k files (a + b*s^k fitted to the fractions above, k = 2 for what grows")
    print("with parts x buckets, 1 for the rest; s = 1):")
    print("  " + ", ".join(f"{n} {v / 60:.1f} min" for n, v in est.items()))
    fit = {
        k: _fit(xs, [r[k] for r in rows], _GROWTH[k])
        for k in ("ledger_mb", "bounds_mb", "peak_rss_mb", "shuffle_unit_pickle_kb")
    }
    print(
        f"  ledger {fit['ledger_mb'] / 1024:.2f} GB + bucket bounds {fit['bounds_mb'] / 1024:.1f} GB on disk, "
        f"peak RSS {fit['peak_rss_mb'] / 1024:.2f} GB, one shuffle unit {fit['shuffle_unit_pickle_kb']:.2f} KB pickled"
    )


if __name__ == "__main__":
    main()
