"""`cellcorpus stats` beside `cellcorpus tokenize` on the same input, in one run.

    python benchmarks/stats.py --cells 1000000 --num-proc 2 --out /tmp/stats_bench

Input: the synthetic Tahoe-like plates of bench.py (~2,000 genes per cell), read once before the first row so
that no row pays for the disk while the others read from the page cache. Rows (each in a fresh process: its
own peak RSS): the stats stage (every cell, per-gene sketches merged) and tokenize (the default Tahoe-x1
encoding, unshuffled, test_size 0.01) with the same processes, each as its command runs it (in an executor
session: workers start while the inputs are inspected; the pool's shutdown is timed too), `--repeat` times
in alternating order (this VM's speed drifts by tens of percent within minutes). It prints cells/s, seconds,
peak RSS of the main process and of the largest worker per row, and the ratio of stats' time to tokenize's: per
pair, and of the fastest of each. Nothing is asserted; the numbers go in docs/scaling.md. Outputs are removed at
the end (the input is kept for reruns).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench import _peak_rss_mb, hf_section, input_arguments, into_page_cache, prepared_input, run_job, vocab_section  # noqa: E402


def config(out: Path, num_proc: int) -> Path:
    import yaml

    cfg = {
        "output_root": str(out),
        "vocab": vocab_section(out),
        "stats": {"output_root": str(out / "stats"), "num_proc": num_proc},
        "huggingface": hf_section(
            out,
            out / "raw",
            num_proc,
            "work",
            "merged",
            split_parameters={"test_size": 0.01, "seed": 42, "shuffle": False},
        ),
    }
    path = out / "config_stats.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def job(kind: str, arg: str) -> None:
    from cellcorpus.config import load_config
    from cellcorpus.exec.runner import executor_session
    from cellcorpus.stages.stats import run_stats
    from cellcorpus.stages.tokenize import run_tokenize

    cfg = load_config(arg)
    t = time.perf_counter()
    with executor_session():  # as `cellcorpus stats` / `cellcorpus tokenize` run it: the pool's shutdown counted
        n = run_stats(cfg).counts["cells"] if kind == "stats" else run_tokenize(cfg).counts["cells_read"]
    seconds = time.perf_counter() - t
    main_mb, worker_mb = _peak_rss_mb()
    print(json.dumps({"cells": n, "seconds": seconds, "rss_main_mb": main_mb, "rss_worker_mb": worker_mb}))


def main() -> None:
    ap = input_arguments(__doc__, 1_000_000, 50_000, "stats_bench_out")
    ap.add_argument("--num-proc", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2, help="pairs of rows, in alternating order")
    args = ap.parse_args()
    if args.job:
        job(*args.job)
        return
    out, _ = prepared_input(args)
    _clean(out)  # an interrupted run's outputs would make a row a skip (or a refusal)
    path = config(out, args.num_proc)
    from cellcorpus.config import load_config
    from cellcorpus.stages.vocab import run_vocab

    run_vocab(load_config(path))
    into_page_cache(out / "raw")  # for every row alike
    print(f"{'stage':10} {'cells':>10} {'s':>8} {'cells/s':>10} {'RSS main':>9} {'RSS worker':>11}")
    seconds: dict[str, list[float]] = {"stats": [], "tokenize": []}
    for i in range(args.repeat):
        pair = {}
        for kind in ("stats", "tokenize") if i % 2 == 0 else ("tokenize", "stats"):
            r = run_job(kind, str(path), __file__)
            pair[kind] = r["seconds"]
            seconds[kind].append(r["seconds"])
            print(f"{kind:10} {r['cells']:>10,} {r['seconds']:>8.1f} {r['cells'] / r['seconds']:>10,.0f} "
                  f"{r['rss_main_mb']:>8.0f}M {r['rss_worker_mb']:>10.0f}M", flush=True)  # fmt: skip
            _clean_outputs(out)
        print(f"  stats / tokenize time, this pair: {pair['stats'] / pair['tokenize']:.2f}", flush=True)
    print(f"stats / tokenize time, fastest of each: {min(seconds['stats']) / min(seconds['tokenize']):.2f}")
    _clean(out)


def _clean_outputs(out: Path) -> None:
    """Remove the stages' outputs (a row's output would make the next row of its kind a skip)."""
    for name in ("stats", "merged", "work"):
        if (out / name).is_dir():
            shutil.rmtree(out / name)


def _clean(out: Path) -> None:
    """Remove every output; the input (raw/, input.json) stays for reruns."""
    _clean_outputs(out)
    if (out / "vocab").is_dir():
        shutil.rmtree(out / "vocab")
    (out / "config_stats.yaml").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
