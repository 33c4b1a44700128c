"""Earth Engine requests through the process's quota: one in-flight limit and rate (limiter.py) shared by every
thread, the ledger's retry policy, the requests counted per REST method, and Earth Engine's answers classified into
the run's fault classes (retried, permanent, or stopping the run)."""
from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import Any

from mmearth_data.errors import one_line

from ...faults import Attempts, RetryPolicy, RunStopped, SourceError, TransientSourceError, classify, redact, \
    retry_after, with_retry
from .limiter import AimdLimiter
from .session import HOW, RestError

TIMED_OUT = re.compile(r"Computation timed out", re.IGNORECASE)   # HTTP 400, often transient (geemap#1790)
OVER_MEMORY = re.compile(r"User memory limit exceeded", re.IGNORECASE)   # HTTP 400: the computation is too large


class EarthEngineError(SourceError):
    """Earth Engine refused the expression (an invalid argument, a missing asset): retrying cannot help."""

    error_class = "earth_engine"


def first_line(exc: BaseException) -> str:
    """An error's text for a one-line message: a RefreshError's first argument (its second is the token
    endpoint's whole answer), folded, redacted."""
    text = exc.args[0] if len(exc.args) > 1 and isinstance(exc.args[0], str) else exc
    return redact(one_line(text, 200)) or type(exc).__name__


def _is_refresh_error(exc: BaseException) -> bool:
    """google-auth's ``RefreshError`` (a revoked or expired refresh token), without importing google-auth."""
    return any(c.__name__ == "RefreshError" for c in type(exc).__mro__)


class Requests:
    """Sends requests for one executor: each through the limiter's slot and the retry policy, counted per method.

    Args:
        project: the Cloud project (named in the messages of refused credentials).
        limiter: this process's share of the project's quota.
        policy: the ledger's retry policy.
    """

    def __init__(self, project: str, limiter: AimdLimiter, policy: RetryPolicy):
        self.project, self.limiter, self.policy = project, limiter, policy
        self.by_method: dict[str, int] = {}   # requests sent, per REST method
        self._untaken: dict[str, int] = {}    # ... not yet taken into a partition's record (take)
        self._lock = threading.Lock()

    def call(self, fn: Callable[[], Any], attempts: Attempts | None, method: str = "value:compute",
             batch: bool = False) -> Any:
        """``fn()`` (one request) through the limiter and the retry policy (quota errors slow every thread).

        Args:
            fn: sends the request and returns its answer.
            attempts: counts the tries (the ledger's ``attempts``); None for requests of no tile.
            method: the REST method, for the counts.
            batch: the request holds many tiles' entries: a computation that timed out is split, not retried.

        Returns:
            ``fn``'s answer.

        Raises:
            TransientSourceError: still failing after the policy's tries.
            EarthEngineError: Earth Engine refused the request.
            RunStopped: the credentials no longer work.
        """
        def once():
            with self.limiter.slot():
                with self._lock:
                    self.by_method[method] = self.by_method.get(method, 0) + 1
                    self._untaken[method] = self._untaken.get(method, 0) + 1
                try:
                    out = fn()
                except Exception as e:  # noqa: BLE001 - classified: quota errors slow everyone down
                    raise self.classify(e, batch) from None
            self.limiter.success()
            return out

        return with_retry(once, self.policy, remote=True, attempts=attempts)

    def take(self) -> dict[str, int]:
        """The requests sent per method since the last call (each is recorded once, by the partition that commits
        next: the partitions of a process share one executor)."""
        with self._lock:
            out, self._untaken = self._untaken, {}
        return out

    def classify(self, exc: BaseException, batch: bool = False) -> BaseException:
        """The fault an error of a request is: credentials that no longer work stop the run (every request would
        fail alike); quota errors slow every thread down and are retried; 5xx, timeouts and "Computation timed
        out." (a 400 that often passes) are retried, but a batch that timed out is split instead (``batch``); any
        other answer of Earth Engine (an invalid expression, a missing asset, a computation over the memory limit)
        is permanent."""
        text = redact(f"{type(exc).__name__}: {exc}")
        status = exc.status if isinstance(exc, RestError) else None
        if status == 429 or self.limiter.is_overload(exc):
            self.limiter.overload()
            return TransientSourceError(text, retry_after_s=retry_after(getattr(exc, "retry_after", None)))
        if _is_refresh_error(exc):
            if getattr(exc, "retryable", False):
                return TransientSourceError(text)
            return RunStopped(f"Earth Engine: the credentials can no longer be refreshed ({first_line(exc)}); "
                              f"{HOW}, then run the same command again (an export goes on with --resume)")
        if status in (401, 403):   # 401: still refused after google-auth refreshed the token; 403: the project
            return RunStopped(f"Earth Engine refused this run's credentials (HTTP {status}: {first_line(exc)}); "
                              f"check that project {self.project} is registered for Earth Engine and that the "
                              f"credentials may use it ({HOW}), then run the same command again (an export goes "
                              "on with --resume)")
        if status is not None and TIMED_OUT.search(text):   # a batch is split (less to compute), a tile retried
            return EarthEngineError(text) if batch else TransientSourceError(text)
        if status is not None and int(status) >= 500:
            return TransientSourceError(text)
        if status is not None:
            return EarthEngineError(text)
        return classify(exc, remote=True)
