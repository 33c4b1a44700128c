"""Small static STAC catalogs of real COGs for tests, written with the synthetic backend's own writer."""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
from affine import Affine
from shapely import box

from pipelines.backends.local import LocalBackend
from pipelines.backends.synthetic import ItemWriter, write_catalog
from pipelines.grid import TileGrid, pixel_centres, transformer
from pipelines.recipes import TileContext, load_sources
from pipelines.staging import PartitionStore

LON, LAT = 12.5, 42.0          # Rome, UTM 33N
EPSG = 32633


def utc(*args) -> dt.datetime:
    return dt.datetime(*args, tzinfo=dt.timezone.utc)


class CatalogBuilder:
    """``add(collection, id, when, geometry, properties, assets)`` then ``backend()``."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.writers: dict[str, ItemWriter] = {}

    def add(self, collection: str, item_id: str, when, geometry=None, properties=None, assets=None) -> None:
        w = self.writers.setdefault(collection, ItemWriter(self.root, collection))
        if geometry is None:
            geometry = box(LON - 0.05, LAT - 0.05, LON + 0.05, LAT + 0.05)
        w.add(item_id, when, geometry, properties or {}, assets or {})

    def backend(self, **kw) -> LocalBackend:
        write_catalog(self.root, "test", self.writers.values())
        return LocalBackend(str(self.root), **kw)


def utm_raster(fn, epsg: int = EPSG, res: float = 10.0, half_m: float = 1500.0, lon: float = LON, lat: float = LAT,
               dtype="uint16", bands: int = 1):
    """A raster around (lon, lat) in ``epsg`` whose pixel values are ``fn(x, y)`` at pixel centres (that CRS)."""
    x, y = transformer(4326, epsg).transform(lon, lat)
    x0, y0 = np.floor((x - half_m) / res) * res, np.ceil((y + half_m) / res) * res
    n = int(2 * half_m / res)
    tr = Affine(res, 0, x0, 0, -res, y0)
    xs, ys = pixel_centres(tr, n, n)
    data = np.stack([np.asarray(fn(xs, ys), dtype=dtype)] * bands) if bands > 1 else np.asarray(fn(xs, ys), dtype=dtype)[None]
    return data, tr


def geo_raster(fn, res_deg: float, half_deg: float = 0.03, lon: float = LON, lat: float = LAT, dtype="float32"):
    """A raster in EPSG:4326 whose pixel values are ``fn(lon, lat)`` at pixel centres."""
    x0, y0 = lon - half_deg, lat + half_deg
    n = int(round(2 * half_deg / res_deg))
    tr = Affine(res_deg, 0, x0, 0, -res_deg, y0)
    xs, ys = pixel_centres(tr, n, n)
    return np.asarray(fn(xs, ys), dtype=dtype)[None], tr


def context(backend, tile_id: str = "t1", tile_px: int = 32, seed: int = 0, lon: float = LON, lat: float = LAT,
            s2_date: dt.datetime | None = None, epsg: int = EPSG) -> TileContext:
    ctx = TileContext(tile_id=tile_id, lon=lon, lat=lat, utm_epsg=epsg, biome=7, eco_region=10, tile_px=tile_px,
                      seed=seed, backend=backend, sources=load_sources("local"))
    if s2_date is not None:
        ctx.s2_date = s2_date
        ctx.grid = TileGrid.centred(lon, lat, epsg, tile_px)
    return ctx


def write_locations_parquet(path: Path, n: int, seed: int = 0) -> Path:
    """A locations file with the sampler's columns (random points; the synthetic world needs no real land)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sampling.spacing import utm_epsg

    rng = np.random.default_rng(seed)
    lon = rng.uniform(-170, 170, n)
    lat = rng.uniform(-55, 70, n)
    pq.write_table(pa.table({
        "tile_id": [f"{i % 846}_{i:06d}" for i in range(n)], "lon": lon, "lat": lat,
        "biome": rng.integers(0, 14, n).astype("int16"), "eco_region": rng.integers(0, 846, n).astype("int16"),
        "utm_epsg": utm_epsg(lon, lat).astype("int32")}), path)
    return path


def synthetic_locations(path: Path):
    from pipelines.backends.synthetic import Location
    from pipelines.export import read_locations

    c = read_locations(path)
    return [Location(str(t), float(x), float(y), int(b)) for t, x, y, b in zip(c["tile_id"], c["lon"], c["lat"], c["biome"])]


def ledger_digest(out_dir: Path) -> dict:
    """(tile_id, modality) -> (status, sha256) over every partition of an export."""
    rows = {}
    for p in sorted((Path(out_dir) / "staging").glob("part-*.sqlite")):
        with PartitionStore(p, readonly=True) as st:
            for r in st.ledger():
                rows[(r["tile_id"], r["modality"])] = (r["status"], r["sha256"])
    return rows


def committed(out) -> dict[str, float]:
    """tile_id -> commit time, over all partitions (read-only; tolerates a file being written)."""
    times = {}
    for p in sorted((out / "staging").glob("part-*.sqlite")):
        try:
            with PartitionStore(p, readonly=True) as st:
                times.update(dict(st.db.execute("SELECT tile_id, updated FROM tiles")))
        except Exception:  # noqa: BLE001 - a partition file being created
            pass
    return times


def tile_infos(out) -> dict[str, dict]:
    infos = {}
    for p in sorted((out / "staging").glob("part-*.sqlite")):
        with PartitionStore(p, readonly=True) as st:
            infos.update({t: json.loads(i) for t, i in st.db.execute("SELECT tile_id, info FROM tiles")})
    return infos


def synthetic_world(root: Path, n: int, seed: int, tile_px: int = 32, workers: int = 1) -> tuple[Path, Path]:
    """(locations, catalog): ``n`` locations and the synthetic backend's sources at each, as a static catalog."""
    from pipelines.backends.synthetic import write_synthetic_catalog

    locations = write_locations_parquet(root / "locations.parquet", n, seed=seed)
    return locations, write_synthetic_catalog(root / "catalog", synthetic_locations(locations), seed=0,
                                              tile_px=tile_px, workers=workers)
