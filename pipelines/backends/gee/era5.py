"""ERA5-Land through Earth Engine: the recipe's area means (:mod:`pipelines.recipes.era5`), 12 monthly
``reduceRegion(mean)`` over the tile in one ``value:compute`` sampled on the recipe's cell grid (``crsTransform``),
the answer turned into the recipe's result by the recipe's own month rule."""
from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import numpy as np

from ...faults import Attempts
from ...grid import TileGrid
from ...recipes import era5
from ...recipes.base import RecipeResult, TileContext
from . import expressions as ex
from .answers import Answers
from .templates import Part, Prebuilt, Templates


class Era5:
    """Compiles and answers a tile's ERA5-Land means (prepared by a batch, else one request of its own).

    Args:
        templates: the expression templates of the process.
        answers: prepared answers.
        value: sends one expression to ``value:compute`` (``value(expression, attempts)``).
    """

    def __init__(self, templates: Templates, answers: Answers, value: Callable[..., Any]):
        self.templates, self.answers, self.value = templates, answers, value

    def compile(self, ctx: TileContext) -> Prebuilt:
        """Each month's mean over the tile, sampled at the centres of the cells the pixel executor uses
        (``reduceRegion`` on that grid: every cell lies inside the tile, so each weighs the same)."""
        _, start, end = era5.month_range(ctx.s2_date)
        return self.expression(ctx, ctx.grid, start, end)

    def expression(self, ctx: TileContext, grid: TileGrid, start: dt.datetime, end: dt.datetime,
                   until: Prebuilt | None = None) -> Prebuilt:
        """The monthly means over ``grid`` of the months from ``start`` until ``end`` (exclusive); with ``until`` (a
        computed time: the scene Earth Engine picks), only the 12 months ending with its month."""
        src = ctx.source("era5_land_monthly")
        t = era5.sample_grid(grid).transform
        crs = f"EPSG:{grid.epsg}"
        slots = {"region": [float(v) for v in grid.bounds], "start": start.strftime("%Y-%m-%d"),
                 "end": end.strftime("%Y-%m-%d"), "transform": [t.a, t.b, t.c, t.d, t.e, t.f]}
        if until is not None:
            slots["until"] = until
        return self.templates.one(Part(
            ex.era5, (src.collection, tuple(src.band(v) for v in era5.VARIABLES), crs, until is not None), slots))

    @staticmethod
    def key(ctx: TileContext) -> tuple:
        """The key of a tile's prepared answer: its grid and S2 month."""
        return ("era5", ctx.grid.epsg, ctx.grid.bounds, ctx.s2_date.year, ctx.s2_date.month)

    def run(self, ctx: TileContext, attempts: Attempts | None = None) -> RecipeResult:
        """The tile's v001 ``era5``: its prepared answer, else one request."""
        prepared = self.answers.recall(self.key(ctx))
        if isinstance(prepared, BaseException):
            raise prepared
        if prepared is not None:
            return prepared
        return self.result(ctx, self.value(self.compile(ctx), attempts))

    def result(self, ctx: TileContext, value: dict) -> RecipeResult:
        """The recipe's result from the monthly means Earth Engine answered, each month's from the image the
        recipe's month rule picks."""
        src = ctx.source("era5_land_monthly")
        months, _, _ = era5.month_range(ctx.s2_date)
        # a feature's system:index comes back as its top-level "id", not as a property
        features = {str(f.get("id")): f["properties"] for f in value.get("features", [])}
        ids = era5.first_per_month(((i, dt.datetime.fromtimestamp(p["system:time_start"] / 1000, dt.timezone.utc))
                                    for i, p in features.items()), months)
        monthly = np.full((12, 4), np.nan, dtype=np.float32)
        for ym, image_id in ids.items():
            p = features[image_id]
            monthly[months.index(ym)] = [np.nan if p.get(src.band(v)) is None else p[src.band(v)]
                                         for v in era5.VARIABLES]
        return era5.result(months, monthly, ids)
