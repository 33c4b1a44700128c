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
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse, urlunparse

import h5py
import numpy as np

from .chunks import H5Z_DEFLATE, H5Z_SHUFFLE, decode_raw, filter_pipeline
from .errors import MMEarthError, redact
from .reader import MIN_CHUNK_BYTES, SideFiles
from .remote import Client, RemoteFile, Stat, http_url

MAX_SIDE_FILE = 2 << 30    # a JSON side file read whole (the official 1.2M tile_info is a few hundred MB)
FETCH_THREADS = 32          # ranged requests in flight per process: a shuffled batch is ~13 per sample
COALESCE_GAP = 0           # only ranges that touch are merged: no byte is read that no sample needs


class Url(str):
    """A URL that answers ``.name`` like a path does (messages name files the same way for both)."""

    @property
    def name(self) -> str:
        return PurePosixPath(urlparse(self).path).name


def sibling(url: str, name: str) -> Url:
    """``name`` in the same directory as ``url``, with ``url``'s query (a signature covers its siblings): how a
    release's files are found beside its manifest (:func:`mmearth_data.releases.file_source`)."""
    from .releases import file_source, release_base

    return Url(file_source(release_base(url, None), name))


def without_query(url: str) -> str:
    return urlunparse(urlparse(url)._replace(query="", fragment=""))


@dataclass
class ChunkTable:
    """Where each row's chunk of one dataset lies; ``sizes`` 0 where a row has no chunk. ``files``: the index of
    the file holding each row (a release's shards; None: one file); ``crcs``: each chunk's CRC32 where the index
    records it (a release's), checked before the bytes are decoded or cached."""

    offsets: np.ndarray
    sizes: np.ndarray
    masks: np.ndarray
    filters: list[int]
    dtype: np.dtype
    shape: tuple[int, ...]
    files: np.ndarray | None = None
    crcs: np.ndarray | None = None


def chunk_table(d: h5py.Dataset) -> ChunkTable | None:
    """The table of a one-tile-per-chunk dataset with deflate/shuffle filters, else None (read through h5py)."""
    filters = filter_pipeline(d)
    if d.chunks is None or d.chunks != (1, *d.shape[1:]) or not set(filters) <= {H5Z_DEFLATE, H5Z_SHUFFLE}:
        return None
    n = d.shape[0]
    if n * MIN_CHUNK_BYTES > d.file.id.get_filesize():   # a header may declare rows no file holds: size nothing by it
        raise MMEarthError(f"{redact(str(d.file.filename))}: {d.name} declares {n} rows, more than its file of "
                           f"{d.file.id.get_filesize()} bytes can hold")
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


def save_tables(path: Path, tables: dict[str, ChunkTable | None], extra: dict | None = None) -> None:
    arrays, meta = {}, {"__extra__": extra} if extra else {}
    for name, t in tables.items():
        if t is None:
            meta[name] = None
            continue
        arrays.update({f"{name}/offsets": t.offsets, f"{name}/sizes": t.sizes, f"{name}/masks": t.masks})
        arrays.update({f"{name}/{k}": v for k, v in (("files", t.files), ("crcs", t.crcs)) if v is not None})
        fields = [[f, t.dtype.fields[f][0].str, t.dtype.fields[f][1]] for f in t.dtype.names or ()]
        meta[name] = {"filters": t.filters, "dtype": {"fields": fields, "itemsize": t.dtype.itemsize} if fields
                      else t.dtype.str,
                      "shape": list(t.shape)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, __meta__=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)
    os.replace(tmp, path)


def load_tables(source) -> dict[str, ChunkTable | None] | None:
    """Tables saved by :func:`save_tables` (a path or a file object); None if absent or damaged."""
    try:
        with np.load(source) as z:
            meta = json.loads(z["__meta__"].tobytes())
            out = {"__extra__": meta.pop("__extra__", None)} if "__extra__" in meta else {}
            for name, m in meta.items():
                if m is None:
                    out[name] = None
                    continue
                d = m["dtype"]
                dtype = np.dtype({"names": [f[0] for f in d["fields"]], "formats": [f[1] for f in d["fields"]],
                                  "offsets": [f[2] for f in d["fields"]], "itemsize": d["itemsize"]}) \
                    if isinstance(d, dict) else np.dtype(d)
                extra = {k: z[f"{name}/{k}"] for k in ("files", "crcs") if f"{name}/{k}" in z.files}
                out[name] = ChunkTable(z[f"{name}/offsets"], z[f"{name}/sizes"], z[f"{name}/masks"],
                                       list(m["filters"]), dtype, tuple(m["shape"]), **extra)
            return out
    except (OSError, ValueError, KeyError, TypeError, RecursionError):   # absent or damaged
        return None


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
            for key, data in chunks:
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

    def delete(self, key: str) -> None:
        """Forget a chunk (one that did not decode: never served again)."""
        with self._lock:
            db = self.db()
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("UPDATE held SET bytes = bytes - (SELECT COALESCE(SUM(size), 0) FROM chunks WHERE key = ?)",
                           (key,))
                db.execute("DELETE FROM chunks WHERE key = ?", (key,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        self._file(key).unlink(missing_ok=True)

    def _insert(self, staged: list[tuple[str, int, Path, Path]]) -> None:
        db = self.db()
        now = time.time()
        db.execute("BEGIN IMMEDIATE")   # one writer at a time across processes: the bound holds
        try:
            for key, size, _, _ in staged:
                old = db.execute("SELECT size FROM chunks WHERE key = ?", (key,)).fetchone()
                db.execute("INSERT OR REPLACE INTO chunks VALUES (?, ?, ?)", (key, size, now))
                db.execute("UPDATE held SET bytes = bytes + ?", (size - (old[0] if old else 0),))
            total = db.execute("SELECT bytes FROM held").fetchone()[0]
            gone: list[tuple[str, int]] = []
            if total > self.max_bytes:
                for old, size in db.execute("SELECT key, size FROM chunks ORDER BY used"):
                    if total <= self.max_bytes:
                        break
                    gone.append((old, size))   # the oldest first; this write's own only if it alone is over
                    total -= size
            db.executemany("DELETE FROM chunks WHERE key = ?", [(k,) for k, _ in gone])
            db.execute("UPDATE held SET bytes = ?", (total,))
            for old, _ in gone:   # before the commit: a kill leaves rows without files (a miss), never files over
                self._file(old).unlink(missing_ok=True)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            for _, _, _, tmp in staged:
                tmp.unlink(missing_ok=True)
            raise
        dropped = {k for k, _ in gone}
        for key, _, path, tmp in staged:   # after the commit: a kill before it leaves temporary files, swept at start
            if key in dropped:
                tmp.unlink(missing_ok=True)
            else:
                os.replace(tmp, path)

    def bytes_held(self) -> int:
        """Bytes of every file under the cache (temporary ones included)."""
        return sum(p.stat().st_size for p in self.dir.glob("??/*"))


class RemoteSource:
    """Remote ``.h5`` file(s) (one, or a release's shards): a fetcher of byte ranges, concurrent, coalesced per
    file, checked against CRC32s where known, cached. ``versions``: what names each file's current content (a
    shard's sha256 from its manifest; else asked of the server: size and ETag)."""

    def __init__(self, urls: list[str], client: Client, cache: ChunkCache | None, index_dir: Path | None,
                 threads: int = FETCH_THREADS, versions: list[str] | None = None):
        self.urls, self.client, self.cache, self.index_dir, self.threads = urls, client, cache, index_dir, threads
        self._versions = versions
        self._stat: Stat | None = None
        self._tables: dict[str, ChunkTable | None] = {}
        self._pool = None
        self._pid = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pool": None, "_pid": None}

    @property
    def url(self) -> str:
        return self.urls[0]

    @property
    def stat(self) -> Stat:
        if self._stat is None:
            self._stat = self.client.stat(self.url)
        return self._stat

    @property
    def key(self) -> str:
        """Names this version of the file(s) (a changed size, ETag or checksum is another file)."""
        versions = self._versions or [f"{self.stat.size}|{self.stat.version}"]
        text = "|".join(f"{without_query(u)}|{v}" for u, v in zip(self.urls, versions))
        return hashlib.sha256(text.encode()).hexdigest()[:32]

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
            cached = load_tables(path) if path is not None and path.is_file() else None
            if cached is not None:
                self._tables.update({n: t for n, t in cached.items() if n in missing})
            walk = [n for n in missing if n not in self._tables]
            if walk:
                self._tables.update({n: chunk_table(f[n]) for n in walk})
                if path is not None:
                    save_tables(path, {**(cached or {}), **{n: self._tables[n] for n in walk}})
        return {n: self._tables[n] for n in names}

    def fetch(self, requests: list[tuple[int, int, int, int | None]]) -> list[bytes]:
        """Bytes of each ``(file, offset, size, crc32 or None)``: from the cache, else in concurrent requests,
        ranges of one file that touch merged into one."""
        out: list[bytes | None] = [None] * len(requests)
        todo = []
        for k, (fi, off, size, crc) in enumerate(requests):
            hit = self.cache.get(self._chunk_key(fi, off, size)) if self.cache is not None else None
            if hit is not None and len(hit) == size and (crc is None or zlib.crc32(hit) == crc):
                out[k] = hit
            else:
                todo.append(k)
        groups: list[list[int]] = []
        for k in sorted(todo, key=lambda k: requests[k][:2]):
            last = requests[groups[-1][-1]] if groups else None
            fi, off = requests[k][:2]
            if last is not None and last[0] == fi and off <= last[1] + last[2] + COALESCE_GAP:
                groups[-1].append(k)
            else:
                groups.append([k])

        def get(group: list[int], again: bool = True) -> None:
            fi, start = requests[group[0]][:2]
            stop = max(requests[k][1] + requests[k][2] for k in group)
            data = self.client.get(self.urls[fi], start, stop)
            for k in group:
                _, off, size, crc = requests[k]
                chunk = data[off - start:off - start + size]
                if crc is not None and zlib.crc32(chunk) != crc:
                    if again:   # damaged on the way: once more
                        return get(group, again=False)
                    raise MMEarthError(f"{redact(self.urls[fi])}: bytes {off}..{off + size - 1} do not match their "
                                       "CRC32 in the release's chunk index (twice): the file changed or is damaged")
                out[k] = chunk
                fetched.append((self._chunk_key(fi, off, size), chunk))

        fetched: list[tuple[str, bytes]] = []   # list.append is atomic: the fetch threads share it
        if len(groups) == 1:
            get(groups[0])
        elif groups:
            list(self.pool().map(get, groups))
        if self.cache is not None and fetched:
            self.cache.put_many(fetched)
        return out  # type: ignore[return-value]

    def _chunk_key(self, fi: int, offset: int, size: int) -> str:
        return hashlib.sha256(f"{self.key}|{fi}|{offset}|{size}".encode()).hexdigest()

    def pool(self) -> ThreadPoolExecutor:
        if self._pool is None or self._pid != os.getpid():
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="mmearth-fetch")
            self._pid = os.getpid()
        return self._pool


class StreamTileReader:
    """Row ``i`` of one dataset of remote file(s): ``request`` its byte range, ``decode`` what came back."""

    def __init__(self, name: str, table: ChunkTable, source: RemoteSource):
        self.name, self.table, self.source = name, table, source

    def request(self, i: int) -> tuple[int, int, int, int | None]:
        t = self.table
        size = int(t.sizes[i])
        if size == 0:
            raise MMEarthError(f"{redact(self.source.url)}: {self.name} row {i} has no stored chunk")
        return (0 if t.files is None else int(t.files[i]), int(t.offsets[i]), size,
                None if t.crcs is None else int(t.crcs[i]))

    def decode(self, fetched: tuple[int, bytes], row: int | None = None) -> np.ndarray:
        try:
            return decode_raw(fetched, self.table.filters, self.table.dtype, self.table.shape,
                              f"{redact(self.source.url)}: a chunk of {self.name}")
        except MMEarthError:
            if row is not None and self.source.cache is not None:   # never served from the cache again
                fi, off, size, _ = self.request(row)
                self.source.cache.delete(self.source._chunk_key(fi, off, size))
            raise

    def read(self, i: int) -> np.ndarray:
        (data,) = self.source.fetch([self.request(i)])
        return self.decode((self.mask(i), data), i)

    def mask(self, i: int) -> int:
        return int(self.table.masks[i])


class RemoteFiles(SideFiles):
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
        self.source = RemoteSource([url], self.client, ChunkCache(cache / "chunks", cache_size)
                                   if cache is not None and cache_size > 0 else None,
                                   cache / "index" if cache is not None else None)
        self._cache: dict = {}

    def side_path(self, kind: str) -> Url:
        return sibling(http_url(self.h5_path), f"{self.stem}_{kind}.json")   # s3/gs: resolved in their https form

    def _side_bytes(self, kind: str) -> tuple[object, bytes]:
        url = self.side_path(kind)
        return redact(url), self.client.get_all(url, MAX_SIDE_FILE)

    def h5(self, **kwargs) -> h5py.File:
        return self.source.h5()


# -- releases (``mmearth-data shard``): one index for every shard, with CRC32s ----------------------------------
def _plain(value):
    """An HDF5 attribute as JSON (numbers, strings, lists of them)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_release_index(root: Path, manifest) -> Path:
    """``<stem>_chunks.npz`` beside a release's manifest: for every dataset and row, the shard (its position among
    the manifest's shards), byte offset, size, filter mask and CRC32 of its chunk, plus each dataset's dtype,
    shape, filters and attributes: a streamed release is read with one request per modality and sample, and a
    chunk damaged on the way is caught before it is decoded."""
    shards = manifest.shards
    tables: dict[str, ChunkTable | None] = {}
    attrs: dict[str, dict] = {}
    names = sorted({d for f in shards for d in f.datasets})
    for name in names:
        n = manifest.n_tiles
        t = ChunkTable(np.zeros(n, np.uint64), np.zeros(n, np.uint32), np.zeros(n, np.uint32), [], np.dtype("u1"),
                       (), files=np.zeros(n, np.uint32), crcs=np.zeros(n, np.uint32))
        for k, f in enumerate(shards):
            if name not in f.datasets:
                continue
            a, b = f.rows
            with h5py.File(root / f.name, "r") as h, open(root / f.name, "rb") as raw:
                part = chunk_table(h[name])
                if part is None:
                    raise MMEarthError(f"{root / f.name}: {name} is not stored one tile per chunk; cannot index it")
                attrs.setdefault(name, {key: _plain(v) for key, v in h[name].attrs.items()})
                t.filters, t.dtype, t.shape = part.filters, part.dtype, part.shape
                t.offsets[a:b], t.sizes[a:b], t.masks[a:b] = part.offsets, part.sizes, part.masks
                t.files[a:b] = k
                for r in range(b - a):
                    raw.seek(int(part.offsets[r]))
                    t.crcs[a + r] = zlib.crc32(raw.read(int(part.sizes[r])))
        tables[name] = t
    with h5py.File(root / shards[0].name, "r") as first:
        file_attrs = {k: _plain(v) for k, v in first.attrs.items() if k != "release"}
    path = root / f"{manifest.stem}_chunks.npz"
    save_tables(path, tables, {"attrs": attrs, "file_attrs": file_attrs, "identity": manifest.identity,
                               "n_tiles": manifest.n_tiles})
    return path


def _index_problem(tables: dict | None, manifest) -> str | None:
    """Why a release's chunk index cannot be used with ``manifest`` (its author wrote both: a matching sha256
    proves nothing about its shape), or None."""
    if tables is None:
        return "not a readable chunk index"
    extra = tables.get("__extra__")
    if extra is not None and not isinstance(extra, dict):
        return "its description is not an object"
    n, shards = manifest.n_tiles, len(manifest.shards)
    for name, t in tables.items():
        if name == "__extra__" or t is None:
            continue
        arrays = (t.offsets, t.sizes, t.masks, t.files, t.crcs)
        if any(a is None or a.shape != (n,) for a in arrays):
            return f"{name}: its tables do not have the manifest's {n} rows"
        if n and int(t.files.max()) >= shards:
            return f"{name}: names a shard the manifest does not list"
    return None


class RemoteRelease(RemoteFiles):
    """A release (``mmearth-data shard``) at a URL: its ``manifest.json``, side files and chunk index are read
    (the index checked against the manifest's sha256); samples come from the shards by ranged requests."""

    def __init__(self, url: str, client: Client | None = None, cache_dir: str | os.PathLike | None = None,
                 cache_size: int = 0):
        from .releases import file_source, release_base
        from .shards import parse_manifest
        from .reader import parse_side_file

        self.client = client or Client()
        shown = redact(url)
        url = http_url(url)   # s3:// and gs:// as their https form: relative names resolve against it
        manifest = parse_manifest(parse_side_file(shown, "manifest", self.client.get_all(url, 64 << 20)), shown)
        base = release_base(url, manifest.base_url)
        if urlparse(base).scheme not in ("http", "https"):
            raise MMEarthError(f"{shown}: base_url {redact(str(manifest.base_url))!r} is not http(s); a remote "
                               "manifest never points at local files")
        self.manifest, self.stem = manifest, manifest.stem
        self.h5_path = Url(file_source(base, f"{manifest.stem}.h5"))
        self._base = base
        entry = next((f for f in manifest.side_files if f.name == f"{manifest.stem}_chunks.npz"), None)
        if entry is None:
            raise MMEarthError(f"{shown}: this release has no chunk index ({manifest.stem}_chunks.npz; releases "
                               "made before streaming lack it): download it, or shard it again")
        data = self.client.get_all(file_source(base, entry.name), MAX_SIDE_FILE)
        if hashlib.sha256(data).hexdigest() != entry.sha256:
            raise MMEarthError(f"{redact(file_source(base, entry.name))}: does not match the manifest's sha256")
        import io

        tables = load_tables(io.BytesIO(data))
        problem = _index_problem(tables, manifest)
        if problem:
            raise MMEarthError(f"{redact(file_source(base, entry.name))}: {problem}")
        self._extra = tables.pop("__extra__", None) or {}
        cache = Path(cache_dir) if cache_dir is not None else None
        self.source = RemoteSource([file_source(base, f.name) for f in manifest.shards], self.client,
                                   ChunkCache(cache / "chunks", cache_size) if cache is not None and cache_size > 0
                                   else None, None, versions=[f.sha256 for f in manifest.shards])
        self.source._tables = tables
        self._cache: dict = {}
        self._skeleton: Path | None = None

    def side_path(self, kind: str) -> Url:
        from .releases import file_source

        return Url(file_source(self._base, f"{self.stem}_{kind}.json"))

    def tile_index(self) -> bytes:
        """The release's ``<stem>_tiles.parquet`` (checked against the manifest's sha256)."""
        from .releases import file_source

        entry = next((f for f in self.manifest.side_files if f.name == f"{self.stem}_tiles.parquet"), None)
        if entry is None:
            raise MMEarthError(f"{redact(self.h5_path)}: this release has no tile index ({self.stem}_tiles.parquet)")
        url = file_source(self._base, entry.name)
        data = self.client.get_all(url, MAX_SIDE_FILE)
        if hashlib.sha256(data).hexdigest() != entry.sha256:
            raise MMEarthError(f"{redact(url)}: does not match the manifest's sha256")
        return data

    def held_rows(self, f, names: list[str]) -> list[tuple[int, int]]:
        """Rows every dataset in ``names`` has a chunk for (the index says; no shard is opened)."""
        tables = self.source._tables
        have = np.ones(self.manifest.n_tiles, bool)
        for name in names:
            t = tables.get(name)
            if t is None:
                raise MMEarthError(f"{redact(self.h5_path)}: the release has no dataset {name!r}")
            have &= t.sizes > 0
        edges = np.flatnonzero(np.diff(np.concatenate([[0], have.astype(np.int8), [0]])))
        return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]

    def h5(self, **kwargs) -> h5py.File:
        """A local skeleton of the release (each dataset a virtual dataset with its dtype, shape and attributes;
        no data): what the loader checks at start. Its rows are read from the shards, never through it."""
        if self._skeleton is None or not self._skeleton.is_file():
            import shutil
            import tempfile
            import weakref

            tmp = tempfile.mkdtemp(prefix="mmearth-release-")
            weakref.finalize(self, shutil.rmtree, tmp, True)   # gone with this object (and at exit)
            path = Path(tmp) / f"{self.stem}.h5"
            n = self.manifest.n_tiles
            with h5py.File(path, "w", libver=("earliest", "v110")) as h:
                for name, t in self.source._tables.items():
                    if t is None:
                        continue
                    layout = h5py.VirtualLayout(shape=(n, *t.shape), dtype=t.dtype)
                    layout[0:n] = h5py.VirtualSource("remote.h5", name, shape=(n, *t.shape))
                    d = h.create_virtual_dataset(name, layout)
                    for k, v in (self._extra.get("attrs") or {}).get(name, {}).items():
                        d.attrs[k] = v
                for k, v in (self._extra.get("file_attrs") or {}).items():
                    h.attrs[k] = v
            self._skeleton = path
        return h5py.File(self._skeleton, "r")


class Prefetch:
    """An iterable of sample indices that warms the chunk cache ``ahead`` indices in front of its consumer (a
    DataLoader's sampler: it runs in the main process, the workers read from the shared cache). A read-ahead that
    fails is only a miss: the worker reads the sample itself and reports what is wrong."""

    def __init__(self, order, warm, ahead: int, threads: int):
        self.order, self.warm, self.ahead, self.threads = order, warm, max(1, int(ahead)), max(1, int(threads))

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self):
        from collections import deque

        def quietly(i: int) -> None:
            try:
                self.warm(i)
            except Exception:  # noqa: BLE001 - the worker's own read reports it
                pass

        pending: deque = deque()
        with ThreadPoolExecutor(self.threads, thread_name_prefix="mmearth-prefetch") as pool:
            source = iter(self.order)
            for i in source:
                pending.append(int(i))
                if len(pending) > self.ahead:
                    break
            warmed = [pool.submit(quietly, i) for i in list(pending)[1:]]
            while pending:
                yield pending.popleft()
                nxt = next(source, None)
                if nxt is not None:
                    pending.append(int(nxt))
                    warmed.append(pool.submit(quietly, int(nxt)))
                warmed = [f for f in warmed if not f.done()]
            for f in warmed:
                f.cancel()
