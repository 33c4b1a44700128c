"""``MMEarthDataset``: a PyTorch dataset over a v001 directory (ours or the published MMEarth releases).

Source: Nedungadi et al., "MMEarth: Exploring Multi-Modal Pretext Tasks For Geospatial Representation Learning",
ECCV 2024; format as published in ``vishalned/MMEarth-data`` and read by ``vishalned/MMEarth-train``.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from .catalog import S2_TYPES, DatasetSpec, load_spec
from .chunks import TileReader, VirtualTileReader, tile_reader
from .errors import MMEarthError, redact
from .reader import covered, open_dataset, stored_rows
from .remote import is_remote
from .streaming import StreamTileReader
from .transforms import ModalityTransform, stats_key_in
from .validate import (as_text, dataset_problems, metadata_problems, nan_stats_message, rows_problem, split_array,
                       split_problems, stats_entry_problems, unknown_stat_bands)

if TYPE_CHECKING:   # the tile index needs pyarrow only when a filter is used
    from .tile_index import TileFilter

#: The modalities MP-MAE uses as input and targets (MMEarth-train ``MODALITIES.py``).
MPMAE_MODALITIES = ("sentinel2", "sentinel1", "aster", "canopy_height_eth", "dynamic_world", "esa_worldcover",
                    "biome", "eco_region", "lat", "lon", "month", "era5")


class MMEarthDataset(Dataset):
    """Samples of a v001 dataset as dicts of tensors keyed by modality, plus ``"id"`` (the tile_id string).

    Per modality: continuous values are float32 with no-data as NaN, z-scored with ``band_stats`` when
    ``normalize`` (Sentinel-2 statistics chosen by the tile's ``S2_type``); ``dynamic_world`` and
    ``esa_worldcover`` are int64 class indices (0..8, 0..10) with -1 for no-data; ``biome`` and ``eco_region``
    are int64 class indices; ``lat``/``lon``/``month`` are their (sin, cos) pairs.

    Args:
        root: dataset directory (a plain v001 one or a sharded release's) or its ``.h5`` file (a single file or
            a release's virtual-dataset file); a partial download yields only the rows it holds.
        split: ``"train"``, ``"val"``, ``"test"`` (from ``<stem>_splits.json``) or ``"all"`` (every row).
        modalities: names, or a mapping name -> list of band names (None: all bands); default: the MP-MAE
            modalities present in the file.
        normalize: z-score continuous modalities with ``band_stats``.
        crop: centre-crop pixel modalities to ``crop`` x ``crop`` (e.g. 64 on a 128 px file); without a pixel
            modality there is nothing to crop.
        decode_threads: threads that inflate and transform pixel modalities of one item in parallel (libdeflate
            and NumPy release the GIL). Default: up to 2 in the main process, 1 inside DataLoader workers,
            which already run in parallel.
        cache_dir: a streamed dataset (``root`` a URL of its ``.h5``: ``https://``, ``s3://``, ``gs://``) keeps
            its chunk index here, and the chunks it read, up to ``cache_size`` bytes (a second epoch then reads
            no byte over the network). Without it nothing is kept.
        cache_size: the bound of the chunk cache in bytes.
        stored_dtypes: pixel modalities come in their stored dtype (cropped, bands selected), with ``"s2_type"``
            (0 l1c, 1 l2a); :meth:`batch_transform` then converts a collated batch, on its device, to exactly what
            this dataset returns otherwise: DataLoader workers pass a half to an eighth of the bytes and do less.
        tiles: only these tiles: a list of tile ids, or a filter (a mapping or
            :class:`~mmearth_data.tile_index.TileFilter`: ``bbox`` (west, south, east, north) holding the tile's
            centre, ``biomes`` (indices or names, e.g. ``["forest"]``), ``eco_regions``, ``start``/``end``
            (the Sentinel-2 date), ``split``), e.g. Africa's forests of 2019; read from ``<stem>_tiles.parquet``
            where it exists, else from the side files.

    The HDF5 file is opened lazily once per process (so ``DataLoader(num_workers>0)`` is safe) and each item
    reads one chunk per requested modality, inflated with libdeflate where the layout allows.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", modalities: Sequence[str] | Mapping[str, Sequence[str] | None]
                 | None = None, normalize: bool = True, crop: int | None = None,
                 decode_threads: int | None = None, cache_dir: str | os.PathLike | None = None,
                 cache_size: int = 16 << 30, tiles: Sequence[str] | Mapping[str, Any] | TileFilter | None = None,
                 stored_dtypes: bool = False):
        self.files = open_dataset(root, **({"cache_dir": cache_dir, "cache_size": cache_size}
                                           if is_remote(root) else {}))
        self.spec = load_spec()
        self.split = split
        h5_path = redact(str(self.files.h5_path)) if is_remote(root) else self.files.h5_path   # for messages
        with self.files.h5() as f:
            meta = f.get("metadata")
            if meta is None:
                raise MMEarthError(f"{h5_path}: has no dataset 'metadata' (tile ids and Sentinel-2 types)")
            _refuse(h5_path, "metadata", metadata_problems(meta, self.spec))
            n = meta.shape[0]
            present = [k for k in self.spec.datasets if k in f]
            if modalities is None:
                modalities = [m for m in MPMAE_MODALITIES if m in present]
            if not isinstance(modalities, Mapping):
                modalities = {m: None for m in modalities}
            tile_px = None
            for m in modalities:
                if m not in self.spec.datasets:
                    raise MMEarthError(f"modality {m!r} is not part of the v001 layout; known: {self.spec.names}")
                if m not in present:
                    raise MMEarthError(f"{h5_path}: has no dataset {m!r}")
                _refuse(h5_path, m, dataset_problems(self.spec.datasets[m], f[m]))   # what validate calls errors
                if f[m].shape[0] != n:
                    raise MMEarthError(f"{h5_path}: {m} has {f[m].shape[0]} rows, metadata has {n}")
                if self.spec.datasets[m].is_pixel:
                    if tile_px is not None and f[m].shape[-1] != tile_px:
                        raise MMEarthError(f"{h5_path}: {m} tiles are {f[m].shape[-1]} px, other modalities' {tile_px}")
                    tile_px = f[m].shape[-1]
            nodata = {m: (np.asarray(f[m].attrs["nodata"]).item() if "nodata" in f[m].attrs else None)
                      for m in modalities}
            file_dtypes = {m: f[m].dtype for m in modalities}
            if self.files.remote:   # the chunk index, once, here: workers get it pickled
                self.files.source.tables(f, [*modalities, "metadata"])
            names = [*modalities, "metadata"]
            held = self.files.held_rows(f, names) if self.files.is_release else \
                _held_rows(f, names, h5_path)   # what the file stores, before any allocation
        if crop is not None and (crop < 1 or (tile_px is not None and crop > tile_px)):   # no pixel modality:
            raise MMEarthError(f"crop={crop}: must be between 1 and the tile size ({tile_px} px)")   # nothing to crop
        if split == "all":
            self.rows = np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in held] or [np.zeros(0, np.int64)])
        else:
            splits = self.files.splits
            if split not in splits:
                raise MMEarthError(f"split {split!r} not in {self._side('splits')} "
                                   f"(has {sorted(splits)}; or use 'all')")
            rows = split_array(splits[split])
            if rows is None or rows.size and (rows.min() < 0 or rows.max() >= n):   # validate's check says why
                problems = split_problems(split, splits[split], n, duplicates=False)
                raise MMEarthError(f"{self._side('splits')}: "
                                   f"{(problems or [f'{split!r} must be a list of integer row indices'])[0]}")
            self.rows = _within(rows, held)
        if tiles is not None:
            from .tile_index import select_rows

            self.rows = self.rows[np.isin(self.rows, select_rows(self.files, tiles))]
        band_stats = self.files.band_stats if normalize else None
        self.modalities = list(modalities)
        self.transforms = {}
        self._gaps: dict[str, dict[str | None, tuple[str, np.ndarray]]] = {}
        for m, bands in modalities.items():
            ds = self.spec.datasets[m]
            if band_stats is not None:
                self._gaps[m] = self._check_stats(band_stats, ds, bands)
            self.transforms[m] = ModalityTransform(ds, None if bands is None else list(bands),
                                                   band_stats=band_stats, nodata=nodata[m], crop=crop)
        self._nodata = nodata
        self.decode_threads = decode_threads
        self._pixel = [m for m in self.modalities if self.spec.datasets[m].is_pixel]
        #: the stored tile side in pixels (before ``crop``); None without a pixel modality
        self.tile_px: int | None = tile_px
        #: modalities whose conversion waits for the batch (``stored_dtypes``), and their stored dtypes
        self.deferred = [m for m in self._pixel if self.transforms[m].kind != "classification"] if stored_dtypes \
            else []
        self.stored_dtype = {m: file_dtypes[m] for m in self.deferred}
        self._h5 = None
        self._readers: dict[str, TileReader | VirtualTileReader] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._pid: int | None = None

    def _check_stats(self, band_stats: dict, ds: DatasetSpec, bands) -> dict[str | None, tuple[str, np.ndarray]]:
        """Refuse malformed statistics for ``ds`` now (validate's check), and return, per S2 type, the selected
        bands whose mean/std are not numbers: a tile with valid values there is refused when read."""
        if not ds.stats_keys or ds.classes or ds.one_hot:
            return {}
        gaps = {}
        chosen = np.arange(ds.channels) if bands is None else np.array([ds.bands.index(b) for b in bands
                                                                        if b in ds.bands], dtype=np.int64)
        for s2 in (self.spec.s2_types if ds.stats_split_by else (None,)):
            key = stats_key_in(band_stats, ds, s2)
            if key is None or key not in band_stats:
                continue   # ModalityTransform says which key is missing
            problems = stats_entry_problems(key, band_stats[key], ds.channels)
            if problems:
                raise MMEarthError(f"{self._side('band_stats')}: {problems[0]}")
            unknown = np.intersect1d(np.flatnonzero(unknown_stat_bands(band_stats[key])), chosen)
            if unknown.size:
                gaps[s2] = (key, unknown)
        return gaps

    def _refuse_gaps(self, m: str, raw: np.ndarray, s2_type: str, row: int) -> None:
        """MMEarthError where the statistics of a band are not numbers but this tile has valid values there."""
        ds, stats = self.spec.datasets[m], self.transforms[m].stats
        if ds.stats_split_by:   # the statistics ModalityTransform normalizes this tile with
            s2_type = s2_type if s2_type in stats else next(iter(stats), None)
        gap = self._gaps[m].get(s2_type if ds.stats_split_by else None)
        if gap is None:
            return
        key, bands = gap
        miss = ds.missing_mask(raw[bands], self._nodata[m])
        valid = np.ones(len(bands), bool) if miss is None else ~miss.reshape(len(bands), -1).all(axis=1)
        if valid.any():
            b = int(bands[np.argmax(valid)])
            raise MMEarthError(f"{self._side('band_stats')}: "
                               + nan_stats_message(key, ds, b, f"row {row} of {self.files.h5_path.name}"))

    def _side(self, kind: str) -> str:
        """A side file's path or URL as messages show it (a URL's query redacted: it may be a signature)."""
        return redact(str(self.files.side_path(kind)))

    def __len__(self) -> int:
        return len(self.rows)

    def _open(self) -> None:
        if self._h5 is None or self._pid != os.getpid():
            self._h5 = self.files.h5()
            if self.files.remote:   # one ranged request per modality, from the chunk index
                source = self.files.source
                tables = source.tables(self._h5, [*self.modalities, "metadata"])
                readers = {m: StreamTileReader(m, t, source) if t is not None else tile_reader(self._h5[m])
                           for m, t in tables.items()}
            else:
                readers = {m: tile_reader(self._h5[m]) for m in [*self.modalities, "metadata"]}
            self._meta = readers.pop("metadata")
            self._readers = readers
            self._pid = os.getpid()
            threads = self.decode_threads
            if threads is None:
                threads = 1 if get_worker_info() is not None else min(2, os.cpu_count() or 1, len(self._pixel))
            self._pool = ThreadPoolExecutor(threads, thread_name_prefix="mmearth-decode") if threads > 1 else None

    def _ids(self, row: int, meta=None) -> tuple[str, str]:
        """(tile_id, S2_type) of an HDF5 row, whatever the compound's field names (torchgeo says meta_id)."""
        self._open()
        if meta is None:
            value = self._meta.read(row)
        else:
            value = self._meta.decode(meta, row) if isinstance(self._meta, StreamTileReader) else \
                self._meta.decode(meta)
        tile_id, s2_type = (as_text(v) for v in value.tolist())
        return tile_id, s2_type

    def _fetch_rows(self, rows: list[int]) -> list[dict]:
        """Every requested modality's stored chunk of each row (and ``metadata``'s): the streamed ones of all
        rows in one concurrent round of ranged requests, ranges that touch merged (a batch of neighbouring rows
        reads each modality in one request)."""
        self._open()
        readers = {**self._readers, "metadata": self._meta}
        streamed = [m for m, r in readers.items() if isinstance(r, StreamTileReader)]
        fetched = [{m: r.fetch(row) for m, r in readers.items() if m not in streamed} for row in rows]
        if streamed:
            try:
                data = iter(self.files.source.fetch([readers[m].request(row) for row in rows for m in streamed]))
            except MMEarthError as e:
                where = f"row {rows[0]}" if len(rows) == 1 else f"rows {', '.join(map(str, rows[:4]))}" + \
                    (", ..." if len(rows) > 4 else "")
                raise MMEarthError(f"{where}: {e}") from None
            for row, out in zip(rows, fetched):
                out.update({m: (readers[m].mask(row), next(data)) for m in streamed})
        return fetched

    def read_raw(self, row: int) -> tuple[str, str, dict[str, np.ndarray]]:
        """Stored values of one HDF5 row: (tile_id, S2_type, {modality: array})."""
        tile_id, s2_type = self._ids(row)
        return tile_id, s2_type, {m: self._readers[m].read(row) for m in self.modalities}

    def _decode(self, m: str, fetched, s2_type: str, row: int) -> torch.Tensor:
        reader = self._readers[m]
        raw = reader.decode(fetched, row) if isinstance(reader, StreamTileReader) else reader.decode(fetched)
        if self._gaps.get(m):
            self._refuse_gaps(m, raw, s2_type, row)
        if m in self.deferred:
            return torch.from_numpy(np.array(self.transforms[m].select(raw), dtype=self.stored_dtype[m]))
        return torch.from_numpy(self.transforms[m](raw, s2_type))

    def prefetch(self, order, ahead: int = 64, threads: int = 4):
        """``order`` (a sampler, or any iterable of indices) with a background read-ahead: while the DataLoader
        draws index ``i``, the chunks of the next ``ahead`` indices are fetched into the on-disk chunk cache, where
        the workers find them. For a streamed dataset with ``cache_dir``; pass the result as the DataLoader's
        ``sampler``."""
        if not self.files.remote or self.files.source.cache is None:
            raise MMEarthError("prefetch: only for a streamed dataset with a chunk cache (cache_dir=...)")
        from .streaming import Prefetch

        return Prefetch(order, self._warm, ahead, threads)

    def _warm(self, idx: int) -> None:
        """Fetch the chunks of sample ``idx`` into the chunk cache (nothing decoded)."""
        row = int(self.rows[idx])
        source = self.files.source
        tables = source._tables
        source.fetch([StreamTileReader(m, tables[m], source).request(row) for m in [*self.modalities, "metadata"]
                      if tables.get(m) is not None])

    def batch_transform(self):
        """The module that converts a collated ``stored_dtypes`` batch (see :class:`mmearth_data.batch.Normalize`);
        move it to the batch's device."""
        from .batch import Normalize

        return Normalize(self)

    def _row(self, idx: int) -> int:
        if not -len(self) <= idx < len(self):
            raise IndexError(f"index {idx} out of range for {len(self)} samples")
        return int(self.rows[idx])

    def __getitem__(self, idx: int) -> dict:
        row = self._row(idx)
        return self._sample(row, self._fetch_rows([row])[0])

    def __getitems__(self, indices: list[int]) -> list[dict]:
        """A DataLoader batch: what a streamed dataset fetches for all its samples at once (one round trip for
        the batch instead of one per sample); a local one reads sample by sample (holding a whole batch's chunks
        first only costs it cache)."""
        if not self.files.remote:
            return [self[int(i)] for i in indices]
        rows = [self._row(int(i)) for i in indices]
        return [self._sample(row, fetched) for row, fetched in zip(rows, self._fetch_rows(rows))]

    def _sample(self, row: int, fetched: dict) -> dict:
        """The sample of ``row`` from its fetched chunks (decoded in the decode threads where there are some)."""
        tile_id, s2_type = self._ids(row, fetched.pop("metadata"))
        futures = {}
        if self._pool is not None:
            futures = {m: self._pool.submit(self._decode, m, fetched[m], s2_type, row) for m in self._pixel}
        sample: dict = {m: (futures[m].result() if m in futures else self._decode(m, fetched[m], s2_type, row))
                        for m in self.modalities}
        sample["id"] = tile_id
        if self.deferred:
            sample["s2_type"] = torch.tensor(S2_TYPES.index(s2_type) if s2_type in S2_TYPES else len(S2_TYPES))
        return sample

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()  # never pickle an open HDF5 handle
        state.update(_h5=None, _readers={}, _pool=None, _pid=None)
        state.pop("_meta", None)
        return state

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
        for r in [*self._readers.values(), getattr(self, "_meta", None)]:
            if isinstance(r, VirtualTileReader):
                r.close()
        if self._h5 is not None:
            self._h5.close()
        self._h5, self._readers, self._pool, self._pid = None, {}, None, None


def _refuse(h5_path, name: str, problems: list[tuple[str, str]]) -> None:
    """The first error among validate's ``problems`` for dataset ``name``, as one line."""
    for level, msg in problems:
        if level == "error":
            raise MMEarthError(f"{h5_path}: {name}: {msg}")


def _held_rows(f, names: list[str], h5_path) -> list[tuple[int, int]]:
    """Row ranges stored for every dataset in ``names``: a plain file must store every row it declares; a release
    (virtual datasets) after a partial download holds the rows of the shards present."""
    held: list[tuple[int, int]] | None = None
    for name in names:
        d = f[name]
        ranges = stored_rows(d, exact=False)
        if not d.is_virtual and covered(ranges) < d.shape[0]:
            raise MMEarthError(f"{h5_path}: {name}: {rows_problem(d)}")
        held = ranges if held is None else _intersect(held, ranges)
    return held or []


def _intersect(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if lo < hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def _within(rows: np.ndarray, ranges: list[tuple[int, int]]) -> np.ndarray:
    """``rows`` that fall in one of the sorted, disjoint ``ranges``, in their order."""
    if not ranges or not rows.size:
        return rows[:0]
    if len(ranges) == 1 and ranges[0][0] <= rows.min() and rows.max() < ranges[0][1]:
        return rows   # a plain file, or a complete release
    starts = np.array([a for a, _ in ranges], dtype=np.int64)
    stops = np.array([b for _, b in ranges], dtype=np.int64)
    k = np.searchsorted(starts, rows, side="right") - 1
    return rows[(k >= 0) & (rows < stops[np.maximum(k, 0)])]
