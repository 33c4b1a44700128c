"""``MMEarthDataset``: a PyTorch dataset over a v001 directory (ours or the published MMEarth releases).

Source: Nedungadi et al., "MMEarth: Exploring Multi-Modal Pretext Tasks For Geospatial Representation Learning",
ECCV 2024; format as published in ``vishalned/MMEarth-data`` and read by ``vishalned/MMEarth-train``.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from .catalog import load_spec
from .chunks import TileReader, VirtualTileReader, tile_reader
from .errors import MMEarthError
from .reader import open_dataset
from .shards import release_rows
from .transforms import ModalityTransform

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
        crop: centre-crop pixel modalities to ``crop`` x ``crop`` (e.g. 64 on a 128 px file).
        decode_threads: threads that inflate and transform pixel modalities of one item in parallel (libdeflate
            and NumPy release the GIL). Default: up to 2 in the main process, 1 inside DataLoader workers,
            which already run in parallel.

    The HDF5 file is opened lazily once per process (so ``DataLoader(num_workers>0)`` is safe) and each item
    reads one chunk per requested modality, inflated with libdeflate where the layout allows.
    """

    def __init__(self, root, split: str = "train", modalities: Sequence[str] | Mapping[str, Sequence[str] | None]
                 | None = None, normalize: bool = True, crop: int | None = None,
                 decode_threads: int | None = None):
        self.files = open_dataset(root)
        self.spec = load_spec()
        self.split = split
        with self.files.h5() as f:
            n = f["metadata"].shape[0] if "metadata" in f else 0
            present = [k for k in self.spec.datasets if k in f]
            if modalities is None:
                modalities = [m for m in MPMAE_MODALITIES if m in present]
            if not isinstance(modalities, Mapping):
                modalities = {m: None for m in modalities}
            for m in modalities:
                if m not in self.spec.datasets:
                    raise MMEarthError(f"modality {m!r} is not part of the v001 layout; known: {self.spec.names}")
                if m not in present:
                    raise MMEarthError(f"{self.files.h5_path}: has no dataset {m!r}")
            nodata = {m: (np.asarray(f[m].attrs["nodata"]).item() if "nodata" in f[m].attrs else None)
                      for m in modalities}
            tile_px = next((f[m].shape[-1] for m in present if self.spec.datasets[m].is_pixel), None)
            held = release_rows(f, list(modalities))   # a partial download of a sharded release: only its rows
        if crop is not None and (tile_px is None or not 0 < crop <= tile_px):
            raise MMEarthError(f"crop={crop}: must be between 1 and the tile size ({tile_px} px)")
        if split == "all":
            self.rows = np.arange(n, dtype=np.int64)
        else:
            splits = self.files.splits
            if split not in splits:
                raise MMEarthError(f"split {split!r} not in {self.files.side_path('splits')} "
                                   f"(has {sorted(splits)}; or use 'all')")
            self.rows = np.asarray(splits[split], dtype=np.int64)
            if self.rows.size and (self.rows.min() < 0 or self.rows.max() >= n):
                raise MMEarthError(f"{self.files.side_path('splits')}: split {split!r} has rows outside 0..{n - 1}")
        if held is not None:
            self.rows = self.rows[np.isin(self.rows, held)]
        band_stats = self.files.band_stats if normalize else None
        self.modalities = list(modalities)
        self.transforms = {
            m: ModalityTransform(self.spec.datasets[m], None if bands is None else list(bands),
                                 band_stats=band_stats, nodata=nodata[m], crop=crop)
            for m, bands in modalities.items()
        }
        self.decode_threads = decode_threads
        self._pixel = [m for m in self.modalities if self.spec.datasets[m].is_pixel]
        self._h5 = None
        self._readers: dict[str, TileReader | VirtualTileReader] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def _open(self) -> None:
        if self._h5 is None or self._pid != os.getpid():
            self._h5 = self.files.h5()
            self._readers = {m: tile_reader(self._h5[m]) for m in self.modalities}
            self._meta = tile_reader(self._h5["metadata"])
            self._pid = os.getpid()
            threads = self.decode_threads
            if threads is None:
                threads = 1 if get_worker_info() is not None else min(2, os.cpu_count() or 1, len(self._pixel))
            self._pool = ThreadPoolExecutor(threads, thread_name_prefix="mmearth-decode") if threads > 1 else None

    def _ids(self, row: int) -> tuple[str, str]:
        """(tile_id, S2_type) of an HDF5 row, whatever the compound's field names (torchgeo says meta_id)."""
        self._open()
        tile_id, s2_type = (bytes(v).decode() for v in self._meta.read(row).tolist()[:2])
        return tile_id, s2_type

    def read_raw(self, row: int) -> tuple[str, str, dict[str, np.ndarray]]:
        """Stored values of one HDF5 row: (tile_id, S2_type, {modality: array})."""
        tile_id, s2_type = self._ids(row)
        return tile_id, s2_type, {m: self._readers[m].read(row) for m in self.modalities}

    def _decode(self, m: str, fetched, s2_type: str) -> torch.Tensor:
        return torch.from_numpy(self.transforms[m](self._readers[m].decode(fetched), s2_type))

    def __getitem__(self, idx: int) -> dict:
        if not -len(self) <= idx < len(self):
            raise IndexError(f"index {idx} out of range for {len(self)} samples")
        row = int(self.rows[idx])
        tile_id, s2_type = self._ids(row)
        fetched = {m: self._readers[m].fetch(row) for m in self.modalities}  # h5py serializes these anyway
        futures = {}
        if self._pool is not None:
            futures = {m: self._pool.submit(self._decode, m, fetched[m], s2_type) for m in self._pixel}
        sample: dict = {m: (futures[m].result() if m in futures else self._decode(m, fetched[m], s2_type))
                        for m in self.modalities}
        sample["id"] = tile_id
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
