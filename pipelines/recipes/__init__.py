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


RECIPES: tuple[Recipe, ...] = (
    Recipe(sentinel2.NAME, sentinel2.OUTPUTS, sentinel2.run),
    Recipe(sentinel1.NAME, sentinel1.OUTPUTS, sentinel1.run),
    Recipe(terrain.NAME, terrain.OUTPUTS, terrain.run),
    Recipe(canopy.NAME, canopy.OUTPUTS, canopy.run),
    Recipe(landcover.DW, (landcover.DW,), landcover.run_dynamic_world),
    Recipe(landcover.ESA, (landcover.ESA,), landcover.run_esa_worldcover),
    Recipe(era5.NAME, era5.OUTPUTS, era5.run),
    Recipe(labels.NAME, labels.OUTPUTS, labels.run),
)
BY_NAME = {r.name: r for r in RECIPES}

__all__ = ["RECIPES", "BY_NAME", "Recipe", "RecipeResult", "TileContext", "load_sources", "nodata_array",
           "stable_seed", "tile_rng"]
