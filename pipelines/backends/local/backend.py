"""``LocalBackend``: search static STAC catalogs in-process, read their COG assets onto tile grids with rasterio.

Reads build a ``WarpedVRT`` straight onto the tile grid (a VRT over the whole image, then windowed, warps far more
pixels than the tile needs); http(s) assets go through GDAL's ``/vsicurl/`` with GDAL's own retries off, so
every retry is ours and counted.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window, from_bounds

from ...faults import Attempts, CorruptSource, NotOrthorectified, RetryPolicy, TransientSourceError, with_retry
from ...grid import TileGrid, project
from ...items import Item
from ..base import NativeRaster
from .catalog import StaticCatalog
from ..capabilities import PLAIN
from .gdal_env import THREAD_STATE, forget_remote, thread_gdal_env
from .hrefs import file_path, gdal_path, is_remote, public_s3_url

RESAMPLING = {"nearest": Resampling.nearest, "bilinear": Resampling.bilinear, "mode": Resampling.mode}


class LocalBackend:
    """Search a static STAC catalog in-process; read its COG assets onto tile grids with rasterio."""

    name = "local"
    default_threads = 8
    capabilities = PLAIN

    def __init__(self, catalog: str | Sequence[str], *, timeout_s: float = 20.0, policy: RetryPolicy | None = None,
                 shared: Sequence[StaticCatalog] = (), open_datasets: int = 128, allow_outside: bool = False):
        roots = [catalog] if isinstance(catalog, (str, Path)) else list(catalog)
        self._reader(policy, timeout_s, open_datasets)
        self.catalogs = [StaticCatalog([str(r) for r in roots], policy=self.policy, allow_outside=allow_outside),
                         *shared]
        # local files of shared catalogs (the ERA5 months every tile reads) are held open like remote ones
        self._hold = tuple(str(Path(file_path(c.roots[0])).parent) + "/" for c in shared
                           if c.roots and c.roots[0].startswith("file:"))

    def _reader(self, policy: RetryPolicy | None, timeout_s: float, open_datasets: int) -> None:
        """The read side's settings (a backend that searches elsewhere, e.g. a STAC API, reads with this code)."""
        self.policy = policy or RetryPolicy()
        self.timeout_s = timeout_s
        self.open_datasets = open_datasets
        self.s3_public = False   # s3:// hrefs are public buckets (Earth Search's source maps say so)
        self._env = THREAD_STATE   # open datasets are shared by every backend of a thread: hrefs name them globally
        self.catalogs: list[StaticCatalog] = []
        self._hold: tuple[str, ...] = ()

    # -- search ------------------------------------------------------------------------------------------------
    def search(self, collection, bbox, start, end, filters=None) -> list[Item]:
        """``collection``: one id, or a tuple of ids searched together (a source spread over several)."""
        names = (collection,) if isinstance(collection, str) else tuple(collection)
        found = [it for c in self.catalogs for name in names for it in c.search(name, bbox, start, end, filters)]
        return sorted(found, key=lambda it: it.id) if len(self.catalogs) > 1 or len(names) > 1 else found

    # -- read --------------------------------------------------------------------------------------------------
    def _gdal_env(self) -> None:
        thread_gdal_env(self.timeout_s)

    def _on_retry(self, item: Item, href: str):
        return (lambda: forget_remote(self.signed(item, href))) if is_remote(href) else None

    def _by_asset(self, item: Item, bands: Sequence[str]) -> dict[str, tuple[str, list[int], list[int]]]:
        groups: dict[str, tuple[str, list[int], list[int]]] = {}
        for pos, b in enumerate(bands):
            ref = item.band(b)
            href, idx, out = groups.setdefault(ref.asset, (ref.href, [], []))
            idx.append(ref.index)
            out.append(pos)
        return groups

    def read(self, item: Item, bands: Sequence[str], grid: TileGrid, resampling: str,
             attempts: Attempts | None = None, keep_nodata: bool = False) -> np.ndarray:
        """``keep_nodata``: the files' declared no-data value is read as a value (Earth Search Collection 1's
        cloud probability declares no-data 0, a valid 0 %); outside the raster is still NaN."""
        out = np.full((len(bands), grid.height, grid.width), np.nan, dtype=np.float32)
        for href, indexes, positions in self._by_asset(item, bands).values():
            out[positions] = with_retry(
                lambda h=href, i=indexes: self._warp(self.signed(item, h), i, grid, resampling, keep_nodata),
                self.policy, is_remote(href), attempts, on_retry=self._on_retry(item, href))
        return out

    def signed(self, item: Item, href: str) -> str:
        """The href to open, just before it is opened (a backend with signed URLs signs it here). An ``s3://`` href
        of a public bucket (the item says ``storage:requester_pays: false``, or the source map ``s3_public``) is
        read anonymously over HTTPS."""
        pays = item.properties.get("storage:requester_pays")
        if href.startswith("s3://") and pays is not True and (self.s3_public or pays is False):
            return public_s3_url(href, item.properties.get("storage:region"))
        return href

    @staticmethod
    def _check(src, href: str) -> None:
        """A header cut short can still parse as a TIFF without georeferencing: never read that as data."""
        if (src.crs is None or src.transform.is_identity) and src.gcps[0]:
            raise NotOrthorectified(f"{href}: georeferenced by GCPs only, not orthorectified (use a terrain-corrected "
                                    "product, e.g. Sentinel-1 RTC or GEE's COPERNICUS/S1_GRD)")
        if src.crs is None or src.transform.is_identity:
            msg = f"{href}: no georeferencing in the GeoTIFF header (truncated or corrupt)"
            raise TransientSourceError(msg, becomes=CorruptSource) if is_remote(href) else CorruptSource(msg)

    def _open(self, href: str):
        """An open remote dataset from this thread's LRU: shared sources (ERA5 months) are read by many tiles, and
        each reopen would cost requests and parse the header again."""
        self._gdal_env()
        cache = getattr(self._env, "datasets", None)
        if cache is None:
            cache = self._env.datasets = OrderedDict()
        src = cache.pop(href, None)
        if src is None:
            src = rasterio.open(gdal_path(href))
            try:
                self._check(src, href)
            except Exception:
                src.close()
                raise
        cache[href] = src
        while len(cache) > self.open_datasets:
            cache.popitem(last=False)[1].close()
        return src

    def _evict(self, href: str) -> None:
        cache = getattr(self._env, "datasets", None)
        if cache is not None and href in cache:
            cache.pop(href).close()

    def _guarded(self, href: str, fn):
        """Run ``fn(src)`` on a dataset: remote ones come from the per-thread cache, and a failure closes and
        forgets them so a retry starts clean; local files are cheap to open and are not held (file handles)."""
        if not is_remote(href) and not (self._hold and href.startswith(self._hold)):
            self._gdal_env()
            with rasterio.open(href) as src:
                self._check(src, href)
                return fn(src)
        try:
            return fn(self._open(href))
        except Exception:
            self._evict(href)
            raise

    def _warp(self, href: str, indexes: list[int], grid: TileGrid, resampling: str,
              keep_nodata: bool = False) -> np.ndarray:
        def warp(src) -> np.ndarray:
            win = _aligned_window(src, grid)
            if win is not None:  # same CRS, same pixel grid, inside the raster: no resampling at all
                data = src.read(indexes, window=win, masked=not keep_nodata, out_dtype="float32")
            elif keep_nodata:   # no source no-data; the destination's own no-data marks what lies outside
                with WarpedVRT(src, crs=grid.crs, transform=grid.transform, width=grid.width, height=grid.height,
                               resampling=RESAMPLING[resampling], src_nodata=None, nodata=np.nan,
                               dtype="float32") as vrt:
                    data = vrt.read(indexes)
            else:
                with WarpedVRT(src, crs=grid.crs, transform=grid.transform, width=grid.width, height=grid.height,
                               resampling=RESAMPLING[resampling], src_nodata=src.nodata) as vrt:
                    data = vrt.read(indexes, masked=True, out_dtype="float32")
            return np.ma.filled(data, np.nan).astype(np.float32, copy=False)

        return self._guarded(href, warp)

    def read_native(self, item: Item, bands: Sequence[str], grid: TileGrid, margin_px: int = 2,
                    attempts: Attempts | None = None) -> NativeRaster:
        groups = list(self._by_asset(item, bands).values())
        if len(groups) != 1:
            raise ValueError("read_native reads bands of one asset")
        href, indexes, _ = groups[0]
        return with_retry(lambda: self._native(self.signed(item, href), indexes, grid, margin_px), self.policy,
                          is_remote(href), attempts, on_retry=self._on_retry(item, href))

    def _native(self, href: str, indexes: list[int], grid: TileGrid, margin_px: int) -> NativeRaster:
        def native(src) -> NativeRaster:
            epsg = src.crs.to_epsg()
            left, bottom, right, top = grid.bounds
            xs, ys = project(grid.epsg, epsg, [left, right, right, left], [top, top, bottom, bottom])
            win = from_bounds(min(xs), min(ys), max(xs), max(ys), src.transform)
            col0, row0 = math.floor(win.col_off) - margin_px, math.floor(win.row_off) - margin_px
            col1 = math.ceil(win.col_off + win.width) + margin_px
            row1 = math.ceil(win.row_off + win.height) + margin_px
            win = Window(col0, row0, col1 - col0, row1 - row0)
            inside = col0 >= 0 and row0 >= 0 and col1 <= src.width and row1 <= src.height
            # boundless reads build a VRT document per call: only pay for it at the raster's edge
            data = src.read(indexes, window=win, boundless=not inside, masked=True, out_dtype="float32")
            return NativeRaster(np.ma.filled(data, np.nan).astype(np.float32, copy=False), src.window_transform(win),
                                f"EPSG:{epsg}")

        return self._guarded(href, native)


def _aligned_window(src, grid: TileGrid) -> Window | None:
    """The window of ``src`` that is exactly ``grid`` (same CRS and pixel grid, fully inside), else None."""
    t = src.transform
    if src.crs is None or src.crs.to_epsg() != grid.epsg or t.b or t.d or abs(t.a - grid.res) > 1e-9 \
            or abs(t.e + grid.res) > 1e-9:
        return None
    col, row = (grid.x0 - t.c) / t.a, (grid.y0 - t.f) / t.e
    if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
        return None
    col, row = int(round(col)), int(round(row))
    if col < 0 or row < 0 or col + grid.width > src.width or row + grid.height > src.height:
        return None
    return Window(col, row, grid.width, grid.height)
