"""Compiled passes of the rank-value encoding (numba; see core/jit.py): each replaces several NumPy passes over a
slice of entries (the slices are cache-sized, so the passes' cost was their number, not memory).

- `scaled_values`: count x (1 / the cell's total) x target_sum x (1 / the gene's median), each product rounded in
  the dtype NumPy gives it (the reference's own arithmetic), in one pass;
- `fill_keys`: the sort keys of `core/rank.py` (cell, descending value bits, token id), in one pass;
- `take_tokens`: the sorted keys' token ids, and where two neighbours tie, in one pass.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from cellcorpus.core.jit import njit

__all__ = ["scaled_values", "fill_keys", "take_tokens"]


@njit
def _scaled(offsets: Any, counts: Any, genes: Any, per_cell: Any, target: Any, per_gene: Any, out: Any) -> int:
    t = target[0]  # (typed as the first products: counts and per_cell share that dtype here)
    not_positive = 0
    for c in range(len(offsets) - 1):
        p = per_cell[c]
        for k in range(offsets[c], offsets[c + 1]):
            v = counts[k] * p
            v = v * t
            w = v * per_gene[genes[k]]  # in the last product's dtype
            out[k] = w
            not_positive += not (w > 0)  # (NaN too)
    return not_positive


def scaled_values(
    offsets: NDArray[np.int64], counts: NDArray[Any], genes: NDArray[Any], per_cell: NDArray[Any],
    target_sum: int, per_gene: NDArray[Any], into: NDArray[Any] | None = None,
) -> tuple[NDArray[Any], int]:  # fmt: skip
    """(counts * per_cell[cell] * target_sum * per_gene[gene], how many are not > 0), as NumPy computes
    `counts * np.repeat(per_cell, lengths)`, then `*= target_sum` in place, then `* per_gene[genes]`: the first
    two products in result_type(counts, per_cell), the last in result_type of that and per_gene's."""
    first = np.result_type(counts.dtype, per_cell.dtype)
    last = np.result_type(first, per_gene.dtype)
    if first.kind != "f" or first.itemsize not in (4, 8) or last.itemsize not in (4, 8):  # (float16: NumPy)
        values = counts * np.repeat(per_cell, np.diff(offsets))
        values *= target_sum
        values = values * per_gene[genes] if last != first else np.multiply(values, per_gene[genes], out=values)
        return values, int(np.count_nonzero(~(values > 0)))
    out = np.empty(len(counts), last) if into is None else into[: len(counts)]
    target = np.array([target_sum], dtype=first)  # (`*= target_sum` rounds target_sum to the values' dtype)
    counts = counts.astype(first, copy=False)  # (a widening, exact: as NumPy casts them for the product)
    n = _scaled(offsets, counts, genes, per_cell.astype(first, copy=False), target, per_gene.astype(last, copy=False),
                out)  # fmt: skip
    return out, int(n)


@njit
def _keys(offsets: Any, bits: Any, tokens: Any, lo: int, hi: int, top: int, shift: int, token_bits: int,
          cell_shift: int, keys: Any) -> None:  # fmt: skip
    start = offsets[lo]
    for c in range(lo, hi):
        cell = np.uint64(c - lo) << np.uint64(cell_shift)
        for k in range(offsets[c], offsets[c + 1]):
            value = (np.uint64(top) - np.uint64(bits[k])) >> np.uint64(shift)
            keys[k - start] = cell | (value << np.uint64(token_bits)) | np.uint64(tokens[k])


def fill_keys(
    offsets: NDArray[np.int64], bits: NDArray[Any], tokens: NDArray[Any], lo: int, hi: int, top: int, shift: int,
    token_bits: int, cell_shift: int, keys: NDArray[np.uint64],
) -> None:  # fmt: skip
    """keys[k - offsets[lo]] for each entry k of cells lo..hi-1: (cell - lo) << cell_shift | ((top - bits[k]) >>
    shift) << token_bits | tokens[k] (`bits`: positive floats' bits, which order as the floats do)."""
    _keys(offsets, bits, tokens, lo, hi, top, shift, token_bits, cell_shift, keys)


@njit
def _take(keys: Any, mask: int, dest: Any, ties: Any) -> int:
    m = np.uint64(mask)
    tied = 0
    prev = np.uint64(0)
    for i in range(len(keys)):
        key = keys[i]
        if i and (key ^ prev) <= m:  # the same cell and value bits as the one before
            ties[tied] = i - 1
            tied += 1
        prev = key
        dest[i] = key & m
    return tied


def take_tokens(keys: NDArray[np.uint64], mask: int, dest: NDArray[Any]) -> NDArray[np.int64]:
    """dest[i] = keys[i] & mask (the token ids; `dest` may be `keys` itself); returns each i where keys[i] and
    keys[i + 1] share everything above the mask (a tie), as `flatnonzero((keys[1:] ^ keys[:-1]) <= mask)`."""
    ties = np.empty(max(len(keys) - 1, 0), np.int64)
    n = _take(keys, mask, dest, ties)
    return ties[:n]
