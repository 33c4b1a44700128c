"""Where Dask tasks run: dask's local schedulers, a LocalCluster, or an existing distributed cluster."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from mmearth_data.errors import MMEarthError

LOCAL_SCHEDULERS = ("threads", "sync", "synchronous", "processes")
REMOTE_PREFIXES = ("tcp://", "tls://", "ucx://", "inproc://")


@contextmanager
def distributed_client(scheduler: str, workers: int) -> Iterator:
    """A ``distributed.Client`` for ``local-cluster`` (one process per worker) or a ``tcp://`` address."""
    from distributed import Client, LocalCluster

    if scheduler == "local-cluster":
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cluster)
    elif scheduler.startswith(REMOTE_PREFIXES):
        cluster, client = None, Client(scheduler)
    else:
        raise MMEarthError(f"--scheduler {scheduler!r}: use auto, threads, processes, local-cluster or tcp://HOST:PORT")
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
