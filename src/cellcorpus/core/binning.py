"""scGPT's value binning, stored in the corpus: each cell's counts replaced by their bin among the cell's own
quantiles, as `scgpt.preprocess.binning(row, n_bins)` computes it, for a whole batch of cells at once.

Per cell: `bins = np.quantile(row, np.linspace(0, 1, n_bins - 1))` (NumPy's linear method, reproduced with its
own arithmetic: float64 positions, float32 differences, the two-sided lerp) and each value's bin
`np.digitize(value, bins)`, the number of edges at or below it. scGPT's `_digitize` then picks at random
between that and `np.digitize(..., right=True)` where a value equals edges (scGPT #319); here the value keeps
the first, so a stored binning is deterministic and equals scGPT's whenever no value sits on an edge, and is
the top of scGPT's random range when one does.

Vectorised over the batch: one sort of packed (cell, value bits) keys orders every cell's values (positive
floats order as their bits), the edges of every cell come from that at once, and one `np.searchsorted` of the
values' keys among the edges' keys (each edge raised to the least float32 at or above it, so comparisons stay
exact) counts the edges below each value.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["quantile_bins"]


def _cell_keys(offsets: NDArray[np.int64], bits: NDArray[np.uint32]) -> NDArray[np.uint64]:
    """(cell << 32) | the value's bits, for every entry."""
    keys = np.repeat(np.arange(len(offsets) - 1, dtype=np.uint64) << np.uint64(32), np.diff(offsets))
    keys |= bits
    return keys


def quantile_bins(offsets: NDArray[Any], values: NDArray[Any], n_bins: int) -> NDArray[np.float32]:
    """Each entry's bin among its cell's quantiles (`offsets` delimit the cells; `values` positive float32
    counts), in the entries' own order, as float32 (what scGPT's binning returns for a float32 row)."""
    offsets = np.asarray(offsets, dtype=np.int64)
    values = np.asarray(values, dtype=np.float32)
    if not len(values):
        return np.zeros(0, np.float32)
    if not values.min() > 0:
        raise ValueError("binning needs positive values (stored zeros are dropped before)")
    lengths = np.diff(offsets)
    keys = _cell_keys(offsets, values.view(np.uint32))
    ordered = np.sort(keys)
    sorted_values = (ordered & np.uint64(0xFFFFFFFF)).astype(np.uint32).view(np.float32)
    # NumPy's quantile, method linear, for every cell and edge at once
    q = np.linspace(0, 1, n_bins - 1)
    cells = np.flatnonzero(lengths > 0)
    n = lengths[cells].astype(np.float64)[:, None]
    virtual = (n - 1) * q[None, :]
    previous = np.floor(virtual)
    last = virtual >= n - 1
    prev_i = np.where(last, n - 1, previous).astype(np.int64)
    next_i = np.where(last, n - 1, previous + 1).astype(np.int64)
    gamma = virtual - previous
    start = offsets[cells][:, None]
    a, b = sorted_values[start + prev_i], sorted_values[start + next_i]
    diff = np.subtract(b, a)  # float32, as NumPy subtracts the two neighbours
    edges = np.add(a, diff * gamma)
    np.subtract(b, diff * (1 - gamma), out=edges, where=gamma >= 0.5)
    # each edge as the least float32 >= it: value >= edge  <=>  value >= that float32
    low = edges.astype(np.float32)
    low = np.where(low < edges, np.nextafter(low, np.float32(np.inf)), low)
    edge_keys = (cells.astype(np.uint64)[:, None] << np.uint64(32)) | low.view(np.uint32).astype(np.uint64)
    edge_keys = edge_keys.reshape(-1)  # sorted: cells ascending, each cell's edges non-decreasing
    below = np.searchsorted(edge_keys, keys, side="right")  # edges of earlier cells and this cell's at or below
    rank_of_cell = np.repeat(np.arange(len(cells), dtype=np.int64), lengths[cells])
    bins: NDArray[np.float32] = (below - rank_of_cell * (n_bins - 1)).astype(np.float32)
    return bins
