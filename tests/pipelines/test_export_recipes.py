"""Each recipe rule against a small real catalog of COGs (LocalBackend reading it with rasterio)."""
from __future__ import annotations

import collections
import math

import numpy as np
import pytest
from shapely import box

from pipelines.faults import NoCoverage
from pipelines.grid import TileGrid, transformer
from pipelines.recipes import era5, landcover, sentinel1, sentinel2, terrain
from stac_factory import EPSG, LAT, LON, CatalogBuilder, context, geo_raster, utc, utm_raster


def s2_assets(level: str, value: int = 1000):
    data, tr = utm_raster(lambda x, y: np.full_like(x, value), half_m=1000.0, bands=4)
    names = ["B02", "B03", "B04", "B08"]
    return {"r10m": (data.astype("uint16"), tr, EPSG, None, names)}


def tile_polygon(buffer_m: float, tile_px: int = 32):
    return TileGrid.centred(LON, LAT, EPSG, tile_px).polygon_lonlat(buffer_m)


# -- Sentinel-2 ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def s2_catalog(tmp_path_factory):
    """Per year: a clear scene that contains tile+200 m, a cloudy one, and a clear one containing only tile+100 m."""
    cb = CatalogBuilder(tmp_path_factory.mktemp("s2"))
    good = tile_polygon(400)
    tight = tile_polygon(100)
    for year in (2017, 2018, 2019, 2020):
        for level in ("l1c", "l2a"):
            coll = f"sentinel-2-{level}"
            p = {"proj:epsg": EPSG}
            cb.add(coll, f"{level}_{year}_good", utc(year, 6, 1), good, {**p, "eo:cloud_cover": 3.0}, s2_assets(level))
            cb.add(coll, f"{level}_{year}_good2", utc(year, 7, 1), good, {**p, "eo:cloud_cover": 9.99}, s2_assets(level))
            cb.add(coll, f"{level}_{year}_cloudy", utc(year, 6, 5), good, {**p, "eo:cloud_cover": 10.0}, s2_assets(level))
            cb.add(coll, f"{level}_{year}_tight", utc(year, 6, 9), tight, {**p, "eo:cloud_cover": 1.0}, s2_assets(level))
    # an L2A scene dated 2018-12-15 belongs to the 2019 window, not 2018's (which ends on Nov 30)
    cb.add("sentinel-2-l2a", "l2a_2018_dec", utc(2018, 12, 15), good, {"proj:epsg": EPSG, "eo:cloud_cover": 1.0},
           s2_assets("l2a"))
    return cb.backend()


def test_s2_choice_respects_cloud_and_containment_and_is_seeded(s2_catalog):
    picks = collections.Counter()
    years = collections.Counter()
    for i in range(300):
        item, level = sentinel2.choose_scene(context(s2_catalog, tile_id=f"tile{i}"))
        again, level2 = sentinel2.choose_scene(context(s2_catalog, tile_id=f"tile{i}"))
        assert (item.id, level) == (again.id, level2)            # seeded per tile
        assert not item.id.endswith(("cloudy", "tight"))        # < 10 % cloud, footprint contains tile + 200 m
        assert item.id.startswith(level)
        picks[item.id.rsplit("_", 1)[1]] += 1
        years[item.datetime.year] += 1
        if item.id == "l2a_2018_dec":
            assert sentinel2.YEAR_WINDOWS[2019][0] <= item.datetime.date()
    assert 0.35 < picks["good"] / (picks["good"] + picks["good2"] + picks["dec"]) < 0.65   # uniform among survivors
    assert set(years) >= {2017, 2018, 2019, 2020}
    other_seed = [sentinel2.choose_scene(context(s2_catalog, tile_id=f"tile{i}", seed=1))[0].id for i in range(50)]
    same_seed = [sentinel2.choose_scene(context(s2_catalog, tile_id=f"tile{i}"))[0].id for i in range(50)]
    assert other_seed != same_seed


def test_s2_falls_back_to_the_other_level_and_reports_no_scene(tmp_path):
    cb = CatalogBuilder(tmp_path / "only_l1c")
    for year in (2017, 2018, 2019, 2020):
        cb.add("sentinel-2-l1c", f"l1c_{year}", utc(year, 5, 1), tile_polygon(300), {"proj:epsg": EPSG, "eo:cloud_cover": 2},
               s2_assets("l1c"))
    only_l1c = cb.backend()
    levels = {sentinel2.choose_scene(context(only_l1c, tile_id=f"t{i}"))[1] for i in range(40)}
    assert levels == {"l1c"}
    empty = CatalogBuilder(tmp_path / "cloudy")
    empty.add("sentinel-2-l1c", "cloudy", utc(2019, 5, 1), tile_polygon(300), {"proj:epsg": EPSG, "eo:cloud_cover": 50},
              s2_assets("l1c"))
    with pytest.raises(NoCoverage, match="cloud cover < 10%"):
        sentinel2.choose_scene(context(empty.backend(), tile_id="x"))


def test_s2_grid_snaps_to_the_scene_pixel_grid(s2_catalog):
    ctx = context(s2_catalog, tile_id="snap")
    item, _ = sentinel2.locate(ctx)
    tr = item.assets["r10m"]["proj:transform"]
    assert ctx.grid.epsg == EPSG and ctx.grid.width == 32
    assert (ctx.grid.x0 - tr[2]) % 10 == pytest.approx(0) and (ctx.grid.y0 - tr[5]) % 10 == pytest.approx(0)
    cx, cy = transformer(4326, EPSG).transform(LON, LAT)
    left, bottom, right, top = ctx.grid.bounds
    assert abs((left + right) / 2 - cx) <= 5 and abs((top + bottom) / 2 - cy) <= 5


# -- Sentinel-1 ------------------------------------------------------------------------------------------------
def test_s1_nearest_in_time_per_orbit_and_missing_polarisations_are_nodata(tmp_path):
    cb = CatalogBuilder(tmp_path)
    when = utc(2019, 6, 15, 10)

    def s1(value, pols):
        data, tr = geo_raster(lambda x, y: np.full_like(x, value), 0.0003)
        return {"data": (np.concatenate([data] * len(pols)), tr, 4326, float("nan"), [p.lower() for p in pols])}

    base = {"sar:instrument_mode": "IW", "proj:epsg": 4326}
    cb.add("sentinel-1-grd", "asc_far", utc(2019, 6, 5), None, {**base, "sat:orbit_state": "ascending", "sar:polarizations": ["VV", "VH"]}, s1(-1, ["VV", "VH"]))
    cb.add("sentinel-1-grd", "asc_near", utc(2019, 6, 18), None, {**base, "sat:orbit_state": "ascending", "sar:polarizations": ["VV", "VH"]}, s1(-2, ["VV", "VH"]))
    cb.add("sentinel-1-grd", "desc_near", utc(2019, 6, 14), None, {**base, "sat:orbit_state": "descending", "sar:polarizations": ["VV"]}, s1(-3, ["VV"]))
    cb.add("sentinel-1-grd", "desc_far", utc(2019, 7, 20), None, {**base, "sat:orbit_state": "descending", "sar:polarizations": ["VV", "VH"]}, s1(-4, ["VV", "VH"]))
    cb.add("sentinel-1-grd", "desc_ew", utc(2019, 6, 15), None, {**base, "sar:instrument_mode": "EW", "sat:orbit_state": "descending", "sar:polarizations": ["HH"]}, s1(-5, ["HH"]))
    res = sentinel1.run(context(cb.backend(), s2_date=when))
    assert res.source_ids == ["asc_near", "desc_near"]
    s1 = res.arrays["sentinel1"]
    assert s1.dtype == np.float32 and s1.shape == (8, 32, 32)
    assert np.all(s1[0] == -2) and np.all(s1[1] == -2)            # asc VV, VH
    assert np.all(np.isneginf(s1[2:4]))                            # asc HH, HV absent
    assert np.all(s1[4] == -3) and np.all(np.isneginf(s1[5:8]))    # desc: VV only
    assert res.bands == {"sentinel1_asc": ["VV", "VH"], "sentinel1_desc": ["VV"]}


def test_s1_windowed_search_finds_the_same_acquisition_as_the_whole_range(tmp_path):
    """Growing search ranges around the S2 date (aligned blocks of 32 and 256 days, then 2017-2020) give the
    nearest of the whole range, including when it is far away, at a boundary, or when a range's best lies outside
    its margin."""
    import datetime as dt

    cb = CatalogBuilder(tmp_path)
    rng = np.random.default_rng(3)
    base = {"sar:instrument_mode": "IW", "proj:epsg": 4326, "sat:orbit_state": "ascending", "sar:polarizations": ["VV"]}
    days = sorted(set(rng.integers(0, 4 * 365, 25).tolist()) | {0, 200, 201, 1460})
    for d in days:
        start = utc(2017, 1, 1) + dt.timedelta(days=int(d))
        # some acquisitions span 10 days: their start may lie outside a window their end reaches into
        end = start + dt.timedelta(days=10 if d % 3 == 0 else 0)
        cb.add("sentinel-1-grd", f"s1_{d:04d}", (start, end), None, base, {})
    backend = cb.backend()
    filters = {"sat:orbit_state": ("==", "ascending"), "sar:instrument_mode": ("==", "IW")}
    for k in range(80):
        when = utc(2017, 1, 1) + dt.timedelta(days=float(rng.uniform(0, 4 * 365)))
        ctx = context(backend, s2_date=when)
        whole = sentinel1.nearest(ctx.search("sentinel1", sentinel1.START, sentinel1.END, filters), when)
        assert sentinel1.nearest_acquisition(ctx, filters).id == whole.id, when
    # a range's best lies beyond its margin: a long acquisition reaching into the first range from 100 days
    # before it, and the true nearest one day after the range's end (outside it)
    cb2 = CatalogBuilder(tmp_path / "b")
    when = utc(2019, 6, 1)
    start, end = sentinel1.search_range(when, sentinel1.BLOCKS[0])
    cb2.add("sentinel-1-grd", "long_before", (start - dt.timedelta(days=100), start + dt.timedelta(days=1)), None,
            base, {})
    cb2.add("sentinel-1-grd", "after", end + dt.timedelta(days=1), None, base, {})
    ctx = context(cb2.backend(), s2_date=when)
    assert sentinel1.nearest_acquisition(ctx, filters).id == "after"


# -- elevation and slope ---------------------------------------------------------------------------------------
def test_slope_is_computed_at_native_resolution_in_degrees(tmp_path):
    # a plane rising 0.1 m per metre to the east in EPSG:4326 at 1 arc-second: slope atan(0.1) = 5.71 degrees
    m_per_deg_lon = 111412.84 * math.cos(math.radians(LAT)) - 93.5 * math.cos(3 * math.radians(LAT))
    data, tr = geo_raster(lambda x, y: 100 + 0.1 * (x - LON) * m_per_deg_lon, 1 / 3600, dtype="float32")
    cb = CatalogBuilder(tmp_path)
    cb.add("aster-gdem", "dem", (utc(2000, 1, 1), utc(2013, 1, 1)), None, {"proj:epsg": 4326},
           {"elevation": (data, tr, 4326, -32768.0, ["elevation"])})
    res = terrain.run(context(cb.backend(), s2_date=utc(2019, 6, 1)))
    elev, slope = res.arrays["aster"]
    assert res.arrays["aster"].dtype == np.int16
    assert np.all(slope == 6)                                       # 5.71 rounded
    assert abs(float(elev[16, 16]) - 100) <= 1                        # the tile centre sits on the plane's origin
    assert elev[16, -1] > elev[16, 0]                                 # rising eastwards across the UTM grid
    native = terrain.slope_degrees(data[0], tr, "EPSG:4326", LAT)
    assert np.allclose(native[2:-2, 2:-2], math.degrees(math.atan(0.1)), atol=0.01)


def test_the_terrain_recipe_leaves_the_warning_filters_alone_and_its_warp_warns_nothing():
    """Importing a recipe changes no process-wide state (a notebook keeps its warning filters), and the in-memory
    warp it runs raises no warning to hide (rasterio >= 1.4 given both transforms), warnings being errors here."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import warnings\n"
            "import numpy as np\n"
            "from affine import Affine\n"
            "from rasterio.errors import NotGeoreferencedWarning\n"
            "from pipelines.grid import TileGrid\n"
            "from pipelines.recipes import terrain\n"
            "assert not [f for f in warnings.filters if f[2] is NotGeoreferencedWarning], 'a filter at import'\n"
            "warnings.simplefilter('error')\n"
            "grid = TileGrid.centred(12.5, 42.0, 32633, 32)\n"
            "data = np.random.default_rng(0).random((2, 20, 20), dtype=np.float32)\n"
            "tr = Affine(1 / 3600, 0, 12.49, 0, -1 / 3600, 42.01)\n"
            "out = terrain.warp_to_grid(data, tr, 'EPSG:4326', grid)\n"
            "print(out.shape)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0 and done.stdout.split() == ["(2,", "32,", "32)"], done.stderr[-2000:]


def test_slope_from_the_real_rome_dem():
    import rasterio

    from conftest import FIXTURES

    with rasterio.open(FIXTURES / "rasters" / "Rome-30m-DEM.tif") as src:
        dem = src.read(1).astype("float32")
        s = terrain.slope_degrees(dem, src.transform, "EPSG:4326", 42.0)
    assert 0 <= np.nanmin(s) and np.nanmax(s) < 60 and 0.5 < np.nanmean(s) < 10


# -- Dynamic World ---------------------------------------------------------------------------------------------
def test_temporal_mode_ignores_nodata_and_breaks_ties_low():
    nan = np.nan
    stack = np.array([[[1, 2, nan, 3]], [[1, 3, nan, 4]], [[2, 3, nan, nan]]], dtype=np.float32)
    assert landcover.temporal_mode(stack, 9).tolist() == [[1, 3, -1, 3]]


def test_dynamic_world_mode_over_the_s2_calendar_year(tmp_path):
    cb = CatalogBuilder(tmp_path)
    for k, (when, label) in enumerate([(utc(2019, 2, 1), 4), (utc(2019, 5, 1), 4), (utc(2019, 9, 1), 1),
                                       (utc(2020, 1, 2), 7), (utc(2020, 2, 2), 7), (utc(2020, 3, 2), 7)]):
        data, tr = utm_raster(lambda x, y: np.full_like(x, label), dtype="uint8")
        cb.add("dynamic-world", f"dw{k}", when, None, {}, {"label": (data, tr, EPSG, 255, ["label"])})
    res = landcover.run_dynamic_world(context(cb.backend(), s2_date=utc(2019, 11, 30)))
    out = res.arrays["dynamic_world"]
    assert out.dtype == np.uint8 and np.all(out == 5)   # label 4 (crops) twice beats 1; stored +1; 2020 excluded
    assert res.source_ids == ["dw0", "dw1", "dw2"]


# -- ERA5 ------------------------------------------------------------------------------------------------------
def test_era5_window_is_exactly_twelve_months():
    months = era5.window_months(2019, 3)
    assert len(months) == 12 and months[0] == (2018, 4) and months[-1] == (2019, 3)
    assert era5.window_months(2017, 12)[0] == (2017, 1)


def test_era5_values_prev_curr_and_yearly_reducers(tmp_path):
    cb = CatalogBuilder(tmp_path)
    for year in (2017, 2018, 2019):
        for month in range(1, 13):
            k = year * 12 + month   # a distinct value per month
            data, tr = geo_raster(lambda x, y: np.full_like(x, 1.0), 1.0, half_deg=3.0)
            bands = np.concatenate([data * k, data * (k - 10), data * (k + 10), data * 0.001 * month])
            start = utc(year, month, 1)
            end = utc(year + month // 12, month % 12 + 1, 1)
            cb.add("era5-land-monthly", f"era5_{year}{month:02d}", (start, end), box(-180, -90, 180, 90), {},
                   {"data": (bands.astype("float32"), tr, 4326, None,
                             ["temperature_2m", "temperature_2m_min", "temperature_2m_max", "total_precipitation_sum"])})
    res = era5.run(context(cb.backend(), s2_date=utc(2019, 3, 10)))
    v = res.arrays["era5"]
    k = lambda y, m: y * 12 + m  # noqa: E731
    window = [k(2018, m) for m in range(4, 13)] + [k(2019, m) for m in (1, 2, 3)]
    assert v.dtype == np.float32 and v.shape == (12,)
    assert v[0] == pytest.approx(k(2019, 2)) and v[4] == pytest.approx(k(2019, 3))
    assert v[8] == pytest.approx(np.mean(window))                    # 12 months, not 13
    assert v[9] == pytest.approx(min(window) - 10) and v[10] == pytest.approx(max(window) + 10)
    assert v[11] == pytest.approx(0.001 * (sum(range(4, 13)) + 1 + 2 + 3))
    assert len(res.source_ids) == 12 and res.bands["era5"][0] == "201902_temperature_2m"
    assert res.info["era5"]["year"][0] == pytest.approx(np.mean(window))
