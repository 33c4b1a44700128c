"""Sentinel-1 GRD (IW): per orbit direction, the acquisition nearest in time to the S2 date (2017-2020) among those
whose footprint contains the tile plus 200 m (MMEarth's ``ee_data.sentinel1``: ``ee.Filter.contains('.geo',
polygon.buffer(200))``), so that a swath edge or the end of a slice never leaves part of the tile empty.

Bands asc_VV, asc_VH, asc_HH, asc_HV, desc_... (v001 order). A polarisation or orbit direction that is absent is
no-data (-inf), never zeros. Bilinear resampling; values in dB (an endpoint serving linear power, such as Planetary
Computer's RTC, is converted by its source map).
"""
from __future__ import annotations

import datetime as dt

import numpy as np

from ..faults import NoCoverage
from ..grid import TileGrid
from .base import RecipeResult, TileContext, to_dataset
from .pixels import run_reads
from .plan import Read, Reads, Search

NAME = "sentinel1"
OUTPUTS = ("sentinel1",)
ORBITS = (("asc", "ascending"), ("desc", "descending"))
POLARISATIONS = ("VV", "VH", "HH", "HV")
BUFFER_M = 200.0   # the footprint must contain the tile grown by this much
START = dt.datetime(2017, 1, 1, tzinfo=dt.timezone.utc)
END = dt.datetime(2020, 12, 31, 23, 59, 59, tzinfo=dt.timezone.utc)


def nearest(items, when: dt.datetime):
    """Nearest in time; ties go to the earlier acquisition, then the smaller id (deterministic)."""
    return min(items, key=lambda it: (abs((it.datetime - when).total_seconds()), it.datetime, it.id))


BLOCKS = (dt.timedelta(days=32), dt.timedelta(days=256), None)   # search ranges tried in turn


def search_range(when: dt.datetime, block: dt.timedelta | None) -> tuple[dt.datetime, dt.datetime]:
    """The calendar-aligned block holding ``when`` and one block either side (the whole range for None): tiles
    whose S2 dates share a block share the search, and ``when`` is at least a block from either end."""
    if block is None:
        return START, END
    k = (when - START) // block
    return max(START, START + (k - 1) * block), min(END, START + (k + 2) * block)


def nearest_acquisition(ctx: TileContext, filters: dict):
    """The nearest acquisition in 2017-2020 whose footprint contains the tile + :data:`BUFFER_M`. A backend that
    ranks by time server-side (Earth Engine) is asked once for the whole range. Otherwise the search grows around
    the S2 date: the best of a range is the best of all when it is nearer than the range's ends (anything outside
    is farther), so the answer equals a search of the whole range at a fraction of the items (four years are
    hundreds of acquisitions)."""
    when = ctx.s2_date
    need = ctx.grid.polygon_lonlat(BUFFER_M)
    if ctx.backend_for("sentinel1").capabilities.ranks_nearest:
        found = ctx.search("sentinel1", START, END, filters, contains=need, nearest=when)
        return nearest(found, when) if found else None
    for block in BLOCKS:
        start, end = search_range(when, block)
        found = ctx.search("sentinel1", start, end, filters, contains=need)
        if not found:
            continue
        best = nearest(found, when)
        # an end clamped to 2017-2020 has nothing beyond it
        margin = min(when - start if start > START else dt.timedelta.max,
                     end - when if end < END else dt.timedelta.max)
        if block is None or abs(best.datetime - when) <= margin:
            return best
    return None


def searches(ctx: TileContext, grid: TileGrid, when: dt.datetime) -> list[Search]:
    """Per orbit direction, the search for the IW acquisitions of 2017-2020 whose footprint contains ``grid`` +
    :data:`BUFFER_M`, nearest to ``when`` first (a backend that ranks by time answers it whole; otherwise
    :func:`nearest_acquisition` grows it around ``when``)."""
    src = ctx.source(NAME)
    need, bbox = grid.polygon_lonlat(BUFFER_M), grid.bbox_lonlat()
    return [Search(NAME, START, END, {src.prop("orbit_state"): ("==", orbit),
                                      src.prop("instrument_mode"): ("==", "IW")},
                   bbox=bbox, contains=need, nearest=when) for _, orbit in ORBITS]


def picks(ctx: TileContext) -> list[tuple[int, object, list[str]]]:
    """Per orbit direction: (slot, nearest acquisition or None, its polarisations among v001's)."""
    src = ctx.source(NAME)
    out = []
    for slot, s in enumerate(searches(ctx, ctx.grid, ctx.s2_date)):
        item = nearest_acquisition(ctx, dict(s.filters))
        pols = []
        if item is not None:
            listed = {str(p).upper() for p in item.properties.get(src.prop("polarizations"), [])}
            pols = [p for p in POLARISATIONS if p in listed and item.has_band(src.band(p))]
        out.append((slot, item, pols))
    return out


def plan(ctx: TileContext) -> Reads:
    """The nearest acquisition of each orbit direction, its polarisations bilinear."""
    chosen = picks(ctx)
    reads = tuple(Read(NAME, item, tuple(pols), "bilinear", f"s1_{slot}") for slot, item, pols in chosen
                  if item is not None and pols)

    def finish(values: list[np.ndarray]) -> RecipeResult:
        read = iter(values)
        layers = {slot: dict(zip(pols, next(read))) for slot, item, pols in chosen if item is not None and pols}
        return result(ctx, chosen, layers)
    return Reads(NAME, reads, finish)


def run(ctx: TileContext) -> RecipeResult:
    return run_reads(ctx, plan(ctx))


def result(ctx: TileContext, chosen, layers: dict[int, dict[str, np.ndarray]]) -> RecipeResult:
    """v001 ``sentinel1`` from each orbit's polarisations on the tile grid (dB, NaN = no data); every executor."""
    px = ctx.tile_px
    out = np.full((8, px, px), np.nan, dtype=np.float32)
    ids, bands = [], {}
    for slot, item, pols in chosen:
        short = ORBITS[slot][0]
        if item is None:
            bands[f"sentinel1_{short}"] = None
            continue
        for p, layer in layers.get(slot, {}).items():
            out[slot * 4 + POLARISATIONS.index(p)] = layer
        ids.append(item.id)
        bands[f"sentinel1_{short}"] = pols or None
    if not ids:
        raise NoCoverage(f"no Sentinel-1 IW acquisition containing the tile + {BUFFER_M:g} m in 2017-2020")
    return RecipeResult(arrays={"sentinel1": to_dataset("sentinel1", out)}, source_ids=ids, bands=bands)
