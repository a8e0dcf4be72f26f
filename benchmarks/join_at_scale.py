"""A 100M-row join table (the Tahoe-100M release's obs_metadata shape) joined to 300k cells.

    python benchmarks/join_at_scale.py [--rows 100000000] [--cells 300000] [--num-proc 2] [--out /tmp/join_at_scale]

Writes an obs_metadata-shaped parquet (BARCODE_SUB_LIB_ID, pass_filter, sample, plate, 1M-row groups), then runs
what `cellcorpus tokenize` runs for such a table: the on-disk index built once in the main process
(`build_join_index`), then in each of `--num-proc` fresh worker processes the per-unit lookups of that worker's
share of the cells' keys (16,384 keys per unit, keys drawn at random from the table: every unit touches every
partition, the worst case). Prints time and peak RSS of each step, and, for scale, what loading the table whole
costs per worker (`load_table`, as every worker did before) on a 10M-row slice of it. Nothing is asserted;
numbers go in docs/scaling.md. Outputs are removed at the end.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

UNIT_CELLS = 16_384
COLUMNS = ["pass_filter", "sample", "plate"]
KEY = "BARCODE_SUB_LIB_ID"


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _barcodes(rows: np.ndarray) -> pa.Array:
    """'10_1234-lib_1234'-like ids of these row numbers, built in Arrow (no Python string per row)."""
    n = pa.array(rows.astype(np.int64))
    parts = [pc.cast(pc.add(pc.divide(n, 1_000_000), 10), pa.string()),
             pc.cast(pc.add(pc.bit_wise_and(n, 1023), 1000), pa.string()),
             pc.cast(n, pa.string())]  # fmt: skip
    return pc.binary_join_element_wise(parts[0], "_", parts[1], "-lib_", parts[2], "")


def write_table(path: Path, rows: int) -> None:
    """The table, 5M rows at a time."""
    rng = np.random.default_rng(0)
    schema = pa.schema([(KEY, pa.string()), *((c, pa.string()) for c in COLUMNS)])
    with pq.ParquetWriter(path, schema) as w:
        for lo in range(0, rows, 5_000_000):
            hi = min(lo + 5_000_000, rows)
            k = hi - lo
            cols = [
                _barcodes(np.arange(lo, hi)),
                pa.array(np.where(rng.random(k) < 0.95, "full", "minimal")),
                pc.binary_join_element_wise("smp_", pc.cast(pa.array(rng.integers(0, 1400, k)), pa.string()), ""),
                pc.binary_join_element_wise("plate", pc.cast(pa.array(rng.integers(1, 15, k)), pa.string()), ""),
            ]
            w.write_table(pa.Table.from_arrays(cols, schema=schema), row_group_size=1_000_000)


def worker(index_dir: str, table: str, rows: int, cells: int, seed: int) -> dict:
    """One worker's share of the lookups, unit by unit, through the real lookup code."""
    from cellcorpus.io.join_index import JoinIndex

    rng = np.random.default_rng(seed)
    picked = rng.integers(0, rows, cells)
    keys = _barcodes(picked).to_numpy(zero_copy_only=False)  # as a unit's obs column arrives: an object array
    index = JoinIndex(index_dir)
    t = time.perf_counter()
    hits = 0
    for lo in range(0, cells, UNIT_CELLS):
        got = index.lookup(keys[lo : lo + UNIT_CELLS])
        hits += int(np.count_nonzero(got["pass_filter"] != ""))
    return {"seconds": time.perf_counter() - t, "cells": cells, "hits": hits, "peak_rss_mb": _peak_mb()}


def load_whole(table: str, rows: int) -> dict:
    """What every worker paid before: the table loaded whole (`load_table`), on a slice of `rows` rows."""
    from cellcorpus.io.tables import load_table

    sliced = Path(table).with_name("slice.parquet")
    pq.write_table(pq.ParquetFile(table).read_row_groups(range(max(1, rows // 1_000_000))), sliced)
    base = _peak_mb()
    t = time.perf_counter()
    load_table(str(sliced), KEY, COLUMNS)
    return {"rows": rows, "seconds": time.perf_counter() - t, "rss_mb": _peak_mb() - base}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000_000)
    ap.add_argument("--cells", type=int, default=300_000)
    ap.add_argument("--num-proc", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("/tmp/join_at_scale"))
    ap.add_argument("--job", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.job:
        kind, *rest = args.job
        if kind == "build":
            from cellcorpus.io.join_index import build_join_index

            t = time.perf_counter()
            build_join_index(rest[0], KEY, COLUMNS, Path(rest[1]))
            print(json.dumps({"seconds": time.perf_counter() - t, "peak_rss_mb": _peak_mb()}))
        elif kind == "worker":
            print(json.dumps(worker(rest[0], rest[1], int(rest[2]), int(rest[3]), int(rest[4]))))
        else:
            print(json.dumps(load_whole(rest[0], int(rest[1]))))
        return

    def job(*a: object) -> dict:
        done = subprocess.run([sys.executable, __file__, "--job", *map(str, a)], capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(done.stderr[-3000:])
        return json.loads(done.stdout.strip().splitlines()[-1])

    out = args.out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    try:
        table = out / "obs_metadata.parquet"
        t = time.perf_counter()
        write_table(table, args.rows)
        print(
            f"table: {args.rows:,} rows, {table.stat().st_size / 2**30:.2f} GB parquet ({time.perf_counter() - t:.0f}s)"
        )
        built = job("build", table, out / "index")
        size = sum(p.stat().st_size for p in (out / "index").iterdir()) / 2**30
        print(f"index build (once per run, main process): {built['seconds']:.1f} s, "
              f"peak RSS {built['peak_rss_mb']:.0f} MB, {size:.2f} GB on disk")  # fmt: skip
        share = args.cells // args.num_proc
        procs = [
            subprocess.Popen([sys.executable, __file__, "--job", "worker", str(out / "index"), str(table),
                              str(args.rows), str(share), str(i)], stdout=subprocess.PIPE, text=True)
            for i in range(args.num_proc)
        ]  # fmt: skip
        for i, p in enumerate(procs):
            r = json.loads(p.communicate()[0].strip().splitlines()[-1])
            print(f"worker {i}: {r['cells']:,} cells' keys looked up in {r['seconds']:.2f} s "
                  f"({r['cells'] / r['seconds']:,.0f} keys/s), {r['hits']:,} found, "
                  f"peak RSS {r['peak_rss_mb']:.0f} MB")  # fmt: skip
        whole = job("whole", table, min(10_000_000, args.rows))
        per_m = whole["rss_mb"] / (whole["rows"] / 1e6)
        print(f"for scale, load_table of {whole['rows']:,} rows (every worker, before): {whole['seconds']:.1f} s, "
              f"+{whole['rss_mb']:.0f} MB ({per_m:.0f} MB per million rows; ~{per_m * args.rows / 1e6 / 1024:.1f} GB "
              f"at {args.rows:,})")  # fmt: skip
    finally:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
