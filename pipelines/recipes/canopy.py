"""ETH Global Canopy Height 2020 (Lang et al. 2023): height and its standard deviation, bilinear, int8 metres."""
from __future__ import annotations

from ..faults import NoCoverage
from .base import RecipeResult, TileContext, first_valid, to_dataset

NAME = "canopy_height_eth"
OUTPUTS = ("canopy_height_eth",)


def run(ctx: TileContext) -> RecipeResult:
    found = ctx.search("canopy_height", None, None)
    if not found:
        raise NoCoverage("no canopy height tile covers the tile")
    layers = [ctx.read(NAME, "canopy_height", it, ["height", "std"], "bilinear") for it in found]
    return RecipeResult(arrays={NAME: to_dataset(NAME, first_valid(layers))}, source_ids=[it.id for it in found],
                        bands={NAME: ["height", "std"]})
