"""report stage: stats.json agrees with the manifests and the data; plots and page are written."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cellcorpus.config import load_config
from cellcorpus.errors import ConfigError
from cellcorpus.stages.mds import run_mds
from cellcorpus.stages.report import run_report
from cellcorpus.stages.tokenize import run_tokenize
from tests._utils import arrow_rows, random_corpus


def test_report_numbers_match_data(tmp_path, write_config):
    random_corpus(tmp_path, seed=3)
    cfg = load_config(
        write_config(**{"huggingface.dataset_name": "tiny", "huggingface.filter_cells": {"min_genes": 2}})
    )
    run_tokenize(cfg)
    run_mds(cfg)
    s = run_report(cfg)
    folder = tmp_path / "merged" / "report"
    stats = json.loads((folder / "stats.json").read_text())
    manifest = json.loads((tmp_path / "merged" / "manifest.json").read_text())
    assert stats["totals"] == manifest["totals"] and stats["input_cells"] == 500
    for split in ("train", "valid"):
        rows = arrow_rows(tmp_path / "merged" / f"{split}.dataset")
        genes = np.array([len(r["genes"]) - 1 for r in rows])
        counts = np.array([sum(r["expressions"][1:]) for r in rows])
        st = stats["splits"][split]
        assert st["cells"] == len(rows) == s.counts[f"{split} cells"]
        assert st["genes_per_cell"]["q100"] == genes.max() and st["genes_per_cell"]["q00"] == genes.min()
        assert st["counts_per_cell"]["mean"] == pytest.approx(counts.mean())
        assert stats["mds"][split]["samples"] == len(rows)
    for png in ("genes_per_cell.png", "counts_per_cell.png", "cells_by_outcome.png"):
        assert (folder / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<h1>tiny</h1>" in (folder / "report.html").read_text()


def test_report_before_tokenize_is_clear(write_config):
    with pytest.raises(ConfigError, match="nothing to report"):
        run_report(load_config(write_config()))
