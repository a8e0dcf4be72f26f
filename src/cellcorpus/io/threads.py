"""Background threads of a worker process, one small pool per purpose, created on first use.

Threads do not survive a fork: a pool made before one is replaced in the child (keyed by process id).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

__all__ = ["thread_pool"]

_lock = threading.Lock()
_pools: dict[str, tuple[int, ThreadPoolExecutor]] = {}


def thread_pool(purpose: str, threads: int) -> ThreadPoolExecutor:
    """This process's pool for `purpose` (its threads are named after it)."""
    with _lock:
        found = _pools.get(purpose)
        if found is None or found[0] != os.getpid():
            found = (os.getpid(), ThreadPoolExecutor(threads, thread_name_prefix=f"cellcorpus-{purpose}"))
            _pools[purpose] = found
        return found[1]
