"""The native MDS writer against the real mosaicml-streaming writer and reader."""

from __future__ import annotations

import json
import sys

import numpy as np
import pyarrow as pa
import pytest

from cellcorpus.errors import ConfigError
from cellcorpus.formats.mds import (
    MdsSpec,
    ShardWriter,
    TorchPickler,
    encode_samples,
    hash_bytes,
    merge_split_index,
)
from tests.streaming_compat import import_streaming, streaming_dataset


def _table(n=300, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 700, n)  # crosses the uint8/uint16 shape-header boundary
    offsets = np.zeros(n + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    genes = rng.integers(0, 60000, offsets[-1]).astype(np.int32)
    exprs = rng.random(offsets[-1]).astype(np.float32)
    return pa.table(
        {
            "genes": pa.ListArray.from_arrays(pa.array(offsets), pa.array(genes)),
            "expressions": pa.ListArray.from_arrays(pa.array(offsets), pa.array(exprs)),
            "id": pa.array(np.arange(n, dtype=np.int64) * 7),
            "drug": pa.array([f"drug-{i % 5}-é" for i in range(n)]),
        }
    )


COLUMNS = {"genes": "ndarray:int32", "expressions": "ndarray:float32", "id": "int64", "drug": "str"}


def _write_native(tmp_path, table, columns, compression, size_limit=1 << 16, hashes=("sha1", "xxh64")):
    spec = MdsSpec.create(columns, compression, list(hashes), size_limit)
    pickler = TorchPickler() if "pkl" in columns.values() else None
    w = ShardWriter(tmp_path, spec)
    for start in range(0, table.num_rows, 97):  # odd batches: shards must not depend on batching
        w.add(encode_samples(table.slice(start, 97), spec, pickler))
    return w.finish()


def _write_reference(tmp_path, table, columns, compression, size_limit=1 << 16):
    streaming = import_streaming()
    with streaming.MDSWriter(
        out=str(tmp_path), columns=columns, compression=compression, hashes=["sha1", "xxh64"], size_limit=size_limit
    ) as w:
        for row in table.to_pylist():
            sample = dict(row)
            sample["genes"] = np.array(row["genes"], np.int32)
            sample["expressions"] = np.array(row["expressions"], np.float32)
            w.write(sample)
    return json.loads((tmp_path / "index.json").read_text())


def test_shard_hashes_span_pieces_and_windows(tmp_path):
    # shards of ~1 MB from batches of ~270 KB: the hashes are fed in 256 KB windows that cross batch pieces;
    # the compressed file is hashed window by window as it is written
    table = _table(n=600, seed=3)
    ours = _write_native(tmp_path / "ours", table, COLUMNS, "zstd", size_limit=1 << 20)
    ref = _write_reference(tmp_path / "ref", table, COLUMNS, "zstd", size_limit=1 << 20)
    assert len(ours["shards"]) >= 2 and ours["shards"][0]["raw_data"]["bytes"] > 3 * (256 << 10)
    assert [s["raw_data"] for s in ours["shards"]] == [s["raw_data"] for s in ref["shards"]]
    assert ours["shards"][0]["zip_data"]["bytes"] > 256 << 10  # the compressed file is written in windows too
    for s in ours["shards"]:  # the compressed file's hashes: of the bytes on disk
        data = (tmp_path / "ours" / s["zip_data"]["basename"]).read_bytes()
        assert s["zip_data"]["hashes"] == {a: hash_bytes(a, data) for a in ("sha1", "xxh64")}


@pytest.mark.parametrize("compression", [None, "zstd"])
def test_shard_bytes_equal_mdswriter(tmp_path, compression):
    table = _table()
    ours = _write_native(tmp_path / "ours", table, COLUMNS, compression)
    ref = _write_reference(tmp_path / "ref", table, COLUMNS, compression)
    assert len(ours["shards"]) == len(ref["shards"]) > 3
    for a, b in zip(ours["shards"], ref["shards"], strict=True):
        assert a["raw_data"] == b["raw_data"]  # same uncompressed bytes: same size and hashes
        assert a["samples"] == b["samples"]
        assert {k: v for k, v in a.items() if k not in ("raw_data", "zip_data")} == {
            k: v for k, v in b.items() if k not in ("raw_data", "zip_data")
        }
    if compression is None:
        for s in ours["shards"]:
            name = s["raw_data"]["basename"]
            assert (tmp_path / "ours" / name).read_bytes() == (tmp_path / "ref" / name).read_bytes()
    else:
        from cellcorpus.formats.mds import decompress

        for s in ours["shards"]:
            raw = decompress((tmp_path / "ours" / s["zip_data"]["basename"]).read_bytes())
            import zstandard

            ref_raw = zstandard.ZstdDecompressor().decompress(
                (tmp_path / "ref" / s["zip_data"]["basename"]).read_bytes()
            )
            assert raw == ref_raw


def test_streaming_dataset_reads_ndarray_and_pkl(tmp_path):
    torch = pytest.importorskip("torch")
    table = _table(n=120)
    for name, columns in (
        ("nd", COLUMNS),
        ("pkl", {"genes": "pkl", "expressions": "pkl", "id": "int64", "drug": "str"}),
    ):
        out = tmp_path / name / "train"
        _write_native(out / "00000", table.slice(0, 50), columns, "zstd")
        _write_native(out / "00001", table.slice(50), columns, "zstd")
        merge_split_index(out, ["00000", "00001"])
        ds = streaming_dataset(str(out))
        assert len(ds) == 120
        rows = table.to_pylist()
        for i in range(120):
            s = ds[i]
            assert s["id"] == rows[i]["id"] and s["drug"] == rows[i]["drug"]
            if name == "nd":
                assert isinstance(s["genes"], np.ndarray) and s["genes"].dtype == np.int32
                assert s["expressions"].dtype == np.float32
            else:
                assert isinstance(s["genes"], torch.Tensor) and s["genes"].dtype == torch.int64
                assert s["expressions"].dtype == torch.float32 and s["genes"].dim() == 1
            assert np.asarray(s["genes"]).tolist() == rows[i]["genes"]
            assert np.allclose(np.asarray(s["expressions"]), rows[i]["expressions"])


def test_pkl_bytes_identical_across_processes(tmp_path):
    import subprocess

    code = (
        "import numpy as np, sys; from cellcorpus.formats.mds import TorchPickler;"
        "sys.stdout.buffer.write(TorchPickler().dumps(np.arange(9, dtype=np.int64)))"
    )
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, check=True).stdout for _ in range(2)}
    assert len(outs) == 1


@pytest.mark.parametrize(
    "columns, compression, hashes, message",
    [
        ({"genes": "jpeg"}, "zstd", [], r"mds\.columns\.genes: encoding 'jpeg' is not supported"),
        ({"genes": "ndarray:complex64"}, "zstd", [], r"encoding 'ndarray:complex64' is not supported"),
        ({"id": "int64"}, "lz4", [], r"mds\.compression: 'lz4' is not supported"),
        ({"id": "int64"}, "zstd", ["xxh64", "sha1"], r"mds\.hashes: must be sorted"),
        ({"id": "int64"}, "zstd", ["md42"], r"unknown hash algorithm 'md42'"),
    ],
)
def test_bad_writer_settings_are_clear(columns, compression, hashes, message):
    with pytest.raises(ConfigError, match=message):
        MdsSpec.create(columns, compression, hashes, 1 << 26)


def test_column_missing_from_dataset_is_named():
    spec = MdsSpec.create({"genes": "ndarray:int32", "tissue": "str"}, None, [], 1 << 26)
    with pytest.raises(ConfigError, match=r"\['tissue'\] not in the dataset"):
        encode_samples(_table(5), spec, None)


@pytest.mark.parametrize("dtype", [np.int64, np.float32])
def test_pkl_template_equals_a_real_pickle_at_every_framing_boundary(dtype):
    """The vectorised pkl encoder splices raw bytes into a per-length template: it must equal the pickle."""
    pytest.importorskip("torch")
    from cellcorpus.formats.mds import TorchPickler

    p = TorchPickler()
    rng = np.random.default_rng(1)
    for n in [0, 1, 255, 256, 8191, 8192, 8193, 16383, 16384, 70_000]:
        a = rng.integers(0, 60_000, n).astype(dtype)
        prefix, suffix = p.template(np.dtype(dtype), n)
        assert prefix + a.tobytes() + suffix == p.dumps(a), n


def test_pkl_bytes_equal_the_c_pickler_with_real_torch_objects():
    """Written without torch, read with it: the bytes are what `pickle.dumps` writes for torch's own objects
    (torch's storage-by-address key replaced by "0"), and they load as the same tensor."""
    torch = pytest.importorskip("torch")
    import io
    import pickle
    from collections import OrderedDict

    from torch._utils import _rebuild_tensor_v2
    from torch.storage import _load_from_bytes

    from cellcorpus.formats.mds import TorchPickler

    class Storage:
        def __init__(self, stype, n):
            self.pid = ("storage", stype, "0", "cpu", n, None)

    class StoragePickler(pickle.Pickler):
        def persistent_id(self, obj):
            return obj.pid if isinstance(obj, Storage) else None

    class Call:
        def __init__(self, fn, args):
            self.fn, self.args = fn, args

        def __reduce__(self):
            return self.fn, self.args

    p = TorchPickler()
    head = p._head  # the legacy torch.save preamble (magic, protocol, sys info)
    for dtype, stype, tdtype in (
        (np.int64, torch.LongStorage, torch.int64),
        (np.float32, torch.FloatStorage, torch.float32),
    ):
        for n in (0, 1, 300, 70_000):
            a = np.random.default_rng(n).integers(0, 60_000, n).astype(dtype)
            buf = io.BytesIO()
            StoragePickler(buf, protocol=2).dump(Storage(stype, n))
            payload = head + buf.getvalue() + pickle.dumps(["0"], protocol=2) + np.int64(n).tobytes() + a.tobytes()
            tensor = Call(_rebuild_tensor_v2, (Call(_load_from_bytes, (payload,)), 0, (n,), (1,), False, OrderedDict()))
            assert p.dumps(a) == pickle.dumps(tensor, protocol=4), (dtype, n)
            prefix, suffix = p.template(np.dtype(dtype), n)
            loaded = pickle.loads(prefix + a.tobytes() + suffix)
            assert loaded.dtype == tdtype and loaded.tolist() == a.tolist()


def test_writing_pkl_does_not_import_torch(tmp_path):
    import subprocess

    code = (
        "import sys, pyarrow as pa; from cellcorpus.formats.mds import MdsSpec, TorchPickler, encode_samples;"
        "spec = MdsSpec.create({'genes': 'pkl'}, 'zstd', [], 1 << 26);"
        "t = pa.table({'genes': pa.array([[1, 2], [3]], pa.list_(pa.int32()))});"
        "encode_samples(t, spec, TorchPickler()); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, text=True).stdout
    assert out.strip() == "False"
