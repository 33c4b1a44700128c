"""Write a dataset directory in the MMEarth v001 layout, tile batch by tile batch.

Layout (MMEarth v001 as published by Nedungadi et al. 2024; see docs/format.md): ``<stem>.h5`` with every dataset of ``catalogs/modalities.yaml``
chunked one tile per chunk and gzip-compressed (shuffle optional: both filters are built into every HDF5 reader),
plus ``<stem>_tile_info.json``, ``<stem>_band_stats.json`` and ``<stem>_splits.json``. Self-description goes into
HDF5 attributes only. The HDF5 file is written under a hidden ``.partial`` name and renamed last, after the JSON
files, so an interrupted write never leaves a complete-looking dataset.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import h5py
import numpy as np

from . import __version__
from .catalog import DatasetSpec, FormatSpec, load_spec
from .errors import MMEarthError
from .io_utils import atomic_write_json, fsync_file, partial_path
from .stats import BandStats

SIDE_FILES = ("tile_info", "band_stats", "splits")


def stem_problem(stem: str) -> str | None:
    """Why ``stem`` cannot name a dataset (``<stem>.h5`` and its sidecars beside it), or None: a plain file stem."""
    if not stem or stem in (".", "..") or stem.startswith(".") or any(c in stem for c in "/\\\0") \
            or any(ord(c) < 32 for c in stem) or len(stem.encode()) > 200:
        return "use a plain file name such as 'data_100k_v001' (no path, no leading dot)"
    return None


def side_path(directory: Path, stem: str, kind: str) -> Path:
    return directory / f"{stem}_{kind}.json"


def default_splits(n: int, seed: int = 0) -> dict[str, list[int]]:
    """v001's default split (all rows in train, shuffled), seeded instead of the original unseeded shuffle."""
    rows = np.random.default_rng(seed).permutation(n)
    return {"train": [int(i) for i in rows], "val": [], "test": []}


def accumulate_stats(stats: dict[str, BandStats], ds: DatasetSpec, arr: np.ndarray, types: np.ndarray,
                     s2_types: Sequence[str]) -> None:
    """Add tiles ``arr`` (N, ...) of dataset ``ds`` to ``stats`` under its band_stats key(s), no-data excluded;
    Sentinel-2 layers are split by each tile's S2 type (``types``)."""
    if not ds.stats_keys:
        return
    groups = [(t, types == t) for t in s2_types] if ds.stats_split_by else [(None, None)]
    for s2, rows in groups:
        part = arr if rows is None else arr[rows]
        if part.shape[0] == 0:
            continue
        key = ds.stats_key(s2)
        if key not in stats:
            stats[key] = BandStats(ds.channels)
        stats[key].update(part, ds.missing_mask(part))


def _attr_value(v):
    if isinstance(v, (list, tuple)):
        return [str(x) for x in v]
    return v


class V001Writer:
    """Append tiles to a new v001 dataset directory; ``close()`` (or leaving the ``with`` block) publishes it.

    Args:
        directory: output directory (created if missing).
        stem: file stem, e.g. ``data_100k_v001``.
        tile_px: tile side in pixels (128 for MMEarth/MMEarth100k, 64 for MMEarth64).
        compression_level: gzip level 0-9 (h5py's default 4 is what v001 used).
        shuffle: add HDF5's byte-shuffle filter before gzip (smaller files, faster reads).
        attrs: extra file-level HDF5 attributes (e.g. ``synthetic=True``, ``config_hash``).
        overwrite: replace an existing dataset with the same stem.
    """

    def __init__(self, directory: str | os.PathLike, stem: str, *, tile_px: int = 128,
                 compression_level: int = 4, shuffle: bool = True, attrs: Mapping | None = None,
                 overwrite: bool = False, spec: FormatSpec | None = None,
                 dataset_attrs: Mapping[str, Mapping] | None = None):
        if stem_problem(stem):
            raise MMEarthError(f"stem {stem!r}: {stem_problem(stem)}")
        if not 0 <= compression_level <= 9:
            raise MMEarthError(f"compression_level {compression_level}: gzip levels are 0..9")
        if tile_px <= 0:
            raise MMEarthError(f"tile_px {tile_px}: must be a positive number of pixels")
        self.spec = spec or load_spec()
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.stem = stem
        self.tile_px = tile_px
        self.compression_level, self.shuffle = compression_level, shuffle
        self.h5_path = self.directory / f"{stem}.h5"
        existing = [p for p in [self.h5_path, *(side_path(self.directory, stem, k) for k in SIDE_FILES)]
                    if p.exists()]
        if existing and not overwrite:
            raise MMEarthError(f"{existing[0]} already exists: choose another output or stem, or overwrite it (--overwrite)")
        self._tmp = partial_path(self.h5_path)
        self._file = h5py.File(self._tmp, "w")
        self._file.attrs["mmearth_format"] = self.spec.format_version
        self._file.attrs["producer"] = f"mmearth-data {__version__}"
        self._file.attrs["tile_px"] = tile_px
        for k, v in (attrs or {}).items():
            self._file.attrs[k] = _attr_value(v)
        comp = {"compression": "gzip", "compression_opts": compression_level} if compression_level else {}
        self._dsets: dict[str, h5py.Dataset] = {}
        for name, ds in self.spec.datasets.items():
            shape = ds.tile_shape(tile_px)
            d = self._file.create_dataset(name, shape=(0, *shape), maxshape=(None, *shape), dtype=ds.dtype,
                                          chunks=(1, *shape), shuffle=shuffle and bool(comp),
                                          track_times=False, **comp)
            self._describe(d, ds)
            for k, v in (dataset_attrs or {}).get(name, {}).items():   # what this build's sources were
                d.attrs[k] = _attr_value(v)
            self._dsets[name] = d
        self._meta = self._file.create_dataset("metadata", shape=(0,), maxshape=(None,),
                                               dtype=self.spec.metadata_dtype, chunks=(1,), track_times=False,
                                               shuffle=shuffle and bool(comp), **comp)
        self._meta.attrs["fields"] = ["tile_id", "S2_type"]
        # tile_info is streamed to disk as tiles arrive (a 1.2M-tile build must not hold it in memory); the bytes
        # are exactly json.dumps(tile_info, indent=4)
        self._ids: set[str] = set()
        self._info_tmp = partial_path(side_path(self.directory, stem, "tile_info"))
        self._info = open(self._info_tmp, "w", encoding="utf-8")
        self._info.write("{")
        self.stats: dict[str, BandStats] = {}
        self.n = 0
        self._closed = False

    @staticmethod
    def _describe(d: h5py.Dataset, ds: DatasetSpec) -> None:
        d.attrs["bands"] = list(ds.bands)
        if ds.nodata is not None:
            d.attrs["nodata"] = np.asarray(ds.nodata, dtype=ds.dtype)
        if ds.units is not None:
            d.attrs["units"] = _attr_value(ds.units)
        d.attrs["task"] = ds.task
        d.attrs["level"] = ds.level
        if ds.source:
            d.attrs["source"] = ds.source
        if ds.classes:
            d.attrs["class_codes"] = np.asarray([c for c, _ in ds.classes], dtype=ds.dtype)
            d.attrs["class_names"] = [n for _, n in ds.classes]

    def _check(self, name: str, arr: np.ndarray, n: int) -> np.ndarray:
        ds = self.spec.datasets[name]
        arr = np.asarray(arr)
        want = (n, *ds.tile_shape(self.tile_px))
        if arr.shape != want:
            raise MMEarthError(f"{name}: got shape {arr.shape}, expected {want} (tiles, *tile shape)")
        if arr.dtype != ds.dtype:
            if not np.can_cast(arr.dtype, ds.dtype, "safe"):
                raise MMEarthError(f"{name}: got dtype {arr.dtype}, expected {ds.dtype}; cast explicitly")
            arr = arr.astype(ds.dtype)
        return arr

    def append(self, arrays: Mapping[str, np.ndarray], tile_info: Sequence[tuple[str, dict]]) -> None:
        """Append a batch of tiles.

        ``arrays`` maps every dataset name of the spec to an array of shape (N, *tile shape);
        ``tile_info`` holds N ``(tile_id, record)`` pairs with at least ``S2_type`` in each record.
        """
        if self._closed:
            raise MMEarthError(f"{self.h5_path}: writer is closed")
        n = len(tile_info)
        missing = [k for k in self.spec.datasets if k not in arrays]
        extra = [k for k in arrays if k not in self.spec.datasets]
        if missing or extra:
            raise MMEarthError(f"tile batch: missing datasets {missing}, unknown datasets {extra}")
        checked = {k: self._check(k, arrays[k], n) for k in self.spec.datasets}
        ids, types = self._register(tile_info)
        start, stop = self.n, self.n + n
        for name, arr in checked.items():
            d = self._dsets[name]
            d.resize(stop, axis=0)
            d[start:stop] = arr
            self._update_stats(name, arr, np.asarray(types))
        self._finish_rows(ids, types, tile_info, start, stop)

    def append_chunks(self, chunks: Mapping[str, Sequence[bytes]], tile_info: Sequence[tuple[str, dict]],
                      stats: Mapping[str, BandStats] | None = None) -> None:
        """Append tiles whose chunks were already encoded with :func:`~mmearth_data.chunks.encode_chunk`
        (shuffle + deflate at this writer's settings), e.g. by parallel workers; ``stats`` are their merged
        band statistics (the arrays are not seen here)."""
        if self._closed:
            raise MMEarthError(f"{self.h5_path}: writer is closed")
        if not self.shuffle or not self.compression_level:
            raise MMEarthError("append_chunks needs a writer with gzip and shuffle (the chunks are pre-encoded)")
        missing = [k for k in self.spec.datasets if len(chunks.get(k, ())) != len(tile_info)]
        if missing:
            raise MMEarthError(f"tile batch: datasets {missing} lack one chunk per tile")
        ids, types = self._register(tile_info)
        start, stop = self.n, self.n + len(ids)
        for name in self.spec.datasets:
            d = self._dsets[name]
            d.resize(stop, axis=0)
            tail = (0,) * (d.ndim - 1)
            for row, data in zip(range(start, stop), chunks[name]):
                d.id.write_direct_chunk((row, *tail), data, filter_mask=0)
        self._finish_rows(ids, types, tile_info, start, stop)
        for key, st in (stats or {}).items():
            self.stats.setdefault(key, BandStats(st.channels)).merge(st)

    def _register(self, tile_info: Sequence[tuple[str, dict]]) -> tuple[list[str], list[str]]:
        ids, types = [], []
        for tid, rec in tile_info:
            tid = str(tid)
            s2 = rec.get("S2_type")
            if s2 not in self.spec.s2_types:
                raise MMEarthError(f"tile {tid}: S2_type {s2!r} is not one of {self.spec.s2_types}")
            if tid in self._ids or tid in ids:
                raise MMEarthError(f"tile {tid}: tile_id written twice")
            if not tid or len(tid.encode()) > self.spec.metadata_dtype["tile_id"].itemsize:
                raise MMEarthError(f"tile {tid!r}: tile_id must be 1..100 bytes")
            ids.append(tid)
            types.append(s2)
        return ids, types

    def _finish_rows(self, ids, types, tile_info, start: int, stop: int) -> None:
        meta = np.empty(stop - start, dtype=self.spec.metadata_dtype)
        meta["tile_id"] = [t.encode() for t in ids]
        meta["S2_type"] = [t.encode() for t in types]
        self._meta.resize(stop, axis=0)
        self._meta[start:stop] = meta
        for tid, (_, rec) in zip(ids, tile_info):
            entry = json.dumps({tid: dict(rec)}, indent=4)[2:-2]   # '    "id": {...}' without the outer braces
            self._info.write(("," if self._ids else "") + "\n" + entry)
            self._ids.add(tid)
        self.n = stop

    def _update_stats(self, name: str, arr: np.ndarray, types: np.ndarray) -> None:
        accumulate_stats(self.stats, self.spec.datasets[name], arr, types, self.spec.s2_types)

    def band_stats(self) -> dict[str, dict[str, list[float]]]:
        return {k: self.stats[k].to_json() for k in sorted(self.stats)}

    def close(self, splits: Mapping[str, Sequence[int]] | None = None, *, split_seed: int = 0) -> Path:
        """Write the JSON side files, then rename the HDF5 into place. Returns the ``.h5`` path."""
        if self._closed:
            return self.h5_path
        if self.n == 0:
            self.abort()
            raise MMEarthError(f"{self.h5_path}: no tiles were written; nothing to publish")
        splits = {k: [int(i) for i in v] for k, v in (splits or default_splits(self.n, split_seed)).items()}
        for key, rows in splits.items():
            bad = [i for i in rows if not 0 <= i < self.n]
            if bad:
                self.abort()
                raise MMEarthError(f"splits[{key!r}]: row {bad[0]} is outside 0..{self.n - 1}")
        self._file.close()
        self._closed = True
        self.h5_path.unlink(missing_ok=True)  # an overwritten dataset must not pair old .h5 with new JSON...
        self._drop_derived()                  # ...nor the new .h5 with the old one's tile index or card
        self._info.write("\n}" if self._ids else "}")
        self._info.flush()
        os.fsync(self._info.fileno())
        self._info.close()
        os.replace(self._info_tmp, side_path(self.directory, self.stem, "tile_info"))
        atomic_write_json(side_path(self.directory, self.stem, "band_stats"), self.band_stats())
        atomic_write_json(side_path(self.directory, self.stem, "splits"), splits)
        fsync_file(self._tmp)
        os.replace(self._tmp, self.h5_path)
        return self.h5_path

    def _drop_derived(self) -> None:
        """Remove what was derived from a dataset this one replaces (``<stem>_tiles.parquet``, our README.md card):
        ``pack`` writes them anew after the rename, and a kill in between must leave none that describes other
        tiles (a loader's ``tiles=`` selects rows by the index)."""
        from .card import drop_card
        from .tile_index import index_path

        index_path(self.directory, self.stem).unlink(missing_ok=True)
        drop_card(self.directory)

    def abort(self) -> None:
        """Drop everything written so far (the final names are never touched)."""
        if not self._closed:
            self._file.close()
            self._closed = True
        if not self._info.closed:
            self._info.close()
        self._tmp.unlink(missing_ok=True)
        self._info_tmp.unlink(missing_ok=True)

    def __enter__(self) -> "V001Writer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
