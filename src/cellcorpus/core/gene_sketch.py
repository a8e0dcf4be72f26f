"""Per-gene quantile sketches over a whole corpus, in bounded memory and exactly mergeable.

Each gene's positive values are counted in logarithmic buckets (the DDSketch scheme: bucket i holds values in
(g^(i-1), g^i] with g = (1 + a) / (1 - a), and reports 2 g^i / (g + 1), within relative error a of every
value in it). Written by hand because the sketch libraries (ddsketch, crick, fastdigest) add values one gene
at a time from Python; here a unit's values for every gene are bucketed with a handful of array operations,
and a sketch is a sorted array of (gene, bucket) keys with counts. Counts add, so merging is exact and the
result does not depend on the order, the number of processes or the unit size (a t-digest's would). Memory
grows with the genes and buckets seen (a few hundred buckets per gene at most), never with cells.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["GeneSketch"]

_BUCKET_BITS = 21  # buckets -2^20 .. 2^20 per gene: values 1e-300 .. 1e300 at a = 0.05%
_OFFSET = 1 << (_BUCKET_BITS - 1)


@dataclass(frozen=True)
class GeneSketch:
    """Counts of (gene, log bucket) keys, sorted by key; `gamma` the bucket ratio."""

    keys: NDArray[np.int64]
    counts: NDArray[np.int64]
    gamma: float

    @classmethod
    def empty(cls, relative_accuracy: float) -> GeneSketch:
        """No values yet, at this relative accuracy."""
        gamma = (1 + relative_accuracy) / (1 - relative_accuracy)
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), gamma)

    def add(self, genes: NDArray[Any], values: NDArray[Any]) -> GeneSketch:
        """This sketch with the positive `values` of `genes` (non-negative ids) counted in."""
        positive = values > 0
        bucket = np.ceil(np.log(values[positive].astype(np.float64)) / np.log(self.gamma)).astype(np.int64)
        keys = np.sort((genes[positive].astype(np.int64) << _BUCKET_BITS) | (bucket + _OFFSET))
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else np.zeros(0, np.int64)
        counts = np.diff(np.r_[starts, len(keys)]).astype(np.int64)
        added = GeneSketch(keys[starts], counts, self.gamma)
        return added if not len(self.keys) else self.merge(added)

    def merge(self, other: GeneSketch) -> GeneSketch:
        """Both sketches' counts added (exact; the same whatever the order). Both key arrays are sorted, so one
        stable sort (a merge of two runs) orders them."""
        if not np.isclose(other.gamma, self.gamma, rtol=0, atol=1e-15):
            raise ValueError("sketches of different accuracy")
        keys = np.concatenate([self.keys, other.keys])
        order = np.argsort(keys, kind="stable")
        keys, counts = keys[order], np.concatenate([self.counts, other.counts])[order]
        if not len(keys):
            return self
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        return GeneSketch(keys[starts], np.add.reduceat(counts, starts), self.gamma)

    @staticmethod
    def merge_all(sketches: Iterator[GeneSketch], relative_accuracy: float) -> GeneSketch:
        """Every sketch of `sketches` added up, merging sketches of similar size first (as a binary counter), so
        the work is ~ total keys x log(number of sketches) and memory ~ twice the result."""
        stack: list[GeneSketch] = []
        for sketch in sketches:
            stack.append(sketch)
            while len(stack) > 1 and len(stack[-2].keys) <= 2 * len(stack[-1].keys):
                top = stack.pop()
                stack[-1] = stack[-1].merge(top)
        result = GeneSketch.empty(relative_accuracy)
        while stack:
            result = stack.pop().merge(result)
        return result

    def medians(self) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float64]]:
        """(genes, values counted per gene, median per gene): the median as NumPy takes it (the mean of the two
        middle values for an even count), each middle value read from its bucket."""
        if not len(self.keys):
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
        genes = self.keys >> _BUCKET_BITS
        buckets = (self.keys & ((1 << _BUCKET_BITS) - 1)) - _OFFSET
        starts = np.flatnonzero(np.r_[True, genes[1:] != genes[:-1]])
        cum = np.cumsum(self.counts)
        before = np.r_[0, cum[starts[1:] - 1]]
        n = np.add.reduceat(self.counts, starts)
        rep = 2 * self.gamma ** buckets.astype(np.float64) / (self.gamma + 1)
        lo = np.searchsorted(cum, before + (n - 1) // 2, side="right")  # the bucket holding rank (n-1)//2
        hi = np.searchsorted(cum, before + n // 2, side="right")
        return genes[starts], n, (rep[lo] + rep[hi]) / 2
