"""Elevation and slope (v001 ``aster``): slope in degrees from the DEM at its native resolution, then both bands
are resampled bilinearly onto the tile grid, the first DEM tile by id with data at each pixel, on every executor
(Earth Engine: ``Terrain.slope`` of the elevation ``reproject``ed to its own projection).

A deviation from MMEarth's files: MMEarth called ``ee.Terrain.slope`` on the asset and exported at 10 m, and Earth
Engine computes an expression in the projection its output is requested in (the guide "Projections"), so MMEarth's
slope was taken from the elevation resampled by nearest neighbour onto the 10 m grid (flat terraces, steps at their
edges). Slope from the native DEM does not carry those artefacts."""
from __future__ import annotations

import numpy as np

from .base import RecipeResult, TileContext, to_dataset
from .pixels import run_composite, slope_degrees, warp_to_grid
from .plan import FIRST_VALID, SLOPE, Composite, Search

__all__ = ["NAME", "OUTPUTS", "plan", "result", "run", "slope_degrees", "warp_to_grid"]

NAME = "aster"
OUTPUTS = ("aster",)


def plan(ctx: TileContext) -> Composite:
    """Every DEM tile under the tile: elevation and its slope (derived on the DEM's grid), bilinear, the first
    valid by id."""
    return Composite(NAME, Search("dem"), ("elevation",), "bilinear", FIRST_VALID, result,
                     "no elevation tile covers the tile", derive=(SLOPE,), void_is_uncovered=True)


def result(values: np.ndarray, ids: list[str], count: int | None = None) -> RecipeResult:
    """v001 ``aster`` from (elevation, slope) on the tile grid (NaN = no data)."""
    return RecipeResult(arrays={"aster": to_dataset("aster", values)}, source_ids=ids,
                        bands={"aster": ["b1", "slope"]})


def run(ctx: TileContext) -> RecipeResult:
    return run_composite(ctx, plan(ctx))
