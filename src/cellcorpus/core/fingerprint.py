"""A content fingerprint per cell: 128 bits that are equal for two cells holding the same (gene, count) pairs.

The same cell read from another layout (h5ad or parquet, CSR or CSC, another gene order, with or without
explicit zeros, another row of another file) gets the same fingerprint; scaled or normalised counts do not.
A pair is the gene's Ensembl id (the vocabulary's string, hashed, so two corpora with different token ids for
the same gene still agree) and the count as a float64 value (an integer 3 and a float32 3.0 are the same count).
Each pair is hashed on its own and a cell's pairs are summed (mod 2**64) in two independent lanes: a sum does
not depend on the pairs' order, so no per-cell sort is needed, and one `np.add.reduceat` per lane does every
cell of a unit at once. Two different cells share a fingerprint with probability ~2**-128 per pair of cells.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from cellcorpus.core.split import hash_strings, mix64

__all__ = ["gene_hashes", "cell_fingerprints", "FINGERPRINT_DTYPE"]

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
    `hashes`) with counts[...] (zeros are not pairs: they are skipped). Returns a FINGERPRINT_DTYPE array."""
    n = len(offsets) - 1
    out = np.zeros(n, dtype=FINGERPRINT_DTYPE)
    if not n:
        return out
    end = int(offsets[-1])  # offsets start at 0
    values = np.asarray(counts[:end], dtype=np.float64)
    value_bits = values.view(np.uint64)
    nonzero = values != 0
    gene = hashes[np.asarray(genes[:end], dtype=np.int64)]
    lengths = np.diff(offsets)
    starts = np.asarray(offsets[:-1], dtype=np.int64)
    has = lengths > 0
    with np.errstate(over="ignore"):
        for field, salt in zip(("hi", "lo"), _LANES, strict=True):
            pair = mix64(gene ^ mix64(value_bits ^ salt))
            pair[~nonzero] = 0  # an explicit zero adds nothing to the sum
            sums = np.add.reduceat(pair, np.minimum(starts[has], len(pair) - 1))
            out[field][has] = mix64(sums ^ salt)  # finalised: a sum's low bits alone are weakly mixed
            out[field][~has] = mix64(np.full(int((~has).sum()), salt, dtype=np.uint64))
    return out
