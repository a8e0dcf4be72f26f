"""CSR rows -> ragged token lists, fully vectorised (no Python loop per cell or per gene).

A batch of cells is held as `offsets` (int64, n_cells + 1) into flat `genes` (int32) and
`expressions` (float32) arrays: the same layout an Arrow list column uses, so writing is a copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Ragged", "row_stats", "check_counts", "tokenize_csr", "take_rows", "concat_ragged"]


@dataclass(frozen=True)
class Ragged:
    """Tokenized cells: row i is genes[offsets[i]:offsets[i+1]] (same for expressions)."""

    offsets: np.ndarray
    genes: np.ndarray
    expressions: np.ndarray
    n_explicit_zeros: int = 0
    n_oov_entries: int = 0

    @property
    def n_cells(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def _segment_sums(values: np.ndarray, indptr: np.ndarray) -> np.ndarray:
    """Per-row sums of a flat array split by indptr (cumsum difference; empty rows give 0)."""
    cs = np.zeros(len(values) + 1, dtype=np.float64 if values.dtype.kind == "f" else np.int64)
    np.cumsum(values, out=cs[1:])
    return cs[indptr[1:]] - cs[indptr[:-1]]


def row_stats(indptr: np.ndarray, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(non-zero genes per cell, total counts per cell) over all stored genes — scanpy's filter_cells basis."""
    return _segment_sums(data != 0, indptr), _segment_sums(data.astype(np.float64, copy=False), indptr)


def check_counts(data: np.ndarray) -> str | None:
    """Describe the first problem with a count array (non-numeric, NaN/inf, negative), or None."""
    if data.dtype.kind not in "biuf":
        return f"non-numeric counts (dtype {data.dtype})"
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        return f"{bad} NaN/infinite count value(s)"
    if data.dtype.kind in "if" and data.size and data.min() < 0:
        return f"{int((data < 0).sum())} negative count value(s) (min {data.min()})"
    return None


def tokenize_csr(
    indptr: np.ndarray,
    indices: np.ndarray,
    data: np.ndarray,
    gene_map: np.ndarray,
    cls_id: int | None,
    pad_value: float,
) -> Ragged:
    """Tokenize CSR rows: keep stored non-zero entries whose column maps into the vocabulary.

    `gene_map[col]` is the vocab id of column `col` or -1. With `cls_id`, every row starts with
    (cls_id, pad_value). Stored order is kept. Counts are returned as float32 raw values.
    """
    indptr = np.asarray(indptr, dtype=np.int64)
    tok = gene_map[indices]
    nonzero = data != 0
    keep = nonzero & (tok >= 0)
    n_zero = int(nonzero.size - np.count_nonzero(nonzero))
    n_oov = int(np.count_nonzero(nonzero & (tok < 0)))
    kept_per_row = _segment_sums(keep, indptr)
    genes_body = tok[keep]
    expr_body = data[keep].astype(np.float32, copy=False)
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


def take_rows(r: Ragged, rows: np.ndarray) -> Ragged:
    """Select rows (boolean mask or sorted/unsorted int positions) from a Ragged batch, vectorised."""
    rows = np.flatnonzero(rows) if rows.dtype == bool else np.asarray(rows, dtype=np.int64)
    lengths = r.lengths()[rows]
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    # element index = start of source row + position within row
    starts = np.repeat(r.offsets[:-1][rows] - offsets[:-1], lengths)
    src = starts + np.arange(int(offsets[-1]), dtype=np.int64)
    return Ragged(offsets, r.genes[src], r.expressions[src], r.n_explicit_zeros, r.n_oov_entries)


def concat_ragged(parts: list[Ragged]) -> Ragged:
    """Concatenate batches in order (offsets rebased)."""
    if len(parts) == 1:
        return parts[0]
    lengths = np.concatenate([p.lengths() for p in parts]) if parts else np.zeros(0, np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return Ragged(
        offsets,
        np.concatenate([p.genes for p in parts]) if parts else np.zeros(0, np.int32),
        np.concatenate([p.expressions for p in parts]) if parts else np.zeros(0, np.float32),
        sum(p.n_explicit_zeros for p in parts),
        sum(p.n_oov_entries for p in parts),
    )
