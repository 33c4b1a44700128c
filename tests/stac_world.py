"""A small world of real STAC items (Planetary Computer metadata from ../shared/fixtures/stac) whose assets are
COGs we generate, served by the tests' Range server.

The Sentinel-2 items are PC's real 35MNM scenes of June-July 2020 (baseline 02.12) plus PC's real baseline-05.10
scene of 2024, moved in code onto 35MNM (geometry, grid) and into 2019; Sentinel-1 RTC, Copernicus DEM and ESA
WorldCover (v100 and v200) items are real ones moved onto the same area. Pixel values are simple functions of the
position, so tests can say what a tile must hold: the baseline-05.10 scene carries the +1000 offset on top of the
very same reflectances as its 2019 twin, S1 is linear power, WorldCover v200 has a different class everywhere.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from shapely import affinity
from shapely.geometry import box, mapping, shape

from pipelines.grid import pixel_centres, transformer

FIX = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "stac"
EPSG = 32735                        # 35MNM
AREA = (27.40, -7.80, 27.60, -7.60)  # lon/lat box the tiles lie in (inside every item)
S2_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")


def _write_cog(path: Path, data: np.ndarray, transform: Affine, crs: str, nodata=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {"driver": "GTiff", "height": data.shape[1], "width": data.shape[2], "count": data.shape[0],
               "dtype": data.dtype, "crs": crs, "transform": transform, "tiled": True, "blockxsize": 256,
               "blockysize": 256, "compress": "deflate"}
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)


def _utm_window(res: float, origin: tuple[float, float], margin_m: float = 1500.0):
    """A window of a UTM grid (``res``, aligned to ``origin``) covering AREA + margin."""
    xs, ys = transformer(4326, EPSG).transform([AREA[0], AREA[2], AREA[0], AREA[2]],
                                               [AREA[1], AREA[1], AREA[3], AREA[3]])
    ox, oy = origin
    x0 = ox + np.floor((min(xs) - margin_m - ox) / res) * res
    y1 = oy + np.ceil((max(ys) + margin_m - oy) / res) * res
    w = int(np.ceil((max(xs) + margin_m - x0) / res))
    h = int(np.ceil((y1 - (min(ys) - margin_m)) / res))
    return Affine(res, 0, x0, 0, -res, y1), w, h


def reflectance(band: int, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Harmonized DN (what GEE's *_HARMONIZED serve) of band index ``band`` at UTM pixel centres."""
    return (1500 + 300 * band + (xs / 10.0 % 97) * 5 + (ys / 10.0 % 89) * 3).astype(np.uint16)


def scl_value(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    return ((xs // 60 + ys // 60) % 12).astype(np.uint8)


def s1_power(pol: int, xs, ys) -> np.ndarray:
    return (0.02 + 0.1 * pol + ((xs / 10.0) % 50) / 400.0 + ((ys / 10.0) % 30) / 900.0).astype(np.float32)


def elevation(lon, lat) -> np.ndarray:
    return (400 + 800 * (lon - 27.0) + 300 * np.sin(lat * 40)).astype(np.float32)


class World:
    def __init__(self, root: Path, base_url: str):
        self.root = Path(root)
        self.base_url = base_url.rstrip("/")
        self.items: list[dict] = []

    def href(self, rel: str) -> str:
        return f"{self.base_url}/{rel}"

    # -- Sentinel-2 --------------------------------------------------------------------------------------------
    def _s2_assets(self, item: dict, offset: int, key: str) -> None:
        for name, a in list(item["assets"].items()):
            if name not in S2_BANDS and name != "SCL":
                if name not in ("metadata", "product-metadata", "granule-metadata"):
                    item["assets"].pop(name)
                continue
            tr = a["proj:transform"]
            transform, w, h = _utm_window(abs(tr[0]), (tr[2], tr[5]))
            xs, ys = pixel_centres(transform, w, h)
            if name == "SCL":
                data = scl_value(xs, ys)[None]
            else:
                dn = reflectance(S2_BANDS.index(name), xs, ys).astype(np.int32) + offset
                data = dn.astype(np.uint16)[None]
            rel = f"s2/{key}/{name}.tif"
            _write_cog(self.root / rel, data, transform, f"EPSG:{EPSG}", nodata=0)
            a.update(href=self.href(rel), **{"proj:shape": [h, w], "proj:transform": list(transform)[:6]})
            a.pop("proj:bbox", None)

    def add_sentinel2(self) -> None:
        real = json.loads((FIX / "odc-stac" / "site2-2020_jun_jul-35MNM.geojson").read_text())["features"]
        for it in real:
            it = copy.deepcopy(it)
            self._s2_assets(it, 0, it["id"])
            self.items.append(it)
        # PC's real baseline-05.10 scene, moved onto 35MNM and into 2019: same reflectances + BOA offset 1000
        new = copy.deepcopy(json.loads((FIX / "stac-geoparquet_pc_items" / "sentinel-2-l2a-pc.json").read_text())[0])
        twin = copy.deepcopy(real[0])
        new["geometry"], new["bbox"] = twin["geometry"], twin["bbox"]
        new["properties"].update({"proj:epsg": EPSG, "datetime": "2019-07-31T08:06:11.024000Z",
                                  "eo:cloud_cover": 0.5, "s2:mgrs_tile": "35MNM"})
        new["id"] = "S2B_MSIL2A_20190731T080611_R078_T35MNM_moved_baseline0510"
        for name, a in new["assets"].items():
            if "proj:transform" in twin["assets"].get(name, {}):
                a["proj:transform"] = twin["assets"][name]["proj:transform"]
        self._s2_assets(new, 1000, new["id"])
        self.items.append(new)
        # ... and its baseline-02.12 twin of 2019 at the same place, without the offset (cloud 0.4: not the pick
        # of a 2019 tile only if we say so; tests choose tiles through their drawn year)
        old = copy.deepcopy(real[0])
        old["id"] = "S2A_MSIL2A_20180731T080611_R078_T35MNM_moved_baseline0212"
        old["properties"].update({"datetime": "2018-07-31T08:06:11.024000Z"})
        self._s2_assets(old, 0, old["id"])
        self.items.append(old)

    # -- Sentinel-1 RTC ----------------------------------------------------------------------------------------
    def add_sentinel1(self) -> None:
        real = json.loads((FIX / "stac-geoparquet_pc_items" / "sentinel-1-rtc-pc.json").read_text())[0]
        for orbit, day in (("descending", "2020-07-10"), ("ascending", "2020-07-20")):
            it = copy.deepcopy(real)
            geom = shape(it["geometry"])
            c = geom.centroid
            geom = affinity.translate(geom, (AREA[0] + AREA[2]) / 2 - c.x, (AREA[1] + AREA[3]) / 2 - c.y)
            it["geometry"], it["bbox"] = mapping(geom), list(geom.bounds)
            it["id"] = f"{real['id']}_{orbit}_moved"
            it["properties"].update({"datetime": f"{day}T04:59:10Z", "start_datetime": f"{day}T04:59:04Z",
                                     "end_datetime": f"{day}T04:59:16Z", "sat:orbit_state": orbit, "proj:epsg": EPSG})
            transform, w, h = _utm_window(10.0, (0.0, 0.0))
            xs, ys = pixel_centres(transform, w, h)
            it["properties"].update({"proj:shape": [h, w], "proj:transform": list(transform)[:6]})
            it["properties"].pop("proj:bbox", None)
            for k, pol in (("vv", 0), ("vh", 1)):
                data = s1_power(pol + (2 if orbit == "ascending" else 0), xs, ys)[None]
                data[:, :3, :] = -32768   # a no-data strip at the top
                rel = f"s1/{it['id']}/{k}.tif"
                _write_cog(self.root / rel, data, transform, f"EPSG:{EPSG}", nodata=-32768)
                it["assets"][k]["href"] = self.href(rel)
            it["assets"] = {k: it["assets"][k] for k in ("vv", "vh")}
            self.items.append(it)

    # -- DEM and WorldCover ------------------------------------------------------------------------------------
    def _geo_cog(self, rel: str, fn, res: float, dtype, nodata) -> tuple[Affine, int, int]:
        x0, y1 = AREA[0] - 0.03, AREA[3] + 0.03
        w = int(round((AREA[2] - AREA[0] + 0.06) / res))
        h = int(round((AREA[3] - AREA[1] + 0.06) / res))
        tr = Affine(res, 0, x0, 0, -res, y1)
        xs, ys = pixel_centres(tr, w, h)
        _write_cog(self.root / rel, np.asarray(fn(xs, ys), dtype=dtype)[None], tr, "EPSG:4326", nodata=nodata)
        return tr, w, h

    def add_dem(self) -> None:
        d = FIX / "stactools-cop-dem" / "cop-dem-glo-30" / "Copernicus_DSM_COG_10_N53_00_W115_00_DEM"
        it = json.loads((d / "Copernicus_DSM_COG_10_N53_00_W115_00_DEM.json").read_text())
        it["id"] = "Copernicus_DSM_COG_10_S08_00_E027_00_DEM"
        it["geometry"], it["bbox"] = mapping(box(27, -8, 28, -7)), [27, -8, 28, -7]
        tr, w, h = self._geo_cog(f"dem/{it['id']}.tif", elevation, 1 / 3600, "float32", -32767.0)
        it["properties"].update({"proj:shape": [h, w], "proj:transform": list(tr)[:6]})
        it["assets"] = {"data": {**it["assets"]["data"], "href": self.href(f"dem/{it['id']}.tif")}}
        it["links"] = []
        self.items.append(it)

    def add_worldcover(self) -> None:
        d = FIX / "stactools-esa-worldcover"
        for version, cls in (("2020_v100", None), ("2021_v200", 50)):
            name = f"ESA_WorldCover_10m_{version}_N00E006"
            it = json.loads((d / name / f"{name}.json").read_text())
            it["id"] = name.replace("N00E006", "S09E027")
            it["geometry"], it["bbox"] = mapping(box(27, -9, 30, -6)), [27, -9, 30, -6]

            def classes(lon, lat, cls=cls):
                v = (10 * (1 + ((lon * 3000).astype(int) + (lat * 3000).astype(int)) % 9)).astype(np.uint8)
                return np.full_like(v, cls) if cls else v
            self._geo_cog(f"wc/{it['id']}.tif", classes, 1 / 12000, "uint8", 0)
            it["assets"] = {"map": {**it["assets"]["map"], "href": self.href(f"wc/{it['id']}.tif")}}
            it["links"] = []
            self.items.append(it)

    def build(self) -> "World":
        self.add_sentinel2()
        self.add_sentinel1()
        self.add_dem()
        self.add_worldcover()
        return self

    # -- the same items as a static catalog (for --backend local parity) --------------------------------------
    def write_static_catalog(self, root: Path) -> Path:
        root = Path(root)
        by_coll: dict[str, list[dict]] = {}
        for it in self.items:
            by_coll.setdefault(it["collection"], []).append(it)
        links = []
        for coll, items in sorted(by_coll.items()):
            cdir = root / coll
            cdir.mkdir(parents=True, exist_ok=True)
            ilinks = []
            for it in items:
                doc = {**it, "links": [], "stac_version": it.get("stac_version", "1.0.0")}
                (cdir / f"{it['id']}.json").write_text(json.dumps(doc))
                ilinks.append({"rel": "item", "href": f"./{it['id']}.json"})
            from servers.pgstac import collection_doc

            (cdir / "collection.json").write_text(json.dumps({**collection_doc(coll), "links": ilinks}))
            links.append({"rel": "child", "href": f"./{coll}/collection.json"})
        (root / "catalog.json").write_text(json.dumps({"type": "Catalog", "id": "world", "stac_version": "1.0.0",
                                                       "description": "test world", "links": links}))
        return root / "catalog.json"


def tile_ids_drawing(year: int, level: str | None, n: int, seed: int = 0, prefix: str = "t") -> list[str]:
    """``n`` tile ids whose seeded Sentinel-2 draw is ``year`` (and ``level`` when given)."""
    from pipelines.recipes.base import tile_rng

    out, i = [], 0
    while len(out) < n:
        tid = f"{prefix}{i:04d}"
        rng = tile_rng(seed, tid, "sentinel2")
        y = int(rng.integers(2017, 2021))
        lv = "l2a" if rng.random() < 0.5 else "l1c"
        if y == year and (level is None or lv == level):
            out.append(tid)
        i += 1
    return out


def write_locations(path: Path, tiles: list[tuple[str, float, float]]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"tile_id": [t for t, _, _ in tiles], "lon": [x for _, x, _ in tiles],
                             "lat": [y for _, _, y in tiles], "biome": np.full(len(tiles), 1, "int16"),
                             "eco_region": np.full(len(tiles), 27, "int16"),
                             "utm_epsg": np.full(len(tiles), EPSG, "int32")}), path)
    return path


# -- Earth Search ------------------------------------------------------------------------------------------------
ES_BANDS = ("coastal", "blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir", "nir08", "nir09", "swir16",
            "swir22")   # Earth Search's asset keys of S2_BANDS, in that order
ORIGIN = (499980.0, 9200020.0)   # 35MNM's pixel grid


def cloud_probability(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """CLD_20m of the Earth Search world: 0, 20 or 40 % in 200 m stripes (a third of it a valid 0 %)."""
    return (((xs // 200 + ys // 200) % 3) * 20).astype(np.uint8)


def earth_search_c1_item() -> dict:
    """The recorded Collection 1 item (Earth Search v1 search, ../shared/fixtures/stac/pystac-client_cassettes)."""
    import yaml

    doc = yaml.safe_load((FIX / "pystac-client_cassettes" / "test_cli" /
                          "TestCLISearch.test_filter[inprocess].yaml").read_text())
    for it in doc["interactions"]:
        for f in json.loads(it["response"]["body"]["string"]).get("features", []):
            if f["collection"] == "sentinel-2-c1-l2a":
                return f
    raise LookupError("no sentinel-2-c1-l2a item in the cassette")


class EarthSearchWorld(World):
    """Earth Search's Sentinel-2 over 35MNM: the recorded Collection 1 item, moved, as a 2020 scene of Collection 1,
    a 2018 scene of ``sentinel-2-pre-c1-l2a`` (the gap Collection 1 lacks; same data and metadata rules), and the
    pre-Collection 1 copy of the 2020 scene (its DN 7 higher, so a test sees which copy was read). All carry the
    +1000 offset their raster:bands declare; the cloud probability is 0 on a third of the area. DEM as in World."""

    def scene(self, collection: str, item_id: str, when: str, baseline: str, extra_dn: int = 0) -> dict:
        it = copy.deepcopy(earth_search_c1_item())
        twin = json.loads((FIX / "odc-stac" / "site2-2020_jun_jul-35MNM.geojson").read_text())["features"][0]
        it.update(id=item_id, collection=collection, geometry=twin["geometry"], bbox=twin["bbox"], links=[])
        it["properties"].update({"datetime": when, "eo:cloud_cover": 1.5, "proj:epsg": EPSG, "grid:code": "MGRS-35MNM",
                                 "mgrs:utm_zone": 35, "mgrs:latitude_band": "M", "mgrs:grid_square": "NM",
                                 "s2:processing_baseline": baseline})
        keep = {*ES_BANDS, "scl", "cloud"}
        it["assets"] = {k: a for k, a in it["assets"].items() if k in keep}
        for name, a in it["assets"].items():
            transform, w, h = _utm_window(float(a["gsd"]), ORIGIN)
            xs, ys = pixel_centres(transform, w, h)
            if name == "scl":
                data = scl_value(xs, ys)
            elif name == "cloud":
                data = cloud_probability(xs, ys)
            else:
                data = (reflectance(ES_BANDS.index(name), xs, ys).astype(np.int32) + 1000 + extra_dn).astype(np.uint16)
            rel = f"es/{item_id}/{name}.tif"
            _write_cog(self.root / rel, data[None], transform, f"EPSG:{EPSG}", nodata=0)   # as the real COGs: 0
            a.update(href=self.href(rel), **{"proj:shape": [h, w], "proj:transform": list(transform)[:6]})
        return it

    def build(self) -> "EarthSearchWorld":
        self.items += [
            self.scene("sentinel-2-c1-l2a", "S2B_T35MNM_20200715T081000_L2A", "2020-07-15T08:10:00.120000Z", "05.00"),
            self.scene("sentinel-2-pre-c1-l2a", "S2B_35MNM_20200715_0_L2A", "2020-07-15T08:10:00.870000Z", "02.12",
                       extra_dn=7),
            self.scene("sentinel-2-pre-c1-l2a", "S2A_35MNM_20180720_0_L2A", "2018-07-20T08:10:00.000000Z", "02.08"),
        ]
        self.add_dem()
        return self
