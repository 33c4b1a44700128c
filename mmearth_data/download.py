"""Resumable, verified, parallel HTTP downloads (prebuilt releases, the official MMEarth files, the RESOLVE
ecoregions).

Every file is cut into pieces fetched with ranged GETs over ``connections`` connections at once (pieces of
several files interleave, so many small shards and one 600 GB file both keep every connection busy). Bytes go
straight to their offset in ``.<name>.partial``; after each block is written, a 12-byte record (piece, end) is
appended to ``.<name>.partial.journal``, so a run killed at any instant resumes every piece where its written
bytes end and never fetches them again. A finished file is checked against its declared size and SHA-256 and only
then renamed to its final name; one that fails is fetched again from scratch, never left under its final name.

Transient faults (5xx, 429, timeouts, resets, truncated bodies) are retried per piece with exponential backoff
and jitter, honouring ``Retry-After``. Redirects to another scheme or host are refused unless allowed, ``file://``
is never followed, and a server that sends more than was asked for, or a file of another size than declared, is
an error.

Every URL in a message is redacted (:func:`~mmearth_data.errors.redact`): its query may carry a signature. A link,
device or directory planted at a name we write (``.<name>.partial``, its journal, the final name) is refused, never
written through. One Ctrl-C stops the transfers at once (the workers are daemon threads told to stop; none is
waited for longer than ``STOP_GRACE_S``); what was written stays journalled for the next run.
"""
from __future__ import annotations

import errno
import hashlib
import os
import queue
import random
import shutil
import socket
import stat
import struct
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .errors import MMEarthError, redact
from .io_utils import atomic_write_bytes, open_nofollow, partial_path, sha256_file

TRANSIENT_HTTP = {408, 425, 429, 500, 502, 503, 504}
BLOCK = 1 << 20                 # bytes read and journalled at a time
PIECE = 32 << 20                # bytes per ranged GET
RECORD = struct.Struct("<IQ")   # (piece, end offset); piece HEADER carries the key of what is being fetched
HEADER = 0xFFFFFFFF
MAX_RETRY_AFTER_S = 300.0
STOP_GRACE_S = 0.5              # after a stop, how long the connections still get to finish a block
NO_SPACE = {errno.ENOSPC, errno.EDQUOT}


@contextmanager
def disk_full_is_one_line(path: str | os.PathLike) -> Iterator[None]:
    """A full disk while writing under ``path`` becomes one line saying where and that a rerun resumes."""
    try:
        yield
    except OSError as e:
        if e.errno not in NO_SPACE and "No space left on device" not in str(e):
            raise
        raise MMEarthError(f"{e.filename or path}: No space left on device; free space there, then run the same "
                           "command again: it resumes where it stopped") from None


def check_target(dest: Path) -> None:
    """The final name may be absent or a regular file (replaced); never a link, directory or device planted there."""
    try:
        st = os.lstat(dest)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(st.st_mode):
        what = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a regular file"
        raise MMEarthError(f"{dest}: is {what}; refusing to replace it with a download (remove it)")


def _ours(path: Path) -> bool:
    """Whether ``path`` (a partial file or journal) exists; a link, hard link or anything but a plain file there
    was planted, and is refused."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(st.st_mode):
        raise MMEarthError(f"{path}: is a symbolic link; refusing to write through it (remove it)")
    if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
        what = "not a regular file" if not stat.S_ISREG(st.st_mode) else "a hard link to another file"
        raise MMEarthError(f"{path}: is {what}; refusing to use it (remove it)")
    return True


class Transient(Exception):
    """A fault worth retrying; ``retry_after`` is the server's wish in seconds, if it said one."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class Job:
    """One file to fetch: ``source`` is an http(s) URL or a local path."""

    source: str
    dest: Path
    size: int | None = None
    sha256: str | None = None
    label: str = ""

    @property
    def name(self) -> str:
        return self.label or self.dest.name


@dataclass
class Report:
    files: int = 0
    fetched_bytes: int = 0
    reused_bytes: int = 0
    seconds: float = 0.0
    retries: Counter = field(default_factory=Counter)
    refetched: list[str] = field(default_factory=list)
    sha256: dict[str, str] = field(default_factory=dict)

    def line(self) -> str:
        rate = self.fetched_bytes / max(self.seconds, 1e-9) / 1e6
        retried = sum(self.retries.values())
        return (f"{self.files} file(s): fetched {self.fetched_bytes / 1e6:.1f} MB in {self.seconds:.1f} s "
                f"({rate:.1f} MB/s), {self.reused_bytes / 1e6:.1f} MB already here; {retried} retried request(s)"
                + (f" ({', '.join(f'{k} {v}' for k, v in sorted(self.retries.items()))})" if retried else "")
                + (f"; fetched again after a checksum mismatch: {', '.join(self.refetched)}" if self.refetched else "")
                + "; every file verified")


# -- transport -----------------------------------------------------------------------------------------------------
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
            while skip.left and skip.read(BLOCK):
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


# -- one file's progress ------------------------------------------------------------------------------------------
class Partial:
    """``.<name>.partial`` plus its journal: which bytes of each piece are written."""

    def __init__(self, job: Job, size: int, piece: int):
        self.job, self.size, self.piece = job, size, piece
        self.path = partial_path(job.dest)
        self.journal_path = self.path.with_name(self.path.name + ".journal")
        self.n_pieces = max(1, -(-size // piece))
        # the redacted source: a resumed run with a fresh signature in the query keeps the bytes already written
        key = hashlib.sha256(f"{redact(job.source)}|{size}|{job.sha256}|{piece}".encode()).digest()[:8]
        self.key = int.from_bytes(key, "little")
        self.ends = [self.bounds(k)[0] for k in range(self.n_pieces)]
        self._lock = threading.Lock()
        self._journal = None
        self._shut = False
        self._load()

    def bounds(self, k: int) -> tuple[int, int]:
        return k * self.piece, min(self.size, (k + 1) * self.piece)

    def _load(self) -> None:
        records = []
        have_partial, have_journal = _ours(self.path), _ours(self.journal_path)   # refuses what was planted
        if have_partial and have_journal:
            with os.fdopen(open_nofollow(self.journal_path, os.O_RDONLY), "rb") as fh:
                raw = fh.read()
            raw = raw[:len(raw) // RECORD.size * RECORD.size]   # a record torn by a kill is ignored
            records = [RECORD.unpack_from(raw, i) for i in range(0, len(raw), RECORD.size)]
        if not records or records[0] != (HEADER, self.key) or self.path.stat().st_size != self.size:
            self.reset()
            return
        for k, end in records[1:]:
            if k < self.n_pieces and self.bounds(k)[0] <= end <= self.bounds(k)[1]:
                self.ends[k] = max(self.ends[k], end)

    def reset(self) -> None:
        """Start the file over (new, changed upstream, or failed its checksum): both files are created anew
        (``O_EXCL``), so nothing planted under their names is ever written through."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for p in (self.path, self.journal_path):
            if _ours(p):
                p.unlink()
        create = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        with os.fdopen(open_nofollow(self.path, create), "wb") as fh:
            fh.truncate(self.size)   # sparse: pieces land at their offsets
        with os.fdopen(open_nofollow(self.journal_path, create), "wb") as fh:
            fh.write(RECORD.pack(HEADER, self.key))
        self.ends = [self.bounds(k)[0] for k in range(self.n_pieces)]

    @property
    def done_bytes(self) -> int:
        return sum(e - self.bounds(k)[0] for k, e in enumerate(self.ends))

    def missing(self) -> list[int]:
        return [k for k in range(self.n_pieces) if self.ends[k] < self.bounds(k)[1]]

    def record(self, k: int, end: int) -> None:
        """Called after the bytes up to ``end`` of piece ``k`` are written (never before)."""
        with self._lock:
            if self._shut:   # a connection still running after the fetch stopped: its bytes are not recorded
                raise MMEarthError("stopped")
            self.ends[k] = end
            if self._journal is None:   # opened on first use: a release of thousands of files keeps few open
                self._journal = os.fdopen(open_nofollow(self.journal_path, os.O_WRONLY | os.O_APPEND), "ab")
            self._journal.write(RECORD.pack(k, end))
            self._journal.flush()

    def close(self) -> None:
        with self._lock:
            if self._journal is not None:
                self._journal.close()
                self._journal = None

    def shut(self) -> None:
        """Close for good: the fetch is over (or stopped); a straggling connection can no longer journal."""
        with self._lock:
            self._shut = True
        self.close()

    def discard(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)
        self.journal_path.unlink(missing_ok=True)


# -- the fetcher ----------------------------------------------------------------------------------------------------
class Fetcher:
    """Fetch :class:`Job` s over ``connections`` parallel ranged requests; see the module docstring."""

    def __init__(self, connections: int = 8, *, retries: int = 8, backoff: float = 1.0, timeout: float = 60.0,
                 allow_redirects: bool = False, progress: bool = False, piece: int = PIECE,
                 checksum_attempts: int = 3):
        if connections < 1:
            raise MMEarthError(f"--connections {connections}: must be at least 1")
        self.connections, self.retries, self.backoff = connections, retries, backoff
        self.transport = Transport(timeout, allow_redirects)
        self.progress, self.piece, self.checksum_attempts = progress, piece, checksum_attempts
        self._stop = threading.Event()

    def sizes(self, jobs: Sequence[Job]) -> None:
        """Fill in unknown sizes (one ranged request each)."""
        for job in jobs:
            if job.size is None:
                job.size = self.retrying(lambda: self.transport.size(job.source), redact(job.source), Counter())

    def check_space(self, jobs: Sequence[Job], root: Path) -> None:
        need = sum(j.size or 0 for j in jobs if not j.dest.is_file())
        free = shutil.disk_usage(next(p for p in [root, *root.parents] if p.exists())).free
        if need > free:
            raise MMEarthError(f"{root}: needs {need / 1e9:.1f} GB free for this download, has {free / 1e9:.1f} GB; "
                               "free space or choose fewer --modalities/--shards")

    def fetch(self, jobs: Sequence[Job], on_done: Callable[[Job, str], None] | None = None) -> Report:
        """Fetch every job not already under its final name; ``on_done(job, sha256)`` after each is verified and
        renamed. Raises MMEarthError on the first permanent failure (what is written stays for a resume)."""
        report = Report(files=len(jobs))
        t0 = time.perf_counter()
        for job in jobs:
            check_target(job.dest)
        self.sizes(jobs)
        partials = []
        for j in jobs:
            with disk_full_is_one_line(partial_path(j.dest)):
                partials.append(Partial(j, j.size, self.piece))
        report.reused_bytes = sum(p.done_bytes for p in partials)
        todo = sum(p.size for p in partials) - report.reused_bytes
        from tqdm import tqdm

        bar = tqdm(total=todo, unit="B", unit_scale=True, unit_divisor=1024, desc="download", disable=not self.progress)
        lock = threading.Lock()
        remaining = {id(p): len(p.missing()) for p in partials}
        attempts: Counter = Counter()

        def work(p: Partial, k: int | None) -> list[tuple[Partial, int]]:
            """Piece ``k`` of ``p`` (None: nothing left to fetch); the last piece of a file verifies it. Returns
            the pieces to fetch again (all of them, after a checksum mismatch)."""
            with disk_full_is_one_line(p.path):
                if k is not None:
                    n = self._piece(p, k, bar, report)
                    with lock:
                        report.fetched_bytes += n
                        remaining[id(p)] -= 1
                        if remaining[id(p)]:
                            return []
                sha = self._finish(p, report, attempts)
                if sha is None:
                    with lock:
                        remaining[id(p)] = p.n_pieces
                        bar.total += p.size
                    return [(p, j) for j in range(p.n_pieces)]
                if on_done:
                    on_done(p.job, sha)
                return []

        try:
            self._run(work, [(p, k) for p in partials for k in (p.missing() or [None])])
        finally:
            bar.close()
            for p in partials:
                p.shut()
        report.seconds = time.perf_counter() - t0
        return report

    def _run(self, work: Callable[..., list], tasks: list[tuple]) -> None:
        """Run ``work(*task)`` over ``connections`` daemon threads until no task is left (``work`` returns new
        ones); the first error stops them all and is raised here. An interrupt (or error) sets the stop flag and
        waits for the connections at most ``STOP_GRACE_S``: one stuck in a slow server's reply is left behind
        (a daemon thread, it cannot write or journal after the stop), instead of being waited for."""
        todo: queue.SimpleQueue = queue.SimpleQueue()
        results: queue.SimpleQueue = queue.SimpleQueue()
        for task in tasks:
            todo.put(task)

        def loop() -> None:
            while (task := todo.get()) is not None and not self._stop.is_set():
                try:
                    results.put((work(*task), None))
                except BaseException as e:  # noqa: BLE001 - handed to the main thread, which raises it
                    results.put(([], e))

        threads = [threading.Thread(target=loop, name=f"mmearth-download-{i}", daemon=True)
                   for i in range(min(self.connections, len(tasks)))]
        for t in threads:
            t.start()
        outstanding = len(tasks)
        try:
            while outstanding:
                more, error = results.get()   # interruptible: Ctrl-C lands here
                outstanding -= 1
                if error is not None:
                    raise error
                for task in more:
                    todo.put(task)
                    outstanding += 1
        except BaseException:
            self._stop.set()   # the connections stop at their next block or retry; what they wrote stays journalled
            raise
        finally:
            for _ in threads:
                todo.put(None)
            deadline = time.monotonic() + STOP_GRACE_S
            for t in threads:
                t.join(max(0.0, deadline - time.monotonic()) if self._stop.is_set() else None)

    def _piece(self, p: Partial, k: int, bar, report: Report) -> int:
        """Fetch the rest of piece ``k``; returns the bytes fetched. Retries transient faults from where the
        written bytes end."""
        got = 0

        def attempt() -> None:
            nonlocal got
            start, stop = p.ends[k], p.bounds(k)[1]
            if start >= stop:
                return
            if self._stop.is_set():
                raise MMEarthError("stopped")
            stream, total = self.transport.open(p.job.source, start, stop - 1)
            try:
                if total is not None and total != p.size:
                    raise MMEarthError(f"{redact(p.job.source)}: the server has {total} bytes, the manifest "
                                       f"declares {p.size}; refusing to write it")
                with os.fdopen(open_nofollow(p.path, os.O_RDWR), "r+b") as fh:
                    fh.seek(start)
                    pos = start
                    while pos < stop:
                        if self._stop.is_set():
                            raise MMEarthError("stopped")
                        try:
                            block = stream.read(min(BLOCK, stop - pos))   # BLOCK read at call time: tunable
                        except (TimeoutError, ConnectionError, OSError) as e:
                            raise Transient(f"read failed after {pos - start} bytes: {e}") from None
                        if not block:
                            raise Transient(f"truncated body: {pos - start} of {stop - start} bytes")
                        if self._stop.is_set():   # the read may have outlasted the stop: write nothing more
                            raise MMEarthError("stopped")
                        fh.write(block)
                        fh.flush()
                        pos += len(block)
                        got += len(block)
                        p.record(k, pos)
                        bar.update(len(block))
            finally:
                stream.close()

        self.retrying(attempt, redact(p.job.source), report.retries)
        return got

    def retrying(self, fn, what: str, retries: Counter, attempts: int | None = None):
        """``fn()``, again after each Transient fault with backoff, ``attempts`` times at most (default: 1 +
        ``retries``); ``what`` names it in the error (redacted)."""
        last = (self.retries if attempts is None else attempts - 1)
        for n in range(last + 1):
            try:
                return fn()
            except Transient as e:
                retries[str(e).split(":")[0].split(" after")[0]] += 1
                if n == last:
                    raise MMEarthError(f"{what}: gave up after {last + 1} attempts ({e}); run the same command "
                                       "again to resume") from None
                wait_s = e.retry_after if e.retry_after is not None else self.backoff * 2 ** n
                if self._stop.wait(wait_s * (1 + 0.25 * random.random())):
                    raise MMEarthError("stopped") from None

    def _finish(self, p: Partial, report: Report, attempts: Counter) -> str | None:
        """Verify a complete partial file and rename it into place; None when it must be fetched again."""
        digest = sha256_file(p.path)
        if p.job.sha256 and digest != p.job.sha256.lower():
            attempts[p.job.name] += 1
            p.discard()
            if attempts[p.job.name] >= self.checksum_attempts:
                raise MMEarthError(f"{redact(p.job.source)}: checksum mismatch (sha256 {digest}, expected "
                                   f"{p.job.sha256}) "
                                   f"after {attempts[p.job.name]} download(s); the partial file was removed")
            report.refetched.append(p.job.name)
            p.reset()
            return None
        p.close()
        check_target(p.job.dest)   # rename replaces a link planted there (never follows it); refuse it all the same
        os.replace(p.path, p.job.dest)
        p.journal_path.unlink(missing_ok=True)
        report.sha256[p.job.name] = digest
        return digest


def download(url: str, dest: str | os.PathLike, *, sha256: str | None = None, retries: int = 6,
             timeout: float = 60.0, backoff: float = 1.0, progress: bool = False, connections: int = 4) -> str:
    """Download ``url`` to ``dest`` (resuming, retrying, verifying); returns the file's SHA-256, also written
    beside it as ``<dest>.sha256``."""
    dest = Path(dest)
    job = Job(url, dest, sha256=sha256)
    fetcher = Fetcher(connections, retries=retries, backoff=backoff, timeout=timeout, progress=progress,
                      checksum_attempts=1)
    report = fetcher.fetch([job])
    digest = report.sha256[job.name]
    atomic_write_bytes(str(dest) + ".sha256", f"{digest}  {dest.name}\n".encode())
    return digest
