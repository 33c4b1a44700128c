"""Elevation and slope (v001 ``aster``): slope in degrees from the DEM at its native resolution, then both bands
are resampled bilinearly onto the tile grid, on every executor (Earth Engine: ``Terrain.slope`` of the elevation
``reproject``ed to its own projection).

A deviation from MMEarth's files: MMEarth called ``ee.Terrain.slope`` on the asset and exported at 10 m, and Earth
Engine computes an expression in the projection its output is requested in (the guide "Projections"), so MMEarth's
slope was taken from the elevation resampled by nearest neighbour onto the 10 m grid (flat terraces, steps at their
edges). Slope from the native DEM does not carry those artefacts."""
from __future__ import annotations

import numpy as np
from rasterio.crs import CRS
from rasterio.warp import Resampling, reproject

from ..faults import NoCoverage
from ..grid import TileGrid, metres_per_degree
from .base import RecipeResult, TileContext, first_valid, to_dataset

NAME = "aster"
OUTPUTS = ("aster",)


def slope_degrees(elevation: np.ndarray, transform, crs: str, lat: float) -> np.ndarray:
    """Slope from central differences (the 4-neighbour rule of ``ee.Terrain.slope``); NaN stays NaN."""
    dx, dy = abs(transform.a), abs(transform.e)
    if CRS.from_user_input(crs).is_geographic:
        lon_m, lat_m = metres_per_degree(lat)
        dx, dy = dx * lon_m, dy * lat_m
    gy, gx = np.gradient(elevation.astype(np.float64), dy, dx)
    return np.degrees(np.arctan(np.hypot(gx, gy))).astype(np.float32)


def warp_to_grid(data: np.ndarray, transform, crs: str, grid: TileGrid, resampling: str = "bilinear") -> np.ndarray:
    """Warp an in-memory (bands, h, w) float array with NaN as no-data onto ``grid``."""
    out = np.full((data.shape[0], grid.height, grid.width), np.nan, dtype=np.float32)
    reproject(data, out, src_transform=transform, src_crs=crs, src_nodata=np.nan, dst_transform=grid.transform,
              dst_crs=grid.crs, dst_nodata=np.nan, resampling=Resampling[resampling])
    return out


def tiles(ctx: TileContext) -> list:
    """The DEM tiles under the tile (every executor); none: :class:`NoCoverage`."""
    found = ctx.search("dem", None, None)
    if not found:
        raise NoCoverage("no elevation tile covers the tile")
    return found


def run(ctx: TileContext) -> RecipeResult:
    found = tiles(ctx)
    layers = []
    for item in found:
        native = ctx.read_native(NAME, "dem", item, ["elevation"])
        elev = native.data[0]
        slope = slope_degrees(elev, native.transform, native.crs, ctx.lat)
        layers.append(warp_to_grid(np.stack([elev, slope]), native.transform, native.crs, ctx.grid))
    return result(first_valid(layers), [it.id for it in found])


def result(values: np.ndarray, ids: list[str]) -> RecipeResult:
    """v001 ``aster`` from (elevation, slope) on the tile grid (NaN = no data); shared by every executor."""
    return RecipeResult(arrays={"aster": to_dataset("aster", values)}, source_ids=ids,
                        bands={"aster": ["b1", "slope"]})
