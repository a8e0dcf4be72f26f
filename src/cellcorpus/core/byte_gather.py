"""Fixed-width byte fields at many offsets of a buffer, gathered with one array operation (an MDS shard's
per-sample size headers and pickle frames, read for every sample at once)."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["gather_bytes"]


def gather_bytes(raw: bytes, starts: NDArray[Any], width: int) -> NDArray[np.uint8]:
    """The `width` bytes at each start, as a contiguous (len(starts), width) uint8 array."""
    u8 = np.frombuffer(raw, np.uint8)
    return np.ascontiguousarray(u8[np.asarray(starts, np.int64)[:, None] + np.arange(width)])
