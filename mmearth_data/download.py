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
import os
import queue
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .errors import MMEarthError, redact
from .io_utils import atomic_write_bytes, check_free_space, fsync_file, open_nofollow, partial_path, sha256_file
from .partial_file import RECORD, Job, Partial, check_target
from .transport import Transient, Transport, is_url

BLOCK = 1 << 20                 # bytes read and journalled at a time
PIECE = 32 << 20                # bytes per ranged GET
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
        check_free_space(root, sum(j.size or 0 for j in jobs if not j.dest.is_file()), "this download",
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
        fsync_file(p.path)   # download.json records it as verified next: a power loss must not leave it short
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


__all__ = ["BLOCK", "PIECE", "RECORD", "Fetcher", "Job", "Report", "Transient", "Transport", "check_target",
           "disk_full_is_one_line", "download", "is_url"]
