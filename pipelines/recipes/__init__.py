"""One recipe per modality, shared by every backend. Sentinel-2 runs first: it fixes the date, CRS and grid."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from . import canopy, era5, labels, landcover, sentinel1, sentinel2, terrain
from .base import RecipeResult, TileContext, load_sources, nodata_array, stable_seed, tile_rng


@dataclass(frozen=True)
class Recipe:
    name: str                      # the ledger's modality column
    outputs: tuple[str, ...]       # v001 datasets it fills
    run: Callable[[TileContext], RecipeResult]
    sources: tuple[str, ...] = ()  # the logical sources it reads (catalogs/sources keys; --modality-backend routes them)


RECIPES: tuple[Recipe, ...] = (
    Recipe(sentinel2.NAME, sentinel2.OUTPUTS, sentinel2.run, ("sentinel2_l2a", "sentinel2_l1c")),
    Recipe(sentinel1.NAME, sentinel1.OUTPUTS, sentinel1.run, ("sentinel1",)),
    Recipe(terrain.NAME, terrain.OUTPUTS, terrain.run, ("dem",)),
    Recipe(canopy.NAME, canopy.OUTPUTS, canopy.run, ("canopy_height",)),
    Recipe(landcover.DW, (landcover.DW,), landcover.run_dynamic_world, ("dynamic_world",)),
    Recipe(landcover.ESA, (landcover.ESA,), landcover.run_esa_worldcover, ("esa_worldcover",)),
    Recipe(era5.NAME, era5.OUTPUTS, era5.run, ("era5_land_monthly",)),
    Recipe(labels.NAME, labels.OUTPUTS, labels.run),
)
BY_NAME = {r.name: r for r in RECIPES}

__all__ = ["RECIPES", "BY_NAME", "Recipe", "RecipeResult", "TileContext", "load_sources", "nodata_array",
           "stable_seed", "tile_rng"]
