"""Rank-value encoding over a whole batch of cells at once (Geneformer's per-cell `np.argsort(-values)`).

The batch is sorted in slices with one flat `np.sort` of packed 64-bit keys (cell, descending value, token
id), each cell's first/last marker sorted into place as a key of its own: the cells stay where they were, each
one's entries now in descending order, and the low bits are the output ids themselves. NumPy sorts unsigned
64-bit keys with its SIMD sort (x86-simd-sort / Highway), ~3.5x faster than an `argsort` of padded rows and
with no gather afterwards. Positive floats order as their bits
do, so the value bits are the float's own bits, reversed for descending order; float64 values keep their top
bits (relative resolution ~2^-28 or finer). Where two entries of a cell share those value bits (a tie in the
values, or rarely two values closer than the resolution) or a cell holds a NaN, NumPy's argsort (not stable)
decides the order, so those cells, few, are re-ranked with exactly the reference's call on exactly the
cell's values: the ranks equal the reference's on this machine, ties included, with a Python step only per
tied cell and per slice.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["rank_tokens", "rank_scaled", "cell_rows"]

_SLICE_ENTRIES = (
    1 << 15
)  # entries sorted at once: keys in L2 (measured best of 2^13..2^21, ~3.5x 2^20's speed per entry)
_SLICE_CELLS = 1 << 9  # cells per slice: 9 key bits at most
_MIN_VALUE_BITS = 28  # fewer value bits than this and a slice's cells all go to the reference's call


def cell_rows(offsets: NDArray[Any]) -> NDArray[np.int64]:
    """The cell of each entry of a ragged batch."""
    lengths = np.diff(offsets)
    rows: NDArray[np.int64] = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    return rows


def _ranges(starts: NDArray[np.int64], n: NDArray[np.int64]) -> NDArray[np.int64]:
    """starts[i] + 0 .. n[i]-1 for every i, concatenated (no per-range loop)."""
    out: NDArray[np.int64] = np.arange(int(n.sum()), dtype=np.int64) + np.repeat(starts - (np.cumsum(n) - n), n)
    return out


def _descending_bits(values: NDArray[Any], positive: bool, out: NDArray[np.uint64]) -> int:
    """Into `out`: unsigned keys that order as the values do descending (-0.0 as 0.0); returns the bits used."""
    width = 32 if values.dtype.itemsize <= 4 else 64
    floats: NDArray[Any] = values.astype(np.float32 if width == 32 else np.float64, copy=False)
    if positive:  # the usual case: positive floats order as their bits do
        bits = floats.view(np.uint32 if width == 32 else np.uint64)
        top = np.uint64(0x7F800000 if width == 32 else 0x7FF0000000000000)  # +inf's bits
        np.subtract(top, bits, out=out, dtype=np.uint64)
        return width - 1
    raw: NDArray[Any] = (floats + 0.0).view(np.uint32 if width == 32 else np.uint64).astype(np.uint64)
    sign = np.uint64(1 << (width - 1))
    ascending = np.where(raw & sign, ~raw & np.uint64((1 << width) - 1), raw | sign)  # IEEE order (-0.0 -> +0.0)
    np.subtract(np.uint64((1 << width) - 1), ascending, out=out)
    return width


def _rank_slice(
    offsets: NDArray[np.int64], values: NDArray[Any], tokens: NDArray[Any], lo: int, hi: int,
    first: int | None, last: int | None, token_bits: int, dest: NDArray[Any] | None,
) -> tuple[NDArray[Any], NDArray[np.int64]] | None:  # fmt: skip
    """Cells lo..hi-1 of the batch, each `first`, its tokens by descending value, `last` (untruncated; written into
    `dest` when given, an 8-byte integer array), and the cells whose ranks need the reference's call; None when
    the keys have too few bits for the values."""
    from cellcorpus.core.rank_kernels import fill_keys, slice_shifts, take_tokens  # (compiled: loaded where used)

    start, stop = int(offsets[lo]), int(offsets[hi])
    lengths = np.diff(offsets[lo : hi + 1])
    value_bits = slice_shifts(hi - lo, token_bits, True)[0]
    if value_bits < _MIN_VALUE_BITS:
        return None
    n, extra = stop - start, int(first is not None) + int(last is not None)
    keys = np.empty(n + extra * (hi - lo), dtype=np.uint64)  # the entries, then each cell's markers
    entries = keys[:n]
    vals = values[start:stop]
    positive = vals.dtype.kind == "f" and bool(vals.min(initial=np.inf) > 0)  # (NaN: the reference's call below)
    cell_keys = np.arange(hi - lo, dtype=np.uint64) << np.uint64(value_bits + token_bits)
    if positive and vals.dtype.itemsize in (4, 8) and tokens.dtype.kind in "iu":  # one compiled pass
        wide = vals.dtype.itemsize == 8
        top = 0x7FF0000000000000 if wide else 0x7F800000  # +inf's bits
        bits = values.view(np.uint64 if wide else np.uint32)
        shift = slice_shifts(hi - lo, token_bits, wide)[1]
        fill_keys(offsets, bits, tokens, lo, hi, top, shift, token_bits, value_bits + token_bits, entries)
    else:
        width = _descending_bits(vals, positive, entries)
        if width > value_bits:
            entries >>= np.uint64(width - value_bits)
        entries <<= np.uint64(token_bits)
        np.bitwise_or(entries, tokens[start:stop], out=entries, dtype=np.uint64, casting="unsafe")
        entries += np.repeat(cell_keys, lengths)
    at = n  # markers sorted into place with the cell's entries: value bits all 0 sort first, all 1 last
    if first is not None:
        np.bitwise_or(cell_keys, np.uint64(first), out=keys[at : at + hi - lo])
        at += hi - lo
    if last is not None:
        np.bitwise_or(cell_keys, np.uint64((((1 << value_bits) - 1) << token_bits) | last), out=keys[at:])
    keys.sort()
    mask = np.uint64((1 << token_bits) - 1)
    ranked = keys if dest is None else dest.view(np.uint64)
    tie = take_tokens(keys, int(mask), ranked)  # the ids, and where two neighbours share cell and value bits
    segments = offsets[lo : hi + 1] - start + extra * np.arange(hi - lo + 1)
    tied = np.searchsorted(segments, tie, side="right") - 1
    if vals.dtype.kind == "f" and not positive:  # NaN: the reference's call
        nan = np.flatnonzero(np.isnan(vals))
        tied = np.concatenate([tied, np.searchsorted(offsets, start + nan, side="right") - 1 - lo])
    if dest is not None:
        return dest, lo + np.unique(tied)
    return keys.view(np.int64), lo + np.unique(tied)


def rank_tokens(
    offsets: NDArray[Any], values: NDArray[Any], tokens: NDArray[Any], limit: int,
    first: int | None = None, last: int | None = None, dtype: Any = None, into: NDArray[Any] | None = None,
) -> tuple[NDArray[np.int64], NDArray[Any], int]:  # fmt: skip
    """Each cell's tokens (non-negative ids) by descending value (as `np.argsort(-cell_values)` orders them), its
    first `limit`, between `first` and `last` when given: (offsets, tokens in `dtype` (default the tokens'; written
    at the start of `into` when given), cells whose ties needed the reference's call)."""
    offsets = np.asarray(offsets, dtype=np.int64)
    lengths = np.diff(offsets)
    n_cells = len(lengths)
    kept = np.minimum(lengths, limit)
    shift = int(first is not None)
    extra = shift + int(last is not None)
    out_offsets = np.zeros(n_cells + 1, dtype=np.int64)
    np.cumsum(kept + extra, out=out_offsets[1:])
    size = int(out_offsets[-1])
    out = np.empty(size, dtype=tokens.dtype if dtype is None else dtype) if into is None else into[:size]
    if len(tokens) and int(tokens.min()) < 0:
        raise ValueError("token ids must be non-negative")
    top = max([int(tokens.max()) if len(tokens) else 0] + [t for t in (first, last) if t is not None])
    token_bits = max(1, top.bit_length())
    tied: list[NDArray[np.int64]] = []
    lo = 0
    while lo < n_cells:
        by_entries = int(np.searchsorted(offsets, offsets[lo] + _SLICE_ENTRIES, side="right")) - 1
        hi = min(max(by_entries, lo + 1), lo + _SLICE_CELLS, n_cells)
        whole = bool((kept[lo:hi] == lengths[lo:hi]).all())  # nothing truncated: ranked straight into `out`
        dest = out[out_offsets[lo] : out_offsets[hi]] if whole and out.dtype.itemsize == 8 else None
        ranked = _rank_slice(offsets, values, tokens, lo, hi, first, last, token_bits, dest)
        if ranked is None:  # ids too wide to pack with the values: every cell by the reference's call
            tied.append(np.arange(lo, hi, dtype=np.int64))
            if first is not None:
                out[out_offsets[lo:hi]] = first
            if last is not None:
                out[out_offsets[lo + 1 : hi + 1] - 1] = last
        elif whole:  # the slice's ids as they are
            if dest is None:
                out[out_offsets[lo] : out_offsets[hi]] = ranked[0]
            tied.append(ranked[1])
        else:  # each cell's first `shift + kept` and its last
            seg = offsets[lo:hi] - offsets[lo] + extra * np.arange(hi - lo)
            take = _ranges(seg, kept[lo:hi] + shift)
            if last is not None:
                ends = seg + lengths[lo:hi] + extra - 1
                take = np.sort(np.concatenate([take, ends]))
            out[out_offsets[lo] : out_offsets[hi]] = ranked[0][take]
            tied.append(ranked[1])
        lo = hi
    tied_cells = np.concatenate(tied) if tied else np.zeros(0, np.int64)
    for cell in tied_cells.tolist():  # the reference's own call on the cell's values alone
        start, stop = int(offsets[cell]), int(offsets[cell + 1])
        at = int(out_offsets[cell]) + shift
        out[at : at + int(kept[cell])] = tokens[start + np.argsort(-values[start:stop])[: int(kept[cell])]]
    return out_offsets, out, len(tied_cells)


_BATCH_ENTRIES = 1 << 21  # entries keyed per call of the compiled passes (the keys: 16 MB at most)


def rank_scaled(
    offsets: NDArray[np.int64], counts: NDArray[Any], genes: NDArray[Any], per_cell: NDArray[Any], target_sum: int,
    per_gene: NDArray[Any], limit: int, first: int | None = None, last: int | None = None,
) -> tuple[NDArray[np.int64], NDArray[np.int64], int, int] | None:  # fmt: skip
    """Geneformer's ranking in compiled passes: each cell's token ids (`genes`) by descending value, value =
    counts x per_cell[cell] x target_sum x per_gene[gene] (`core/rank_kernels.py::scaled_values`'s arithmetic),
    entries whose value is not > 0 left out, the first `limit`, between `first` and `last` when given.
    Returns (offsets, int64 ids, cells whose ties took the reference's call, entries whose per_gene is 0), or
    None where the values' dtypes are not float32/float64 (`rank_tokens` then, after `scaled_values`).

    The same keys as `rank_tokens`, but no array of values: they are keyed as computed, a slice of cells sorted
    at a time (`_SLICE_ENTRIES`, `_SLICE_CELLS`), many slices per compiled call."""
    from cellcorpus.core.rank_kernels import scaled_keys, scaled_values, slice_shifts, take_ranked  # (compiled)

    first_type = np.result_type(counts.dtype, per_cell.dtype)
    last_type = np.result_type(first_type, per_gene.dtype)
    top = max([int(genes.max()) if len(genes) else 0] + [t for t in (first, last) if t is not None])
    token_bits = max(1, top.bit_length())
    if first_type.kind != "f" or first_type.itemsize not in (4, 8) or last_type.itemsize not in (4, 8):
        return None
    if slice_shifts(_SLICE_CELLS, token_bits, True)[0] < _MIN_VALUE_BITS or (len(genes) and int(genes.min()) < 0):
        return None
    counts = counts.astype(first_type, copy=False)
    per_cell = per_cell.astype(first_type, copy=False)
    per_gene = per_gene.astype(last_type, copy=False)
    target = np.array([target_sum], dtype=first_type)
    n_cells = len(offsets) - 1
    cuts = np.searchsorted(offsets, np.arange(0, int(offsets[-1]), _SLICE_ENTRIES), side="right") - 1
    bounds = np.unique(np.r_[cuts, np.arange(0, n_cells, _SLICE_CELLS), n_cells]).astype(np.int64)
    head, tail = int(first is not None), int(last is not None)
    out = np.empty(int(offsets[-1]) + (head + tail) * n_cells, np.int64)  # at most: trimmed at the end
    out_offsets = np.zeros(n_cells + 1, np.int64)
    kept = np.zeros(n_cells, np.int64)
    tied = np.zeros(n_cells, np.bool_)
    n_without = 0
    keys = np.empty(0, np.uint64)
    slice_starts = offsets[bounds]
    b = 0
    while b < len(bounds) - 1:  # a batch of slices: up to _BATCH_ENTRIES entries (one slice at least)
        e = max(b + 1, int(np.searchsorted(slice_starts, slice_starts[b] + _BATCH_ENTRIES, side="right")) - 1)
        part = bounds[b : e + 1]
        lo, hi = int(part[0]), int(part[-1])
        size = int(offsets[hi] - offsets[lo])
        if len(keys) < size:
            keys = np.empty(max(size, _BATCH_ENTRIES), np.uint64)
        slice_n = np.zeros(len(part) - 1, np.int64)
        n_without += scaled_keys(offsets, counts, genes, per_cell, target, per_gene, part, token_bits, keys, kept,
                                 slice_n)  # fmt: skip
        starts = slice_starts[b:e] - offsets[lo]
        for at, n in zip(starts.tolist(), slice_n.tolist(), strict=True):
            keys[at : at + n].sort()  # NumPy's sort (SIMD where the CPU has it)
        np.cumsum(np.minimum(kept[lo:hi], limit) + head + tail, out=out_offsets[lo + 1 : hi + 1])
        out_offsets[lo + 1 : hi + 1] += out_offsets[lo]
        take_ranked(keys, offsets, part, slice_n, token_bits, last_type.itemsize == 8, out_offsets, head, tail, out,
                    tied)  # fmt: skip
        b = e
    if first is not None:
        out[out_offsets[:-1]] = first
    if last is not None:
        out[out_offsets[1:] - 1] = last
    tied_cells = np.flatnonzero(tied)
    for cell in tied_cells.tolist():  # the reference's own call on the cell's values alone
        start, stop = int(offsets[cell]), int(offsets[cell + 1])
        values, _ = scaled_values(np.array([0, stop - start]), counts[start:stop], genes[start:stop],
                                  per_cell[cell : cell + 1], target_sum, per_gene)  # fmt: skip
        keep = values > 0
        order = np.argsort(-values[keep])[: int(min(kept[cell], limit))]
        at = int(out_offsets[cell]) + head
        out[at : at + len(order)] = genes[start:stop][keep][order]
    return out_offsets, out[: int(out_offsets[-1])], len(tied_cells), n_without
