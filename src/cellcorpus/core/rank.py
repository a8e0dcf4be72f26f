"""Rank-value encoding over a whole batch of cells at once (Geneformer's per-cell `np.argsort(-values)`).

One stable sort by (cell, -value) orders every cell; ties keep stored order there. NumPy's own argsort
(what the reference calls per cell) need not be stable, so the few cells holding tied values are re-ordered
with exactly that call on exactly that cell's values: the ranks equal the reference's on this machine,
ties included, with a Python step only per tied cell.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["rank_descending", "cell_rows", "take_ranked"]


def cell_rows(offsets: NDArray[Any]) -> NDArray[np.int64]:
    """The cell of each entry of a ragged batch."""
    lengths = np.diff(offsets)
    return np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)


def rank_descending(offsets: NDArray[Any], values: NDArray[Any]) -> tuple[NDArray[np.int64], int]:
    """Positions of `values` ordering each cell by descending value, as `np.argsort(-cell_values)` orders a
    cell; and the number of cells whose ties needed that call."""
    rows = cell_rows(offsets)
    neg = -values
    order = np.lexsort((neg, rows))  # stable: rows ascending, then -value, ties in stored order
    ranked = neg[order]  # rows[order] == rows: the sort keeps the cells in place
    tied_cells = np.unique(rows[1:][(ranked[1:] == ranked[:-1]) & (rows[1:] == rows[:-1])])
    for cell in tied_cells:  # the reference's own call on the cell's values in stored order
        lo, hi = int(offsets[cell]), int(offsets[int(cell) + 1])
        order[lo:hi] = lo + np.argsort(neg[lo:hi])
    return order, len(tied_cells)


def take_ranked(
    offsets: NDArray[Any], order: NDArray[np.int64], tokens: NDArray[Any], limit: int,
    first: int | None = None, last: int | None = None,
) -> tuple[NDArray[np.int64], NDArray[Any]]:  # fmt: skip
    """Each cell's first `limit` ranked tokens, between `first` and `last` when given: (offsets, tokens)."""
    lengths = np.diff(offsets)
    rows = cell_rows(offsets)
    keep = (np.arange(len(order), dtype=np.int64) - offsets[:-1][rows]) < limit  # rank within its cell
    body = tokens[order[keep]]
    kept = np.minimum(lengths, limit)
    extra = int(first is not None) + int(last is not None)
    out_offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(kept + extra, out=out_offsets[1:])
    if not extra:
        return out_offsets, body
    out = np.empty(int(out_offsets[-1]), dtype=tokens.dtype)
    is_body = np.ones(len(out), dtype=bool)
    if first is not None:
        out[out_offsets[:-1]] = first
        is_body[out_offsets[:-1]] = False
    if last is not None:
        out[out_offsets[1:] - 1] = last
        is_body[out_offsets[1:] - 1] = False
    out[is_body] = body
    return out_offsets, out
