"""Image-level labels from the location itself: biome and ecoregion one-hot, lat/lon and month as sin/cos."""
from __future__ import annotations

import math

import numpy as np

from .base import RecipeResult, TileContext, spec

NAME = "labels"
OUTPUTS = ("lat", "lon", "month", "biome", "eco_region")


def sin_cos_degrees(deg: float) -> np.ndarray:
    r = math.radians(deg)
    return np.array([math.sin(r), math.cos(r)], dtype=np.float32)


def one_hot(name: str, index: int) -> np.ndarray:
    """The one-hot row of class ``index``; all zeros for -1 (a given location kept with --allow-unlabelled)."""
    s = spec(name)
    out = np.zeros(s.channels, dtype=s.dtype)
    if index >= 0:
        out[index] = 1
    return out


def run(ctx: TileContext) -> RecipeResult:
    m = ctx.s2_date.month
    arrays = {
        "lat": sin_cos_degrees(ctx.lat), "lon": sin_cos_degrees(ctx.lon),
        "month": np.array([math.sin(2 * math.pi * m / 12), math.cos(2 * math.pi * m / 12)], dtype=np.float32),
        "biome": one_hot("biome", ctx.biome), "eco_region": one_hot("eco_region", ctx.eco_region),
    }
    return RecipeResult(arrays=arrays, source_ids=["locations"],
                        info={"lat": ctx.lat, "lon": ctx.lon, "biome": ctx.biome, "eco_region": ctx.eco_region})
