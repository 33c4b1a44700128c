"""The Earth Engine expressions the executor sends, one builder per shape: each reads only its arguments, and the
per-tile constants come through ``slot`` (templates.py), so a shape is built and serialized once and filled per
tile. ``ee`` is imported inside each builder: only a run that uses Earth Engine loads it."""
from __future__ import annotations

from ...recipes.plan import FIRST_VALID, MODE, SLOPE
from .decode import MASKED
from .query import NEAREST_K

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


def scenes(layout: tuple, slot):
    """Bands of images loaded by id, each group with its own resampling: ``layout`` holds, per image, the slot of
    its id and its groups ``(source bands, names, resampling)`` (the pixel executor's reads)."""
    import ee

    parts = []
    for key, groups in layout:
        image = ee.Image.load(slot(key, "String"))
        for bands, names, resampling in groups:
            part = image.select(list(bands), list(names))
            parts.append(part if resampling == "nearest" else part.resample(resampling))
    return filled(ee.Image.cat(parts).toFloat(), MASKED)


def composite(layers: tuple, kind: str, dated: bool, reducer: str, derive: tuple, resampling: str, slot):
    """One layer per band of the images of one or several assets over the region, as the pixel executor's
    composite: ``layers`` holds ``(asset, source bands, names)`` per asset (``kind`` ``image``: one Image asset,
    ``ee.Image``; ``collection``: its images over the region, in the date range when ``dated``); ``derive``:
    ``(operator, name)`` of bands derived from the first band on the image's own grid, before ``resampling``; the
    images of a collection reduced by ``reducer``."""
    import ee

    def prepared(image, names: tuple, derived: tuple):
        """The derived bands, then the resampling. Earth Engine pulls an input in the projection its output is
        asked in (guides/projections): unpinned to its own grid, the slope would be taken from the elevation
        resampled by nearest neighbour onto the tile grid (terraces of zero slope)."""
        image = ee.Image(image)
        if derived:
            first = image if len(names) == 1 else image.select([names[0]])
            native = first.reproject(first.projection())
            image = image.addBands(ee.Image.cat([DERIVE[op](native).rename([name]) for op, name in derived]))
        return image if resampling == "nearest" else image.resample(resampling)

    images = []
    for k, (asset, bands, names) in enumerate(layers):
        derived = derive if k == 0 else ()
        if kind == "image":
            images.append(prepared(ee.Image(asset).select(list(bands), list(names)), names, derived))
            continue
        ic = ee.ImageCollection(asset)
        if dated:
            ic = ic.filterDate(slot("start", "Number"), slot("end", "Number"))
        ic = ic.filterBounds(rectangle(slot("region", "List"))).select(list(bands), list(names))
        if derived or resampling != "nearest":
            ic = ic.map(lambda im, names=names, derived=derived: prepared(im, names, derived))
        out = [*names, *(name for _, name in derived)]
        # an empty collection has no band to reduce: a fully masked image then, i.e. no data
        empty = ee.Image.cat([ee.Image.constant(0).updateMask(0).rename([n]) for n in out])
        images.append(ee.Image(ee.Algorithms.If(ic.size().gt(0), REDUCE[reducer](ic).rename(out), empty)))
    return filled(ee.Image.cat(images).toFloat(), MASKED)


def _mode(ic):
    import ee

    return ic.reduce(ee.Reducer.mode())


def _first_valid(ic):
    """The images as one, the first by id on top (``mosaic`` puts the last on top)."""
    return ic.sort("system:index", False).mosaic()


def _slope(image):
    import ee

    return ee.Terrain.slope(image)


REDUCE = {FIRST_VALID: _first_valid, MODE: _mode}   # the plans' temporal reducers
DERIVE = {SLOPE: _slope}                            # the plans' derived bands


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
