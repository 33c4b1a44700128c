"""Find and open a v001 dataset directory: ``<stem>.h5`` plus its three JSON side files."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import h5py
import numpy as np

from .chunks import open_source, virtual_spans
from .errors import MMEarthError, one_line
from .writer import SIDE_FILES, side_path

SIDE_FILE_SHAPES = {"tile_info": "keyed by tile_id", "band_stats": "keyed by modality", "manifest": "(a release manifest)",
                    "splits": "with train/val/test lists"}
#: Every allocated chunk costs at least its 8-byte address in the chunk index: rows a file's size cannot back
#: are not stored, whatever the header declares.
MIN_CHUNK_BYTES = 8


class SideFiles:
    """The three JSON side files of a dataset, parsed on first access; a subclass says where their bytes are and
    declares its kind in ``remote`` and ``is_release`` (what the loader and the tile index ask)."""

    #: Read over the network: ``source`` (a :class:`mmearth_data.streaming.RemoteSource`) fetches its chunks.
    remote: ClassVar[bool] = False
    #: A streamed release: ``held_rows()`` says which rows its shards hold and ``tile_index()`` returns its own
    #: ``<stem>_tiles.parquet``.
    is_release: ClassVar[bool] = False
    _cache: dict

    def _side_bytes(self, kind: str) -> tuple[object, bytes]:
        """(where, for messages; the bytes) of side file ``kind``."""
        raise NotImplementedError

    def _json(self, kind: str):
        if kind not in self._cache:
            where, data = self._side_bytes(kind)
            self._cache[kind] = parse_side_file(where, kind, data)
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


@dataclass
class MMEarthFiles(SideFiles):
    """The files of one v001 dataset; JSON side files are parsed on first access."""

    h5_path: Path
    stem: str
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def directory(self) -> Path:
        return self.h5_path.parent

    def side_path(self, kind: str) -> Path:
        return side_path(self.directory, self.stem, kind)

    def _side_bytes(self, kind: str) -> tuple[object, bytes]:
        path = self.side_path(kind)
        if not path.is_file():
            raise MMEarthError(f"{path}: missing; a v001 dataset needs <stem>_{kind}.json beside {self.h5_path.name}")
        return path, path.read_bytes()

    def h5(self, **kwargs) -> h5py.File:
        """Open the HDF5 file read-only (the caller closes it)."""
        try:
            return h5py.File(self.h5_path, "r", **kwargs)
        except OSError as e:
            raise MMEarthError(f"{self.h5_path}: cannot be opened as HDF5 ({e})") from None


def parse_side_file(where: object, kind: str, data: bytes) -> dict:
    """A JSON side file's object; anything else is one line naming ``where`` (a path or a redacted URL)."""
    try:
        obj = json.loads(data.decode("utf-8"))
    except RecursionError:
        raise MMEarthError(f"{where}: not valid JSON (nested too deeply)") from None
    except ValueError as e:   # JSONDecodeError, UnicodeDecodeError, an integer of thousands of digits
        raise MMEarthError(f"{where}: not valid JSON ({one_line(e, 200)})") from None
    if not isinstance(obj, dict):
        raise MMEarthError(f"{where}: holds a JSON {type(obj).__name__}; v001 expects an object "
                           f"{SIDE_FILE_SHAPES[kind]}")
    return obj


def stored_rows(d: h5py.Dataset, exact: bool = True) -> list[tuple[int, int]]:
    """The row ranges ``[start, stop)`` of ``d`` that its file(s) really store, merged and sorted.

    A header may declare billions of rows in a few KB (a sparse file, a forged release manifest); whatever reads
    every row, or allocates per row, must first compare the declaration with this. Contiguous data: its allocated
    bytes; chunks: allocated chunks x rows per chunk; a virtual dataset (a release): the rows its sources hold,
    checked against each source (MMEarthError where a source holds fewer than mapped). ``exact=False`` skips the
    walk of the chunk index or the opening of every shard when the files' sizes can back every declared row
    (:data:`MIN_CHUNK_BYTES` per row), so opening the files v001 writes stays O(1)."""
    n = d.shape[0] if d.shape else 0
    if n == 0:
        return []
    if d.is_virtual:
        spans = virtual_spans(d)
        if exact or not _sizes_back(d, spans):
            for span in spans:
                open_source(d, span)[0].close()
        return _merged((a, min(b, n)) for a, b, _, _ in spans if a < n)
    layout = d.id.get_create_plist().get_layout()
    if layout == h5py.h5d.COMPACT:   # in the object header: at most 64 KB, all of it stored
        return [(0, n)]
    if layout == h5py.h5d.CONTIGUOUS:
        row_bytes = max(1, d.dtype.itemsize * int(np.prod(d.shape[1:], dtype=np.int64)))
        return _merged([(0, min(n, d.id.get_storage_size() // row_bytes))])
    per_chunk = d.chunks[0]
    if not exact and per_chunk == 1 and n * MIN_CHUNK_BYTES <= d.file.id.get_filesize():
        return [(0, n)]
    return _merged([(0, min(n, d.id.get_num_chunks() * per_chunk))])


def _sizes_back(d: h5py.Dataset, spans: list) -> bool:
    """Whether the source files of ``spans`` are large enough to hold every row mapped onto them."""
    base = Path(d.file.filename).parent
    total = 0
    for name in {s[2] for s in spans}:
        try:
            total += (Path(name) if Path(name).is_absolute() else base / name).stat().st_size
        except OSError:
            return False
    return sum(b - a for a, b, _, _ in spans) * MIN_CHUNK_BYTES <= total


def _merged(ranges) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for a, b in sorted(r for r in ranges if r[1] > r[0]):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def covered(ranges: list[tuple[int, int]]) -> int:
    """Rows in merged ``ranges``."""
    return sum(b - a for a, b in ranges)


def open_dataset(path: str | os.PathLike, **remote):
    """Locate a v001 dataset from its directory or its ``.h5`` file, or a URL of its ``.h5`` (``https://``,
    ``s3://``, ``gs://``; ``remote``: :class:`mmearth_data.streaming.RemoteFiles` options).

    A directory must hold exactly one ``*.h5`` (hidden ``.partial`` files of an unfinished write are ignored).
    """
    from .remote import is_remote

    if is_remote(path):
        from .streaming import RemoteFiles, RemoteRelease

        is_manifest = str(path).split("?", 1)[0].endswith("manifest.json")
        return (RemoteRelease if is_manifest else RemoteFiles)(str(path), **remote)
    p = Path(path)
    if p.is_dir():
        found = sorted(x for x in p.glob("*.h5") if not x.name.startswith("."))
        if not found:
            unfinished = list(p.glob(".*.partial"))
            hint = " (an unfinished write left a .partial file)" if unfinished else ""
            raise MMEarthError(f"{p}: no .h5 file in this directory{hint}")
        if len(found) > 1:
            raise MMEarthError(f"{p}: holds several .h5 files ({', '.join(x.name for x in found)}); pass one file")
        p = found[0]
    elif not p.exists():
        raise MMEarthError(f"{p}: no such file or directory")
    elif p.suffix != ".h5":
        raise MMEarthError(f"{p}: expected a dataset directory or a .h5 file")
    return MMEarthFiles(h5_path=p, stem=p.stem)


__all__ = ["MMEarthFiles", "open_dataset", "stored_rows", "covered", "SIDE_FILES"]
