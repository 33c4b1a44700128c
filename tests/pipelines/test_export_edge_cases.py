"""Edge cases of real sources: Sentinel-2 scenes that are no-data over the tile, rasters placed only by GCPs,
catalogs that cannot be reached (nothing may be written before that is known)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import rasterio
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from shapely import box
from shapely.geometry import mapping

from pipelines.faults import Attempts, NoCoverage, NotOrthorectified
from pipelines.grid import TileGrid
from pipelines.items import Item
from pipelines.recipes import sentinel2
from servers.http_range import RangeServer
from stac_factory import EPSG, LAT, LON, CatalogBuilder, context, utc, utm_raster


def s2_assets(level: str, value: int):
    """Every asset of the product (as the synthetic backend lays them out), all bands ``value``."""
    from pipelines.backends.synthetic import S2_ASSETS, S2_RES

    out = {}
    for key, names in S2_ASSETS[level].items():
        data, tr = utm_raster(lambda x, y: np.full_like(x, value), res=S2_RES[key], half_m=1080.0, bands=len(names))
        out[key] = (data.astype("uint16"), tr, EPSG, None, names)
    return out


def s2_catalog(root, with_valid: bool):
    """Per year and level a scene that passes every filter but is all 0 (= no data) over the tile, and
    (``with_valid``) one with data."""
    cb = CatalogBuilder(root)
    need = TileGrid.centred(LON, LAT, EPSG, 32).polygon_lonlat(400)
    for year in (2017, 2018, 2019, 2020):
        for level in ("l1c", "l2a"):
            p = {"proj:epsg": EPSG, "eo:cloud_cover": 1.0}
            cb.add(f"sentinel-2-{level}", f"{level}_{year}_a_edge", utc(year, 5, 1), need, p, s2_assets(level, 0))
            if with_valid:
                cb.add(f"sentinel-2-{level}", f"{level}_{year}_b_full", utc(year, 6, 1), need, p, s2_assets(level, 1200))
    return cb.backend()


def test_an_empty_scene_falls_through_to_the_next_survivor_and_resume_finds_it(tmp_path):
    backend = s2_catalog(tmp_path, with_valid=True)
    first_was_empty = 0
    for i in range(40):
        ctx = context(backend, tile_id=f"t{i}")
        first, _ = sentinel2.choose_scene(ctx)
        first_was_empty += first.id.endswith("edge")
        result = sentinel2.run(ctx)
        chosen = result.source_ids[0]
        assert chosen.endswith("full") and (result.arrays["sentinel2"][1] == 1200).all()
        again = context(backend, tile_id=f"t{i}")   # --resume: the same scene, from the ledger, no pixels read
        item, _ = sentinel2.locate(again, chosen=chosen)
        assert item.id == chosen and again.grid == ctx.grid
    assert first_was_empty > 5   # the seeded first pick often is the empty one


def test_only_empty_scenes_is_no_s2(tmp_path):
    backend = s2_catalog(tmp_path, with_valid=False)
    with pytest.raises(NoCoverage, match="no-data over the tile"):
        sentinel2.run(context(backend, tile_id="t0"))


def gcp_only_tiff(path):
    data, tr = utm_raster(lambda x, y: np.full_like(x, 7), half_m=600.0)
    h, w = data.shape[1:]
    gcps = [GroundControlPoint(row, col, *(tr * (col, row))) for row, col in ((0, 0), (0, w), (h, 0), (h, w))]
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=1, dtype="uint16",
                       gcps=gcps, crs=CRS.from_epsg(EPSG)) as dst:   # GCPs only: no geotransform
        dst.gcps = (gcps, CRS.from_epsg(EPSG))
        dst.write(data)


@pytest.mark.parametrize("remote", [False, True])
def test_gcp_only_raster_is_a_permanent_precise_failure_never_retried(tmp_path, remote):
    from pipelines.backends.local import LocalBackend

    path = tmp_path / "s1_grd.tif"
    gcp_only_tiff(path)
    with rasterio.open(path) as src:
        assert src.gcps[0] and src.transform.is_identity
    backend = LocalBackend([], timeout_s=5)
    grid = TileGrid.centred(LON, LAT, EPSG, 16)
    with RangeServer(tmp_path) as server:
        href = f"{server.url}/s1_grd.tif" if remote else str(path)
        item = Item.from_dict({"type": "Feature", "id": "grd", "collection": "sentinel-1-grd", "geometry": mapping(box(LON - 0.01, LAT - 0.01, LON + 0.01, LAT + 0.01)),
                               "properties": {"datetime": "2019-01-01T00:00:00Z"},
                               "assets": {"vv": {"href": href, "eo:bands": [{"name": "vv"}]}}})
        tries = Attempts()
        with pytest.raises(NotOrthorectified, match="georeferenced by GCPs only, not orthorectified"):
            backend.read(item, ["vv"], grid, "bilinear", attempts=tries)
        assert tries.tries == 1 and NotOrthorectified.error_class == "gcps_only"


def cli(*args):
    return subprocess.run([sys.executable, "-m", "mmearth_data.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


@pytest.mark.e2e
@pytest.mark.slow
def test_unreachable_catalog_writes_nothing_and_the_corrected_command_is_accepted(tmp_path):
    from stac_factory import write_locations_parquet

    loc = write_locations_parquet(tmp_path / "loc.parquet", 2)
    out = tmp_path / "export"
    bad = cli("export", loc, "--backend", "local", "--catalog", "http://127.0.0.1:9/catalog.json", "--out", out,
              "--attempts", "1")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "--catalog" in bad.stderr
    assert not out.exists()
    (tmp_path / "notstac.json").write_text('{"hello": 1}')
    wrong = cli("export", loc, "--backend", "local", "--catalog", tmp_path / "notstac.json", "--out", out)
    assert wrong.returncode == 2 and "not a STAC" in wrong.stderr and not out.exists()
    build_out = tmp_path / "build"
    bad_build = cli("build", "--size", "5", "--backend", "local", "--catalog", "http://127.0.0.1:9/", "--out",
                    build_out)
    assert bad_build.returncode == 2 and not build_out.exists()
    good = cli("export", loc, "--backend", "synthetic", "--out", out, "--workers", "1")
    assert good.returncode == 0, good.stderr[-2000:]
