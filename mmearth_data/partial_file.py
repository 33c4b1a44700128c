"""One file being downloaded: ``.<name>.partial`` plus its journal of which bytes of each piece are written, so a
run killed at any instant resumes where its written bytes end; a link or device planted at a name we write is
refused, never written through."""
from __future__ import annotations

import hashlib
import os
import stat
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

from .errors import MMEarthError, redact
from .io_utils import open_nofollow, partial_path

RECORD = struct.Struct("<IQ")   # (piece, end offset); piece HEADER carries the key of what is being fetched
HEADER = 0xFFFFFFFF


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
