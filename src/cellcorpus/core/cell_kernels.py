"""Compiled passes over a block of CSR rows for `cellcorpus stats` (numba; see core/jit.py).

A block is counted into the per-gene sketch's dense (gene x bucket) table in two steps, because incrementing the
table in the rows' own order misses the cache on every value (~40 ns each, the table being tens of MB): first,
after a pass of per-cell and per-column sums, each value's (gene, bucket), written into a run per group
of 256 genes (a radix scatter: a few hundred write streams; a run is a chain of 2,048-word chunks taken from
one pool as they fill, so no pass beforehand has to size it); then each group's chunks are counted into its
slice of the table, which stays in cache. A cell's values are whole counts almost always, and each distinct
count's bucket is computed once per cell.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from cellcorpus.core.jit import float_bits, njit
from cellcorpus.core.log_buckets import BUCKET_LIMIT, TABLE_SHIFT, TABLE_START, bucket_by_log, log_buckets

__all__ = ["count_cells", "CellSums", "GroupedValues", "GROUP_BITS", "load_kernels"]

GROUP_BITS = 8  # genes per group: 2^8 (a group's table slice, 256 rows, stays in the core's cache)
_BUCKET_BITS = 21  # a packed word: (gene within its group) << 21 | (bucket + 2^20)
_MEMO = 256  # whole counts below this have their bucket remembered per cell


_CHUNK = 2048  # words per chunk of a group's run (a group's runs are chunks taken from one pool as they fill)
_FLAGS = 6  # per block: first cell with a column out of range, negatives, NaN/inf, stored zeros, low, high


@njit
def _sums(indptr: Any, indices: Any, data: Any, totals: Any, n_genes: Any, column_totals: Any, flags: Any) -> None:
    n_cols = len(column_totals)
    lowest: Any = 0.0  # below 0: a negative count
    poison: Any = 0.0  # x * 0 is NaN for a NaN or infinite x, and stays so
    zeros = 0
    for c in range(len(indptr) - 1):
        total: Any = 0.0
        cell_zeros = 0
        for k in range(indptr[c], indptr[c + 1]):  # in stored order (as scipy's sparse products ran the sums)
            j = indices[k]
            if j < 0 or j >= n_cols:
                flags[0] = c
                return
            x = np.float64(data[k])
            lowest = min(lowest, x)  # (no branch on the value: ~3x faster than counting the bad ones here)
            poison += x * 0.0
            cell_zeros += x == 0.0
            total += x
            column_totals[j] += x
        totals[c] = total
        n_genes[c] = indptr[c + 1] - indptr[c] - cell_zeros
        zeros += cell_zeros
    flags[0], flags[1], flags[2], flags[3] = -1, lowest < 0.0, poison != 0.0, zeros


@njit
def _count_bad(indptr: Any, data: Any, flags: Any) -> None:
    negative: Any = 0
    nonfinite: Any = 0
    for k in range(indptr[0], indptr[-1]):
        x = np.float64(data[k])
        negative += x < 0.0
        nonfinite += not (x > -np.inf and x < np.inf)
    flags[1], flags[2] = negative, nonfinite


@njit
def _scatter(
    indptr: Any, indices: Any, data: Any, gene_map: Any, scales: Any, target_sum: float,
    bounds: Any, table: Any, first: int, log_gamma: float, steps: int,
    pool: Any, chunk_group: Any, chunk_fill: Any, n_groups: int, flags: Any,
) -> None:  # fmt: skip
    memo = np.empty(_MEMO, np.int64)
    low, high = BUCKET_LIMIT, -BUCKET_LIMIT - 1
    local = (1 << GROUP_BITS) - 1
    used = 0  # chunks taken from the pool
    # per group: where its next word goes in the pool (0: take a chunk first). One number to load and store per
    # value: ~8% faster than a current chunk and its fill
    ends = np.zeros(n_groups, np.int64)
    for c in range(len(indptr) - 1):
        start, stop = indptr[c], indptr[c + 1]
        scale = scales[c]
        memo[:] = BUCKET_LIMIT  # (no bucket yet)
        for k in range(start, stop):  # bucketed and written into their group's run
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
                    flags[4] = flags[5] = b  # beyond the sketch's keys: the caller says so
                    return
                if whole >= 0 and whole == x:
                    memo[whole] = b
                low = min(low, b)  # (a remembered bucket is in the range already)
                high = max(high, b)
            grp = g >> GROUP_BITS
            pos = ends[grp]
            if (pos & (_CHUNK - 1)) == 0:  # no chunk yet, or its chunk is full: a new one
                pos = used * _CHUNK
                chunk_group[used] = grp
                chunk_fill[used] = _CHUNK
                used += 1
            pool[pos] = ((g & local) << _BUCKET_BITS) | (b + BUCKET_LIMIT)
            ends[grp] = pos + 1
    for grp in range(n_groups):  # each group's last chunk is filled up to its next position
        if ends[grp] & (_CHUNK - 1):
            chunk_fill[ends[grp] // _CHUNK] = ends[grp] & (_CHUNK - 1)
    flags[4], flags[5] = low, high


@njit
def _count(order: Any, chunk_group: Any, chunk_fill: Any, pool: Any, flat: Any, width: int, low: int) -> None:
    mask = (1 << _BUCKET_BITS) - 1
    offset = -BUCKET_LIMIT - low
    for ch in order:  # chunks by group: each group's slice of the table is visited once
        base = (chunk_group[ch] << GROUP_BITS) * width + offset
        for k in range(ch * _CHUNK, ch * _CHUNK + chunk_fill[ch]):
            w = np.int64(pool[k])
            flat[base + (w >> _BUCKET_BITS) * width + (w & mask)] += 1  # (one flat index: ~20% faster than 2-D)


@njit
def _unpack(order: Any, chunk_group: Any, chunk_fill: Any, pool: Any, genes: Any, buckets: Any) -> None:
    mask = (1 << _BUCKET_BITS) - 1
    at = 0
    for ch in order:
        for k in range(ch * _CHUNK, ch * _CHUNK + chunk_fill[ch]):
            genes[at] = (chunk_group[ch] << GROUP_BITS) | (pool[k] >> _BUCKET_BITS)
            buckets[at] = (pool[k] & mask) - BUCKET_LIMIT
            at += 1


@dataclass(frozen=True)
class CellSums:
    """What a block's first pass found: per cell its total of stored counts and non-zero entries, per column its
    total; stored zeros, negative and NaN/infinite counts; the first cell with a column index out of range."""

    totals: NDArray[np.float64]
    n_genes: NDArray[np.int64]
    column_totals: NDArray[np.float64]
    n_zero: int
    n_negative: int
    n_nonfinite: int
    bad_column_cell: int  # -1: none


class GroupedValues:
    """A block's (gene, bucket) pairs in chunks, each of one group of 2^GROUP_BITS genes; `low`/`high` their bucket
    range."""

    def __init__(self, pool: NDArray[np.uint32], chunk_group: NDArray[np.int64], chunk_fill: NDArray[np.int64],
                 low: int, high: int) -> None:  # fmt: skip
        self.pool, self.chunk_group, self.chunk_fill, self.low, self.high = pool, chunk_group, chunk_fill, low, high
        self.order = np.argsort(chunk_group, kind="stable")

    def __len__(self) -> int:
        return int(self.chunk_fill.sum())

    def count_into(self, table: NDArray[Any], low: int) -> None:
        """Add one to table[gene, bucket - low] per pair (the table covers every gene and bucket here)."""
        if not table.flags.c_contiguous:
            raise ValueError("count_into needs a C-contiguous table")
        _count(self.order, self.chunk_group, self.chunk_fill, self.pool, table.reshape(-1), table.shape[1], low)

    def pairs(self) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """(genes, buckets), one entry per value."""
        genes, buckets = np.empty(len(self), np.int64), np.empty(len(self), np.int64)
        _unpack(self.order, self.chunk_group, self.chunk_fill, self.pool, genes, buckets)
        return genes, buckets


def count_cells(
    indptr: NDArray[np.int64], indices: NDArray[Any], data: NDArray[Any], n_cols: int, gene_map: NDArray[Any],
    target_sum: float, gamma: float, n_counts: NDArray[Any] | None = None,
) -> tuple[CellSums, GroupedValues | None]:  # fmt: skip
    """One pass over CSR rows (columns 0..n_cols-1): their sums, and each stored value's (vocabulary id, bucket of
    value / its cell's n_counts (default: its total) x target_sum) for values whose column maps (gene_map >= 0)
    and whose normalised value is finite and positive. No pairs (None) when a column index is out of range or a
    count is negative or not finite (the sums say which)."""
    lb = log_buckets(gamma)
    n_cells = len(indptr) - 1
    totals, n_genes, column_totals = np.zeros(n_cells), np.zeros(n_cells, np.int64), np.zeros(n_cols)
    n_groups = (int(gene_map.max(initial=0)) >> GROUP_BITS) + 1
    n_chunks = len(indices) // _CHUNK + n_groups + 1  # (each group leaves at most one chunk part-filled)
    pool = np.empty(n_chunks * _CHUNK, np.uint32)
    chunk_group, chunk_fill = np.zeros(n_chunks, np.int64), np.zeros(n_chunks, np.int64)
    flags = np.zeros(_FLAGS, np.int64)
    flags[4], flags[5] = BUCKET_LIMIT, -BUCKET_LIMIT - 1  # (no values: an empty range)
    _sums(indptr, indices, data, totals, n_genes, column_totals, flags)
    if flags[0] < 0 and (flags[1] or flags[2]):  # only whether: how many, for the message (a second pass, rare)
        _count_bad(indptr, data, flags)
    if flags[0] < 0 and not flags[1] and not flags[2]:  # (a separate pass: fused into the next, both ran ~1.7x slower)
        scales = totals if n_counts is None else np.asarray(n_counts, dtype=np.float64)
        _scatter(indptr, indices, data, gene_map, scales, float(target_sum), lb.bounds, lb.table, lb.first,
                 lb.log_gamma, lb.steps, pool, chunk_group, chunk_fill, n_groups, flags)  # fmt: skip
    bad, negative, nonfinite, zeros, low, high = (int(f) for f in flags)
    sums = CellSums(totals, n_genes, column_totals, zeros, negative, nonfinite, bad)
    if low == high and not (-BUCKET_LIMIT <= low < BUCKET_LIMIT):
        raise ValueError(f"values beyond the sketch's range (bucket {low})")
    if bad >= 0 or negative or nonfinite:
        return sums, None
    used = int(np.count_nonzero(chunk_fill))
    return sums, GroupedValues(pool, chunk_group[:used], chunk_fill[:used], low, high)


def load_kernels() -> None:
    """Load the passes for the usual input (int32 columns, float32 counts; compiled if not cached yet) now: numba
    takes ~0.8 s to start in a process, which a worker warmed up this way (`exec.runner.warm_up`) pays while the
    parent still inspects the inputs, not in its first unit. Other dtypes load when first used."""
    indptr = np.array([0, 2], np.int64)
    _, grouped = count_cells(indptr, np.array([0, 1], np.int32), np.array([1, 2], np.float32), 2,
                             np.arange(2, dtype=np.int32), 1.0, 1.01)  # fmt: skip
    assert grouped is not None
    grouped.count_into(np.zeros((2, grouped.high - grouped.low + 1), np.uint32), grouped.low)
