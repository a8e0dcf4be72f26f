"""External bucket shuffle math: a key's bucket is its top bits, so bucket order + in-bucket sort
by key is one global seeded order, whatever the chunking.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["bucket_of", "n_buckets_for", "order_by_bucket"]


def n_buckets_for(n_cells: int, bucket_cells: int, minimum: int = 1) -> int:
    """Buckets needed so each holds about `bucket_cells` cells (memory per shuffle unit)."""
    return max(minimum, -(-max(n_cells, 1) // bucket_cells))


def bucket_of(keys: NDArray[Any], n_buckets: int) -> NDArray[Any]:
    """Bucket index in [0, n_buckets) from the top 32 bits of uint64 keys (monotone in key)."""
    top = (keys >> np.uint64(32)).astype(np.uint64)
    return ((top * np.uint64(n_buckets)) >> np.uint64(32)).astype(np.int64)


def order_by_bucket(keys: NDArray[Any], n_buckets: int) -> tuple[NDArray[Any], NDArray[Any]]:
    """(permutation sorting rows by key, bucket boundaries as offsets of length n_buckets+1)."""
    order = np.argsort(keys, kind="stable")
    buckets = bucket_of(keys[order], n_buckets)
    bounds = np.searchsorted(buckets, np.arange(n_buckets + 1), side="left")
    return order, bounds
