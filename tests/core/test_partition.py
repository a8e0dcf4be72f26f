"""Hash-range partitions: a key's range is its top bits, so each range of a sorted run is one slice."""

from __future__ import annotations

import numpy as np

from cellcorpus.core.partition import n_partitions, partition_slices


def test_how_many_ranges():
    assert [n_partitions(t, 10) for t in (0, 1, 10, 11, 40, 41)] == [1, 1, 1, 2, 4, 8]


def test_each_range_is_the_slice_of_its_top_bits():
    q = 1 << 62  # four ranges: [0, q), [q, 2q), [2q, 3q), [3q, 2**64)
    keys = np.array([0, q - 1, q, q, 3 * q - 1, 3 * q, 2**64 - 1], dtype=np.uint64)
    assert partition_slices(keys, 4) == [(0, 2), (2, 4), (4, 5), (5, 7)]
    assert partition_slices(keys, 1) == [(0, 7)]
    assert partition_slices(np.zeros(0, np.uint64), 2) == [(0, 0), (0, 0)]
