"""A release (``mmearth-data shard``) streamed from its ``manifest.json``: one chunk index for every shard, with
CRC32s, written by ``shard`` and read here."""
from __future__ import annotations

import hashlib
import os
import zlib
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlparse

import h5py
import numpy as np

from ..errors import MMEarthError, redact
from ..identity import plain
from ..manifest import parse_manifest
from ..reader import parse_side_file
from ..remote import Client, http_url
from .cache import ChunkCache
from .chunk_index import ChunkTable, chunk_table, load_tables, save_tables
from .files import MAX_SIDE_FILE, RemoteFiles, Url
from .source import RemoteSource


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
                attrs.setdefault(name, {key: plain(v) for key, v in h[name].attrs.items()})
                t.filters, t.dtype, t.shape = part.filters, part.dtype, part.shape
                t.offsets[a:b], t.sizes[a:b], t.masks[a:b] = part.offsets, part.sizes, part.masks
                t.files[a:b] = k
                for r in range(b - a):
                    raw.seek(int(part.offsets[r]))
                    t.crcs[a + r] = zlib.crc32(raw.read(int(part.sizes[r])))
        tables[name] = t
    with h5py.File(root / shards[0].name, "r") as first:
        file_attrs = {k: plain(v) for k, v in first.attrs.items() if k != "release"}
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

    is_release: ClassVar[bool] = True

    def __init__(self, url: str, client: Client | None = None, cache_dir: str | os.PathLike | None = None,
                 cache_size: int = 0):
        from ..releases import file_source, release_base

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
        from ..releases import file_source

        return Url(file_source(self._base, f"{self.stem}_{kind}.json"))

    def tile_index(self) -> bytes:
        """The release's ``<stem>_tiles.parquet`` (checked against the manifest's sha256)."""
        from ..releases import file_source

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
