"""Corpus-wide cell ids: `(file_index << 32) | row_in_file`, unique and traceable to the source row."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["MAX_FILES", "MAX_ROWS", "make_ids", "decode_ids", "in_sorted"]

MAX_FILES = 1 << 31  # keeps ids positive int64
MAX_ROWS = 1 << 32


def make_ids(file_index: int, rows: NDArray[Any]) -> NDArray[Any]:
    """int64 ids for `rows` (int array of row numbers within file `file_index`)."""
    if not 0 <= file_index < MAX_FILES:
        raise ValueError(f"file_index {file_index} out of range [0, {MAX_FILES})")
    rows = np.asarray(rows, dtype=np.int64)
    return (np.int64(file_index) << np.int64(32)) | rows


def decode_ids(ids: NDArray[Any]) -> tuple[NDArray[Any], NDArray[Any]]:
    """Inverse of `make_ids`: (file_index, row) int64 arrays."""
    ids = np.asarray(ids, dtype=np.int64)
    return ids >> np.int64(32), ids & np.int64(MAX_ROWS - 1)


def in_sorted(ids: NDArray[Any], listed: NDArray[Any]) -> NDArray[np.bool_]:
    """Which of `ids` the sorted, unique `listed` holds (one binary search each: a list of ids to leave out)."""
    if not len(listed):
        return np.zeros(len(ids), bool)
    at = np.minimum(np.searchsorted(listed, ids), len(listed) - 1)
    found: NDArray[np.bool_] = listed[at] == ids
    return found
