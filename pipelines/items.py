"""STAC items as the recipes see them (id, collection, time, footprint, properties and band -> asset lookup), and
bands read on an item's own grid."""
from __future__ import annotations

import datetime as dt
import operator
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import shapely
from affine import Affine
from shapely.geometry import shape

_OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq,
        "!=": operator.ne, "in": lambda a, b: a in b, "contains": lambda a, b: b in (a or ())}


def parse_time(value: str | None) -> dt.datetime | None:
    if value is None:
        return None
    t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


ASSET_FIELDS = ("href", "roles", "eo:bands", "bands", "raster:bands", "proj:transform")   # what a run reads of an asset
_BAND_FIELDS = ("name", "offset", "scale", "nodata")   # of each entry of eo:bands / bands / raster:bands


def compact(doc: Mapping[str, Any], wanted: frozenset[str]) -> dict[str, Any]:
    """A search result trimmed to what a run reads: the assets holding a ``wanted`` band (by key or by a listed band
    name), each with :data:`ASSET_FIELDS` only (band entries with their name, offset, scale and no-data), and no
    links: a run holds many items, and a real Sentinel-2 item's other assets and links are most of its memory."""
    assets = {}
    given = doc.get("assets") or {}
    elsewhere = wanted - set(given)   # bands not named by an asset key (an asset so named wins: :meth:`Item.band`)
    for key, a in given.items():
        listed = [b for b in (a.get("eo:bands") or a.get("bands") or []) if isinstance(b, dict)]
        if key in wanted or any(b.get("name") in elsewhere for b in listed):
            assets[key] = {f: _entries(a[f]) if f.endswith("bands") else a[f] for f in ASSET_FIELDS if f in a}
    return {**{k: v for k, v in doc.items() if k not in ("assets", "links")}, "assets": assets}


def _entries(listed: Any) -> Any:
    if not isinstance(listed, list):
        return listed
    return [{k: b[k] for k in _BAND_FIELDS if k in b} if isinstance(b, dict) else b for b in listed]


@dataclass(frozen=True)
class BandRef:
    """Where one band lives: an asset href and the 1-based band index inside it."""

    href: str
    index: int
    asset: str


@dataclass
class Item:
    id: str
    collection: str
    geometry: shapely.Geometry
    properties: dict[str, Any]
    assets: dict[str, dict[str, Any]]
    start: dt.datetime | None = None
    end: dt.datetime | None = None
    _bands: dict[str, BandRef] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], href_resolver=None) -> "Item":
        props = dict(d.get("properties") or {})
        t = parse_time(props.get("datetime"))
        start = parse_time(props.get("start_datetime")) or t
        end = parse_time(props.get("end_datetime")) or t
        assets = {k: dict(v) for k, v in (d.get("assets") or {}).items()}
        if href_resolver is not None:
            for a in assets.values():
                a["href"] = href_resolver(a["href"])
        return cls(id=str(d["id"]), collection=str(d.get("collection", "")), geometry=shape(d["geometry"]),
                   properties=props, assets=assets, start=start, end=end)

    @property
    def datetime(self) -> dt.datetime | None:
        return self.start

    def band(self, name: str) -> BandRef:
        """The asset holding band ``name``: an asset keyed by the name, or one listing it in ``eo:bands``/``bands``."""
        if not self._bands:
            for key, a in self.assets.items():
                listed = a.get("eo:bands") or a.get("bands") or []
                for i, b in enumerate(listed, start=1):
                    self._bands.setdefault(b.get("name", ""), BandRef(a["href"], i, key))
            for key, a in self.assets.items():  # an asset named after the band wins
                if "data" in a.get("roles", ["data"]):
                    self._bands[key] = BandRef(a["href"], 1, key)
        try:
            return self._bands[name]
        except KeyError:
            from .faults import MissingAsset

            raise MissingAsset(f"item {self.id} has no band {name!r} (assets: {sorted(self.assets)})") from None

    def has_band(self, name: str) -> bool:
        try:
            self.band(name)
        except Exception:  # noqa: BLE001
            return False
        return True

    def epsg(self) -> int | None:
        code = self.properties.get("proj:epsg")
        if code is None and str(self.properties.get("proj:code", "")).upper().startswith("EPSG:"):
            code = self.properties["proj:code"].split(":")[1]
        return int(code) if code is not None else None

    def matches(self, filters: Mapping[str, tuple[str, Any]] | None) -> bool:
        """Property filters as ``{"eo:cloud_cover": ("<", 10), "sat:orbit_state": ("==", "ascending")}``."""
        for prop, (op, value) in (filters or {}).items():
            have = self.properties.get(prop)
            if have is None or not _OPS[op](have, value):
                return False
        return True

    def overlaps_time(self, start: dt.datetime | None, end: dt.datetime | None) -> bool:
        if self.start is None:
            return True
        s, e = self.start, self.end or self.start
        return (end is None or s <= end) and (start is None or e >= start)


@dataclass
class NativeRaster:
    """Bands of an item read on its own grid (for derived bands such as slope, computed before resampling, and for
    area means over native pixels).

    Attributes:
        data: (bands, h, w) float32, NaN = no data.
        transform: the grid's affine transform.
        crs: the grid's CRS, e.g. ``EPSG:4326``.
    """

    data: np.ndarray
    transform: Affine
    crs: str
