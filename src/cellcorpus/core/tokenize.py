"""CSR rows -> ragged token lists, fully vectorised (no Python loop per cell or per gene).

A batch of cells is held as `offsets` (int64, n_cells + 1) into flat `genes` (int32) and
`expressions` (float32) arrays: the same layout an Arrow list column uses, so writing is a copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["Ragged", "row_stats", "segment_sums", "CountScan", "scan_counts", "tokenize_csr", "columns_ascending"]


@dataclass(frozen=True)
class Ragged:
    """Tokenized cells: row i is genes[offsets[i]:offsets[i+1]] (same for expressions)."""

    offsets: NDArray[Any]
    genes: NDArray[Any]
    expressions: NDArray[Any]
    n_explicit_zeros: int = 0
    n_oov_entries: int = 0

    @property
    def n_cells(self) -> int:
        """Number of cells in the batch."""
        return len(self.offsets) - 1

    def lengths(self) -> NDArray[Any]:
        """Tokens per cell (int64)."""
        return np.diff(self.offsets)


def segment_sums(values: NDArray[Any], indptr: NDArray[Any]) -> NDArray[Any]:
    """Per-row sums of a flat array split by indptr (`np.add.reduceat`; empty rows give 0)."""
    n = len(indptr) - 1
    acc = np.float64 if values.dtype.kind == "f" else np.int64
    out = np.zeros(n, dtype=acc)
    nonempty = indptr[1:] > indptr[:-1]
    if nonempty.any():
        # reduceat sums values[start_i : start_{i+1}] over the non-empty rows' starts only
        out[nonempty] = np.add.reduceat(values, indptr[:-1][nonempty], dtype=acc)
    return out


def row_stats(indptr: NDArray[Any], data: NDArray[Any]) -> tuple[NDArray[Any], NDArray[Any]]:
    """(non-zero genes per cell, total counts per cell) over all stored genes — scanpy's filter_cells basis."""
    indptr = np.asarray(indptr, dtype=np.int64)
    return segment_sums(data != 0, indptr), segment_sums(data, indptr)


def columns_ascending(
    indptr: NDArray[Any], indices: NDArray[Any], data: NDArray[Any]
) -> tuple[NDArray[Any], NDArray[Any]]:
    """(indices, data) with each row's entries in ascending column order (scipy's canonical order); the arrays
    themselves when they already are (one vectorised check), else one stable sort of the unit."""
    if len(indices) < 2:
        return indices, data
    step = np.diff(indices if indices.dtype.kind == "i" else indices.astype(np.int64))  # signed: no wrap-around
    row_start = np.zeros(len(indices), dtype=bool)
    row_start[indptr[1:-1][indptr[1:-1] < len(indices)]] = True
    if np.all((step > 0) | row_start[1:]):
        return indices, data
    rows = np.repeat(np.arange(len(indptr) - 1, dtype=np.int64), np.diff(indptr))
    order = np.lexsort((indices, rows))
    return indices[order], data[order]


_CHUNK = 1 << 18  # elements per step of the scan below: each chunk is read from memory once, then from cache


@dataclass(frozen=True)
class CountScan:
    """What one pass over a unit's count values found."""

    problem: str | None  # non-numeric, NaN/inf or negative values, described; None when the counts are usable
    n_fractional: int  # non-integer values (raw counts are expected)
    n_zero: int  # explicitly stored zeros (dropped by the tokenizer)
    max_value: float = 0.0  # the largest count (0 when there are none)


def scan_counts(data: NDArray[Any]) -> CountScan:
    """Check and count a count array in cache-sized chunks: the values are read from memory once for the range
    check, the fractional count and the stored zeros (four passes over ~200 MB per unit before)."""
    if data.dtype.kind not in "biuf":
        return CountScan(f"non-numeric counts (dtype {data.dtype})", 0, 0)
    if not data.size:
        return CountScan(None, 0, 0)
    floating = data.dtype.kind == "f"
    lows, highs, n_fractional, n_zero = [], [], 0, 0
    for start in range(0, len(data), _CHUNK):
        chunk = data[start : start + _CHUNK]
        lows.append(chunk.min())
        highs.append(chunk.max())
        n_zero += int(np.count_nonzero(chunk == 0))
        if floating:
            n_fractional += int(np.count_nonzero(chunk != np.floor(chunk)))
    lo, hi = min(lows), max(highs)
    # NaN propagates through min/max: finite extremes mean every value is finite
    if floating and not (np.isfinite(lo) and np.isfinite(hi)):
        return CountScan(f"{int((~np.isfinite(data)).sum())} NaN/infinite count value(s)", n_fractional, n_zero)
    if lo < 0:
        return CountScan(f"{int((data < 0).sum())} negative count value(s) (min {lo})", n_fractional, n_zero)
    return CountScan(None, n_fractional, n_zero, float(hi))


def tokenize_csr(
    indptr: NDArray[Any],
    indices: NDArray[Any],
    data: NDArray[Any],
    gene_map: NDArray[Any],
    cls_id: int | None,
    pad_value: float,
    n_zero: int | None = None,
    value_dtype: Any = np.float32,
) -> Ragged:
    """Tokenize CSR rows: keep stored non-zero entries whose column maps into the vocabulary.

    `gene_map[col]` is the vocab id of column `col` or -1 (a column index beyond it: IndexError). With `cls_id`,
    every row starts with (cls_id, pad_value). Stored order is kept. Counts are returned as raw values, float32
    unless `value_dtype` says otherwise.
    `n_zero`, the stored zeros in `data` if already counted (`scan_counts`), spares a pass when it is 0.
    `value_dtype` None keeps the input's dtype (an encoding whose arithmetic follows it).
    """
    indptr = np.asarray(indptr, dtype=np.int64)
    try:
        tok = gene_map[indices]
    except IndexError as exc:  # "index 70000 is out of bounds for axis 0 with size 62710"
        raise IndexError(f"a stored column index is outside the file's {len(gene_map):,} genes ({exc})") from None
    may_drop_oov = bool(gene_map.size) and int(gene_map.min()) < 0  # every file column in the vocabulary: none
    if n_zero == 0 and not may_drop_oov:
        drop, n_drop = None, 0
    else:
        drop = (data == 0) | (tok < 0) if may_drop_oov else data == 0
        n_drop = int(np.count_nonzero(drop))
    per_row = np.diff(indptr)
    if n_drop == 0:  # common case (all genes known, no stored zeros): no compaction pass at all
        n_zero = n_oov = 0
        kept_per_row = per_row
        genes_body = tok
        expr_body = data if value_dtype is None else data.astype(value_dtype, copy=False)
    else:
        assert drop is not None  # n_drop > 0 was counted on it
        n_zero = int(np.count_nonzero(data == 0)) if n_zero is None else n_zero
        n_oov = n_drop - n_zero  # non-zero entries outside the vocabulary
        dropped = np.flatnonzero(drop)
        dropped_rows = np.searchsorted(indptr, dropped, side="right") - 1
        kept_per_row = per_row - np.bincount(dropped_rows, minlength=len(per_row))
        keep = ~drop
        genes_body = tok[keep]
        expr_body = data[keep] if value_dtype is None else data[keep].astype(value_dtype, copy=False)
    n = len(indptr) - 1
    if cls_id is None:
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(kept_per_row, out=offsets[1:])
        return Ragged(offsets, genes_body.astype(np.int32, copy=False), expr_body, n_zero, n_oov)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(kept_per_row + 1, out=offsets[1:])
    total = int(offsets[-1])
    body = np.ones(total, dtype=bool)
    body[offsets[:-1]] = False
    genes = np.empty(total, dtype=np.int32)
    expressions = np.empty(total, dtype=np.float32)
    genes[offsets[:-1]] = cls_id
    expressions[offsets[:-1]] = pad_value
    genes[body] = genes_body
    expressions[body] = expr_body
    return Ragged(offsets, genes, expressions, n_zero, n_oov)
