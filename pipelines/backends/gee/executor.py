"""The Earth Engine executor: a tile's modalities compiled into one merged ``ee.Image`` and fetched with one
``ee.data.computePixels`` (NumPy) on the tile grid, instead of a search and a read per item.

Each modality's rule is the pixel executor's rule (its constants come from the recipe modules), written as an
Earth Engine expression: Dynamic World is ``label`` over the S2 calendar year, reduced with the mode (ties to the
smaller label, as ``temporal_mode``) and + 1; ESA WorldCover v100 is the mosaic with the first item by id on top,
as ``first_valid``; the ETH canopy height and its SD are resampled bilinearly. Every band is unmasked to an
explicit no-data value before the download (computePixels returns masked pixels as 0, which is a valid label).
The post-processing to v001 dtypes is the pixel executor's (``to_dataset``), so both give the same bytes for the
same input pixels.

ERA5-Land is 12 monthly ``reduceRegion(mean)`` over the tile, sampled on the pixel executor's 16 x 16 cell grid
(``crsTransform``), in one ``value:compute``.

Now: the modalities that need no scene selection (``canopy_height_eth``, ``dynamic_world``, ``esa_worldcover``,
``era5``), with the tile's grid and S2 date fixed by the main backend (``--modality-backend MOD=gee``): at most two
requests per tile for all of them. Scene selection on Earth Engine (S2, S1, ASTER slope: ``--backend gee``) is
not built yet.
"""
from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from mmearth_data.errors import MMEarthError

from ...faults import Attempts, RetryPolicy, SourceError, TransientSourceError, classify, retry_after, with_retry
from ...recipes import era5, landcover
from ...recipes.base import RecipeResult, Source, TileContext, to_dataset
from .limiter import AimdLimiter

NODATA = {"dynamic_world": 0, "esa_worldcover": 255, "canopy": -9999}
MAX_BYTES = 48 * 1024 * 1024    # computePixels response limit
MAX_SIDE = 10_000               # pixels per side
COMPILED = ("canopy_height_eth", "dynamic_world", "esa_worldcover", "era5")   # recipe names this executor serves
VALUES = ("era5",)   # computed by value:compute (reduceRegion), not computePixels


class EarthEngineError(SourceError):
    """Earth Engine refused the expression (an invalid argument, a missing asset): retrying cannot help."""

    error_class = "earth_engine"


class GeeExecutor:
    """Compiles and fetches the modalities routed to Earth Engine; one instance (limiter, counters) per process."""

    compiles = True
    name = "gee"

    def __init__(self, sources: dict[str, Source], project: str, *, key_file: str | None = None,
                 url: str | None = None, high_volume: bool = False, concurrency: int = 40,
                 policy: RetryPolicy | None = None):
        from .session import connect

        connect(project, key_file, url, high_volume)
        self.sources = sources
        self.policy = policy or RetryPolicy()
        self.limiter = AimdLimiter(concurrency)
        self.requests = 0
        self._lock = threading.Lock()

    # -- compile -----------------------------------------------------------------------------------------------
    def _region(self, ctx: TileContext):
        import ee

        left, bottom, right, top = ctx.grid.bbox_lonlat()
        return ee.Geometry.Rectangle([left, bottom, right, top], None, False)

    def compile(self, ctx: TileContext, recipe: str):
        """The v001 bands of ``recipe`` on Earth Engine, as an image with explicit no-data (see module doc)."""
        import ee

        region = self._region(ctx)
        if recipe == "dynamic_world":
            src = self.sources["dynamic_world"]
            year = ctx.s2_date.year
            ic = (ee.ImageCollection(src.collection).filterDate(f"{year}-01-01", f"{year + 1}-01-01")
                  .filterBounds(region).select([src.band("label")]))
            # an empty year has no band to reduce: then a fully masked image, i.e. no data, never a label
            empty = ee.Image.constant(-1).updateMask(0).rename(["label_mode"])
            mode = ee.Image(ee.Algorithms.If(ic.size().gt(0), ic.reduce(ee.Reducer.mode()), empty))
            return mode.unmask(-1).add(1).rename(["dynamic_world"])
        if recipe == "esa_worldcover":
            src = self.sources["esa_worldcover"]
            ic = ee.ImageCollection(src.collection).filterBounds(region).select([src.band("Map")])
            # mosaic puts the last image on top: sort descending so the first by id wins, as first_valid does
            empty = ee.Image.constant(0).updateMask(0).rename([src.band("Map")])
            top = ee.Image(ee.Algorithms.If(ic.size().gt(0), ic.sort("system:index", False).mosaic(), empty))
            return top.unmask(NODATA["esa_worldcover"]).rename(["esa_worldcover"])
        if recipe == "canopy_height_eth":
            src = self.sources["canopy_height"]
            height = ee.Image(src.collection).select([src.band("height")]).rename(["canopy_height"])
            std = ee.Image(src.options["std_collection"]).select([src.band("std")]).rename(["canopy_std"])
            return (height.addBands(std).resample("bilinear").toFloat()
                    .unmask(NODATA["canopy"]))
        raise MMEarthError(f"the Earth Engine executor does not compile {recipe} yet (it compiles {', '.join(COMPILED)})")

    def merged(self, ctx: TileContext, recipes: Sequence[str]):
        import ee

        return ee.Image.cat([self.compile(ctx, r) for r in recipes]).toFloat()

    # -- fetch -------------------------------------------------------------------------------------------------
    @staticmethod
    def grid_spec(ctx: TileContext) -> dict[str, Any]:
        t = ctx.grid.transform
        return {"dimensions": {"width": ctx.grid.width, "height": ctx.grid.height},
                "affineTransform": {"scaleX": t.a, "shearX": t.b, "translateX": t.c, "shearY": t.d,
                                    "scaleY": t.e, "translateY": t.f},
                "crsCode": f"EPSG:{ctx.grid.epsg}"}

    def _pixels(self, image, bands: list[str], grid: dict, attempts: Attempts | None) -> np.ndarray:
        import ee

        def once():
            with self.limiter.slot():
                with self._lock:
                    self.requests += 1
                try:
                    out = ee.data.computePixels({"expression": image, "fileFormat": "NUMPY_NDARRAY", "grid": grid,
                                                 "bandIds": bands})
                except Exception as e:  # noqa: BLE001 - classified: quota errors slow everyone down
                    raise self._classify(e) from None
            self.limiter.success()
            return out

        return with_retry(once, self.policy, remote=True, attempts=attempts)

    def _classify(self, exc: BaseException):
        """Quota errors slow every thread down and are retried; 5xx and timeouts are retried; any other answer of
        Earth Engine (an invalid expression, a missing asset) is permanent."""
        text = f"{type(exc).__name__}: {exc}"
        http = exc if hasattr(exc, "resp") else exc.__context__   # ee wraps googleapiclient's HttpError
        status = getattr(getattr(http, "resp", None), "status", None)
        if self.limiter.is_overload(exc) or status == 429:
            self.limiter.overload()
            return TransientSourceError(text, retry_after_s=retry_after(_header(http, "Retry-After")))
        if status is not None and int(status) >= 500:
            return TransientSourceError(text)
        if status is not None:
            return EarthEngineError(text)
        return classify(exc, remote=True)

    def fetch(self, ctx: TileContext, recipes: Sequence[str], attempts: Attempts | None = None) -> dict[str, np.ndarray]:
        """Band name -> float32 (h, w), in as few computePixels calls as the limits allow."""
        bands = [b for r in recipes for b in BANDS[r]]
        h, w = ctx.grid.height, ctx.grid.width
        if max(h, w) > MAX_SIDE:
            raise MMEarthError(f"tile of {w} x {h} px: Earth Engine serves at most {MAX_SIDE} px per side")
        per_band = h * w * 4
        group = max(1, MAX_BYTES // per_band)
        image = self.merged(ctx, recipes)
        grid = self.grid_spec(ctx)
        out: dict[str, np.ndarray] = {}
        for i in range(0, len(bands), group):   # split by bands when one response would pass 48 MB
            part = bands[i:i + group]
            arr = self._pixels(image, part, grid, attempts)
            for b in part:
                out[b] = np.asarray(arr[b], dtype=np.float32)
        return out

    # -- results -----------------------------------------------------------------------------------------------
    def run(self, ctx: TileContext, recipes: Sequence[str]) -> dict[str, RecipeResult | BaseException]:
        """Every recipe of ``recipes`` for this tile: the pixel modalities from one merged computePixels, ERA5 from
        one value:compute (an exception per recipe when its request fails)."""
        out: dict[str, RecipeResult | BaseException] = {}
        pixels = [r for r in recipes if r not in VALUES]
        if pixels:
            counter = ctx.counter(pixels[0])
            try:
                px = self.fetch(ctx, pixels, counter)
            except Exception as e:  # noqa: BLE001 - recorded per modality by the export
                out.update({r: e for r in pixels})
            else:
                for r in pixels[1:]:   # one request served them all: each carries the tries it cost
                    ctx.counter(r).add(counter.tries)
                out.update({r: POST[r](self, px) for r in pixels})
        if "era5" in recipes:
            try:
                out["era5"] = self.era5(ctx, ctx.counter("era5"))
            except Exception as e:  # noqa: BLE001
                out["era5"] = e
        return out

    # -- ERA5-Land: 12 monthly area means in one value:compute ---------------------------------------------------
    def compile_era5(self, ctx: TileContext):
        """Each month's mean over the tile, sampled at the centres of the 16 x 16 cells the pixel executor uses
        (``reduceRegion`` on that grid: every cell lies inside the tile, so each weighs the same)."""
        import ee

        src = self.sources["era5_land_monthly"]
        _, start, end = era5.month_range(ctx.s2_date)
        cells = era5.sample_grid(ctx.grid)
        t = cells.transform
        crs = f"EPSG:{ctx.grid.epsg}"
        region = ee.Geometry.Rectangle(list(ctx.grid.bounds), crs, False)
        ic = (ee.ImageCollection(src.collection).filterDate(start.strftime("%Y-%m-%d"), end.strftime("%Y-%m-%d"))
              .filterBounds(region).select([src.band(v) for v in era5.VARIABLES]))

        def month(img):
            stats = img.reduceRegion(reducer=ee.Reducer.mean(), geometry=region, crs=crs,
                                     crsTransform=[t.a, t.b, t.c, t.d, t.e, t.f], maxPixels=1_000_000)
            return (ee.Feature(None, stats).set("system:time_start", img.get("system:time_start"))
                    .set("system:index", img.get("system:index")))
        return ee.FeatureCollection(ic.map(month))

    def era5(self, ctx: TileContext, attempts: Attempts | None = None) -> RecipeResult:
        import ee

        src = self.sources["era5_land_monthly"]
        expr = self.compile_era5(ctx)

        def once():
            with self.limiter.slot():
                with self._lock:
                    self.requests += 1
                try:
                    value = ee.data.computeValue(expr)
                except Exception as e:  # noqa: BLE001
                    raise self._classify(e) from None
            self.limiter.success()
            return value

        value = with_retry(once, self.policy, remote=True, attempts=attempts)
        months, _, _ = era5.month_range(ctx.s2_date)
        monthly = np.full((12, 4), np.nan, dtype=np.float32)
        ids: dict[tuple[int, int], str] = {}
        for f in sorted(value.get("features", []), key=lambda f: str(f["properties"].get("system:index"))):
            p = f["properties"]
            t = dt.datetime.fromtimestamp(p["system:time_start"] / 1000, dt.timezone.utc)
            ym = (t.year, t.month)
            if ym in months and ym not in ids:
                ids[ym] = f"{src.collection}/{p['system:index']}"
                monthly[months.index(ym)] = [np.nan if p.get(src.band(v)) is None else p[src.band(v)]
                                             for v in era5.VARIABLES]
        return era5.result(months, monthly, ids)

    def _dw(self, px) -> RecipeResult:
        v = px["dynamic_world"]
        valid = np.isfinite(v) & (v >= 1) & (v <= landcover.DW_CLASSES)
        out = np.where(valid, v, 0).astype(np.uint8)[None]
        return RecipeResult(arrays={landcover.DW: out}, source_ids=[self.sources["dynamic_world"].collection],
                            bands={landcover.DW: ["label"]}, message="mode over the S2 calendar year (Earth Engine)")

    def _esa(self, px) -> RecipeResult:
        v = px["esa_worldcover"]
        valid = np.isfinite(v) & (v > 0) & (v < 255)
        out = np.where(valid, v, 255).astype(np.uint8)[None]
        return RecipeResult(arrays={landcover.ESA: out}, source_ids=[self.sources["esa_worldcover"].collection],
                            bands={landcover.ESA: ["Map"]})

    def _canopy(self, px) -> RecipeResult:
        stack = np.stack([px["canopy_height"], px["canopy_std"]])
        stack[stack == NODATA["canopy"]] = np.nan
        src = self.sources["canopy_height"]
        return RecipeResult(arrays={"canopy_height_eth": to_dataset("canopy_height_eth", stack)},
                            source_ids=[src.collection, src.options["std_collection"]],
                            bands={"canopy_height_eth": ["height", "std"]})


BANDS = {"dynamic_world": ["dynamic_world"], "esa_worldcover": ["esa_worldcover"],
         "canopy_height_eth": ["canopy_height", "canopy_std"]}
POST = {"dynamic_world": GeeExecutor._dw, "esa_worldcover": GeeExecutor._esa,
        "canopy_height_eth": GeeExecutor._canopy}


def _header(exc: BaseException, name: str) -> str | None:
    resp = getattr(exc, "resp", None)
    try:
        return resp.get(name) if resp is not None else None
    except AttributeError:
        return None

