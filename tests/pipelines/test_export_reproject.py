"""Reprojection onto the tile grid: known patterns in EPSG:4326 and in another UTM zone land where expected."""
from __future__ import annotations

import numpy as np
import pytest

from pipelines.grid import TileGrid, pixel_centres, transformer
from stac_factory import EPSG, LAT, LON, CatalogBuilder, geo_raster, utc, utm_raster

GRID = TileGrid.centred(LON, LAT, EPSG, 64)


def checker_lonlat(lon, lat):
    return 10 * (1 + np.floor(lon / 0.001) % 3) + np.floor(lat / 0.001) % 2


def stripes_utm32(x, y):
    return 1 + (np.floor(x / 100.0) % 5)


def grid_centres(grid: TileGrid, epsg: int):
    xs, ys = pixel_centres(grid.transform, grid.width, grid.height)
    return transformer(grid.epsg, epsg).transform(xs, ys)


def read_one(tmp_path, data, tr, epsg, resampling, nodata=None):
    cb = CatalogBuilder(tmp_path)
    cb.add("pattern", "p", utc(2020, 1, 1), None, {}, {"v": (data, tr, epsg, nodata, ["v"])})
    backend = cb.backend()
    item = backend.search("pattern", GRID.bbox_lonlat(), None, None)[0]
    return backend.read(item, ["v"], GRID, resampling)[0]


def test_categorical_pattern_in_epsg4326_lands_where_expected(tmp_path):
    data, tr = geo_raster(checker_lonlat, 1 / 12000, dtype="uint8")
    out = read_one(tmp_path, data, tr, 4326, "nearest")
    lon, lat = grid_centres(GRID, 4326)
    expected = checker_lonlat(lon, lat)
    assert set(np.unique(out)) <= set(np.unique(data))          # categorical stays categorical
    assert (out == expected).mean() > 0.95                        # mismatches only on cell edges
    shifted = checker_lonlat(lon + 0.0005, lat)                   # half a cell off would not match
    assert (out == shifted).mean() < 0.6


def test_categorical_pattern_in_another_utm_zone(tmp_path):
    data, tr = utm_raster(stripes_utm32, epsg=32632, res=10.0, half_m=1200, dtype="uint8")
    out = read_one(tmp_path, data, tr, 32632, "nearest")
    x32, y32 = grid_centres(GRID, 32632)
    expected = stripes_utm32(x32, y32)
    assert set(np.unique(out)) <= {1, 2, 3, 4, 5}
    assert (out == expected).mean() > 0.9
    # zone 32 is rotated ~4 degrees against zone 33 here: a translation-only placement would be wrong
    xs, ys = pixel_centres(GRID.transform, GRID.width, GRID.height)
    cx, cy = transformer(EPSG, 32632).transform(xs.mean(), ys.mean())
    naive = stripes_utm32(xs - xs.mean() + cx, ys)
    assert (out == naive).mean() < (out == expected).mean() - 0.1


def test_continuous_ramp_is_bilinear_and_in_place(tmp_path):
    ramp = lambda lon, lat: (lon - LON) * 1e5 + (lat - LAT) * 3e4  # noqa: E731
    data, tr = geo_raster(ramp, 1 / 3600, dtype="float32")
    out = read_one(tmp_path, data, tr, 4326, "bilinear")
    lon, lat = grid_centres(GRID, 4326)
    assert np.abs(out - ramp(lon, lat)).max() < 1.0               # values span about +-200 over the tile
    assert np.unique(out).size > 1000                              # interpolated, not blocky


def test_outside_the_source_is_nan(tmp_path):
    data, tr = geo_raster(lambda lon, lat: np.ones_like(lon), 1 / 3600, half_deg=0.0015, dtype="float32")
    out = read_one(tmp_path, data, tr, 4326, "bilinear", nodata=-9999.0)
    assert np.isnan(out).any() and (out[np.isfinite(out)] == 1).all()


def test_tile_grid_geometry():
    g = TileGrid.centred(LON, LAT, EPSG, 128)
    left, bottom, right, top = g.bounds
    assert right - left == 1280 and top - bottom == 1280
    assert g.polygon_lonlat().contains(g.polygon_lonlat(-100)) and g.polygon_lonlat(200).area > g.polygon_lonlat().area
    lon, lat = g.centre_lonlat()
    assert lon == pytest.approx(LON, abs=1e-4) and lat == pytest.approx(LAT, abs=1e-4)
    assert g.coarsen(16).width == 8 and g.coarsen(16).bounds == pytest.approx(g.bounds)
