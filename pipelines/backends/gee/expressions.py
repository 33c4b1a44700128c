"""The Earth Engine expressions the executor sends, one builder per shape: each reads only its arguments, and the
per-tile constants come through ``slot`` (templates.py), so a shape is built and serialized once and filled per
tile. ``ee`` is imported inside each builder: only a run that uses Earth Engine loads it."""
from __future__ import annotations

from .decode import MASKED
from .query import NEAREST_K

NODATA = {"dynamic_world": 0, "esa_worldcover": 255, "canopy": -9999}
_FILTERS = {"<": "lt", "<=": "lte", ">": "gt", ">=": "gte", "==": "eq", "!=": "neq"}


def rectangle(coordinates, crs: str | None = None):
    """A planar rectangle (edges along the CRS axes, as the pixel executor's bounds) from computed coordinates."""
    import ee

    return ee.Geometry.Rectangle(coordinates, crs, False)


def merged(images: list):
    import ee

    return ee.Image.cat(images).toFloat()


def query_images(collection: str, dated: bool, filters: tuple, contains: str | None, nearest: bool, slot):
    import ee

    ic = ee.ImageCollection(collection)
    if dated:
        ic = ic.filterDate(slot("start", "Number"), slot("end", "Number"))
    ic = ic.filterBounds(rectangle(slot("bbox", "List")))
    for prop, op, value in filters:
        ic = ic.filter(getattr(ee.Filter, _FILTERS[op])(prop, value))
    if contains:
        footprint = getattr(ee.Geometry, contains)(slot("contains", "List"), None, False)
        ic = ic.filter(ee.Filter.contains(".geo", footprint))
    if nearest:
        t0 = slot("t0", "Number")
        ic = ic.map(lambda im: im.set("mmearth_dt", ee.Number(im.get("system:time_start")).subtract(t0).abs()))
        ic = ic.limit(NEAREST_K, "mmearth_dt")
    return ic


def query_features(properties: tuple, grid_band: str | None, slot):
    import ee

    def feature(im):
        props = {"id": im.get("system:index"), "t": im.get("system:time_start")}
        props.update({p: im.get(p) for p in properties})
        if grid_band:
            props["proj"] = im.select([grid_band]).projection()
        return ee.Feature(None, props)
    return ee.FeatureCollection(ee.ImageCollection(slot("images", "ImageCollection")).map(feature))


def scene_pick(levels: int, slot):
    """``[id, time]`` of the scene the seeded rule picks among a tile's candidates (``sentinel2.candidates``):
    the first level with a survivor, its survivors sorted by id, the one at ``min(floor(pick * n), n - 1)``
    (``Draw.index``; the same double product); ``["", 0]`` when none survives."""
    import ee

    survivors = [ee.ImageCollection(slot(str(i), "ImageCollection")).sort("system:index") for i in range(levels)]
    chosen = survivors[-1]
    for ic in reversed(survivors[:-1]):
        chosen = ee.ImageCollection(ee.Algorithms.If(ic.size().gt(0), ic, chosen))
    n = chosen.size()
    # List.get takes an Integer: the floored product is a Float until cast
    k = ee.Number(slot("pick", "Number")).multiply(n).floor().min(n.subtract(1)).max(0).int()
    return ee.List([chosen.aggregate_array("system:index").add("").get(k),
                    chosen.aggregate_array("system:time_start").add(0).get(k)])


def picked_time(slot):
    import ee

    return ee.Number(ee.List(slot("scene", "List")).get(1))


def filled(image, value):
    """``image`` with its masked pixels set to ``value`` everywhere on the grid: ``unmask`` keeps the input's
    footprint by default (``sameFootprint``), which would leave the pixels outside a scene masked, and computePixels
    answers masked pixels as 0, a valid value."""
    return image.unmask(value, False)


def sentinel2(smooth: tuple, categorical: tuple, slot):
    """Spectral bands and MSK_CLDPRB bilinear, SCL and QA60 nearest; ``(source band, name)`` pairs."""
    import ee

    img = ee.Image.load(slot("id", "String"))
    image = img.select([b for b, _ in smooth], [n for _, n in smooth]).resample("bilinear")
    if categorical:
        image = image.addBands(img.select([b for b, _ in categorical], [n for _, n in categorical]))
    return filled(image.toFloat(), MASKED)


def sentinel1(layout: tuple, slot):
    """One image per orbit slot by id, ``(slot, source bands, names)``, bilinear."""
    import ee

    parts = [ee.Image.load(slot(str(orbit), "String")).select(list(bands), list(names))
             for orbit, bands, names in layout]
    return filled(ee.Image.cat(parts).resample("bilinear").toFloat(), MASKED)


def top_first(collection: str, slot):
    """The images of a collection over the region as one image, the first by id on top (``mosaic`` puts the last
    on top), as the pixel executor's ``first_valid``."""
    import ee

    return ee.ImageCollection(collection).filterBounds(rectangle(slot("region", "List"))).sort("system:index", False)


def aster(collection: str, band: str, kind: str, slot):
    """Elevation and slope; ``kind``: the asset is one Image (the ASTER GDEM: ``ee.Image``, MMEarth's
    ``ee_data.aster``) or an ImageCollection of DEM tiles (each tile's slope, then the mosaic)."""
    import ee

    def both(im):   # slope on the DEM's own grid, then both bands resampled, as the pixel executor does: Earth Engine
        # pulls inputs in the requested projection (guides/projections), so unpinned the slope would be taken from
        # the elevation resampled by nearest neighbour onto the 10 m grid (terraces of zero slope)
        elevation = ee.Image(im).select([band], ["aster_elevation"])
        native = elevation.reproject(elevation.projection())
        return elevation.addBands(ee.Terrain.slope(native).rename(["aster_slope"])).resample("bilinear")
    image = both(ee.Image(collection)) if kind == "image" else top_first(collection, slot).map(both).mosaic()
    return filled(image.toFloat(), MASKED)


def dynamic_world(collection: str, band: str, year: int, slot):
    import ee

    ic = (ee.ImageCollection(collection).filterDate(f"{year}-01-01", f"{year + 1}-01-01")
          .filterBounds(rectangle(slot("region", "List"))).select([band]))
    # an empty year has no band to reduce: then a fully masked image, i.e. no data, never a label
    empty = ee.Image.constant(-1).updateMask(0).rename(["label_mode"])
    mode = ee.Image(ee.Algorithms.If(ic.size().gt(0), ic.reduce(ee.Reducer.mode()), empty))
    return filled(mode, -1).add(1).rename(["dynamic_world"])


def worldcover(collection: str, band: str, slot):
    import ee

    ic = ee.ImageCollection(collection).filterBounds(rectangle(slot("region", "List"))).select([band])
    # mosaic puts the last image on top: sort descending so the first by id wins, as first_valid does
    empty = ee.Image.constant(0).updateMask(0).rename([band])
    top = ee.Image(ee.Algorithms.If(ic.size().gt(0), ic.sort("system:index", False).mosaic(), empty))
    return filled(top, NODATA["esa_worldcover"]).rename(["esa_worldcover"])


def canopy(collection: str, band: str, std_collection: str, std_band: str, kind: str, slot):
    import ee

    def load(asset: str):
        return ee.Image(asset) if kind == "image" else top_first(asset, slot).mosaic()
    height = load(collection).select([band]).rename(["canopy_height"])
    std = load(std_collection).select([std_band]).rename(["canopy_std"])
    return filled(height.addBands(std).resample("bilinear").toFloat(), NODATA["canopy"])


def era5(collection: str, bands: tuple, crs: str, until: bool, slot):
    """Each month's mean over the region; ``until``: only the 12 latest months starting at or before the computed
    time in that slot (the months a scene at that time uses: era5.month_range), so 12 reductions, not the window's."""
    import ee

    region = rectangle(slot("region", "List"), crs)
    ic = ee.ImageCollection(collection).filterDate(slot("start", "String"), slot("end", "String")).filterBounds(region)
    if until:
        ic = (ic.filter(ee.Filter.lte("system:time_start", slot("until", "Number")))
              .limit(12, "system:time_start", False))
    ic = ic.select(list(bands))
    transform = slot("transform", "List")

    def month(img):
        stats = img.reduceRegion(reducer=ee.Reducer.mean(), geometry=region, crs=crs, crsTransform=transform,
                                 maxPixels=1_000_000)
        return (ee.Feature(None, stats).set("system:time_start", img.get("system:time_start"))
                .set("system:index", img.get("system:index")))
    return ee.FeatureCollection(ic.map(month))
