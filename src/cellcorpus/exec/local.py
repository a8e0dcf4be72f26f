"""Local executors: inline (num_proc=1, no pickling, easy debugging) or a spawn process pool."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from typing import Any

from cellcorpus.log import worker_init

__all__ = ["InlineExecutor", "local_executor"]


class InlineExecutor(Executor):
    """Runs each submitted call immediately in this process; same interface as a pool."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Run `fn` now; its result or exception is delivered through the future."""
        fut: Future = Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # delivered through result(), as a pool would
            fut.set_exception(exc)
        return fut


def local_executor(num_proc: int) -> Executor:
    """Inline executor for one process, else a spawn process pool with worker_init."""
    # spawn: forked workers inherit h5py/HDF5 handles and locks, which is unsafe.
    if num_proc <= 1:
        return InlineExecutor()
    return ProcessPoolExecutor(max_workers=num_proc, mp_context=mp.get_context("spawn"), initializer=worker_init)
