"""Ranged reads for downloads: from an http(s) URL (urllib; redirects to another host only when allowed, never to
anything but http(s)) or a local file, bounded to what was asked; transient faults raised as :class:`Transient`."""
from __future__ import annotations

import os
import socket
import urllib.error
import urllib.parse
import urllib.request

from .errors import MMEarthError, redact

TRANSIENT_HTTP = {408, 425, 429, 500, 502, 503, 504}
MAX_RETRY_AFTER_S = 300.0
SKIP_BLOCK = 1 << 20            # bytes skipped at a time when a server ignores Range


class Transient(Exception):
    """A fault worth retrying; ``retry_after`` is the server's wish in seconds, if it said one."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects within the same scheme and host only, unless allowed; never to anything but http(s)."""

    def __init__(self, allow: bool):
        self.allow = allow

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        old, new = urllib.parse.urlsplit(req.full_url), urllib.parse.urlsplit(newurl)
        if new.scheme not in ("http", "https"):
            raise MMEarthError(f"{redact(req.full_url)}: redirects to {redact(newurl)!r}; only http(s) is ever "
                               "followed")
        if not self.allow and (new.scheme, new.netloc) != (old.scheme, old.netloc):
            raise MMEarthError(f"{redact(req.full_url)}: redirects to another host "
                               f"({redact(f'{new.scheme}://{new.netloc}')}); pass --allow-redirects to follow it")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def is_url(source: str) -> bool:
    return urllib.parse.urlsplit(source).scheme in ("http", "https")


def _retry_after(headers) -> float | None:
    from .remote import retry_after_s

    return retry_after_s(headers.get("Retry-After") if headers else None, MAX_RETRY_AFTER_S)


class Transport:
    """Ranged reads from an http(s) URL or a local file, one request per call."""

    def __init__(self, timeout: float = 60.0, allow_redirects: bool = False):
        self.timeout = timeout
        self.opener = urllib.request.build_opener(_Redirects(allow_redirects))

    def open(self, source: str, start: int = 0, end: int | None = None):
        """``(stream, total size or None)``: bytes ``start..end`` (inclusive; None: to the end)."""
        if not is_url(source):
            if urllib.parse.urlsplit(source).scheme not in ("", "file") or source.startswith("file:"):
                raise MMEarthError(f"{redact(source)}: only http(s) URLs and local paths can be fetched")
            try:
                fh = open(source, "rb")
            except OSError as e:
                raise MMEarthError(f"{source}: cannot be read ({e.strerror})") from None
            fh.seek(start)
            return _Bounded(fh, None if end is None else end - start + 1), os.fstat(fh.fileno()).st_size
        headers = {"User-Agent": "mmearth-data"}
        if start or end is not None:
            headers["Range"] = f"bytes={start}-{'' if end is None else end}"
        req = urllib.request.Request(source, headers=headers)
        try:
            resp = self.opener.open(req, timeout=self.timeout)
        except urllib.error.HTTPError as e:
            if e.code in TRANSIENT_HTTP:
                raise Transient(f"HTTP {e.code}", _retry_after(e.headers)) from None
            raise MMEarthError(f"{redact(source)}: HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
            reason = getattr(e, "reason", e)
            if isinstance(reason, MMEarthError):
                raise reason from None
            if isinstance(reason, socket.gaierror) and reason.errno == socket.EAI_NONAME:   # not a passing fault
                host = urllib.parse.urlsplit(source).hostname
                raise MMEarthError(f"{redact(source)}: host {host!r} not found ({reason.strerror}); check the "
                                   "URL") from None
            raise Transient(redact(f"{type(reason).__name__}: {reason}")) from None
        total = None
        if resp.status == 206:
            crange = resp.headers.get("Content-Range", "")
            total = int(crange.rsplit("/", 1)[1]) if "/" in crange and not crange.endswith("*") else None
            if not crange.startswith(f"bytes {start}-"):
                resp.close()
                raise Transient(f"answered range {crange!r} to a request from byte {start}")
        else:   # a 200: the whole file (a server that ignores Range): skip to ``start``
            length = resp.headers.get("Content-Length")
            total = int(length) if length is not None else None
            skip = _Bounded(resp, start)
            while skip.left and skip.read(SKIP_BLOCK):
                pass
            if skip.left:
                resp.close()
                raise Transient(f"truncated body before byte {start}")
        return _Bounded(resp, None if end is None else end - start + 1), total

    def size(self, source: str) -> int:
        stream, total = self.open(source, 0, 0)
        stream.close()
        if total is None:
            raise MMEarthError(f"{redact(source)}: the server does not say the file's size (no Content-Range)")
        return total


class _Bounded:
    """A stream that never yields more than ``limit`` bytes, whatever the server sends."""

    def __init__(self, raw, limit: int | None):
        self.raw, self.left = raw, limit

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes: what has arrived, gathered until ``n`` or the end (so a slow link still
        journals its progress block by block)."""
        if self.left is not None:
            n = min(n, self.left)
            if n <= 0:
                return b""
        read1 = getattr(self.raw, "read1", None)
        if read1 is None:
            data = self.raw.read(n)
        else:
            parts, got = [], 0
            while got < n:
                part = read1(n - got)
                if not part:
                    break
                parts.append(part)
                got += len(part)
            data = b"".join(parts)
        if self.left is not None:
            self.left -= len(data)
        return data

    def close(self) -> None:
        self.raw.close()
