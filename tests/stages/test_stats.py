"""`cellcorpus stats`: per-gene medians within the documented error of the exact ones on real cells, sums
exact, the same bytes whatever the processes and unit size, and usable as Geneformer's median dictionary."""

from __future__ import annotations

import pickle

import numpy as np
import pyarrow.parquet as pq
import pytest

from cellcorpus.config import load_config
from cellcorpus.formats.mds.safe_pickle import load_mapping
from cellcorpus.stages.stats import run_stats
from tests.encodings.test_geneformer import _h5ad, _pbmc


def _setup(root, write_config, **more):
    counts, n_counts, symbols = _pbmc()
    ids = [f"ENSG{i:011d}" for i in range(len(symbols))]
    (root / "vocab").mkdir(parents=True, exist_ok=True)
    vocab = {"<pad>": 0, "<cls>": 1} | {g: 2 + i for i, g in enumerate(ids)}
    (root / "vocab" / "vocab.json").write_text(str(vocab).replace("'", '"'))
    _h5ad(root / "raw" / "a.h5ad", counts[:400], ids, {})
    _h5ad(root / "raw" / "b.h5ad", counts[400:], ids, {})
    cfg = write_config(root, drop=("mds",), **{"huggingface.gene_col": "ensembl_id", "stats": {}, **more})
    return load_config(cfg), counts, ids


def test_medians_within_the_documented_error_of_the_exact_ones(tmp_path, write_config):
    cfg, counts, ids = _setup(tmp_path, write_config)
    summary = run_stats(cfg)
    assert summary.counts["cells"] == counts.shape[0]
    table = pq.read_table(tmp_path / "stats" / "stats.parquet").to_pandas().set_index("gene_id")
    norm = counts.multiply(1e4 / np.asarray(counts.sum(axis=1))).tocsc()  # each cell's own total
    errors, checked = [], 0
    for j, g in enumerate(ids):
        col = norm.data[norm.indptr[j] : norm.indptr[j + 1]]
        col = col[col > 0]
        if not len(col):
            assert g not in table.index
            continue
        row = table.loc[g]
        assert row["nonzero_cells"] == len(col)  # exact
        assert row["total_counts"] == counts[:, j].sum()  # exact (whole counts)
        if len(col) >= 100:
            errors.append(abs(row["median"] / np.median(col) - 1))
            checked += 1
    assert checked > 300
    assert np.median(errors) <= 0.005 and max(errors) <= 0.0051  # relative_accuracy 0.005 (+ rounding)


def test_same_bytes_whatever_processes_and_unit_size(tmp_path, write_config):
    outs = {}
    for name, unit, block, procs in (("one", 100_000, 1000, 1), ("many", 37, 37, 2), ("blocks", 300, 41, 2)):
        settings = {"stats.unit_cells": unit, "huggingface.unit_cells": block, "stats.num_proc": procs}
        cfg, _, _ = _setup(tmp_path / name, write_config, **settings)
        run_stats(cfg)
        outs[name] = [(tmp_path / name / "stats" / f).read_bytes() for f in ("stats.parquet", "gene_median.pkl")]
    assert outs["one"] == outs["many"] == outs["blocks"]


def test_a_resumed_run_writes_the_same_bytes(tmp_path, write_config):
    """A run that stopped part-way leaves its finished units recorded; the next runs only the others and merges
    all from their files: the outputs equal an uninterrupted run's byte for byte."""
    import h5py

    from cellcorpus.errors import UnitFailed

    settings = {"stats.unit_cells": 150, "huggingface.unit_cells": 150}
    cfg, _, _ = _setup(tmp_path / "once", write_config, **settings)
    run_stats(cfg)
    cfg, _, _ = _setup(tmp_path / "resumed", write_config, **settings)
    b = tmp_path / "resumed" / "raw" / "b.h5ad"
    good = b.read_bytes()
    with h5py.File(b, "r+") as f:  # broken: its units fail, a.h5ad's finish and are recorded
        f["X"]["indices"][5] = 10**6
    with pytest.raises(UnitFailed, match=r"b\.h5ad"):
        run_stats(cfg)
    assert len(list((tmp_path / "resumed" / "stats" / "parts").glob("*.npz"))) == 3  # a.h5ad's 400 rows
    b.write_bytes(good)
    assert not run_stats(cfg).skipped
    for name in ("stats.parquet", "gene_median.pkl", "stats.json"):
        assert (tmp_path / "resumed" / "stats" / name).read_bytes() == (tmp_path / "once" / "stats" / name).read_bytes()


def test_rerun_skips_and_the_median_file_is_geneformers_format(tmp_path, write_config):
    cfg, _, _ = _setup(tmp_path, write_config)
    assert not run_stats(cfg).skipped
    assert run_stats(cfg).skipped
    data = (tmp_path / "stats" / "gene_median.pkl").read_bytes()
    medians = load_mapping(data, "gene_median.pkl")  # read by the restricted reader, as the encoding reads it
    assert medians == pickle.loads(data) and all(isinstance(v, float) for v in medians.values())
    table = pq.read_table(tmp_path / "stats" / "stats.parquet")
    assert medians == dict(zip(table.column("gene_id").to_pylist(), table.column("median").to_pylist(), strict=True))
    assert not list((tmp_path / "stats" / "parts").glob("*.npz"))  # merged, then removed


@pytest.mark.parametrize("accuracy", [0.0, 0.2])
def test_relative_accuracy_is_bounded(tmp_path, write_config, accuracy):
    from cellcorpus.errors import ConfigError

    with pytest.raises((ConfigError, ValueError), match="relative_accuracy"):
        _setup(tmp_path, write_config, **{"stats.relative_accuracy": accuracy})


def test_a_column_index_outside_the_file_is_named_before_any_sum(tmp_path, write_config):
    """A hostile or broken file's out-of-range column index is refused before scipy's sums (no bounds checks
    there), naming the file and rows."""
    import h5py

    from cellcorpus.errors import UnitFailed

    cfg, _, ids = _setup(tmp_path, write_config)
    with h5py.File(tmp_path / "raw" / "a.h5ad", "r+") as f:
        f["X"]["indices"][5] = len(ids) + 1000
    with pytest.raises(UnitFailed, match=r"a\.h5ad rows 0-400: a stored column index is outside the file's"):
        run_stats(cfg)


def test_file_columns_sharing_an_id_are_summed_per_cell_first(tmp_path, write_config):
    """Two columns of one Ensembl id (the compiled pass then only sums; the merged cells are counted after): the
    id's median is of each cell's summed count over its total, non-zero cells and totals exact."""
    counts, _, symbols = _pbmc()
    ids = [f"ENSG{i:011d}" for i in range(len(symbols))]
    busiest = np.argsort(-np.asarray((counts > 0).sum(axis=0)).ravel())[:10].tolist()
    pairs = list(zip(busiest[::2], busiest[1::2], strict=True))
    for a, b in pairs:
        ids[b] = ids[a]
    (tmp_path / "vocab").mkdir(parents=True)
    vocab = {"<pad>": 0, "<cls>": 1} | {g: 2 + i for i, g in enumerate(dict.fromkeys(ids))}
    (tmp_path / "vocab" / "vocab.json").write_text(str(vocab).replace("'", '"'))
    _h5ad(tmp_path / "raw" / "a.h5ad", counts, ids, {})
    cfg = write_config(tmp_path, drop=("mds",), **{"huggingface.gene_col": "ensembl_id", "stats": {}})
    run_stats(load_config(cfg))
    table = pq.read_table(tmp_path / "stats" / "stats.parquet").to_pandas().set_index("gene_id")
    dense = counts.toarray().astype(np.float64)
    totals = dense.sum(axis=1)
    for a, b in pairs:
        summed = dense[:, a] + dense[:, b]
        col = (summed / totals * 1e4)[summed > 0]
        row = table.loc[ids[a]]
        assert row["nonzero_cells"] == len(col) and row["total_counts"] == summed.sum()
        assert abs(row["median"] / np.median(col) - 1) <= 0.0051


@pytest.mark.parametrize("bad, message", [(-3.0, "negative count value"), (np.nan, "NaN/infinite count value")])
def test_a_bad_count_is_named_and_nothing_is_written(tmp_path, write_config, bad, message):
    """The compiled sums pass finds the count; the message is tokenize's own (`scan_counts`)."""
    import scipy.sparse as sp

    from cellcorpus.errors import UnitFailed

    cfg, counts, ids = _setup(tmp_path, write_config)
    broken = sp.csr_matrix(counts[:50], dtype=np.float32)
    broken.data[7] = bad
    _h5ad(tmp_path / "raw" / "b.h5ad", broken, ids, {})
    with pytest.raises(UnitFailed, match=f"b.h5ad rows 0-50: 1 {message}"):
        run_stats(cfg)
    assert not (tmp_path / "stats" / "stats.parquet").exists()
