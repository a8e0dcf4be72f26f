"""The per-gene sketch of `cellcorpus stats`: bucketing, the dense builder and the sparse merge agree exactly."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from cellcorpus.core.gene_sketch import GeneCounts, GeneSketch, bucket_counts


def _batches(seed: int, n: int = 6):
    rng = np.random.default_rng(seed)
    for k in range(n):
        genes = rng.integers(0, 300, 5_000)
        scale = 10.0 ** (k - 2)  # each batch reaches further down/up: the table must grow both ways
        values = rng.integers(0, 20, 5_000) * rng.lognormal(0, 1, 5_000) * scale  # zeros are not counted
        yield genes, values


def _exact(batches, gamma):
    """(gene, bucket) -> count by a dictionary, from each value's own bucket."""
    out: dict[tuple[int, int], int] = {}
    for genes, values in batches:
        for g, v in zip(genes.tolist(), values.tolist(), strict=True):
            if v > 0:
                key = (g, int(np.ceil(np.log(v) / np.log(gamma))))
                out[key] = out.get(key, 0) + 1
    return out


def _as_dict(sketch: GeneSketch):
    genes, buckets = sketch.keys >> 21, (sketch.keys & ((1 << 21) - 1)) - (1 << 20)  # decoded independently
    return dict(zip(zip(genes.tolist(), buckets.tolist(), strict=True), sketch.counts.tolist(), strict=True))


def test_bucket_counts_count_every_positive_value_once():
    genes, values = next(_batches(0))
    gamma = GeneSketch.empty(0.01).gamma
    got_genes, buckets, counts = bucket_counts(genes, values, gamma)
    assert counts.sum() == np.count_nonzero(values > 0)
    assert dict(zip(zip(got_genes.tolist(), buckets.tolist(), strict=True), counts.tolist(), strict=True)) == _exact(
        [(genes, values)], gamma
    )


@pytest.mark.parametrize("max_bytes", [512 << 20, 300 * 4 * 700, 0])  # a table; one that must go sparse; none
def test_dense_counts_equal_the_sparse_merges(max_bytes):
    sparse = GeneSketch.empty(0.005)
    dense = GeneCounts(300, 0.005, max_bytes=max_bytes)
    for genes, values in _batches(1):
        sparse = sparse.add(genes, values)
        dense.add(genes, values)
    assert (dense.table is None) == (max_bytes < 512 << 20)  # the small budgets ended sparse
    built = dense.sketch()
    assert np.array_equal(built.keys, sparse.keys) and np.array_equal(built.counts, sparse.counts)
    assert _as_dict(built) == _exact(_batches(1), sparse.gamma)


def test_merging_is_the_same_in_any_order():
    parts = [GeneSketch.empty(0.005).add(g, v) for g, v in _batches(2)]
    one = functools.reduce(GeneSketch.merge, parts)
    other = functools.reduce(GeneSketch.merge, parts[::-1])
    assert np.array_equal(one.keys, other.keys) and np.array_equal(one.counts, other.counts)
    assert one.counts.sum() == sum(int(p.counts.sum()) for p in parts)


@pytest.mark.parametrize("max_bytes", [512 << 20, 0])
def test_adding_sketches_to_a_table_equals_merging_them(max_bytes):
    parts = [GeneSketch.empty(0.005).add(g, v) for g, v in _batches(3)]
    table = GeneCounts(300, 0.005, max_bytes=max_bytes, dtype=np.uint64)
    for p in parts:
        table.add_sketch(p)
    merged, built = functools.reduce(GeneSketch.merge, parts), table.sketch()
    assert np.array_equal(built.keys, merged.keys) and np.array_equal(built.counts, merged.counts)


@pytest.mark.parametrize("max_bytes", [512 << 20, 0])  # a dense table, or a sparse sketch, in the file
def test_packed_counts_add_up_to_the_same_sketch(tmp_path, max_bytes):
    total = GeneCounts(300, 0.005, dtype=np.uint64)
    sparse = GeneSketch.empty(0.005)
    for k, (genes, values) in enumerate(_batches(4)):
        unit = GeneCounts(300, 0.005, max_bytes=max_bytes)
        unit.add(genes, values)
        np.savez(tmp_path / f"{k}.npz", **unit.packed())
        assert (unit.per_gene() == np.bincount(genes[values > 0], minlength=300)).all()
        with np.load(tmp_path / f"{k}.npz") as z:
            total.add_packed(z)
        sparse = sparse.add(genes, values)
    built = total.sketch()
    assert np.array_equal(built.keys, sparse.keys) and np.array_equal(built.counts, sparse.counts)
