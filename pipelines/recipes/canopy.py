"""ETH Global Canopy Height 2020 (Lang et al. 2023): height and its standard deviation, bilinear, the first tile by
id with data at each pixel, int8 metres."""
from __future__ import annotations

import numpy as np

from .base import RecipeResult, TileContext, to_dataset
from .pixels import run_composite
from .plan import FIRST_VALID, Composite, Search

NAME = "canopy_height_eth"
OUTPUTS = ("canopy_height_eth",)


def plan(ctx: TileContext) -> Composite:
    """Every canopy height tile over the tile, height and SD bilinear, the first valid by id."""
    return Composite(NAME, Search("canopy_height"), ("height", "std"), "bilinear", FIRST_VALID, result,
                     "no canopy height tile covers the tile")


def result(values: np.ndarray, ids: list[str], count: int | None) -> RecipeResult:
    """v001 ``canopy_height_eth`` from (height, SD) on the tile grid (NaN = no data)."""
    return RecipeResult(arrays={NAME: to_dataset(NAME, values)}, source_ids=ids, bands={NAME: ["height", "std"]})


def run(ctx: TileContext) -> RecipeResult:
    return run_composite(ctx, plan(ctx))
