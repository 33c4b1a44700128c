"""Each modality's part of a tile's merged image, and the recipe's conversion of its pixels."""
from __future__ import annotations

import numpy as np

from mmearth_data.errors import MMEarthError

from ...faults import NoCoverage
from ...items import Item
from ...recipes import landcover, sentinel1, sentinel2, terrain
from ...recipes.base import RecipeResult, Source, TileContext, to_dataset
from . import expressions as ex
from .pixels import Compiled
from .templates import Part

COMPILED = ("sentinel2", "sentinel1", "aster", "canopy_height_eth", "dynamic_world", "esa_worldcover", "era5")


class EmptyScene(NoCoverage):
    """The chosen scene is no-data over the tile: the next candidate is tried (as the pixel executor does)."""


def _region(ctx: TileContext) -> list[float]:
    """The tile's lon/lat bounds: the coordinates of the region its composites are filtered by."""
    return [float(v) for v in ctx.grid.bbox_lonlat()]


def compile_recipe(ctx: TileContext, recipe: str, sources: dict[str, Source]) -> Compiled:
    """The v001 bands of ``recipe`` as an image with explicit no-data, and how to turn them into its result."""
    if recipe == "dynamic_world":
        src = ctx.source("dynamic_world")
        part = Part(ex.dynamic_world, (src.collection, src.band("label"), ctx.s2_date.year),
                    {"region": _region(ctx)})
        return Compiled(part, ["dynamic_world"], lambda px: _dw(px, sources))
    if recipe == "esa_worldcover":
        src = ctx.source("esa_worldcover")
        part = Part(ex.worldcover, (src.collection, src.band("Map")), {"region": _region(ctx)})
        return Compiled(part, ["esa_worldcover"], lambda px: _esa(px, sources))
    if recipe == "canopy_height_eth":
        src = ctx.source("canopy_height")
        part = Part(ex.canopy, (src.collection, src.band("height"), src.options["std_collection"], src.band("std"),
                                src.options.get("kind", "collection")), {"region": _region(ctx)})
        return Compiled(part, ["canopy_height", "canopy_std"], lambda px: _canopy(px, sources))
    if recipe == "sentinel1":
        return _compile_s1(ctx)
    if recipe == "aster":
        return _compile_aster(ctx)
    raise MMEarthError(f"the Earth Engine executor does not compile {recipe} (it compiles {', '.join(COMPILED)})")


def compile_scene(ctx: TileContext, item: Item, level: str) -> Compiled:
    """The Sentinel-2 scene ``item`` of ``level``: its bands by id, and the recipe's result (:class:`EmptyScene`
    when it has no valid pixel over the tile)."""
    src = ctx.source(f"sentinel2_{level}")
    spectral, continuous, categorical = sentinel2.scene_bands(ctx, item, level)
    smooth = spectral + continuous

    def finish(px):
        values = {}
        for names, reflectance in ((spectral, True), (continuous + categorical, False)):
            if names:
                values.update(zip(names, src.apply(item, np.stack([px[f"s2_{b}"] for b in names]), reflectance)))
        result = sentinel2.scene_result(ctx, item, level, values)
        if result is None:
            raise EmptyScene(item.id)
        return result
    part = Part(ex.sentinel2, (tuple((src.band(b), f"s2_{b}") for b in smooth),
                               tuple((src.band(b), f"s2_{b}") for b in categorical)),
                {"id": f"{src.collection}/{item.id}"})
    return Compiled(part, [f"s2_{b}" for b in smooth + categorical], finish)


def _compile_s1(ctx: TileContext) -> Compiled:
    src = ctx.source("sentinel1")
    chosen = sentinel1.picks(ctx)
    layout, ids, bands = [], {}, []
    for slot, item, pols in chosen:
        if item is not None and pols:
            names = [f"s1_{slot}_{p}" for p in pols]
            layout.append((slot, tuple(src.band(p) for p in pols), tuple(names)))
            ids[str(slot)] = f"{src.collection}/{item.id}"
            bands += names

    def finish(px):
        layers = {slot: dict(zip(pols, src.apply(item, np.stack([px[f"s1_{slot}_{p}"] for p in pols]))))
                  for slot, item, pols in chosen if item is not None and pols}
        return sentinel1.result(ctx, chosen, layers)
    return Compiled(Part(ex.sentinel1, (tuple(layout),), ids) if layout else None, bands, finish)


def _compile_aster(ctx: TileContext) -> Compiled:
    src = ctx.source("dem")
    found = terrain.tiles(ctx)

    def finish(px):
        values = np.stack([src.apply(found[0], px["aster_elevation"]), px["aster_slope"]])
        if not np.isfinite(values[0]).any():   # an Image asset is not searched: past its coverage it is empty
            raise NoCoverage("no elevation data over the tile")
        return terrain.result(values, [it.id for it in found])
    part = Part(ex.aster, (src.collection, src.band("elevation"), src.options.get("kind", "collection")),
                {"region": _region(ctx)})
    return Compiled(part, ["aster_elevation", "aster_slope"], finish)


def _dw(px, sources) -> RecipeResult:
    v = px["dynamic_world"]
    valid = np.isfinite(v) & (v >= 1) & (v <= landcover.DW_CLASSES)
    out = np.where(valid, v, 0).astype(np.uint8)[None]
    return RecipeResult(arrays={landcover.DW: out}, source_ids=[sources["dynamic_world"].collection],
                        bands={landcover.DW: ["label"]}, message="mode over the S2 calendar year (Earth Engine)")


def _esa(px, sources) -> RecipeResult:
    v = px["esa_worldcover"]
    valid = np.isfinite(v) & (v > 0) & (v < 255)
    out = np.where(valid, v, 255).astype(np.uint8)[None]
    return RecipeResult(arrays={landcover.ESA: out}, source_ids=[sources["esa_worldcover"].collection],
                        bands={landcover.ESA: ["Map"]})


def _canopy(px, sources) -> RecipeResult:
    stack = np.stack([px["canopy_height"], px["canopy_std"]])
    stack[stack == ex.NODATA["canopy"]] = np.nan
    src = sources["canopy_height"]
    return RecipeResult(arrays={"canopy_height_eth": to_dataset("canopy_height_eth", stack)},
                        source_ids=[src.collection, src.options["std_collection"]],
                        bands={"canopy_height_eth": ["height", "std"]})
