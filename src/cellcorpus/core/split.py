"""Seeded, order-free hashing of cell ids: split assignment and shuffle keys.

A cell's split and its shuffled position depend only on (id, seed), never on chunking, worker
count or processing order. splitmix64 is written out here because numpy has no vectorised
integer hash; uint64 arithmetic wraps, which is exactly what the mixer needs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["mix64", "hash_ids", "assign_valid", "shuffle_keys"]

_SALT_SPLIT = np.uint64(0x5EED5EED5EED5EED)
_SALT_SHUFFLE = np.uint64(0x5A5A0F0F3C3C9696)


def mix64(x: NDArray[Any]) -> NDArray[Any]:
    """splitmix64 finaliser on a uint64 array (bijective, well mixed)."""
    with np.errstate(over="ignore"):
        z = x.astype(np.uint64, copy=True)
        z += np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def hash_ids(ids: NDArray[Any], seed: int, salt: np.uint64) -> NDArray[Any]:
    """uint64 hash of int64 ids under `seed`; different salts give independent streams."""
    key = mix64(np.array([seed], dtype=np.int64).view(np.uint64) ^ salt)[0]
    return mix64(np.asarray(ids, dtype=np.int64).view(np.uint64) ^ key)


def assign_valid(ids: NDArray[Any], test_size: float, seed: int) -> NDArray[Any]:
    """Boolean mask: True where the cell goes to `valid` (hash / 2**64 < test_size)."""
    u = (hash_ids(ids, seed, _SALT_SPLIT) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
    return u < test_size


def shuffle_keys(ids: NDArray[Any], seed: int) -> NDArray[Any]:
    """uint64 sort keys defining the seeded global order of a shuffled split."""
    return hash_ids(ids, seed, _SALT_SHUFFLE)
