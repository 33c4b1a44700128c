"""What every recipe shares: the per-tile context, the result type, the source map, dtype/nodata conversion.

A recipe knows science (collections, temporal rule relative to the S2 date, resampling, derived bands, reducers);
the backend it is handed knows transport. Output dtypes and no-data values come from ``catalogs/modalities.yaml``.
"""
from __future__ import annotations

import datetime as dt
import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import yaml

from mmearth_data.catalog import DatasetSpec, catalog_dir, load_spec
from mmearth_data.errors import MMEarthError

from ..faults import Attempts
from ..grid import TileGrid
from ..items import Item


@dataclass(frozen=True)
class Source:
    """One logical source in one backend: its collection id, band-name map and property names."""

    key: str
    collection: str
    bands: dict[str, str]
    properties: dict[str, str]

    def band(self, name: str) -> str:
        return self.bands[name]

    def prop(self, name: str) -> str:
        return self.properties[name]


@functools.lru_cache(maxsize=8)
def load_sources(backend: str = "local") -> dict[str, Source]:
    path = catalog_dir() / "sources" / f"{backend}.yaml"
    if not path.is_file():
        raise MMEarthError(f"no source map for backend {backend!r} ({path} is missing)")
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    return {k: Source(k, v["collection"], dict(v.get("bands", {})), dict(v.get("properties", {})))
            for k, v in raw.items() if isinstance(v, dict) and "collection" in v}


def stable_seed(*parts: object) -> int:
    """A 64-bit seed from stable keys (never from time, pid or dict order)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def tile_rng(seed: int, tile_id: str, purpose: str) -> np.random.Generator:
    return np.random.default_rng(stable_seed(seed, tile_id, purpose))


@dataclass
class TileContext:
    """Everything a recipe may use about one tile. ``grid`` and the S2 fields are set by the Sentinel-2 recipe."""

    tile_id: str
    lon: float
    lat: float
    utm_epsg: int
    biome: int
    eco_region: int
    tile_px: int
    seed: int
    backend: Any
    sources: dict[str, Source]
    grid: TileGrid | None = None
    s2_date: dt.datetime | None = None
    s2_type: str | None = None
    attempts: dict[str, Attempts] = field(default_factory=dict)

    def counter(self, recipe: str) -> Attempts:
        return self.attempts.setdefault(recipe, Attempts())

    def read(self, recipe: str, item: Item, bands: Sequence[str], resampling: str,
             grid: TileGrid | None = None) -> np.ndarray:
        return self.backend.read(item, bands, grid or self.grid, resampling, attempts=self.counter(recipe))

    def search(self, source: str, start: dt.datetime | None, end: dt.datetime | None,
               filters: dict | None = None, bbox: Sequence[float] | None = None) -> list[Item]:
        """Items of the logical ``source`` over ``bbox`` (default: the tile grid's lon/lat bounds)."""
        src = self.sources[source]
        return self.backend.search(src.collection, bbox or self.grid.bbox_lonlat(), start, end, filters)

    def read_native(self, recipe: str, item: Item, bands: Sequence[str], margin_px: int = 2):
        """Bands on the source's own grid over the tile (for derived bands computed before resampling)."""
        return self.backend.read_native(item, bands, self.grid, margin_px, attempts=self.counter(recipe))


@dataclass
class RecipeResult:
    arrays: dict[str, np.ndarray]
    source_ids: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)   # keys merged into the tile's tile_info
    bands: dict[str, Any] = field(default_factory=dict)  # entries of tile_info["BANDS"]
    message: str = ""


def spec(name: str) -> DatasetSpec:
    return load_spec().datasets[name]


def nodata_array(name: str, tile_px: int) -> np.ndarray:
    s = spec(name)
    return np.full(s.tile_shape(tile_px), s.nodata, dtype=s.dtype)


def to_dataset(name: str, values: np.ndarray) -> np.ndarray:
    """Float values (NaN = missing) to the dataset's dtype: rounded, clipped to its valid range, no-data filled."""
    s = spec(name)
    out_dtype = s.dtype
    v = np.asarray(values, dtype=np.float32)
    missing = ~np.isfinite(v)
    if out_dtype.kind == "f":
        out = v.astype(out_dtype, copy=True)
        out[missing] = s.nodata
        return out
    lo, hi = s.valid_range if s.valid_range else (np.iinfo(out_dtype).min, np.iinfo(out_dtype).max)
    out = np.clip(np.rint(np.where(missing, lo, v)), lo, hi).astype(out_dtype)
    out[missing] = s.nodata
    return out


def day_start(d: dt.date) -> dt.datetime:
    return dt.datetime(d.year, d.month, d.day, tzinfo=dt.timezone.utc)


def day_end(d: dt.date) -> dt.datetime:
    return dt.datetime(d.year, d.month, d.day, 23, 59, 59, 999999, tzinfo=dt.timezone.utc)


def first_valid(stack: Sequence[np.ndarray]) -> np.ndarray:
    """Mosaic: each pixel from the first layer that has data there (items are in id order: deterministic)."""
    out = stack[0].copy()
    for layer in stack[1:]:
        hole = np.isnan(out)
        if not hole.any():
            break
        out[hole] = layer[hole]
    return out
