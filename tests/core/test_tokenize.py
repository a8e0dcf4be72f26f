import numpy as np
import pytest

from cellcorpus.core.tokenize import row_stats, scan_counts, tokenize_csr


def _csr(rows):
    indptr, indices, data = [0], [], []
    for r in rows:
        for c, v in r:
            indices.append(c)
            data.append(v)
        indptr.append(len(indices))
    return np.array(indptr), np.array(indices, dtype=np.int32), np.array(data, dtype=np.float32)


def test_exact_tokens_with_cls_oov_and_explicit_zeros():
    gene_map = np.array([5, 3, -1, 7], dtype=np.int32)  # column 2 is out of vocabulary
    indptr, indices, data = _csr([[(0, 1), (2, 7), (3, 2)], [(1, 0), (3, 4)], [], [(1, 0.5)]])
    r = tokenize_csr(indptr, indices, data, gene_map, cls_id=1, pad_value=-2)
    rows = [
        (r.genes[a:b].tolist(), r.expressions[a:b].tolist()) for a, b in zip(r.offsets[:-1], r.offsets[1:], strict=True)
    ]
    assert rows == [
        ([1, 5, 7], [-2.0, 1.0, 2.0]),
        ([1, 7], [-2.0, 4.0]),
        ([1], [-2.0]),
        ([1, 3], [-2.0, 0.5]),
    ]
    assert r.genes.dtype == np.int32 and r.expressions.dtype == np.float32
    assert r.n_explicit_zeros == 1
    assert r.n_oov_entries == 1


def test_without_cls_keeps_stored_order():
    gene_map = np.array([10, 11, 12], dtype=np.int32)
    indptr, indices, data = _csr([[(2, 3), (0, 1)]])  # stored out of column order
    r = tokenize_csr(indptr, indices, data, gene_map, cls_id=None, pad_value=-2)
    assert r.genes.tolist() == [12, 10]
    assert r.expressions.tolist() == [3.0, 1.0]


def test_integer_counts_become_float32():
    indptr, indices, _ = _csr([[(0, 1), (1, 2)]])
    r = tokenize_csr(indptr, indices, np.array([3, 9], dtype=np.int64), np.array([4, 5], np.int32), 1, -2)
    assert r.expressions.tolist() == [-2.0, 3.0, 9.0]


def test_row_stats_count_nonzero_and_totals():
    indptr, indices, data = _csr([[(0, 1), (1, 0)], [], [(0, 2), (1, 5)]])
    n_genes, totals = row_stats(indptr, data)
    assert n_genes.tolist() == [1, 0, 2]
    assert totals.tolist() == [1.0, 0.0, 7.0]


@pytest.mark.parametrize(
    "data, message",
    [
        (np.array([1.0, np.nan]), "NaN"),
        (np.array([1.0, np.inf], dtype=np.float32), "1 NaN/infinite"),
        (np.array([-np.inf, 2.0, -1.0]), "1 NaN/infinite"),
        (np.array([1.0, -3.0]), "negative"),
        (np.array(["a", "b"]), "non-numeric"),
    ],
)
def test_scan_counts_names_the_problem(data, message):
    assert message in scan_counts(data).problem


def test_scan_counts_accepts_good_counts():
    assert scan_counts(np.array([0, 1, 2], dtype=np.int32)).problem is None


def test_scan_counts_across_chunk_boundaries():
    from cellcorpus.core.tokenize import _CHUNK

    data = np.ones(2 * _CHUNK + 5, dtype=np.float32)
    data[[0, _CHUNK - 1, _CHUNK, 2 * _CHUNK + 4]] = 0.5
    data[[1, _CHUNK + 1, 2 * _CHUNK + 3]] = 0
    scan = scan_counts(data)
    assert (scan.problem, scan.n_fractional, scan.n_zero) == (None, 4, 3)
    assert scan_counts(np.arange(10, dtype=np.int32)).n_fractional == 0
    data[2 * _CHUNK + 2] = -1  # in the last chunk only: the range check sees every chunk
    assert "1 negative count value(s)" in scan_counts(data).problem


@pytest.mark.parametrize(
    "gene_map, rows",
    [
        (np.array([5, 3, 2, 7], np.int32), [[(0, 1), (2, 7)], [(1, 4)]]),  # nothing to drop
        (np.array([5, 3, 2, 7], np.int32), [[(0, 1), (2, 0)], [(1, 4)]]),  # a stored zero
        (np.array([5, 3, -1, 7], np.int32), [[(0, 1), (2, 7)], [(1, 4)]]),  # an out-of-vocabulary column
        (np.array([5, 3, -1, 7], np.int32), [[(0, 0), (2, 7)], [(1, 4), (3, 0)]]),  # both
    ],
)
def test_zero_count_from_the_scan_gives_the_same_tokens(gene_map, rows):
    indptr, indices, data = _csr(rows)
    plain = tokenize_csr(indptr, indices, data, gene_map, None, -2)
    hinted = tokenize_csr(indptr, indices, data, gene_map, None, -2, scan_counts(data).n_zero)
    for a, b in ((plain.offsets, hinted.offsets), (plain.genes, hinted.genes), (plain.expressions, hinted.expressions)):
        assert a.tolist() == b.tolist()
    assert (plain.n_explicit_zeros, plain.n_oov_entries) == (hinted.n_explicit_zeros, hinted.n_oov_entries)
