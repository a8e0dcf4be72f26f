"""Census download against a local SOMA experiment with the Census layout, through cellxgene_census."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellcorpus.config import load_config
from cellcorpus.errors import UnitFailed
from cellcorpus.sources import census as census_mod
from cellcorpus.stages.download import run_download
from cellcorpus.stages.tokenize import run_tokenize
from tests._utils import arrow_rows, write_vocab

tiledbsoma = pytest.importorskip("tiledbsoma")
pytest.importorskip("tiledbsoma.io")
pytest.importorskip("cellxgene_census")
pytestmark = pytest.mark.census

N_CELLS, N_GENES = 60, 10
GENE_IDS = [f"ENSG{i:011d}" for i in range(1, N_GENES + 1)]


def source_anndata(seed: int = 0) -> ad.AnnData:
    """The cells the local Census holds (also the reference the tests compare against)."""
    rng = np.random.default_rng(seed)
    X = sp.random(N_CELLS, N_GENES, density=0.5, random_state=rng, format="csr", dtype=np.float32)
    X.data = np.ceil(X.data * 6)
    X = X.toarray()
    X[:, 6] = 0  # gene 6: never expressed
    X[:, 7] = 0
    X[1, 7] = 1  # gene 7: one count in the whole census (dropped by min_count_per_gene=2)
    X = sp.csr_matrix(X)
    obs = pd.DataFrame(
        {
            "is_primary_data": np.arange(N_CELLS) % 4 != 0,  # every 4th cell is not primary
            "suspension_type": np.where(np.arange(N_CELLS) % 5 == 0, "na", "cell"),
        },
        index=[str(i) for i in range(N_CELLS)],
    )
    var = pd.DataFrame(
        {
            "feature_id": [g + ".1" if i == 2 else g for i, g in enumerate(GENE_IDS)],
            "feature_name": [f"G{i}" for i in range(N_GENES)],
            "nnz": [50, 50, 50, 3, 50, 50, 50, 50, 50, 50],  # gene 3 below min_gene_nnz
            "n_measured_obs": [60, 60, 60, 60, 5, 60, 60, 60, 60, 60],  # gene 4 below min_gene_measured_obs
        },
        index=[str(i) for i in range(N_GENES)],
    )
    return ad.AnnData(X=X, obs=obs, var=var)


_BUILD = """
import sys, anndata as ad, tiledbsoma, tiledbsoma.io
uri, h5ad = sys.argv[1], sys.argv[2]
with tiledbsoma.Collection.create(uri) as c:
    c.add_new_collection("census_data")
exp_uri = uri + "/census_data/homo_sapiens"
tiledbsoma.io.from_anndata(exp_uri, ad.read_h5ad(h5ad), measurement_name="RNA", X_layer_name="raw")
with tiledbsoma.Collection.open(uri + "/census_data", "w") as cd, tiledbsoma.Experiment.open(exp_uri) as e:
    cd.set("homo_sapiens", e, use_relative_uri=True)
"""


def build_census(uri, seed=0) -> ad.AnnData:
    """census_data/homo_sapiens with obs is_primary_data/suspension_type, var feature_id/nnz/n_measured_obs, X raw.

    Written by a separate Python process: writing and then reading a SOMA experiment in one process
    occasionally crashed tiledbsoma here, and a download reads a Census somebody else wrote anyway.
    """
    import subprocess
    import sys

    adata = source_anndata(seed)
    h5ad = f"{uri}.h5ad"
    adata.write_h5ad(h5ad)
    subprocess.run([sys.executable, "-c", _BUILD, str(uri), h5ad], check=True)
    return adata


@pytest.fixture
def census(tmp_path, write_config):
    adata = build_census(tmp_path / "census")
    write_vocab(tmp_path / "vocab" / "vocab.json", genes=GENE_IDS[:9])  # gene 9 not in the vocabulary
    cfg = write_config(
        **{
            "vocab": {"reference_adata": "x.h5ad", "output_root": str(tmp_path / "vocab"), "output_file": "vocab.json"},
            "cellxgene": {
                "census_uri": str(tmp_path / "census"),
                "use_col": "feature_id",
                "min_gene_measured_obs": 10,
                "min_gene_nnz": 10,
                "min_count_per_gene": 2,
                "chunk_size": 16,
                "output_root": str(tmp_path / "raw"),
                "vocab": "vocab.json",
            },
            "huggingface.gene_col": "feature_id",
        }
    )
    return adata, cfg


def _expected_cells(adata):
    m = adata.obs["is_primary_data"].to_numpy() & (adata.obs["suspension_type"].to_numpy() != "na")
    return np.flatnonzero(m)


def test_selection_chunks_and_gene_drop(tmp_path, census):
    adata, cfg_path = census
    cfg = load_config(cfg_path)
    s = run_download("cellxgene", cfg)
    cells = _expected_cells(adata)
    assert s.counts["cells selected"] == len(cells) == 36
    assert s.counts["genes selected"] == 7  # genes 3 (nnz), 4 (measured), 9 (not in vocab) out
    chunks = sorted((tmp_path / "raw").glob("chunk_*.h5ad"))
    assert [c.name for c in chunks] == ["chunk_0.h5ad", "chunk_1.h5ad", "chunk_2.h5ad"]
    got_cells = np.concatenate([ad.read_h5ad(c).obs["soma_joinid"].to_numpy() for c in chunks])
    assert got_cells.tolist() == cells.tolist()  # soma_joinid order, chunk boundaries at 16
    for i, c in enumerate(chunks):
        a = ad.read_h5ad(c)
        rows = cells[i * 16 : (i + 1) * 16]
        selected = [0, 1, 2, 5, 6, 7, 8]
        totals = np.asarray(adata.X[rows][:, selected].sum(axis=0)).ravel()
        want = [adata.var["feature_id"].iloc[g] for g, t in zip(selected, totals, strict=True) if t >= 2]
        assert a.var["feature_id"].tolist() == want  # per-chunk drop of genes under min_count_per_gene
        assert not {"ENSG00000000007", "ENSG00000000008"} & set(a.var["feature_id"])  # 0 and 1 counts: dropped
        assert "ENSG00000000003.1" in set(a.var["feature_id"])  # version suffix matched the vocabulary
        np.testing.assert_array_equal(a.X.toarray(), adata.X[rows][:, [int(x) for x in a.var["soma_joinid"]]].toarray())
    manifest = json.loads((tmp_path / "raw" / "download_manifest.json").read_text())
    assert [c["cells"] for c in manifest["chunks"]] == [16, 16, 4]


def test_resume_after_killed_chunk_and_tokenize_matches(tmp_path, census, monkeypatch):
    adata, cfg_path = census
    cfg = load_config(cfg_path)
    real = census_mod.census_chunk_unit

    def killed(unit, cx):
        if unit.unit_id == "chunk_00001":
            (tmp_path / "raw" / ".chunk_1.h5ad.tmp-dead").write_bytes(b"half")  # what a kill leaves
            raise RuntimeError("killed")
        return real(unit, cx)

    monkeypatch.setattr(census_mod, "census_chunk_unit", killed)
    with pytest.raises(UnitFailed, match="chunk_00001"):
        run_download("cellxgene", cfg)
    assert not (tmp_path / "raw" / "chunk_1.h5ad").exists()
    calls = []
    monkeypatch.setattr(census_mod, "census_chunk_unit", lambda u, c: (calls.append(u.unit_id), real(u, c))[1])
    run_download("cellxgene", cfg)
    assert calls == ["chunk_00001"]  # only the killed chunk again
    # tokenize the chunks: the same cells, tokens and counts as reading the source AnnData directly
    run_tokenize(cfg)
    rows = arrow_rows(tmp_path / "merged" / "train.dataset") + arrow_rows(tmp_path / "merged" / "valid.dataset")
    assert len(rows) == 36
    vocab = json.loads((tmp_path / "vocab" / "vocab.json").read_text())
    chunks = [ad.read_h5ad(c) for c in sorted((tmp_path / "raw").glob("chunk_*.h5ad"))]
    from cellcorpus.core.ids import decode_ids

    seen = set()
    for row in rows:
        f, r = (int(x[0]) for x in decode_ids(np.array([row["id"]])))
        chunk = chunks[f]
        sid = int(chunk.obs["soma_joinid"].iloc[r])
        seen.add(sid)
        var_sids = chunk.var["soma_joinid"].to_numpy().astype(int)
        source = adata.X[sid].toarray().ravel()[var_sids]  # the cell as stored in the source AnnData
        ids = [GENE_IDS[v] for v in var_sids]
        want = [(vocab[g], float(x)) for g, x in zip(ids, source, strict=True) if x != 0]
        assert list(zip(row["genes"][1:], row["expressions"][1:], strict=True)) == want
    assert sorted(seen) == _expected_cells(adata).tolist()
