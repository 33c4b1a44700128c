"""The tile grid every modality lands on: ``tile_px`` pixels of 10 m in the UTM CRS of the chosen Sentinel-2 scene.

MMEarth exported each tile at ``scale=10`` in the projection of the S2 scene's B4 band (MMEarth's data pipeline,
Nedungadi et al. 2024), so the grid is fixed only once the scene is known. Before that, recipes use the location's
own UTM zone (e.g. to test that a scene footprint contains the tile plus 200 m).
"""
from __future__ import annotations

import functools
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from affine import Affine
from pyproj import Transformer
from shapely import Polygon

from sampling.spacing import utm_epsg as _utm_epsg

RESOLUTION_M = 10.0


@functools.lru_cache(maxsize=256)
def transformer(src_epsg: int, dst_epsg: int) -> Transformer:
    return Transformer.from_crs(src_epsg, dst_epsg, always_xy=True)


_PROJ_THREAD = "pyproj"
_proj: dict[str, object] = {"on": False}   # the opt-in, this process's projection thread (a pool of one), its pid
_proj_lock = threading.Lock()


def project_on_one_thread(on: bool = True) -> None:
    """Opt in (or out) to running every :func:`project` of this process on one long-lived thread.

    pyproj copies a transformer into each thread that first uses it (PROJ objects are per thread): an export's many
    tile threads, each meeting many UTM zones, would each pay that copy for each pair of CRSs; on one thread each
    pair is copied once per process, for the cost of handing each call over. Library code never turns this on (it
    starts a thread): a long export's entry point does (:func:`pipelines.backends.gee.session.tune_process`).

    Args:
        on: True to route projections through the thread, False to run them on the calling thread again.
    """
    with _proj_lock:
        _proj["on"] = on


def project(src_epsg: int, dst_epsg: int, xs, ys):
    """pyproj's ``transform(xs, ys)`` from ``src_epsg`` to ``dst_epsg``: on the calling thread, or on this
    process's projection thread once :func:`project_on_one_thread` opted in (the same numbers either way)."""
    t = transformer(src_epsg, dst_epsg)
    if not _proj["on"] or threading.current_thread().name.startswith(_PROJ_THREAD):
        return t.transform(xs, ys)
    with _proj_lock:
        if _proj.get("pid") != os.getpid():   # a forked child has the pool object, not its thread
            _proj.update(pid=os.getpid(), pool=ThreadPoolExecutor(1, thread_name_prefix=_PROJ_THREAD))
        pool = _proj["pool"]
    return pool.submit(t.transform, xs, ys).result()


@functools.lru_cache(maxsize=65536)
def projected(lon: float, lat: float, epsg: int) -> tuple[float, float]:
    """(lon, lat) in ``epsg``: asked several times per tile."""
    return project(4326, epsg, lon, lat)


def utm_epsg(lon: float, lat: float) -> int:
    """The standard UTM zone of one point (the sampler's vectorised rule)."""
    return int(_utm_epsg(np.array([lon]), np.array([lat]))[0])


@dataclass(frozen=True)
class TileGrid:
    """A north-up square grid: ``width`` x ``height`` pixels of ``res`` metres, upper-left corner at (x0, y0)."""

    epsg: int
    x0: float
    y0: float
    width: int
    height: int
    res: float = RESOLUTION_M

    @classmethod
    def centred(cls, lon: float, lat: float, epsg: int, tile_px: int, res: float = RESOLUTION_M,
                align: tuple[float, float] | None = None) -> "TileGrid":
        """The grid centred on (lon, lat); ``align`` = a pixel corner of a source grid to snap to (no resampling)."""
        x, y = projected(lon, lat, epsg)
        half = tile_px * res / 2.0
        x0, y0 = x - half, y + half
        ax, ay = align if align is not None else (0.0, 0.0)
        x0 = ax + round((x0 - ax) / res) * res
        y0 = ay + round((y0 - ay) / res) * res
        return cls(epsg, float(x0), float(y0), tile_px, tile_px, res)

    @property
    def crs(self) -> str:
        return f"EPSG:{self.epsg}"

    @property
    def transform(self) -> Affine:
        return Affine(self.res, 0.0, self.x0, 0.0, -self.res, self.y0)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        return (self.x0, self.y0 - self.height * self.res, self.x0 + self.width * self.res, self.y0)

    def coarsen(self, factor: int) -> "TileGrid":
        """Same extent, ``factor`` times fewer pixels per side (for area means such as ERA5)."""
        return TileGrid(self.epsg, self.x0, self.y0, max(1, self.width // factor), max(1, self.height // factor),
                        self.res * self.width / max(1, self.width // factor))

    def polygon_lonlat(self, buffer_m: float = 0.0, densify: int = 8) -> Polygon:
        """The grid's outline (grown by ``buffer_m``) in lon/lat, densified so it stays exact after projection."""
        left, bottom, right, top = self.bounds
        return outline_lonlat((left - buffer_m, bottom - buffer_m, right + buffer_m, top + buffer_m), self.epsg,
                              densify)

    def bbox_lonlat(self, buffer_m: float = 0.0) -> tuple[float, float, float, float]:
        left, bottom, right, top = self.bounds
        return outline_bbox((left - buffer_m, bottom - buffer_m, right + buffer_m, top + buffer_m), self.epsg, 8)

    def centre_lonlat(self) -> tuple[float, float]:
        left, bottom, right, top = self.bounds
        lon, lat = project(self.epsg, 4326, (left + right) / 2, (bottom + top) / 2)
        return float(lon), float(lat)

    def to_dict(self) -> dict:
        return {"epsg": self.epsg, "x0": self.x0, "y0": self.y0, "width": self.width, "height": self.height,
                "res": self.res}


@functools.lru_cache(maxsize=4096)
def outline_lonlat(bounds: tuple[float, float, float, float], epsg: int, densify: int = 8) -> Polygon:
    """A rectangle in ``epsg`` as a lon/lat polygon with ``densify`` points per side (edges curve when projected).

    Cached (shapely geometries are immutable): a tile's recipes ask for the same outlines several times each."""
    left, bottom, right, top = bounds
    if epsg == 4326:
        return Polygon([(left, bottom), (right, bottom), (right, top), (left, top)])
    t = np.linspace(0.0, 1.0, densify, endpoint=False)
    xs = np.concatenate([left + (right - left) * t, np.full_like(t, right), right - (right - left) * t,
                         np.full_like(t, left)])
    ys = np.concatenate([np.full_like(t, top), top - (top - bottom) * t, np.full_like(t, bottom),
                         bottom + (top - bottom) * t])
    lon, lat = project(epsg, 4326, xs, ys)
    return Polygon(np.column_stack([lon, lat]))


@functools.lru_cache(maxsize=4096)
def outline_bbox(bounds: tuple[float, float, float, float], epsg: int, densify: int = 8
                 ) -> tuple[float, float, float, float]:
    """The lon/lat bounds of :func:`outline_lonlat`, cached: most searches of a tile ask for them, and shapely's
    ``bounds`` is a call into GEOS each time."""
    return tuple(float(v) for v in outline_lonlat(bounds, epsg, densify).bounds)


def pixel_centres(transform: Affine, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates of every pixel centre of a north-up grid, in its own CRS."""
    cols, rows = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    return transform.c + cols * transform.a, transform.f + rows * transform.e


def metres_per_degree(lat: float) -> tuple[float, float]:
    """Length of one degree of longitude and latitude at ``lat`` on WGS84 (for slope on geographic DEMs)."""
    phi = math.radians(lat)
    lon_m = 111412.84 * math.cos(phi) - 93.5 * math.cos(3 * phi)
    lat_m = 111132.92 - 559.82 * math.cos(2 * phi) + 1.175 * math.cos(4 * phi)
    return lon_m, lat_m
