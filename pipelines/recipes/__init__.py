"""One recipe per modality, shared by every backend. Sentinel-2 runs first: it fixes the date, CRS and grid.

A recipe's ``run`` is the pixel executor's (search, read onto the grid); its ``plan`` is what a compiling executor
(Earth Engine) compiles instead: the same searches, resampling, reducer and finish, as data (plan.py)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from . import canopy, era5, labels, landcover, sentinel1, sentinel2, terrain
from .base import RecipeResult, TileContext, load_sources, nodata_array, stable_seed, tile_rng
from .plan import Composite, Reads


@dataclass(frozen=True)
class Recipe:
    name: str                      # the ledger's modality column
    outputs: tuple[str, ...]       # v001 datasets it fills
    run: Callable[[TileContext], RecipeResult]
    sources: tuple[str, ...] = ()  # the logical sources it reads (catalogs/sources keys; --modality-backend routes them)
    plan: Callable[[TileContext], Composite | Reads] | None = None  # its pixels as a plan (plan.py), if it has one


RECIPES: tuple[Recipe, ...] = (
    Recipe(sentinel2.NAME, sentinel2.OUTPUTS, sentinel2.run, ("sentinel2_l2a", "sentinel2_l1c")),
    Recipe(sentinel1.NAME, sentinel1.OUTPUTS, sentinel1.run, ("sentinel1",), sentinel1.plan),
    Recipe(terrain.NAME, terrain.OUTPUTS, terrain.run, ("dem",), terrain.plan),
    Recipe(canopy.NAME, canopy.OUTPUTS, canopy.run, ("canopy_height",), canopy.plan),
    Recipe(landcover.DW, (landcover.DW,), landcover.run_dynamic_world, ("dynamic_world",), landcover.dynamic_world),
    Recipe(landcover.ESA, (landcover.ESA,), landcover.run_esa_worldcover, ("esa_worldcover",),
           landcover.esa_worldcover),
    Recipe(era5.NAME, era5.OUTPUTS, era5.run, ("era5_land_monthly",)),
    Recipe(labels.NAME, labels.OUTPUTS, labels.run),
)
BY_NAME = {r.name: r for r in RECIPES}

__all__ = ["RECIPES", "BY_NAME", "Recipe", "RecipeResult", "TileContext", "load_sources", "nodata_array",
           "stable_seed", "tile_rng"]
