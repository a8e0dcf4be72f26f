"""The Arrow writer's gathers: rows in any order, from many chunks, with the CLS prefix put in on the way."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from cellcorpus.encodings import column_specs
from cellcorpus.encodings.tahoe_x1 import TahoeX1
from cellcorpus.formats.arrow import cell_schema, read_arrow, write_stream
from cellcorpus.manifest import file_checksum


def _table(lengths: list[int], start: int = 0) -> pa.Table:
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    genes = np.arange(start, start + offsets[-1], dtype=np.int32) + 10
    cols = [
        pa.ListArray.from_arrays(pa.array(offsets), pa.array(genes)),
        pa.ListArray.from_arrays(pa.array(offsets), pa.array(genes.astype(np.float32) / 2)),
        pa.array(np.arange(len(lengths), dtype=np.int64) + start),
        pa.array([f"c{i + start}" for i in range(len(lengths))]),
    ]
    return pa.Table.from_arrays(cols, schema=cell_schema(column_specs(TahoeX1), ["name"]))


def test_rows_from_many_chunks_equal_arrows_own_take(tmp_path):
    rng = np.random.default_rng(0)
    pieces = [_table(list(rng.integers(0, 6, 700)), start=k * 10_000) for k in range(5)]
    table = pa.concat_tables([pa.Table.from_batches(p.to_batches(max_chunksize=300)) for p in pieces])
    for rows in (rng.permutation(table.num_rows), np.sort(rng.choice(table.num_rows, 2000, replace=False))):
        written = write_stream(tmp_path / "out.arrow", table, rows=rows)
        assert read_arrow(tmp_path / "out.arrow").equals(table.take(pa.array(rows)).combine_chunks())
        assert written.xxh64 == file_checksum(tmp_path / "out.arrow")  # hashed on the way out = the file


@pytest.mark.parametrize("lengths", [[3, 0, 2, 1], [0, 0, 0]])
def test_prefix_is_the_first_value_of_every_list(tmp_path, lengths):
    table = _table(lengths)
    rows = np.array([2, 0, 1])[: len(lengths)]
    written = write_stream(tmp_path / "p.arrow", table, rows=rows, prefix={"genes": 1, "expressions": -2.0})
    got = read_arrow(tmp_path / "p.arrow").to_pylist()
    want = table.take(pa.array(rows)).to_pylist()
    assert written.rows == len(rows)
    assert [g["genes"] for g in got] == [[1, *w["genes"]] for w in want]
    assert [g["expressions"] for g in got] == [[-2.0, *w["expressions"]] for w in want]
    assert [g["name"] for g in got] == [w["name"] for w in want]


def test_large_batches_hashed_in_windows_equal_the_file(tmp_path):
    # a batch's genes buffer is ~2.4 MB: written (and hashed) in 256 KB windows, the file and hash still whole
    table = _table([600] * 2500)
    written = write_stream(tmp_path / "big.arrow", table)
    assert written.rows == 2500
    assert read_arrow(tmp_path / "big.arrow").equals(table)
    assert written.xxh64 == file_checksum(tmp_path / "big.arrow")


def test_rows_of_a_sliced_table_with_prefix(tmp_path):
    # a slice keeps its parent's buffers (list offsets not starting at 0): the gathered lists are the slice's own
    rng = np.random.default_rng(4)
    table = _table(list(rng.integers(0, 40, 900))).slice(123, 500)
    rows = rng.permutation(500)
    write_stream(tmp_path / "s.arrow", table, rows=rows, prefix={"genes": 7, "expressions": 0.5})
    got = read_arrow(tmp_path / "s.arrow")
    want = table.take(pa.array(rows)).to_pylist()
    assert [g["genes"] for g in got.to_pylist()] == [[7, *w["genes"]] for w in want]
    assert [g["expressions"] for g in got.to_pylist()] == [[0.5, *w["expressions"]] for w in want]
    assert got.column("id").to_pylist() == [w["id"] for w in want]


def test_lists_past_2_gib_of_bytes_take_the_wide_path(tmp_path, monkeypatch):
    # byte offsets beyond int32 switch the gather to large_binary; the limit is lowered to reach that path
    import cellcorpus.formats.arrow as arrow

    table = _table([30, 0, 12, 50, 7])
    rows = np.array([3, 0, 4, 1, 2])
    monkeypatch.setattr(arrow, "_INT32_MAX", 64)
    write_stream(tmp_path / "w.arrow", table, rows=rows, prefix={"genes": 1, "expressions": -2.0})
    got = read_arrow(tmp_path / "w.arrow").to_pylist()
    want = table.take(pa.array(rows)).to_pylist()
    assert [g["genes"] for g in got] == [[1, *w["genes"]] for w in want]
    assert [g["expressions"] for g in got] == [[-2.0, *w["expressions"]] for w in want]
