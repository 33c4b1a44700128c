"""Land cover: Dynamic World (temporal mode of ``label`` over the S2 calendar year) and ESA WorldCover 2020.

Both are categorical, so both are read with nearest-neighbour resampling and never averaged. Dynamic World labels
are stored +1 (1..9) so that 0 can mean no data, as in v001; ties of the mode go to the smaller label. WorldCover is
the first tile by id with a class at each pixel.
"""
from __future__ import annotations

import datetime as dt

import numpy as np

from .base import RecipeResult, TileContext, spec
from .pixels import run_composite, temporal_mode
from .plan import FIRST_VALID, MODE, Composite, Search

__all__ = ["DW", "ESA", "DW_CLASSES", "dynamic_world", "esa_worldcover", "run_dynamic_world", "run_esa_worldcover",
           "temporal_mode"]

DW = "dynamic_world"
ESA = "esa_worldcover"
DW_CLASSES = 9
ESA_YEAR = 2020


def dynamic_world(ctx: TileContext) -> Composite:
    """Every Dynamic World image over the tile in the S2 calendar year, ``label`` by nearest neighbour, the mode."""
    year = ctx.s2_date.year
    search = Search(DW, dt.datetime(year, 1, 1, tzinfo=dt.timezone.utc),
                    dt.datetime(year, 12, 31, 23, 59, 59, tzinfo=dt.timezone.utc))
    return Composite(DW, search, ("label",), "nearest", MODE, _dynamic_world_result,
                     f"no Dynamic World image over the tile in {year}", classes=DW_CLASSES)


def _dynamic_world_result(values: np.ndarray, ids: list[str], count: int | None) -> RecipeResult:
    """Labels 0..8 stored + 1; no label (NaN) is 0."""
    valid = np.isfinite(values) & (values >= 0) & (values < DW_CLASSES)
    out = np.where(valid, values + 1, 0).astype(np.uint8)
    message = f"mode of {count} images" if count is not None else "mode over the S2 calendar year (server-side)"
    return RecipeResult(arrays={DW: out}, source_ids=ids, bands={DW: ["label"]}, message=message)


def esa_worldcover(ctx: TileContext) -> Composite:
    """Every WorldCover 2020 tile over the tile, ``Map`` by nearest neighbour, the first valid by id."""
    search = Search(ESA, dt.datetime(ESA_YEAR, 1, 1, tzinfo=dt.timezone.utc),
                    dt.datetime(ESA_YEAR, 12, 31, 23, 59, 59, tzinfo=dt.timezone.utc))
    return Composite(ESA, search, ("Map",), "nearest", FIRST_VALID, _esa_result,
                     "no ESA WorldCover 2020 tile covers the tile")


def _esa_result(values: np.ndarray, ids: list[str], count: int | None) -> RecipeResult:
    """Classes 1..254 kept; anything else is v001's no-data."""
    valid = np.isfinite(values) & (values > 0) & (values < 255)
    out = np.where(valid, values, spec(ESA).nodata).astype(np.uint8)
    return RecipeResult(arrays={ESA: out}, source_ids=ids, bands={ESA: ["Map"]})


def run_dynamic_world(ctx: TileContext) -> RecipeResult:
    return run_composite(ctx, dynamic_world(ctx))


def run_esa_worldcover(ctx: TileContext) -> RecipeResult:
    return run_composite(ctx, esa_worldcover(ctx))
