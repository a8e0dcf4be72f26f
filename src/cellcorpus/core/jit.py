"""The one place compiled kernels get their options: `njit` is numba's, cached on disk, releasing the GIL, with
NumPy's float semantics (x / 0 is inf or NaN, as the array code it replaces gives, not ZeroDivisionError).

numba (the kernel compiler scanpy and umap use) is for per-value work NumPy would run as several passes over
memory. Modules holding kernels import numba when they load, so callers import them where they are used.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numba

__all__ = ["njit"]


def njit(fn: Callable[..., Any]) -> Any:
    """`numba.njit` with the project's options: cached on disk, no GIL, NumPy's float semantics."""
    return numba.njit(fn, cache=True, nogil=True, error_model="numpy")
