"""Join tables too large to hold in every worker: built once into an on-disk index, looked up per unit.

The Tahoe-100M release's `obs_metadata` has ~100M rows; loaded whole (as `io/tables.py` does for small tables)
it costs ~85 MB per million keys in every worker. Here the table is streamed once, in batches, and split by a
64-bit hash of each key into partitions of ~1M rows, each sorted by hash and written as an Arrow IPC file that
workers memory-map. A unit hashes its own keys and binary-searches each partition: it touches only the pages
it needs, and no process holds the table. Semantics are `io/tables.py`'s exactly (stripped string keys, first
row of a duplicated key kept, '' where absent, values as pandas writes them): each batch goes through pandas
with the dtype the whole table would get (an integer column holding a null anywhere is read as float).
"""

from __future__ import annotations

import contextlib
import json
import math
import mmap
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cellcorpus.errors import InputError
from cellcorpus.io.atomic import write_json_atomic
from cellcorpus.io.tables import as_strings, is_parquet, join_keys

__all__ = ["INDEX_ROWS", "JoinIndex", "build_join_index", "check_columns", "is_large_table"]

INDEX_ROWS = 2_000_000  # tables with more rows are indexed on disk (smaller ones are loaded whole, cached)
_PART_ROWS = 1 << 20  # rows per partition (~1M)
_BATCH_ROWS = 1 << 18  # rows read at a time while building (as Python strings through pandas: ~100 MB)
_DONE = "index.json"


def is_large_table(path: str) -> bool:
    """Whether a join table is indexed on disk: a parquet table of more than INDEX_ROWS rows."""
    return is_parquet(path) and bool(pq.ParquetFile(path).metadata.num_rows > INDEX_ROWS)


def _hash(keys: np.ndarray) -> np.ndarray:
    """64-bit hashes of stripped string keys (pandas' vectorised SipHash)."""
    return pd.util.hash_array(keys, categorize=False).astype(np.uint64)


def check_columns(path: str, names: list[str]) -> None:
    """The table has these columns (its schema read, not its rows)."""
    have = pq.ParquetFile(path).schema_arrow.names
    missing = [c for c in names if c not in have]
    if missing:
        raise InputError(f"{path}: metadata table has no column(s) {missing}", hint=f"available: {', '.join(have)}")


def _batches(path: str, key: str, columns: list[str]) -> Any:
    """(stripped keys, {column: strings}) per batch, converted as `pd.read_parquet` of the whole file would be."""
    f = pq.ParquetFile(path)
    names = list(dict.fromkeys([key, *columns]))
    check_columns(path, names)
    widen = {c for c in names if pa.types.is_integer(f.schema_arrow.field(c).type) and _has_nulls(f, c)}
    for batch in f.iter_batches(batch_size=_BATCH_ROWS, columns=names):
        df = batch.to_pandas()

        def values(c: str, df: pd.DataFrame = df) -> np.ndarray:
            # an integer column with a null anywhere reaches numpy as float64 from the whole table ("1.0")
            return (df[c].astype("float64") if c in widen else df[c]).to_numpy()

        keys = join_keys(values(key))
        yield keys, {c: as_strings(values(c)) for c in columns}


def _has_nulls(f: pq.ParquetFile, column: str) -> bool:
    """Whether a column holds a null anywhere (row-group statistics; the column read where they are absent)."""
    i = f.schema_arrow.get_field_index(column)
    for g in range(f.metadata.num_row_groups):
        stats = f.metadata.row_group(g).column(i).statistics
        if stats is not None and stats.has_null_count:
            n = stats.null_count
        else:
            n = f.read_row_group(g, columns=[column]).column(0).null_count
        if n:
            return True
    return False


def build_join_index(path: str, key: str, columns: list[str], folder: Path) -> JoinIndex:
    """Index `path` (its `key` and `columns`) into `folder`, or reuse the index already there."""
    done = folder / _DONE
    if done.is_file():
        return JoinIndex(str(folder))
    shutil.rmtree(folder, ignore_errors=True)  # a build interrupted midway: ours (the caller's scratch)
    folder.mkdir(parents=True)
    rows = pq.ParquetFile(path).metadata.num_rows
    bits = max(0, math.ceil(math.log2(max(rows, 1) / _PART_ROWS)))
    shift = np.uint64(64 - bits)
    names = ["hash", "row", "key", *columns]
    schema = pa.schema([("hash", pa.uint64()), ("row", pa.int64())] + [(n, pa.string()) for n in names[2:]])
    writers: dict[int, pa.ipc.RecordBatchStreamWriter] = {}
    start = 0
    try:
        for keys, cols in _batches(path, key, columns):
            h = _hash(keys)
            part = (h >> shift).astype(np.int64) if bits else np.zeros(len(h), np.int64)
            order = np.argsort(part, kind="stable")
            bounds = np.searchsorted(part[order], np.arange((1 << bits) + 1))
            arrays = [pa.array(h), pa.array(np.arange(start, start + len(h), dtype=np.int64)),
                      pa.array(keys, pa.string()), *(pa.array(cols[c], pa.string()) for c in columns)]  # fmt: skip
            batch = pa.RecordBatch.from_arrays(arrays, schema=schema)
            for p in np.flatnonzero(np.diff(bounds)).tolist():
                if p not in writers:
                    writers[p] = pa.ipc.new_stream(str(folder / f"{p:05d}.unsorted"), schema)
                writers[p].write_batch(batch.take(pa.array(order[bounds[p] : bounds[p + 1]])))
            start += len(h)
    finally:
        for w in writers.values():
            w.close()
    for p in range(1 << bits):
        _sort_partition(folder, p, schema)
    write_json_atomic(done, {"rows": rows, "bits": bits, "key": key, "columns": columns})
    return JoinIndex(str(folder))


def _sort_partition(folder: Path, p: int, schema: pa.Schema) -> None:
    """Sort a partition by (hash, key, row), keep each key's first row, write it as a mappable IPC file."""
    src = folder / f"{p:05d}.unsorted"
    if src.is_file():
        with pa.memory_map(str(src)) as f:
            table = pa.ipc.open_stream(f).read_all()
    else:
        table = schema.empty_table()
    table = table.sort_by([("hash", "ascending"), ("key", "ascending"), ("row", "ascending")])
    h = table.column("hash").to_numpy()
    k = table.column("key").combine_chunks()
    first = np.ones(len(h), bool)
    if len(h) > 1:  # compared in Arrow: no Python string per row
        same_key = pc.equal(k.slice(1), k.slice(0, len(k) - 1)).to_numpy(zero_copy_only=False)
        first[1:] = (h[1:] != h[:-1]) | ~same_key
    table = table.filter(pa.array(first)).drop_columns(["row"]).combine_chunks()  # one batch: zero-copy columns
    with pa.OSFile(str(folder / f"{p:05d}.arrow"), "wb") as f, pa.ipc.new_file(f, table.schema) as w:
        w.write_table(table)
    src.unlink(missing_ok=True)


class JoinIndex:
    """A built index: `lookup(keys)` gives each joined column's values for `keys` ('' where absent)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        meta = json.loads((Path(folder) / _DONE).read_text())
        self.bits, self.columns = int(meta["bits"]), list(meta["columns"])

    def lookup(self, keys: np.ndarray) -> dict[str, np.ndarray]:
        """Left join of `keys` (any values; compared as stripped strings)."""
        keys = join_keys(keys)
        h = _hash(keys)
        part = (h >> np.uint64(64 - self.bits)).astype(np.int64) if self.bits else np.zeros(len(h), np.int64)
        out = {c: np.full(len(keys), "", dtype=object) for c in self.columns}
        for p in np.unique(part).tolist():
            sel = np.flatnonzero(part == p)
            rows, values = _lookup_partition(Path(self.folder) / f"{p:05d}.arrow", h[sel], keys[sel], self.columns)
            hit = rows >= 0
            for c in self.columns:
                out[c][sel[hit]] = values[c]
        return out


def _lookup_partition(
    path: Path, h: np.ndarray, keys: np.ndarray, columns: list[str]
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(row of each key or -1, each column's values for the keys found) in one sorted partition. The file is
    memory-mapped for this call only and its pages dropped from this process afterwards (they stay in the page
    cache): random keys touch pages all over the table, which would otherwise add up in every worker's RSS."""
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        table = pa.ipc.open_file(pa.BufferReader(pa.py_buffer(mm))).read_all()
        hashes = table.column("hash").chunk(0).to_numpy() if table.num_rows else np.zeros(0, np.uint64)
        lo, hi = np.searchsorted(hashes, h, "left"), np.searchsorted(hashes, h, "right")
        rows = np.full(len(h), -1, np.int64)
        stored = table.column("key")
        one = np.flatnonzero(hi - lo == 1)
        same = stored.take(pa.array(lo[one])).to_numpy(zero_copy_only=False) == keys[one]
        rows[one[same]] = lo[one[same]]
        for i in np.flatnonzero(hi - lo > 1).tolist():  # distinct keys with one hash: ~never at 64 bits
            for r in range(int(lo[i]), int(hi[i])):
                if stored[r].as_py() == keys[i]:
                    rows[i] = r
        found = pa.array(rows[rows >= 0])
        values = {c: table.column(c).take(found).to_numpy(zero_copy_only=False) for c in columns}
        del table, hashes, stored
    finally:
        mm.madvise(mmap.MADV_DONTNEED)
        with contextlib.suppress(BufferError):  # an Arrow view still alive: the mapping goes when it does
            mm.close()
    return rows, values
