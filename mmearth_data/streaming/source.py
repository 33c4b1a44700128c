"""Byte ranges of remote ``.h5`` file(s): fetched concurrently, coalesced, checked and cached; and one dataset's
rows read through them."""
from __future__ import annotations

import hashlib
import os
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import h5py
import numpy as np

from ..chunks import decode_raw
from ..errors import MMEarthError, redact
from ..remote import Client, RemoteFile, Stat
from .cache import ChunkCache
from .chunk_index import ChunkTable, chunk_table, load_tables, save_tables

FETCH_THREADS = 32          # ranged requests in flight per process: a shuffled batch is ~13 per sample
COALESCE_GAP = 0           # only ranges that touch are merged: no byte is read that no sample needs


def without_query(url: str) -> str:
    return urlunparse(urlparse(url)._replace(query="", fragment=""))


class RemoteSource:
    """Remote ``.h5`` file(s) (one, or a release's shards): a fetcher of byte ranges, concurrent, coalesced per
    file, checked against CRC32s where known, cached. ``versions``: what names each file's current content (a
    shard's sha256 from its manifest; else asked of the server: size and ETag)."""

    def __init__(self, urls: list[str], client: Client, cache: ChunkCache | None, index_dir: Path | None,
                 threads: int = FETCH_THREADS, versions: list[str] | None = None):
        self.urls, self.client, self.cache, self.index_dir, self.threads = urls, client, cache, index_dir, threads
        self._versions = versions
        #: a server that sends no ETag or Last-Modified cannot say a file is unchanged (one replaced by another of
        #: the same size would be served from the old chunks): its chunks and index are cached for this run only
        self._run = uuid.uuid4().hex
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
        versions = self._versions or [f"{self.stat.size}|{self.stat.version or 'run ' + self._run}"]
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
