"""Ranged reads of remote files: ``https://``, and public ``s3://`` / ``gs://`` objects over their HTTPS endpoints.

One connection pool per process (a DataLoader worker makes its own on first use; nothing open is pickled),
timeouts, and retries with jittered exponential backoff on 429/5xx, resets and short bodies, honouring
``Retry-After``. A read that keeps failing is one line naming the URL (its query redacted: it may hold a
signature). ``RemoteFile`` gives h5py a seekable file over such a URL, with a small block cache, so HDF5's
metadata is read in a few ranged requests.
"""
from __future__ import annotations

import io
import os
import random
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from urllib.parse import quote, urlparse

from .errors import MMEarthError, one_line, redact

SCHEMES = ("http", "https", "s3", "gs")
RETRY_STATUS = {408, 429, 500, 502, 503, 504}


def is_remote(path: object) -> bool:
    return isinstance(path, str) and urlparse(path).scheme in SCHEMES


def http_url(url: str) -> str:
    """The HTTPS URL a public object is read at: ``s3://b/k`` on AWS (or ``AWS_S3_ENDPOINT``, GDAL's variable,
    path-style; ``AWS_HTTPS=NO`` for http), ``gs://b/k`` on storage.googleapis.com (or ``STORAGE_EMULATOR_HOST``,
    the Google Cloud clients' variable: a scheme and host); http(s) as given. Any other
    scheme (``file:``, none) is refused: a remote document never makes us read elsewhere."""
    u = urlparse(url)
    if u.scheme in ("http", "https"):
        return url
    if u.scheme not in ("s3", "gs") or not u.netloc:
        raise MMEarthError(f"{redact(url)}: not an http(s), s3:// or gs:// URL of an object")
    bucket, key = u.netloc, quote(u.path.lstrip("/"), safe="/~")
    if u.scheme == "gs":
        host = os.environ.get("STORAGE_EMULATOR_HOST", "").rstrip("/")
        if host and "://" not in host:
            host = f"http://{host}"
        return f"{host or 'https://storage.googleapis.com'}/{bucket}/{key}"
    endpoint = os.environ.get("AWS_S3_ENDPOINT")
    if endpoint:
        https = os.environ.get("AWS_HTTPS", "YES").upper() not in ("NO", "FALSE", "0")
        return f"{'https' if https else 'http'}://{endpoint.split('://', 1)[-1].rstrip('/')}/{bucket}/{key}"
    return f"https://s3.amazonaws.com/{bucket}/{key}" if "." in bucket else f"https://{bucket}.s3.amazonaws.com/{key}"


@dataclass(frozen=True)
class Stat:
    size: int
    version: str   # ETag or Last-Modified: a changed file gets a new chunk index and new cache keys


class Client:
    """Ranged GETs with retries; safe to share between threads, made anew in each process."""

    def __init__(self, timeout_s: float = 30.0, attempts: int = 6, backoff_s: float = 0.5, connections: int = 32):
        self.timeout_s, self.attempts, self.backoff_s, self.connections = timeout_s, attempts, backoff_s, connections
        self._pool = None
        self._pid = None
        self._lock = threading.Lock()
        self.requests = 0   # sent by this process (retries included)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pool": None, "_pid": None, "_lock": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _lock=threading.Lock())

    def pool(self):
        if self._pool is None or self._pid != os.getpid():
            import urllib3

            with self._lock:   # redirects followed (a CDN, S3's region redirects); every other retry is ours
                retries = urllib3.Retry(total=None, connect=0, read=0, status=0, other=0, redirect=5,
                                        raise_on_redirect=True, raise_on_status=False)
                self._pool = urllib3.PoolManager(maxsize=self.connections, block=False, retries=retries,
                                                 timeout=urllib3.Timeout(connect=self.timeout_s, read=self.timeout_s))
                self._pid = os.getpid()
        return self._pool

    def _request(self, method: str, url: str, headers: dict, what: str, expect: int | None = None,
                 limit: int = 1 << 20) -> tuple[object, bytes]:
        """(response, body) of the first answer that is not a retryable failure; the body is read up to
        ``expect`` bytes, or ``limit`` + 1 (a server never makes us hold more than we asked for)."""
        last = ""
        target = http_url(url)
        for attempt in range(self.attempts):
            wait = None
            try:
                self.requests += 1
                r = self.pool().request(method, target, headers=headers, preload_content=False, redirect=True)
                try:
                    r.data_read = r.read((expect if expect is not None else limit) + 1)
                finally:
                    r.release_conn()
                if r.status in RETRY_STATUS:
                    last = f"HTTP {r.status}"
                    wait = retry_after_s(r.headers.get("Retry-After"), 120.0)
                elif r.status >= 400:
                    raise MMEarthError(f"{redact(url)}: HTTP {r.status} {what}")
                elif r.status == 200 and "Range" in headers:
                    raise MMEarthError(f"{redact(url)}: the server does not answer byte ranges (HTTP 200 to a "
                                       "Range request)")
                elif expect is not None and len(r.data_read) != expect:
                    last = f"{len(r.data_read)} of {expect} bytes"   # a cut connection: ask again
                else:
                    return r, r.data_read
            except MMEarthError:
                raise
            except Exception as e:  # noqa: BLE001 - resets, timeouts, protocol errors: transient
                last = one_line(e, 160)
            if attempt + 1 < self.attempts:
                time.sleep(wait if wait is not None else self.backoff_s * 2 ** attempt * (0.5 + random.random()))
        raise MMEarthError(f"{redact(url)}: {what} failed {self.attempts} times (last: {redact(last)})")

    def get(self, url: str, start: int, stop: int) -> bytes:
        """Bytes ``[start, stop)`` of ``url``."""
        return self._request("GET", url, {"Range": f"bytes={start}-{stop - 1}"},
                             f"reading bytes {start}..{stop - 1}", expect=stop - start)[1]

    def get_all(self, url: str, limit: int) -> bytes:
        """A whole small file (a JSON side file), at most ``limit`` bytes."""
        _, data = self._request("GET", url, {}, "reading it", limit=limit)
        if len(data) > limit:
            raise MMEarthError(f"{redact(url)}: larger than {limit >> 20} MiB")
        return data

    def stat(self, url: str) -> Stat:
        r, _ = self._request("GET", url, {"Range": "bytes=0-0"}, "asking its size", limit=1)
        total = (r.headers.get("Content-Range") or "").rpartition("/")[2]
        size = int(total) if total.isdigit() else -1
        if size < 0:
            raise MMEarthError(f"{redact(url)}: the server gives no size (no Content-Range)")
        return Stat(size, r.headers.get("ETag") or r.headers.get("Last-Modified") or "")


def retry_after_s(value: str | None, cap: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date; RFC 9110 §10.2.3), at most
    ``cap``; None when absent or unreadable. The one parser of every client here."""
    if not value:
        return None
    try:
        s = max(0.0, float(value))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            s = max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None
    return s if cap is None else min(s, cap)


class RemoteFile(io.RawIOBase):
    """A read-only, seekable view of a remote file for h5py: reads go through a cache of ``block`` sized blocks
    (HDF5 reads its superblock, object headers and B-trees in many small pieces)."""

    def __init__(self, url: str, client: Client, size: int, block: int = 1 << 16, blocks: int = 256):
        self.url, self.client, self.size, self.block, self.blocks = url, client, size, block, blocks
        self.pos = 0
        self._cache: OrderedDict[int, bytes] = OrderedDict()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.pos = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence] + offset
        return self.pos

    def _block(self, k: int) -> bytes:
        data = self._cache.pop(k, None)
        if data is None:
            data = self.client.get(self.url, k * self.block, min(self.size, (k + 1) * self.block))
        self._cache[k] = data
        while len(self._cache) > self.blocks:
            self._cache.popitem(last=False)
        return data

    def readinto(self, buffer) -> int:
        n = min(len(buffer), max(0, self.size - self.pos))
        view, done = memoryview(buffer), 0
        while done < n:
            k, off = divmod(self.pos + done, self.block)
            data = self._block(k)[off:off + n - done]
            view[done:done + len(data)] = data
            done += len(data)
        self.pos += n
        return n
