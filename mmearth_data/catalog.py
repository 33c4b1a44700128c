"""The MMEarth v001 format as data: ``catalogs/modalities.yaml`` and the label tables, loaded once.

``catalogs/`` sits at the repository root in a checkout and inside the package (``mmearth_data/catalogs``) in a
wheel, so both places are looked up.
"""
from __future__ import annotations

import csv
import functools
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from .errors import MMEarthError

S2_TYPES = ("l1c", "l2a")


@functools.lru_cache(maxsize=1)
def catalog_dir() -> Path:
    """Directory holding the shipped catalogs (inside the installed package, or the checkout's ``catalogs/``)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "catalogs", here.parent / "catalogs"):
        if (candidate / "modalities.yaml").is_file():
            return candidate
    raise MMEarthError(f"catalogs not found next to {here}: reinstall mmearth-data (pip install .)")


@dataclass(frozen=True)
class DatasetSpec:
    """One HDF5 dataset of the v001 layout (a modality, or the compound ``metadata``)."""

    name: str
    level: str  # "pixel" | "image"
    dtype: np.dtype
    bands: tuple[str, ...]
    channels: int
    task: str  # regression | segmentation | classification | auxiliary
    nodata: float | int | None = None
    nodata_also: tuple[float | int, ...] = ()
    units: object = None
    valid_range: tuple[float, float] | None = None
    stats_keys: tuple[str, ...] = ()
    stats_split_by: str | None = None
    classes: tuple[tuple[int, str], ...] = ()
    lenient_dtypes: tuple[np.dtype, ...] = ()
    source: str = ""
    one_hot: bool = False

    @property
    def is_pixel(self) -> bool:
        return self.level == "pixel"

    def tile_shape(self, tile_px: int) -> tuple[int, ...]:
        return (self.channels, tile_px, tile_px) if self.is_pixel else (self.channels,)

    @property
    def missing_values(self) -> tuple[float | int, ...]:
        vals = () if self.nodata is None else (self.nodata,)
        return vals + self.nodata_also

    def missing_values_in(self, dtype: np.dtype, nodata: float | int | None = None) -> list[float | int]:
        """The stored values that mean no-data in an array of ``dtype``, non-finite floats aside (always
        no-data). ``nodata`` overrides the catalog value (a file's own ``nodata`` attribute wins)."""
        values = list(self.missing_values)
        if nodata is not None and nodata not in values:
            values[0:1] = [nodata]
        return [v for v in values if not (isinstance(v, float) and not math.isfinite(v))
                and not (np.dtype(dtype).kind in "ui" and not _representable(v, np.dtype(dtype)))]

    def missing_mask(self, arr: np.ndarray, nodata: float | int | None = None) -> np.ndarray | None:
        """Boolean mask of no-data entries, or None where the dataset has no no-data convention."""
        mask = ~np.isfinite(arr) if arr.dtype.kind == "f" else None
        for v in self.missing_values_in(arr.dtype, nodata):
            m = arr == v
            mask = m if mask is None else (mask | m)
        return mask

    def class_lut(self) -> np.ndarray:
        """Lookup table stored code -> class index (int64), -1 for no-data and unknown codes."""
        lut = np.full(max(256, max((c for c, _ in self.classes), default=0) + 1), -1, dtype=np.int64)
        for idx, (code, _) in enumerate(self.classes):
            lut[code] = idx
        return lut

    def stats_key(self, s2_type: str | None) -> str | None:
        """The band_stats key for a tile of ``s2_type`` (None when the dataset has no statistics)."""
        if not self.stats_keys:
            return None
        if self.stats_split_by:
            return f"{self.name}_{s2_type}"
        return self.stats_keys[0]


def _representable(value: float | int, dtype: np.dtype) -> bool:
    info = np.iinfo(dtype)
    return float(value).is_integer() and info.min <= value <= info.max


@dataclass(frozen=True)
class FormatSpec:
    format_version: str
    tile_px: tuple[int, ...]
    datasets: dict[str, DatasetSpec]
    metadata_dtype: np.dtype
    s2_types: tuple[str, ...] = field(default=S2_TYPES)

    @property
    def names(self) -> list[str]:
        return list(self.datasets)


def _to_number(v):
    return float(v) if isinstance(v, float) else v


@functools.lru_cache(maxsize=1)
def load_spec() -> FormatSpec:
    """Parse ``catalogs/modalities.yaml`` into :class:`FormatSpec`."""
    path = catalog_dir() / "modalities.yaml"
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    datasets = {}
    for name, d in raw["datasets"].items():
        classes = tuple((int(c), str(n)) for c, n in d.get("classes", []))
        bands = tuple(d["bands"])
        channels = int(d.get("channels", len(bands)))
        stats = d.get("stats") or {}
        datasets[name] = DatasetSpec(
            name=name,
            level=d["level"],
            dtype=np.dtype(d["dtype"]),
            bands=bands,
            channels=channels,
            task=d["task"],
            nodata=_to_number(d.get("nodata")),
            nodata_also=tuple(_to_number(v) for v in d.get("nodata_also", [])),
            units=d.get("units"),
            valid_range=tuple(d["valid_range"]) if "valid_range" in d else None,
            stats_keys=tuple(stats.get("keys", [])),
            stats_split_by=stats.get("split_by"),
            classes=classes,
            lenient_dtypes=tuple(np.dtype(t) for t in d.get("lenient_dtypes", [])),
            source=d.get("source", ""),
            one_hot=d.get("units") == "one-hot",
        )
    meta = np.dtype([(n, t) for n, t in raw["metadata"]["dtype"]])
    return FormatSpec(
        format_version=raw["format_version"],
        tile_px=tuple(raw["tile_px"]),
        datasets=datasets,
        metadata_dtype=meta,
        s2_types=tuple(raw["metadata"]["s2_types"]),
    )


def _read_csv(name: str) -> list[dict[str, str]]:
    with open(catalog_dir() / "labels" / name, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@functools.lru_cache(maxsize=1)
def biome_table() -> list[dict]:
    """The 14 biomes: MMEarth class ``index`` (0..13), RESOLVE ``biome_num``, ``name``, ``n_ecoregions``."""
    return [
        {"index": int(r["index"]), "biome_num": int(r["biome_num"]), "name": r["name"],
         "n_ecoregions": int(r["n_ecoregions"])}
        for r in _read_csv("biomes.csv")
    ]


@functools.lru_cache(maxsize=1)
def ecoregion_table() -> list[dict]:
    """The 846 ecoregions: MMEarth ``index`` (0..845), RESOLVE ``eco_id``, ``name``, biome index/num, realm."""
    return [
        {"index": int(r["index"]), "eco_id": int(r["eco_id"]), "name": r["name"],
         "biome_index": int(r["biome_index"]), "biome_num": int(r["biome_num"]), "realm": r["realm"]}
        for r in _read_csv("ecoregions.csv")
    ]
