"""Where Dask tasks run (dask's local schedulers, a LocalCluster or an existing distributed cluster), the one
dispatch loop export and pack share, the watchdog that ends worker processes with their parent, and the lock that
keeps one run per output directory."""
from __future__ import annotations

import fcntl
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mmearth_data.errors import MMEarthError

LOCAL_SCHEDULERS = ("threads", "sync", "synchronous", "processes")
REMOTE_PREFIXES = ("tcp://", "tls://", "ucx://", "inproc://")
LOCK_NAME = ".mmearth-data.lock"


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


# -- one run per output directory ---------------------------------------------------------------------------------
_HELD: dict[str, list] = {}   # path -> [fd, depth]: the lock is re-entrant within this process (build -> pack)
_HELD_LOCK = threading.Lock()


def lock_holder(directory: str | os.PathLike) -> str:
    """Who holds (or last held) the lock: tasks on a remote cluster compare it with the run that started them and
    stop when a newer run has taken the directory over."""
    try:
        return (Path(directory) / LOCK_NAME).read_text().strip()
    except OSError:
        return ""


def _acquire(path: Path, command: str) -> int:
    """Lock ``path/LOCK_NAME``; retried when the file was unlinked by a releasing holder between our open and our
    lock (we would otherwise hold a lock on a file nobody else sees)."""
    lock = path / LOCK_NAME
    for _ in range(50):
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = lock_holder(path) or "another process"
            raise MMEarthError(f"{path}: in use by {holder}; wait for it to finish or stop it "
                               "(one run per output directory)") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"mmearth-data {command} (pid {os.getpid()}, "
                         f"run {uuid.uuid4().hex[:12]})\n".encode())
            return fd
        os.close(fd)
    raise MMEarthError(f"{path}: could not lock {lock}")


@contextmanager
def output_lock(directory: str | os.PathLike, command: str) -> Iterator[None]:
    """Hold an OS file lock on ``directory`` for the whole run. The kernel drops it when the holder dies, so a
    killed run never blocks ``--resume``; a live holder makes a second run fail with one line naming its PID."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    key = str(path.resolve())
    with _HELD_LOCK:
        if key in _HELD:
            _HELD[key][1] += 1
        else:
            fd = _acquire(path, command)
            _HELD[key] = [fd, 1]
    try:
        yield
    finally:
        with _HELD_LOCK:
            entry = _HELD[key]
            entry[1] -= 1
            if entry[1] == 0:
                del _HELD[key]
                (path / LOCK_NAME).unlink(missing_ok=True)   # still held: nobody can take it in between
                os.close(entry[0])
