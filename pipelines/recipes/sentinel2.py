"""Sentinel-2: the scene that fixes the tile's date, CRS and grid, chosen as MMEarth did.

Rule (MMEarth, Nedungadi et al. 2024, §3 and its data repository): per-tile seeded randomness; a year in 2017-2020 (2018 ends on Nov 30
and 2019 starts on 2018-12-01, since L2A is global only from Dec 2018); L2A or L1C by coin flip, the other level as
fallback; scene cloud cover < 10 %; the scene footprint contains the tile plus 200 m; a uniform choice among the
survivors. No survivor: the tile is skipped as ``no_s2``. Spectral bands and MSK_CLDPRB are resampled bilinearly,
SCL and QA60 by nearest neighbour. Difference from the original: the fallback goes both ways (an L1C-first tile
whose L1C scenes are all cloudy may still use L2A), which drops fewer tiles.

Endpoints differ (``catalogs/sources/``): one without L1C (Planetary Computer) sends the L1C arm of the coin flip
to L2A, and ``tile_info`` says so (``S2_level_drawn``); one without QA60 gets the v001 cloud mask derived from SCL
(8, 9 -> bit 10 opaque; 10 -> bit 11 cirrus); reflectance DN are harmonized to GEE's ``*_HARMONIZED`` collections.
"""
from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass

import numpy as np
from shapely import Polygon

from ..faults import NoCoverage
from ..grid import TileGrid
from ..items import Item
from .base import RecipeResult, TileContext, day_end, day_start, nodata_array, tile_rng, to_dataset
from .pixels import run_reads
from .plan import Read, Reads

NAME = "sentinel2"
OUTPUTS = ("sentinel2", "sentinel2_cloudmask", "sentinel2_cloudprod", "sentinel2_scl")
MAX_CLOUD = 10.0
BUFFER_M = 200.0
YEAR_WINDOWS = {
    2017: (dt.date(2017, 1, 1), dt.date(2017, 12, 31)),
    2018: (dt.date(2018, 1, 1), dt.date(2018, 11, 30)),
    2019: (dt.date(2018, 12, 1), dt.date(2019, 12, 31)),
    2020: (dt.date(2020, 1, 1), dt.date(2020, 12, 31)),
}
SPECTRAL = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8A", "B8", "B9", "B10", "B11", "B12")
# what MMEarth's tile_info BANDS lists per level (GEE names, export order)
EXPORTED = {
    "l2a": [b for b in SPECTRAL if b != "B10"] + ["MSK_CLDPRB", "SCL", "QA60"],
    "l1c": list(SPECTRAL) + ["QA60"],
}


@dataclass(frozen=True)
class SceneQuery:
    """One level's search, as data: the executor runs it (a pixel backend searches and tests containment; Earth
    Engine compiles it into one server-side filter chain, batched over many tiles)."""

    level: str
    source: str                     # logical source key, e.g. sentinel2_l2a
    start: dt.datetime
    end: dt.datetime
    need: Polygon                   # the tile + BUFFER_M: a scene's footprint must contain it
    bbox: tuple[float, ...]         # its lon/lat bounds

    def filters(self, ctx: TileContext) -> dict:
        return {ctx.source(self.source).prop("cloud_cover"): ("<", MAX_CLOUD)}


@dataclass(frozen=True)
class Draw:
    """The seeded draw of one tile: its year, the level tried first, and the uniform pick in [0, 1)."""

    year: int
    first: str
    pick: float

    def index(self, n: int) -> int:
        return min(int(self.pick * n), n - 1)


def draw(ctx: TileContext) -> Draw:
    return _draw(ctx.seed, ctx.tile_id)


@functools.lru_cache(maxsize=65536)
def _draw(seed: int, tile_id: str) -> Draw:   # a tile's recipes ask several times; a seeded Generator is slow to make
    rng = tile_rng(seed, tile_id, NAME)
    year = int(rng.integers(2017, 2021))
    first = "l2a" if rng.random() < 0.5 else "l1c"
    return Draw(year, first, float(rng.random()))  # drawn up front: the choice does not depend on the scene count


def window(ctx: TileContext, d: Draw) -> tuple[dt.date, dt.date]:
    """The days searched: a given location's date +- the window or its start..end, else the drawn year's."""
    if ctx.s2_rule is not None:
        return ctx.s2_rule.start, ctx.s2_rule.end
    return YEAR_WINDOWS[d.year]


def queries(ctx: TileContext, d: Draw | None = None) -> list[SceneQuery]:
    """The searches of this tile, first level first (the levels this backend serves)."""
    d = d or draw(ctx)
    start, end = window(ctx, d)
    grid = TileGrid.centred(ctx.lon, ctx.lat, ctx.utm_epsg, ctx.tile_px)
    need, bbox = grid.polygon_lonlat(BUFFER_M), grid.bbox_lonlat(BUFFER_M)
    levels = [lv for lv in (d.first, "l1c" if d.first == "l2a" else "l2a") if ctx.has_source(f"sentinel2_{lv}")]
    if not levels:
        ctx.source("sentinel2_l2a")   # raises NoSource
    return [SceneQuery(lv, f"sentinel2_{lv}", day_start(start), day_end(end), need, bbox) for lv in levels]


def run_query(ctx: TileContext, q: SceneQuery) -> list[Item]:
    return ctx.search(q.source, q.start, q.end, q.filters(ctx), bbox=q.bbox, contains=q.need)


def candidates(ctx: TileContext) -> list[tuple[Item, str]]:
    """Every surviving scene in the seeded order of preference: the uniform pick among the first level's survivors,
    then the survivors after it (wrapping), then the other level's in the same way. Raises :class:`NoCoverage`
    when no scene survives the filters."""
    d = draw(ctx)
    qs = queries(ctx, d)
    ordered: list[tuple[Item, str]] = []
    target = ctx.s2_rule.target if ctx.s2_rule is not None else None
    unknown: dict[str, int] = {}
    for q in qs:
        survivors = run_query(ctx, q)
        src = ctx.source(q.source)
        if src.harmonize:   # a scene whose BOA offset cannot be known would give DN off by 1000: not a candidate
            known = [it for it in survivors if src.offset(it) is not None]
            if len(known) < len(survivors):
                unknown[src.collection] = unknown.get(src.collection, 0) + len(survivors) - len(known)
            survivors = known
        if survivors and target is not None:   # a given day: nearest first (ties: the earlier, then by id)
            noon = dt.datetime.combine(target, dt.time(12), tzinfo=dt.timezone.utc)
            ordered += [(it, q.level) for it in sorted(
                survivors, key=lambda it: (abs((_utc(it.datetime) - noon).total_seconds()), _utc(it.datetime), it.id))]
        elif survivors:
            k = d.index(len(survivors))
            ordered += [(it, q.level) for it in survivors[k:] + survivors[:k]]
    if not ordered:
        start, end = window(ctx, d)
        skipped = "".join(f"; {n} scene(s) of {c} left out: their BOA offset is unknown (see its source map's "
                          "harmonize rule)" for c, n in unknown.items())
        raise NoCoverage(f"no Sentinel-2 scene with cloud cover < {MAX_CLOUD:g}% containing the tile + "
                         f"{BUFFER_M:g} m in {start}..{end} ({' or '.join(q.level.upper() for q in qs)}){skipped}")
    ctx.s2_drawn = d.first
    return ordered


def _utc(t: dt.datetime) -> dt.datetime:
    return t if t.tzinfo is not None else t.replace(tzinfo=dt.timezone.utc)


def scene_grid(item: Item, level: str, ctx: TileContext) -> TileGrid:
    """The tile grid in the scene's UTM CRS, snapped to its 10 m pixel grid so 10 m bands are not resampled."""
    epsg = item.epsg() or ctx.utm_epsg
    align = None
    ref = item.assets.get(item.band(ctx.source(f"sentinel2_{level}").band("B4")).asset, {})
    tr = ref.get("proj:transform")
    if tr and abs(abs(tr[0]) - 10.0) < 1e-9:
        align = (tr[2], tr[5])
    return TileGrid.centred(ctx.lon, ctx.lat, epsg, ctx.tile_px, align=align)


def choose_scene(ctx: TileContext) -> tuple[Item, str]:
    """The seeded first choice (before any pixel is read); raises :class:`NoCoverage` when nothing survives."""
    return candidates(ctx)[0]


def fix(ctx: TileContext, item: Item, level: str) -> None:
    ctx.grid = scene_grid(item, level, ctx)
    ctx.s2_date = item.datetime
    ctx.s2_type = level


def locate(ctx: TileContext, chosen: str | None = None) -> tuple[Item, str]:
    """Fix the tile's grid, date and level on ``ctx`` without reading pixels: from the scene ``chosen`` by an
    earlier run (its ledger's source id), else from the first candidate."""
    ordered = candidates(ctx)
    item, level = next(((it, lv) for it, lv in ordered if it.id == chosen), ordered[0])
    fix(ctx, item, level)
    return item, level


def run(ctx: TileContext) -> RecipeResult:
    """The first candidate with a valid pixel over the tile (a scene's no-data edge can still pass the footprint
    test); when every candidate is empty there, the tile is ``no_s2``."""
    ordered = candidates(ctx)
    for item, level in ordered:
        fix(ctx, item, level)
        result = run_reads(ctx, scene_plan(ctx, item, level))
        if result is not None:
            return result
    raise NoCoverage(f"all {len(ordered)} Sentinel-2 scene(s) passing the filters are no-data over the tile")


def cloudmask_from_scl(scl: np.ndarray) -> np.ndarray:
    """QA60 bits from the L2A scene classification: SCL 8, 9 (cloud medium/high probability) -> bit 10 (opaque),
    10 (thin cirrus) -> bit 11; NaN stays NaN."""
    out = np.where(np.isin(scl, (8, 9)), 1024.0, np.where(scl == 10, 2048.0, 0.0)).astype(np.float32)
    out[~np.isfinite(scl)] = np.nan
    return out


def scene_bands(ctx: TileContext, item: Item, level: str) -> tuple[list[str], list[str], list[str]]:
    """(spectral, other bilinear, nearest) v001 bands this scene has on this endpoint."""
    src = ctx.source(f"sentinel2_{level}")
    spectral = [b for b in SPECTRAL if b in src.bands]
    continuous = ["MSK_CLDPRB"] if "MSK_CLDPRB" in src.bands and item.has_band(src.band("MSK_CLDPRB")) else []
    categorical = [b for b in ("SCL", "QA60") if b in src.bands and item.has_band(src.band(b))]
    return spectral, continuous, categorical


def scene_plan(ctx: TileContext, item: Item, level: str) -> Reads:
    """The scene's bands on the tile grid: spectral (harmonized) and MSK_CLDPRB bilinear, SCL and QA60 nearest; its
    finish is :func:`scene_result` (None: the scene has no valid pixel over the tile)."""
    key = f"sentinel2_{level}"
    spectral, continuous, categorical = scene_bands(ctx, item, level)
    reads = tuple(Read(key, item, tuple(bands), resampling, "s2", harmonize)
                  for bands, resampling, harmonize in ((spectral, "bilinear", True), (continuous, "bilinear", False),
                                                       (categorical, "nearest", False)) if bands)

    def finish(values: list[np.ndarray]) -> RecipeResult | None:
        return scene_result(ctx, item, level, {b: v for r, stack in zip(reads, values) for b, v in zip(r.bands, stack)})
    return Reads(NAME, reads, finish)


def scene_result(ctx: TileContext, item: Item, level: str, values: dict[str, np.ndarray]) -> RecipeResult | None:
    """The v001 arrays and tile_info of a scene from its bands on the tile grid (float32, NaN = no data, v001
    units); None when the scene has no valid pixel there. Shared by every executor."""
    src = ctx.source(f"sentinel2_{level}")
    spectral = [b for b in SPECTRAL if b in src.bands]
    derived = []
    if "QA60" not in values and src.derive.get("QA60") == "SCL" and "SCL" in values:
        values["QA60"] = cloudmask_from_scl(values["SCL"])
        derived.append("QA60")
    if not any(np.any(np.isfinite(values[b]) & (values[b] != 0)) for b in spectral):
        return None  # DN 0 is Sentinel-2's no-data in both L1C and L2A
    px = ctx.tile_px
    s2 = np.stack([values.get(b, np.full((px, px), np.nan, np.float32)) for b in SPECTRAL])
    arrays = {"sentinel2": to_dataset("sentinel2", s2)}
    for out, band in (("sentinel2_cloudmask", "QA60"), ("sentinel2_cloudprod", "MSK_CLDPRB"),
                      ("sentinel2_scl", "SCL")):
        arrays[out] = to_dataset(out, values[band][None]) if band in values else nodata_array(out, px)
    exported = [b for b in EXPORTED[level] if b in values and b not in derived]
    info = {"S2_DATE": item.datetime.strftime("%Y-%m-%d"), "S2_type": level, "CRS": ctx.grid.crs}
    if ctx.s2_drawn not in (None, level) and not ctx.has_source(f"sentinel2_{ctx.s2_drawn}"):
        info["S2_level_drawn"] = ctx.s2_drawn   # the coin flip said L1C; this endpoint has none
    if derived:
        info["derived"] = {"QA60": "SCL"}
    shift = src.offset(item)
    if shift:
        info["S2_harmonized_offset"] = shift
    return RecipeResult(arrays=arrays, source_ids=[item.id], info=info, bands={"sentinel2": exported})
