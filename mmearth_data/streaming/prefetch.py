"""Read-ahead of a sampler's next samples into the chunk cache, from the main process."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor


class Prefetch:
    """An iterable of sample indices that warms the chunk cache ``ahead`` indices in front of its consumer (a
    DataLoader's sampler: it runs in the main process, the workers read from the shared cache). A read-ahead that
    fails is only a miss: the worker reads the sample itself and reports what is wrong."""

    def __init__(self, order, warm, ahead: int, threads: int):
        self.order, self.warm, self.ahead, self.threads = order, warm, max(1, int(ahead)), max(1, int(threads))

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self):
        from collections import deque

        def quietly(i: int) -> None:
            try:
                self.warm(i)
            except Exception:  # noqa: BLE001 - the worker's own read reports it
                pass

        pending: deque = deque()
        with ThreadPoolExecutor(self.threads, thread_name_prefix="mmearth-prefetch") as pool:
            source = iter(self.order)
            for i in source:
                pending.append(int(i))
                if len(pending) > self.ahead:
                    break
            warmed = [pool.submit(quietly, i) for i in list(pending)[1:]]
            while pending:
                yield pending.popleft()
                nxt = next(source, None)
                if nxt is not None:
                    pending.append(int(nxt))
                    warmed.append(pool.submit(quietly, int(nxt)))
                warmed = [f for f in warmed if not f.done()]
            for f in warmed:
                f.cancel()
