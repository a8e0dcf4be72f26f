"""Logging setup for the CLI and worker start-up (thread caps so N workers use N cores, not N^2)."""

from __future__ import annotations

import logging
import os

__all__ = ["setup_logging", "worker_init", "THREAD_ENV"]

THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def setup_logging(level: int = logging.INFO) -> None:
    """Log to stderr at `level` (the CLI sets WARNING, or DEBUG with --debug)."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)


def worker_init(level: int = logging.WARNING) -> None:
    """Process-pool initializer / Dask worker hook: one thread per worker for BLAS-like libraries."""
    for key in THREAD_ENV:
        os.environ.setdefault(key, "1")
    setup_logging(level)
