"""Hash-range partitions of sorted 64-bit keys: how many, and where each sorted run is cut.

What the corpus-wide checks over per-unit sorted hashes share (the split key's repeat check, `cellcorpus
dedup`): beyond `per_part` records, each unit's run is cut by the keys' top bits into 2**k ranges, written to
one file per range, and one range is compared in memory at a time. A key's range depends only on its value,
so equal keys of every unit land in the same range.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["n_partitions", "partition_slices"]


def n_partitions(total: int, per_part: int) -> int:
    """The power of two of ranges that holds `total` records at about `per_part` each (1: all in memory)."""
    return 1 << max(0, int(np.ceil(np.log2(max(total, 1) / per_part))))


def partition_slices(sorted_keys: NDArray[Any], n_parts: int) -> list[tuple[int, int]]:
    """[a, b) of each range (by the top bits of the uint64 keys, in range order) in an ascending run of keys."""
    bits = int(np.log2(n_parts))
    edges = np.array([p << (64 - bits) for p in range(1, n_parts)], dtype=np.uint64)
    cut = np.searchsorted(sorted_keys, edges).tolist()
    return list(zip([0, *cut], [*cut, len(sorted_keys)], strict=True))
