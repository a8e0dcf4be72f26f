"""Mergeable per-cell distributions: the report's quantiles, means and histograms without every cell's value.

A `ValueCounts` holds each distinct value once with how many cells have it. Genes per cell are integers below
the vocabulary's size, and raw-count totals are integers too, so at any corpus size the distinct values stay
few and everything computed from them equals what the full array gives: `np.quantile`'s linear interpolation
(the two order statistics it interpolates between are found from the cumulative counts, and numpy itself does
the interpolation), the mean (an exactly rounded sum), histograms. Only when the distinct values exceed `cap`
(normalised data: about one value per cell) are values rounded onto a log grid of relative spacing `alpha`
(as DDSketch does), which bounds memory and the error of every quantile by `alpha`; `approximate` says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["ValueCounts"]

DEFAULT_CAP = 1 << 20  # distinct values kept exactly (16 MB)
_ALPHA = 1e-4


@dataclass
class ValueCounts:
    """Sorted distinct `values` with their `counts`, the exactly rounded `total` of all values, and `alpha`
    (0: exact; else the relative precision values were rounded to)."""

    values: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    counts: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    total: float = 0.0
    alpha: float = 0.0

    @classmethod
    def of(cls, x: NDArray[Any], cap: int = DEFAULT_CAP) -> ValueCounts:
        """The distribution of the values in `x`."""
        values, counts = np.unique(np.asarray(x, dtype=np.float64), return_counts=True)
        return cls(values, counts.astype(np.int64), math.fsum(x.tolist()) if len(x) else 0.0)._bounded(cap)

    def merge(self, other: ValueCounts, cap: int = DEFAULT_CAP) -> ValueCounts:
        """Both distributions together (bounded by `cap` distinct values)."""
        alpha = max(self.alpha, other.alpha)
        a, b = (self._rounded(alpha) if alpha else self), (other._rounded(alpha) if alpha else other)
        values, inverse = np.unique(np.concatenate([a.values, b.values]), return_inverse=True)
        counts = np.bincount(inverse, weights=np.concatenate([a.counts, b.counts]), minlength=len(values))
        total = math.fsum([self.total, other.total])
        return ValueCounts(values, counts.astype(np.int64), total, alpha)._bounded(cap)

    @property
    def n(self) -> int:
        """Number of values (cells)."""
        return int(self.counts.sum())

    @property
    def approximate(self) -> bool:
        """Whether values were rounded (more distinct values than the cap)."""
        return self.alpha > 0

    def mean(self) -> float:
        """The mean (sum exactly rounded; equal to `np.mean` of the values whenever their sums are exact)."""
        return self.total / self.n

    def quantile(self, q: float) -> float:
        """`np.quantile(x, q)` (linear interpolation) of the values this distribution holds."""
        n = self.n
        h = (n - 1) * q  # numpy's virtual index, then its own interpolation between the two order statistics
        lo = math.floor(h)
        ends = np.cumsum(self.counts)
        a, b = self.values[np.searchsorted(ends, [lo + 1, min(lo + 2, n)])]
        return float(np.quantile(np.array([a, b]), h - lo))

    def count_above(self, threshold: float) -> int:
        """Cells whose value is above `threshold`."""
        return int(self.counts[self.values > threshold].sum())

    def histogram(self, edges: NDArray[np.float64], transform: Any = None) -> NDArray[np.float64]:
        """Cells per bin of `edges` (as `np.histogram`), of `transform(values)` when given."""
        x = self.values if transform is None else transform(self.values)
        hist, _ = np.histogram(x, bins=edges, weights=self.counts)
        return hist

    def _bounded(self, cap: int) -> ValueCounts:
        if len(self.values) <= cap:
            return self
        alpha = max(self.alpha, _ALPHA)
        while True:  # coarser until the values fit (one pass in practice)
            out = self._rounded(alpha)
            values, inverse = np.unique(out.values, return_inverse=True)
            counts = np.bincount(inverse, weights=out.counts, minlength=len(values)).astype(np.int64)
            if len(values) <= cap:
                return ValueCounts(values, counts, self.total, alpha)
            alpha *= 4

    def _rounded(self, alpha: float) -> ValueCounts:
        """Values moved to the middle of their log-grid cell (relative error <= alpha); zeros stay."""
        gamma = (1 + alpha) / (1 - alpha)
        v = self.values
        mag = np.abs(v)
        nz = mag > 0
        k = np.ceil(np.log(np.where(nz, mag, 1.0)) / math.log(gamma))
        rep = np.where(nz, np.sign(v) * 2 * gamma**k / (gamma + 1), 0.0)
        return ValueCounts(rep, self.counts, self.total, alpha)
