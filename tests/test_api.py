"""The Python API: a config from a dict, tokenize_anndata equal to the CLI, ids decoded back to (file, row)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cellcorpus import decode_id, load_config, tokenize_anndata
from cellcorpus.cli import app
from cellcorpus.stages.tokenize import run_tokenize
from tests._utils import GENES, arrow_rows, base_config, random_corpus


def test_config_from_a_dict_is_validated_like_a_file(tmp_path):
    cfg = load_config(base_config(tmp_path), ["huggingface.unit_cells=7"])
    assert cfg.huggingface.unit_cells == 7
    from cellcorpus.errors import ConfigError

    with pytest.raises(ConfigError, match="huggingface.unit_cels: unknown key"):
        load_config({**base_config(tmp_path), "huggingface": {**base_config(tmp_path)["huggingface"], "unit_cels": 1}})


def test_tokenize_anndata_equals_the_cli_for_the_same_cells(tmp_path):
    random_corpus(tmp_path, n_files=1, n_cells=300, seed=5, n_drugs=3)
    settings = {
        "gene_col": "gene_id",
        "filter_cells": {"min_genes": 2},
        "obs_metadata_columns": ["drug"],
        "split_parameters": {"test_size": 0.2, "seed": 42},
        "unit_cells": 64,
    }
    cfg = base_config(tmp_path)
    cfg["huggingface"].update(settings)
    run_tokenize(load_config(cfg))
    cli = {s: arrow_rows(tmp_path / "merged" / f"{s}.dataset") for s in ("train", "valid")}
    adata = ad.read_h5ad(tmp_path / "raw" / "f0.h5ad")
    vocab = {t: i for i, t in enumerate(["<pad>", "<cls>", "<eoc>", *GENES])}
    got = tokenize_anndata(adata, vocab, split=True, **settings)
    for s in ("train", "valid"):
        assert got[s].to_pylist() == cli[s]
    ds = tokenize_anndata(adata, vocab, split=True, as_dataset=True, **settings)
    assert ds["train"].column_names[:3] == ["genes", "expressions", "id"] and len(ds["valid"]) == len(cli["valid"])
    whole = tokenize_anndata(adata, vocab, **settings)
    assert whole.num_rows == len(cli["train"]) + len(cli["valid"])
    assert whole.column("id").to_pylist() == sorted(r["id"] for r in cli["train"] + cli["valid"])


def test_decode_id_api_and_cli(tmp_path):
    random_corpus(tmp_path, n_files=2, n_cells=200, seed=6)
    cfg = load_config(base_config(tmp_path))
    run_tokenize(cfg)
    row = arrow_rows(tmp_path / "merged" / "train.dataset")[-1]
    path, r = decode_id(cfg, row["id"])
    assert path.endswith(f"f{row['id'] >> 32}.h5ad") and r == row["id"] & 0xFFFFFFFF
    x = ad.read_h5ad(path).X[r].toarray().ravel()
    assert np.array_equal(x[x != 0], np.array(row["expressions"][1:], dtype=np.float32))
    (tmp_path / "c.yaml").write_text(__import__("yaml").safe_dump(base_config(tmp_path)))
    result = CliRunner().invoke(app, ["id", str(tmp_path / "c.yaml"), str(row["id"]), str(5 << 32)])
    assert result.exit_code == 1 and f"row {r}" in result.output and "is not a cell of this dataset" in result.output


def test_config_list_show_init(tmp_path):
    runner = CliRunner()
    listed = runner.invoke(app, ["config", "list"])
    assert listed.exit_code == 0 and "tahoe_x1_v2/tahoe_100m_hf.yaml" in listed.output
    shown = runner.invoke(app, ["config", "show", "scbasecamp"])
    assert shown.exit_code == 0 and "requester_pays_project" in shown.output
    made = runner.invoke(app, ["config", "init", "tahoe_100m_hf", str(tmp_path / "cfg")])
    assert made.exit_code == 0 and (tmp_path / "cfg" / "tahoe_100m_hf.yaml").is_file()
    again = runner.invoke(app, ["config", "init", "tahoe_100m_hf", str(tmp_path / "cfg")])
    assert again.exit_code == 2 and "already exists" in again.output
    unknown = runner.invoke(app, ["config", "show", "nope"])
    assert unknown.exit_code == 2 and "one of:" in unknown.output


def test_metadata_are_strings_documented_example():
    """README: metadata columns are strings (missing -> ''), so HF features are stable across files."""
    adata = ad.AnnData(
        X=np.array([[1.0, 0, 2, 0, 0]], dtype=np.float32),
        obs=pd.DataFrame({"dose": [0.5]}, index=["c0"]),
        var=pd.DataFrame(index=GENES),
    )
    vocab = {t: i for i, t in enumerate(["<pad>", "<cls>", "<eoc>", *GENES])}
    t = tokenize_anndata(adata, vocab, obs_metadata_columns=["dose"], split_parameters={"test_size": 0})
    assert t.to_pylist() == [
        {"genes": [1, 3, 5], "expressions": [-2.0, 1.0, 2.0], "id": 0, "dose": "0.5", "index": "c0"}
    ]


def test_documented_examples_run():
    import doctest

    import cellcorpus.api

    result = doctest.testmod(cellcorpus.api, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 5 and result.failed == 0


def test_load_config_takes_a_shipped_configs_name_and_settings(tmp_path):
    """Issue 24: `load_config("tahoe_100m", output_root=...)`; every path derives from output_root."""
    cfg = load_config("tahoe_100m", output_root=str(tmp_path), huggingface={"num_proc": 3})
    assert cfg.output_root == str(tmp_path) and cfg.huggingface.num_proc == 3
    assert cfg.huggingface.merged_dataset_root == f"{tmp_path}/tahoe_merged_w_metadata"
    same = load_config("tahoe_x1_v2/tahoe_100m.yaml", [f"output_root={tmp_path}", "huggingface.num_proc=3"])
    assert same == cfg
    from cellcorpus.errors import ConfigError

    with pytest.raises(ConfigError, match=r"config file not found: tahoe_1OOm .*shipped config's name"):
        load_config("tahoe_1OOm")
    # the CLI takes the name too
    got = CliRunner().invoke(app, ["config", "show", "scbasecamp"])
    assert got.exit_code == 0 and "SRX_accession" in got.output


def test_build_vocab_equals_the_vocab_stage(tmp_path):
    """Issue 24: `cellcorpus.build_vocab` gives the dict `cellcorpus vocab` writes, from a file, an AnnData or ids."""
    import json

    from cellcorpus import build_vocab
    from cellcorpus.stages.vocab import run_vocab

    ids = [f"ENSG{i:011d}" + (".4" if i % 3 == 0 else "") for i in (7, 3, 5, 1, 3)]  # versioned, one repeated
    adata = ad.AnnData(np.zeros((1, len(ids)), np.float32), var=pd.DataFrame({"gene_id": ids}, index=list("abcde")))
    adata.write_h5ad(tmp_path / "ref.h5ad")
    vocab_cfg = {"reference_adata": str(tmp_path / "ref.h5ad"), "use_col": "gene_id", "output_root": str(tmp_path)}
    run_vocab(load_config({"vocab": vocab_cfg}))
    written = json.loads((tmp_path / "vocab.json").read_text())
    assert list(written)[:4] == ["<pad>", "<cls>", "<eoc>", "ENSG00000000001"] and len(written) == 7
    assert build_vocab(tmp_path / "ref.h5ad", use_col="gene_id") == written
    assert build_vocab(adata, use_col="gene_id") == written
    assert build_vocab(ids) == written
    from cellcorpus.errors import ConfigError

    with pytest.raises(ConfigError, match="'symbol' is not a var column"):
        build_vocab(adata, use_col="symbol")


def test_normalised_data_is_recorded_and_warned_about(tmp_path, write_config):
    """Issue 24: non-integer counts were said once by the CLI and recorded nowhere; now the manifest and the
    report name the input and the count, and the Python API warns."""
    import json

    from cellcorpus.stages.report import run_report
    from tests._utils import make_h5ad, write_vocab

    write_vocab(tmp_path / "vocab" / "vocab.json")
    X = np.array([[1.0, 0.0, 2.5, 0, 0], [0.0, 3.0, 1.0, 0, 0], [0.5, 0.25, 0, 0, 1.0]], dtype=np.float32)
    make_h5ad(tmp_path / "raw" / "normalised.h5ad", X, GENES)
    make_h5ad(tmp_path / "raw" / "raw.h5ad", np.ceil(X), GENES)
    cfg = load_config(write_config(tmp_path, drop=("mds",), **{"huggingface.split_parameters.test_size": 0}))
    summary = run_tokenize(cfg)
    assert "normalised.h5ad: 3 non-integer count value(s); tokenized as they are (raw counts expected)" in summary.notes
    manifest = json.loads((tmp_path / "merged" / "manifest.json").read_text())
    assert manifest["non_integer_values"] == {"normalised.h5ad": 3}
    run_report(cfg)
    stats = json.loads((tmp_path / "merged" / "report" / "stats.json").read_text())
    assert stats["non_integer_values"] == {"normalised.h5ad": 3}
    assert "Not raw counts:</b> 3 count value(s)" in (tmp_path / "merged" / "report" / "report.html").read_text()
    adata = ad.AnnData(X, var=pd.DataFrame(index=GENES))
    vocab = json.loads((tmp_path / "vocab" / "vocab.json").read_text())
    with pytest.warns(UserWarning, match=r"3 count value\(s\) are not whole numbers"):
        tokenize_anndata(adata, vocab)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # raw counts: no warning
        tokenize_anndata(ad.AnnData(np.ceil(X), var=pd.DataFrame(index=GENES)), vocab)
