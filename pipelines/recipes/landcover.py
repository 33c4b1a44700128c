"""Land cover: Dynamic World (temporal mode of ``label`` over the S2 calendar year) and ESA WorldCover 2020.

Both are categorical, so both are read with nearest-neighbour resampling and never averaged. Dynamic World labels
are stored +1 (1..9) so that 0 can mean no data, as in v001; ties of the mode go to the smaller label.
"""
from __future__ import annotations

import datetime as dt

import numpy as np

from ..faults import NoCoverage
from .base import RecipeResult, TileContext, first_valid

DW = "dynamic_world"
ESA = "esa_worldcover"
DW_CLASSES = 9


def temporal_mode(stack: np.ndarray, n_classes: int) -> np.ndarray:
    """Per-pixel mode of labels 0..n_classes-1 over axis 0 (NaN ignored); -1 where no layer has data."""
    counts = np.zeros((n_classes,) + stack.shape[1:], dtype=np.int32)
    for layer in stack:
        valid = np.isfinite(layer) & (layer >= 0) & (layer < n_classes)
        idx = np.where(valid, layer, 0).astype(np.int64)
        np.add.at(counts, (idx[valid],) + np.nonzero(valid), 1)
    mode = counts.argmax(axis=0)  # first maximum = smallest label
    return np.where(counts.max(axis=0) > 0, mode, -1)


def run_dynamic_world(ctx: TileContext) -> RecipeResult:
    year = ctx.s2_date.year
    found = ctx.search("dynamic_world", dt.datetime(year, 1, 1, tzinfo=dt.timezone.utc),
                       dt.datetime(year, 12, 31, 23, 59, 59, tzinfo=dt.timezone.utc))
    if not found:
        raise NoCoverage(f"no Dynamic World image over the tile in {year}")
    stack = np.concatenate([ctx.read(DW, "dynamic_world", it, ["label"], "nearest") for it in found])
    mode = temporal_mode(stack, DW_CLASSES)
    out = np.where(mode >= 0, mode + 1, 0).astype(np.uint8)[None]
    return RecipeResult(arrays={DW: out}, source_ids=[it.id for it in found], bands={DW: ["label"]},
                        message=f"mode of {len(found)} images")


def run_esa_worldcover(ctx: TileContext) -> RecipeResult:
    found = ctx.search("esa_worldcover", dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc),
                       dt.datetime(2020, 12, 31, 23, 59, 59, tzinfo=dt.timezone.utc))
    if not found:
        raise NoCoverage("no ESA WorldCover 2020 tile covers the tile")
    data = first_valid([ctx.read(ESA, "esa_worldcover", it, ["Map"], "nearest") for it in found])
    valid = np.isfinite(data) & (data > 0) & (data < 255)
    out = np.where(valid, data, 255).astype(np.uint8)
    return RecipeResult(arrays={ESA: out}, source_ids=[it.id for it in found], bands={ESA: ["Map"]})
