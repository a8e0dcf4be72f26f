"""MosaicML MDS (format version 2) written natively, vectorised with Arrow compute.

Why not `streaming.MDSWriter`: it pins numpy<2.2 / transformers<5, imports torchvision, and
encodes sample by sample in Python. The layout written here is the one its reader expects:

shard (raw) = uint32 n | uint32 offsets[n + 1] (absolute) | shard config JSON | samples
sample      = uint32 size of each variable-size column (columns sorted by name) | column bytes...
index.json  = {"shards": [{column_*, compression, format, hashes, raw_data, samples, size_limit,
               version, zip_data}], "version": 2}; a merged split index prefixes basenames with
               the writer's sub-folder (as `streaming.base.util.merge_index` does).

Per-column encodings become one Arrow binary array per batch (zero-copy for ndarray values,
scalars and strings); `binary_join_element_wise` then interleaves columns sample by sample in C++.
Only `pkl` needs Python per sample (a pickle per value is what the format is).
"""

from __future__ import annotations

import hashlib
import json
import pickle
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash
import zstandard
from numpy.typing import NDArray

from cellcorpus.errors import ConfigError, MissingExtraError
from cellcorpus.io.atomic import atomic_path, write_json_atomic

__all__ = [
    "MdsSpec",
    "ShardWriter",
    "encode_samples",
    "merge_split_index",
    "hash_bytes",
    "decompress",
    "parse_shard",
    "decode_value",
    "SCALAR_DTYPES",
]

SCALAR_DTYPES = {
    "uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64,
    "int8": np.int8, "int16": np.int16, "int32": np.int32, "int64": np.int64,
    "float16": np.float16, "float32": np.float32, "float64": np.float64,
}  # fmt: skip
_NDARRAY_DTYPE_CODES = {
    "uint8": 8, "int8": 9, "uint16": 16, "int16": 17, "float16": 18, "uint32": 32,
    "int32": 33, "float32": 34, "uint64": 64, "int64": 65, "float64": 66,
}  # fmt: skip
_VARIABLE = ("str", "str_int", "str_float", "json", "pkl", "ndarray")
# What the Tahoe-x1 collator consumes for pkl list columns: torch tensors of these dtypes.
PKL_TENSOR_DTYPES = {"genes": np.int64, "expressions": np.float32}
_XXH = {"xxh32": xxhash.xxh32, "xxh64": xxhash.xxh64, "xxh128": xxhash.xxh128, "xxh3_64": xxhash.xxh3_64,
        "xxh3_128": xxhash.xxh3_128}  # fmt: skip


def hash_bytes(algo: str, data: bytes | memoryview) -> str:
    """Hex digest as mosaicml-streaming records it (hashlib names or xxhash names)."""
    if algo in _XXH:
        return _XXH[algo](data).hexdigest()
    return hashlib.new(algo, data).hexdigest()


def _valid_hash(algo: str) -> bool:
    return algo in _XXH or (algo in hashlib.algorithms_available and not algo.startswith("shake_"))


def _parse_compression(compression: str | None) -> int | None:
    """Zstd level from 'zstd' / 'zstd:N' (streaming's default level is 3); None = no compression."""
    if not compression:
        return None
    name, _, level = compression.partition(":")
    if name != "zstd":
        raise ConfigError(f"mds.compression: '{compression}' is not supported", hint="use zstd or zstd:LEVEL (1-22)")
    lvl = int(level) if level else 3
    if not 1 <= lvl <= 22:
        raise ConfigError(f"mds.compression: zstd level must be 1..22, got {lvl}")
    return lvl


def decompress(data: bytes) -> bytes:
    """Undo zstd compression of one shard."""
    return zstandard.ZstdDecompressor().decompress(data)


def _column_size(encoding: str) -> int | None:
    """Fixed byte size of an encoding, or None when variable (as MDS's `get_mds_encoded_size`)."""
    if encoding in SCALAR_DTYPES:
        return np.dtype(SCALAR_DTYPES[encoding]).itemsize
    if encoding.startswith("ndarray:"):
        parts = encoding.split(":")
        if len(parts) == 3:
            return int(np.prod([int(x) for x in parts[2].split(",")])) * np.dtype(parts[1]).itemsize
    return None


def _check_encoding(name: str, encoding: str) -> None:
    if encoding in SCALAR_DTYPES or encoding in _VARIABLE:
        return
    if encoding.startswith("ndarray:"):
        parts = encoding.split(":")
        if len(parts) == 2 and parts[1] in _NDARRAY_DTYPE_CODES:
            return
    supported = "ndarray:<dtype>, pkl, str, str_int, str_float, json, " + ", ".join(SCALAR_DTYPES)
    raise ConfigError(f"mds.columns.{name}: encoding '{encoding}' is not supported", hint=f"use one of: {supported}")


@dataclass(frozen=True)
class MdsSpec:
    """Validated writer settings: columns sorted by name (the MDS convention), compression, hashes."""

    columns: tuple[tuple[str, str], ...]
    compression: str | None
    hashes: tuple[str, ...]
    size_limit: int

    @classmethod
    def create(cls, columns: dict[str, str], compression: str | None, hashes: list[str], size_limit: int) -> MdsSpec:
        """Validate every setting eagerly (bad value named) and return the writer spec."""
        for name, enc in columns.items():
            _check_encoding(name, enc)
        _parse_compression(compression)
        for algo in hashes:
            if not _valid_hash(algo):
                raise ConfigError(f"mds.hashes: unknown hash algorithm '{algo}'")
        if list(hashes) != sorted(hashes):
            raise ConfigError(f"mds.hashes: must be sorted (MDS requirement), got {hashes}", hint=f"{sorted(hashes)}")
        if not 0 < size_limit < 1 << 32:
            raise ConfigError(f"mds.size_limit: must be in (0, 2**32), got {size_limit}")
        if "pkl" in columns.values():
            _require_torch()
        return cls(tuple(sorted(columns.items())), compression or None, tuple(hashes), size_limit)

    def config(self) -> dict[str, Any]:
        """The shard config MDS stores in each shard and index entry."""
        return {
            "column_encodings": [e for _, e in self.columns],
            "column_names": [n for n, _ in self.columns],
            "column_sizes": [_column_size(e) for _, e in self.columns],
            "compression": self.compression,
            "format": "mds",
            "hashes": list(self.hashes),
            "size_limit": self.size_limit,
            "version": 2,
        }

    def config_bytes(self) -> bytes:
        """The shard config as the JSON bytes written into each raw shard."""
        return json.dumps(self.config(), sort_keys=True).encode("utf-8")


# ---- torch-tensor pickles ----------------------------------------------------------------------
def _require_torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise MissingExtraError(
            "the 'pkl' MDS encoding writes torch tensors, but torch is not installed",
            hint="pip install 'cellcorpus[torch]' (CPU: pip install torch==2.13.0), or use ndarray:int32 / "
            "ndarray:float32, the pickle-free encodings",
        ) from exc
    return torch


class _TorchPickle:
    """Pickles byte-compatible with `pickle.dumps(torch.from_numpy(a))`, except the storage key.

    torch keys a pickled storage by its memory address, so its own pickles differ from run to run.
    Here the legacy `torch.save` payload is written by hand with the fixed key "0": same loader
    calls (`_rebuild_tensor_v2(_load_from_bytes(payload), ...)`), byte-identical across reruns.
    """

    _MAGIC = 0x1950A86A20F9469CFC6C
    _SYS_INFO = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}

    def __init__(self) -> None:
        torch = _require_torch()
        from torch._utils import _rebuild_tensor_v2
        from torch.storage import _load_from_bytes

        self._storage_types = {np.dtype(np.int64): torch.LongStorage, np.dtype(np.float32): torch.FloatStorage}
        self._head = b"".join(pickle.dumps(x, protocol=2) for x in (self._MAGIC, 1001, self._SYS_INFO))
        self._keys = pickle.dumps(["0"], protocol=2)
        self._rebuild = _rebuild_tensor_v2
        self._load = _load_from_bytes

    def _payload(self, arr: NDArray[Any]) -> bytes:
        import io

        stype = self._storage_types[arr.dtype]
        buf = io.BytesIO()
        p = _StoragePickler(buf, protocol=2)
        p.storage_id = ("storage", stype, "0", "cpu", len(arr), None)
        p.dump(_STORAGE)
        return self._head + buf.getvalue() + self._keys + np.int64(len(arr)).tobytes() + arr.tobytes()

    def dumps(self, arr: NDArray[Any]) -> bytes:
        storage = _Reduce(self._load, (self._payload(arr),))
        tensor = _Reduce(self._rebuild, (storage, 0, (len(arr),), (1,), False, OrderedDict()))
        return pickle.dumps(tensor, protocol=4)


_STORAGE = object()


class _StoragePickler(pickle.Pickler):
    """Pickles the storage placeholder as a persistent id, as `torch.save`'s legacy format does."""

    storage_id: tuple[Any, ...] = ()

    def persistent_id(self, obj: Any) -> Any:
        return self.storage_id if obj is _STORAGE else None


class _Reduce:
    __slots__ = ("fn", "args")

    def __init__(self, fn: Any, args: tuple[Any, ...]) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self) -> tuple[Any, ...]:
        return self.fn, self.args


# ---- column encoders (batch -> one binary element per sample) -----------------------------------
def _binary(offsets: NDArray[Any], data: NDArray[Any]) -> pa.Array:
    n = len(offsets) - 1
    return pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data)])


def _list_parts(col: pa.ChunkedArray | pa.Array) -> tuple[NDArray[Any], NDArray[Any]]:
    """(offsets from 0, flat values) of a list column, honouring slices."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    offsets = arr.offsets.to_numpy()
    values = arr.values.to_numpy(zero_copy_only=False)[offsets[0] : offsets[-1]]
    return offsets - offsets[0], values


def _ndarray_column(col: pa.Array, dtype: np.dtype[Any], dynamic_dtype: bool, name: str) -> pa.Array:
    offsets, values = _list_parts(col)
    values = values.astype(dtype, copy=False)
    lengths = np.diff(offsets)
    if lengths.size and lengths.min() == 0:
        raise ValueError(f"column '{name}': a sample has 0 elements; MDS ndarray cannot store empty arrays")
    # header: [dtype code if dynamic] [(ndim=1)<<2 | shape dtype code] [length as uint8/16/32/64]
    code = np.select([lengths < 1 << 8, lengths < 1 << 16, lengths < 1 << 32], [0, 1, 2], 3)
    hlen = (1 << code) + 1 + int(dynamic_dtype)
    cand = np.zeros((len(lengths), 10), dtype=np.uint8)
    k = 0
    if dynamic_dtype:
        cand[:, 0] = _NDARRAY_DTYPE_CODES[dtype.name]
        k = 1
    cand[:, k] = (1 << 2) | code
    cand[:, k + 1 : k + 9] = lengths.astype("<u8").view(np.uint8).reshape(-1, 8)
    head = cand[np.arange(10)[None, :] < hlen[:, None]]
    head_off = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(hlen, out=head_off[1:])
    item = dtype.itemsize
    body = _binary(offsets * item, values.view(np.uint8))
    return pc.binary_join_element_wise(_binary(head_off, head), body, b"")


def _scalar_column(col: pa.Array, dtype: type) -> pa.Array:
    values = np.ascontiguousarray(col.to_numpy(zero_copy_only=False).astype(dtype, copy=False))
    size = values.dtype.itemsize
    return _binary(np.arange(len(values) + 1, dtype=np.int64) * size, values.view(np.uint8))


def _str_column(col: pa.Array) -> pa.Array:
    return pc.cast(pc.fill_null(pc.cast(col, pa.string()), ""), pa.binary())


def _python_column(values: list[Any], fn: Any) -> pa.Array:
    return pa.array([fn(v) for v in values], type=pa.binary())


def encode_column(name: str, encoding: str, col: pa.Array, pickler: _TorchPickle | None) -> pa.Array:
    """One binary element per sample holding the column's MDS bytes for that sample."""
    is_list = pa.types.is_list(col.type) or pa.types.is_large_list(col.type)
    if encoding.startswith("ndarray"):
        if not is_list:
            raise ConfigError(f"mds.columns.{name}: ndarray needs a list column, '{name}' is {col.type}")
        dtype = np.dtype(encoding.split(":")[1]) if ":" in encoding else np.dtype(col.type.value_type.to_pandas_dtype())
        return _ndarray_column(col, dtype, ":" not in encoding, name)
    if encoding in SCALAR_DTYPES:
        if is_list:
            raise ConfigError(f"mds.columns.{name}: scalar encoding '{encoding}' on list column '{name}'")
        return _scalar_column(col, SCALAR_DTYPES[encoding])
    if encoding == "str":
        return _str_column(col)
    if encoding in ("str_int", "str_float"):
        return _str_column(pc.cast(col, pa.string()))
    if encoding == "json":
        return _python_column(col.to_pylist(), lambda v: json.dumps(v).encode())
    # pkl: list columns become 1-D torch tensors (dtype per PKL_TENSOR_DTYPES), scalars plain pickles.
    if is_list:
        assert pickler is not None
        offsets, values = _list_parts(col)
        values = values.astype(PKL_TENSOR_DTYPES.get(name, values.dtype), copy=False)
        return _python_column([values[a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)], pickler.dumps)
    return _python_column(col.to_pylist(), pickle.dumps)


def encode_samples(batch: pa.Table, spec: MdsSpec, pickler: _TorchPickle | None) -> pa.Array:
    """Encode a batch: element i = sample i's complete MDS bytes (sizes header + columns)."""
    n = batch.num_rows
    missing = [c for c, _ in spec.columns if c not in batch.column_names]
    if missing:
        raise ConfigError(
            f"mds.columns: {missing} not in the dataset", hint=f"dataset columns: {', '.join(batch.column_names)}"
        )
    encoded = [encode_column(c, e, batch.column(c).combine_chunks(), pickler) for c, e in spec.columns]
    var = [arr for arr, (_, e) in zip(encoded, spec.columns, strict=True) if _column_size(e) is None]
    if var:
        sizes = np.stack([pc.binary_length(a).to_numpy().astype("<u4") for a in var], axis=1)
        head = _binary(np.arange(n + 1, dtype=np.int64) * 4 * len(var), np.ascontiguousarray(sizes).view(np.uint8))
        encoded = [head, *encoded]
    return pc.binary_join_element_wise(*encoded, b"")


# ---- shard writer ---------------------------------------------------------------------------------
class ShardWriter:
    """Pack encoded samples into shards under `directory` with MDSWriter's size rule, then index.json."""

    def __init__(self, directory: str | Path, spec: MdsSpec) -> None:
        self.dir = Path(directory)
        self.spec = spec
        self._config = spec.config_bytes()
        self._level = _parse_compression(spec.compression)
        self._compressor = zstandard.ZstdCompressor(level=self._level) if self._level else None
        self._pending: list[pa.Array] = []
        self._pending_size = 0  # as MDSWriter: 4 + 4 + len(config) + sum(sample + 4)
        self._base = 8 + len(self._config)
        self.shards: list[dict[str, Any]] = []
        self.n_samples = 0

    def add(self, samples: pa.Array) -> None:
        """Add encoded samples; a shard is flushed when the next sample would exceed size_limit."""
        sizes = pc.binary_length(samples).to_numpy().astype(np.int64) + 4
        start = 0
        while start < len(sizes):
            room = self.spec.size_limit - self._base - self._pending_size
            cum = np.cumsum(sizes[start:])
            take = int(np.searchsorted(cum, room, side="right"))
            if take == 0:
                if self._pending:
                    self._flush()
                    continue
                take = 1  # one sample larger than the limit gets a shard of its own
            self._pending.append(samples.slice(start, take))
            self._pending_size += int(cum[take - 1])
            start += take
            if start < len(sizes):
                self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        samples = pa.concat_arrays(self._pending)
        n = len(samples)
        _, off_buf, data_buf = samples.buffers()
        offsets = np.frombuffer(off_buf, np.int32)[samples.offset : samples.offset + n + 1].astype(np.int64)
        body = memoryview(data_buf)[offsets[0] : offsets[-1]].tobytes()
        abs_offsets = (offsets - offsets[0] + 4 + 4 * (n + 1) + len(self._config)).astype("<u4")
        raw = np.uint32(n).tobytes() + abs_offsets.tobytes() + self._config + body
        i = len(self.shards)
        raw_name = f"shard.{i:05d}.mds"
        raw_info = self._info(raw, raw_name)
        zip_info = None
        data, name = raw, raw_name
        if self._compressor is not None:
            data = self._compressor.compress(raw)
            name = f"{raw_name}.zstd"
            zip_info = self._info(data, name)
        with atomic_path(self.dir / name) as tmp:
            tmp.write_bytes(data)
        self.shards.append({"samples": n, "raw_data": raw_info, "zip_data": zip_info, **self.spec.config()})
        self.n_samples += n
        self._pending, self._pending_size = [], 0

    def _info(self, data: bytes, basename: str) -> dict[str, Any]:
        return {"basename": basename, "bytes": len(data), "hashes": {a: hash_bytes(a, data) for a in self.spec.hashes}}

    def finish(self) -> dict[str, Any]:
        """Flush the last shard and write this writer's index.json (atomically, last)."""
        self._flush()
        index = {"shards": self.shards, "version": 2}
        with atomic_path(self.dir / "index.json") as tmp:
            tmp.write_text(json.dumps(index, sort_keys=True))
        return index


def merge_split_index(split_dir: str | Path, sub_dirs: list[str], indexes: list[dict[str, Any]] | None = None) -> int:
    """Write `<split>/index.json` from the writers' indexes, basenames prefixed by sub-folder.

    `indexes` (one per sub-folder) may be passed when they are not on local disk (remote outputs).
    Returns the number of samples in the split.
    """
    split_dir = Path(split_dir)
    if indexes is None:
        indexes = [json.loads((split_dir / sub / "index.json").read_text()) for sub in sub_dirs]
    shards = []
    for sub, index in zip(sub_dirs, indexes, strict=True):
        for shard in index["shards"]:
            for key in ("raw_data", "zip_data"):
                if shard.get(key):
                    shard[key]["basename"] = f"{sub}/{shard[key]['basename']}"
            shards.append(shard)
    write_json_atomic(split_dir / "index.json", {"shards": shards, "version": 2})
    return sum(s["samples"] for s in shards)


# ---- reading (verify) -------------------------------------------------------------------------------
def parse_shard(raw: bytes) -> tuple[dict[str, Any], NDArray[Any]]:
    """(shard config, absolute sample offsets) from raw shard bytes; raises ValueError if malformed."""
    if len(raw) < 8:
        raise ValueError("shard shorter than its header")
    n = int(np.frombuffer(raw[:4], "<u4")[0])
    end = 4 + 4 * (n + 1)
    if end > len(raw):
        raise ValueError(f"header claims {n} samples, more than the shard holds")
    offsets = np.frombuffer(raw[4:end], "<u4").astype(np.int64)
    config = json.loads(raw[end : offsets[0]].decode("utf-8"))
    if np.any(np.diff(offsets) < 0) or offsets[-1] != len(raw):
        raise ValueError("sample offsets are not increasing or do not end at the shard's end")
    return config, offsets


def iter_samples(raw: bytes, config: dict[str, Any], offsets: NDArray[Any]) -> Iterator[dict[str, bytes]]:
    """Yield {column: encoded bytes} per sample (sizes header resolved)."""
    names, sizes = config["column_names"], config["column_sizes"]
    n_var = sum(s is None for s in sizes)
    for a, b in zip(offsets[:-1], offsets[1:], strict=True):
        var_sizes = iter(np.frombuffer(raw[a : a + 4 * n_var], "<u4").tolist())
        pos = a + 4 * n_var
        out = {}
        for name, size in zip(names, sizes, strict=True):
            k = size if size is not None else next(var_sizes)
            out[name] = raw[pos : pos + k]
            pos += k
        if pos != b:
            raise ValueError("sample bytes do not add up to the sample's size")
        yield out


def decode_value(encoding: str, data: bytes) -> Any:
    """Decode one column value (numpy for ndarray/scalars; torch tensor for pkl lists)."""
    if encoding in SCALAR_DTYPES:
        return np.frombuffer(data, SCALAR_DTYPES[encoding])[0]
    if encoding == "str":
        return data.decode("utf-8")
    if encoding == "str_int":
        return int(data)
    if encoding == "str_float":
        return float(data)
    if encoding == "json":
        return json.loads(data)
    if encoding == "pkl":
        return pickle.loads(data)  # noqa: S301 - our own output, verified by hash first
    parts = encoding.split(":")
    idx = 0
    if len(parts) == 1:
        inv = {v: k for k, v in _NDARRAY_DTYPE_CODES.items()}
        dtype = inv[data[0]]
        idx = 1
    else:
        dtype = parts[1]
    byte = data[idx]
    ndim, code = byte >> 2, byte & 3
    shape_dtype = ("<u1", "<u2", "<u4", "<u8")[code]
    shape = np.frombuffer(data[idx + 1 : idx + 1 + ndim * (1 << code)], shape_dtype)
    return np.frombuffer(data[idx + 1 + ndim * (1 << code) :], dtype).reshape(shape)
