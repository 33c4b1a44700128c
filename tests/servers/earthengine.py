"""An Earth Engine stand-in on loopback for the unmodified ``ee`` client: it serves the discovery document and the
algorithm list shipped in the package, and evaluates the subset of the expression graph the backend emits over a
local world (a static STAC catalog of COGs, read with the same rasterio code as ``--backend local``).

Supported: ``ImageCollection.load``, ``Image.load`` (an asset, or ``collection/item id``), ``Collection.filter``
with ``Filter.dateRangeContains`` / ``intersects`` / ``contains`` (footprint contains a geometry) / ``lessThan`` /
``equals`` and the other comparisons, ``Filter.not``, ``Collection.map``, ``Collection.limit`` (sort, of images or
features), ``Collection.size``, ``AggregateFeatureCollection.array``, ``List.add/get``, ``Number.gt/subtract/abs/
multiply/floor/int/toInt/min/max``, ``If``, ``Element.get/set``, ``Dictionary`` values, ``Image.select/rename/add/addBands/
unmask/updateMask/resample/toFloat/constant/projection``, ``Terrain.slope`` (on the image's own grid, before
resampling), ``ImageCollection.reduce`` with ``Reducer.mode``, ``ImageCollection.mosaic`` and
``Image.reduceRegion(mean)``; ``value:compute``, ``image:computePixels`` (NumPy), ``projects.assets.get`` and an
OAuth token endpoint (``/token``). Image properties carry Earth
Engine's names (``assets`` maps them from the catalog's, e.g. ``CLOUDY_PIXEL_PERCENTAGE`` from ``eo:cloud_cover``).
Anything else
answers 400 "unknown function", so the stand-in never invents data. Every request is recorded; ``faults`` (one
per request, as the Range server's) inject ``("status", code, message)`` answers such as 429 "Too many concurrent
aggregations.", ``("delay", seconds)`` (answer late: past the client's timeout, a stalled request) and
``("truncate", nbytes)`` (the headers of the full answer, then ``nbytes`` of it and a hang-up).

Each behaviour, and the public evidence for it (or that it is an assumption), is listed in the conformance table of
tests/servers/README.md: change the two together.
"""
from __future__ import annotations

import datetime as dt
import io
import json
import math
import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import shapely

from .loopback import LoopbackServer, QuietHandler


@dataclass
class Img:
    bands: list[str]
    render: Callable[[Any, str | None], dict[str, np.ndarray]]   # (grid, resampling) -> band -> float32, NaN = masked
    props: dict[str, Any] = field(default_factory=dict)
    origin: dict[str, tuple[Any, str]] = field(default_factory=dict)   # band -> (catalog item, catalog band)
    footprint: Any = None     # lon/lat geometry outside which every pixel is masked (None: unbounded, a constant)
    parts: list | None = None   # a mosaic's images, last on top (Terrain.slope runs on each, on its own grid)
    pinned: bool = False      # reprojected to its own projection: computed there, not in the requested one

    def derived(self, bands: list[str], render, origin: dict | None = None, parts: list | None = None) -> "Img":
        """An image computed from this one: the same properties, footprint and projection."""
        return Img(bands, render, self.props, self.origin if origin is None else origin, self.footprint, parts,
                   self.pinned)


# Asset types of the real catalog (real-services.md, "Asset types"): ImageCollection.load of an Image asset, or
# Image.load of a collection, is an error there, and so it is here
ASSET_TYPES = {
    "COPERNICUS/S2_SR_HARMONIZED": "IMAGE_COLLECTION", "COPERNICUS/S2_HARMONIZED": "IMAGE_COLLECTION",
    "COPERNICUS/S1_GRD": "IMAGE_COLLECTION", "GOOGLE/DYNAMICWORLD/V1": "IMAGE_COLLECTION",
    "ESA/WorldCover/v100": "IMAGE_COLLECTION", "ECMWF/ERA5_LAND/MONTHLY_AGGR": "IMAGE_COLLECTION",
    "projects/sat-io/open-datasets/ASTER/GDEM": "IMAGE",
    "users/nlang/ETH_GlobalCanopyHeight_2020_10m_v1": "IMAGE", "users/nlang/ETH_GlobalCanopyHeightSD_2020_10m_v1": "IMAGE",
}


# Earth Engine's property names over a static catalog's (and the conversion of the value, where it differs)
PROPERTIES = {
    "sentinel2_l2a": {"CLOUDY_PIXEL_PERCENTAGE": "eo:cloud_cover"},
    "sentinel2_l1c": {"CLOUDY_PIXEL_PERCENTAGE": "eo:cloud_cover"},
    "sentinel1": {"orbitProperties_pass": ("sat:orbit_state", str.upper),
                  "transmitterReceiverPolarisation": "sar:polarizations", "instrumentMode": "sar:instrument_mode"},
}


def assets_over(local_map: str = "local", gee_map: str = "gee") -> dict:
    """The stand-in's ``assets`` for a static catalog described by ``catalogs/sources/<local_map>.yaml``: every
    Earth Engine asset of ``<gee_map>.yaml`` served from the catalog's collection of the same logical source."""
    from pipelines.recipes.base import load_source_map

    gee, local = load_source_map(gee_map).sources, load_source_map(local_map).sources
    out = {}
    for key, g in gee.items():
        here = local[key]
        if "std_collection" in g.options:   # one Earth Engine image per band (the ETH height and its SD)
            out[g.collection] = (here.collection, {g.band("height"): here.band("height")})
            out[g.options["std_collection"]] = (here.collection, {g.band("std"): here.band("std")})
            continue
        out[g.collection] = (here.collection, {g.bands[b]: here.bands[b] for b in g.bands if b in here.bands},
                             PROPERTIES.get(key, {}))
    return out


class Coll(list):
    """An Earth Engine collection (an empty one still answers as a FeatureCollection)."""


class Evaluator:
    """``assets``: Earth Engine id -> (local collection, {Earth Engine band: local band}[, {Earth Engine property:
    catalog property or (catalog property, conversion)}])."""

    def __init__(self, backend, assets: dict[str, tuple[str, dict[str, str]]]):
        self.backend = backend
        self.assets = assets
        self._loaded: dict[str, list] = {}   # asset -> its images (the world is static: listed once)
        self.reductions = 0                  # reduceRegion calls evaluated (Earth Engine bills each)
        self._lock = threading.Lock()

    # -- graph -------------------------------------------------------------------------------------------------
    def evaluate(self, graph: dict) -> Any:
        values = graph["values"]

        def ev(node, env):
            if "constantValue" in node:
                return node["constantValue"]
            if "valueReference" in node:
                return ev(values[node["valueReference"]], env)
            if "argumentReference" in node:
                return env[node["argumentReference"]]
            if "arrayValue" in node:
                return [ev(v, env) for v in node["arrayValue"]["values"]]
            if "dictionaryValue" in node:
                return {k: ev(v, env) for k, v in node["dictionaryValue"]["values"].items()}
            if "functionDefinitionValue" in node:
                fd = node["functionDefinitionValue"]
                return lambda *args: ev(values[fd["body"]], {**env, **dict(zip(fd["argumentNames"], args))})
            if "functionInvocationValue" in node:
                fi = node["functionInvocationValue"]
                name = fi["functionName"]
                fn = FUNCTIONS.get(name)
                if fn is None:
                    raise ValueError(f"unknown function {name} (the stand-in does not evaluate it)")
                return fn(self, **{k: ev(v, env) for k, v in fi.get("arguments", {}).items()})
            raise ValueError(f"unknown node {sorted(node)}")

        return ev(values[graph["result"]], {})

    # -- world -------------------------------------------------------------------------------------------------
    def items(self, asset_id: str):
        if asset_id not in self.assets:
            raise ValueError(f"asset {asset_id} not found in the stand-in's world")
        collection = self.assets[asset_id][0]
        found = self.backend.search(collection, (-180, -90, 180, 90), None, None)
        return sorted(found, key=lambda it: it.id)

    def asset_type(self, asset_id: str) -> str:
        if asset_id not in self.assets:
            raise ValueError(f"Asset '{asset_id}' not found (does not exist or caller does not have access).")
        return ASSET_TYPES.get(asset_id, "IMAGE_COLLECTION")

    def collection(self, asset_id: str) -> "Coll":
        """``ImageCollection.load``: an Image asset is refused."""
        if self.asset_type(asset_id) != "IMAGE_COLLECTION":
            raise ValueError(f"ImageCollection.load: Asset '{asset_id}' is not an ImageCollection (it is an "
                             f"{self.asset_type(asset_id)}).")
        return self._images(asset_id)

    def _images(self, asset_id: str) -> "Coll":
        with self._lock:
            if asset_id not in self._loaded:
                self._loaded[asset_id] = [self.image_of(asset_id, it) for it in self.items(asset_id)]
            return Coll(self._loaded[asset_id])

    def image_of(self, asset_id: str, item) -> Img:
        bandmap = self.assets[asset_id][1]
        propmap = self.assets[asset_id][2] if len(self.assets[asset_id]) > 2 else {}
        names = [b for b in bandmap if item.has_band(bandmap[b])]

        def render(grid, resampling):
            data = self.backend.read(item, [bandmap[b] for b in names], grid, resampling or "nearest")
            return dict(zip(names, data))

        t = item.datetime
        props = {"system:index": item.id, "system:time_start": int(t.timestamp() * 1000) if t else 0,
                 "geometry": item.geometry}
        for ee_name, local in propmap.items():
            local, convert = local if isinstance(local, tuple) else (local, None)
            if local in item.properties:
                props[ee_name] = convert(item.properties[local]) if convert else item.properties[local]
        return Img(names, render, props, {b: (item, bandmap[b]) for b in names}, item.geometry)

    def load(self, image_id: str) -> Img:
        """An Image asset (in this world: its catalog items mosaicked, the first by id on top) or one image of a
        collection, ``<collection id>/<image id>``; a collection's id is refused, as Earth Engine refuses it."""
        if image_id in self.assets:
            if self.asset_type(image_id) != "IMAGE":
                raise ValueError(f"Image.load: Asset '{image_id}' is not an Image (it is an "
                                 f"{self.asset_type(image_id)}).")
            return _mosaic(list(reversed(self._images(image_id))))
        collection, _, item_id = image_id.rpartition("/")
        found = [im for im in self.collection(collection) if im.props["system:index"] == item_id] \
            if self.assets.get(collection) and self.asset_type(collection) == "IMAGE_COLLECTION" else []
        if not found:
            raise ValueError(f"Image.load: Asset '{image_id}' not found (does not exist or caller does not have "
                             "access).")
        return found[0]


def _const_img(v) -> Img:
    if isinstance(v, Img):
        return v
    return Img(["constant"], lambda g, r: {"constant": np.full((g.height, g.width), float(v), np.float32)})


def _union(images: list[Img]):
    """The union of the images' footprints (None, unbounded, when one of them is)."""
    shapes = [im.footprint for im in images]
    return None if not shapes or any(f is None for f in shapes) else shapely.union_all(shapes)


def _mosaic(images: list[Img]) -> Img:
    bands = images[0].bands if images else []

    def render(grid, resampling):
        out = {b: np.full((grid.height, grid.width), np.nan, np.float32) for b in bands}
        area = grid.polygon_lonlat()
        for img in images:   # the last image on top; those off the grid are skipped (Earth Engine's spatial index)
            footprint = img.props.get("geometry")
            if footprint is not None and not footprint.intersects(area):
                continue
            layer = img.render(grid, resampling)
            for b, src in zip(bands, img.bands):
                v = layer[src]
                out[b] = np.where(np.isfinite(v), v, out[b])
        return out
    return Img(bands, render, footprint=_union(images), parts=list(images))


def _mode(images: list[Img]) -> Img:
    bands = [f"{b}_mode" for b in (images[0].bands if images else ["label"])]

    def render(grid, resampling):
        out = {}
        layers = [img.render(grid, resampling) for img in images]
        for k, b in enumerate(bands):
            if not layers:
                out[b] = np.full((grid.height, grid.width), np.nan, np.float32)
                continue
            stack = np.stack([layer[images[i].bands[k]] for i, layer in enumerate(layers)])
            values = np.unique(stack[np.isfinite(stack)])
            if values.size == 0:
                out[b] = np.full(stack.shape[1:], np.nan, np.float32)
                continue
            counts = np.stack([(stack == v).sum(axis=0) for v in values])   # ascending values: ties -> smaller
            mode = values[counts.argmax(axis=0)].astype(np.float32)
            out[b] = np.where(counts.max(axis=0) > 0, mode, np.nan).astype(np.float32)
        return out
    return Img(bands, render, footprint=_union(images))


def _date(v) -> float:
    if isinstance(v, (int, float)):
        return float(v)
    t = dt.datetime.fromisoformat(str(v).replace("Z", "+00:00"))
    return (t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)).timestamp() * 1000


def inside(footprint, grid) -> np.ndarray:
    """Which pixel centres of ``grid`` lie in the lon/lat ``footprint`` (all, for None)."""
    from pipelines.grid import pixel_centres, project

    if footprint is None:
        return np.ones((grid.height, grid.width), bool)
    xs, ys = pixel_centres(grid.transform, grid.width, grid.height)
    lon, lat = project(grid.epsg, 4326, np.ravel(xs), np.ravel(ys))
    return shapely.contains_xy(footprint, np.asarray(lon), np.asarray(lat)).reshape(grid.height, grid.width)


def _unmask(ev, input: Img, value=None, sameFootprint=True) -> Img:
    """Masked pixels get ``value``; by default (``sameFootprint``) only inside the input's footprint: outside it
    they stay masked (Earth Engine's ``Image.unmask``, algorithms.json: "By default, the output image also retains
    the footprint of the input")."""
    fill = _const_img(0 if value is None else value)   # the client sends the value as an Image.constant

    def render(g, r):
        other = next(iter(fill.render(g, r).values()))
        where = inside(input.footprint, g) if sameFootprint else True
        return {b: np.where(np.isfinite(v), v, np.where(where, other, np.nan)).astype(np.float32)
                for b, v in input.render(g, r).items()}
    return Img(input.bands, render, input.props, footprint=input.footprint if sameFootprint else None)


def _reduce(collection: list[Img], reducer: str) -> Img:
    if reducer != "mode":
        raise ValueError(f"unknown reducer {reducer}")
    return _mode(collection)


def _add(ev, image1, image2):
    a, b = _const_img(image1), _const_img(image2)
    def render(g, r):
        other = next(iter(b.render(g, r).values()))
        return {n: v + other for n, v in a.render(g, r).items()}
    return a.derived(a.bands, render)


def _add_bands(ev, dstImg, srcImg):
    return Img(dstImg.bands + srcImg.bands, lambda g, r: {**dstImg.render(g, r), **srcImg.render(g, r)},
               dstImg.props, {**dstImg.origin, **srcImg.origin}, _union([dstImg, srcImg]))


def _select(ev, input, bandSelectors, newNames=None):
    picked = [b for b in bandSelectors]
    missing = [b for b in picked if b not in input.bands]
    if missing:
        raise ValueError(f"Image.select: no band {missing[0]!r} (bands: {input.bands})")
    names = newNames or picked
    origin = {n: input.origin[b] for n, b in zip(names, picked) if b in input.origin}
    def render(g, r):
        layers = input.render(g, r)   # once for all the bands picked
        return {n: layers[b] for n, b in zip(names, picked)}
    parts = [_select(ev, p, bandSelectors, newNames) for p in input.parts] if input.parts else None
    return input.derived(names, render, origin, parts)


def _rename(ev, input, names):
    origin = {n: input.origin[b] for n, b in zip(names, input.bands) if b in input.origin}
    parts = [_rename(ev, p, names) for p in input.parts] if input.parts else None
    return input.derived(list(names), lambda g, r: dict(zip(names, input.render(g, r).values())), origin, parts)


def _update_mask(ev, image, mask):
    m = _const_img(mask)
    return image.derived(image.bands, lambda g, r: {b: np.where(next(iter(m.render(g, r).values())) > 0, v, np.nan)
                                                    for b, v in image.render(g, r).items()})


def _resample(ev, image, mode):
    return image.derived(image.bands, lambda g, r: image.render(g, mode))


def _slope(ev, input):
    """Degrees by the 4-neighbour rule of ``ee.Terrain.slope`` (the pixel executor's ``slope_degrees``). Earth
    Engine pulls an input in the projection the output is requested in (guides/projections): the slope of the
    elevation as it arrives on the request grid (nearest neighbour, the default). A ``reproject``ed elevation is
    computed on its own grid instead (the item's pixels around the request), and the slope resampled."""
    from pipelines.recipes.terrain import slope_degrees, warp_to_grid

    if input.parts:   # an Image asset made of tiles: each tile's slope, mosaicked
        return _mosaic([_slope(ev, p) for p in input.parts])
    if len(input.bands) != 1 or input.bands[0] not in input.origin:
        raise ValueError("Terrain.slope: the stand-in needs one band of a loaded image")
    item, band = input.origin[input.bands[0]]
    if not input.pinned:
        def on_request_grid(grid, resampling):
            elevation = next(iter(input.render(grid, None).values()))
            return {"slope": slope_degrees(elevation, grid.transform, grid.crs, grid.centre_lonlat()[1])}
        return input.derived(["slope"], on_request_grid, {})

    def render(grid, resampling):
        native = ev.backend.read_native(item, [band], grid, 2)
        _, lat = grid.centre_lonlat()
        slope = slope_degrees(native.data[0], native.transform, native.crs, lat)
        return {"slope": warp_to_grid(slope[None], native.transform, native.crs, grid, resampling or "nearest")[0]}
    return input.derived(["slope"], render, {})


def _pin(image: Img) -> Img:
    return Img(image.bands, image.render, image.props, image.origin, image.footprint,
               [_pin(p) for p in image.parts] if image.parts else None, True)


def _reproject(ev, image, crs, crsTransform=None, scale=None):
    """Computations on ``image`` happen in ``crs`` (a Projection) instead of the requested projection; the
    stand-in takes an image's own projection only (same CRS and pixel size)."""
    own = _projection(ev, image)
    target = crs if isinstance(crs, dict) else {"crs": crs, "transform": crsTransform}
    size = (lambda t: None if not t else (round(t[0], 12), round(t[4], 12)))
    if scale is not None or target.get("crs") != own["crs"] or size(target.get("transform")) != size(own["transform"]):
        raise ValueError("Image.reproject: the stand-in reprojects an image only to its own projection")
    return _pin(image)


def _projection(ev, image):
    """The projection of the image's first band (its item's CRS and that asset's transform; an Image asset made
    of tiles: its first tile's, which shares the others' CRS and pixel size)."""
    if image.parts:
        return _projection(ev, image.parts[0])
    if not image.bands or image.bands[0] not in image.origin:
        raise ValueError("Image.projection: the stand-in knows the projection of loaded bands only")
    item, band = image.origin[image.bands[0]]
    transform = item.assets[item.band(band).asset].get("proj:transform")
    if transform is None or item.epsg() is None:
        raise ValueError(f"Image.projection: item {item.id} declares no proj:epsg / proj:transform")
    return {"type": "Projection", "crs": f"EPSG:{item.epsg()}", "transform": list(transform)[:6]}


def _element_set(ev, object, key, value):
    if isinstance(object, Img):
        return Img(object.bands, object.render, {**object.props, key: value}, object.origin, object.footprint,
                   object.parts)
    return {**object, "properties": {**object["properties"], key: value}}


def _compare(op):
    def make(ev, leftField, rightValue):
        return lambda img: img.props.get(leftField) is not None and op(img.props[leftField], rightValue)
    return make


def _contains(ev, leftField, rightValue):
    if leftField != ".geo":
        raise ValueError("Filter.contains: the stand-in tests the footprint (.geo) only")
    return lambda img: img.props["geometry"].contains(rightValue.lonlat)


def _polygon(ev, coordinates, crs=None, geodesic=None, maxError=None, evenOdd=None):
    if crs not in (None, "EPSG:4326"):
        raise ValueError("GeometryConstructors.Polygon: the stand-in takes lon/lat polygons only")
    return Geom(shapely.Polygon(coordinates[0], coordinates[1:]))


def _filter(ev, collection, filter):
    return Coll(img for img in collection if filter(img))


@dataclass
class Geom:
    """A geometry: lon/lat for filters, and the coordinates in the CRS it was given in (for reduceRegion)."""

    lonlat: Any
    crs: str = "EPSG:4326"
    coords: tuple = ()


def _rectangle(ev, coordinates, crs=None, geodesic=None, proj=None, evenOdd=None):
    crs = crs or proj or "EPSG:4326"
    if crs == "EPSG:4326":
        return Geom(shapely.box(*coordinates), crs, tuple(coordinates))
    from pipelines.grid import outline_lonlat

    return Geom(outline_lonlat(tuple(coordinates), int(crs.split(":")[1]), 8), crs, tuple(coordinates))


def _feature(ev, geometry=None, metadata=None):
    return {"type": "Feature", "geometry": geometry, "properties": dict(metadata or {})}


def _intersects(ev, leftField, rightValue):
    geom = rightValue["geometry"] if isinstance(rightValue, dict) else rightValue
    return lambda img: img.props["geometry"].intersects(geom.lonlat)


def _reduce_region(ev, image, reducer, geometry, crs=None, crsTransform=None, scale=None, maxPixels=None,
                   bestEffort=None, tileScale=None):
    """The mean of the image sampled on the grid ``crsTransform`` over the geometry's bounds (every cell of the
    backend's request lies inside the region, so each weighs the same)."""
    from pipelines.grid import TileGrid

    ev.reductions += 1
    if reducer != "mean" or not crsTransform or geometry.crs != crs:
        raise ValueError("the stand-in reduces regions with Reducer.mean on a crsTransform grid in the region's CRS")
    a, b, c, d, e, f = crsTransform
    left, bottom, right, top = geometry.coords
    if b or d or abs(a + e) > 1e-9 or abs(c - left) > 1e-6 or abs(f - top) > 1e-6:
        raise ValueError("the stand-in's reduceRegion needs a north-up grid anchored at the region's corner")
    grid = TileGrid(int(crs.split(":")[1]), c, f, int(round((right - left) / a)), int(round((top - bottom) / a)), a)
    out = {}
    for band, v in image.render(grid, None).items():
        with np.errstate(all="ignore"):
            m = float(np.nanmean(v.astype(np.float64))) if np.isfinite(v).any() else None
        out[band] = m
    return out


def _property(x, key: str):
    """A property of an image or a feature (Earth Engine sorts and aggregates both by their properties)."""
    return x.props[key] if isinstance(x, Img) else x["properties"][key]


def _list_get(ev, list, index):
    """``index`` is an Integer (algorithms.json): a Float-typed number (``Number.floor`` of a Float, a product with
    one) is refused, whatever its value."""
    if not isinstance(index, int) or isinstance(index, bool):
        raise ValueError(f"List.get, argument 'index': Invalid type.\nExpected type: Integer.\nActual type: "
                         f"{'Float' if isinstance(index, float) else type(index).__name__}.")
    if not -len(list) <= index < len(list):
        raise ValueError(f"List.get: List index out of bounds: {index}")
    return list[index]


def _arith(op):
    """A binary Number algorithm: an Integer when both operands are (Python's int), else a Float."""
    def make(ev, left, right):
        out = op(left, right)
        return float(out) if isinstance(left, float) or isinstance(right, float) else out
    return make


def _map(ev, collection, baseAlgorithm):
    """Each element through the function; a feature made from an element keeps the element's ``system:index``
    (returned as the feature's top-level ``id``)."""
    out = Coll()
    for x in collection:
        y = baseAlgorithm(x)
        if isinstance(y, dict) and y.get("type") == "Feature" and "system:index" not in y["properties"]:
            y = {**y, "properties": {**y["properties"], "system:index": _property(x, "system:index")}}
        out.append(y)
    return out


def _date_range_contains(ev, leftValue, rightField):
    start, end = leftValue
    return lambda img: start <= img.props[rightField] < end


FUNCTIONS: dict[str, Callable] = {
    "ImageCollection.load": lambda ev, id: ev.collection(id),
    "Image.load": lambda ev, id, version=None: ev.load(id),
    "Collection.filter": _filter,
    "Collection.map": _map,
    "Collection.limit": lambda ev, collection, key=None, ascending=True, limit=None: Coll((
        sorted(collection, key=lambda x: _property(x, key), reverse=not ascending) if key else collection)[:limit]),
    "AggregateFeatureCollection.array": lambda ev, collection, property: [_property(x, property) for x in collection],
    "List.add": lambda ev, list, element: [*list, element],
    "List.get": _list_get,
    "Number.multiply": _arith(lambda a, b: a * b),
    "Number.floor": lambda ev, input: float(math.floor(input)),   # a Float stays a Float
    "Number.int": lambda ev, input: int(input),
    "Number.toInt": lambda ev, input: int(input),
    "Number.min": _arith(min),
    "Number.max": _arith(max),
    "Collection.size": lambda ev, collection: len(collection),
    "Number.gt": lambda ev, left, right: left > right,
    "If": lambda ev, condition, trueCase, falseCase: trueCase if condition else falseCase,
    "DateRange": lambda ev, start, end=None: (_date(start), _date(end)),
    "Filter.dateRangeContains": _date_range_contains,
    "Filter.intersects": _intersects,
    "Feature": _feature,
    "GeometryConstructors.Rectangle": _rectangle,
    "Projection": lambda ev, crs, transform=None, transformWkt=None: crs,
    "Element.set": _element_set,
    "Element.get": lambda ev, object, property: object.props.get(property),
    "Filter.contains": _contains,
    "Filter.lessThan": _compare(lambda a, b: a < b),
    "Filter.lessThanOrEquals": _compare(lambda a, b: a <= b),
    "Filter.greaterThan": _compare(lambda a, b: a > b),
    "Filter.greaterThanOrEquals": _compare(lambda a, b: a >= b),
    "Filter.equals": _compare(lambda a, b: a == b),
    "Filter.notEquals": _compare(lambda a, b: a != b),
    "Filter.not": lambda ev, filter: lambda img: not filter(img),   # ee writes Filter.lte(a, b) as not(a > b)
    "GeometryConstructors.Polygon": _polygon,
    "Number.subtract": _arith(lambda a, b: a - b),
    "Number.abs": lambda ev, input: abs(input),
    "Image.projection": _projection,
    "Image.reproject": _reproject,
    "Terrain.slope": _slope,
    "Image.reduceRegion": _reduce_region,
    "Reducer.mode": lambda ev, **kw: "mode",
    "Reducer.mean": lambda ev, **kw: "mean",
    "ImageCollection.reduce": lambda ev, collection, reducer: _reduce(collection, reducer),
    "ImageCollection.mosaic": lambda ev, collection: _mosaic(collection),
    "Image.constant": lambda ev, value: _const_img(value),
    "Image.select": _select,
    "Image.rename": _rename,
    "Image.add": _add,
    "Image.addBands": _add_bands,
    "Image.unmask": _unmask,
    "Image.updateMask": _update_mask,
    "Image.resample": _resample,
    "Image.toFloat": lambda ev, value: value,
}


def _as_json(value):
    """What ``getInfo`` answers: a list of features is a FeatureCollection; an image cannot be a value."""
    if isinstance(value, dict) and value.get("type") == "Feature":
        # system:index is the feature's top-level id, not a property (real-services.md, "A Feature's system:index")
        props = {k: v for k, v in value["properties"].items() if k != "system:index"}
        out = {"type": "Feature", "geometry": _as_json(value.get("geometry")), "properties": _as_json(props)}
        if "system:index" in value["properties"]:
            out["id"] = str(value["properties"]["system:index"])
        return out
    if isinstance(value, dict):
        return {k: _as_json(v) for k, v in value.items()}
    if isinstance(value, list):
        if isinstance(value, Coll) and all(isinstance(v, dict) and v.get("type") == "Feature" for v in value):
            return {"type": "FeatureCollection", "features": [_as_json(v) for v in value]}
        if value and all(isinstance(v, Img) for v in value):
            raise ValueError("value:compute of an ImageCollection: the stand-in answers features, not images")
        return [_as_json(v) for v in value]
    if isinstance(value, Img):
        raise ValueError("value:compute of an Image: the stand-in answers features, not images")
    if isinstance(value, Geom):
        return shapely.geometry.mapping(value.lonlat)
    if isinstance(value, shapely.Geometry):
        return shapely.geometry.mapping(value)
    return value


def asset_id_of(name: str) -> str:
    """The asset id of a REST asset name (``ee._cloud_api_utils.convert_asset_id_to_asset_name`` reversed: public
    ids under ``projects/earthengine-public/assets/``, ``users/`` and ``projects/`` ids under
    ``projects/earthengine-legacy/assets/``)."""
    for prefix in ("projects/earthengine-public/assets/", "projects/earthengine-legacy/assets/"):
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


class _Grid:
    """computePixels' grid as the pixel executor's TileGrid (north-up UTM metres)."""

    @staticmethod
    def parse(spec: dict):
        from pipelines.grid import TileGrid

        t = spec["affineTransform"]
        if t.get("shearX") or t.get("shearY") or abs(t["scaleX"] + t["scaleY"]) > 1e-9:
            raise ValueError("the stand-in renders north-up square-pixel grids only")
        epsg = int(str(spec["crsCode"]).split(":")[1])
        d = spec["dimensions"]
        return TileGrid(epsg, t["translateX"], t["translateY"], int(d["width"]), int(d["height"]), t["scaleX"])


MAX_IN_FLIGHT = 40            # concurrent requests per project (real-services.md, "Limits")
MAX_RATE = 100.0              # requests per second per project
MAX_PIXELS_BYTES = 48 * 1024 * 1024   # computePixels: pixels x bands x bytes, uncompressed
MAX_SIDE = 32768              # computePixels: pixels per side of the grid
MAX_BANDS = 1024
WORKLOAD_TAG = re.compile(r"[a-z0-9]|[a-z0-9][-_a-z0-9]{0,61}[a-z0-9]")   # ee/_state.py _WorkloadTag.validate


class RateBucket:
    """A token bucket of ``rate`` tokens per second holding at most ``burst`` (Earth Engine's burst is not
    documented: by default one second's quota)."""

    def __init__(self, rate: float, burst: float | None = None):
        self.rate, self.burst = rate, rate if burst is None else burst
        self.tokens, self.t = self.burst, time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
        self.t = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class EarthEngineStandIn(LoopbackServer):
    """``quota``: refuse (429) requests beyond :data:`MAX_IN_FLIGHT` in flight or :data:`MAX_RATE` per second of
    one project (the ``x-goog-user-project`` header), as the real service does; ``refresh_tokens``: when set, POSTs
    need a bearer token issued by ``/token`` for one of these refresh tokens or service-account emails (others: 400
    ``invalid_grant``, as Google's token endpoint answers a revoked one), else 401; ``npy_byte_order`` / ``npy_reverse_fields``: the
    NPY answers' byte order and field order, which Earth Engine does not document."""

    def __init__(self, evaluator: Evaluator, project: str = "p", quota: bool = True):
        import ee

        self.evaluator = evaluator
        self.project = project
        self.requests: list[dict] = []
        self.faults: list[tuple] = []
        self.latency_s = 0.0
        self.quota = quota
        self.rate_burst: float | None = None   # the rate quota's burst (None: one second's quota)
        self.in_flight: dict[str, int] = {}
        self.peak_in_flight = 0
        self.refused: list[str] = []            # why each 429 of the quota was sent
        self.errors: list[tuple[str, int, str]] = []   # (path, status, message) of every error answered
        self._buckets: dict[str, RateBucket] = {}
        self.refresh_tokens: set[str] | None = None
        self.access_tokens: set[str] = set()
        self.retry_after: str | None = None   # a Retry-After on 429s (off: Earth Engine is not known to send one)
        self.npy_byte_order = "<"
        self.npy_reverse_fields = False
        self.pixel_faults: list[tuple] = []     # as ``faults``, served to computePixels requests only
        self.always: tuple | None = None        # a ("status", code, message) fault served to every POST while set
        self.poison: dict[str, str] = {}        # text -> message: a value:compute whose body holds it is refused (400)
        self.revoke_after: int | None = None    # after this many POSTs every token is revoked (a user's revocation)
        self.memo: dict[tuple, bytes] | None = None   # benchmarks: answer repeated requests from memory
        self._lock = threading.Lock()
        ee_dir = os.path.dirname(ee.__file__)
        self._discovery = json.load(open(os.path.join(ee_dir, "tests", "cloud_api_discovery_document.json")))
        self._algorithms = open(os.path.join(ee_dir, "tests", "algorithms.json"), "rb").read()
        server = self

        class Handler(QuietHandler):
            protocol_version = "HTTP/1.1"

            cut: int | None = None   # ("truncate", nbytes): this request's answer stops after nbytes
            counted: str | None = None   # the project this request is counted in flight for, until answered

            def _release(self) -> None:
                """No longer in flight (before the answer leaves: the client may send its next one at once)."""
                if self.counted is not None:
                    with server._lock:
                        server.in_flight[self.counted] -= 1
                    self.counted = None

            def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
                self._release()
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                if code == 429 and server.retry_after is not None:   # no evidence Earth Engine sends one
                    self.send_header("Retry-After", server.retry_after)
                self.end_headers()
                if self.cut is not None:
                    self.wfile.write(body[:self.cut])
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def _error(self, code: int, message: str, status: str = "INVALID_ARGUMENT") -> None:
                with server._lock:
                    server.errors.append((self.path.split("?")[0], code, message))
                self._send(code, json.dumps({"error": {"code": code, "message": message, "status": status}}).encode())

            def do_GET(self):
                path = self.path.split("?")[0]
                if path.startswith("/$discovery"):
                    doc = dict(server._discovery, rootUrl=server.url + "/")
                    return self._send(200, json.dumps(doc).encode())
                if path.endswith("/algorithms"):
                    return self._send(200, server._algorithms)
                name = re.fullmatch(r"/v1[a-z0-9]*/(projects/[^/]+/assets/.+)", path)
                if name:   # projects.assets.get: the asset's type (an unknown one: 404)
                    if self._unauthorized():
                        return None
                    with server._lock:
                        server.requests.append({"path": path, "body": None, "t": time.monotonic()})
                    asset_id = asset_id_of(name.group(1))
                    try:
                        kind = server.evaluator.asset_type(asset_id)
                    except ValueError as e:
                        return self._error(404, str(e), "NOT_FOUND")
                    return self._send(200, json.dumps({"type": kind, "name": name.group(1), "id": asset_id}).encode())
                self._error(404, f"no such resource {path}", "NOT_FOUND")

            def _unauthorized(self):
                """401 unless the request carries a token ``/token`` issued (when the stand-in checks tokens)."""
                if server.refresh_tokens is None:
                    return None
                token = (self.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
                if token in server.access_tokens:
                    return None
                return self._error(401, "Request had invalid authentication credentials. Expected OAuth 2 access "
                                        "token, login cookie or other valid authentication credential.",
                                   "UNAUTHENTICATED") or True

            def _token(self, raw: bytes):
                """Google's OAuth token endpoint, for a refresh-token grant or a service account's signed JWT (the
                account is its ``iss``; the signature is not checked)."""
                import base64
                from urllib.parse import parse_qs

                form = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
                who = form.get("refresh_token")
                if form.get("grant_type") == "urn:ietf:params:oauth:grant-type:jwt-bearer":
                    payload = form.get("assertion", "..").split(".")[1]
                    who = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))).get("iss")
                if who not in (server.refresh_tokens or ()):
                    return self._send(400, json.dumps({"error": "invalid_grant",
                                                       "error_description": "Token has been expired or revoked."
                                                       }).encode())
                token = f"standin-access-{secrets.token_hex(8)}"   # made here, for this run only
                server.access_tokens.add(token)
                return self._send(200, json.dumps({"access_token": token, "expires_in": 3599,
                                                   "token_type": "Bearer"}).encode())

            def _over_quota(self, project: str) -> str | None:
                """Why this request is over the project's quota (None: it is not); counts it in flight if not."""
                with server._lock:
                    now = server.in_flight.get(project, 0)
                    if server.quota and now >= MAX_IN_FLIGHT:
                        why = f"Too many concurrent requests: {now + 1} of at most {MAX_IN_FLIGHT}"
                    elif server.quota and not server._buckets.setdefault(
                            project, RateBucket(MAX_RATE, server.rate_burst)).take():
                        why = f"Quota exceeded: more than {MAX_RATE:g} requests per second"
                    else:
                        server.in_flight[project] = now + 1
                        server.peak_in_flight = max(server.peak_in_flight, now + 1)
                        self.counted = project
                        return None
                    server.refused.append(why)
                    return why

            def do_POST(self):
                path = self.path.split("?")[0]
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) or b"{}"
                if path == "/token":
                    return self._token(raw)
                if self._unauthorized():
                    return None
                project = self.headers.get("x-goog-user-project") or server.project
                why = self._over_quota(project)
                if why:
                    return self._error(429, why, "RESOURCE_EXHAUSTED")
                try:
                    return self._post(path, raw)
                finally:
                    self._release()

            def _post(self, path: str, raw: bytes):
                body = json.loads(raw)
                if server.revoke_after is not None and len(server.requests) >= server.revoke_after:
                    server.access_tokens.clear()
                    server.refresh_tokens = set()
                    if self._unauthorized():
                        return None
                text = raw.decode()
                for needle, message in server.poison.items():
                    if path.endswith("value:compute") and needle in text:
                        return self._error(400, message)
                tag = body.get("workloadTag")
                if tag is not None and not WORKLOAD_TAG.fullmatch(str(tag)):
                    return self._error(400, f"Invalid workload tag: {tag!r}")
                with server._lock:
                    server.requests.append({"path": path, "body": body, "t": time.monotonic()})
                    queue = server.pixel_faults if path.endswith("computePixels") and server.pixel_faults \
                        else server.faults
                    fault = queue.pop(0) if queue else server.always
                if server.latency_s:
                    time.sleep(server.latency_s)
                self.cut = fault[1] if fault and fault[0] == "truncate" else None
                if fault and fault[0] == "delay":
                    time.sleep(fault[1])
                elif fault and fault[0] == "status":
                    code = fault[1]
                    return self._error(code, fault[2] if len(fault) > 2 else "injected",
                                       {429: "RESOURCE_EXHAUSTED", 400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED",
                                        403: "PERMISSION_DENIED"}.get(code, "UNAVAILABLE"))
                key = (path, raw) if server.memo is not None else None   # the text: re-dumping costs ~10 ms per batch
                if key is not None and key in server.memo:
                    ctype = "application/json" if path.endswith("value:compute") else "application/octet-stream"
                    return self._send(200, server.memo[key], ctype)
                try:
                    if path.endswith("value:compute"):
                        value = _as_json(server.evaluator.evaluate(body["expression"]))
                        answer, ctype = json.dumps({"result": value}).encode(), "application/json"
                    elif path.endswith("image:computePixels"):
                        answer, ctype = server.pixels(body), "application/octet-stream"
                    else:
                        answer = None
                    if answer is not None:
                        if key is not None:
                            server.memo[key] = answer
                        return self._send(200, answer, ctype)
                except ValueError as e:
                    return self._error(400, str(e))
                except Exception as e:  # noqa: BLE001 - a bug of the stand-in: say so, never hang up silently
                    import traceback

                    return self._error(500, f"stand-in failure: {type(e).__name__}: {e} "
                                            f"{traceback.format_exc()[-1500:]}", "INTERNAL")
                self._error(404, f"no such method {path}", "NOT_FOUND")

        self.serve(Handler)

    @classmethod
    def over(cls, catalog, **kw) -> "EarthEngineStandIn":
        """A stand-in serving the static catalog ``catalog`` (described by catalogs/sources/local.yaml) as Earth
        Engine's assets."""
        from pipelines.backends.local import LocalBackend

        return cls(Evaluator(LocalBackend(str(catalog)), assets_over()), **kw)

    def pixels(self, body: dict) -> bytes:
        if body.get("fileFormat") not in ("NUMPY_NDARRAY", "NPY"):   # the client sends NPY for NUMPY_NDARRAY
            raise ValueError(f"the stand-in serves NUMPY_NDARRAY only, not {body.get('fileFormat')}")
        image = self.evaluator.evaluate(body["expression"])
        dims = body["grid"]["dimensions"]
        bands = body.get("bandIds") or image.bands
        if max(int(dims["width"]), int(dims["height"])) > MAX_SIDE:
            raise ValueError(f"Grid dimensions ({dims['width']}x{dims['height']}) must be less than or equal to "
                             f"{MAX_SIDE} in each dimension.")
        if len(bands) > MAX_BANDS:
            raise ValueError(f"Number of bands ({len(bands)}) must be less than or equal to {MAX_BANDS}.")
        size = int(dims["width"]) * int(dims["height"]) * 4 * len(bands)
        if size > MAX_PIXELS_BYTES:
            raise ValueError(f"Total request size ({size} bytes) must be less than or equal to {MAX_PIXELS_BYTES} bytes.")
        grid = _Grid.parse(body["grid"])
        layers = image.render(grid, None)
        fields = list(reversed(bands)) if self.npy_reverse_fields else bands
        arr = np.zeros((grid.height, grid.width), dtype=[(b, f"{self.npy_byte_order}f4") for b in fields])
        for b in bands:
            if b not in layers:
                raise ValueError(f"computePixels: no band {b!r} (bands: {image.bands})")
            # Earth Engine returns masked pixels as 0 in NumPy output: so does the stand-in
            arr[b] = np.where(np.isfinite(layers[b]), layers[b], 0)
        out = io.BytesIO()
        np.save(out, arr)
        return out.getvalue()

    def pixel_requests(self) -> list[dict]:
        return [r for r in self.requests if r["path"].endswith("image:computePixels")]
