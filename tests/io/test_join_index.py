"""Large join tables: the on-disk index gives exactly what the in-memory join gives, without loading the table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cellcorpus.io import join_index as ji
from cellcorpus.io.tables import load_table, lookup


def _table(path: Path, n: int = 3_000) -> pd.DataFrame:
    """Keys with spaces, duplicates and nulls; an integer column whose only null is in the last row group
    (pandas reads the whole column as float: '1.0'), floats, booleans and strings."""
    rng = np.random.default_rng(0)
    keys = np.array([f"BC{i:05d}" for i in range(n)], dtype=object)
    keys[5] = " BC00001 "  # a duplicate of row 1 once stripped: the first is kept
    keys[7] = None
    ints = pd.array(rng.integers(0, 9, n), dtype="Int64")
    ints[n - 2] = pd.NA
    df = pd.DataFrame({
        "BARCODE_SUB_LIB_ID": keys,
        "plate": ints,
        "score": rng.random(n),
        "full": rng.random(n) > 0.5,
        "pass_filter": np.where(rng.random(n) > 0.1, "full", "minimal"),
    })  # fmt: skip
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path, row_group_size=500)
    return df


@pytest.mark.parametrize("hash_bits", [64, 2])  # 2: distinct keys share hashes, the slow path resolves them
def test_index_lookup_equals_the_in_memory_join(tmp_path, monkeypatch, hash_bits):
    path = tmp_path / "obs_metadata.parquet"
    df = _table(path)
    monkeypatch.setattr(ji, "_PART_ROWS", 400)  # 8 partitions
    monkeypatch.setattr(ji, "_BATCH_ROWS", 700)  # batches across row groups; the null in the last one only
    if hash_bits < 64:
        real = ji._hash
        monkeypatch.setattr(ji, "_hash", lambda k: real(k) & ~np.uint64((1 << 62) - 1))  # 4 distinct hashes
    cols = ["plate", "score", "full", "pass_filter"]
    index = ji.build_join_index(str(path), "BARCODE_SUB_LIB_ID", cols, tmp_path / "idx")
    assert index.bits == 3 and sorted(p.name for p in (tmp_path / "idx").iterdir())[-1] == "index.json"
    queries = np.array(["BC00001", " BC00002", "BC02999", "nope", "", "BC00005", "BC00007", 17], dtype=object)
    queries = np.concatenate([queries, np.array([f"BC{i:05d}" for i in range(0, 3_000, 7)], dtype=object)])
    got = index.lookup(queries)
    want = lookup(*load_table(str(path), "BARCODE_SUB_LIB_ID", cols), queries)
    for c in cols:
        assert got[c].tolist() == want[c].tolist(), c
    # BC00001 is row 1's (not row 5's, the duplicate), its integer as pandas reads the whole table: a float
    assert got["plate"][0] == f"{float(df['plate'][1])}" and got["pass_filter"][0] == df["pass_filter"][1]
    assert got["score"][3] == "" and got["plate"][5] == ""  # no such key; BC00005's row holds BC00001


def test_only_tables_over_the_threshold_are_indexed(tmp_path, monkeypatch):
    path = tmp_path / "t.parquet"
    _table(path, 100)
    assert not ji.is_large_table(str(path))
    monkeypatch.setattr(ji, "INDEX_ROWS", 99)
    assert ji.is_large_table(str(path))
    assert not ji.is_large_table(str(tmp_path / "t.csv"))  # CSV tables are loaded whole
    with pytest.raises(Exception, match=r"no column\(s\) \['nope'\]"):
        ji.build_join_index(str(path), "BARCODE_SUB_LIB_ID", ["nope"], tmp_path / "idx")
