"""ERA5-Land monthly aggregates as 12 scalars: previous month, S2 month, and the 12 months ending with the S2 month.

Each month is the mean over the tile of the native ~9 km pixels it covers, weighted by the share of the tile in each
(MMEarth: ``reduceRegion(mean)`` over the tile polygon): the native pixels are read, not resampled. The yearly reducers are those of the
original: mean of ``temperature_2m``, min of ``_min``, max of ``_max``, sum of ``total_precipitation_sum``. The
original's yearly window spanned 13 monthly images; this one spans exactly 12. A month that is missing makes the
values that need it NaN (no data) and is named in the ledger message.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import numpy as np

from ..faults import NoCoverage
from ..grid import TileGrid, pixel_centres, project
from ..items import NativeRaster
from .base import RecipeResult, TileContext

NAME = "era5"
OUTPUTS = ("era5",)
VARIABLES = ("temperature_2m", "temperature_2m_min", "temperature_2m_max", "total_precipitation_sum")
YEAR_NAMES = ("0_temperature_2m_mean", "1_temperature_2m_min_min", "2_temperature_2m_max_max",
              "3_total_precipitation_sum_sum")
SAMPLES = 16  # per side: the tile is split into 16 x 16 cells to weigh the native pixels it overlaps


def window_months(year: int, month: int, n: int = 12) -> list[tuple[int, int]]:
    """The ``n`` months ending with (year, month), oldest first."""
    index = year * 12 + (month - 1)
    return [(i // 12, i % 12 + 1) for i in range(index - n + 1, index + 1)]


def yearly(monthly: np.ndarray) -> np.ndarray:
    """(12, 4) monthly means -> the 4 yearly values (NaN when any month is missing)."""
    return np.array([monthly[:, 0].mean(), monthly[:, 1].min(), monthly[:, 2].max(), monthly[:, 3].sum()],
                    dtype=np.float32)


def sample_grid(grid: TileGrid, samples: int = SAMPLES) -> TileGrid:
    """The cells whose centres sample the native pixels under the tile (Earth Engine: the reduceRegion grid)."""
    return grid.coarsen(grid.width // samples if grid.width >= samples else 1)


def month_range(when: dt.datetime) -> tuple[list[tuple[int, int]], dt.datetime, dt.datetime]:
    """The 12 months ending with the S2 month, and the first day of the first and of the month after the last."""
    months = window_months(when.year, when.month)
    (y0, m0), (y1, m1) = months[0], months[-1]
    after = (y1 + m1 // 12, m1 % 12 + 1)
    return months, dt.datetime(y0, m0, 1, tzinfo=dt.timezone.utc), dt.datetime(*after, 1, tzinfo=dt.timezone.utc)


def area_mean(native: NativeRaster, grid: TileGrid, samples: int = SAMPLES) -> np.ndarray:
    """Per-band mean of the native pixels under the tile, each weighted by the share of the tile it covers."""
    cells = sample_grid(grid, samples)
    xs, ys = pixel_centres(cells.transform, cells.width, cells.height)
    xs, ys = project(grid.epsg, int(native.crs.split(":")[1]), xs.ravel(), ys.ravel())
    t = native.transform
    cols = np.floor((np.asarray(xs) - t.c) / t.a).astype(int)
    rows = np.floor((np.asarray(ys) - t.f) / t.e).astype(int)
    h, w = native.data.shape[1:]
    inside = (cols >= 0) & (cols < w) & (rows >= 0) & (rows < h)
    values = np.full((native.data.shape[0], cols.size), np.nan, dtype=np.float64)
    values[:, inside] = native.data[:, rows[inside], cols[inside]]
    with np.errstate(all="ignore"):
        out = np.nanmean(values, axis=1)
    return out.astype(np.float32)


def first_per_month(entries: Iterable[tuple[str, dt.datetime]], months: list[tuple[int, int]]
                    ) -> dict[tuple[int, int], str]:
    """The id of the image each month of ``months`` is read from: the first by id of that month (every executor).

    Args:
        entries: (id, start time) of the images found.
        months: the months wanted, (year, month).
    """
    out: dict[tuple[int, int], str] = {}
    for image_id, when in sorted(entries, key=lambda e: e[0]):
        ym = (when.year, when.month)
        if ym in months and ym not in out:
            out[ym] = image_id
    return out


def run(ctx: TileContext) -> RecipeResult:
    ctx.source("era5_land_monthly")   # NoSource before any search
    months, start, _ = month_range(ctx.s2_date)
    (y1, m1) = months[-1]
    end = dt.datetime(y1, m1, 28, tzinfo=dt.timezone.utc)  # items start on the 1st
    found = {it.id: it for it in ctx.search("era5_land_monthly", start, end)}
    ids = first_per_month(((it.id, it.datetime) for it in found.values()), months)
    monthly = np.full((12, 4), np.nan, dtype=np.float32)
    for i, ym in enumerate(months):
        if ym in ids:
            native = ctx.read_native(NAME, "era5_land_monthly", found[ids[ym]], VARIABLES, margin_px=0)
            monthly[i] = area_mean(native, ctx.grid)
    return result(months, monthly, ids)


def result(months: list[tuple[int, int]], monthly: np.ndarray, ids: dict[tuple[int, int], str]) -> RecipeResult:
    """The v001 ``era5`` values and tile_info of 12 monthly means (NaN rows for missing months), shared by the
    pixel and the Earth Engine executor."""
    if not ids:
        (y0, m0), (y1, m1) = months[0], months[-1]
        raise NoCoverage(f"no ERA5-Land month over the tile in {y0}-{m0:02d}..{y1}-{m1:02d}")
    values = np.concatenate([monthly[-2], monthly[-1], yearly(monthly)]).astype(np.float32)
    missing = [f"{y}-{m:02d}" for y, m in months if (y, m) not in ids]
    prev, curr = (f"{y}{m:02d}" for y, m in months[-2:])
    names = [f"{p}_{v}" for p in (prev, curr) for v in VARIABLES] + list(YEAR_NAMES)
    era5_info = {"month1": [float(v) for v in values[0:4]], "month2": [float(v) for v in values[4:8]],
                 "year": [float(v) for v in values[8:12]]}
    return RecipeResult(arrays={NAME: values}, source_ids=[ids[m] for m in months if m in ids],
                        info={"era5": era5_info}, bands={NAME: names},
                        message=f"missing months: {', '.join(missing)}" if missing else "")
