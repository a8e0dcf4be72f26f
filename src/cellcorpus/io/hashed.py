"""Bytes hashed on their way to a file, in cache-sized windows.

Written by hand because hashing a whole buffer and then writing it reads every byte from memory once per
hash plus once for the write (tens of MB per Arrow batch or MDS shard); a 256 KB window is still in cache
when the next hash and the file copy read it.
"""

from __future__ import annotations

from typing import Any, BinaryIO

__all__ = ["WINDOW", "write_hashed"]

WINDOW = 256 << 10  # bytes hashed then written at a time: fits a core's L2 cache


def write_hashed(f: BinaryIO, data: Any, hashes: list[Any]) -> int:
    """Write `data` (any bytes-like object) to `f`, feeding each window to every hash first; return its length."""
    view = memoryview(data).cast("B")
    for a in range(0, len(view), WINDOW):
        window = view[a : a + WINDOW]
        for h in hashes:
            h.update(window)
        f.write(window)
    return len(view)
