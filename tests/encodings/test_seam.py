"""The encoding seam end to end: any encoding runs tokenize -> MDS -> verify -> report from a config, and verify
checks what the encoding's rules say (MDS columns decoded through the encodings they name)."""

from __future__ import annotations

import pickle

import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp
from tests._utils import GENES, make_h5ad, write_vocab

from cellcorpus.config import load_config
from cellcorpus.errors import VerifyError
from cellcorpus.formats.arrow import read_arrow
from cellcorpus.pipeline import run_pipeline
from cellcorpus.stages.verify import run_verify


def _atlas(root, n=400, seed=0):
    rng = np.random.default_rng(seed)
    m = sp.random(n, len(GENES), density=0.7, random_state=rng, format="csr", dtype=np.float32)
    m.data = rng.integers(1, 9, m.nnz).astype(np.float32)
    make_h5ad(root / "raw" / "a.h5ad", m, GENES)
    return m


def test_tahoe_with_dtype_less_ndarray_mds_columns_runs_and_verifies(tmp_path, write_config):
    """`mds.columns.genes: ndarray` (the writer stores the dtype per sample) used to crash verify (IndexError)."""
    write_vocab(tmp_path / "vocab" / "vocab.json")
    _atlas(tmp_path)
    cfg = load_config(write_config(**{"mds.columns": {"genes": "ndarray", "expressions": "ndarray", "id": "int64"}}))
    stages = [s.stage for s in run_pipeline(cfg)]
    assert "verify" in stages
    rep = run_verify(cfg)
    assert rep.ok and rep.checks["starts with CLS and pad value"].checked > 0


def _geneformer(tmp_path, write_config, **more):
    vocab = {"<pad>": 0, "<mask>": 1, "<cls>": 2, "<eos>": 3} | {g: 4 + i for i, g in enumerate(GENES)}
    (tmp_path / "vocab").mkdir()
    (tmp_path / "vocab" / "vocab.json").write_text(str(vocab).replace("'", '"'))
    (tmp_path / "median.pkl").write_bytes(pickle.dumps({g: 1.0 + i / 2 for i, g in enumerate(GENES)}))
    m = _atlas(tmp_path)
    overrides = {
        "huggingface.encoding": "geneformer",
        "huggingface.geneformer": {"gene_median": str(tmp_path / "median.pkl"), "model_input_size": 5},
        "mds.columns": {"input_ids": "ndarray:int64", "length": "int64", "id": "int64"},
        **more,
    }
    return load_config(write_config(**overrides)), m


def test_geneformer_corpus_runs_end_to_end_with_mds(tmp_path, write_config):
    cfg, m = _geneformer(tmp_path, write_config)
    summaries = {s.stage: s for s in run_pipeline(cfg)}
    assert {"tokenize", "mds", "verify", "report"} <= set(summaries)
    rows = read_arrow(next((tmp_path / "merged" / "train.dataset").glob("data-*.arrow"))).to_pylist()
    assert rows and all(r["input_ids"][0] == 2 and r["input_ids"][-1] == 3 for r in rows)
    assert all(r["length"] == len(r["input_ids"]) <= 5 for r in rows)
    # a cell's ranked genes: descending count / n_counts / median, here checked by hand for the first cell
    first = rows[0]
    cell = m[int(first["id"]) & 0xFFFFFFFFFF].toarray().ravel()  # id = (file 0, row)
    value = cell / cell.sum() * 10_000 / (1.0 + np.arange(len(GENES)) / 2)
    want = [4 + int(j) for j in np.argsort(-value, kind="stable") if value[j] > 0][:3]
    assert first["input_ids"][1:-1] == want
    assert summaries["verify"].counts.get("failed", 0) == 0


def test_verify_names_a_geneformer_cell_longer_than_the_model_input(tmp_path, write_config):
    cfg, _ = _geneformer(
        tmp_path, write_config, **{"huggingface.split_parameters.test_size": 0, "mds.splits": ["train"]}
    )
    run_pipeline(cfg)
    path = next((tmp_path / "merged" / "train.dataset").glob("data-*.arrow"))
    table = read_arrow(path, in_memory=True)
    ids = table.column("input_ids").to_pylist()
    ids[0] = [2, 4, 5, 6, 7, 8, 3]  # 7 tokens where model_input_size is 5
    table = table.set_column(0, table.schema.field(0), pa.array(ids, table.schema.field(0).type))
    with pa.OSFile(str(path), "wb") as f, pa.ipc.new_stream(f, table.schema) as w:
        w.write_table(table)
    with pytest.raises(VerifyError) as err:
        run_verify(cfg)
    report = err.value.report  # type: ignore[attr-defined]
    assert report.checks["at most 5 tokens"].failed == 1
    assert report.checks["length equals the tokens"].failed == 1
