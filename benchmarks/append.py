"""`cellcorpus run --append` beside a rebuild: one more plate added to a finished corpus, in one run.

    python benchmarks/append.py --cells 300000 --num-proc 2 --out /tmp/append_bench

Input: the synthetic Tahoe-like plates of bench.py (50k cells each) and the recipe's settings of e2e.py (shuffled,
joins, fused MDS, verify and report). Rows, each `cellcorpus run` in a fresh process (its own peak RSS):
- the corpus of every plate but the last, built at once;
- `--append` of the last plate to it (tokenize only the new plate, MDS only its shards, verify and report all);
- a rebuild of every plate at once, the alternative without `--append`.
It prints seconds (and per stage), cells tokenized per second and the append's time as a share of the rebuild's.
Nothing is asserted; the numbers go in docs/scaling.md. Outputs are removed at the end (the input is kept for reruns).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench import _peak_rss_mb, input_arguments, prepared_input, run_job  # noqa: E402 - shared
from e2e import write_config, write_tables  # noqa: E402 - the recipe's settings over the same plates


def job(kind: str, arg: str) -> None:
    from cellcorpus.config import load_config
    from cellcorpus.pipeline import iter_pipeline

    t = last = time.perf_counter()
    stages, counts = {}, {}
    for summary in iter_pipeline(load_config(arg), append=kind == "append"):  # each stage's time as it ends
        now = time.perf_counter()
        stages[summary.stage], last = round(now - last, 1), now
        counts = summary.counts if summary.stage == "tokenize" else counts
    seconds = time.perf_counter() - t
    main_mb, worker_mb = _peak_rss_mb()
    tokenized = counts.get("cells_read", 0)
    print(json.dumps({"cells": tokenized, "seconds": seconds, "rss_main_mb": main_mb, "rss_worker_mb": worker_mb,
                      "stages": stages}))  # fmt: skip


def main() -> None:
    ap = input_arguments(__doc__, 300_000, 50_000, "/tmp/append_bench")
    ap.add_argument("--num-proc", type=int, default=2)
    args = ap.parse_args()
    if args.job:
        job(*args.job)
        return
    out, raw = prepared_input(args)
    plates = sorted(raw.glob("*.h5ad"))
    grown, whole = out / "grown", out / "whole"
    try:
        for folder, chosen in ((grown, plates[:-1]), (whole, plates)):
            shutil.rmtree(folder, ignore_errors=True)
            (folder / "raw").mkdir(parents=True)
            for p in chosen:
                (folder / "raw" / p.name).symlink_to(p)
        rows = [("corpus of all plates but the last", run_job("build", str(_config(grown, args.num_proc)), __file__))]
        (grown / "raw" / plates[-1].name).symlink_to(plates[-1])
        rows.append(("--append of the last plate", run_job("append", str(_config(grown, args.num_proc)), __file__)))
        rows.append(("rebuild of every plate", run_job("build", str(_config(whole, args.num_proc)), __file__)))
        print(f"{'row':36} {'cells':>9} {'s':>7} {'cells/s':>9} {'RSS main':>9} {'RSS worker':>11}  seconds per stage")
        for label, r in rows:
            print(f"{label:36} {r['cells']:>9,} {r['seconds']:>7.1f} {r['cells'] / r['seconds']:>9,.0f} "
                  f"{r['rss_main_mb']:>8.0f}M {r['rss_worker_mb']:>10.0f}M  {r['stages']}")  # fmt: skip
        print(f"append / rebuild: {rows[1][1]['seconds'] / rows[2][1]['seconds']:.2f} of the time")
    finally:
        shutil.rmtree(grown, ignore_errors=True)
        shutil.rmtree(whole, ignore_errors=True)


def _config(folder: Path, num_proc: int) -> Path:
    """e2e.py's config rooted in `folder` (its own tables and vocabulary from the first plate)."""
    return write_config(folder, num_proc, write_tables(folder))


if __name__ == "__main__":
    main()
