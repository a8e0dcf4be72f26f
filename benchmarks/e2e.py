"""End to end on the recipe's own shape: vocab -> tokenize (shuffled) -> mds -> verify -> report, beside the floor.

    python benchmarks/e2e.py --cells 300000 --num-proc 2 --out /tmp/e2e [--repeat 2]

Synthetic Tahoe-like plates (`bench.make_input`: ~2,000 genes per cell, 62,710 genes, ~90% `full`), the
seed's three join tables, and the reference Tahoe config's settings: `obs_filter` pass_filter == full,
drug/sample obs columns, three joins, test_size 0.01 with `shuffle: true`, `pkl` genes/expressions, id and
four string columns, zstd, sha1 + xxh64. The job runs in a fresh subprocess (its own peak RSS) exactly as
`cellcorpus run` runs it: one worker pool started up front, the MDS shards written in the shuffle pass (so
the "mds" stage only merges indexes), then verify and report; one row for the corpus alone (vocab, tokenize,
mds) and one for the whole run. It prints cells/s (cells written), seconds per stage, CPU seconds, peak RSS
of the main process and of the largest worker, and the ratio to the floor on the same input:
h5py read of the CSR rows + building the token arrays + zstd level 3 + write, in 1 and in N processes.
It also prints free memory and page cache at the start: on a VM the same run's time moves with them.
Nothing is asserted; numbers go in docs/scaling.md and the closing notes. Outputs are removed at the end.
"""

from __future__ import annotations

import json
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench import _peak_rss_mb, input_arguments, prepared_input, run_job, vocab_section  # noqa: E402 - shared

CELL_LINES = ["CVCL_0023", "CVCL_0028", "CVCL_0062"]


def write_tables(out: Path) -> dict[str, Path]:
    """The seed's three Tahoe join tables, shaped as in the reference config."""
    import pandas as pd

    meta = out / "metadata"
    meta.mkdir(parents=True, exist_ok=True)
    paths = {"cell_line": meta / "cell_gen_dr_a97.csv", "drug": meta / "drug.csv", "sample": meta / "sample.csv"}
    pd.DataFrame({"Cell_ID_Vevo": CELL_LINES, "Cell_ID_Cellosaur": [c + "_x" for c in CELL_LINES]}).to_csv(
        paths["cell_line"], index=False
    )
    pd.DataFrame(
        {
            "drug": ["DMSO_TF", "drugA", "drugB"],
            "moa-fine": ["vehicle", "a", "b"],
            "canonical_smiles": ["CS(C)=O", "CCO", "CCN"],
            "pubchem_cid": ["679", "702", "6341"],
            "targets": ["", "T1", "T2"],
        }
    ).to_csv(paths["drug"], index=False)
    pd.DataFrame({"sample": [f"s{i}" for i in range(8)], "plate": [f"p{i % 2}" for i in range(8)]}).to_csv(
        paths["sample"], index=False
    )
    return paths


def write_config(out: Path, num_proc: int, tables: dict[str, Path], fingerprints: bool = False) -> Path:
    """The reference Tahoe config's settings over the synthetic plates (cell line joined on `sample`)."""
    import yaml

    def join(path: Path, key: str, adata_key: str, cols: list[str]) -> dict:
        return {"path": str(path), "merge_keys": {"metadata_key": key, "adata_key": adata_key}, "columns": cols}

    cfg = {
        "output_root": str(out),
        "vocab": vocab_section(out),
        "huggingface": {
            "adata_dir": str(out / "raw"),
            "gene_col": "gene_id",
            "num_chunks": 10,
            "num_proc": num_proc,
            "output_root": str(out / "work"),
            "merged_dataset_root": str(out / "merged"),
            "vocab_output_root": str(out / "vocab"),
            "vocab_path": "vocab.json",
            "split_parameters": {"test_size": 0.01, "seed": 42, "shuffle": True},
            "fingerprints": fingerprints,
            "obs_filter": {"key": "pass_filter", "value": "full"},
            "obs_metadata_columns": ["drug", "sample"],
            "additional_metadata_info": [
                join(tables["cell_line"], "Cell_ID_Vevo", "cell_line", ["Cell_ID_Cellosaur"]),
                join(tables["drug"], "drug", "drug", ["moa-fine", "canonical_smiles", "pubchem_cid", "targets"]),
                join(tables["sample"], "sample", "sample", ["plate"]),
            ],
        },
        "mds": {
            "out_root": str(out / "mds"),
            "root_dir": str(out / "merged"),
            "num_proc": num_proc,
            "columns": {
                "expressions": "pkl",
                "genes": "pkl",
                "id": "int64",
                "drug": "str",
                "Cell_ID_Cellosaur": "str",
                "canonical_smiles": "str",
                "pubchem_cid": "str",
            },
            "compression": "zstd",
            "hashes": ["sha1", "xxh64"],
        },
    }
    path = out / f"e2e_{num_proc}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _floor_files(files: list[str], gene_map_len: int) -> int:
    """Read CSR rows, build CLS-prefixed token arrays (vectorised), zstd-compress and write; return cells."""
    import h5py
    import zstandard

    cctx = zstandard.ZstdCompressor(level=3)
    gene_map = np.arange(gene_map_len, dtype=np.int32) + 3
    n = 0
    sink_path = Path(files[0]).parent.parent / f"floor-{Path(files[0]).stem}.zst"
    with open(sink_path, "wb") as sink:
        for f in files:
            with h5py.File(f, "r") as h:
                x = h["X"]
                ip = x["indptr"][:]
                for s in range(0, len(ip) - 1, 16384):
                    e = min(s + 16384, len(ip) - 1)
                    lo, hi = ip[s], ip[e]
                    tok = gene_map[x["indices"][lo:hi]]
                    val = x["data"][lo:hi]
                    starts = ip[s:e] - lo + np.arange(e - s)  # CLS slot before every cell
                    genes = np.insert(tok, starts - np.arange(e - s), 1)
                    exprs = np.insert(val, starts - np.arange(e - s), -2.0).astype(np.float32)
                    sink.write(cctx.compress(genes.astype(np.int64).tobytes() + exprs.tobytes()))
                    n += e - s
    sink_path.unlink()
    return n


def job(kind: str, arg: str) -> None:
    """One measurement in this (fresh) process; prints a JSON line."""
    t0 = time.perf_counter()
    res: dict = {}
    if kind.startswith("floor"):
        procs = int(kind.split(":")[1])
        files = sorted(str(p) for p in Path(arg).glob("*.h5ad"))
        if procs == 1:
            res["cells"] = _floor_files(files, 62_710)
        else:
            import multiprocessing as mp

            with mp.get_context("spawn").Pool(procs) as pool:
                res["cells"] = sum(pool.starmap(_floor_files, [(files[i::procs], 62_710) for i in range(procs)]))
    else:
        from cellcorpus.config import load_config
        from cellcorpus.exec.runner import executor_session, warm_up
        from cellcorpus.plan import plan_for
        from cellcorpus.stages.mds import run_mds
        from cellcorpus.stages.mds_unit import fused_export
        from cellcorpus.stages.report import run_report
        from cellcorpus.stages.tokenize import run_tokenize
        from cellcorpus.stages.verify import run_verify
        from cellcorpus.stages.vocab import run_vocab

        plan = plan_for(load_config(arg), "run")  # one plan for every stage, as `cellcorpus run`
        stages = {}
        with executor_session():
            warm_up(plan.executor, ("cellcorpus.stages.tokenize",))  # as `cellcorpus run`
            for name, fn in (
                ("vocab", lambda: run_vocab(plan)),
                ("tokenize", lambda: run_tokenize(plan, export=lambda h: fused_export(plan, h))),  # as `run`
                ("mds", lambda: run_mds(plan)),
                ("verify", lambda: run_verify(plan)),  # `cellcorpus run` checks what it wrote
                ("report", lambda: run_report(plan)),
            ):
                t = time.perf_counter()
                summary = fn() if name != "verify" else (fn(), None)[1]
                stages[name] = time.perf_counter() - t
                if name == "tokenize" and summary is not None:
                    res["cells"] = summary.counts["written_train"] + summary.counts["written_valid"]
                    res["cells_read"] = summary.counts["cells_read"]
        res["stages"] = stages
    res["seconds"] = time.perf_counter() - t0
    res["rss_main_mb"], res["rss_workers_mb"] = _peak_rss_mb()
    # CPU time of this process and its (joined) workers: steadier than wall time on a shared machine
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    res["cpu_seconds"] = sum(u.ru_utime + u.ru_stime for u in usage)
    print(json.dumps(res))


def _memory_state() -> str:
    """Free memory and page cache now: on a VM, writing into memory never touched (or handed back to the host)
    costs far more kernel time than reusing cached pages, so the same run's time moves with this state."""
    info = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, value = line.split(":", 1)
            info[key] = int(value.split()[0]) / 2**20
    return f"memory at start: {info['MemFree']:.1f} GB free, {info['Cached']:.1f} GB page cache"


def main() -> None:
    ap = input_arguments(__doc__, 300_000, 25_000, "e2e_out")
    ap.add_argument("--num-proc", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="keep inputs and outputs")
    ap.add_argument("--repeat", type=int, default=1, help="measure each job this many times, keep the fastest")
    ap.add_argument("--fingerprints", action="store_true", help="record cell fingerprints (the shipped configs do)")
    args = ap.parse_args()
    if args.job:
        job(*args.job)
        return
    out, raw = prepared_input(args)
    cfg = write_config(out, args.num_proc, write_tables(out), args.fingerprints)

    # The machine is shared: with --repeat each job runs that many times (floor and run alternating), the
    # fastest of each is reported.
    print(_memory_state())
    runs: dict[str, list[dict]] = {"floor1": [], "floorn": [], "run": []}
    try:
        for _ in range(args.repeat):
            runs["floor1"].append(run_job("floor:1", str(raw), __file__))
            runs["floorn"].append(run_job(f"floor:{args.num_proc}", str(raw), __file__))
            for p in ("merged", "mds", "work", "vocab"):
                shutil.rmtree(out / p, ignore_errors=True)
            runs["run"].append(run_job("run", str(cfg), __file__))
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    floor1, floorn, run = (min(runs[k], key=lambda r: r["seconds"]) for k in ("floor1", "floorn", "run"))
    kept = run["cells"]
    # the floor processes every input cell; scale it to the cells the recipe keeps (the same unit as run)
    f1 = floor1["seconds"] * kept / floor1["cells"]
    fn = floorn["seconds"] * kept / floorn["cells"]
    if args.repeat > 1:
        times = {k: ", ".join(f"{r['seconds']:.1f}" for r in v) for k, v in runs.items()}
        print(f"\nfastest of {args.repeat} kept: run {times['run']} s; {args.num_proc}-proc floor {times['floorn']} s")
    print(f"\ncells read {run['cells_read']:,}, written {kept:,} (train + valid, after the `full` filter)")
    print("CPU s: user + system seconds of the job's processes (floors scaled to the kept cells like their time)")
    print(f"{'job':44} {'seconds':>8} {'cells/s':>9} {'x floor(N)':>10} {'CPU s':>6} {'RSS main':>9} {'RSS wkr':>8}")
    made = sum(run["stages"][k] for k in ("vocab", "tokenize", "mds"))
    rows = [
        ("floor: read + tokens + zstd + write, 1 proc", f1, floor1),
        (f"floor: same, {args.num_proc} procs", fn, floorn),
        (f"cellcorpus vocab+tokenize+mds, {args.num_proc} procs", made, run),
        (f"cellcorpus run (+ verify + report), {args.num_proc} procs", run["seconds"], run),
    ]
    for name, secs, r in rows:
        cpu = r["cpu_seconds"] * kept / r["cells"]  # scaled like the seconds (the run's own: factor 1)
        print(f"{name:44} {secs:8.1f} {kept / secs:9,.0f} {secs / fn:10.2f} {cpu:6.1f} "
              f"{r['rss_main_mb']:8.0f}M {r['rss_workers_mb']:7.0f}M")  # fmt: skip
    print("stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in run["stages"].items()))


if __name__ == "__main__":
    main()
