"""Read a v001 dataset from a URL without downloading it (issue 28).

Every v001 dataset stores one tile per chunk (ours, and the official files: MMEarth-data rewrites them with
``chunks=(1, ...)``), so a sample is one byte range per modality. A **chunk index** (per dataset and row: byte
offset, size, filter mask) is built once by walking the file's chunk B-trees through ranged reads and cached
locally, keyed by the URL, the file's size and its ETag/Last-Modified, so a changed file is noticed. Per sample
the ranges of all modalities are fetched concurrently (adjacent ones in one request), then inflated by the same
code as local reads (:func:`mmearth_data.chunks.decode_raw`). A bounded on-disk **chunk cache** serves what was
read before, so a second epoch runs at local speed; it survives restarts and never holds more than its size.
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse, urlunparse

import h5py
import numpy as np

from .chunks import H5Z_DEFLATE, H5Z_SHUFFLE, decode_raw, filter_pipeline
from .errors import MMEarthError, redact
from .remote import Client, RemoteFile, Stat

MAX_SIDE_FILE = 2 << 30    # a JSON side file read whole (the official 1.2M tile_info is a few hundred MB)
COALESCE_GAP = 0           # only ranges that touch are merged: no byte is read that no sample needs


class Url(str):
    """A URL that answers ``.name`` like a path does (messages name files the same way for both)."""

    @property
    def name(self) -> str:
        return PurePosixPath(urlparse(self).path).name


def sibling(url: str, name: str) -> Url:
    """``name`` in the same directory as ``url``, with ``url``'s query (a signature covers its siblings)."""
    u = urlparse(url)
    return Url(urlunparse(u._replace(path=str(PurePosixPath(u.path).parent / name))))


def without_query(url: str) -> str:
    return urlunparse(urlparse(url)._replace(query="", fragment=""))


@dataclass
class ChunkTable:
    """Where each row's chunk of one dataset lies in the file; ``sizes`` 0 where a row has no chunk."""

    offsets: np.ndarray
    sizes: np.ndarray
    masks: np.ndarray
    filters: list[int]
    dtype: np.dtype
    shape: tuple[int, ...]


def chunk_table(d: h5py.Dataset) -> ChunkTable | None:
    """The table of a one-tile-per-chunk dataset with deflate/shuffle filters, else None (read through h5py)."""
    filters = filter_pipeline(d)
    if d.chunks is None or d.chunks != (1, *d.shape[1:]) or not set(filters) <= {H5Z_DEFLATE, H5Z_SHUFFLE}:
        return None
    n = d.shape[0]
    offsets, sizes, masks = np.zeros(n, np.uint64), np.zeros(n, np.uint32), np.zeros(n, np.uint32)

    def visit(info) -> None:
        row = info.chunk_offset[0]
        offsets[row], sizes[row], masks[row] = info.byte_offset, info.size, info.filter_mask

    if hasattr(d.id, "chunk_iter"):
        d.id.chunk_iter(visit)
    else:   # pragma: no cover - HDF5 before 1.12.3
        for k in range(d.id.get_num_chunks()):
            visit(d.id.get_chunk_info(k))
    return ChunkTable(offsets, sizes, masks, filters, d.dtype, tuple(d.shape[1:]))


def _save(path: Path, tables: dict[str, ChunkTable | None]) -> None:
    arrays, meta = {}, {}
    for name, t in tables.items():
        if t is None:
            meta[name] = None
            continue
        arrays.update({f"{name}/offsets": t.offsets, f"{name}/sizes": t.sizes, f"{name}/masks": t.masks})
        meta[name] = {"filters": t.filters, "dtype": t.dtype.descr if t.dtype.names else t.dtype.str,
                      "shape": list(t.shape)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, __meta__=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)
    os.replace(tmp, path)


def _load(path: Path) -> dict[str, ChunkTable | None] | None:
    try:
        with np.load(path) as z:
            meta = json.loads(z["__meta__"].tobytes())
            out = {}
            for name, m in meta.items():
                if m is None:
                    out[name] = None
                    continue
                dtype = np.dtype([tuple(f) for f in m["dtype"]]) if isinstance(m["dtype"], list) else np.dtype(m["dtype"])
                out[name] = ChunkTable(z[f"{name}/offsets"], z[f"{name}/sizes"], z[f"{name}/masks"],
                                       list(m["filters"]), dtype, tuple(m["shape"]))
            return out
    except (OSError, ValueError, KeyError, TypeError):   # absent or damaged: built again
        return None


class ChunkCache:
    """Chunks read before, on local disk: at most ``max_bytes`` of chunk files, the least recently used evicted
    first; shared by every process (DataLoader workers) through one SQLite index; survives restarts."""

    def __init__(self, directory: str | os.PathLike, max_bytes: int):
        self.dir = Path(directory)
        self.max_bytes = int(max_bytes)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._db = None
        self._pid = None
        self._lock = threading.Lock()   # one connection per process, used by one thread at a time

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_db": None, "_pid": None, "_lock": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _lock=threading.Lock())

    def db(self) -> sqlite3.Connection:
        if self._db is None or self._pid != os.getpid():
            self._db = sqlite3.connect(self.dir / "chunks.sqlite", timeout=60, isolation_level=None,
                                       check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS chunks (key TEXT PRIMARY KEY, size INTEGER, used REAL)")
            self._pid = os.getpid()
        return self._db

    def _file(self, key: str) -> Path:
        return self.dir / key[:2] / key

    def get(self, key: str) -> bytes | None:
        try:
            data = self._file(key).read_bytes()
        except OSError:
            return None
        with self._lock:
            self.db().execute("UPDATE chunks SET used = ? WHERE key = ?", (time.time(), key))
        return data

    def put(self, key: str, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        path = self._file(key)
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_name(f".{key}.{os.getpid()}.{threading.get_ident()}")
        tmp.write_bytes(data)
        with self._lock:
            self._insert(key, data, path, tmp)

    def _insert(self, key: str, data: bytes, path: Path, tmp: Path) -> None:
        db = self.db()
        gone: list[str] = []
        db.execute("BEGIN IMMEDIATE")   # one writer at a time across processes: the bound holds
        try:
            db.execute("INSERT OR REPLACE INTO chunks VALUES (?, ?, ?)", (key, len(data), time.time()))
            os.replace(tmp, path)
            total = db.execute("SELECT COALESCE(SUM(size), 0) FROM chunks").fetchone()[0]
            for old, size in db.execute("SELECT key, size FROM chunks WHERE key != ? ORDER BY used", (key,)):
                if total <= self.max_bytes:
                    break
                gone.append(old)
                total -= size
            db.executemany("DELETE FROM chunks WHERE key = ?", [(k,) for k in gone])
            for old in gone:
                self._file(old).unlink(missing_ok=True)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            tmp.unlink(missing_ok=True)
            raise

    def bytes_held(self) -> int:
        return sum(p.stat().st_size for p in self.dir.glob("??/*") if not p.name.startswith("."))


class RemoteSource:
    """One remote ``.h5``: its chunk index, a fetcher of byte ranges (concurrent, coalesced, cached)."""

    def __init__(self, url: str, client: Client, cache: ChunkCache | None, index_dir: Path | None,
                 threads: int = 8):
        self.url, self.client, self.cache, self.index_dir, self.threads = url, client, cache, index_dir, threads
        self._stat: Stat | None = None
        self._tables: dict[str, ChunkTable | None] = {}
        self._pool = None
        self._pid = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pool": None, "_pid": None}

    @property
    def stat(self) -> Stat:
        if self._stat is None:
            self._stat = self.client.stat(self.url)
        return self._stat

    @property
    def key(self) -> str:
        """Names this version of the file (a changed size or ETag is another file)."""
        s = self.stat
        return hashlib.sha256(f"{without_query(self.url)}|{s.size}|{s.version}".encode()).hexdigest()[:32]

    def h5(self) -> h5py.File:
        try:
            return h5py.File(RemoteFile(self.url, self.client, self.stat.size), "r")
        except OSError as e:
            raise MMEarthError(f"{redact(self.url)}: cannot be opened as HDF5 ({e})") from None

    def tables(self, f: h5py.File, names: list[str]) -> dict[str, ChunkTable | None]:
        """Chunk tables of ``names`` (from the local index cache, else walked once and saved)."""
        missing = [n for n in names if n not in self._tables]
        if missing:
            path = self.index_dir / f"{self.key}.npz" if self.index_dir is not None else None
            cached = _load(path) if path is not None and path.is_file() else None
            if cached is not None:
                self._tables.update({n: t for n, t in cached.items() if n in missing})
            walk = [n for n in missing if n not in self._tables]
            if walk:
                self._tables.update({n: chunk_table(f[n]) for n in walk})
                if path is not None:
                    _save(path, {**(cached or {}), **{n: self._tables[n] for n in walk}})
        return {n: self._tables[n] for n in names}

    def fetch(self, ranges: list[tuple[int, int]]) -> list[bytes]:
        """Bytes of each ``(offset, size)``: from the cache, else in coalesced concurrent requests."""
        out: list[bytes | None] = [None] * len(ranges)
        todo = []
        for k, (off, size) in enumerate(ranges):
            hit = self.cache.get(self._chunk_key(off, size)) if self.cache is not None else None
            if hit is not None and len(hit) == size:
                out[k] = hit
            else:
                todo.append(k)
        groups: list[list[int]] = []
        for k in sorted(todo, key=lambda k: ranges[k][0]):
            if groups and ranges[k][0] <= ranges[groups[-1][-1]][0] + ranges[groups[-1][-1]][1] + COALESCE_GAP:
                groups[-1].append(k)
            else:
                groups.append([k])

        def get(group: list[int]) -> None:
            start = ranges[group[0]][0]
            stop = max(ranges[k][0] + ranges[k][1] for k in group)
            data = self.client.get(self.url, start, stop)
            for k in group:
                off, size = ranges[k]
                out[k] = data[off - start:off - start + size]
                if self.cache is not None:
                    self.cache.put(self._chunk_key(off, size), out[k])

        if len(groups) == 1:
            get(groups[0])
        elif groups:
            list(self.pool().map(get, groups))
        return out  # type: ignore[return-value]

    def _chunk_key(self, offset: int, size: int) -> str:
        return hashlib.sha256(f"{self.key}|{offset}|{size}".encode()).hexdigest()

    def pool(self) -> ThreadPoolExecutor:
        if self._pool is None or self._pid != os.getpid():
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="mmearth-fetch")
            self._pid = os.getpid()
        return self._pool


class StreamTileReader:
    """Row ``i`` of one dataset of a remote file: ``request`` its byte range, ``decode`` what came back."""

    def __init__(self, name: str, table: ChunkTable, source: RemoteSource):
        self.name, self.table, self.source = name, table, source

    def request(self, i: int) -> tuple[int, int]:
        size = int(self.table.sizes[i])
        if size == 0:
            raise MMEarthError(f"{redact(self.source.url)}: {self.name} row {i} has no stored chunk")
        return int(self.table.offsets[i]), size

    def decode(self, fetched: tuple[int, bytes]) -> np.ndarray:
        return decode_raw(fetched, self.table.filters, self.table.dtype, self.table.shape,
                          f"{redact(self.source.url)}: a chunk of {self.name}")

    def read(self, i: int) -> np.ndarray:
        (data,) = self.source.fetch([self.request(i)])
        return self.decode((int(self.table.masks[i]), data))

    def mask(self, i: int) -> int:
        return int(self.table.masks[i])


class RemoteFiles:
    """A v001 dataset at a URL (its ``.h5``; the side files beside it): what :class:`MMEarthDataset` needs of
    :class:`mmearth_data.reader.MMEarthFiles`, read remotely."""

    remote = True

    def __init__(self, url: str, client: Client | None = None, cache_dir: str | os.PathLike | None = None,
                 cache_size: int = 0):
        path = PurePosixPath(urlparse(url).path)
        if path.suffix != ".h5":
            raise MMEarthError(f"{redact(url)}: give the URL of the dataset's .h5 file (its side files are read "
                               "beside it)")
        self.h5_path = Url(url)
        self.stem = path.stem
        self.client = client or Client()
        cache = Path(cache_dir) if cache_dir is not None else None
        self.source = RemoteSource(url, self.client, ChunkCache(cache / "chunks", cache_size)
                                   if cache is not None and cache_size > 0 else None,
                                   cache / "index" if cache is not None else None)
        self._cache: dict = {}

    def side_path(self, kind: str) -> Url:
        return sibling(self.h5_path, f"{self.stem}_{kind}.json")

    def _json(self, kind: str):
        if kind not in self._cache:
            from .reader import parse_side_file

            url = self.side_path(kind)
            self._cache[kind] = parse_side_file(redact(url), kind, self.client.get_all(url, MAX_SIDE_FILE))
        return self._cache[kind]

    @property
    def tile_info(self) -> dict:
        return self._json("tile_info")

    @property
    def band_stats(self) -> dict:
        return self._json("band_stats")

    @property
    def splits(self) -> dict:
        return self._json("splits")

    def h5(self, **kwargs) -> h5py.File:
        return self.source.h5()
