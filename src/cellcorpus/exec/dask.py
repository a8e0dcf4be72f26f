"""Dask wiring in one place: a Client's `concurrent.futures` executor with a worker-init plugin."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from urllib.parse import urlparse

from cellcorpus.errors import ConfigError, MissingExtraError
from cellcorpus.exec.local import init_worker, worker_environment

__all__ = ["dask_executor", "check_dask_reachable"]


def check_dask_reachable(address: str, timeout: float = 3.0) -> None:
    """A `tcp://host:port` scheduler must accept a connection within seconds (Dask itself waits ~30 s)."""
    try:
        import distributed  # noqa: F401
    except ImportError as exc:
        raise MissingExtraError("Dask execution needs dask.distributed", hint="pip install 'cellcorpus[dask]'") from exc
    if address in ("local", "inprocess"):
        return
    url = urlparse(address if "://" in address else f"tcp://{address}")
    if url.scheme not in ("tcp", "tls") or not url.hostname or not url.port:
        raise ConfigError(f"--dask / executor.dask: '{address}' is not a scheduler address (tcp://host:port or local)")
    try:
        with socket.create_connection((url.hostname, url.port), timeout=timeout):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (os.strerror(exc.errno) if exc.errno else str(exc))
        raise ConfigError(
            f"--dask / executor.dask: no Dask scheduler reachable at {address} ({reason})",
            hint="start one with `dask scheduler`, or use --dask local",
        ) from exc


@contextmanager
def dask_executor(address: str, n_workers: int = 2, direct: str = "auto") -> Iterator[tuple[Executor, int]]:
    """`address` is a scheduler (tcp://host:port) or `local` for a LocalCluster of `n_workers` processes.

    Yields the executor and the number of workers the scheduler knows (to size the in-flight window).
    """
    check_dask_reachable(address)  # seconds, not Dask's 30 s connect timeout and a page of traceback
    from distributed import Client, LocalCluster, WorkerPlugin

    class _Init(WorkerPlugin):
        def __init__(self, direct: str) -> None:
            self.direct = direct

        def setup(self, worker: object) -> None:
            init_worker(self.direct)

    # Dask's own INFO lines (~35 per LocalCluster start) would land between the progress bars: WARNING unless
    # the command runs with --debug; this process's logger is restored afterwards, workers get it as they start.
    quiet = logging.getLogger().getEffectiveLevel() > logging.DEBUG
    dask_logger = logging.getLogger("distributed")
    level = dask_logger.level
    if quiet:
        dask_logger.setLevel(logging.WARNING)
    cluster = None
    if address == "local":
        extra = {"DASK_LOGGING__DISTRIBUTED": "warning"} if quiet else {}
        with worker_environment(extra):  # the worker processes start inside LocalCluster(): they copy it then
            cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cluster)
    elif address == "inprocess":  # tests: threads in this process, no spawn cost
        cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=False, dashboard_address=None)
        client = Client(cluster)
    else:
        client = Client(address)
    try:
        client.register_plugin(_Init(direct))
        workers = len(client.scheduler_info().get("workers", {})) or n_workers
        yield client.get_executor(pure=False), workers
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
        dask_logger.setLevel(level)
