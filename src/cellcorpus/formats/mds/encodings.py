"""MDS column encodings in one table: name -> fixed size, batch encoder, value decoder.

Every place that needs to know an encoding (validation, the shard config's sizes, writing, reading back)
asks `encoding(name)`; adding an encoding is one entry here. Encoders turn an Arrow column of a batch into
one binary element per sample, vectorised with Arrow compute; only `pkl` and `json` need Python per value.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from cellcorpus.errors import ConfigError
from cellcorpus.formats.mds.safe_pickle import load_pkl
from cellcorpus.formats.mds.torch_pickle import TorchPickler

__all__ = ["Encoding", "encoding", "decoded_dtype", "SCALAR_DTYPES", "PKL_TENSOR_DTYPES", "SUPPORTED"]

SCALAR_DTYPES = {
    "uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64,
    "int8": np.int8, "int16": np.int16, "int32": np.int32, "int64": np.int64,
    "float16": np.float16, "float32": np.float32, "float64": np.float64,
}  # fmt: skip
_NDARRAY_DTYPE_CODES = {
    "uint8": 8, "int8": 9, "uint16": 16, "int16": 17, "float16": 18, "uint32": 32,
    "int32": 33, "float32": 34, "uint64": 64, "int64": 65, "float64": 66,
}  # fmt: skip
# What the Tahoe-x1 collator consumes for pkl list columns: torch tensors of these dtypes.
PKL_TENSOR_DTYPES = {"genes": np.int64, "expressions": np.float32}
SUPPORTED = "ndarray:<dtype>, ndarray, pkl, str, str_int, str_float, json, " + ", ".join(SCALAR_DTYPES)

# An encoder returns pieces whose per-sample concatenation is the column's bytes: the writer joins every
# column's pieces in one pass, so a pkl tensor's frame and raw values are copied once, not twice.
Encoder = Callable[[str, pa.Array, "TorchPickler | None"], list[pa.Array]]


@dataclass(frozen=True)
class Encoding:
    """One MDS encoding: `size` bytes per value (None = variable), how to write a column (as pieces), how to read
    a value."""

    name: str
    size: int | None
    encode: Encoder
    decode: Callable[[bytes], Any]


def _binary(offsets: NDArray[Any], data: NDArray[Any]) -> pa.Array:
    n = len(offsets) - 1
    return pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data)])


def _list_parts(col: pa.ChunkedArray | pa.Array) -> tuple[NDArray[Any], NDArray[Any]]:
    """(offsets from 0, flat values) of a list column, honouring slices."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    offsets = arr.offsets.to_numpy()
    values = arr.values.to_numpy(zero_copy_only=False)[offsets[0] : offsets[-1]]
    return offsets - offsets[0], values


def _ndarray_column(col: pa.Array, dtype: np.dtype[Any], dynamic_dtype: bool, name: str) -> list[pa.Array]:
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
    return [_binary(head_off, head), body]


def _scalar_column(col: pa.Array, dtype: type) -> pa.Array:
    values = np.ascontiguousarray(col.to_numpy(zero_copy_only=False).astype(dtype, copy=False))
    size = values.dtype.itemsize
    return _binary(np.arange(len(values) + 1, dtype=np.int64) * size, values.view(np.uint8))


def _str_column(col: pa.Array) -> pa.Array:
    return pc.cast(pc.fill_null(pc.cast(col, pa.string()), ""), pa.binary())


def _python_column(values: list[Any], fn: Any) -> pa.Array:
    return pa.array([fn(v) for v in values], type=pa.binary())


def _is_list(col: pa.Array) -> bool:
    return bool(pa.types.is_list(col.type) or pa.types.is_large_list(col.type))


def _scalar(name: str) -> Encoding:
    dtype = SCALAR_DTYPES[name]

    def encode(col_name: str, col: pa.Array, pickler: TorchPickler | None) -> list[pa.Array]:
        if _is_list(col):
            raise ConfigError(f"mds.columns.{col_name}: scalar encoding '{name}' on list column '{col_name}'")
        return [_scalar_column(col, dtype)]

    return Encoding(name, np.dtype(dtype).itemsize, encode, lambda data: np.frombuffer(data, dtype)[0])


def _decode_ndarray(data: bytes, dtype: str | None) -> NDArray[Any]:
    idx = 0
    if dtype is None:
        dtype = {v: k for k, v in _NDARRAY_DTYPE_CODES.items()}[data[0]]
        idx = 1
    ndim, code = data[idx] >> 2, data[idx] & 3
    shape_dtype = ("<u1", "<u2", "<u4", "<u8")[code]
    shape = np.frombuffer(data[idx + 1 : idx + 1 + ndim * (1 << code)], shape_dtype)
    return np.frombuffer(data[idx + 1 + ndim * (1 << code) :], dtype).reshape(shape)


def _ndarray(name: str) -> Encoding:
    fixed = name.split(":")[1] if ":" in name else None

    def encode(col_name: str, col: pa.Array, pickler: TorchPickler | None) -> list[pa.Array]:
        if not _is_list(col):
            raise ConfigError(f"mds.columns.{col_name}: ndarray needs a list column, '{col_name}' is {col.type}")
        dtype = np.dtype(fixed) if fixed else np.dtype(col.type.value_type.to_pandas_dtype())
        return _ndarray_column(col, dtype, fixed is None, col_name)

    return Encoding(name, None, encode, lambda data: _decode_ndarray(data, fixed))


def _strings(col_name: str, col: pa.Array, pickler: TorchPickler | None) -> list[pa.Array]:
    return [_str_column(col)]


def _numbers_as_text(col_name: str, col: pa.Array, pickler: TorchPickler | None) -> list[pa.Array]:
    return [_str_column(pc.cast(col, pa.string()))]


def _json(col_name: str, col: pa.Array, pickler: TorchPickler | None) -> list[pa.Array]:
    return [_python_column(col.to_pylist(), lambda v: json.dumps(v).encode())]


def _pkl(col_name: str, col: pa.Array, pickler: TorchPickler | None) -> list[pa.Array]:
    # list columns become 1-D torch tensors (dtype per PKL_TENSOR_DTYPES), scalars plain pickles
    if not _is_list(col):
        return [_python_column(col.to_pylist(), pickle.dumps)]
    assert pickler is not None  # internal: the writer builds one whenever a column is pkl
    offsets, values = _list_parts(col)
    values = np.ascontiguousarray(values.astype(PKL_TENSOR_DTYPES.get(col_name, values.dtype), copy=False))
    # Vectorised: every tensor pickle is prefix(len) + raw bytes + suffix(len); one template per distinct
    # length (cached by the pickler), gathered with take and joined in C++ — no pickle call per sample.
    lengths = np.diff(offsets)
    uniq, inverse = np.unique(lengths, return_inverse=True)
    templates = [pickler.template(values.dtype, int(n)) for n in uniq]
    prefixes = pc.take(pa.array([p for p, _ in templates], pa.binary()), pa.array(inverse))
    suffixes = pc.take(pa.array([s for _, s in templates], pa.binary()), pa.array(inverse))
    body = _binary(offsets * values.dtype.itemsize, values.view(np.uint8))
    return [prefixes, body, suffixes]


_FIXED: dict[str, Encoding] = {
    "str": Encoding("str", None, _strings, lambda data: data.decode("utf-8")),
    "str_int": Encoding("str_int", None, _numbers_as_text, lambda data: int(data)),
    "str_float": Encoding("str_float", None, _numbers_as_text, lambda data: float(data)),
    "json": Encoding("json", None, _json, json.loads),
    # read back by the restricted reader: a shard's bytes are never executed, whoever wrote them
    "pkl": Encoding("pkl", None, _pkl, load_pkl),
    **{name: _scalar(name) for name in SCALAR_DTYPES},
}


def decoded_dtype(name: str, column: str) -> np.dtype[Any] | None:
    """The numpy dtype a list column's samples decode to under encoding `name` (None: any, or not a list)."""
    if name == "pkl":
        dtype = PKL_TENSOR_DTYPES.get(column)
        return np.dtype(dtype) if dtype is not None else None
    parts = name.split(":")
    return np.dtype(parts[1]) if parts[0] == "ndarray" and len(parts) == 2 else None


def encoding(name: str, column: str = "?") -> Encoding:
    """The encoding called `name`; an unknown one is a ConfigError naming `mds.columns.<column>`."""
    if name in _FIXED:
        return _FIXED[name]
    parts = name.split(":")
    if parts[0] == "ndarray" and (len(parts) == 1 or (len(parts) == 2 and parts[1] in _NDARRAY_DTYPE_CODES)):
        return _ndarray(name)
    raise ConfigError(f"mds.columns.{column}: encoding '{name}' is not supported", hint=f"use one of: {SUPPORTED}")
