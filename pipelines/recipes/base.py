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

from ..faults import Attempts, NoSource
from ..grid import TileGrid
from ..items import Item


@dataclass(frozen=True)
class Source:
    """One logical source on one endpoint: collection id, band-name map, property names, and the conversions that
    bring its values to the v001 units (declared in ``catalogs/sources/<name>.yaml``, applied by :meth:`apply`)."""

    key: str
    collection: str
    bands: dict[str, str]
    properties: dict[str, str]
    select: dict[str, Any] = field(default_factory=dict)      # property == value on every search
    harmonize: dict[str, Any] | None = None                   # the Sentinel-2 BOA offset rule (see :meth:`offset`)
    derive: dict[str, str] = field(default_factory=dict)      # v001 band -> the band it is derived from
    nodata: float | None = None                               # a no-data value the files may not declare
    convert: str | None = None                                # "db": linear power -> 10 log10
    describe: str = ""                                        # the dataset's ``source`` attribute
    also: tuple[str, ...] = ()                                # more collections of the same source (see below)
    same_scene: tuple[str, ...] = ()                          # properties naming one acquisition across them
    valid_nodata: tuple[str, ...] = ()                        # v001 bands whose files' declared no-data is a value
    options: dict[str, Any] = field(default_factory=dict)     # executor-specific keys (e.g. gee's ``kind``)

    @property
    def collections(self) -> tuple[str, ...]:
        """``collection`` then ``also``: searched together, an acquisition listed in several taken from the first
        (Earth Search's Collection 1 lacks Nov 2016 - Nov 2019, which ``sentinel-2-pre-c1-l2a`` fills)."""
        return (self.collection, *self.also)

    def band(self, name: str) -> str:
        return self.bands[name]

    def prop(self, name: str) -> str:
        return self.properties[name]

    def filters(self) -> dict[str, tuple[str, Any]]:
        return {k: ("==", v) for k, v in self.select.items()}

    def one_per_scene(self, items: list[Item]) -> list[Item]:
        """``items`` (sorted by id) without the later collections' copies of an acquisition already found in an
        earlier one: same ``same_scene`` properties, same sensing minute."""
        if not self.also:
            return items
        rank = {c: i for i, c in enumerate(self.collections)}

        def scene(it: Item) -> tuple:
            names = [it.properties.get(p) for p in self.same_scene]
            if it.datetime is None or any(n is None for n in names):
                return ("unnamed", it.collection, it.id)   # never taken for another collection's copy
            return (*map(str, names), it.datetime.strftime("%Y-%m-%dT%H:%M"))

        first: dict[tuple, Item] = {}
        for it in sorted(items, key=lambda it: (rank.get(it.collection, len(rank)), it.id)):
            first.setdefault(scene(it), it)
        kept = {id(it) for it in first.values()}
        return [it for it in items if id(it) in kept]

    def offset(self, item: Item, key: str | None = None) -> float | None:
        """The DN offset to add to this item's spectral band ``key`` (an asset key; default: B4's) to reach
        GEE's harmonized DN: 0 where there is none, None where it cannot be known (the scene is not used).

        ``harmonize`` is one of two rules, each chosen per collection from its real items (issue 26):
        ``{raster_bands: true}``: the asset's own ``raster:bands`` offset / scale (Earth Search Collection 1 and
        pre-Collection 1, whose "data and metadata match", each declaring -0.1 / 0.0001 = -1000 DN);
        ``{property, from, add[, applied, unknown_unless_applied]}``: ``add`` from baseline ``from`` on, unless the
        ``applied`` property is true; with ``unknown_unless_applied`` a scene from ``from`` on whose flag is not
        true is unknown (Earth Search's ``sentinel-2-l2a``: the flag says false where the offset was applied,
        Element84/earth-search#9, #66, #71)."""
        h = self.harmonize
        if not h:
            return 0.0
        if h.get("raster_bands"):
            try:
                ref = item.band(key or self.band("B4"))
                rb = item.assets[ref.asset]["raster:bands"][ref.index - 1]
                return float(rb.get("offset", 0.0)) / float(rb.get("scale", 1.0))
            except (KeyError, IndexError, TypeError, ValueError, ZeroDivisionError, MMEarthError):
                return None
        baseline = item.properties.get(h["property"])
        if baseline is None or _version(str(baseline)) < _version(str(h["from"])):
            return 0.0
        if h.get("applied") and item.properties.get(h["applied"]) is True:
            return 0.0
        if h.get("unknown_unless_applied"):
            return None
        return float(h["add"])

    def apply(self, item: Item | None, values: np.ndarray, spectral: bool = False,
              keys: Sequence[str] | None = None) -> np.ndarray:
        """``values`` (float32, NaN = missing) of one or several (stacked) bands read from ``item`` (their asset
        ``keys``; None: a composite of the source, never ``spectral``), in v001 units. The rules are the source's,
        not a band's: a stack is converted in one pass per rule, not one per band."""
        if self.nodata is not None:
            values[values == self.nodata] = np.nan
        if spectral and self.harmonize:
            values[values == 0] = np.nan   # DN 0 is no-data: it must not become a valid value by the shift
            shifts = [self.offset(item, k) for k in (keys or [None])]
            if any(s is None for s in shifts):
                raise ValueError(f"item {item.id}: its BOA offset is unknown (the scene should not have been chosen)")
            if len(set(shifts)) == 1:
                if shifts[0]:
                    values += shifts[0]
            else:
                values += np.asarray(shifts, np.float32).reshape((-1,) + (1,) * (values.ndim - 1))
        if self.convert == "db":
            with np.errstate(divide="ignore", invalid="ignore"):
                values = np.where(values > 0, 10.0 * np.log10(values), np.nan).astype(np.float32)
        return values


_SOURCE_KEYS = {"collection", "bands", "properties", "select", "harmonize", "derive", "nodata", "convert", "describe",
                "also", "same_scene", "valid_nodata"}


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.replace("N", "").split(".") if p.isdigit())


@dataclass(frozen=True)
class SourceMap:
    """The sources of one endpoint: ``sources`` has the keys it serves, ``absent`` those it has no source for."""

    name: str
    sources: dict[str, Source]
    absent: tuple[str, ...]
    endpoint: dict[str, Any]


def source_map_path(name: str):
    return catalog_dir() / "sources" / f"{name}.yaml"


def source_maps() -> list[str]:
    """Names of the shipped source maps of STAC endpoints (usable as ``--stac-preset``)."""
    names = []
    for p in sorted((catalog_dir() / "sources").glob("*.yaml")):
        endpoint = (yaml.safe_load(p.read_text(encoding="utf-8")) or {}).get("endpoint")
        if endpoint and "executor" not in endpoint:
            names.append(p.stem)
    return sorted(names)


@functools.lru_cache(maxsize=16)
def load_source_map(name: str = "local") -> SourceMap:
    path = source_map_path(name)
    if not path.is_file():
        known = ", ".join(source_maps())
        raise MMEarthError(f"no source map {name!r} ({path} is missing; shipped endpoints: {known})")
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    sources, absent = {}, []
    for k, v in raw.items():
        if k == "endpoint":
            continue
        if v is None:
            absent.append(k)
            continue
        if v.get("also") and not v.get("same_scene"):
            raise MMEarthError(f"{path}: {k} lists more collections (also) without the properties that name one "
                               "acquisition across them (same_scene)")
        sources[k] = Source(k, v["collection"], dict(v.get("bands", {})), dict(v.get("properties", {})),
                            select=dict(v.get("select", {})), harmonize=v.get("harmonize"),
                            derive=dict(v.get("derive", {})), nodata=v.get("nodata"), convert=v.get("convert"),
                            describe=str(v.get("describe", "")).strip(), also=tuple(v.get("also", ())),
                            same_scene=tuple(v.get("same_scene", ())), valid_nodata=tuple(v.get("valid_nodata", ())),
                            options={o: v[o] for o in v if o not in _SOURCE_KEYS})
    return SourceMap(name, sources, tuple(absent), dict(raw.get("endpoint") or {}))


def load_sources(backend: str = "local") -> dict[str, Source]:
    return dict(load_source_map(backend).sources)


def stable_seed(*parts: object) -> int:
    """A 64-bit seed from stable keys (never from time, pid or dict order)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def tile_rng(seed: int, tile_id: str, purpose: str) -> np.random.Generator:
    return np.random.default_rng(stable_seed(seed, tile_id, purpose))


@dataclass(frozen=True)
class S2Rule:
    """A given location's Sentinel-2 time rule: scenes in ``start..end`` (days, inclusive); the one nearest to
    ``target`` when there is one, else MMEarth's seeded choice among them."""

    start: dt.date
    end: dt.date
    target: dt.date | None = None


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
    s2_drawn: str | None = None   # the level the coin flip chose (before any fallback)
    s2_rule: S2Rule | None = None  # given locations: their date or window (None: MMEarth's year rule)
    attempts: dict[str, Attempts] = field(default_factory=dict)

    routes: dict[str, Any] = field(default_factory=dict)   # source key -> (backend, Source) from another backend
    searches: int = 0   # search requests this tile sent (cache hits are free)

    def counter(self, recipe: str) -> Attempts:
        return self.attempts.setdefault(recipe, Attempts())

    def source(self, key: str) -> Source:
        """The logical source ``key`` on this tile's backend (or the one ``--modality-backend`` routed it to)."""
        if key in self.routes:
            return self.routes[key][1]
        try:
            return self.sources[key]
        except KeyError:
            raise NoSource(f"no source for {key} on this backend (name one with --modality-backend)") from None

    def has_source(self, key: str) -> bool:
        return key in self.routes or key in self.sources

    def backend_for(self, key: str):
        return self.routes[key][0] if key in self.routes else self.backend

    def read(self, recipe: str, source: str, item: Item, bands: Sequence[str], resampling: str,
             grid: TileGrid | None = None, harmonize: bool = False) -> np.ndarray:
        """v001 ``bands`` of ``item`` on the tile grid, in v001 units (the source map's conversions applied;
        ``harmonize`` for the Sentinel-2 reflectance bands)."""
        src = self.source(source)
        keys = [src.band(b) for b in bands]
        backend = self.backend_for(source)
        counter = self.counter(recipe)
        grid = grid or self.grid
        kept = [b for b in bands if b in src.valid_nodata]
        if not kept:
            raw = backend.read(item, keys, grid, resampling, attempts=counter)
        else:   # the files' declared no-data is a value of these bands: read them unmasked (the caller masks)
            raw = np.full((len(bands), grid.height, grid.width), np.nan, np.float32)
            for unmasked in (False, True):
                pos = [i for i, b in enumerate(bands) if (b in kept) == unmasked]
                if pos:
                    raw[pos] = backend.read(item, [keys[i] for i in pos], grid, resampling, attempts=counter,
                                            **({"keep_nodata": True} if unmasked else {}))
        return src.apply(item, np.stack(raw), spectral=harmonize, keys=keys)

    def search(self, source: str, start: dt.datetime | None, end: dt.datetime | None,
               filters: dict | None = None, bbox: Sequence[float] | None = None,
               contains: Any = None, nearest: dt.datetime | None = None) -> list[Item]:
        """Items of the logical ``source`` over ``bbox`` (default: the tile grid's lon/lat bounds) whose footprint
        contains ``contains`` (a lon/lat geometry) if given. ``nearest``: a backend that ranks by time server-side
        (``ranks_nearest``) may return only the acquisitions nearest to it (ties included); others return all."""
        src = self.source(source)
        backend = self.backend_for(source)
        query = {**src.filters(), **(filters or {})}
        bbox = bbox or self.grid.bbox_lonlat()
        if backend.capabilities.compiles:   # containment and time ranking are part of the compiled query
            return backend.search(src.collection, bbox, start, end, query, contains=contains, nearest=nearest)
        count = backend.thread_searches if backend.capabilities.counts_searches else None
        before = count() if count else 0
        found = src.one_per_scene(backend.search(src.collections if src.also else src.collection, bbox, start, end,
                                                 query))
        if count:
            self.searches += count() - before
        if contains is not None:
            found = [it for it in found if it.geometry.contains(contains)]
        return found

    def read_native(self, recipe: str, source: str, item: Item, bands: Sequence[str], margin_px: int = 2):
        """Bands on the source's own grid over the tile (for derived bands computed before resampling)."""
        src = self.source(source)
        native = self.backend_for(source).read_native(item, [src.band(b) for b in bands], self.grid, margin_px,
                                                   attempts=self.counter(recipe))
        native.data[:] = src.apply(item, native.data)
        return native


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
    """Float values (NaN = missing) to the dataset's dtype: rounded, clipped to its valid range, no-data filled.
    In place after the first pass, and no-data written where the mask says (a boolean index lists the positions
    first): half the passes of a tile's stack."""
    s = spec(name)
    out_dtype = s.dtype
    v = np.asarray(values, dtype=np.float32)
    missing = ~np.isfinite(v)
    if out_dtype.kind == "f":
        out = v.astype(out_dtype, copy=True)
        np.copyto(out, s.nodata, where=missing)
        return out
    lo, hi = s.valid_range if s.valid_range else (np.iinfo(out_dtype).min, np.iinfo(out_dtype).max)
    out = np.rint(v)
    np.clip(out, lo, hi, out=out)
    np.copyto(out, s.nodata, where=missing)
    return out.astype(out_dtype)


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
