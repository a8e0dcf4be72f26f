"""A content fingerprint per cell: 128 bits that are equal for two cells holding the same (gene, count) pairs.

The same cell read from another layout (h5ad or parquet, CSR or CSC, another gene order, with or without
explicit zeros, another row of another file) gets the same fingerprint; scaled or normalised counts do not.
A pair is the gene's Ensembl id (the vocabulary's string, hashed, so two corpora with different token ids for
the same gene still agree) and the count as a float64 value (an integer 3 and a float32 3.0 are the same count).
Each pair is hashed on its own and a cell's pair hashes are summed (mod 2**64) in two lanes (of the hashes and
of their squares): a sum does not depend on the pairs' order, so no per-cell sort is needed, and one
`np.add.reduceat` per lane does a run of whole cells at once.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from cellcorpus.core.split import hash_strings, mix64

__all__ = ["gene_hashes", "cell_fingerprints", "hex_fingerprints", "FINGERPRINT_DTYPE"]

# (hi, lo): a structured pair sorts and compares as one 128-bit value
FINGERPRINT_DTYPE = np.dtype([("hi", "<u8"), ("lo", "<u8")])
_LANES = (np.uint64(0x6A09E667F3BCC908), np.uint64(0xBB67AE8584CAA73B))  # two independent salts


def gene_hashes(gene_ids: list[str] | NDArray[Any]) -> NDArray[np.uint64]:
    """One uint64 per gene id string (index = token id when given the vocabulary's tokens in id order)."""
    return hash_strings(np.asarray(gene_ids, dtype=str))


def cell_fingerprints(
    offsets: NDArray[Any], genes: NDArray[Any], counts: NDArray[Any], hashes: NDArray[np.uint64]
) -> NDArray[Any]:
    """The fingerprint of each cell i, whose pairs are genes[offsets[i]:offsets[i+1]] (token ids, looked up in
    `hashes`) with counts[...] (zeros are not pairs: they are skipped). Returns a FINGERPRINT_DTYPE array.

    Worked through in runs of whole cells of ~`_CHUNK` pairs, so each pass of the arithmetic stays in the CPU's
    cache (a unit's pairs at once would be ~10 passes over hundreds of MB)."""
    n = len(offsets) - 1
    out = np.zeros(n, dtype=FINGERPRINT_DTYPE)
    if not n:
        return out
    offsets = np.asarray(offsets, dtype=np.int64)
    cuts = np.unique(np.searchsorted(offsets, np.arange(0, int(offsets[-1]), _CHUNK), side="right") - 1)
    bounds = [*np.maximum(cuts, 0).tolist(), n]
    pair, square = np.empty(_CHUNK, np.uint64), np.empty(_CHUNK, np.uint64)
    hi, lo = np.zeros(n, np.uint64), np.zeros(n, np.uint64)
    with np.errstate(over="ignore"):
        for c0, c1 in zip(bounds[:-1], bounds[1:], strict=True):
            if c1 <= c0:
                continue
            a, b = int(offsets[c0]), int(offsets[c1])
            if b == a:
                continue
            if b - a > len(pair):  # one cell longer than a run
                pair, square = np.empty(b - a, np.uint64), np.empty(b - a, np.uint64)
            p, q = pair[: b - a], square[: b - a]
            _pair_hashes(genes[a:b], counts[a:b], hashes, p, q)
            local = offsets[c0:c1] - a
            has = np.diff(offsets[c0 : c1 + 1]) > 0
            hi[c0:c1][has] = np.add.reduceat(p, local[has])
            np.multiply(p, p, out=q)  # the second lane: another function of the same pair hashes
            lo[c0:c1][has] = np.add.reduceat(q, local[has])
        out["hi"] = mix64(hi ^ _LANES[0])  # finalised: a sum's low bits alone are weakly mixed
        out["lo"] = mix64(lo ^ _LANES[1])
    return out


_CHUNK = 1 << 15
_K = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9))


def _pair_hashes(
    genes: NDArray[Any], counts: NDArray[Any], hashes: NDArray[np.uint64], out: NDArray[np.uint64], tmp: NDArray[Any]
) -> None:
    """A 64-bit hash of each (gene, count) pair into `out` (0 for a zero count), using `tmp` as scratch:
    (count bits x K0, xor the gene's hash) x K1, folded (a multiply-xorshift, as splitmix's finaliser)."""
    out.view(np.float64)[:] = counts  # the count as a float64, its bits
    out *= _K[0]
    # mode="wrap": numpy buffers `out` under the default "raise" (5x slower here); token ids are in range
    np.take(hashes, genes, out=tmp, mode="wrap")
    out ^= tmp
    out *= _K[1]
    np.right_shift(out, np.uint64(32), out=tmp)
    out ^= tmp
    if not np.all(counts):  # tokenize drops explicit zeros before this; other callers may not
        out[np.asarray(counts) == 0] = 0


_HEX = np.array([f"{b:02x}".encode() for b in range(256)], dtype="S2")


def hex_fingerprints(fps: NDArray[Any]) -> NDArray[Any]:
    """Each fingerprint as 32 lowercase hex characters (hi then lo, big-endian), for the `cell_hash` column:
    every byte looked up at once in a 256-entry table, no per-cell formatting."""
    raw = np.empty((len(fps), 2), dtype=">u8")
    raw[:, 0], raw[:, 1] = fps["hi"], fps["lo"]
    pairs = _HEX[raw.view(np.uint8).reshape(len(fps), 16)]
    return np.ascontiguousarray(pairs).view("S32").ravel().astype(str)
