"""Static catalogs of synthetic scenes: one per location (what the synthetic backend reads, and what
``write_synthetic_catalog`` writes in bulk for ``--backend local``) and the shared ERA5-Land-like months (one global
1-degree COG per month, 2016-2020)."""
from __future__ import annotations

import datetime as dt
import hashlib
import multiprocessing
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from affine import Affine
from shapely import box

from mmearth_data.io_utils import atomic_write_json

from ...grid import metres_per_degree
from ...recipes.base import load_sources
from .files import NOTE, Deferred, ItemWriter, build_atomically, write_catalog
from .scenes import S1_OTHERS_M, Location, LocationScenes
from .world import era5_month

ERA5_MONTHS = [(y, m) for y in range(2016, 2021) for m in range(1, 13)]


def write_locations(root: Path, locations: Iterable[Location], seed: int, tile_px: int, catalog_id: str,
                    era5: bool = False, lazy: bool = False, dry: bool = False,
                    others: Sequence[tuple[float, float]] = ()) -> dict[str, Deferred]:
    """One static catalog holding every source item of ``locations`` (and the ERA5 months when ``era5``).
    ``lazy``: write the STAC documents now and return the assets to write on first read (relative path ->
    :class:`Deferred`); ``dry``: write nothing, only return that map (for a catalog written earlier);
    ``others``: (lon, lat) of locations of the same catalog written apart, kept out of Sentinel-1 slices."""
    locations = list(locations)
    sources = load_sources("local")
    collections = ("sentinel2_l1c", "sentinel2_l2a", "sentinel1", "dynamic_world", "dem", "canopy_height", "esa_worldcover")
    deferred: dict[str, Deferred] | None = {} if (lazy or dry) else None
    writers = {sources[k].collection: ItemWriter(root, sources[k].collection, deferred, dry) for k in collections}
    for loc in locations:
        near = neighbours(loc, [*((o.lon, o.lat) for o in locations if o is not loc), *others])
        LocationScenes(loc, seed, tile_px, writers, sources, near).write()
    if era5:
        writers["era5"] = _era5_writer(root, seed)
    write_catalog(root, catalog_id, writers.values())
    return deferred or {}


def _era5_writer(root: Path, seed: int) -> ItemWriter:
    """One global 1-degree, 4-band COG per month, 2016-2020 (the 12-month window reaches back into 2016)."""
    src = load_sources("local")["era5_land_monthly"]
    writer = ItemWriter(root, src.collection)
    tr = Affine(1.0, 0, -180.0, 0, -1.0, 90.0)
    lon, lat = np.meshgrid(np.arange(360) - 179.5, 89.5 - np.arange(180))
    names = [src.band(v) for v in ("temperature_2m", "temperature_2m_min", "temperature_2m_max", "total_precipitation_sum")]
    for year, month in ERA5_MONTHS:
        start = dt.datetime(year, month, 1, tzinfo=dt.timezone.utc)
        nxt = dt.datetime(year + month // 12, month % 12 + 1, 1, tzinfo=dt.timezone.utc)
        writer.add(f"ERA5_LAND_MONTHLY_{year}{month:02d}", (start, nxt - dt.timedelta(seconds=1)), box(-180, -90, 180, 90),
                   {"proj:epsg": 4326}, {"data": (era5_month(lat, lon, year, month, seed), tr, 4326, None, names)},
                   block=32)
    return writer


def write_era5(root: Path, seed: int) -> None:
    write_catalog(root, "synthetic-era5", [_era5_writer(root, seed)])


def era5_root(root: Path, seed: int) -> Path:
    """``root/era5``: the ERA5 months' catalog, written once (atomically) and shared by every location."""
    return build_atomically(root / "era5", lambda d: write_era5(d, seed))


def safe_name(tile_id: str) -> str:
    ok = tile_id and all(c.isalnum() or c in "-_." for c in tile_id) and not tile_id.startswith(".")
    return tile_id if ok else "t" + hashlib.sha1(tile_id.encode()).hexdigest()[:16]



def neighbours(loc: Location, points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points within :data:`S1_OTHERS_M` of ``loc`` (a slice of its Sentinel-1 may reach them)."""
    if not len(points):
        return []
    xy = np.asarray(points, dtype=np.float64)
    lon_m, lat_m = metres_per_degree(loc.lat)
    dlon = (xy[:, 0] - loc.lon + 180.0) % 360.0 - 180.0
    near = np.hypot(dlon * max(lon_m, 1_000.0), (xy[:, 1] - loc.lat) * lat_m) < S1_OTHERS_M
    return [tuple(map(float, p)) for p in xy[near]]


def _write_location_catalog(root: Path, loc: Location, seed: int, tile_px: int,
                            others: Sequence[tuple[float, float]] = ()) -> str:
    name = safe_name(loc.tile_id)
    build_atomically(root / "tiles" / name, lambda d: write_locations(d, [loc], seed, tile_px, f"synthetic-{loc.tile_id}",
                                                                      others=others))
    return name


def write_synthetic_catalog(root: str | os.PathLike, locations: Sequence[Location], seed: int, tile_px: int,
                            workers: int = 2) -> Path:
    """A static catalog of every location's synthetic sources plus ERA5, for ``--backend local`` (tests, demos,
    benchmarks): ``root/catalog.json`` links one child catalog per location and the ERA5 catalog. Generation is
    CPU-bound Python, so it runs in ``workers`` processes."""
    root = Path(root)
    era5_root(root, seed)
    n = len(locations)
    others = [neighbours(loc, [(o.lon, o.lat) for o in locations if o is not loc]) for loc in locations]
    if workers > 1 and n > 1:
        from ...scheduling import watch_parent

        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=watch_parent,
                                 initargs=(os.getpid(),)) as pool:   # a killed caller leaves no writer behind
            names = list(pool.map(_write_location_catalog, [root] * n, locations, [seed] * n, [tile_px] * n, others,
                                  chunksize=max(1, n // (4 * workers))))
    else:
        names = [_write_location_catalog(root, loc, seed, tile_px, near) for loc, near in zip(locations, others)]
    doc = {"type": "Catalog", "stac_version": "1.0.0", "id": "synthetic", "description": NOTE, "mmearth:synthetic": True,
           "links": [{"rel": "root", "href": "./catalog.json", "type": "application/json"},
                     {"rel": "child", "href": "./era5/catalog.json", "type": "application/json"}]
                    + [{"rel": "child", "href": f"./tiles/{n}/catalog.json", "type": "application/json"} for n in names]}
    atomic_write_json(root / "catalog.json", doc)
    return root / "catalog.json"
