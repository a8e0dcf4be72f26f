"""Test helpers shared across test modules (fixtures stay in conftest.py)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

# The bytes a user trains on: Arrow data + dataset metadata, MDS shards + indexes, vocabulary, drug files.
OUTPUT_PATTERNS = ("*.arrow", "state.json", "dataset_info.json", "shard.*", "index.json", "*.npy", "drug_to_id*.json")


def output_digests(root: Path) -> dict[str, str]:
    """sha1 of every output file under `root` (inputs under raw/ and metadata/ excluded), by relative path."""
    out = {}
    for pattern in OUTPUT_PATTERNS:
        for p in root.rglob(pattern):
            rel = p.relative_to(root).as_posix()
            if rel.startswith(("raw/", "metadata/")) or "/.units/" in rel:
                continue
            out[rel] = hashlib.sha1(p.read_bytes()).hexdigest()
    for p in (root / "vocab").glob("*.json"):
        out[p.relative_to(root).as_posix()] = hashlib.sha1(p.read_bytes()).hexdigest()
    return dict(sorted(out.items()))


GENES = [f"ENSG{i:011d}" for i in range(1, 6)]  # vocab ids 3..7 after <pad>,<cls>,<eoc>
SPECIALS = ["<pad>", "<cls>", "<eoc>"]


def make_h5ad(
    path: Path,
    X: np.ndarray | sp.spmatrix,
    var_ids: list[str],
    obs: dict[str, Any] | None = None,
    *,
    fmt: str = "csr",
    var_col: str | None = "gene_id",
    obs_index: list[str] | None = None,
) -> Path:
    """Write an h5ad; X given dense or sparse is stored as csr / csc / dense per `fmt`."""
    n = X.shape[0]
    if fmt == "csr":
        X = sp.csr_matrix(X)
    elif fmt == "csc":
        X = sp.csc_matrix(X)
    else:
        X = X.toarray() if sp.issparse(X) else np.asarray(X)
    var = (
        pd.DataFrame({var_col: var_ids}, index=[f"SYM{i}" for i in range(len(var_ids))])
        if var_col
        else pd.DataFrame(index=var_ids)
    )
    obs_df = pd.DataFrame(obs or {}, index=obs_index or [f"cell{i}" for i in range(n)])
    path.parent.mkdir(parents=True, exist_ok=True)
    ad.AnnData(X=X, obs=obs_df, var=var).write_h5ad(path)
    return path


def write_vocab(path: Path, genes: list[str] = GENES, specials: list[str] = SPECIALS) -> dict[str, int]:
    vocab = {t: i for i, t in enumerate(specials + sorted(genes))}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(vocab))
    return vocab


def random_corpus(root: Path, n_files: int = 2, n_cells: int = 250, seed: int = 0, n_drugs: int = 0) -> None:
    """A vocabulary + `n_files` random CSR h5ad files of integer counts over GENES (optional drug column)."""
    write_vocab(root / "vocab" / "vocab.json")
    rng = np.random.default_rng(seed)
    for f in range(n_files):
        m = sp.random(n_cells, len(GENES), density=0.5, random_state=rng, format="csr", dtype=np.float32)
        m.data = np.ceil(m.data * 9)
        obs = {"drug": [f"d{i % n_drugs}" for i in range(n_cells)]} if n_drugs else None
        make_h5ad(root / "raw" / f"f{f}.h5ad", m, GENES, obs)


def set_dotted(d: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
    d[keys[-1]] = value


def base_config(root: Path) -> dict:
    return {
        "output_root": str(root),
        "huggingface": {
            "adata_dir": str(root / "raw"),
            "ignore_dir": "None",
            "gene_col": "gene_id",
            "cls_token": "<cls>",
            "pad_value": -2,
            "num_proc": 1,
            "output_root": str(root / "work"),
            "merged_dataset_root": str(root / "merged"),
            "vocab_output_root": str(root / "vocab"),
            "vocab_path": "vocab.json",
            "split_parameters": {"test_size": 0.2, "seed": 42, "shuffle": False},
        },
        "mds": {
            "out_root": str(root / "mds"),
            "root_dir": str(root / "merged"),
            "splits": ["train", "valid"],
            "columns": {"genes": "ndarray:int32", "expressions": "ndarray:float32", "id": "int64"},
            "compression": "zstd",
            "hashes": ["sha1", "xxh64"],
        },
    }


def config_file(root: Path, **overrides: Any) -> str:
    """`base_config(root)` with dotted `overrides`, written to `root/config.yaml`; its path (for the CLI)."""
    import yaml

    cfg = base_config(root)
    for k, v in overrides.items():
        set_dotted(cfg, k, v)
    path = root / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def arrow_rows(dataset_dir: Path) -> list[dict]:
    """All rows of a split, in file order, read with pyarrow (not through cellcorpus)."""
    import pyarrow as pa

    state = json.loads((dataset_dir / "state.json").read_text())
    rows = []
    for f in state["_data_files"]:
        with pa.memory_map(str(dataset_dir / f["filename"])) as src:
            rows += pa.ipc.open_stream(src).read_all().to_pylist()
    return rows


def data_bytes(dataset_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(dataset_dir.glob("*")) if p.is_file()}
