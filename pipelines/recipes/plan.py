"""Recipes as plans: what a recipe reads and how it reduces it, as data, and the step that makes the v001 result.

An executor runs a plan with its own operators, each written once: the pixel executor (pixels.py) searches and
reads onto the tile grid; the Earth Engine executor (``pipelines.backends.gee``) compiles a tile's plans into one
expression. Two kinds of pixel plans:

- :class:`Composite`: every item one search finds over the tile, its bands resampled onto the grid (derived bands
  such as slope computed first, on the source's own grid), reduced to one layer by a temporal reducer
  (:data:`FIRST_VALID`, :data:`MODE`). Dynamic World, ESA WorldCover, the canopy height, the DEM.
- :class:`Reads`: bands of items the recipe chose itself (the Sentinel-2 scene, Sentinel-1's nearest acquisition
  per orbit), each read with its own resampling.

ERA5-Land's area means are the third reducer (:mod:`.era5`: its months, sample grid and month rule).
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..items import Item
from .base import RecipeResult, TileContext

FIRST_VALID = "first_valid"   # per pixel, the first item by id that has data there
MODE = "mode"                 # per pixel, the most frequent label over the items (ties: the smaller label)
REDUCERS = (FIRST_VALID, MODE)
SLOPE = "slope"               # a derived band: degrees, by the 4-neighbour rule of ``ee.Terrain.slope``
RESAMPLING = ("nearest", "bilinear")


@dataclass(frozen=True)
class Search:
    """One search of a recipe, as data (``end`` inclusive). A pixel executor searches the catalog and tests the
    footprint; Earth Engine compiles it into a filter chain.

    Attributes:
        source: the logical source key (catalogs/sources).
        start: the first instant searched (None: unbounded).
        end: the last instant searched, inclusive (None: unbounded).
        filters: property filters, ``{property: (op, value)}`` (the source map's ``select`` is added).
        bbox: lon/lat bounds searched (None: the tile grid's).
        contains: a lon/lat polygon an item's footprint must contain.
        nearest: rank by the distance in time to this instant (a backend that ranks returns the nearest).
    """

    source: str
    start: dt.datetime | None = None
    end: dt.datetime | None = None
    filters: Mapping[str, tuple[str, Any]] = field(default_factory=dict)
    bbox: tuple[float, ...] | None = None
    contains: Any = None
    nearest: dt.datetime | None = None


def run_search(ctx: TileContext, s: Search) -> list[Item]:
    """The items of ``s`` on the tile's backend for its source, sorted by id."""
    return ctx.search(s.source, s.start, s.end, dict(s.filters), bbox=s.bbox, contains=s.contains, nearest=s.nearest)


@dataclass(frozen=True)
class Composite:
    """A pixel modality made of every item one search finds over the tile.

    Attributes:
        recipe: the modality (the ledger's row: its tries are counted there).
        search: which items.
        bands: the v001 bands read from each (the source map names them).
        resampling: how they are resampled onto the tile grid.
        reducer: how the items' layers become one (:data:`REDUCERS`).
        finish: ``finish(values, ids, count)``: the recipe's result from the reduced (bands + derived, h, w)
            float32 values (NaN: no data), the ids of what was read and how many items were reduced (None where
            the executor reduced them server-side and recorded the collection instead).
        empty: the :class:`~pipelines.faults.NoCoverage` message when nothing covers the tile.
        derive: bands derived from the first band on the source's own grid, before resampling (:data:`SLOPE`).
        classes: :data:`MODE`: labels are 0..classes-1; any other value is no data.
        void_is_uncovered: an empty first band over the whole tile means the source does not cover it (an
            elevation model has a value wherever it exists): an executor that composites without searching
            raises NoCoverage(``empty``) then, as a search that finds nothing does.
    """

    recipe: str
    search: Search
    bands: tuple[str, ...]
    resampling: str
    reducer: str
    finish: Callable[[np.ndarray, list[str], int | None], RecipeResult]
    empty: str
    derive: tuple[str, ...] = ()
    classes: int = 0
    void_is_uncovered: bool = False


@dataclass(frozen=True)
class Read:
    """Bands of one chosen item resampled onto the tile grid.

    Attributes:
        source: the logical source key.
        item: the item.
        bands: its v001 bands read here.
        resampling: how they are resampled.
        harmonize: they are Sentinel-2 reflectance (the source map's offset rule applies).
        label: names this read's bands among a tile's (an executor may call them ``{label}_{band}``).
    """

    source: str
    item: Item
    bands: tuple[str, ...]
    resampling: str
    label: str
    harmonize: bool = False


@dataclass(frozen=True)
class Reads:
    """A pixel modality read from items the recipe chose.

    Attributes:
        recipe: the modality (the ledger's row).
        reads: what is read (none: nothing to read, ``finish`` says why).
        finish: ``finish(values)``: the recipe's result from each read's (bands, h, w) float32 values in v001
            units (NaN: no data), in the order of ``reads``.
    """

    recipe: str
    reads: tuple[Read, ...]
    finish: Callable[[list[np.ndarray]], RecipeResult]
