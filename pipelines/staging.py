"""Staging and ledger for one partition, in one SQLite file (``staging/part-00042.sqlite``).

Why SQLite and not a staging HDF5 renamed at the end: a tile is committed in one transaction (its arrays, its
ledger rows and its tile_info together), so a process killed at any moment loses at most the tiles in flight and
``--resume`` continues from the last committed tile instead of the last finished partition. One file per partition
keeps the file count small (a 1.2M run has ~1,200) and gives each Dask task a file it owns alone; readers
(``status``, progress, pack) open it read-only.

Tables: ``tiles`` (tile_id, row, status, info JSON), ``ledger`` (tile_id, modality, status, attempts,
error_class, message, source_ids JSON, nbytes, sha256), ``arrays`` (tile_id, dataset, dtype, shape, and the bytes
of the tile's HDF5 chunk: shuffle + zlib at ``CHUNK_LEVEL``), ``tile_stats`` (tile_id, band_stats key, mergeable
statistics of that tile), ``meta`` (key, value JSON). Staging arrays as finished HDF5 chunks, with their
statistics, lets the pack copy them without decoding or re-encoding.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmearth_data.errors import MMEarthError
from mmearth_data.catalog import load_spec
from mmearth_data.chunks import decode_chunk, encode_chunk
from mmearth_data.stats import BandStats
from mmearth_data.writer import accumulate_stats

TILE_DONE, TILE_NO_S2, TILE_FAILED, TILE_RETRY = "done", "no_s2", "failed", "retry"
FINAL = (TILE_DONE, TILE_NO_S2, TILE_FAILED)   # never redone by --resume
# ledger row statuses
OK, NODATA, FAILED, RETRY, SKIPPED = "ok", "nodata", "failed", "retry", "skipped"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tiles (tile_id TEXT PRIMARY KEY, row INTEGER NOT NULL, status TEXT NOT NULL,
    info TEXT NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS ledger (tile_id TEXT NOT NULL, modality TEXT NOT NULL, status TEXT NOT NULL,
    attempts INTEGER NOT NULL, error_class TEXT, message TEXT, source_ids TEXT, nbytes INTEGER, sha256 TEXT,
    PRIMARY KEY (tile_id, modality));
CREATE TABLE IF NOT EXISTS arrays (tile_id TEXT NOT NULL, dataset TEXT NOT NULL, dtype TEXT NOT NULL,
    shape TEXT NOT NULL, data BLOB NOT NULL, PRIMARY KEY (tile_id, dataset));
CREATE TABLE IF NOT EXISTS tile_stats (tile_id TEXT NOT NULL, key TEXT NOT NULL, state TEXT NOT NULL,
    PRIMARY KEY (tile_id, key));
"""
CHUNK_LEVEL = 1  # the pack's default: staged chunks are copied as they are


@dataclass
class LedgerRow:
    modality: str
    status: str
    attempts: int = 0
    error_class: str | None = None
    message: str = ""
    source_ids: list[str] = field(default_factory=list)
    nbytes: int = 0
    sha256: str | None = None


def tile_stats(arrays: Mapping[str, np.ndarray], s2_type: str | None) -> dict[str, BandStats]:
    """The band statistics of one tile under the v001 band_stats keys (merged later, in row order, by the pack)."""
    spec = load_spec()
    stats: dict[str, BandStats] = {}
    types = np.asarray([s2_type])
    for name, arr in arrays.items():
        if name in spec.datasets:
            accumulate_stats(stats, spec.datasets[name], arr[None], types, spec.s2_types)
    return stats


def digest(arrays: Iterable[np.ndarray]) -> tuple[int, str]:
    """Bytes and SHA-256 of arrays in order: what the ledger records to prove two runs staged the same data."""
    h = hashlib.sha256()
    n = 0
    for a in arrays:
        b = np.ascontiguousarray(a).tobytes()
        h.update(b)
        n += len(b)
    return n, h.hexdigest()


def staging_error(path: Path, e: sqlite3.Error) -> Exception:
    """A staging database's failure as the one line a user can act on (a full disk, a damaged file); others
    (a lock held too long, a bug) stay what they are."""
    text = str(e)
    if "disk is full" in text or "disk I/O error" in text:
        return MMEarthError(f"{path}: cannot write ({text}): free space, then run the same command with --resume "
                            "(tiles committed before are kept)")
    if isinstance(e, sqlite3.DatabaseError) and ("not a database" in text or "malformed" in text):
        return MMEarthError(f"{path}: damaged staging database ({text}): move it away and run the same command "
                            "with --resume to export its tiles again")
    return e


class _Connection(sqlite3.Connection):
    """A connection whose statements and commits name their database file when they fail as above."""

    path = Path()

    def execute(self, *args, **kw):
        try:
            return super().execute(*args, **kw)
        except sqlite3.Error as e:
            raise staging_error(self.path, e) from None

    def executemany(self, *args, **kw):
        try:
            return super().executemany(*args, **kw)
        except sqlite3.Error as e:
            raise staging_error(self.path, e) from None

    def executescript(self, *args, **kw):
        try:
            return super().executescript(*args, **kw)
        except sqlite3.Error as e:
            raise staging_error(self.path, e) from None

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        except sqlite3.Error as e:
            raise staging_error(self.path, e) from None


class PartitionStore:
    def __init__(self, path: str | Path, readonly: bool = False):
        self.path = Path(path)
        if readonly:
            self.db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30, factory=_Connection)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, timeout=30, factory=_Connection)
        self.db.path = self.path
        if not readonly:
            # rollback journal (not WAL): safe on shared network storage, where WAL's shared memory is not
            self.db.execute("PRAGMA journal_mode=DELETE")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "PartitionStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- meta ------------------------------------------------------------------------------------------------------
    def set_meta(self, key: str, value: Any) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def meta(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    # -- tiles -----------------------------------------------------------------------------------------------------
    def tile_states(self) -> dict[str, str]:
        return dict(self.db.execute("SELECT tile_id, status FROM tiles"))

    def ledger(self, tile_id: str | None = None) -> list[dict]:
        q = "SELECT tile_id, modality, status, attempts, error_class, message, source_ids, nbytes, sha256 FROM ledger"
        cur = self.db.execute(q + " WHERE tile_id = ?", (tile_id,)) if tile_id else self.db.execute(q)
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, r)) for r in cur]

    def tile_info(self, tile_id: str) -> dict | None:
        row = self.db.execute("SELECT info FROM tiles WHERE tile_id = ?", (tile_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def commit_tile(self, tile_id: str, row: int, status: str, info: Mapping, rows: Iterable[LedgerRow],
                    arrays: Mapping[str, np.ndarray]) -> None:
        """Everything about one tile in one transaction: it is staged completely or not at all."""
        self.commit_tiles([(tile_id, row, status, info, rows, arrays)])

    def commit_tiles(self, tiles: Iterable[tuple]) -> None:
        """Several tiles ``(tile_id, row, status, info, rows, arrays)`` in one transaction (one pair of fsyncs
        instead of one per tile); each tile is still staged completely or not at all."""
        prepared = []
        for tile_id, row, status, info, rows, arrays in tiles:
            blobs = [(tile_id, name, a.dtype.str, json.dumps(list(a.shape)), encode_chunk(a, CHUNK_LEVEL))
                     for name, a in arrays.items()]
            stats = tile_stats(arrays, info.get("S2_type")) if status == TILE_DONE else {}
            prepared.append((tile_id, row, status, info, list(rows), blobs, stats))
        with self.db:
            for tile_id, row, status, info, rows, blobs, stats in prepared:
                self.db.execute("INSERT OR REPLACE INTO tiles VALUES (?, ?, ?, ?, ?)",
                                (tile_id, row, status, json.dumps(info, sort_keys=True), time.time()))
                self.db.executemany("INSERT OR REPLACE INTO ledger VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                    [(tile_id, r.modality, r.status, r.attempts, r.error_class, r.message,
                                      json.dumps(r.source_ids), r.nbytes, r.sha256) for r in rows])
                self.db.executemany("INSERT OR REPLACE INTO arrays VALUES (?, ?, ?, ?, ?)", blobs)
                self.db.executemany("INSERT OR REPLACE INTO tile_stats VALUES (?, ?, ?)",
                                    [(tile_id, k, json.dumps(v.to_state())) for k, v in sorted(stats.items())])

    def chunks(self, tile_id: str) -> dict[str, tuple[np.dtype, tuple[int, ...], bytes]]:
        """The staged HDF5 chunk of every dataset of a tile, undecoded."""
        return {name: (np.dtype(dtype), tuple(json.loads(shape)), blob) for name, dtype, shape, blob in self.db.execute(
            "SELECT dataset, dtype, shape, data FROM arrays WHERE tile_id = ?", (tile_id,))}

    def arrays(self, tile_id: str) -> dict[str, np.ndarray]:
        return {name: decode_chunk(blob, dt, shape) for name, (dt, shape, blob) in self.chunks(tile_id).items()}

    def stats(self, tile_id: str) -> dict[str, BandStats]:
        return {k: BandStats.from_state(json.loads(v))
                for k, v in self.db.execute("SELECT key, state FROM tile_stats WHERE tile_id = ?", (tile_id,))}

    def counts(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT status, count(*) FROM tiles GROUP BY status"))

    def tiles_in_order(self) -> list[tuple[str, int, str, dict]]:
        """``(tile_id, row, status, info)`` of every staged tile, in location order."""
        return [(t, int(r), s, json.loads(i))
                for t, r, s, i in self.db.execute("SELECT tile_id, row, status, info FROM tiles ORDER BY row")]

    def failed_reasons(self) -> dict[str, str]:
        """``status:error_class`` of a failed modality of each tile that has one (of several, the one whose name
        sorts first)."""
        return {t: f"{s}:{e}" for t, s, e in self.db.execute(
            "SELECT tile_id, status, error_class FROM ledger WHERE status = 'failed' ORDER BY modality DESC")}

    def unfinished_reasons(self) -> dict[str, str]:
        """Why each tile whose Sentinel-2 choice or setup (``tile``) did not finish has no data: the message, else
        the error class, else the status."""
        return {t: (m or c or s) for t, s, c, m in self.db.execute(
            "SELECT tile_id, status, error_class, message FROM ledger WHERE modality IN ('sentinel2', 'tile') "
            "AND status IN ('nodata', 'failed', 'retry')")}
