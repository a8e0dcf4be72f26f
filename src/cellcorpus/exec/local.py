"""Local executors: inline (num_proc=1, no pickling, easy debugging) or a spawn process pool."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from contextlib import contextmanager
from typing import Any

from cellcorpus.log import worker_init

__all__ = ["InlineExecutor", "local_executor", "WORKER_ENV", "worker_environment", "init_worker", "one_per_worker"]

# Workers keep the memory they free for reuse: every unit allocates arrays of the same sizes again, and memory
# given back to the OS comes back as fresh pages the kernel must fault in and zero (more where a hypervisor
# reclaims freed memory). MIMALLOC_PURGE_DELAY is read by pyarrow's allocator (mimalloc), which otherwise returns
# freed memory 10 ms after a free: 3-5% of an end-to-end run's CPU, peak RSS unchanged. MALLOC_MMAP_MAX_ and
# MALLOC_TRIM_THRESHOLD_ are read by glibc's malloc (numpy, h5py) when a worker starts: a unit's ~400 MB of read
# and gathered arrays otherwise each get their own mapping, unmapped when freed; kept in the heap, the tokenize
# units ran ~1 s faster per 300k cells (a ~4% shorter run), at the cost of ~0.35 GB more peak RSS per worker
# (numpy's freed memory is no longer available to Arrow's allocator). A value the user set wins: glibc's
# defaults, MALLOC_MMAP_MAX_=65536 MALLOC_TRIM_THRESHOLD_=131072, trade the speed back for that memory.
# Both allocators read these when a process starts, so they are given to worker processes as they start, and
# never left in the caller's environment (a notebook that runs cellcorpus keeps its own allocator settings).
WORKER_ENV = {"MIMALLOC_PURGE_DELAY": "-1", "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}
_ENV_LOCK = threading.Lock()
_MAIN_LOCK = threading.Lock()  # two pools starting at once hide and restore __main__ one after the other


@contextmanager
def worker_environment(extra: dict[str, str] | None = None) -> Iterator[None]:
    """WORKER_ENV and `extra` (where the user has not set a value) in os.environ while worker processes start,
    and the environment exactly as it was afterwards. Spawned processes copy the environment when they start."""
    wanted = {**WORKER_ENV, **(extra or {})}
    with _ENV_LOCK:
        saved = {key: os.environ.get(key) for key in wanted}
        for key, value in wanted.items():
            os.environ.setdefault(key, value)
        try:
            yield
        finally:
            for key, old in saved.items():
                if old is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = old


@contextmanager
def main_not_rerun() -> Iterator[None]:
    """While worker processes start, the caller's `__main__` is not named to them.

    A spawned worker first re-runs the parent's main script (or `-m` module) so that objects defined there can be
    unpickled; a script that calls `run_pipeline` at top level, without `if __name__ == "__main__":`, would then
    start a pipeline inside every worker, which dies with ~60 lines ending in BrokenProcessPool. Our workers need
    nothing from `__main__` (units, contexts and functions all live in cellcorpus modules), so the main module's
    `__file__` and `__spec__` are hidden from `multiprocessing.spawn` for the duration and restored after."""
    import sys

    main = sys.modules.get("__main__")
    names = [k for k in ("__file__", "__spec__") if main is not None and k in vars(main)]
    saved = {k: vars(main)[k] for k in names} if main is not None else {}
    with _MAIN_LOCK:
        try:
            for k in names:
                if k == "__spec__":
                    setattr(main, k, None)
                else:
                    delattr(main, k)
            yield
        finally:
            for k, v in saved.items():
                setattr(main, k, v)


_ALL_WORKERS: Any = None  # in a pool worker: a barrier of all the pool's workers (see `one_per_worker`)


def init_worker(direct: str = "auto", all_workers: Any = None) -> None:
    """A worker process's start (pool initializer, Dask worker plugin): thread caps, logging, `io.direct`."""
    global _ALL_WORKERS
    from cellcorpus.io.direct import set_direct_mode

    worker_init()
    set_direct_mode(direct)
    _ALL_WORKERS = all_workers


def one_per_worker(fn: Callable[..., Any], *args: Any) -> None:
    """Run `fn(*args)`, then wait until every worker of the pool runs one such call: submitted once per worker,
    each worker takes exactly one (none is idle to take a second), so a spawn pool starts a process for each."""
    fn(*args)
    if _ALL_WORKERS is not None:
        with contextlib.suppress(threading.BrokenBarrierError):  # the pool is shutting down (_Pool.shutdown)
            _ALL_WORKERS.wait(timeout=300)


def _nothing() -> None:
    """What a worker runs to be started."""


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


class _Pool(ProcessPoolExecutor):
    """A spawn pool whose shutdown releases workers waiting at the start barrier: a command that stops early
    (a refusal right after the pool started) cancels start tasks not yet taken, and a worker that took one
    would otherwise wait for the others until the barrier's timeout, holding up the shutdown."""

    def __init__(self, barrier: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._barrier = barrier

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Shut down as a ProcessPoolExecutor does, after breaking the start barrier."""
        self._barrier.abort()
        super().shutdown(wait=wait, cancel_futures=cancel_futures)


def local_executor(num_proc: int, direct: str = "auto") -> Executor:
    """Inline executor for one process, else a spawn process pool whose workers all start now (with
    WORKER_ENV in their environment, not in ours) and run `init_worker(direct)`."""
    # spawn: forked workers inherit h5py/HDF5 handles and locks, which is unsafe.
    if num_proc <= 1:
        return InlineExecutor()
    ctx = mp.get_context("spawn")
    all_workers = ctx.Barrier(num_proc)  # inherited by each worker at its start (it cannot travel with a task)
    pool = _Pool(
        all_workers, max_workers=num_proc, mp_context=ctx, initializer=init_worker, initargs=(direct, all_workers)
    )
    with worker_environment(), main_not_rerun():
        # A spawn pool starts a process per submission while none is idle; these keep every worker busy until all
        # have started, so all start now, each copying the environment as it is during this block.
        for _ in range(num_proc):
            pool.submit(one_per_worker, _nothing)
    return pool
