"""The one exception type for problems a user can cause and fix (bad paths, bad arguments, broken files)."""
from __future__ import annotations

import errno
import re


class MMEarthError(Exception):
    """A user-facing error: the message names the input and what is wrong; the CLI prints it on one line."""


def disk_full(exc: BaseException | None) -> str | None:
    """What a full disk (or quota) stopped writing, if that is what ``exc`` (or an exception it came from) is:
    ENOSPC/EDQUOT, or GDAL's, HDF5's and SQLite's texts for them. Else None."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = str(exc)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return str(exc.filename or "the output")
        if "No space left on device" in text or "database or disk is full" in text or "Disk quota exceeded" in text:
            return getattr(exc, "filename", None) or "the output"
        exc = exc.__cause__ or exc.__context__
    return None


def one_line(text: object, limit: int = 300) -> str:
    """``text`` (an exception, a server's message) on one line: whitespace folded, at most ``limit`` characters."""
    return " ".join(str(text).split())[:limit]


_QUERY = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^\s'\"?]+)\?[^\s'\"]*")
_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^\s/@:'\"]+):[^\s/@'\"]+@")


def redact(text: object) -> str:
    """``text`` with the query of every URL in it replaced by ``?<redacted>`` and a password in a URL by
    ``<redacted>``: SAS signatures (``sig=``), tokens and subscription keys ride in queries, and messages, logs and
    records get shared. Idempotent; a text without ``://`` comes back unchanged."""
    text = str(text)
    if "://" not in text:
        return text
    return _PASSWORD.sub(r"\1:<redacted>@", _QUERY.sub(r"\1?<redacted>", text))
