"""Geneformer's lengths file, streamed: `pickle.load` gives exactly the list `pickle.dump` of the lengths would."""

from __future__ import annotations

import pickle

import pyarrow as pa
import pytest

from cellcorpus.formats.lengths import write_lengths


def _stream(path, values):
    table = pa.table({"length": pa.array(values, pa.int64())})
    with pa.OSFile(str(path), "wb") as f, pa.ipc.new_stream(f, table.schema) as w:
        for batch in table.to_batches(max_chunksize=700):  # batches that do not line up with the 1000 per APPENDS
            w.write_batch(batch)


@pytest.mark.parametrize("top", [4096, 70_000])  # BININT2 and BININT values
def test_lengths_file_loads_as_the_list(tmp_path, top):
    parts = [list(range(0, 2500)), [], [top, 1, 0, 65535, 65536][: 5 if top > 65535 else 4]]
    files = []
    for k, values in enumerate(parts):
        files.append(tmp_path / f"data-{k}.arrow")
        _stream(files[-1], values)
    dest = tmp_path / "train_lengths.pkl"
    assert write_lengths(files, "length", dest) == sum(map(len, parts))
    got = pickle.loads(dest.read_bytes())
    assert got == [v for values in parts for v in values] and all(type(v) is int for v in got)
    assert not list(tmp_path.glob(".*tmp*"))


def test_an_empty_split_is_an_empty_list(tmp_path):
    _stream(tmp_path / "d.arrow", [])
    write_lengths([tmp_path / "d.arrow"], "length", tmp_path / "x.pkl")
    assert pickle.loads((tmp_path / "x.pkl").read_bytes()) == []


def test_a_bad_length_fails_and_leaves_nothing(tmp_path):
    _stream(tmp_path / "d.arrow", [3, -1])
    with pytest.raises(ValueError, match="outside"):
        write_lengths([tmp_path / "d.arrow"], "length", tmp_path / "x.pkl")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.arrow"]  # no file, no temporary
