"""A search as data: what a recipe asks (collection, region, dates, property filters, a footprint to contain, a
time to rank by), hashable, so that it keys the answers prepared for it."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely

from mmearth_data.errors import MMEarthError

NEAREST_K = 4          # a "nearest" query returns this many, ranked by |t - t0|: ties are resolved locally
RINGS_KEPT = 50_000    # polygons whose rings are kept (a tile's outline is asked for by each of its searches)


@dataclass(frozen=True)
class Query:
    """One search as data (hashable: the key of prepared answers)."""

    collection: str
    bbox: tuple[float, ...]
    start_ms: int | None
    end_ms: int | None                  # exclusive
    filters: tuple[tuple[str, str, Any], ...]
    contains: tuple | None = None       # rings (exterior first) of a lon/lat polygon the footprint must contain
    nearest_ms: int | None = None       # rank by |time - nearest_ms|, keep NEAREST_K

    def __hash__(self) -> int:   # computed once: a query is looked up several times, its rings make it long
        try:
            return self._hash
        except AttributeError:
            value = hash((self.collection, self.bbox, self.start_ms, self.end_ms, self.filters, self.contains,
                          self.nearest_ms))
            object.__setattr__(self, "_hash", value)
            return value

    @classmethod
    def of(cls, collection: str, bbox, start: dt.datetime | None, end: dt.datetime | None, filters: dict | None,
           contains=None, nearest: dt.datetime | None = None) -> "Query":
        """The query of a recipe's search (``end`` inclusive, as the recipes give it)."""
        return cls(collection, tuple(round(float(v), 9) for v in bbox), ms(start),
                   None if end is None else ms(end) + 1,
                   tuple(sorted((k, op, hashable(v)) for k, (op, v) in (filters or {}).items())),
                   None if contains is None else rings(contains), ms(nearest))


def ms(t: dt.datetime | None) -> int | None:
    """Earth Engine's time (ms since 1970)."""
    return None if t is None else int(np.floor(t.timestamp() * 1000))


def rings(polygon) -> tuple:
    """A lon/lat polygon's rings as coordinate pairs rounded to 1e-9 degree (hashable, and GeoJSON's polygon
    coordinates once listed): read as arrays (faster than a WKT round trip or shapely's ``mapping()``), kept per
    polygon object (a tile's outline is one cached object, asked for by each of its scene searches)."""
    found = _RINGS.get(id(polygon))
    if found is not None and found[0] is polygon:
        return found[1]
    if polygon.geom_type != "Polygon":
        raise MMEarthError(f"Earth Engine footprint test: a polygon is needed, not a {polygon.geom_type}")
    parts = [polygon] if shapely.get_num_interior_rings(polygon) == 0 else shapely.get_rings(polygon)
    out = tuple(tuple(map(tuple, shapely.get_coordinates(r).round(9).tolist())) for r in parts)
    if len(_RINGS) >= RINGS_KEPT:
        _RINGS.clear()
    _RINGS[id(polygon)] = (polygon, out)   # the polygon is held: its id is not reused while it is a key
    return out


_RINGS: dict[int, tuple] = {}


def hashable(v):
    return tuple(v) if isinstance(v, list) else v
