"""The sketch's logarithmic buckets, found without a logarithm: bucket i holds the values in (B[i-1], B[i]],
B[i] = exp(i ln g) (libm's exp, so the same on every machine with the same C library; NumPy's SIMD log,
used before, differs from it in the last bit on some CPUs).

A value's bucket is read from a table indexed by its float64 bits (sign, exponent and the top `_MANTISSA_BITS`
bits of the mantissa: an interval narrower than a bucket, so it holds at most one boundary), then one comparison
with that boundary. This is exactly `min i with v <= B[i]`, at the cost of two cached loads instead of ~8 ns of
`log`. The kernel that buckets (core/cell_kernels.py) writes those two lines inline: a call with array
arguments cost ~40 ns per value under numba (measured), the lookup itself ~3 ns. Values outside 2^-64..2^64
(none in count data) take `log` and are moved onto the same boundaries (`bucket_by_log`).
Compiled with numba (scanpy's kernel compiler; a per-value loop NumPy would run as ~6 passes over memory).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from cellcorpus.core.jit import njit

__all__ = ["LogBuckets", "log_buckets", "bucket_by_log", "BUCKET_LIMIT", "TABLE_SHIFT", "TABLE_START"]

BUCKET_LIMIT = 1 << 20  # buckets -2^20 .. 2^20-1 (the sketch's key range)
_MANTISSA_BITS = 12  # table intervals of relative width <= 2^-12: narrower than a bucket down to a = 1.2e-4
_EXP_LO, _EXP_HI = 1023 - 64, 1023 + 64  # biased exponents of 2^-64 .. 2^64, the table's range
TABLE_SHIFT = 52 - _MANTISSA_BITS  # a value's table index: (its bits >> TABLE_SHIFT) - TABLE_START
TABLE_START = _EXP_LO << _MANTISSA_BITS


@dataclass(frozen=True)
class LogBuckets:
    """The boundaries and the bits table of one bucket ratio `gamma` (a few hundred kB)."""

    gamma: float
    log_gamma: float
    first: int  # the bucket of bounds[0]
    bounds: NDArray[np.float64]  # B[first], B[first + 1], ...
    table: NDArray[np.int32]  # per bits interval of 2^-64..2^64: the index in `bounds` of its first bucket
    steps: int  # comparisons needed per value (1 unless a bucket is narrower than a table interval)


@njit
def _exp_bounds(log_gamma: float, first: int, n: int) -> Any:
    out = np.empty(n)
    for i in range(n):
        out[i] = math.exp((first + i) * log_gamma)
    return out


@functools.lru_cache(maxsize=8)
def log_buckets(gamma: float) -> LogBuckets:
    """The buckets of ratio `gamma` (cached per process)."""
    log_gamma = math.log(gamma)
    first = max(math.floor(-64 * math.log(2) / log_gamma) - 2, -BUCKET_LIMIT)
    last = min(math.ceil(64 * math.log(2) / log_gamma) + 2, BUCKET_LIMIT - 1)
    bounds = _exp_bounds(log_gamma, first, last - first + 1)
    starts = (np.arange(TABLE_START, _EXP_HI << _MANTISSA_BITS, dtype=np.int64) << TABLE_SHIFT).view(np.float64)
    table = np.minimum(np.searchsorted(bounds, starts, side="left"), len(bounds) - 1).astype(np.int32)
    steps = max(1, math.ceil(2.0**-_MANTISSA_BITS / (gamma - 1) + 1e-9))
    return LogBuckets(gamma, log_gamma, first, bounds, table, steps)


@njit
def bucket_by_log(v: float, log_gamma: float) -> Any:
    """The bucket of a finite positive `v` outside the table's range: by `log`, then onto the boundaries."""
    b = np.int64(math.ceil(math.log(v) / log_gamma))
    while v > math.exp(b * log_gamma):
        b += 1
    while v <= math.exp((b - 1) * log_gamma):
        b -= 1
    return b
