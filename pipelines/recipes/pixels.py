"""The pixel executor: a recipe's plan run by searching the tile's backend and reading onto the tile grid (``local``,
``stac``, ``synthetic``), with its operators written once here: the temporal reducers (first valid, mode), the
derived bands (slope, on the source's own grid before resampling) and the warp onto the tile grid."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from rasterio.crs import CRS
from rasterio.warp import Resampling, reproject

from ..faults import NoCoverage
from ..grid import TileGrid, metres_per_degree
from .base import RecipeResult, TileContext, first_valid
from .plan import FIRST_VALID, MODE, SLOPE, Composite, Reads, run_search


def slope_degrees(elevation: np.ndarray, transform, crs: str, lat: float) -> np.ndarray:
    """Slope from central differences (the 4-neighbour rule of ``ee.Terrain.slope``); NaN stays NaN.

    Args:
        elevation: (h, w) metres on its own grid.
        transform: that grid's affine transform.
        crs: that grid's CRS (a geographic one is scaled to metres at ``lat``).
        lat: the latitude of the tile.

    Returns:
        (h, w) float32 degrees.
    """
    dx, dy = abs(transform.a), abs(transform.e)
    if CRS.from_user_input(crs).is_geographic:
        lon_m, lat_m = metres_per_degree(lat)
        dx, dy = dx * lon_m, dy * lat_m
    gy, gx = np.gradient(elevation.astype(np.float64), dy, dx)
    return np.degrees(np.arctan(np.hypot(gx, gy))).astype(np.float32)


def warp_to_grid(data: np.ndarray, transform, crs: str, grid: TileGrid, resampling: str = "bilinear") -> np.ndarray:
    """Warp an in-memory (bands, h, w) float array with NaN as no-data onto ``grid``."""
    out = np.full((data.shape[0], grid.height, grid.width), np.nan, dtype=np.float32)
    reproject(data, out, src_transform=transform, src_crs=crs, src_nodata=np.nan, dst_transform=grid.transform,
              dst_crs=grid.crs, dst_nodata=np.nan, resampling=Resampling[resampling])
    return out


def temporal_mode(stack: np.ndarray, n_classes: int) -> np.ndarray:
    """Per-pixel mode of labels 0..n_classes-1 over axis 0 (NaN ignored); -1 where no layer has data."""
    counts = np.zeros((n_classes,) + stack.shape[1:], dtype=np.int32)
    for layer in stack:
        valid = np.isfinite(layer) & (layer >= 0) & (layer < n_classes)
        idx = np.where(valid, layer, 0).astype(np.int64)
        np.add.at(counts, (idx[valid],) + np.nonzero(valid), 1)
    mode = counts.argmax(axis=0)  # first maximum = smallest label
    return np.where(counts.max(axis=0) > 0, mode, -1)


def _mode(layers: Sequence[np.ndarray], plan: Composite) -> np.ndarray:
    """Per band, the mode of the items' labels (NaN where none has one)."""
    stack = np.stack(layers)
    modes = [temporal_mode(stack[:, k], plan.classes) for k in range(stack.shape[1])]
    return np.stack([np.where(m >= 0, m, np.nan) for m in modes]).astype(np.float32)


REDUCE: dict[str, Callable[[Sequence[np.ndarray], Composite], np.ndarray]] = {
    FIRST_VALID: lambda layers, plan: first_valid(layers),
    MODE: _mode,
}
DERIVE = {SLOPE: lambda native, lat: slope_degrees(native.data[0], native.transform, native.crs, lat)}


def run_composite(ctx: TileContext, plan: Composite) -> RecipeResult:
    """Every item of the plan's search read onto the tile grid (derived bands first, on the item's own grid),
    reduced, finished.

    Raises:
        NoCoverage: the search finds nothing.
    """
    found = run_search(ctx, plan.search)
    if not found:
        raise NoCoverage(plan.empty)
    source, bands = plan.search.source, list(plan.bands)
    layers = []
    for item in found:
        if not plan.derive:
            layers.append(ctx.read(plan.recipe, source, item, bands, plan.resampling))
            continue
        native = ctx.read_native(plan.recipe, source, item, bands)
        derived = [DERIVE[d](native, ctx.lat) for d in plan.derive]
        layers.append(warp_to_grid(np.stack([*native.data, *derived]), native.transform, native.crs, ctx.grid,
                                   plan.resampling))
    return plan.finish(REDUCE[plan.reducer](layers, plan), [it.id for it in found], len(found))


def run_reads(ctx: TileContext, plan: Reads) -> RecipeResult | None:
    """Each read of the plan onto the tile grid, finished (None where the finish says the items are empty)."""
    values = [ctx.read(plan.recipe, r.source, r.item, list(r.bands), r.resampling, harmonize=r.harmonize)
              for r in plan.reads]
    first: dict[int, int] = {}
    for k, r in enumerate(plan.reads):
        j = first.setdefault(id(r.item), k)
        kept = [i for i, b in enumerate(r.bands) if b in ctx.source(r.source).valid_nodata]
        if kept and j != k:   # read unmasked (the files' no-data is one of their values): masked outside the
            outside = ~np.any(np.isfinite(values[j]), axis=0)   # item, where its first read has no pixel
            for i in kept:
                values[k][i][outside] = np.nan
    return plan.finish(values)
