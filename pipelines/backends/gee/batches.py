"""Tiles located in batches: an executor that declares ``capabilities.batch_size`` (Earth Engine) answers the
searches of a whole batch of tiles in one request (``prepare``); the export's tile threads wait on their batch."""
from __future__ import annotations

import logging
import threading
from contextlib import suppress

from ...faults import RunStopped, redact

log = logging.getLogger(__name__)
AHEAD = 2   # batches prepared ahead of the one being exported


class Batches:
    """Tiles cut into the executor's batches in the order they are exported: the first tile of a batch to start
    prepares the whole batch (one request for all their searches), the others wait for it; the next ``AHEAD``
    batches are prepared at the same time in the background (a batch's two requests are sequential: with one
    batch ahead, preparing would bound the tiles/s below what the pixels allow). A batch that fails is logged
    and left to each tile's own requests.

    The first batches are small and double up to the executor's ``batch_size`` (a slow start: 6, 12, 24, 48, 50 for 50):
    the first pixels are asked as soon as a few tiles are located, not once the searches of a whole batch are
    answered (two round trips over 50 tiles' queries); a partition of 1,000 tiles pays 3 more batches (up to 6 more
    value:compute requests) for it."""

    def __init__(self, executor, todo: list[int], context):
        self.executor, self.context = executor, context
        self.chunks = [todo[k:k + n] for k, n in slow_start(len(todo), executor.capabilities.batch_size)] \
            if executor else []
        self.of = {i: k for k, chunk in enumerate(self.chunks) for i in chunk}
        self.locks = [threading.Lock() for _ in self.chunks]
        self.done: set[int] = set()
        self.ahead: set[int] = set()
        self.stopped: RunStopped | None = None   # met by any batch: every tile would meet it
        self._lock = threading.Lock()

    def ensure(self, i: int) -> None:
        if self.stopped is not None:
            raise self.stopped
        k = self.of.get(i)
        if k is None:
            return
        with self._lock:
            start = [j for j in range(k + 1, min(k + 1 + AHEAD, len(self.chunks))) if j not in self.ahead]
            self.ahead.update(start)
        for j in start:   # daemon threads: they only fill the executor's memory, and die with the process
            threading.Thread(target=self._prepare_ahead, args=(j,), name="gee-prepare", daemon=True).start()
        self._prepare(k)

    def _prepare_ahead(self, k: int) -> None:
        """A batch prepared in the background: a stop is recorded (the tiles raise it), not printed."""
        with suppress(RunStopped):
            self._prepare(k)

    def _prepare(self, k: int) -> None:
        if k in self.done:
            return
        with self.locks[k]:
            if self.stopped is not None:
                raise self.stopped
            if k in self.done:
                return
            try:
                self.executor.prepare([self.context(j) for j in self.chunks[k]])
            except RunStopped as e:
                self.stopped = e
                raise
            except Exception as e:  # noqa: BLE001 - the tiles then ask on their own
                log.warning("preparing a batch of %d tiles failed (%s); they are fetched one by one",
                            len(self.chunks[k]), redact(str(e))[:200])
            self.done.add(k)


def slow_start(n: int, size: int) -> list[tuple[int, int]]:
    """(start, length) of the batches of ``n`` tiles: from ``size // 8`` doubling up to ``size``."""
    out, k, step = [], 0, min(size, max(1, size // 8))
    while k < n:
        out.append((k, step))
        k, step = k + step, min(2 * step, size)
    return out
