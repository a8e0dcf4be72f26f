"""Tahoe-100M parquet release input: cells re-keyed from the release's gene table into our vocabulary."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cellcorpus.config import load_config
from cellcorpus.errors import ConfigError, UnitFailed
from cellcorpus.stages.tokenize import run_tokenize
from tests._utils import GENES, arrow_rows

# release token ids: 0 = CLS, 5..8 = genes; 7 is a gene our vocabulary lacks
TABLE = pd.DataFrame({"token_id": [5, 6, 7, 8], "ensembl_id": [GENES[3], GENES[0] + ".2", "ENSG99999999999", GENES[4]]})
CELLS = [
    ([0, 5, 7, 8], [-2.0, 3.0, 9.0, 1.0]),
    ([0, 6], [-2.0, 4.0]),
    ([0, 8, 5], [-2.0, 2.0, 5.0]),
]
EXPECTED = [([1, 6, 7], [-2.0, 3.0, 1.0]), ([1, 3], [-2.0, 4.0]), ([1, 7, 6], [-2.0, 2.0, 5.0])]


def _release(root, cells=CELLS, row_group_size=2):
    root.mkdir(parents=True, exist_ok=True)
    t = pa.table(
        {
            "genes": pa.array([g for g, _ in cells], pa.list_(pa.int64())),
            "expressions": pa.array([e for _, e in cells], pa.list_(pa.float32())),
            "drug": [f"d{i}" for i in range(len(cells))],
            "sample": [f"s{i}" for i in range(len(cells))],
            "BARCODE_SUB_LIB_ID": [f"bc{i}" for i in range(len(cells))],
        }
    )
    pq.write_table(t, root / "train-00000.parquet", row_group_size=row_group_size)
    TABLE.to_parquet(root.parent / "gene_metadata.parquet")


def _cfg(tmp_path, write_config, unit_cells=2):
    from tests._utils import write_vocab

    write_vocab(tmp_path / "vocab" / "vocab.json")
    return load_config(
        write_config(
            **{
                "huggingface.input_format": "tahoe_parquet",
                "huggingface.parquet_gene_table": str(tmp_path / "gene_metadata.parquet"),
                "huggingface.obs_metadata_columns": ["drug", "sample"],
                "huggingface.unit_cells": unit_cells,
                # three cells: all to train (an empty valid split is an error)
                "huggingface.split_parameters.test_size": 0,
                "mds.splits": ["train"],
            }
        )
    )


@pytest.mark.parametrize("unit_cells", [1, 2, 10])
def test_rekeyed_genes_and_expressions_per_cell(tmp_path, write_config, unit_cells):
    _release(tmp_path / "raw")
    s = run_tokenize(_cfg(tmp_path, write_config, unit_cells))
    rows = sorted(
        arrow_rows(tmp_path / "merged" / "train.dataset") + arrow_rows(tmp_path / "merged" / "valid.dataset"),
        key=lambda r: r["id"],
    )
    assert [(r["genes"], r["expressions"]) for r in rows] == EXPECTED
    assert [r["drug"] for r in rows] == ["d0", "d1", "d2"] and [r["index"] for r in rows] == ["bc0", "bc1", "bc2"]
    assert s.counts["oov_entries_dropped"] == 1  # the release gene our vocabulary lacks


def test_gene_token_missing_from_table_is_named(tmp_path, write_config):
    _release(tmp_path / "raw", cells=[([0, 5, 42], [-2.0, 1.0, 1.0])])
    with pytest.raises(UnitFailed, match=r"gene token 42 is not in the gene table"):
        run_tokenize(_cfg(tmp_path, write_config))


def test_rows_without_release_cls_rejected(tmp_path, write_config):
    _release(tmp_path / "raw", cells=[([5, 6], [1.0, 2.0])])
    with pytest.raises(UnitFailed, match="must start with the release CLS"):
        run_tokenize(_cfg(tmp_path, write_config))


def test_gene_table_required(write_config):
    with pytest.raises(ConfigError, match="parquet_gene_table"):
        load_config(write_config(**{"huggingface.input_format": "tahoe_parquet"}))
