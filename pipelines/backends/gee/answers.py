"""Answers prepared ahead of the tiles that use them: a bounded, thread-safe store keyed by query (or any hashable
key), with keys marked pending while the batched request that answers them is in flight, so that a tile waits for
that request instead of sending its own."""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

KEPT = 50_000   # answers kept: a tile uses its answers within moments of its batch's request


class Answers:
    """Prepared answers, oldest dropped first. An answer may be an exception: the tile that asks for it raises it."""

    def __init__(self, size: int = KEPT):
        self.size = size
        self._answers: OrderedDict[Any, Any] = OrderedDict()
        self.pending: dict[Any, threading.Event] = {}   # keys of a request in flight -> set once it is answered
        self._lock = threading.Lock()

    def remember(self, key: Any, value: Any) -> None:
        with self._lock:
            self._answers[key] = value
            self._answers.move_to_end(key)
            while len(self._answers) > self.size:
                self._answers.popitem(last=False)

    def recall(self, key: Any, wait: bool = True) -> Any:
        """The answer of ``key`` (None: not prepared); with ``wait``, one being prepared is waited for."""
        found = self._answers.get(key)   # one C call, atomic: no lock (read several times per tile by every thread)
        if found is None and wait:
            sent = self.pending.get(key)
            if sent is not None:
                sent.wait()
                found = self._answers.get(key)
        return found

    def in_background(self, keys: Iterable[Any], send: Callable[[], None], name: str) -> None:
        """Run ``send`` (which remembers the answers of ``keys``) on a thread of its own; until it returns, the keys
        are pending: a tile asking for one waits, instead of sending its own request."""
        keys = list(keys)
        sent = threading.Event()
        with self._lock:
            for k in keys:
                self.pending[k] = sent

        def run() -> None:
            try:
                send()
            finally:
                with self._lock:
                    for k in keys:
                        if self.pending.get(k) is sent:
                            del self.pending[k]
                sent.set()
        threading.Thread(target=run, name=name, daemon=True).start()
