"""Dask wiring in one place: a Client's `concurrent.futures` executor with a worker-init plugin."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Executor
from contextlib import contextmanager

from cellcorpus.errors import MissingExtraError
from cellcorpus.log import worker_init

__all__ = ["dask_executor"]


@contextmanager
def dask_executor(address: str, n_workers: int = 2) -> Iterator[tuple[Executor, int]]:
    """`address` is a scheduler (tcp://host:port) or `local` for a LocalCluster of `n_workers` processes.

    Yields the executor and the number of workers the scheduler knows (to size the in-flight window).
    """
    try:
        from distributed import Client, LocalCluster, WorkerPlugin
    except ImportError as exc:
        raise MissingExtraError("Dask execution needs dask.distributed", hint="pip install 'cellcorpus[dask]'") from exc

    class _Init(WorkerPlugin):
        def setup(self, worker: object) -> None:
            worker_init()

    cluster = None
    if address == "local":
        cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cluster)
    elif address == "inprocess":  # tests: threads in this process, no spawn cost
        cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=False, dashboard_address=None)
        client = Client(cluster)
    else:
        client = Client(address)
    try:
        client.register_plugin(_Init())
        workers = len(client.scheduler_info().get("workers", {})) or n_workers
        yield client.get_executor(pure=False), workers
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
