"""`encoding: scgpt` equals scGPT's own `tokenize_batch` on real cells, and scGPT's `DataCollator` batches it.

Reference: `scgpt.tokenizer.tokenize_batch` and `scgpt.data_collator.DataCollator` (with `preprocess.binning`)
from the scgpt 0.2.4 wheel on PyPI. The wheel's modules import torchtext, which has no release for current
torch, so only those definitions are compiled from the wheel's sources (tests/_peers.py), with numpy/torch as
their globals. Real cells: scanpy's bundled 10x PBMC sample (gene symbols, raw counts recovered as in
test_geneformer.py); vocabulary: scGPT's own `default_census_vocab.json` with <pad>, <cls>, <eoc> appended
as its GeneVocab.append_token does.
"""

from __future__ import annotations

import json
import typing
import zipfile

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from tests._peers import peer_definitions, peer_wheel
from tests.encodings.test_geneformer import _pbmc

from cellcorpus.config import load_config
from cellcorpus.errors import VerifyError
from cellcorpus.stages.tokenize import run_tokenize
from cellcorpus.stages.verify import run_verify

SCGPT = "scgpt==0.2.4"


@pytest.fixture(scope="module")
def census_vocab() -> dict[str, int]:
    with zipfile.ZipFile(peer_wheel(SCGPT)) as z:
        vocab = json.loads(z.read("scgpt/tokenizer/default_census_vocab.json"))
    for token in ("<pad>", "<cls>", "<eoc>"):  # GeneVocab.append_token: the next index
        vocab[token] = len(vocab)
    return vocab


def _corpus(tmp_path, write_config, vocab, cls_value, scbank=False, binning=None):
    counts, _, symbols = _pbmc()
    (tmp_path / "vocab").mkdir(parents=True, exist_ok=True)
    (tmp_path / "vocab" / "vocab.json").write_text(json.dumps(vocab))
    var = pd.DataFrame({"feature_name": symbols}, index=symbols)
    (tmp_path / "raw").mkdir(parents=True, exist_ok=True)
    ad.AnnData(X=counts, var=var).write_h5ad(tmp_path / "raw" / "pbmc.h5ad")
    cfg = load_config(
        write_config(
            drop=("mds",),
            **{
                "huggingface.gene_col": "feature_name",
                "huggingface.encoding": "scgpt",
                "huggingface.scgpt": {"cls_value": cls_value, "scbank": scbank, "binning": binning},
                "huggingface.min_vocab_genes": 0,  # tokenize_batch keeps a cell with no gene of the vocabulary
                "huggingface.split_parameters": {"test_size": 0, "seed": 1, "shuffle": False},
            },
        )
    )
    run_tokenize(cfg)
    import datasets

    return cfg, datasets.load_from_disk(str(tmp_path / "merged" / "train.dataset")), counts, symbols


@pytest.mark.parametrize("cls_value", [0.0, -2.0])
def test_genes_and_values_equal_scgpts_tokenize_batch(tmp_path, write_config, census_vocab, cls_value):
    cfg, got, counts, symbols = _corpus(tmp_path, write_config, census_vocab, cls_value)
    namespace = {"np": np, **{n: getattr(typing, n) for n in ("List", "Tuple", "Union", "Dict", "Optional")}}
    namespace["torch"] = None  # return_pt=False: torch is not used
    tokenize_batch = peer_definitions(SCGPT, "scgpt/tokenizer/gene_tokenizer.py", ("tokenize_batch",), namespace)[
        "tokenize_batch"
    ]
    in_vocab = np.array([s in census_vocab for s in symbols])
    assert 0.8 < in_vocab.mean() < 1  # some of the sample's symbols are not in scGPT's vocabulary
    gene_ids = np.array([census_vocab[s] for s in np.array(symbols)[in_vocab]])
    want = tokenize_batch(
        counts[:, in_vocab].toarray(), gene_ids, return_pt=False, append_cls=True, include_zero_gene=False,
        cls_id=census_vocab["<cls>"],
    )  # fmt: skip
    assert got.num_rows == len(want) == counts.shape[0]
    for row, (genes, values, _) in zip(got, want, strict=True):
        assert row["genes"] == genes.tolist()
        assert row["expressions"][0] == cls_value and row["expressions"][1:] == values[1:].tolist()
    run_verify(cfg)


def test_scgpts_data_collator_batches_the_corpus(tmp_path, write_config, census_vocab):
    torch = pytest.importorskip("torch")
    _, got, _, _ = _corpus(tmp_path, write_config, census_vocab, -2.0)
    globals_ = {"np": np, "torch": torch, "Union": typing.Union}
    binning = peer_definitions(SCGPT, "scgpt/preprocess.py", ("_digitize", "binning"), globals_)
    namespace = {"torch": torch, "np": np, "dataclass": __import__("dataclasses").dataclass, **binning}
    namespace |= {n: getattr(typing, n) for n in ("Any", "Dict", "List", "Mapping", "Optional", "Tuple", "Union")}
    collator = peer_definitions(SCGPT, "scgpt/data_collator.py", ("DataCollator",), namespace)["DataCollator"](
        pad_token_id=census_vocab["<pad>"], pad_value=-2, max_length=128, do_binning=True
    )
    got.set_format("torch", columns=["genes", "expressions"])
    batch = collator([got[i] for i in range(8)])
    assert batch["gene"].shape == batch["expr"].shape == batch["masked_expr"].shape == (8, 128)
    assert (batch["gene"][:, 0] == census_vocab["<cls>"]).all() and (batch["expr"][:, 0] == -2).all()
    assert batch["expr"][:, 1:].max() <= 50 and batch["expr"][:, 1:].min() >= 1  # binned into 51 bins


def test_scbank_folder_loads_as_scgpts_databank_reads_it(tmp_path, write_config, census_vocab):
    """`scgpt.scbank`: `<split>.scb/` as scGPT's DataBank.from_path reads it (its MetaInfo compiled from the
    wheel; the datatable through `datasets.load_dataset("parquet")`, as from_path does): the same genes and counts
    as the HF dataset without <cls>, and the vocabulary as written."""
    import dataclasses
    from pathlib import Path

    import datasets

    _, got, _, _ = _corpus(tmp_path, write_config, census_vocab, -2.0, scbank=True)
    folder = tmp_path / "merged" / "train.scb"
    namespace = {"dataclass": dataclasses.dataclass, "field": dataclasses.field, "asdict": dataclasses.asdict,
                 "Path": Path, "json": json, "Self": typing.Any, "Literal": typing.Literal,
                 **{n: getattr(typing, n) for n in ("List", "Optional", "Union")}}  # fmt: skip
    meta_info = peer_definitions(SCGPT, "scgpt/scbank/data.py", ("MetaInfo",), namespace)["MetaInfo"]
    meta = meta_info.from_path(folder)
    assert (meta.on_disk_format, meta.main_table_key) == ("parquet", "counts")
    table = datasets.load_dataset(
        meta.on_disk_format, data_files=str(folder / "counts.datatable.parquet"), cache_dir=str(tmp_path / "c"),
        split="train",
    )  # fmt: skip
    assert table.num_rows == got.num_rows
    assert table["genes"] == [g[1:] for g in got["genes"]] and table["id"] == got["id"]
    assert table["expressions"] == [e[1:] for e in got["expressions"]]
    assert json.loads((folder / "gene_vocab.json").read_text()) == census_vocab
    assert not list((tmp_path / "merged").glob(".*.tmp-*"))  # nothing half-written left


def test_verify_hashes_the_scbank_folder(tmp_path, write_config, census_vocab):
    """The scBank files are recorded in the manifest when written; a changed byte fails verify, naming the file."""
    cfg, _, _, _ = _corpus(tmp_path, write_config, census_vocab, -2.0, scbank=True)
    run_verify(cfg)
    vocab_file = tmp_path / "merged" / "train.scb" / "gene_vocab.json"
    vocab_file.write_text(vocab_file.read_text().replace("<cls>", "<CLS>"))
    with pytest.raises(VerifyError, match=r"model files beside the datasets.*train.scb/gene_vocab.json"):
        run_verify(cfg)


def test_stored_binning_equals_scgpts_binning_ties_to_the_upper_bin(tmp_path, write_config, census_vocab, monkeypatch):
    """`scgpt.binning`: the `bins` column is scGPT's `preprocess.binning(row, 51)` of each cell's counts (its CLS
    value first), with scGPT's random tie-break (`_digitize`, scGPT #319) pinned to its upper end."""
    import types

    cfg, got, _, _ = _corpus(tmp_path, write_config, census_vocab, -2.0, binning={"n_bins": 51})
    globals_ = {"np": np, "torch": types.SimpleNamespace(Tensor=type("Tensor", (), {})), "Union": typing.Union}
    binning = peer_definitions(SCGPT, "scgpt/preprocess.py", ("_digitize", "binning"), globals_)["binning"]
    ties = 0
    for row in got:
        counts, bins = np.array(row["expressions"][1:], np.float32), np.array(row["bins"][1:], np.float32)
        assert row["bins"][0] == -2.0 and len(bins) == len(counts)
        if not len(counts):
            continue
        monkeypatch.setattr(np.random, "rand", lambda n: np.zeros(n))  # scGPT's random pick at its top end
        assert np.array_equal(binning(counts.copy(), 51), bins)
        monkeypatch.setattr(np.random, "rand", lambda n: np.ones(n))  # ... and at its bottom end
        lowest = binning(counts.copy(), 51)
        assert (lowest <= bins).all()
        ties += int((lowest < bins).any())
    assert ties > 0  # raw counts tie on bin edges: the documented difference is exercised
    assert bins.max() <= 50
    run_verify(cfg)
