"""Resumable, verified HTTP downloads (prebuilt releases, the full RESOLVE ecoregions).

A download goes to ``<dest>.partial``; an interrupted one resumes with a ``Range`` request where the server
allows it (and restarts where it does not). Transient faults (5xx, 429, timeouts, connection resets,
truncated bodies) are retried with exponential backoff and jitter; the file is renamed into place only when
complete (and, if a checksum is known, verified), and its SHA-256 is written beside it.
"""
from __future__ import annotations

import os
import random
import time
import urllib.error
import urllib.request
from pathlib import Path

from .errors import MMEarthError
from .io_utils import sha256_file

TRANSIENT_HTTP = {408, 425, 429, 500, 502, 503, 504}
CHUNK = 1 << 20


class _Transient(Exception):
    pass


def _fetch(url: str, part: Path, timeout: float, bar) -> None:
    """One attempt: append to ``part`` from where it ends; raise _Transient for retryable faults."""
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "mmearth-data", **({"Range": f"bytes={have}-"} if have else {})})
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to fetch: the partial file is already complete
            return
        if e.code in TRANSIENT_HTTP:
            retry_after = e.headers.get("Retry-After") if e.headers else None
            raise _Transient(f"HTTP {e.code}", float(retry_after) if retry_after and retry_after.isdigit() else None)
        raise MMEarthError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
        raise _Transient(str(getattr(e, "reason", e)), None) from None
    with resp:
        if have and resp.status != 206:  # server ignored the range: start over
            have = 0
        total = resp.headers.get("Content-Length")
        expected = have + int(total) if total is not None else None
        if bar is not None and expected is not None:
            bar.total, bar.n = expected, have
            bar.refresh()
        got = have
        try:
            with open(part, "ab" if have else "wb") as fh:
                while block := resp.read(CHUNK):
                    fh.write(block)
                    got += len(block)
                    if bar is not None:
                        bar.update(len(block))
        except (TimeoutError, ConnectionError, OSError) as e:
            raise _Transient(f"read failed after {got} bytes: {e}", None) from None
        if expected is not None and got < expected:
            raise _Transient(f"truncated body: {got} of {expected} bytes", None)


def download(url: str, dest: str | os.PathLike, *, sha256: str | None = None, retries: int = 6,
             timeout: float = 60.0, backoff: float = 1.0, progress: bool = False) -> str:
    """Download ``url`` to ``dest`` (resuming, retrying, verifying); returns the file's SHA-256."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".partial")
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(unit="B", unit_scale=True, desc=dest.name)
    try:
        for attempt in range(retries + 1):
            try:
                _fetch(url, part, timeout, bar)
                break
            except _Transient as e:
                if attempt == retries:
                    raise MMEarthError(f"{url}: gave up after {retries + 1} attempts ({e.args[0]}); "
                                       f"rerun to resume from {part.stat().st_size if part.exists() else 0} bytes") from None
                wait = e.args[1] if e.args[1] is not None else backoff * 2 ** attempt
                time.sleep(wait * (1 + 0.25 * random.random()))
    finally:
        if bar is not None:
            bar.close()
    digest = sha256_file(part)
    if sha256 and digest != sha256.lower():
        part.unlink()
        raise MMEarthError(f"{url}: checksum mismatch (got {digest}, expected {sha256}); the partial file was removed")
    os.replace(part, dest)
    Path(str(dest) + ".sha256").write_text(f"{digest}  {dest.name}\n")
    return digest
