"""Quota-aware concurrency for Earth Engine: one in-flight limit and one request rate per process, shared by every
thread, the in-flight limit adapted AIMD-style (halved on 429 / "Too many concurrent aggregations", +1 after as many
successes as the current limit). Earth Engine's quota is per project (by default 40 requests in flight and 100
requests per second, developers.google.com/earth-engine/guides/usage): a run of several processes divides it among
them (GeeExecutor's ``share``). "User memory limit exceeded" is not a quota: it belongs to the computation (the
executor splits the request or records the modality), and slowing every thread would not help it.
"""
from __future__ import annotations

import re
import threading
import time
from contextlib import contextmanager

OVERLOAD = re.compile(r"Too many concurrent aggregations|Too Many Requests|\b429\b|RESOURCE_EXHAUSTED|rate limit|"
                      r"Quota exceeded", re.IGNORECASE)


class AimdLimiter:
    def __init__(self, start: int = 40, floor: int = 1, rate_per_s: float | None = None,
                 clock=time.monotonic, sleep=time.sleep):
        self.limit = float(max(floor, start))
        self.cap = float(max(floor, start))
        self.floor = float(floor)
        self.rate_per_s = rate_per_s
        self.in_flight = 0
        self.history: list[tuple[float, int]] = [(0.0, int(self.limit))]   # (seconds since start, limit)
        self._clock, self._sleep = clock, sleep
        self._t0 = clock()
        self._next_slot = self._t0
        self._successes = 0
        self._cond = threading.Condition()

    @contextmanager
    def slot(self):
        """Hold one of the ``limit`` in-flight slots (and respect the rate) for one request."""
        with self._cond:
            while self.in_flight >= int(self.limit):
                self._cond.wait(0.5)
            self.in_flight += 1
            wait = 0.0
            if self.rate_per_s:
                now = self._clock()
                wait = max(0.0, self._next_slot - now)
                self._next_slot = max(now, self._next_slot) + 1.0 / self.rate_per_s
        if wait:
            self._sleep(wait)
        try:
            yield
        finally:
            with self._cond:
                self.in_flight -= 1
                self._cond.notify()   # one slot for one waiter: waking them all would wake 39 to sleep again

    def success(self) -> None:
        with self._cond:
            self._successes += 1
            if self._successes >= int(self.limit) and self.limit < self.cap:
                self._successes = 0
                self._set(self.limit + 1)

    def overload(self) -> None:
        with self._cond:
            self._successes = 0
            self._set(max(self.floor, self.limit / 2))

    def _set(self, value: float) -> None:
        if int(value) != int(self.limit):
            self.history.append((round(self._clock() - self._t0, 3), int(value)))
        self.limit = value
        self._cond.notify_all()

    @staticmethod
    def is_overload(exc: BaseException) -> bool:
        return bool(OVERLOAD.search(f"{type(exc).__name__}: {exc}"))

    def summary(self) -> dict:
        limits = [v for _, v in self.history]
        return {"start": limits[0], "now": int(self.limit), "min": min(limits), "changes": len(limits) - 1,
                "history": self.history[-50:]}
