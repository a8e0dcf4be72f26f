"""`rank_tokens` orders every cell exactly as `np.argsort(-cell_values)` does, whatever the batch: ties, NaN,
-0.0, truncation, markers, cells across the kernel's slices, 32- and 64-bit ids."""

from __future__ import annotations

import numpy as np
import pytest

from cellcorpus.core import rank
from cellcorpus.core.rank import rank_scaled, rank_tokens


def _reference(offsets, values, tokens, limit, first, last):
    out = []
    for c in range(len(offsets) - 1):
        v, t = values[offsets[c] : offsets[c + 1]], tokens[offsets[c] : offsets[c + 1]]
        ranked = t[np.argsort(-v)][:limit].tolist()
        out.extend(([first] if first is not None else []) + ranked + ([last] if last is not None else []))
    return out


def _values(kind, rng, nnz):
    if kind == "tied_counts":
        return rng.integers(1, 5, nnz).astype(np.float32)
    if kind == "distinct":
        return rng.lognormal(0, 1, nnz)
    if kind == "tied_products":
        return rng.integers(1, 6, nnz) * rng.choice([0.5, 0.25, 1 / 3], nnz)
    return rng.lognormal(0, 1, nnz).astype(np.float32)


@pytest.mark.parametrize("token_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("kind", ["tied_counts", "distinct", "tied_products", "nan_and_negative_zero"])
def test_ranks_equal_numpys_argsort_per_cell(kind, token_dtype, monkeypatch):
    monkeypatch.setattr(rank, "_SLICE_ENTRIES", 300)  # many slices, cells of every size across them
    rng = np.random.default_rng(len(kind))
    for trial in range(12):
        lengths = rng.integers(0, [3, 50, 900][trial % 3], int(rng.integers(1, 120)))
        offsets = np.r_[0, np.cumsum(lengths)]
        nnz = int(offsets[-1])
        values = _values(kind, rng, nnz)
        if kind == "nan_and_negative_zero" and nnz:
            values[rng.integers(0, nnz, 3)] = np.nan
            values[rng.integers(0, nnz, 3)] = -0.0
        tokens = rng.permutation(nnz + 10)[:nnz].astype(token_dtype)
        limit = int(rng.choice([5, 64, 10_000]))
        first, last = [(None, None), (2, 3), (2, None)][trial % 3]
        out_offsets, got, _ = rank_tokens(offsets, values, tokens, limit, first, last)
        assert got.tolist() == _reference(offsets, values, tokens, limit, first, last)
        kept = np.minimum(lengths, limit) + (first is not None) + (last is not None)
        assert np.array_equal(np.diff(out_offsets), kept)


def test_ids_in_a_wider_dtype_and_negative_ids_refused():
    offsets, values = np.array([0, 3]), np.array([1.0, 3.0, 2.0])
    _, got, _ = rank_tokens(offsets, values, np.array([7, 8, 9], np.int32), 10, dtype=np.int64)
    assert got.dtype == np.int64 and got.tolist() == [8, 9, 7]
    with pytest.raises(ValueError, match="non-negative"):
        rank_tokens(offsets, values, np.array([-1, 8, 9]), 10)


@pytest.mark.parametrize("counts_dtype", [np.float32, np.float64, np.int32, np.uint16, np.float16])
@pytest.mark.parametrize("cell_dtype", [np.float32, np.float64])
@pytest.mark.parametrize("gene_dtype", [np.float32, np.float64])
def test_scaled_values_round_each_product_as_numpy_does(counts_dtype, cell_dtype, gene_dtype):
    """Geneformer's arithmetic (count x 1/total, x target_sum in place, x 1/median) in one compiled pass: the
    same bits as the NumPy expressions the reference's scipy calls amount to, in every dtype mix."""
    from cellcorpus.core.rank_kernels import scaled_values

    rng = np.random.default_rng(11)
    lengths = rng.integers(0, 40, 30)
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    counts = (rng.integers(0, 50, offsets[-1]) * rng.choice([1, 1.37], offsets[-1])).astype(counts_dtype)
    genes = rng.integers(0, 100, offsets[-1])
    per_cell = np.divide(1, rng.uniform(500, 9000, len(lengths)).astype(cell_dtype))
    per_gene = np.divide(1, rng.lognormal(0, 1, 100)).astype(gene_dtype)
    per_gene[::7] = 0  # genes without a median
    expected = counts * np.repeat(per_cell, lengths)
    expected *= 10_000
    expected = expected * per_gene[genes]
    got, not_positive = scaled_values(offsets, counts, genes, per_cell, 10_000, per_gene)
    assert got.dtype == expected.dtype and got.tobytes() == expected.tobytes()
    assert not_positive == np.count_nonzero(~(expected > 0))


@pytest.mark.parametrize("counts_dtype", [np.float32, np.float64, np.int32])
@pytest.mark.parametrize("cell_dtype", [np.float32, np.float64])
@pytest.mark.parametrize("gene_dtype", [np.float32, np.float64])
def test_rank_scaled_equals_the_reference_per_cell(counts_dtype, cell_dtype, gene_dtype, monkeypatch):
    """Geneformer's values keyed as computed, sorted a slice at a time, many slices and batches per call: each
    cell's ids equal the reference's own expressions (count x 1/total x target_sum x 1/median, values not > 0 left
    out, `argsort(-values)`, the first `limit`), markers around them; ties (whole counts, shared medians) and
    genes without a median counted; the values' dtypes as NumPy gives them."""
    monkeypatch.setattr(rank, "_SLICE_ENTRIES", 300)
    monkeypatch.setattr(rank, "_BATCH_ENTRIES", 2000)
    rng = np.random.default_rng(3)
    for trial in range(6):
        lengths = rng.integers(0, [3, 60, 700][trial % 3], int(rng.integers(1, 90)))
        offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
        nnz = int(offsets[-1])
        counts = rng.integers(1, 6, nnz).astype(counts_dtype)  # few distinct: many ties
        genes = np.concatenate([rng.permutation(1000)[:n] for n in lengths]).astype(np.int64)
        per_cell = np.divide(1, rng.integers(200, 3000, len(lengths)).astype(cell_dtype))
        per_gene = np.divide(1, rng.choice([0.5, 1.0, 2.0, 1 / 3], 1000)).astype(gene_dtype)
        per_gene[::9] = 0  # no median
        limit = int(rng.choice([5, 64, 10_000]))
        first, last = [(None, None), (1001, 1002), (1001, None)][trial % 3]
        got = rank_scaled(offsets, counts, genes, per_cell, 10_000, per_gene, limit, first, last)
        assert got is not None
        out_offsets, ids, n_tied, n_without = got
        want, tied = [], 0
        for c in range(len(lengths)):
            a, b = offsets[c], offsets[c + 1]
            values = counts[a:b] * per_cell[c]
            values *= 10_000
            values = values * per_gene[genes[a:b]]
            keep = values > 0
            v, t = values[keep], genes[a:b][keep]
            tied += len(np.unique(v)) < len(v)
            want.extend(([first] if first is not None else []) + t[np.argsort(-v)][:limit].tolist()
                        + ([last] if last is not None else []))  # fmt: skip
        assert ids.tolist() == want and ids.dtype == np.int64
        assert out_offsets[-1] == len(want) and n_tied == tied
        assert n_without == int(np.count_nonzero(per_gene[genes] == 0))


def test_rank_scaled_leaves_float16_to_numpy():
    offsets, genes = np.array([0, 2], np.int64), np.array([4, 5])
    counts, per_cell = np.array([1, 2], np.float16), np.array([0.5], np.float16)
    assert rank_scaled(offsets, counts, genes, per_cell, 10, np.ones(6, np.float16), 10) is None
