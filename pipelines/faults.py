"""Which source failures are worth retrying, and the retry loop (exponential backoff with full jitter).

Transient: HTTP 5xx and 429, timeouts, connection resets and truncated bodies. Permanent: no coverage, a missing
asset, a file that does not decode. A permanent failure is recorded once with its reason and never retried; a
transient one is retried and, when the attempts run out, recorded so that ``--resume`` tries it again.
"""
from __future__ import annotations

import errno
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from mmearth_data.errors import MMEarthError, disk_full
from mmearth_data.errors import redact as _redact  # the one redactor, shared with download

T = TypeVar("T")


class RunStopped(MMEarthError):
    """A failure that every request of the run would meet (revoked credentials, a project without access): the
    export stops with one line naming the remedy, and what is not done stays pending for ``--resume``; no tile is
    marked failed for it."""


class SourceError(Exception):
    """A failure reading a source; ``error_class`` is what the ledger records."""

    error_class = "error"
    transient = False


class TransientSourceError(SourceError):
    error_class = "transient"
    transient = True

    def __init__(self, message: str, becomes: type[SourceError] | None = None, retry_after_s: float | None = None):
        super().__init__(message)
        self.retry_after_s = retry_after_s   # the server's Retry-After, honoured by the retry loop
        #: what the failure is if it never goes away: a remote decode failure is a truncated body or a corrupt
        #: file; GDAL reports any failed remote open as "does not exist", a 503 as much as a real 404
        self.becomes = becomes


class NoCoverage(SourceError):
    """No item of the collection covers the tile in the time window (a fact about the world, not a fault)."""

    error_class = "no_coverage"


class NoSource(NoCoverage):
    """The backend has no source for a modality at all (e.g. Dynamic World on a STAC API): no-data, never zeros."""

    error_class = "no_source"


class CorruptSource(SourceError):
    error_class = "corrupt"


class MissingAsset(SourceError):
    error_class = "missing_asset"


class NotOrthorectified(SourceError):
    """A raster placed only by ground control points (e.g. a Sentinel-1 GRD slice): it has no pixel grid to warp
    from without a terrain model, and retrying cannot change that."""

    error_class = "gcps_only"


_TRANSIENT = re.compile(
    r"HTTP (response code:|Error) (5\d\d|429|408)|IncompleteRead|RemoteDisconnected|timed? ?out|Timeout|Connection (reset|refused)|transfer closed|"
    r"Recv failure|Send failure|Empty reply|partial file|Couldn't connect|curl error|Failure when receiving",
    re.IGNORECASE)
_MISSING = re.compile(r"HTTP (response code:|Error) (404|403|410)|No such file|does not exist", re.IGNORECASE)
_DECODE = re.compile(r"TIFFRead|IReadBlock|decompress|Read error|not recognized as|not a supported file|"
                     r"Cannot read|TIFFFetch|TIFFReadDirectory|Incompatible", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with the query string of every URL removed: SAS signatures (``sig=``, ``se=``) and tokens never
    reach the ledger, ``tile_info``, logs or error messages. The one redactor, shared with download and verify."""
    return _redact(text)


def redact_all(value):
    """``value`` (a record: dicts, lists, strings) with every string redacted: what ``export.json``, ``build.yaml``
    and identities hold of URLs never carries a signature or token (a resumed run is given its URLs again)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_all(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_all(v) for v in value)
    return value


_REDACTING = False


def install_log_redaction() -> None:
    """Redact signed URLs in every log record of this process (GDAL/rasterio and urllib3 log the URLs they
    open); installed once by the backends that sign URLs."""
    global _REDACTING
    if _REDACTING:
        return
    import logging

    make = logging.getLogRecordFactory()

    def factory(*args, **kwargs):
        record = make(*args, **kwargs)
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is the logging module's to report
            return record
        if "sig=" in text or "se=" in text or "token" in text:
            record.msg, record.args = redact(text), ()
        return record

    logging.setLogRecordFactory(factory)
    _REDACTING = True


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    from mmearth_data.remote import retry_after_s

    return retry_after_s(value)


def machine_fault(exc: BaseException) -> bool:
    """A failure of this machine, not of a source: a full disk or quota, no memory, no file descriptors, a
    read-only file system. Every tile would meet it, and recorded per modality it would stage no-data as final; so
    it is never classified: the run stops with it and what is unfinished stays pending for ``--resume``."""
    if isinstance(exc, MemoryError) or disk_full(exc) is not None:
        return True
    return isinstance(exc, OSError) and exc.errno in (errno.ENOMEM, errno.EMFILE, errno.ENFILE, errno.EROFS)


def stops_the_run(exc: BaseException) -> bool:
    """What no tile should be marked failed for: :class:`RunStopped` or a :func:`machine_fault`."""
    return isinstance(exc, RunStopped) or machine_fault(exc)


def classify(exc: BaseException, remote: bool) -> SourceError:
    """Map a library exception (rasterio/GDAL, urllib, OSError) to a :class:`SourceError`.

    A decode error on a remote file is treated as transient first: a truncated body looks exactly like a corrupt
    file until the same bytes fail again. The retry loop turns an exhausted one into :class:`CorruptSource`.
    """
    if isinstance(exc, SourceError):
        return exc
    msg = redact(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, (TimeoutError, ConnectionError)) or _TRANSIENT.search(msg):
        return TransientSourceError(msg)
    if _MISSING.search(msg):
        explicit = re.search(r"HTTP (response code:|Error) (404|403|410)", msg)
        return TransientSourceError(msg, becomes=MissingAsset) if remote and not explicit else MissingAsset(msg)
    if _DECODE.search(msg):
        return TransientSourceError(msg, becomes=CorruptSource) if remote else CorruptSource(msg)
    if remote and isinstance(exc, OSError):
        return TransientSourceError(msg)
    return CorruptSource(msg) if not remote else TransientSourceError(msg)


@dataclass
class RetryPolicy:
    attempts: int = 5           # tries in all, the first included
    base_s: float = 0.2         # first backoff ceiling; doubles each retry
    cap_s: float = 10.0
    retry_after_cap_s: float = 300.0   # the longest Retry-After honoured
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)

    def backoff(self, retry: int) -> float:
        return random.uniform(0.0, min(self.cap_s, self.base_s * 2 ** retry))


@dataclass
class Attempts:
    """Counts tries and retries of one unit of work (a tile x modality), thread-safe."""

    tries: int = 0
    retries: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, tries: int) -> None:
        with self.lock:
            self.tries += tries
            self.retries += max(0, tries - 1)


def with_retry(fn: Callable[[], T], policy: RetryPolicy, remote: bool, attempts: Attempts | None = None,
               on_retry: Callable[[], None] | None = None) -> T:
    """Call ``fn`` until it succeeds, a permanent error occurs, or ``policy.attempts`` tries are spent.

    ``on_retry`` runs before each retry (e.g. to drop a client-side cache that would replay the failure)."""
    last: SourceError | None = None
    tries = 0
    try:
        for n in range(policy.attempts):
            tries += 1
            try:
                return fn()
            except Exception as exc:  # noqa: BLE001 - classified below, bugs (TypeError etc.) re-raised
                if isinstance(exc, (TypeError, AttributeError, NameError, KeyError, IndexError, AssertionError,
                                    RunStopped)) or machine_fault(exc):
                    raise
                last = classify(exc, remote)
                if not last.transient:
                    raise last from exc
                if n + 1 < policy.attempts:
                    wait_s = policy.backoff(n)
                    if getattr(last, "retry_after_s", None) is not None:
                        wait_s = max(wait_s, min(last.retry_after_s, policy.retry_after_cap_s))
                    policy.sleep(wait_s)
                    if on_retry is not None:
                        on_retry()
        assert last is not None
        becomes = getattr(last, "becomes", None)
        if becomes is not None:
            raise becomes(f"still failing after {tries} tries: {last}") from last
        raise last
    finally:
        if attempts is not None:
            attempts.add(tries)
