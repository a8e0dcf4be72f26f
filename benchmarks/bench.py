"""Throughput and peak memory of tokenize and mds, beside a read + compress floor on the same input.

    python benchmarks/bench.py --cells 200000 --genes-per-cell 2000 --out /tmp/bench

Makes N synthetic Tahoe-like cells (CSR float32 counts, ~62k genes, files of --cells-per-file), then runs
each measurement in a fresh subprocess (so peak RSS is that job's own) and prints one table:
cells/s, MB/s of input (indices + data bytes), peak RSS, and the time ratio to the floor
(h5py reading the same CSR arrays + zstd level 3 writing the same bytes, one process).
Nothing here is asserted; numbers go in the closing notes and docs/scaling.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

N_GENES = 62_710


def make_input(out: Path, cells: int, per_file: int, genes_per_cell: int, seed: int = 0) -> Path:
    """Tahoe-like plates: var gene_id Ensembl ids, obs drug/sample/pass_filter, CSR X (float32 counts)."""
    import h5py
    import pandas as pd

    from cellcorpus.demo import ensembl_ids

    raw = out / "raw"
    if (out / "input.json").exists() and json.loads((out / "input.json").read_text()) == [
        cells,
        per_file,
        genes_per_cell,
    ]:
        return raw
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    genes = ensembl_ids(N_GENES)
    p = genes_per_cell / N_GENES
    for k, start in enumerate(range(0, cells, per_file)):
        n = min(per_file, cells - start)
        # increasing column indices per row from geometric gaps (vectorised, no per-cell loop)
        width = int(genes_per_cell * 1.3) + 50
        gaps = rng.geometric(p, size=(n, width)).astype(np.int64)
        cols = np.cumsum(gaps, axis=1) - 1
        keep = cols < N_GENES
        counts = keep.sum(axis=1)
        indptr = np.zeros(n + 1, np.int64)
        np.cumsum(counts, out=indptr[1:])
        indices = cols[keep].astype(np.int32)
        data = rng.integers(1, 20, size=len(indices)).astype(np.float32)
        path = raw / f"plate{k:02d}.h5ad"
        obs = pd.DataFrame(
            {
                "drug": pd.Categorical(rng.choice(["DMSO_TF", "drugA", "drugB"], n)),
                "sample": pd.Categorical(rng.choice([f"s{i}" for i in range(8)], n)),
                "pass_filter": pd.Categorical(rng.choice(["full", "minimal"], n, p=[0.9, 0.1])),
                "cell_line": pd.Categorical(rng.choice(["CVCL_0023", "CVCL_0028", "CVCL_0062", "CVCL_X"], n)),
            },
            index=[f"c{start + i}" for i in range(n)],
        )
        var = pd.DataFrame({"gene_id": genes}, index=[f"G{i}" for i in range(N_GENES)])
        import anndata as ad

        ad.AnnData(obs=obs, var=var).write_h5ad(path)  # obs/var via anndata; X written in place below
        with h5py.File(path, "a") as f:
            if "X" in f:
                del f["X"]
            g = f.create_group("X")
            g.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": (n, N_GENES)})
            g.create_dataset("indptr", data=indptr)
            g.create_dataset("indices", data=indices)
            g.create_dataset("data", data=data)
        del gaps, cols, keep, indices, data
    ref = raw / "plate00.h5ad"
    (out / "input.json").write_text(json.dumps([cells, per_file, genes_per_cell]))
    return ref.parent


def vocab_section(out: Path) -> dict:
    """The vocabulary from the first synthetic plate (shared by bench.py and e2e.py)."""
    return {
        "reference_adata": str(out / "raw" / "plate00.h5ad"),
        "use_col": "gene_id",
        "add_junk_tokens": True,
        "special_tokens": ["<pad>", "<cls>", "<eoc>"],
        "output_root": str(out / "vocab"),
        "output_file": "vocab.json",
    }


def hf_section(out: Path, adata_dir: Path, num_proc: int, work: str, merged: str, **settings: object) -> dict:
    """The huggingface section every benchmark starts from: the inputs, the vocabulary under `out/vocab`, the
    scratch and merged folders named, plus `settings`."""
    return {
        "adata_dir": str(adata_dir),
        "gene_col": "gene_id",
        "num_proc": num_proc,
        "output_root": str(out / work),
        "merged_dataset_root": str(out / merged),
        "vocab_output_root": str(out / "vocab"),
        "vocab_path": "vocab.json",
        **settings,
    }


def write_config(
    out: Path, num_proc: int, columns: dict, unit_cells: int, shuffle: bool, dask: str | None = None
) -> Path:
    import yaml

    cfg = {
        "output_root": str(out),
        "vocab": vocab_section(out),
        "huggingface": hf_section(
            out,
            out / "raw",
            num_proc,
            f"work_{num_proc}",
            f"merged_{num_proc}_{int(shuffle)}",
            unit_cells=unit_cells,
            obs_metadata_columns=["drug", "sample"],
            split_parameters={"test_size": 0.01, "seed": 42, "shuffle": shuffle},
        ),  # fmt: skip
        "mds": {
            "out_root": str(out / f"mds_{num_proc}_{'_'.join(sorted(set(columns.values())))}"),
            "root_dir": str(out / f"merged_1_{int(shuffle)}"),
            "columns": columns,
            "compression": "zstd",
            "hashes": ["sha1", "xxh64"],
            "num_proc": num_proc,
        },
        "executor": {"dask": dask, "dask_workers": num_proc},
    }
    path = out / f"cfg_{num_proc}_{abs(hash(json.dumps(cfg, sort_keys=True))) % 10**8}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _peak_rss_mb() -> tuple[float, float]:
    """(this process's peak RSS, the largest child's) in MiB.

    VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork+exec, so a job started by a big parent
    would report the parent's size. Children (pool workers) are spawned from this small process.
    """
    me = 0.0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                me = int(line.split()[1]) / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return me, kids


def job(kind: str, arg: str) -> dict:
    """Run one measurement in this process; prints a JSON line."""
    import shutil

    t0 = time.perf_counter()
    if kind == "floor":
        import h5py
        import zstandard

        cctx = zstandard.ZstdCompressor(level=3)
        n = nbytes = 0
        out = Path(arg).parent / "floor.zst"
        with open(out, "wb") as sink:
            for f in sorted(Path(arg).glob("*.h5ad")):
                with h5py.File(f, "r") as h:
                    x = h["X"]
                    ip = x["indptr"][:]
                    for s in range(0, len(ip) - 1, 16384):
                        lo, hi = ip[s], ip[min(s + 16384, len(ip) - 1)]
                        chunk = x["indices"][lo:hi].tobytes() + x["data"][lo:hi].tobytes()
                        nbytes += len(chunk)
                        sink.write(cctx.compress(chunk))
                    n += len(ip) - 1
        out.unlink()
        res = {"cells": n, "bytes": nbytes}
    else:
        from cellcorpus.config import load_config

        cfg = load_config(arg)
        if kind == "tokenize":
            from cellcorpus.stages.tokenize import run_tokenize

            shutil.rmtree(cfg.huggingface.merged_dataset_root, ignore_errors=True)
            shutil.rmtree(cfg.huggingface.output_root, ignore_errors=True)
            s = run_tokenize(cfg)
            res = {"cells": s.counts["cells_read"]}
        elif kind == "mds":
            from cellcorpus.stages.mds import run_mds

            shutil.rmtree(cfg.mds.out_root, ignore_errors=True)
            s = run_mds(cfg)
            res = {"cells": sum(v for k, v in s.counts.items() if k.endswith("_written"))}
        elif kind.startswith("mdswriter"):
            res = _mdswriter(cfg, kind.split(":")[1])
        else:
            raise SystemExit(f"unknown job {kind}")
    res["seconds"] = time.perf_counter() - t0
    res["rss_main_mb"], res["rss_workers_mb"] = _peak_rss_mb()
    print(json.dumps(res))
    return res


def _mdswriter(cfg, encoding: str) -> dict:
    """mosaicml-streaming's MDSWriter on the first Arrow file of train (as the seed's generate_mds.py)."""
    import tempfile

    import torch
    from streaming import MDSWriter

    from cellcorpus.formats.arrow import dataset_files, read_arrow

    table = read_arrow(dataset_files(Path(cfg.mds.root_dir) / "train.dataset")[0]).slice(0, 10_000)
    cols = {"genes": encoding, "expressions": encoding, "id": "int64"}
    t0 = time.perf_counter()
    with (
        tempfile.TemporaryDirectory() as d,
        MDSWriter(out=d, columns=cols, compression="zstd", hashes=["sha1", "xxh64"]) as w,
    ):
        g = table.column("genes").to_pylist()
        e = table.column("expressions").to_pylist()
        ids = table.column("id").to_pylist()
        t0 = time.perf_counter()  # time the writer, not the Arrow -> Python conversion
        for gi, ei, i in zip(g, e, ids, strict=True):
            if encoding == "pkl":
                w.write({"genes": torch.tensor(gi, dtype=torch.int64), "expressions": torch.tensor(ei), "id": i})
            else:
                w.write({"genes": np.array(gi, np.int32), "expressions": np.array(ei, np.float32), "id": i})
    return {"cells": table.num_rows, "seconds_inner": time.perf_counter() - t0}


def run_job(kind: str, arg: str, script: str = __file__) -> dict:
    """Run `script --job kind arg` in a fresh process (its own peak RSS) and return its JSON line."""
    cmd = [sys.executable, script, "--job", kind, arg]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{kind} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def input_arguments(doc: str | None, cells: int, per_file: int, out: str) -> argparse.ArgumentParser:
    """The options every benchmark shares: the synthetic input's size and where it goes (+ the hidden --job)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, default=cells)
    ap.add_argument("--cells-per-file", type=int, default=per_file)
    ap.add_argument("--genes-per-cell", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=Path(out))
    ap.add_argument("--job", nargs=2, help=argparse.SUPPRESS)
    return ap


def into_page_cache(folder: Path) -> None:
    """Read every input file once, so that no row of a benchmark pays for the disk while the others read from
    the page cache."""
    for f in sorted(folder.glob("*.h5ad")):
        with open(f, "rb") as fh:
            while fh.read(1 << 24):
                pass


def prepared_input(args: argparse.Namespace) -> tuple[Path, Path]:
    """(output folder, raw input folder): the synthetic plates written (or reused) and announced."""
    out = args.out.resolve()
    t = time.perf_counter()
    raw = make_input(out, args.cells, args.cells_per_file, args.genes_per_cell)
    print(f"input: {args.cells:,} cells x ~{args.genes_per_cell} genes in {raw} ({time.perf_counter() - t:.0f}s)")
    return out, raw


def main() -> None:
    ap = input_arguments(__doc__, 200_000, 50_000, "bench_out")
    ap.add_argument("--unit-cells", type=int, default=16384)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--skip-mdswriter", action="store_true")
    ap.add_argument("--dask", action="store_true", help="also time tokenize on a Dask LocalCluster")
    ap.add_argument("--only", choices=["rss"], help="rss: floor, tokenize and mds ndarray with 1 process only")
    args = ap.parse_args()
    if args.job:
        job(*args.job)
        return
    out, raw = prepared_input(args)
    from cellcorpus.config import load_config
    from cellcorpus.stages.vocab import run_vocab

    nd = {"genes": "ndarray:int32", "expressions": "ndarray:float32", "id": "int64", "drug": "str"}
    pk = {"genes": "pkl", "expressions": "pkl", "id": "int64", "drug": "str"}
    run_vocab(load_config(write_config(out, 1, nd, args.unit_cells, False)))
    floor = run_job("floor", str(raw))
    mb = floor["bytes"] / 1e6
    rows = [("floor: h5py read + zstd write", floor)]
    if args.only == "rss":
        rows.append(
            ("tokenize (num_proc=1)", run_job("tokenize", str(write_config(out, 1, nd, args.unit_cells, False))))
        )
        rows.append(("mds ndarray (num_proc=1)", run_job("mds", str(write_config(out, 1, nd, args.unit_cells, False)))))
        _print(rows, floor, mb)
        return
    for n in args.workers:
        rows.append(
            (f"tokenize (num_proc={n})", run_job("tokenize", str(write_config(out, n, nd, args.unit_cells, False))))
        )
    rows.append(
        ("tokenize shuffle (num_proc=1)", run_job("tokenize", str(write_config(out, 1, nd, args.unit_cells, True))))
    )
    if args.dask:
        for n in args.workers:
            cfgp = write_config(out, n, nd, args.unit_cells, False, dask="local")
            rows.append((f"tokenize Dask LocalCluster ({n} workers)", run_job("tokenize", str(cfgp))))
    for n in args.workers:
        rows.append(
            (f"mds ndarray (num_proc={n})", run_job("mds", str(write_config(out, n, nd, args.unit_cells, False))))
        )
    rows.append(("mds pkl (num_proc=1)", run_job("mds", str(write_config(out, 1, pk, args.unit_cells, False)))))
    if not args.skip_mdswriter:
        for enc in ("ndarray", "pkl"):
            enc_name = "ndarray:int32" if enc == "ndarray" else "pkl"
            cfgp = write_config(out, 1, nd, args.unit_cells, False)
            r = run_job(f"mdswriter:{enc_name}", str(cfgp))
            r["seconds"] = r.pop("seconds_inner")
            rows.append((f"streaming.MDSWriter {enc} (1 proc, 10k cells)", r))
    _print(rows, floor, mb)


def _print(rows: list, floor: dict, mb: float) -> None:
    print(f"\n{'job':48} {'cells/s':>10} {'MB/s':>8} {'x floor':>8} {'RSS main':>9} {'RSS wkr':>8}")
    for name, r in rows:
        cps = r["cells"] / r["seconds"]
        ratio = (r["seconds"] / r["cells"]) / (floor["seconds"] / floor["cells"])
        print(f"{name:48} {cps:10,.0f} {cps * mb / floor['cells']:8.0f} {ratio:8.2f} "
              f"{r['rss_main_mb']:8.0f}M {r['rss_workers_mb']:7.0f}M")  # fmt: skip


if __name__ == "__main__":
    main()
