"""The on-disk chunk cache of streamed datasets, bounded, shared by DataLoader workers."""
from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class ChunkCache:
    """Chunks read before, on local disk: at most ``max_bytes`` of chunk files, the oldest evicted first (an
    epoch reads every chunk once: first in, first out is what it needs, and a hit then costs one file read, no
    database write); shared by every process (DataLoader workers) through one SQLite index; survives restarts."""

    def __init__(self, directory: str | os.PathLike, max_bytes: int):
        self.dir = Path(directory)
        self.max_bytes = int(max_bytes)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._db = None
        self._pid = None
        self._lock = threading.Lock()   # one connection per process, used by one thread at a time
        for stale in self.dir.glob("??/.*"):   # temporary files of writers killed before their rename
            try:
                if time.time() - stale.stat().st_mtime > 600:
                    stale.unlink()
            except OSError:
                pass

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_db": None, "_pid": None, "_lock": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _lock=threading.Lock())

    def db(self) -> sqlite3.Connection:
        if self._db is None or self._pid != os.getpid():
            self._db = db = sqlite3.connect(self.dir / "chunks.sqlite", timeout=60, isolation_level=None,
                                            check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("BEGIN IMMEDIATE")
            db.execute("CREATE TABLE IF NOT EXISTS chunks (key TEXT PRIMARY KEY, size INTEGER, used REAL)")
            db.execute("CREATE INDEX IF NOT EXISTS chunks_used ON chunks (used)")
            db.execute("CREATE TABLE IF NOT EXISTS held (bytes INTEGER)")   # the sum of sizes, kept per write
            if db.execute("SELECT COUNT(*) FROM held").fetchone()[0] == 0:
                db.execute("INSERT INTO held SELECT COALESCE(SUM(size), 0) FROM chunks")
            db.execute("COMMIT")
            self._pid = os.getpid()
        return self._db

    def _file(self, key: str) -> Path:
        return self.dir / key[:2] / key

    def get(self, key: str) -> bytes | None:
        try:
            return self._file(key).read_bytes()
        except OSError:
            return None

    def put(self, key: str, data: bytes) -> None:
        self.put_many([(key, data)])

    def put_many(self, chunks: list[tuple[str, bytes]]) -> None:
        """Keep ``chunks`` (key, bytes): their files written first, then one transaction for all of them (a
        DataLoader batch is one commit, not one per chunk)."""
        staged = []
        try:
            for key, data in dict(chunks).items():   # a batch drawing one row twice fetches its chunks twice
                if len(data) > self.max_bytes:
                    continue
                path = self._file(key)
                tmp = path.with_name(f".{key}.{os.getpid()}.{threading.get_ident()}")
                path.parent.mkdir(exist_ok=True)
                tmp.write_bytes(data)
                staged.append((key, len(data), path, tmp))
            if staged:
                with self._lock:
                    self._insert(staged)
        except (OSError, sqlite3.Error):   # a full or read-only cache disk: the sample was read all the same
            for _, _, _, tmp in staged:
                tmp.unlink(missing_ok=True)

    @contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: one writer at a time across processes, so the bound holds."""
        db = self.db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def delete(self, key: str) -> None:
        """Forget a chunk (one that did not decode: never served again)."""
        with self._lock, self._writing() as db:
            db.execute("UPDATE held SET bytes = bytes - (SELECT COALESCE(SUM(size), 0) FROM chunks WHERE key = ?)",
                       (key,))
            db.execute("DELETE FROM chunks WHERE key = ?", (key,))
        self._file(key).unlink(missing_ok=True)

    def _insert(self, staged: list[tuple[str, int, Path, Path]]) -> None:
        now = time.time()
        gone: list[str] = []
        try:
            with self._writing() as db:
                total = db.execute("SELECT bytes FROM held").fetchone()[0]
                for key, size, _, _ in staged:
                    old = db.execute("SELECT size FROM chunks WHERE key = ?", (key,)).fetchone()
                    db.execute("INSERT OR REPLACE INTO chunks VALUES (?, ?, ?)", (key, size, now))
                    total += size - (old[0] if old else 0)
                if total > self.max_bytes:
                    for old, size in db.execute("SELECT key, size FROM chunks ORDER BY used"):
                        if total <= self.max_bytes:
                            break
                        gone.append(old)   # the oldest first; this write's own only if it alone is over
                        total -= size
                db.executemany("DELETE FROM chunks WHERE key = ?", [(k,) for k in gone])
                db.execute("UPDATE held SET bytes = ?", (total,))
                for old in gone:   # before the commit: a kill leaves rows without files (a miss), never files over
                    self._file(old).unlink(missing_ok=True)
                dropped = set(gone)
                for key, _, path, tmp in staged:   # inside the transaction too: after its commit, another process
                    if key not in dropped:         # could evict a row whose file was not there yet, and the file
                        os.replace(tmp, path)      # renamed later would be held by no row, never evicted
        finally:
            for _, _, _, tmp in staged:   # those evicted by their own batch, or all of them when the write failed
                tmp.unlink(missing_ok=True)

    def bytes_held(self) -> int:
        """Bytes of every file under the cache (temporary ones included)."""
        return sum(p.stat().st_size for p in self.dir.glob("??/*"))
