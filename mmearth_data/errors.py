"""The one exception type for problems a user can cause and fix (bad paths, bad arguments, broken files)."""
from __future__ import annotations

import errno
import re
from collections.abc import Iterator


class MMEarthError(Exception):
    """A user-facing error: the message names the input and what is wrong; the CLI prints it on one line."""


def exception_chain(exc: BaseException | None) -> Iterator[BaseException]:
    """``exc`` and the exceptions it came from (its cause, else its context), each once."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def disk_full(exc: BaseException | None) -> str | None:
    """What a full disk (or quota) stopped writing, if that is what ``exc`` (or an exception it came from) is:
    ENOSPC/EDQUOT, or GDAL's, HDF5's and SQLite's texts for them. Else None."""
    for e in exception_chain(exc):
        text = str(e)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return str(e.filename or "the output")
        if "No space left on device" in text or "database or disk is full" in text or "Disk quota exceeded" in text:
            return getattr(e, "filename", None) or "the output"
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
