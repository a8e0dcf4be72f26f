"""Geneformer's lengths file: a pickled Python list of every cell's `length`, in the dataset's order, which its
`GeneformerPretrainer(example_lengths_file=...)` loads to group cells of similar length.

Written by hand as a pickle opcode stream (protocol 2: an empty list, then batches of `MARK, BININT2/BININT
values..., APPENDS`, as `pickle` itself batches appends) because `pickle.dump` needs the whole list as Python
ints in memory (~36 bytes per cell: ~10 GB at 270M cells); here one record batch at a time is encoded with
NumPy. `pickle.load` reads it back as the same list `pickle.dump(lengths)` would give.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from cellcorpus.io.atomic import atomic_path
from cellcorpus.io.paths import local_copy

__all__ = ["write_lengths"]

_HEAD = b"\x80\x02]"  # PROTO 2, EMPTY_LIST
_MARK, _APPENDS, _STOP = b"(", b"e", b"."
_BATCH = 1000  # items per APPENDS (pickle's own batch size)


def _encode(lengths: NDArray[np.int64]) -> bytes:
    """MARK + one BININT2 ('M', uint16) or BININT ('J', int32) per value + APPENDS, per 1000 values."""
    if not len(lengths):
        return b""
    small = int(lengths.max()) < 1 << 16
    items = np.empty(len(lengths), dtype=[("op", "u1"), ("v", "<u2" if small else "<i4")])
    items["op"], items["v"] = ord("M" if small else "J"), lengths
    raw = items.tobytes()
    size = items.dtype.itemsize
    out = bytearray()
    for start in range(0, len(lengths), _BATCH):  # one step per 1000 cells, not per cell
        out += _MARK + raw[start * size : (start + _BATCH) * size] + _APPENDS
    return bytes(out)


def _column(path: Path, column: str) -> Iterator[NDArray[np.int64]]:
    """One column of an Arrow stream file, batch by batch, reading little else: the file is mapped with random
    access advised, so only the pages of the batches' headers and of that column are read (the kernel's
    read-ahead would otherwise pull in the token lists between them: the whole file)."""
    with open(path, "rb") as fh:
        if not os.fstat(fh.fileno()).st_size:
            return
        mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    if hasattr(mapped, "madvise"):
        mapped.madvise(mmap.MADV_RANDOM)
    for batch in pa.ipc.open_stream(pa.py_buffer(mapped)):  # zero-copy slices of the mapping
        yield batch.column(column).to_numpy(zero_copy_only=False).astype(np.int64)


def write_lengths(data_files: Sequence[str | Path], column: str, dest: Path) -> int:
    """Write `dest` from the `column` of the Arrow stream files (paths or URLs: a remote file is fetched, one at
    a time), in order; returns the cells written. Written to a temporary name first, renamed when whole
    (`io.atomic.atomic_path`: removed if anything fails)."""
    n = 0
    with atomic_path(dest) as tmp, open(tmp, "wb") as f:
        f.write(_HEAD)
        for path in data_files:
            with local_copy(str(path)) as local:
                for lengths in _column(local, column):
                    if len(lengths) and (lengths.min() < 0 or lengths.max() >= 1 << 31):
                        raise ValueError(f"{path}: a {column} outside 0..2^31")
                    f.write(_encode(lengths))
                    n += len(lengths)
        f.write(_STOP)
    return n
