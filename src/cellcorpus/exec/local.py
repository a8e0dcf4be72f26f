"""Local executors: inline (num_proc=1, no pickling, easy debugging) or a spawn process pool."""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from typing import Any

from cellcorpus.log import worker_init

__all__ = ["InlineExecutor", "local_executor", "WORKER_ENV", "set_worker_environment"]

# Read by pyarrow's allocator (mimalloc) when a worker loads it. mimalloc returns freed memory to the OS 10 ms
# after a free; every unit allocates batch-sized buffers of the same sizes again, and the kernel zeroes each
# page on its next touch: measured 3-5% of an end-to-end run's CPU. Workers keep freed memory for reuse
# instead (peak RSS unchanged within ~5%: the same memory is reused, not grown). A value the user set wins.
WORKER_ENV = {"MIMALLOC_PURGE_DELAY": "-1"}


def set_worker_environment() -> None:
    """Put WORKER_ENV into this process's environment (unless set), for the worker processes it starts next.

    This process's own allocator is already initialised and unaffected; only processes started later read it.
    """
    for key, value in WORKER_ENV.items():
        os.environ.setdefault(key, value)


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
