"""HuggingFace `datasets` folders written directly as Arrow IPC stream files.

`datasets.load_from_disk` needs: `data-0000i-of-0000N.arrow` IPC *stream* files, `state.json`
and `dataset_info.json`. Features are declared as `Sequence` (not `List`) so datasets 3.x and
5.x both load them; list offsets are int32 (`list`, not `large_list`) to agree with `Sequence`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash
from numpy.typing import NDArray

from cellcorpus.io.atomic import atomic_path, write_json_atomic
from cellcorpus.io.direct import open_output, read_ranges
from cellcorpus.io.hashed import write_hashed

__all__ = [
    "CellColumns",
    "cell_schema",
    "hf_features",
    "cells_table",
    "compact_part",
    "write_stream",
    "Written",
    "write_dataset_metadata",
    "data_file_name",
    "data_file_glob",
    "read_arrow",
    "read_stream_ranges",
    "dataset_files",
]

_INT32_MAX = (1 << 31) - 1


CellColumns = tuple[tuple[str, str, bool], ...]  # an encoding's columns: (name, value dtype, one list per cell)


def hf_features(columns: CellColumns, metadata_columns: list[str]) -> dict[str, Any]:
    """HF `Features` JSON for a tokenized-cell table: the encoding's columns, `id`, the metadata strings."""
    feats: dict[str, Any] = {}
    for name, dtype, is_list in columns:
        value = {"dtype": dtype, "_type": "Value"}
        feats[name] = {"feature": value, "_type": "Sequence"} if is_list else value
    feats["id"] = {"dtype": "int64", "_type": "Value"}
    for c in metadata_columns:
        feats[c] = {"dtype": "string", "_type": "Value"}
    return feats


def cell_schema(columns: CellColumns, metadata_columns: list[str]) -> pa.Schema:
    """Arrow schema of a tokenized-cell table, with the HF features in its metadata."""
    fields = [
        pa.field(
            name, pa.list_(pa.from_numpy_dtype(np.dtype(dtype))) if is_list else pa.from_numpy_dtype(np.dtype(dtype))
        )
        for name, dtype, is_list in columns
    ]
    fields += [pa.field("id", pa.int64())] + [pa.field(c, pa.string()) for c in metadata_columns]
    meta = {"huggingface": json.dumps({"info": {"features": hf_features(columns, metadata_columns)}})}
    return pa.schema(fields, metadata=meta)


def compact_part(table: pa.Table, narrow: dict[str, str]) -> pa.Table:
    """The table with the named list columns in narrower value dtypes (`genes` as uint16, `expressions` as int16:
    4 bytes per token on disk instead of 8), for the shuffle's parts; `write_stream(..., schema=cell_schema(...))`
    widens them back.

    The caller (the encoding) decides what fits: e.g. genes when every vocabulary id is below 65,536,
    expressions when every count is a whole number up to 32,767 and so is the pad value written before them.
    """
    for name, dtype in narrow.items():
        i = table.schema.get_field_index(name)
        # unchecked: the caller knows every value fits (a checked cast spent ~2% of a run proving it)
        field = table.schema.field(i).with_type(pa.list_(pa.from_numpy_dtype(np.dtype(dtype))))
        table = table.set_column(i, field, table.column(i).cast(field.type, safe=False))
    return table


def cells_table(
    offsets: NDArray[Any],
    lists: dict[str, NDArray[Any]],
    scalars: dict[str, NDArray[Any]],
    ids: NDArray[Any],
    metadata: dict[str, NDArray[Any]],
    schema: pa.Schema,
) -> pa.Table:
    """Zero-copy-ish Arrow table from ragged arrays sharing `offsets` (which must fit int32 for `list`)."""
    if offsets[-1] > _INT32_MAX:
        raise ValueError("unit too large for int32 list offsets; lower huggingface.unit_cells")
    arrow_offsets = pa.array(offsets.astype(np.int32))
    cols = []
    for f in schema:
        if f.name in lists:
            cols.append(pa.ListArray.from_arrays(arrow_offsets, pa.array(lists[f.name], type=f.type.value_type)))
        elif f.name in scalars:
            cols.append(pa.array(scalars[f.name], type=f.type))
        elif f.name == "id":
            cols.append(pa.array(ids, type=pa.int64()))
        else:
            cols.append(pa.array(metadata[f.name], type=pa.string()))
    return pa.Table.from_arrays(cols, schema=schema)


BATCH_ROWS = 1000  # rows per record batch, as `datasets` writes them
Prefix = dict[str, Any]  # column -> the value written first in each of its lists


class _Gather:
    """Rows of a table in a given order, one batch at a time, taking from each record batch separately.

    Written by hand because `Table.take` on a many-chunk table (a shuffle bucket gathered from every part's
    memory-mapped batches) concatenates the chunks on every call (~8x slower for a 32k-cell bucket): here
    the rows of a batch are grouped by the chunk they live in, taken per chunk, put back in the asked order.
    """

    def __init__(self, table: pa.Table) -> None:
        self.batches = table.to_batches()
        lengths = np.array([b.num_rows for b in self.batches], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(lengths)])
        self.schema = table.schema

    def take(self, rows: NDArray[Any], prefix: Prefix | None = None) -> pa.Table:
        if len(self.batches) == 1:
            if not prefix and len(rows) and rows[-1] - rows[0] == len(rows) - 1 and bool(np.all(np.diff(rows) == 1)):
                return pa.Table.from_batches([self.batches[0].slice(int(rows[0]), len(rows))])  # a run: no copy
            return _reorder(pa.Table.from_batches(self.batches, self.schema), rows, prefix)
        if prefix:
            raise ValueError("a prefix is written from a single-batch table only")
        chunk = np.searchsorted(self.starts, rows, side="right") - 1
        by_chunk = np.argsort(chunk, kind="stable")
        sorted_chunks = chunk[by_chunk]
        cuts = np.flatnonzero(np.diff(sorted_chunks)) + 1
        parts = []
        for idx in np.split(by_chunk, cuts):  # one piece per chunk present in this batch
            c = int(chunk[idx[0]])
            local = rows[idx] - self.starts[c]
            if local[-1] - local[0] == len(local) - 1 and np.all(np.diff(local) == 1):
                # a run (a shuffle merges key-sorted parts, so each part gives a run): a zero-copy slice
                parts.append(self.batches[c].slice(int(local[0]), len(local)))
            else:
                parts.append(self.batches[c].take(pa.array(local)))
        grouped = pa.Table.from_batches(parts, self.schema)
        if np.all(np.diff(by_chunk) > 0):
            return grouped.combine_chunks()  # already in the asked order
        restore = np.empty_like(by_chunk)
        restore[by_chunk] = np.arange(len(by_chunk))
        return _reorder(grouped, restore)  # from the pieces themselves: no concatenated copy first


def _reorder(table: pa.Table, order: NDArray[Any], prefix: Prefix | None = None) -> pa.Table:
    """`table.take(order)` as one chunk per column, taken from the table's chunks as they are (Arrow's chunked
    take does not concatenate them first); `prefix` puts one value before every list of the named columns
    (the CLS token) in the same pass."""
    prefix = prefix or {}
    index = pa.array(order, pa.int64())
    cols = []
    for name, col in zip(table.column_names, table.columns, strict=True):
        chunks = col.chunks or [col.combine_chunks()]
        if all(_runs_of_bytes(c) for c in chunks):
            cols.append(_take_lists(chunks, index, prefix.get(name)))
            continue
        if name in prefix:
            raise ValueError(f"column '{name}': a prefix needs a list column of numbers without nulls")
        cols.append(_one_chunk(col.take(index)))
    return pa.Table.from_arrays(cols, schema=table.schema)


def _one_chunk(col: pa.ChunkedArray) -> pa.Array:
    return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()


def _runs_of_bytes(arr: pa.Array) -> bool:
    """A list column whose lists are plain byte runs: fixed-width numbers, no nulls at either level."""
    if not pa.types.is_list(arr.type) or arr.null_count or arr.values.null_count:
        return False
    value_type = arr.type.value_type
    return bool(pa.types.is_integer(value_type) or pa.types.is_floating(value_type))


def _take_lists(chunks: list[pa.ListArray], index: pa.Array, first: Any = None) -> pa.ListArray:
    """Lists `index` of the concatenated `chunks` (each preceded by `first` if given), one list at a time.

    Arrow's list take and a numpy gather both copy element by element through a per-element index built
    first; a cell's list is one run of bytes, so here the lists are viewed (zero-copy) as binary values and
    taken with Arrow's binary take, one memcpy per list (~3x faster for ~2,000-gene cells). The prefix is
    joined in front of every value the same way.
    """
    value_type = chunks[0].type.value_type
    item = value_type.bit_width // 8
    in_offsets = [(c.offsets.to_numpy().astype(np.int64) + c.values.offset) * item for c in chunks]
    wide = any(len(o) and o[-1] > _INT32_MAX for o in in_offsets)
    binary_type = pa.large_binary() if wide else pa.binary()
    runs = pa.chunked_array(
        [
            pa.Array.from_buffers(
                binary_type,
                len(c),
                [None, pa.py_buffer(o.astype(np.int64 if wide else np.int32)), c.values.buffers()[1]],
            )
            for c, o in zip(chunks, in_offsets, strict=True)
        ],
        binary_type,
    )
    taken = _one_chunk(runs.take(index))
    if first is not None:
        head = pa.scalar(np.array([first], value_type.to_pandas_dtype()).tobytes(), binary_type)
        taken = pc.binary_join_element_wise(head, taken, pa.scalar(b"", binary_type))
    _, out_offsets, out_data = taken.buffers()
    width = np.int64 if wide else np.int32
    byte_offsets = np.frombuffer(out_offsets, width)[taken.offset : taken.offset + len(taken) + 1].astype(np.int64)
    base = int(byte_offsets[0])
    flat = pa.Array.from_buffers(
        value_type, (int(byte_offsets[-1]) - base) // item, [None, out_data], offset=base // item
    )
    return pa.ListArray.from_arrays(pa.array(((byte_offsets - base) // item).astype(np.int32)), flat)


def write_stream(
    path: str | Path,
    table: pa.Table,
    rows: NDArray[Any] | None = None,
    mask: NDArray[Any] | None = None,
    each: Callable[[pa.Table], None] | None = None,
    prefix: Prefix | None = None,
    schema: pa.Schema | None = None,
    cuts: NDArray[Any] | None = None,
) -> Written:
    """Write `table` (or its rows `rows` in that order, or the rows where `mask`) as an IPC stream file,
    atomically. Rows are gathered one record batch at a time, so memory holds one batch, never a
    second copy of the table; `each` (if given) also receives every written batch, in order (the fused
    MDS export encodes them while they are in memory); `prefix` ({column: value}) writes that value first
    in every list of the column (tokenize's CLS token, added in the gather rather than in a pass of its own);
    `schema` (if given) is the file's schema, each batch cast to it (compact parts widened to the dataset's);
    `cuts` (row positions 0 = c0 <= c1 <= ... = n): no batch spans a cut, and `Written.cut_bytes` gives the
    file offset where each segment's batches end (`read_stream_ranges` reads a segment alone: a shuffle bucket).
    The file is written past the page cache (io.direct). Returns the rows written and the file's xxh64.
    """
    if mask is not None:
        rows = np.flatnonzero(mask)
    if prefix and rows is None:
        rows = np.arange(table.num_rows)
    n = table.num_rows if rows is None else len(rows)
    gather = _Gather(table) if rows is not None else None
    segments = list(zip(cuts[:-1], cuts[1:], strict=True)) if cuts is not None else [(0, n)]
    if segments[0][0] != 0 or segments[-1][1] != n:
        raise ValueError(f"cuts must run from 0 to {n} rows")
    ends = []
    with atomic_path(path) as tmp, open_output(tmp) as f:
        sink = _Checksummed(f)
        with pa.PythonFile(sink, mode="w") as out, pa.ipc.new_stream(out, schema or table.schema) as w:
            for lo, hi in segments:
                _write_rows(w, table, int(lo), int(hi), rows, gather, each, prefix, schema)
                ends.append(sink.bytes)  # the stream writer passes every message straight through
    return Written(n, sink.digest(), tuple([0, *ends]) if cuts is not None else ())


@dataclass(frozen=True)
class Written:
    """What `write_stream` wrote: rows, and the xxh64 of the file's bytes (hashed on the way out)."""

    rows: int
    xxh64: str
    cut_bytes: tuple[int, ...] = ()  # with `cuts`: 0, then the offset where each segment's batches end


class _Checksummed:
    """A write-only file that hashes what passes through it (so a written file is not read back to hash it)."""

    def __init__(self, f: Any) -> None:
        self._f, self._h, self.closed, self.bytes = f, xxhash.xxh64(), False, 0

    def write(self, data: Any) -> int:
        n = write_hashed(self._f, data, [self._h])
        self.bytes += n
        return n

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        self.closed = True  # the real file is closed by its owner

    def digest(self) -> str:
        return self._h.hexdigest()


def _write_rows(
    w: Any,
    table: pa.Table,
    lo: int,
    hi: int,
    rows: NDArray[Any] | None,
    gather: _Gather | None,
    each: Callable[[pa.Table], None] | None,
    prefix: Prefix | None,
    schema: pa.Schema | None,
) -> None:
    for start in range(lo, hi, BATCH_ROWS):
        stop = min(start + BATCH_ROWS, hi)
        if gather is None:
            chunk = table.slice(start, stop - start).combine_chunks()
        else:
            assert rows is not None
            chunk = gather.take(rows[start:stop], prefix)
        if schema is not None and chunk.schema != schema:
            chunk = chunk.cast(schema)
        for batch in chunk.to_batches():
            w.write_batch(batch)
        if each is not None:
            each(chunk)


def read_stream_ranges(ranges: list[tuple[str, int, int]]) -> list[pa.Table]:
    """The record batches in bytes [lo, hi) of each (IPC stream file, lo, hi), a segment `write_stream` cut
    (`Written.cut_bytes`), read past the page cache and in parallel (io.direct.read_ranges)."""
    tables = []
    for (path, _, _), data in zip(ranges, read_ranges(ranges), strict=True):
        with pa.OSFile(str(path)) as f:
            schema = pa.ipc.open_stream(f).schema  # the first message; the first segment holds it too
        messages = pa.ipc.MessageReader.open_stream(pa.BufferReader(data))
        batches = [pa.ipc.read_record_batch(m, schema) for m in messages if m.type == "record batch"]
        tables.append(pa.Table.from_batches(batches, schema))
    return tables


def read_arrow(path: str | Path, *, in_memory: bool = False) -> pa.Table:
    """Read an Arrow IPC file (stream or file format) memory-mapped, or with `in_memory` into Arrow's memory
    pool (a table that outlives its file: the buffers are copied once, never through Python objects)."""
    with pa.OSFile(str(path), "r") if in_memory else pa.memory_map(str(path), "r") as src:
        try:
            return pa.ipc.open_stream(src).read_all()
        except pa.ArrowInvalid:
            src.seek(0)
            return pa.ipc.open_file(src).read_all()


def data_file_name(i: int, n: int, generation: int = 0) -> str:
    """HF data file name for shard `i` of `n` (of the `generation`-th append to a corpus, when not 0)."""
    return f"{_data_prefix(generation)}{i:05d}-of-{n:05d}.arrow"


def data_file_glob(generation: int) -> str:
    """A glob of the data file names `data_file_name` gives the `generation`-th append."""
    return f"{_data_prefix(generation)}*-of-*.arrow"


def _data_prefix(generation: int) -> str:
    return f"data-append{generation:03d}-" if generation else "data-"


def dataset_files(dataset_dir: str | Path) -> list[Path]:
    """The data files of a dataset folder, in state.json order."""
    state = json.loads((Path(dataset_dir) / "state.json").read_text())
    return [Path(dataset_dir) / f["filename"] for f in state["_data_files"]]


def write_dataset_metadata(
    dataset_dir: str | Path, files: Iterable[str], columns: CellColumns, metadata_columns: list[str]
) -> None:
    """Write dataset_info.json then state.json (last: its presence marks the split complete)."""
    dataset_dir = Path(dataset_dir)
    files = list(files)
    fingerprint = hashlib.sha256("\n".join(files).encode() + json.dumps(metadata_columns).encode()).hexdigest()[:16]
    write_json_atomic(
        dataset_dir / "dataset_info.json",
        {
            "builder_name": None,
            "citation": "",
            "config_name": None,
            "dataset_name": None,
            "description": "tokenized single-cell corpus written by cellcorpus",
            "features": hf_features(columns, metadata_columns),
            "homepage": "",
            "license": "",
        },
    )
    write_json_atomic(
        dataset_dir / "state.json",
        {
            "_data_files": [{"filename": f} for f in files],
            "_fingerprint": fingerprint,
            "_format_columns": None,
            "_format_kwargs": {},
            "_format_type": None,
            "_output_all_columns": False,
            "_split": None,
        },
    )
