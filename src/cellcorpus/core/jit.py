"""The one place compiled kernels get their options: `njit` is numba's, cached on disk, releasing the GIL, with
NumPy's float semantics (x / 0 is inf or NaN, as the array code it replaces gives, not ZeroDivisionError).

numba (the kernel compiler scanpy and umap use) is for per-value work NumPy would run as several passes over
memory. Modules holding kernels import numba when they load, so callers import them where they are used.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numba
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

__all__ = ["njit", "float_bits"]


def njit(fn: Callable[..., Any]) -> Any:
    """`numba.njit` with the project's options: cached on disk, no GIL, NumPy's float semantics."""
    return numba.njit(fn, cache=True, nogil=True, error_model="numpy")


@intrinsic
def float_bits(typingctx: Any, x: Any) -> Any:
    """A float64's or float32's bits as an int64 (a float32's zero-extended): a register move, as NumPy's
    `.view` is for arrays (numba has no scalar view)."""
    width = {types.float64: 64, types.float32: 32}.get(x)
    if width is None:
        return None

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        bits = builder.bitcast(args[0], ir.IntType(width))
        return bits if width == 64 else builder.zext(bits, ir.IntType(64))

    return types.int64(x), codegen
