"""Geneformer corpus: cellcorpus's `encoding: geneformer` beside Geneformer's own tokenizer, same input and
dictionaries, same machine, in one run.

    python benchmarks/geneformer.py --cells 300000 --out /tmp/gf_bench [--reference-cells 50000]

Input: the synthetic Tahoe-like plates of bench.py (~2,000 genes per cell, 50k cells per file). Dictionaries:
a V2 token dictionary of the plates' genes (<pad> <mask> <cls> <eos> first) and log-normal medians per gene.
Rows (each in a fresh process, its own peak RSS):
- reference: Geneformer's `TranscriptomeTokenizer` (the copy in the helical 2.2.0 wheel, tests/_peers.py)
  tokenize_anndata + create_dataset + save_to_disk, on the first `--reference-cells` cells (one plate: its lists
  of every cell live in memory, so the whole input would not fit);
- cellcorpus tokenize (encoding: geneformer, V2, 4096) on the same plate, then on every cell, with 1 and 2
  processes.
The reference and the 2-process row run `--repeat` times, in alternating order (this VM's speed drifts by tens
of percent within minutes); the input is read once before the first row. It prints cells/s, seconds, peak RSS
and the speed-up over the reference per cell: each row's over the fastest reference run, and the fastest of each
over the other. Nothing is asserted; the numbers go in docs/scaling.md. Outputs are removed at the end (the input
is kept for reruns).
"""

from __future__ import annotations

import json
import pickle
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))
from bench import _peak_rss_mb, hf_section, input_arguments, into_page_cache, prepared_input, run_job  # noqa: E402 - shared


def dictionaries(out: Path) -> tuple[Path, Path]:
    """(token dictionary .pkl, gene medians .pkl) for the plates' genes; vocab.json beside them."""
    import h5py

    with h5py.File(out / "raw" / "plate00.h5ad") as f:
        genes = [g.decode() for g in f["var"]["gene_id"][:]]
    tokens = {"<pad>": 0, "<mask>": 1, "<cls>": 2, "<eos>": 3} | {g: 4 + i for i, g in enumerate(genes)}
    rng = np.random.default_rng(1)
    medians = {g: float(m) for g, m in zip(genes, rng.lognormal(0.5, 1.0, len(genes)), strict=True)}
    (out / "vocab").mkdir(parents=True, exist_ok=True)
    (out / "vocab" / "vocab.json").write_text(json.dumps(tokens))
    tok, med = out / "token_dictionary.pkl", out / "gene_median.pkl"
    tok.write_bytes(pickle.dumps(tokens))
    med.write_bytes(pickle.dumps(medians))
    return tok, med


def config(out: Path, adata_dir: Path, num_proc: int, name: str) -> Path:
    import yaml

    geneformer = {"model_input_size": 4096, "special_tokens": True, "gene_median": str(out / "gene_median.pkl")}
    cfg = {
        "huggingface": hf_section(
            out,
            adata_dir,
            num_proc,
            f"work_{name}",
            f"merged_{name}",
            add_obs_index=False,
            encoding="geneformer",
            geneformer=geneformer,
            split_parameters={"test_size": 0, "seed": 42, "shuffle": False},
        )  # fmt: skip
    }
    path = out / f"config_{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def job(kind: str, arg: str) -> None:
    t = time.perf_counter()
    if kind == "reference":
        import anndata as ad
        from tests._peers import peer_module

        spec = json.loads(arg)
        out = Path(spec["out"])
        module = peer_module("helical==2.2.0", "helical/models/geneformer/geneformer_tokenizer.py", out / "peer")
        tk = module.TranscriptomeTokenizer(
            model_input_size=4096, special_token=True, gene_median_file=out / "gene_median.pkl",
            token_dictionary_file=out / "token_dictionary.pkl", gene_mapping_file=None,
        )  # fmt: skip
        t = time.perf_counter()  # (module loading and dictionaries excluded)
        adata = ad.read_h5ad(spec["path"])
        adata.var["ensembl_id"] = adata.var["gene_id"]
        cells, _ = tk.tokenize_anndata(adata)
        tk.create_dataset(cells, None).save_to_disk(str(out / "reference.dataset"))
        n = len(cells)
    else:
        from cellcorpus.config import load_config
        from cellcorpus.stages.tokenize import run_tokenize

        summary = run_tokenize(load_config(arg))
        n = summary.counts["written_train"] + summary.counts["written_valid"]
    seconds = time.perf_counter() - t
    main_mb, worker_mb = _peak_rss_mb()
    print(json.dumps({"cells": n, "seconds": seconds, "rss_main_mb": main_mb, "rss_worker_mb": worker_mb}))


def main() -> None:
    ap = input_arguments(__doc__, 300_000, 50_000, "gf_bench_out")
    ap.add_argument("--reference-cells", type=int, default=50_000, help="cells the reference tokenizes (one plate)")
    ap.add_argument("--repeat", type=int, default=2, help="runs of the reference and of the 2-process row")
    args = ap.parse_args()
    if args.job:
        job(*args.job)
        return
    out, raw = prepared_input(args)
    _clean(out)  # an interrupted run's outputs would make a row a skip
    dictionaries(out)
    one = out / "one_plate"
    one.mkdir(exist_ok=True)
    plate = one / "plate00.h5ad"
    if not plate.exists():
        plate.symlink_to(raw / "plate00.h5ad")
    into_page_cache(raw)  # for every row alike

    def reference() -> dict:
        r = run_job("reference", json.dumps({"out": str(out), "path": str(plate)}), __file__)
        shutil.rmtree(out / "reference.dataset")
        return r

    def ours(name: str, folder: Path, procs: int) -> dict:
        r = run_job("ours", str(config(out, folder, procs, name)), __file__)
        for p in out.glob(f"*_{name}"):  # (a finished output would make the next run a skip)
            shutil.rmtree(p)
        return r

    rows = [("cellcorpus one plate, 1 proc", ours("plate_1", one, 1)), ("cellcorpus all cells, 1 proc",
            ours("all_1", raw, 1))]  # fmt: skip
    refs = []
    for i in range(args.repeat):
        for kind in ("reference", "ours") if i % 2 == 0 else ("ours", "reference"):
            if kind == "reference":
                refs.append(reference())
                rows.append(("reference (helical copy), one plate", refs[-1]))
            else:
                rows.append(("cellcorpus all cells, 2 proc", ours("all_2", raw, 2)))
    base = max(r["cells"] / r["seconds"] for r in refs)
    print(f"{'row':42} {'cells':>9} {'s':>8} {'cells/s':>10} {'x ref':>7} {'RSS main':>9} {'RSS worker':>11}")
    for label, r in rows:
        rate = r["cells"] / r["seconds"]
        print(f"{label:42} {r['cells']:>9,} {r['seconds']:>8.1f} {rate:>10,.0f} {rate / base:>7.1f} "
              f"{r['rss_main_mb']:>8.0f}M {r['rss_worker_mb']:>10.0f}M")  # fmt: skip
    fastest = max(r["cells"] / r["seconds"] for label, r in rows if label.endswith("2 proc"))
    print(f"fastest 2-process run / fastest reference run: {fastest / base:.1f}x")
    _clean(out)


def _clean(out: Path) -> None:
    """Remove every output; the input (raw/, input.json) stays for reruns."""
    for p in out.iterdir():
        if p.name not in ("raw", "input.json"):
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


if __name__ == "__main__":
    main()
