"""Duplicate cells: the fingerprint kernel's speed in tokenize, and `cellcorpus dedup` over 1M+ cells.

    python benchmarks/dedup.py --cells 1000000 --out /tmp/dedup_bench

1. Fingerprints: one tokenize unit's worth of cells (32,768 cells x ~2,000 stored counts, Tahoe-like) through
   `core.fingerprint.cell_fingerprints`, as tokenize runs it with `huggingface.fingerprints: true`: cells/s and
   stored counts/s, beside the unit's `tokenize_csr` parse on the same arrays (what the option adds to a unit).
2. dedup: N cells' recorded fingerprint files (units of 32,768 cells, 1% of cells planted as copies of cells
   in other units), read and compared exactly as `run_dedup` does (`formats.duplicates.scan_fingerprints`: the
   manifest reading around them is left out), in a fresh subprocess for its peak RSS; with the default
   partition size (in memory up to 4M records) and with on-disk partitions forced (`PART_ROWS` = 256k).
Nothing is asserted; numbers go in docs/scaling.md. Outputs are removed at the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

UNIT = 32_768


def kernel() -> None:
    from cellcorpus.core.fingerprint import cell_fingerprints, gene_hashes
    from cellcorpus.core.tokenize import tokenize_csr

    rng = np.random.default_rng(0)
    lengths = rng.integers(1_500, 2_500, UNIT)
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    indices = rng.integers(0, 62_710, indptr[-1]).astype(np.int32)
    data = rng.integers(1, 30, indptr[-1]).astype(np.float32)
    hashes = gene_hashes([f"ENSG{i:011d}" for i in range(62_713)])
    gene_map = np.arange(62_710, dtype=np.int32) + 3
    t = time.perf_counter()
    cells = tokenize_csr(indptr, indices, data, gene_map, None, -2.0, 0, np.float32)
    parse = time.perf_counter() - t
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        cell_fingerprints(cells.offsets, cells.genes, cells.expressions, hashes)
        best = min(best, time.perf_counter() - t)
    n = int(indptr[-1])
    rate = f"{UNIT / best:,.0f} cells/s, {n / best / 1e6:.0f}M counts/s"
    print(f"fingerprints: {UNIT:,} cells, {n / 1e6:.1f}M counts: {best:.2f} s ({rate}); "
          f"the unit's tokenize_csr parse of the same rows: {parse:.2f} s")  # fmt: skip


def make_records(folder: Path, cells: int) -> list[str]:
    from cellcorpus.core.ids import make_ids
    from cellcorpus.formats.fingerprints import FOLDER, write_unit_fingerprints

    rng = np.random.default_rng(1)
    fps = np.empty(cells, dtype=[("hi", "<u8"), ("lo", "<u8")])
    fps["hi"] = rng.integers(0, 2**63, cells, dtype=np.int64).view(np.uint64) * np.uint64(2)
    fps["lo"] = rng.integers(0, 2**63, cells, dtype=np.int64).view(np.uint64)
    copies = rng.choice(cells, cells // 100, replace=False)
    fps[copies] = fps[rng.integers(0, cells, len(copies))]  # 1% planted copies (of cells anywhere)
    for u, a in enumerate(range(0, cells, UNIT)):
        b = min(cells, a + UNIT)
        write_unit_fingerprints(folder, f"u{u:05d}", fps[a:b], make_ids(u, np.arange(b - a, dtype=np.int64)))
    return sorted(str(p) for p in (folder / FOLDER).glob("*.fp"))


def dedup_job(files_json: str, part_rows: int) -> None:
    from cellcorpus.formats import duplicates
    from cellcorpus.formats.fingerprints import RECORD_DTYPE

    duplicates.PART_ROWS = part_rows
    files = json.loads(Path(files_json).read_text())
    t = time.perf_counter()
    records = sum(Path(f).stat().st_size for f in files) // RECORD_DTYPE.itemsize  # as from a manifest
    report = duplicates.scan_fingerprints([(0, f) for f in files], records, keep_ids=False)
    seconds = time.perf_counter() - t
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
    print(json.dumps({"seconds": seconds, "cells": report.cells, "dups": report.duplicate_cells, "rss_mb": peak}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", type=int, default=1_000_000)
    ap.add_argument("--out", type=Path, default=Path("/tmp/dedup_bench"))
    ap.add_argument("--job", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.job:
        dedup_job(args.job[0], int(args.job[1]))
        return
    kernel()
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        files = make_records(args.out, args.cells)
        listing = args.out / "files.json"
        listing.write_text(json.dumps(files))
        for label, part_rows in (("in memory (default)", 1 << 22), ("on-disk partitions", 1 << 18)):
            got = subprocess.run([sys.executable, __file__, "--job", str(listing), str(part_rows)],
                                 capture_output=True, text=True, check=True)  # fmt: skip
            r = json.loads(got.stdout.strip().splitlines()[-1])
            print(f"dedup {label}: {r['cells']:,} cells in {r['seconds']:.2f} s ({r['cells'] / r['seconds']:,.0f} "
                  f"cells/s), {r['dups']:,} duplicate cells, peak RSS {r['rss_mb']:.0f} MB")  # fmt: skip
    finally:
        shutil.rmtree(args.out, ignore_errors=True)


if __name__ == "__main__":
    main()
