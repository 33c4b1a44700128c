"""The synthetic source scenes around one location, sampled from :class:`~.world.World`:

- Sentinel-2: one or two acquisitions per year 2017-2020, each as L1C and, from Dec 2018, L2A; in the location's UTM zone
  or a neighbouring one; 10/20/60 m assets as in the real product; cloud cover from a cloud field, some scenes
  cloudy (> 10 %) and some that only partly cover the tile.
- Sentinel-1 IW: ascending/descending acquisitions every ~200 days, EPSG:4326 at ~30 m, VV+VH (HH+HV at high
  latitude); an orbit direction may be missing. Footprints are GRD slices as large as the real ones (a 250 km
  swath, 170 km along the track, heading ~12 degrees off north), with the tile at a random place in them; a share
  of the slices (:data:`S1_EDGE_SHARE`, far more than the ~1 % of real tiles) end across the tile, whose pixels
  past the end are no-data, so the rule "the footprint contains the tile + 200 m" has something to reject. Pixels
  are generated only around the tile; a slice has a hole around every other location of the same catalog, so that
  no other tile can pick it for pixels it does not hold.
- Dynamic World per S2 acquisition (UTM 10 m), elevation (EPSG:4326, 1 arc-second), ETH-like canopy height and
  ESA WorldCover (EPSG:4326, 1/12000 degree).
"""
from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import shapely
from affine import Affine
from shapely import box

from mmearth_data.sample_data import ESA_CODES, S1_BACKSCATTER, S2_SPECTRA

from ...grid import RESOLUTION_M, metres_per_degree, pixel_centres, transformer, utm_epsg
from ...recipes.base import stable_seed
from .files import ItemWriter, footprint
from .world import World, fbm, value_noise

S2_RES = {"r10m": 10.0, "r20m": 20.0, "r60m": 60.0}
S2_ASSETS = {
    "l2a": {"r10m": ["B02", "B03", "B04", "B08"], "r20m": ["B05", "B06", "B07", "B8A", "B11", "B12", "SCL", "MSK_CLDPRB"],
            "r60m": ["B01", "B09", "QA60"]},
    "l1c": {"r10m": ["B02", "B03", "B04", "B08"], "r20m": ["B05", "B06", "B07", "B8A", "B11", "B12"],
            "r60m": ["B01", "B09", "B10", "QA60"]},
}
# how much each Dynamic World class's spectrum varies between regions (x (1 +/- half of it), per band)
CLASS_VARIATION = np.array([0.4, 0.8, 0.8, 0.6, 0.8, 0.7, 0.5, 0.6, 0.3])
S2_SPECTRAL = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B8A", "B08", "B09", "B10", "B11", "B12"]
L2A_FROM = dt.date(2018, 12, 1)
DEG_1ARCSEC = 1 / 3600
DEG_10M = 1 / 12000
S1_SWATH_M, S1_SLICE_M, S1_HEADING_DEG = 250_000.0, 170_000.0, 12.0   # IW swath width, GRD slice length
S1_EDGE_SHARE = 0.15   # slices whose along-track end crosses the tile (tests: the containment rule must matter)
S1_OTHERS_M = 400_000.0   # other locations within this distance may lie in a slice: holes are cut for them


@dataclass(frozen=True)
class Location:
    tile_id: str
    lon: float
    lat: float
    biome: int


def block_mean(a: np.ndarray, k: int) -> np.ndarray:
    h, w = a.shape[0] // k, a.shape[1] // k
    return a[:h * k, :w * k].reshape(h, k, w, k).mean(axis=(1, 3))


def pixel_lonlat(transform: Affine, width: int, height: int, epsg: int) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = pixel_centres(transform, width, height)
    if epsg == 4326:
        return xs, ys
    return transformer(epsg, 4326).transform(xs, ys)



class LocationScenes:
    """All synthetic source items around one location."""

    def __init__(self, loc: Location, seed: int, tile_px: int, writers: dict[str, ItemWriter], sources,
                 others: Sequence[tuple[float, float]] = ()):
        self.loc, self.seed, self.tile_px, self.w, self.src = loc, seed, tile_px, writers, sources
        self.others = others   # (lon, lat) of the catalog's other locations near this one
        self.world = World(seed, loc.biome)
        self.rng = np.random.default_rng(stable_seed(seed, loc.tile_id, "synthetic"))
        self.half_m = tile_px * RESOLUTION_M / 2 + 200 + 100   # tile + the 200 m containment buffer + margin
        # layers without a containment rule (S1, DEM, canopy, WorldCover) need the tile, its rotation against
        # the lon/lat grid and a few pixels for bilinear reads: a smaller area to generate
        self.half_static_m = tile_px * RESOLUTION_M / 2 * 1.06 + 100

    def write(self) -> None:
        acquisitions = self._s2_acquisitions()
        for acq in acquisitions:
            self._sentinel2(acq)
        self._sentinel1()
        self._static_layers()

    # Sentinel-2 ------------------------------------------------------------------------------------------------
    def _s2_acquisitions(self) -> list[dict]:
        rng, loc = self.rng, self.loc
        zone_epsg = utm_epsg(loc.lon, loc.lat)
        out = []
        for year in range(2017, 2021):
            for k in range(1 + int(rng.random() < 0.3)):  # ~22 % of tiles end up without a usable scene, as in MMEarth
                day = dt.date(year, 1, 1) + dt.timedelta(days=int(rng.integers(0, 365 if year % 4 else 366)))
                when = dt.datetime(day.year, day.month, day.day, 10, 30, int(rng.integers(0, 60)), tzinfo=dt.timezone.utc)
                cloudy = rng.random() < 0.2
                cloud = float(rng.uniform(12, 60) if cloudy else rng.uniform(0, 8))
                partial = rng.random() < 0.1
                epsg = zone_epsg + int(rng.choice([-1, 1])) if rng.random() < 0.15 else zone_epsg
                if epsg % 100 in (0, 61):
                    epsg = zone_epsg
                shift = rng.uniform(-1, 1, 2) * (self.half_m * 1.1 if partial else 40.0)
                out.append({"when": when, "cloud": cloud, "epsg": epsg, "shift": shift, "salt": int(rng.integers(1 << 30)),
                            "id": f"{loc.tile_id}_{when:%Y%m%dT%H%M%S}"})
        return out

    def _sentinel2(self, acq: dict) -> None:
        loc, world = self.loc, self.world
        x, y = transformer(4326, acq["epsg"]).transform(loc.lon, loc.lat)
        cx, cy = x + acq["shift"][0], y + acq["shift"][1]
        x0 = math.floor((cx - self.half_m) / 60.0) * 60.0
        y0 = math.ceil((cy + self.half_m) / 60.0) * 60.0
        size_m = math.ceil(2 * self.half_m / 60.0) * 60.0
        grids = {k: (Affine(r, 0, x0, 0, -r, y0), int(size_m / r)) for k, r in S2_RES.items()}
        cache: dict = {}

        def field(key: str):   # computed once per acquisition and resolution, when a pixel is first needed
            if key not in cache:
                if key == "r10m":
                    tr, n = grids[key]
                    lon, lat = pixel_lonlat(tr, n, n, acq["epsg"])
                    cache[key] = (lon, lat, world.cover(lon, lat), world.clouds(lon, lat, acq["salt"]))
                else:   # a coarse band sees the ground its 10 m pixels see: block means, and the block's first class
                    k = int(S2_RES[key] // S2_RES["r10m"])
                    lon, lat, cover, density = field("r10m")
                    cache[key] = (block_mean(lon, k), block_mean(lat, k), cover[::k, ::k], block_mean(density, k))
            return cache[key]

        def thresh() -> float:   # so that the 10 m raster has the acquisition's cloud fraction
            if "thresh" not in cache:
                cache["thresh"] = float(np.quantile(field("r10m")[3], 1 - acq["cloud"] / 100.0))
            return cache["thresh"]

        geom = footprint(grids["r10m"][0], grids["r10m"][1], grids["r10m"][1], acq["epsg"])
        for level in ("l1c", "l2a"):
            if level == "l2a" and acq["when"].date() < L2A_FROM:
                continue
            assets = {}
            for key, names in S2_ASSETS[level].items():
                tr, n = grids[key]

                def produce(key=key, names=names, level=level) -> np.ndarray:
                    rng = np.random.default_rng(stable_seed(self.seed, acq["id"], level, key))
                    return self._s2_bands(names, *field(key), thresh(), level, rng)

                # no nodata value: QA60 and MSK_CLDPRB use 0 as a valid value (no cloud), and the scene
                # contains the tile, so there is nothing to mask
                assets[key] = (produce, tr, acq["epsg"], None, names, (n, n))
            collection = self.src[f"sentinel2_{level}"].collection
            self.w[collection].add(f"S2_{level.upper()}_{acq['id']}", acq["when"], geom,
                                   {"eo:cloud_cover": round(acq["cloud"], 2), "proj:epsg": acq["epsg"],
                                    "platform": "sentinel-2a", "s2:processing_level": level.upper()}, assets)

        def dynamic_world() -> np.ndarray:   # one label image per acquisition, clouds masked, a little label noise
            _, _, cover, density = field("r10m")
            rng = np.random.default_rng(stable_seed(self.seed, acq["id"], "dw"))
            label = np.where(rng.random(cover.shape) < 0.03, rng.integers(0, 9, cover.shape), cover).astype(np.uint8)
            label[density > thresh()] = 255
            return label[None]

        tr, n = grids["r10m"]
        self.w[self.src["dynamic_world"].collection].add(
            f"DW_{acq['id']}", acq["when"], geom, {"proj:epsg": acq["epsg"]},
            {"label": (dynamic_world, tr, acq["epsg"], 255, ["label"], (n, n))})

    def _s2_bands(self, names, lon, lat, cover, density, thresh, level, rng) -> np.ndarray:
        """Per-class spectra with spatially correlated texture (as real scenes have) and a little sensor noise.

        A class's spectrum also varies by region, band by band (a field about 2 degrees wide, as soil, condition
        and phenology make the same cover look different from place to place; ``CLASS_VARIATION``: vegetation
        most, snow least). Without it, a tile's land cover would be a linear function of its mean spectrum, which
        a randomly initialised encoder already reads off: pretraining could not show what it learns."""
        cloud = density > thresh
        out = np.empty((len(names),) + cover.shape, dtype=np.uint16)
        texture = fbm(lon, lat, 0.0006, self.world.salt + 11, 2) - 0.5
        for i, name in enumerate(names):
            if name in S2_SPECTRAL:
                b = S2_SPECTRAL.index(name)
                regional = value_noise(lon, lat, 2.0, self.world.salt + 300 + b) - 0.5   # condition, soil, phenology
                v = (S2_SPECTRA[cover, b] * (1 + CLASS_VARIATION[cover] * regional) * (1 + 0.25 * texture)
                     + 2 * rng.standard_normal(cover.shape))
                if level == "l1c" and b < 3:
                    v = v + (180, 150, 90)[b]  # top of atmosphere: path radiance in the blue bands
                v = np.where(cloud, 5200 + 2500 * (density - thresh), v)
                out[i] = np.clip(v, 1, 20000)
            elif name == "QA60":
                out[i] = np.where(cloud, 1024, 0)
            elif name == "MSK_CLDPRB":
                out[i] = np.clip(np.where(cloud, 70 + 300 * (density - thresh),
                                          100 * np.maximum(density - thresh + 0.05, 0)), 0, 100)
            elif name == "SCL":
                scl = np.select([cover == 0, cover == 8, np.isin(cover, [6, 7])], [6, 11, 5], 4)
                out[i] = np.where(cloud, 9, scl)
        return out

    # Sentinel-1 ------------------------------------------------------------------------------------------------
    def _sentinel1(self) -> None:
        rng, loc, world = self.rng, self.loc, self.world
        pols = ["HH", "HV"] if abs(loc.lat) > 60 else ["VV", "VH"]
        tr, w, h = self._geographic_grid(0.0003)
        cache: dict = {}

        def cover() -> np.ndarray:
            if "cover" not in cache:
                cache["cover"] = world.cover(*pixel_lonlat(tr, w, h, 4326))
            return cache["cover"]

        for orbit, p_missing, offset_db in (("ascending", 0.1, 0.0), ("descending", 0.25, -0.6)):
            if rng.random() < p_missing:
                continue
            day = dt.datetime(2017, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(days=int(rng.integers(0, 150)))
            end = dt.datetime(2021, 1, 1, tzinfo=dt.timezone.utc)
            while day < end:
                when = day + dt.timedelta(hours=6 if orbit == "descending" else 18)

                def produce(when=when, offset_db=offset_db, orbit=orbit) -> np.ndarray:
                    c = cover()
                    noise = np.random.default_rng(stable_seed(self.seed, loc.tile_id, orbit, when.isoformat()))
                    data = S1_BACKSCATTER[c].transpose(2, 0, 1) + offset_db + noise.normal(0, 1.2, (2,) + c.shape)
                    if pols[0] == "HH":
                        data = data + 1.0
                    return (np.round(data * 16) / 16).astype(np.float32)  # 1/16 dB steps: compresses, still speckled

                item_id = f"S1_{orbit[:3].upper()}_{loc.tile_id}_{when:%Y%m%dT%H%M%S}"
                geom = self._s1_slice(orbit, item_id)

                def masked(produce=produce, geom=geom) -> np.ndarray:   # no pixels past the slice's end
                    data = produce()
                    lon, lat = pixel_lonlat(tr, w, h, 4326)
                    data[:, ~shapely.contains_xy(geom, lon, lat)] = np.nan
                    return data

                self.w[self.src["sentinel1"].collection].add(
                    item_id, when, geom,
                    {"sat:orbit_state": orbit, "sar:polarizations": pols, "sar:instrument_mode": "IW",
                     "proj:epsg": 4326},
                    {"data": (masked, tr, 4326, float("nan"), [p.lower() for p in pols], (h, w))})
                day += dt.timedelta(days=int(200 + rng.integers(0, 31)))

    def _s1_slice(self, orbit: str, item_id: str):
        """A GRD slice's footprint around the location (lon/lat): the track's swath, where the location lies at a
        place fixed per orbit direction, and a slice whose start along the track varies per acquisition; some
        slices end across the tile. Holes around the catalog's other locations."""
        loc = self.loc
        track = np.random.default_rng(stable_seed(self.seed, loc.tile_id, "s1-track", orbit))
        across = float(track.uniform(0.02, 0.98)) * S1_SWATH_M   # the location's distance from the swath's edge
        pick = np.random.default_rng(stable_seed(self.seed, item_id, "s1-slice"))
        if pick.random() < S1_EDGE_SHARE:   # the slice ends within 100 m of the location: across the tile
            along = float(pick.choice([-1.0, 1.0])) * float(pick.uniform(0, 100)) + (0 if pick.random() < 0.5
                                                                                    else S1_SLICE_M)
        else:
            margin = self.half_m + 1000.0
            along = float(pick.uniform(margin, S1_SLICE_M - margin))
        heading = math.radians(S1_HEADING_DEG if orbit == "descending" else -S1_HEADING_DEG)
        corners = np.array([(-across, -along), (S1_SWATH_M - across, -along), (S1_SWATH_M - across, S1_SLICE_M - along),
                            (-across, S1_SLICE_M - along)])   # (east, north) of the unrotated slice, metres
        east = corners[:, 0] * math.cos(heading) + corners[:, 1] * math.sin(heading)
        north = -corners[:, 0] * math.sin(heading) + corners[:, 1] * math.cos(heading)
        lon_m, lat_m = metres_per_degree(loc.lat)
        lon_m = max(lon_m, 1_000.0)
        geom = shapely.Polygon(zip(loc.lon + east / lon_m, np.clip(loc.lat + north / lat_m, -89.9, 89.9)))
        geom = geom.intersection(box(-180, -90, 180, 90))   # no wrap across the antimeridian
        keep = self.tile_px * RESOLUTION_M / 2 + 400.0   # another tile + its 200 m stay out of this slice
        holes = []
        for x, y in self.others:
            ox, oy = keep / max(metres_per_degree(y)[0], 1_000.0), keep / metres_per_degree(y)[1]
            holes.append(box(x - ox, y - oy, x + ox, y + oy))
        if holes:
            geom = geom.difference(shapely.union_all(holes))
        return shapely.normalize(geom)

    # elevation, canopy height, ESA WorldCover ------------------------------------------------------------------
    def _geographic_grid(self, res_deg: float) -> tuple[Affine, int, int]:
        loc = self.loc
        half_lat = self.half_static_m / 110_574.0
        half_lon = self.half_static_m / max(111_320.0 * math.cos(math.radians(loc.lat)), 1_000.0)
        x0 = math.floor((loc.lon - half_lon) / res_deg) * res_deg
        y0 = math.ceil((loc.lat + half_lat) / res_deg) * res_deg
        w = int(math.ceil((loc.lon + half_lon - x0) / res_deg))
        h = int(math.ceil((y0 - (loc.lat - half_lat)) / res_deg))
        return Affine(res_deg, 0, x0, 0, -res_deg, y0), w, h

    def _static_layers(self) -> None:
        loc, world = self.loc, self.world
        tr, w, h = self._geographic_grid(DEG_1ARCSEC)

        def elevation() -> np.ndarray:
            return np.rint(world.elevation(*pixel_lonlat(tr, w, h, 4326))).astype(np.int16)[None]

        static = (dt.datetime(2000, 3, 1, tzinfo=dt.timezone.utc), dt.datetime(2013, 11, 30, tzinfo=dt.timezone.utc))
        self.w[self.src["dem"].collection].add(f"DEM_{loc.tile_id}", static, footprint(tr, w, h, 4326),
                                               {"proj:epsg": 4326},
                                               {"elevation": (elevation, tr, 4326, -32768, ["elevation"], (h, w))})
        tr10, w10, h10 = self._geographic_grid(DEG_10M)
        cache: dict = {}

        def layers() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            if "layers" not in cache:
                lon, lat = pixel_lonlat(tr10, w10, h10, 4326)
                cover = world.cover(lon, lat)
                cache["layers"] = (cover, *world.canopy(lon, lat, cover))
            return cache["layers"]

        geom = footprint(tr10, w10, h10, 4326)
        year2020 = (dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc), dt.datetime(2020, 12, 31, 23, 59, 59, tzinfo=dt.timezone.utc))
        shape = (h10, w10)
        self.w[self.src["canopy_height"].collection].add(
            f"CHM_{loc.tile_id}", year2020, geom, {"proj:epsg": 4326},
            {"height": (lambda: np.rint(layers()[1])[None].astype(np.uint8), tr10, 4326, 255, ["height"], shape),
             "std": (lambda: np.rint(layers()[2])[None].astype(np.uint8), tr10, 4326, 255, ["std"], shape)})
        self.w[self.src["esa_worldcover"].collection].add(
            f"ESA_WorldCover_10m_2020_{loc.tile_id}", year2020, geom, {"proj:epsg": 4326},
            {"map": (lambda: ESA_CODES[layers()[0]][None], tr10, 4326, 0, ["map"], shape)})

