"""Where each shuffle bucket lies in every part, kept on disk, bucket-major, so the plan is flat in memory.

At 270M cells a shuffled split has ~16k parts x ~8k buckets: 270M (row, byte) bounds. Held as JSON in the
tokenize ledger they took ~12 GB on disk and ~65 GB read back into Python lists, and a shuffle unit carried a
slice of every part (benchmarks/plan_at_scale.py). Now a tokenize unit writes its part's bounds as an `.npy`
beside the part (its record names the file); finalize copies them, a block of parts at a time, into one
int64 matrix `[bucket bound, part, (row, byte)]`; a shuffle unit carries its bucket's number and reads its
two rows of that matrix (16 bytes per part) where it runs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.format import open_memmap
from numpy.typing import NDArray

from cellcorpus.errors import InputError
from cellcorpus.io.atomic import atomic_path, write_json_atomic

__all__ = ["BOUNDS_SUFFIX", "write_part_bounds", "part_bounds", "write_bucket_plan", "bucket_slices"]

BOUNDS_SUFFIX = ".bounds.npy"
_BLOCK_BYTES = 64 << 20  # one block of parts' bounds in memory while the matrix is written

Slice = tuple[str, int, int, int, int]  # (part, first row, end row, first byte, end byte); bytes -1: unknown


def write_part_bounds(part: str | Path, rows: NDArray[Any], byte_ends: Sequence[int]) -> str:
    """Save a part's bucket bounds (n_buckets + 1 rows of (row, byte)) beside it; returns the file's name."""
    path = Path(part).with_suffix(BOUNDS_SUFFIX)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.column_stack([np.asarray(rows, np.int64), np.asarray(byte_ends, np.int64)]))
    return path.name


def part_bounds(part: str | Path, record: dict[str, Any]) -> NDArray[np.int64]:
    """A part's (row, byte) bounds from the file its record names; records of earlier versions held the rows
    (and maybe the bytes) as lists: -1 bytes = read the whole part memory-mapped."""
    if "bounds" in record:
        path = Path(part).with_name(record["bounds"])
        try:
            return np.asarray(np.load(path), dtype=np.int64)
        except (OSError, ValueError) as exc:
            raise InputError(
                f"{path}: a shuffle part's bucket bounds cannot be read ({exc})",
                hint="an intermediate file was changed; delete huggingface.output_root's parts and rerun",
            ) from None
    rows = np.asarray(record["bucket_bounds"], np.int64)
    ends = np.asarray(record.get("bucket_bytes") or [-1] * len(rows), np.int64)
    return np.column_stack([rows, ends])


def write_bucket_plan(
    path: str | Path, parts: Sequence[str], bounds_of: Callable[[int], NDArray[np.int64]], n_buckets: int
) -> NDArray[np.int64]:
    """Write the bucket-major matrix of every part's bounds (`bounds_of(j)` for part j) and the parts' paths
    beside it (`<path>.parts.json`). Returns the cells of each bucket. Memory: one block of parts at a time."""
    path = Path(path)
    write_json_atomic(_parts_file(path), list(parts))
    shape = (n_buckets + 1, len(parts), 2)
    cells = np.zeros(n_buckets, np.int64)
    step = max(1, _BLOCK_BYTES // (16 * (n_buckets + 1)))
    with atomic_path(path) as tmp:
        if not parts:  # nothing to map
            with open(tmp, "wb") as f:
                np.save(f, np.zeros(shape, np.int64))
        else:
            open_memmap(tmp, mode="w+", dtype=np.int64, shape=shape).flush()  # type: ignore[no-untyped-call]
        for j0 in range(0, len(parts), step):
            block = [bounds_of(j) for j in range(j0, min(j0 + step, len(parts)))]
            for j, b in enumerate(block, j0):
                if b.shape != (n_buckets + 1, 2):
                    raise InputError(
                        f"{parts[j]}: {len(b) - 1} shuffle buckets recorded, {n_buckets} planned",
                        hint="an intermediate file was changed; delete huggingface.output_root's parts and rerun",
                    )
            stacked = np.stack(block, axis=1)
            # mapped per block: the pages written are not kept resident
            matrix = open_memmap(tmp, mode="r+")  # type: ignore[no-untyped-call]
            matrix[:, j0 : j0 + len(block)] = stacked
            matrix.flush()
            del matrix
            cells += np.diff(stacked[:, :, 0], axis=0).sum(axis=1)
    return cells


def bucket_slices(plan: str | Path, bucket: int) -> list[Slice]:
    """Bucket `bucket`'s non-empty slice of every part, read from the plan's two rows."""
    paths = _part_paths(str(plan), os.stat(plan).st_mtime_ns)
    rows = np.array(np.load(plan, mmap_mode="r")[bucket : bucket + 2])  # (2, parts, 2)
    live = np.flatnonzero(rows[1, :, 0] > rows[0, :, 0])
    lo, hi = rows[0, live].tolist(), rows[1, live].tolist()
    return [(paths[j], r0, r1, b0, b1) for j, (r0, b0), (r1, b1) in zip(live.tolist(), lo, hi, strict=True)]


def _parts_file(plan: Path) -> Path:
    return plan.with_name(plan.name + ".parts.json")


@lru_cache(maxsize=4)
def _part_paths(plan: str, _mtime_ns: int) -> list[str]:
    """The plan's part paths, read once per process and plan (a worker runs many of its buckets)."""
    return list(json.loads(_parts_file(Path(plan)).read_text()))
