"""Reading MDS shards back (verify): header, sample offsets, per-column bytes, decoded values."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from cellcorpus.formats.mds.encodings import encoding
from cellcorpus.formats.mds.spec import decompress, hash_bytes

__all__ = ["parse_shard", "iter_samples", "decode_value", "ShardInspection", "inspect_shard"]


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


@dataclass
class ShardInspection:
    """The structural checks of one stored shard against its index entry, in order, and its parsed parts.

    `checks` holds (check name, passed, detail); `raw`/`config`/`offsets` are None once a check failed.
    """

    checks: list[tuple[str, bool, str]] = field(default_factory=list)
    raw: bytes | None = None
    config: dict[str, Any] | None = None
    offsets: NDArray[Any] | None = None


def _hashes_match(info: dict[str, Any], data: bytes) -> bool:
    return len(data) == info["bytes"] and all(hash_bytes(a, data) == h for a, h in info["hashes"].items())


def inspect_shard(data: bytes, entry: dict[str, Any]) -> ShardInspection:
    """Check stored bytes/hashes, decompressed bytes/hashes and the sample layout against an index entry."""
    out = ShardInspection()
    stored = entry["zip_data"] or entry["raw_data"]
    ok = _hashes_match(stored, data)
    out.checks.append(("mds shard hashes", ok, f"bytes/hash differ from index.json ({len(data)} bytes)"))
    if not ok:
        return out
    try:
        raw = decompress(data) if entry["zip_data"] else data
        out.checks.append(("mds raw hashes", _hashes_match(entry["raw_data"], raw), "decompressed bytes differ"))
        config, offsets = parse_shard(raw)
    except Exception as exc:  # any malformed shard lands here, named by the caller
        out.checks.append(("mds shard structure", False, str(exc)))
        return out
    n = len(offsets) - 1
    out.checks.append(("mds shard structure", n == entry["samples"], f"{n} samples, index says {entry['samples']}"))
    out.raw, out.config, out.offsets = raw, config, offsets
    return out
