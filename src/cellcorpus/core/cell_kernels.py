"""Compiled passes over a block of CSR rows for `cellcorpus stats` (numba; see core/jit.py).

A block is counted into the per-gene sketch's dense (gene x bucket) table in two passes, because incrementing the
table in the rows' own order misses the cache on every value (~40 ns each, the table being tens of MB): first
each value's (gene, bucket) is written into a run per group of 256 genes (a radix scatter: a few hundred write
streams), then each group's run is counted into its slice of the table, which stays in cache. A cell's values
are whole counts almost always, and each distinct count's bucket is computed once per cell.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from cellcorpus.core.jit import njit
from cellcorpus.core.log_buckets import BUCKET_LIMIT, TABLE_SHIFT, TABLE_START, bucket_by_log, float_bits, log_buckets

__all__ = ["scan_cells", "group_values", "add_columns", "GROUP_BITS"]

GROUP_BITS = 8  # genes per group: 2^8 (a group's table slice, 256 rows, stays in the core's cache)
_BUCKET_BITS = 21  # a packed word: (gene within its group) << 21 | (bucket + 2^20)
_MEMO = 256  # whole counts below this have their bucket remembered per cell


@njit
def _scan(indptr: Any, indices: Any, data: Any, totals: Any, n_genes: Any, column_totals: Any, entries: Any) -> int:
    n_cols = len(column_totals)
    for c in range(len(indptr) - 1):
        total: Any = 0.0
        n = 0
        for k in range(indptr[c], indptr[c + 1]):
            j = indices[k]
            if j < 0 or j >= n_cols:
                return c
            x = np.float64(data[k])
            total += x
            n += x != 0
            column_totals[j] += x
            entries[j] += 1
        totals[c] = total
        n_genes[c] = n
    return -1


def scan_cells(
    indptr: NDArray[np.int64], indices: NDArray[Any], data: NDArray[Any], n_cols: int
) -> tuple[NDArray[np.float64], NDArray[np.int64], NDArray[np.float64], NDArray[np.int64], int]:
    """(each cell's total of stored counts, its non-zero entries, each column's total, each column's stored
    entries, the first cell with a column index outside 0..n_cols-1 or -1). Sums run in stored order, as
    scipy's sparse products did."""
    n = len(indptr) - 1
    totals, n_genes = np.zeros(n), np.zeros(n, np.int64)
    column_totals, entries = np.zeros(n_cols), np.zeros(n_cols, np.int64)
    bad = _scan(indptr, indices, data, totals, n_genes, column_totals, entries)
    return totals, n_genes, column_totals, entries, int(bad)


@njit
def _scatter(
    indptr: Any, indices: Any, data: Any, gene_map: Any, n_counts: Any, target_sum: float,
    bounds: Any, table: Any, first: int, log_gamma: float, steps: int, fill: Any, out: Any,
) -> tuple[int, int]:  # fmt: skip
    memo = np.empty(_MEMO, np.int64)
    low, high = BUCKET_LIMIT, -BUCKET_LIMIT - 1
    local = (1 << GROUP_BITS) - 1
    for c in range(len(indptr) - 1):
        scale = n_counts[c]
        memo[:] = BUCKET_LIMIT  # (no bucket yet)
        for k in range(indptr[c], indptr[c + 1]):
            g = gene_map[indices[k]]
            if g < 0:
                continue
            x = data[k]
            whole = np.int64(x) if x >= 0 and x < _MEMO else -1
            if whole >= 0 and whole == x and memo[whole] != BUCKET_LIMIT:
                b = memo[whole]
            else:
                v = np.float64(x) / scale  # the order of operations of the array code before: / total, x sum
                v *= target_sum
                if not (v > 0.0 and v < np.inf):
                    continue
                at = (float_bits(v) >> TABLE_SHIFT) - TABLE_START  # type: ignore[call-arg]  # (its bucket: inline)
                if at >= 0 and at < len(table):
                    b = np.int64(table[at])
                    for _ in range(steps):  # branch-free: at most `steps` boundaries lie in one table interval
                        b += v > bounds[b]
                    b += first
                else:
                    b = bucket_by_log(v, log_gamma)
                if b < -BUCKET_LIMIT or b >= BUCKET_LIMIT:
                    return b, b  # beyond the sketch's keys: the caller says so
                if whole >= 0 and whole == x:
                    memo[whole] = b
            low = min(low, b)
            high = max(high, b)
            grp = g >> GROUP_BITS
            out[fill[grp]] = ((g & local) << _BUCKET_BITS) | (b + BUCKET_LIMIT)
            fill[grp] += 1
    return low, high


@njit
def _count(starts: Any, fill: Any, words: Any, table: Any, low: int) -> None:
    mask = (1 << _BUCKET_BITS) - 1
    for grp in range(len(starts)):
        base = grp << GROUP_BITS
        for k in range(starts[grp], fill[grp]):
            w = words[k]
            table[base + (w >> _BUCKET_BITS), (w & mask) - BUCKET_LIMIT - low] += 1


@njit
def _unpack(starts: Any, fill: Any, words: Any, genes: Any, buckets: Any) -> None:
    mask = (1 << _BUCKET_BITS) - 1
    at = 0
    for grp in range(len(starts)):
        for k in range(starts[grp], fill[grp]):
            genes[at] = (grp << GROUP_BITS) | (words[k] >> _BUCKET_BITS)
            buckets[at] = (words[k] & mask) - BUCKET_LIMIT
            at += 1


class GroupedValues:
    """A block's (gene, bucket) pairs, in runs per group of 2^GROUP_BITS genes; `low`/`high` their bucket range."""

    def __init__(self, starts: NDArray[np.int64], fill: NDArray[np.int64], words: NDArray[np.uint32], low: int,
                 high: int) -> None:  # fmt: skip
        self.starts, self.fill, self.words, self.low, self.high = starts, fill, words, low, high

    def __len__(self) -> int:
        return int((self.fill - self.starts).sum())

    def count_into(self, table: NDArray[Any], low: int) -> None:
        """Add one to table[gene, bucket - low] per pair (the table covers every gene and bucket here)."""
        _count(self.starts, self.fill, self.words, table, low)

    def pairs(self) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """(genes, buckets), one entry per value."""
        genes, buckets = np.empty(len(self), np.int64), np.empty(len(self), np.int64)
        _unpack(self.starts, self.fill, self.words, genes, buckets)
        return genes, buckets


def group_values(
    indptr: NDArray[np.int64], indices: NDArray[Any], data: NDArray[Any], gene_map: NDArray[Any],
    n_counts: NDArray[np.float64], target_sum: float, gamma: float, column_entries: NDArray[np.int64],
) -> GroupedValues:  # fmt: skip
    """Each stored value's (vocabulary id, bucket of value / its cell's n_counts x target_sum) for values whose
    column maps (gene_map >= 0) and whose normalised value is finite and positive. `column_entries` (stored
    entries per column, from `scan_cells`) sizes each group's run."""
    lb = log_buckets(gamma)
    mapped = gene_map >= 0
    n_groups = (int(gene_map.max(initial=0)) >> GROUP_BITS) + 1
    sizes = np.bincount(gene_map[mapped] >> GROUP_BITS, weights=column_entries[mapped], minlength=n_groups)
    starts = np.zeros(n_groups, np.int64)
    np.cumsum(sizes[:-1].astype(np.int64), out=starts[1:])
    fill = starts.copy()
    words = np.empty(int(sizes.sum()), np.uint32)
    low, high = _scatter(
        indptr, indices, data, gene_map, n_counts, float(target_sum),
        lb.bounds, lb.table, lb.first, lb.log_gamma, lb.steps, fill, words,
    )  # fmt: skip
    if low == high and not (-BUCKET_LIMIT <= low < BUCKET_LIMIT):
        raise ValueError(f"values beyond the sketch's range (bucket {low})")
    return GroupedValues(starts, fill, words, int(low), int(high))


@njit
def _add_columns(dest: Any, src: Any, first: int) -> None:
    for g in range(src.shape[0]):
        for j in range(src.shape[1]):
            dest[g, first + j] += src[g, j]


def add_columns(dest: NDArray[Any], src: NDArray[Any], first: int) -> None:
    """dest[:, first : first + src's columns] += src, in dest's dtype (an unsigned count table into a wider one)."""
    if src.shape[0] != dest.shape[0] or first < 0 or first + src.shape[1] > dest.shape[1]:
        raise ValueError(f"a {src.shape} table does not fit {dest.shape} at column {first}")
    _add_columns(dest, np.ascontiguousarray(src), first)
