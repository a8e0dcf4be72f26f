"""Seeded, order-free hashing of cell ids: split assignment and shuffle keys.

A cell's split and its shuffled position depend only on (id, seed), never on chunking, worker
count or processing order. splitmix64 is written out here because numpy has no vectorised
integer hash; uint64 arithmetic wraps, which is exactly what the mixer needs.

With a content key (`split_parameters.key`: columns such as the barcode and the sample), the split hashes
the key's values instead of the id (`key_ids`), so a cell lands in the same split whichever file or row it
is read from. The strings are hashed by hand, 8 bytes at a time across all cells at once: neither numpy nor
pyarrow exposes a stable vectorised string hash (pandas' `hash_array` is one, but a pandas release could
change it, and with it which cells are held out).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "mix64",
    "hash_ids",
    "assign_valid",
    "shuffle_keys",
    "key_ids",
    "hash_strings",
    "equal_pairs",
    "choose_groups",
    "MAX_KEY_BYTES",
]

_SALT_SPLIT = np.uint64(0x5EED5EED5EED5EED)
_SALT_SHUFFLE = np.uint64(0x5A5A0F0F3C3C9696)
_SALT_KEY = np.uint64(0x6B65795F636F6C73)
MAX_KEY_BYTES = 1024  # a key value longer than this is not an identifier (and would pad every row to it)


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


def hash_strings(values: NDArray[Any]) -> NDArray[np.uint64]:
    """uint64 hash of each string's UTF-8 bytes and length (trailing NUL bytes are not part of a value)."""
    encoded = np.char.encode(np.asarray(values, dtype=str), "utf-8") if len(values) else np.zeros(0, "S1")
    width = max(8, -(-encoded.dtype.itemsize // 8) * 8)
    if width > MAX_KEY_BYTES:
        raise ValueError(f"a split key value is {encoded.dtype.itemsize} bytes long (at most {MAX_KEY_BYTES})")
    # fixed-width bytes, zero padded to whole 8-byte words: one row per cell
    words = np.zeros(len(encoded), dtype=f"S{width}")
    words[:] = encoded
    lengths = np.char.str_len(encoded).astype(np.uint64) if len(encoded) else np.zeros(0, np.uint64)
    matrix = words.view("<u8").reshape(len(encoded), width // 8)
    h = mix64(lengths ^ _SALT_KEY)
    for w in range(width // 8):  # a loop over 8-byte word positions (a few per barcode), not over cells
        h = mix64(h ^ matrix[:, w])
    return h


def key_ids(columns: list[NDArray[Any]]) -> NDArray[np.int64]:
    """One int64 per cell identifying it by the values of its key columns (strings), for `assign_valid`: the
    same values give the same number in any file, row or unit; columns are combined in order."""
    n = len(columns[0])
    h = np.full(n, _SALT_KEY, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for i, values in enumerate(columns):
            h = mix64((h * np.uint64(0x100000001B3)) ^ hash_strings(values) ^ np.uint64(i + 1))
    return h.view(np.int64)


def equal_pairs(keys: NDArray[Any]) -> NDArray[np.int64]:
    """(i, j) positions of `keys` holding the same value, neighbours in sorted order (every repeated value is in
    at least one pair; i < j within a pair), as an (n, 2) array in sorted-key order."""
    order = np.argsort(keys, kind="stable")
    at = np.flatnonzero(keys[order][1:] == keys[order][:-1])
    pairs: NDArray[np.int64] = np.stack([order[at], order[at + 1]], axis=1).astype(np.int64)
    return pairs


def choose_groups(sizes: dict[str, int], test_size: float, seed: int) -> list[str]:
    """The groups held out whole: in the order of their seeded hash, until they hold `test_size` of all cells
    (the last one taken reaches it). Depends on the groups' names and sizes only, never on file order."""
    if not sizes or test_size == 0:
        return []
    names = np.array(sorted(sizes), dtype=object)
    order = np.argsort(hash_ids(key_ids([names]), seed, _SALT_SPLIT), kind="stable")
    cells = np.array([sizes[n] for n in names], dtype=np.int64)[order]
    before = np.cumsum(cells) - cells  # cells already held out when each group comes up
    take = before < test_size * int(cells.sum())
    return sorted(names[order][take].tolist())
