"""Compiled passes of the rank-value encoding (numba; see core/jit.py): each replaces several NumPy passes over a
slice of entries (the slices are cache-sized, so the passes' cost was their number, not memory).

- `scaled_values`: count x (1 / the cell's total) x target_sum x (1 / the gene's median), each product rounded in
  the dtype NumPy gives it (the reference's own arithmetic), in one pass;
- `fill_keys`: the sort keys of `core/rank.py` (cell, descending value bits, token id), in one pass;
- `take_tokens`: the sorted keys' token ids, and where two neighbours tie, in one pass;
- `scaled_keys` and `take_ranked`: the first two fused for Geneformer's values (no array of values: each is
  keyed as it is computed, non-positive ones left out), and the last writing each cell's first `limit` ids
  straight into the output, for many slices per call (`core/rank.py::rank_scaled`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from cellcorpus.core.jit import float_bits, njit

__all__ = ["scaled_values", "fill_keys", "take_tokens", "scaled_keys", "take_ranked", "slice_shifts"]


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


@njit
def slice_shifts(n_cells: int, token_bits: int, wide: bool) -> tuple[int, int, int]:
    """(value bits, right shift of a value's bits, shift of the cell index) of a slice of `n_cells` cells, as
    `core/rank.py::_rank_slice` packs its keys: cell | value bits | token id in 63 bits."""
    cell_bits = 1
    while (1 << cell_bits) < n_cells:
        cell_bits += 1
    value_bits = 63 - cell_bits - token_bits
    return value_bits, max(0, (63 if wide else 31) - value_bits), value_bits + token_bits


@njit
def _scaled_keys(offsets: Any, counts: Any, genes: Any, per_cell: Any, target: Any, per_gene: Any, bounds: Any,
                 token_bits: int, keys: Any, kept: Any, slice_n: Any) -> int:  # fmt: skip
    t = target[0]
    wide = per_gene.itemsize == 8
    top = np.uint64(0x7FF0000000000000 if wide else 0x7F800000)  # +inf's bits
    base = offsets[bounds[0]]
    n_without = 0
    for s in range(len(bounds) - 1):
        lo, hi = bounds[s], bounds[s + 1]
        _, shift, cell_shift = slice_shifts(hi - lo, token_bits, wide)
        at = offsets[lo] - base
        for c in range(lo, hi):
            cell = np.uint64(c - lo) << np.uint64(cell_shift)
            p = per_cell[c]
            n = 0
            for k in range(offsets[c], offsets[c + 1]):
                v = counts[k] * p  # the reference's products, each in its dtype (as `_scaled`)
                v = v * t
                m = per_gene[genes[k]]
                n_without += m == 0
                w = v * m
                if w > 0:  # (NaN not)
                    value = (top - np.uint64(float_bits(w))) >> np.uint64(shift)  # type: ignore[call-arg]
                    keys[at + n] = cell | (value << np.uint64(token_bits)) | np.uint64(genes[k])
                    n += 1
            kept[c] = n
            at += n
        slice_n[s] = at - (offsets[lo] - base)
    return n_without


def scaled_keys(
    offsets: NDArray[np.int64], counts: NDArray[Any], genes: NDArray[Any], per_cell: NDArray[Any],
    target: NDArray[Any], per_gene: NDArray[Any], bounds: NDArray[np.int64], token_bits: int,
    keys: NDArray[np.uint64], kept: NDArray[np.int64], slice_n: NDArray[np.int64],
) -> int:  # fmt: skip
    """For each slice s of cells bounds[s]..bounds[s+1]-1: the sort keys (cell in the slice | descending value
    bits | token id) of its entries whose value counts[k] * per_cell[cell] * target[0] * per_gene[genes[k]] (as
    `scaled_values` computes it, the arrays already in its dtypes) is > 0, written from keys[offsets[first
    cell] - offsets[bounds[0]]] (stored order); slice_n[s] of them, kept[cell] per cell. Returns how many entries'
    per_gene is 0 (no median)."""
    return int(_scaled_keys(offsets, counts, genes, per_cell, target, per_gene, bounds, token_bits, keys, kept,
                            slice_n))  # fmt: skip


@njit
def _take_ranked(keys: Any, offsets: Any, bounds: Any, slice_n: Any, token_bits: int, wide: bool, out_offsets: Any,
                 head: int, tail: int, out: Any, tied: Any) -> None:  # fmt: skip
    mask = np.uint64((1 << token_bits) - 1)
    base = offsets[bounds[0]]
    for s in range(len(bounds) - 1):
        lo, hi = bounds[s], bounds[s + 1]
        _, _, cell_shift = slice_shifts(hi - lo, token_bits, wide)
        at = offsets[lo] - base
        prev = np.uint64(0)
        cell = -1
        j = n_out = dest = 0
        for i in range(at, at + slice_n[s]):
            key = keys[i]
            c = lo + np.int64(key >> np.uint64(cell_shift))
            if c != cell:  # a cell's first key: where its ids go, how many
                cell, j = c, 0
                dest = out_offsets[c] + head
                n_out = out_offsets[c + 1] - dest - tail
            elif (key ^ prev) <= mask:  # the same cell and value bits as the one before
                tied[c] = True
            prev = key
            if j < n_out:  # the first `limit`
                out[dest + j] = key & mask
            j += 1


def take_ranked(
    keys: NDArray[np.uint64], offsets: NDArray[np.int64], bounds: NDArray[np.int64], slice_n: NDArray[np.int64],
    token_bits: int, wide: bool, out_offsets: NDArray[np.int64], head: int, tail: int, out: NDArray[np.int64],
    tied: NDArray[np.bool_],
) -> None:  # fmt: skip
    """After each slice's keys (as `scaled_keys` wrote them) are sorted: each cell's token ids in key order into
    out[out_offsets[cell] + head ...], as many as its output holds less `head` + `tail` marker places; tied[cell]
    set where two of its keys share their value bits (the reference's own call decides their order)."""
    _take_ranked(keys, offsets, bounds, slice_n, token_bits, wide, out_offsets, head, tail, out, tied)
