"""HuggingFace `datasets` folders written directly as Arrow IPC stream files.

`datasets.load_from_disk` needs: `data-0000i-of-0000N.arrow` IPC *stream* files, `state.json`
and `dataset_info.json`. Features are declared as `Sequence` (not `List`) so datasets 3.x and
5.x both load them; list offsets are int32 (`list`, not `large_list`) to agree with `Sequence`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from cellcorpus.core.tokenize import Ragged
from cellcorpus.io.atomic import atomic_path, write_json_atomic

__all__ = [
    "cell_schema",
    "hf_features",
    "cells_table",
    "write_stream",
    "write_dataset_metadata",
    "data_file_name",
    "read_arrow",
    "dataset_files",
]

_INT32_MAX = (1 << 31) - 1


def hf_features(metadata_columns: list[str]) -> dict[str, Any]:
    """HF `Features` JSON for a tokenized-cell table."""
    feats: dict[str, Any] = {
        "genes": {"feature": {"dtype": "int32", "_type": "Value"}, "_type": "Sequence"},
        "expressions": {"feature": {"dtype": "float32", "_type": "Value"}, "_type": "Sequence"},
        "id": {"dtype": "int64", "_type": "Value"},
    }
    for c in metadata_columns:
        feats[c] = {"dtype": "string", "_type": "Value"}
    return feats


def cell_schema(metadata_columns: list[str]) -> pa.Schema:
    """Arrow schema of a tokenized-cell table, with the HF features in its metadata."""
    fields = [
        pa.field("genes", pa.list_(pa.int32())),
        pa.field("expressions", pa.list_(pa.float32())),
        pa.field("id", pa.int64()),
    ] + [pa.field(c, pa.string()) for c in metadata_columns]
    meta = {"huggingface": json.dumps({"info": {"features": hf_features(metadata_columns)}})}
    return pa.schema(fields, metadata=meta)


def cells_table(cells: Ragged, ids: NDArray[Any], metadata: dict[str, NDArray[Any]], schema: pa.Schema) -> pa.Table:
    """Zero-copy-ish Arrow table from ragged arrays (offsets must fit int32 for `list`)."""
    if cells.offsets[-1] > _INT32_MAX:
        raise ValueError("unit too large for int32 list offsets; lower huggingface.unit_cells")
    offsets = pa.array(cells.offsets.astype(np.int32))
    cols = [
        pa.ListArray.from_arrays(offsets, pa.array(cells.genes, type=pa.int32())),
        pa.ListArray.from_arrays(offsets, pa.array(cells.expressions, type=pa.float32())),
        pa.array(ids, type=pa.int64()),
    ]
    for f in schema:
        if f.name in ("genes", "expressions", "id"):
            continue
        cols.append(pa.array(metadata[f.name], type=pa.string()))
    return pa.Table.from_arrays(cols, schema=schema)


BATCH_ROWS = 1000  # rows per record batch, as `datasets` writes them


def write_stream(
    path: str | Path, table: pa.Table, rows: NDArray[Any] | None = None, mask: NDArray[Any] | None = None
) -> int:
    """Write `table` (or its rows `rows` in that order, or the rows where `mask`) as an IPC stream file,
    atomically. Rows are gathered one record batch at a time, so memory holds one batch, never a
    second copy of the table. Returns the number of rows written.
    """
    if mask is not None:
        rows = np.flatnonzero(mask)
    n = table.num_rows if rows is None else len(rows)
    with atomic_path(path) as tmp, pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        for start in range(0, n, BATCH_ROWS):
            if rows is None:
                chunk = table.slice(start, BATCH_ROWS)
            else:
                chunk = table.take(pa.array(rows[start : start + BATCH_ROWS]))
            for batch in chunk.combine_chunks().to_batches():
                w.write_batch(batch)
    return n


def read_arrow(path: str | Path) -> pa.Table:
    """Read an Arrow IPC file (stream or file format) memory-mapped."""
    with pa.memory_map(str(path), "r") as src:
        try:
            return pa.ipc.open_stream(src).read_all()
        except pa.ArrowInvalid:
            src.seek(0)
            return pa.ipc.open_file(src).read_all()


def data_file_name(i: int, n: int) -> str:
    """HF data file name for shard `i` of `n`."""
    return f"data-{i:05d}-of-{n:05d}.arrow"


def dataset_files(dataset_dir: str | Path) -> list[Path]:
    """The data files of a dataset folder, in state.json order."""
    state = json.loads((Path(dataset_dir) / "state.json").read_text())
    return [Path(dataset_dir) / f["filename"] for f in state["_data_files"]]


def write_dataset_metadata(dataset_dir: str | Path, files: Iterable[str], metadata_columns: list[str]) -> None:
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
            "features": hf_features(metadata_columns),
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
