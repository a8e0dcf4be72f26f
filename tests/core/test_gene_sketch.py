"""The per-gene sketch of `cellcorpus stats`: bucketing, the dense builder and the sparse merge agree exactly."""
# The reference bucket of a value below is computed value by value in Python (`math.log`, `math.exp`): bucket i
# holds (g^(i-1), g^i], g^i = exp(i ln g), as core/log_buckets.py defines it.

from __future__ import annotations

import functools
import math

import numpy as np
import pytest

from cellcorpus.core.cell_kernels import count_cells
from cellcorpus.core.gene_sketch import GeneCounts, GeneSketch


def _batches(seed: int, n: int = 6):
    rng = np.random.default_rng(seed)
    for k in range(n):
        genes = rng.integers(0, 300, 5_000)
        scale = 10.0 ** (k - 2)  # each batch reaches further down/up: the table must grow both ways
        values = rng.integers(0, 20, 5_000) * rng.lognormal(0, 1, 5_000) * scale  # zeros are not counted
        yield genes, values


def _bucket(v: float, gamma: float) -> int:
    """The smallest i with v <= exp(i ln g), value by value."""
    lg = math.log(gamma)
    i = math.ceil(math.log(v) / lg)
    while v > math.exp(i * lg):
        i += 1
    while v <= math.exp((i - 1) * lg):
        i -= 1
    return i


def _exact(batches, gamma):
    """(gene, bucket) -> count by a dictionary, from each value's own bucket."""
    out: dict[tuple[int, int], int] = {}
    for genes, values in batches:
        for g, v in zip(genes.tolist(), values.tolist(), strict=True):
            if v > 0:
                key = (g, _bucket(v, gamma))
                out[key] = out.get(key, 0) + 1
    return out


def _counted(counts: GeneCounts, n_genes: int):
    """Values counted per gene, as `cellcorpus stats` reads them (the medians' counts: its non-zero cells)."""
    genes, n, _ = counts.medians()
    out = np.zeros(n_genes, np.int64)
    out[genes] = n
    return out


def _as_dict(sketch: GeneSketch):
    genes, buckets = sketch.keys >> 21, (sketch.keys & ((1 << 21) - 1)) - (1 << 20)  # decoded independently
    return dict(zip(zip(genes.tolist(), buckets.tolist(), strict=True), sketch.counts.tolist(), strict=True))


def test_every_positive_value_is_counted_once_in_its_own_bucket():
    genes, values = next(_batches(0))
    sketch = GeneSketch.empty(0.01).add(genes, values)
    assert sketch.counts.sum() == np.count_nonzero(values > 0)
    assert _as_dict(sketch) == _exact([(genes, values)], sketch.gamma)


@pytest.mark.parametrize("accuracy", [0.05, 0.005, 1e-4, 3e-5])  # 1, 1, 2 and 5 comparisons per value
def test_buckets_hold_their_boundaries_and_values_far_out(accuracy):
    gamma = GeneSketch.empty(accuracy).gamma
    lg = math.log(gamma)
    edges = [math.exp(i * lg) for i in range(-300, 300, 7)]  # on a boundary, and one float either side
    far = [1e-300, 3e-25, 2.0**-64, 2.0**64, 7e22, 1e300]  # outside the bits table: by log, then the boundaries
    far = [v for v in far if abs(_bucket(v, gamma)) < 1 << 20]  # (within the sketch's keys)
    values = np.array(edges + [np.nextafter(e, 0) for e in edges] + [np.nextafter(e, np.inf) for e in edges] + far)
    genes = np.arange(len(values)) % 7
    assert _as_dict(GeneSketch.empty(accuracy).add(genes, values)) == _exact([(genes, values)], gamma)
    if accuracy < 1e-3:  # 1e-300 is bucket ~ -3.5M at a = 1e-4: beyond the keys, said rather than wrapped
        with pytest.raises(ValueError, match="beyond the sketch's range"):
            GeneSketch.empty(accuracy).add(np.array([0]), np.array([1e-300]))


def test_cells_are_normalised_then_bucketed_whole_counts_or_not():
    """count_cells on CSR rows: count / the cell's total x target_sum, only mapped columns, zeros and empty cells
    skipped; whole counts (remembered per cell) and fractional ones alike; the sums in stored order."""
    rng = np.random.default_rng(5)
    n_cells, n_cols = 40, 90
    dense = rng.integers(0, 300, (n_cells, n_cols)).astype(np.float32) * (rng.random((n_cells, n_cols)) < 0.3)
    dense[::5] = np.round(dense[::5] * 1.37, 2)  # every fifth cell fractional
    dense[7] = 0  # an empty cell (n_counts 0: nothing to count)
    indptr = np.r_[0, np.cumsum((dense != 0).sum(1))].astype(np.int64)
    rows, cols = np.nonzero(dense)
    data = dense[rows, cols]
    gene_map = np.where(np.arange(n_cols) % 9 == 4, -1, (np.arange(n_cols) * 37) % 301)  # unmapped columns
    n_counts = dense.astype(np.float64).sum(1)
    gamma = GeneSketch.empty(0.005).gamma
    sums, grouped = count_cells(indptr, cols.astype(np.int32), data, n_cols, gene_map, 10_000, gamma)
    assert np.array_equal(sums.totals, n_counts) and np.array_equal(sums.n_genes, (dense != 0).sum(1))
    assert np.array_equal(sums.column_totals, dense.astype(np.float64).sum(0)) and sums.bad_column_cell == -1
    got_genes, got_buckets = grouped.pairs()
    got: dict[tuple[int, int], int] = {}
    for key in zip(got_genes.tolist(), got_buckets.tolist(), strict=True):
        got[key] = got.get(key, 0) + 1
    expected: dict[tuple[int, int], int] = {}
    for r, c, x in zip(rows.tolist(), cols.tolist(), data.tolist(), strict=True):
        if gene_map[c] >= 0:
            key = (int(gene_map[c]), _bucket(x / n_counts[r] * 10_000, gamma))
            expected[key] = expected.get(key, 0) + 1
    assert got == expected and len(grouped) == sum(expected.values())


def test_bad_counts_are_counted_exactly_and_give_no_pairs():
    """The sums pass only notices bad values; a second pass counts them for the message: negatives (-inf
    among them), NaN and infinities, stored zeros (not genes of their cell); a column out of range names its cell."""
    indptr = np.array([0, 3, 6, 8], np.int64)
    data = np.array([1, -2, 0, np.nan, 4, -np.inf, 0, np.inf], np.float32)
    cols = np.array([0, 1, 2, 0, 1, 2, 0, 1], np.int32)
    gamma = GeneSketch.empty(0.005).gamma
    sums, grouped = count_cells(indptr, cols, data, 3, np.arange(3), 10_000, gamma)
    assert grouped is None and (sums.n_negative, sums.n_nonfinite, sums.n_zero) == (2, 3, 2)
    assert sums.n_genes.tolist() == [2, 3, 1] and sums.bad_column_cell == -1
    good = np.abs(np.nan_to_num(data, posinf=0, neginf=0))
    sums, grouped = count_cells(indptr, cols, good, 3, np.arange(3), 10_000, gamma)
    assert grouped is not None and (sums.n_negative, sums.n_nonfinite, sums.n_zero) == (0, 0, 5)
    assert sums.totals.tolist() == [3.0, 4.0, 0.0] and len(grouped) == 3
    sums, grouped = count_cells(indptr, np.array([0, 1, 2, 0, 1, 2, 3, 1], np.int32), good, 3, np.arange(3), 1, gamma)
    assert grouped is None and sums.bad_column_cell == 2


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
        assert (_counted(unit, 300) == np.bincount(genes[values > 0], minlength=300)).all()
        with np.load(tmp_path / f"{k}.npz") as z:
            total.add_packed(z)
        sparse = sparse.add(genes, values)
    built = total.sketch()
    assert np.array_equal(built.keys, sparse.keys) and np.array_equal(built.counts, sparse.counts)


@pytest.mark.parametrize("block", [1 << 22, 700])  # the whole table at once, or a few genes per block
def test_medians_off_the_dense_table_equal_the_sparse_sketchs(monkeypatch, block):
    import cellcorpus.core.gene_sketch as gs

    monkeypatch.setattr(gs, "_MEDIAN_BLOCK", block)
    dense = GeneCounts(310, 0.005)  # genes 300..309 never seen: no median for them
    for genes, values in _batches(6):
        dense.add(genes, values)
    dense.add(np.full(4, 7), np.array([3.0, 3.0, 900.0, 900.0]))  # an even count whose middle values lie apart
    genes, n, medians = dense.medians()
    want_genes, want_n, want_medians = dense.sketch().medians()
    assert np.array_equal(genes, want_genes) and np.array_equal(n, want_n)
    assert np.array_equal(medians, want_medians)  # bit for bit
    want = sum(np.bincount(g[v > 0], minlength=310) for g, v in _batches(6))
    want[7] += 4
    assert genes.tolist() == list(range(300)) and n.tolist() == want[:300].tolist()
    assert (n % 2 == 1).any() and (n % 2 == 0).any()  # both kinds of middle


def test_a_unit_file_of_the_earlier_zstd_format_adds_the_same(tmp_path):
    import pyarrow as pa

    unit = GeneCounts(300, 0.005)
    for genes, values in _batches(7):
        unit.add(genes, values)
    packed = unit.packed()
    assert str(packed["table_codec"]) == "lz4"
    raw = np.ascontiguousarray(unit.table, dtype=np.dtype(str(packed["table_dtype"])))
    old = {k: packed[k] for k in ("table_meta", "table_dtype")}
    old["table_zstd"] = np.frombuffer(pa.compress(raw, codec="zstd", asbytes=True), dtype=np.uint8)
    sums = []
    for name, content in (("new", packed), ("old", old)):
        np.savez(tmp_path / f"{name}.npz", **content)
        total = GeneCounts(300, 0.005, dtype=np.uint64)
        with np.load(tmp_path / f"{name}.npz") as z:
            total.add_packed(z)
        sums.append(total.sketch())
    want = unit.sketch()
    for got in sums:
        assert np.array_equal(got.keys, want.keys) and np.array_equal(got.counts, want.counts)
