import numpy as np

from cellcorpus.core.ids import decode_ids, make_ids
from cellcorpus.core.shuffle import bucket_of, n_buckets_for, order_by_bucket
from cellcorpus.core.split import assign_valid, shuffle_keys


def test_split_fraction_within_0_2_points_on_100k_cells():
    ids = np.concatenate([make_ids(f, np.arange(25_000)) for f in range(4)])
    frac = assign_valid(ids, 0.01, 42).mean()
    assert abs(frac - 0.01) < 0.002
    frac = assign_valid(ids, 0.2, 7).mean()
    assert abs(frac - 0.2) < 0.002


def test_split_is_deterministic_and_per_cell():
    ids = make_ids(3, np.arange(10_000))
    full = assign_valid(ids, 0.1, 42)
    chunked = np.concatenate([assign_valid(c, 0.1, 42) for c in np.array_split(ids, 7)])
    assert np.array_equal(full, chunked)
    assert np.array_equal(full, assign_valid(ids[::-1], 0.1, 42)[::-1])
    assert not np.array_equal(full, assign_valid(ids, 0.1, 43))


def test_ids_roundtrip():
    ids = make_ids(7, np.array([0, 5, 2**32 - 1]))
    f, r = decode_ids(ids)
    assert f.tolist() == [7, 7, 7] and r.tolist() == [0, 5, 2**32 - 1]
    assert ids.dtype == np.int64 and (ids > 0).all()


def test_bucket_order_is_global_key_order():
    keys = shuffle_keys(make_ids(0, np.arange(5000)), 42)
    nb = 8
    order, bounds = order_by_bucket(keys, nb)
    b = bucket_of(keys[order], nb)
    assert np.all(np.diff(b) >= 0) and bounds[0] == 0 and bounds[-1] == 5000
    assert np.all(np.diff(keys[order].astype(np.float64)) >= 0)
    assert n_buckets_for(1000, 300, 1) == 4 and n_buckets_for(10, 300, 5) == 5
