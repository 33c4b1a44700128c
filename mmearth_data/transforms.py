"""Per-modality conversion of a stored tile into what MMEarth's training code consumes (torch-free).

Order matters: no-data -> NaN happens on the stored values, *before* z-scoring (a known reader did it after,
so no-data was never detected). Segmentation maps become class indices with -1 for no-data; one-hot labels
become their class index (-1 if a row is not one-hot).
"""
from __future__ import annotations

import numpy as np

from .catalog import DatasetSpec, S2_TYPES
from .errors import MMEarthError


def stats_key_in(band_stats: dict, ds: DatasetSpec, s2_type: str | None) -> str | None:
    """The band_stats key that normalizes ``ds`` for a tile of ``s2_type``: the split key (e.g.
    ``sentinel2_l2a``), or the unsplit ``ds.name`` where only that is present (third-party files)."""
    key = ds.stats_key(s2_type)
    if key is not None and key not in band_stats and ds.stats_split_by and ds.name in band_stats:
        return ds.name
    return key


def stats_for(band_stats: dict, ds: DatasetSpec, s2_type: str | None) -> dict | None:
    """The band_stats entry that normalizes ``ds`` for a tile of ``s2_type`` (None if absent)."""
    key = stats_key_in(band_stats, ds, s2_type)
    return None if key is None else band_stats.get(key)


class ModalityTransform:
    """Converts one stored tile of dataset ``ds`` (with a chosen band subset) into model-ready values."""

    def __init__(self, ds: DatasetSpec, bands: list[str] | None = None, *, band_stats: dict | None = None,
                 nodata=None, crop: int | None = None):
        self.ds = ds
        self.nodata = nodata
        self.crop = crop if ds.is_pixel else None
        if bands is None or ds.one_hot:
            self.band_idx = None
        else:
            unknown = [b for b in bands if b not in ds.bands]
            if unknown:
                raise MMEarthError(f"{ds.name}: unknown band(s) {unknown}; bands are {list(ds.bands)}")
            self.band_idx = np.array([ds.bands.index(b) for b in bands])
        self.kind = "segmentation" if ds.classes else "classification" if ds.one_hot else "continuous"
        self.lut = ds.class_lut() if ds.classes else None
        self.stats: dict[str | None, tuple[np.ndarray, np.ndarray]] = {}
        if band_stats is not None and self.kind == "continuous":
            for s2 in (S2_TYPES if ds.stats_split_by else (None,)):
                entry = stats_for(band_stats, ds, s2)
                if entry is not None:
                    self.stats[s2] = self._mean_std(entry)
            if ds.stats_keys and not self.stats:
                raise MMEarthError(f"band_stats has no entry for {ds.name} (expected {list(ds.stats_keys)}); "
                                   "pass normalize=False or regenerate the statistics")

    def _mean_std(self, entry: dict) -> tuple[np.ndarray, np.ndarray]:
        mean = np.asarray(entry["mean"], dtype=np.float32)
        std = np.asarray(entry["std"], dtype=np.float32)
        std = np.where(np.isfinite(std) & (std > 0), std, np.float32(1))  # empty or constant band: centre only
        if self.band_idx is not None:
            mean, std = mean[self.band_idx], std[self.band_idx]
        shape = (-1, 1, 1) if self.ds.is_pixel else (-1,)
        return mean.reshape(shape), std.reshape(shape)

    def select(self, raw: np.ndarray) -> np.ndarray:
        """The crop and band selection alone (stored values, stored dtype; a view where possible)."""
        if self.crop is not None:
            h, w = raw.shape[-2:]
            top, left = (h - self.crop) // 2, (w - self.crop) // 2
            raw = raw[..., top:top + self.crop, left:left + self.crop]
        if self.band_idx is not None:
            raw = raw[self.band_idx]
        return raw

    def __call__(self, raw: np.ndarray, s2_type: str | None = None) -> np.ndarray:
        raw = self.select(raw)
        if self.kind == "segmentation":
            return self.lut[raw.astype(np.intp, copy=False)]
        if self.kind == "classification":
            ok = raw.sum(dtype=np.int64) == 1 and raw.max() == 1
            return np.array(int(np.argmax(raw)) if ok else -1, dtype=np.int64)
        x = raw.astype(np.float32)  # always a copy: raw may be a read-only buffer
        missing = self.ds.missing_mask(raw, self.nodata)
        if missing is not None:
            np.copyto(x, np.float32(np.nan), where=missing)
        if self.stats:
            mean, std = self.stats.get(s2_type) or next(iter(self.stats.values()))
            x -= mean
            x /= std
        return x
