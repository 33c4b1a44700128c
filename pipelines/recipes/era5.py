"""ERA5-Land monthly aggregates as 12 scalars: previous month, S2 month, and the 12 months ending with the S2 month.

Each month is the mean over the tile (MMEarth: ``reduceRegion(mean)``). The yearly reducers are those of the
original: mean of ``temperature_2m``, min of ``_min``, max of ``_max``, sum of ``total_precipitation_sum``. The
original's yearly window spanned 13 monthly images; this one spans exactly 12. A month that is missing makes the
values that need it NaN (no data) and is named in the ledger message.
"""
from __future__ import annotations

import datetime as dt

import numpy as np

from ..faults import NoCoverage
from .base import RecipeResult, TileContext

NAME = "era5"
OUTPUTS = ("era5",)
VARIABLES = ("temperature_2m", "temperature_2m_min", "temperature_2m_max", "total_precipitation_sum")
YEAR_NAMES = ("0_temperature_2m_mean", "1_temperature_2m_min_min", "2_temperature_2m_max_max",
              "3_total_precipitation_sum_sum")
COARSEN = 16  # the tile mean of a ~9 km product needs few samples


def window_months(year: int, month: int, n: int = 12) -> list[tuple[int, int]]:
    """The ``n`` months ending with (year, month), oldest first."""
    index = year * 12 + (month - 1)
    return [(i // 12, i % 12 + 1) for i in range(index - n + 1, index + 1)]


def yearly(monthly: np.ndarray) -> np.ndarray:
    """(12, 4) monthly means -> the 4 yearly values (NaN when any month is missing)."""
    return np.array([monthly[:, 0].mean(), monthly[:, 1].min(), monthly[:, 2].max(), monthly[:, 3].sum()],
                    dtype=np.float32)


def run(ctx: TileContext) -> RecipeResult:
    src = ctx.sources["era5_land_monthly"]
    months = window_months(ctx.s2_date.year, ctx.s2_date.month)
    (y0, m0), (y1, m1) = months[0], months[-1]
    start = dt.datetime(y0, m0, 1, tzinfo=dt.timezone.utc)
    end = dt.datetime(y1, m1, 28, tzinfo=dt.timezone.utc)  # items start on the 1st
    found = ctx.search("era5_land_monthly", start, end)
    by_month = {}
    for it in found:
        key = (it.datetime.year, it.datetime.month)
        by_month.setdefault(key, it)
    if not by_month:
        raise NoCoverage(f"no ERA5-Land month over the tile in {y0}-{m0:02d}..{y1}-{m1:02d}")
    grid = ctx.grid.coarsen(COARSEN)
    monthly = np.full((12, 4), np.nan, dtype=np.float32)
    for i, ym in enumerate(months):
        it = by_month.get(ym)
        if it is not None:
            data = ctx.read(NAME, it, [src.band(v) for v in VARIABLES], "bilinear", grid=grid)
            with np.errstate(all="ignore"):
                monthly[i] = [np.nanmean(b) if np.isfinite(b).any() else np.nan for b in data]
    values = np.concatenate([monthly[-2], monthly[-1], yearly(monthly)]).astype(np.float32)
    missing = [f"{y}-{m:02d}" for y, m in months if (y, m) not in by_month]
    prev, curr = (f"{y}{m:02d}" for y, m in months[-2:])
    names = [f"{p}_{v}" for p in (prev, curr) for v in VARIABLES] + list(YEAR_NAMES)
    era5_info = {"month1": [float(v) for v in values[0:4]], "month2": [float(v) for v in values[4:8]],
                 "year": [float(v) for v in values[8:12]]}
    return RecipeResult(arrays={NAME: values}, source_ids=[by_month[m].id for m in months if m in by_month],
                        info={"era5": era5_info}, bands={NAME: names},
                        message=f"missing months: {', '.join(missing)}" if missing else "")
