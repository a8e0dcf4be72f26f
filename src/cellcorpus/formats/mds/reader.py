"""Reading MDS shards back (verify): header, sample offsets, per-column bytes, decoded values."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
from numpy.typing import NDArray

from cellcorpus.formats.mds.encodings import encoding

__all__ = ["parse_shard", "iter_samples", "decode_value"]


def parse_shard(raw: bytes) -> tuple[dict[str, Any], NDArray[Any]]:
    """(shard config, absolute sample offsets) from raw shard bytes; raises ValueError if malformed."""
    if len(raw) < 8:
        raise ValueError("shard shorter than its header")
    n = int(np.frombuffer(raw[:4], "<u4")[0])
    end = 4 + 4 * (n + 1)
    if end > len(raw):
        raise ValueError(f"header claims {n} samples, more than the shard holds")
    offsets = np.frombuffer(raw[4:end], "<u4").astype(np.int64)
    config = json.loads(raw[end : offsets[0]].decode("utf-8"))
    if np.any(np.diff(offsets) < 0) or offsets[-1] != len(raw):
        raise ValueError("sample offsets are not increasing or do not end at the shard's end")
    return config, offsets


def iter_samples(raw: bytes, config: dict[str, Any], offsets: NDArray[Any]) -> Iterator[dict[str, bytes]]:
    """Yield {column: encoded bytes} per sample (sizes header resolved)."""
    names, sizes = config["column_names"], config["column_sizes"]
    n_var = sum(s is None for s in sizes)
    for a, b in zip(offsets[:-1], offsets[1:], strict=True):
        var_sizes = iter(np.frombuffer(raw[a : a + 4 * n_var], "<u4").tolist())
        pos = a + 4 * n_var
        out = {}
        for name, size in zip(names, sizes, strict=True):
            k = size if size is not None else next(var_sizes)
            out[name] = raw[pos : pos + k]
            pos += k
        if pos != b:
            raise ValueError("sample bytes do not add up to the sample's size")
        yield out


def decode_value(name: str, data: bytes) -> Any:
    """Decode one column value (numpy for ndarray/scalars; a torch tensor for pkl lists)."""
    return encoding(name).decode(data)
