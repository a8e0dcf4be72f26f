"""Local executors: inline (num_proc=1, no pickling, easy debugging) or a spawn process pool."""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from typing import Any

from cellcorpus.log import worker_init

__all__ = ["InlineExecutor", "local_executor", "WORKER_ENV", "set_worker_environment"]

# Workers keep the memory they free for reuse: every unit allocates arrays of the same sizes again, and memory
# given back to the OS comes back as fresh pages the kernel must fault in and zero (more where a hypervisor
# reclaims freed memory). MIMALLOC_PURGE_DELAY is read by pyarrow's allocator (mimalloc), which otherwise returns
# freed memory 10 ms after a free: 3-5% of an end-to-end run's CPU, peak RSS unchanged. MALLOC_MMAP_MAX_ and
# MALLOC_TRIM_THRESHOLD_ are read by glibc's malloc (numpy, h5py) when a worker starts: a unit's ~400 MB of read
# and gathered arrays otherwise each get their own mapping, unmapped when freed; kept in the heap, the tokenize
# units ran ~1 s faster per 300k cells (a ~4% shorter run), at the cost of ~0.35 GB more peak RSS per worker
# (numpy's freed memory is no longer available to Arrow's allocator). A value the user set wins: glibc's
# defaults, MALLOC_MMAP_MAX_=65536 MALLOC_TRIM_THRESHOLD_=131072, trade the speed back for that memory.
WORKER_ENV = {"MIMALLOC_PURGE_DELAY": "-1", "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}


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
