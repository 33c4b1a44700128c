"""Where Dask tasks run (dask's local schedulers, a LocalCluster or an existing distributed cluster), the one
dispatch loop export and pack share, and the watchdog that ends worker processes with their parent (the lock that
keeps one run per output directory is ``mmearth_data.locking``, shared with shard and download)."""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from mmearth_data.errors import MMEarthError
from mmearth_data.locking import LOCK_NAME, lock_holder, output_lock  # noqa: F401 - re-exported

LOCAL_SCHEDULERS = ("threads", "sync", "synchronous", "processes")
REMOTE_PREFIXES = ("tcp://", "tls://", "ucx://", "inproc://")


# -- workers die with their parent ------------------------------------------------------------------------------
def watch_parent(pid: int, interval_s: float = 0.5) -> None:
    """In a worker process: exit at once when process ``pid`` (the run that started it) is gone, so a SIGKILLed
    run leaves no worker writing into its output. A parent-death signal would not reach a grandchild (Dask's
    nanny -> worker), and polling works on every platform."""
    if pid == os.getpid() or getattr(watch_parent, "_started", None) == pid:
        return

    def loop() -> None:
        while True:
            time.sleep(interval_s)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os._exit(70)
            except PermissionError:  # alive, someone else's
                pass

    watch_parent._started = pid  # type: ignore[attr-defined]
    threading.Thread(target=loop, name="mmearth-watch-parent", daemon=True).start()


@contextmanager
def distributed_client(scheduler: str, workers: int) -> Iterator:
    """A ``distributed.Client`` for ``local-cluster`` (one process per worker, ended with this process) or a
    ``tcp://`` address (an existing cluster, whose workers are not ours to end)."""
    from distributed import Client, LocalCluster

    if scheduler == "local-cluster":
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cluster)
        client.run(watch_parent, os.getpid(), nanny=True)
        client.run(watch_parent, os.getpid())
    elif scheduler.startswith(REMOTE_PREFIXES):
        cluster, client = None, Client(scheduler, timeout=30)
    else:
        raise MMEarthError(f"--scheduler {scheduler!r}: use auto, threads, processes, local-cluster or tcp://HOST:PORT")
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def worker_processes(scheduler: str, workers: int, tasks: int) -> int:
    """How many processes run tasks at once: a per-project quota (Earth Engine's) is divided among them. Threads
    share one process; a ``tcp://`` cluster is asked how many workers it has now (workers that join later are not
    counted: start them before the run)."""
    if scheduler in ("threads", "sync", "synchronous"):
        return 1
    if scheduler.startswith("tcp://"):
        from distributed import Client

        with Client(scheduler, timeout=30) as client:
            return max(1, min(tasks, len(client.scheduler_info().get("workers", {}))))
    return max(1, min(tasks, workers))


def dispatch(fn: Callable[..., Any], arg_lists: Sequence[Sequence[Any]], scheduler: str, workers: int,
             on_result: Callable[[Any], None] | None = None) -> list[Any]:
    """Run ``fn(*args)`` for every entry of ``arg_lists`` on the chosen scheduler; returns the results (in
    completion order for distributed). Tasks must be idempotent: distributed reruns a task whose worker died."""
    import dask

    on_result = on_result or (lambda r: None)
    if scheduler in LOCAL_SCHEDULERS:
        from dask.callbacks import Callback

        class Tick(Callback):
            def _posttask(self, key, result, dsk, state, id):  # noqa: A002 - dask's signature
                on_result(result)

        tasks = [dask.delayed(fn, pure=False)(*args) for args in arg_lists]
        kwargs: dict[str, Any] = {"scheduler": scheduler, "num_workers": workers}
        pool = None
        if scheduler == "processes":
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=watch_parent, initargs=(os.getpid(),))
            kwargs["pool"] = pool
        try:
            with Tick():
                return list(dask.compute(*tasks, **kwargs))
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
    from distributed import as_completed

    with distributed_client(scheduler, workers) as client:
        futures = [client.submit(fn, *args, pure=False, retries=2) for args in arg_lists]
        out = []
        for fut in as_completed(futures):
            r = fut.result()
            on_result(r)
            out.append(r)
        return out
