import json
import subprocess
import sys

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import shapely
from scipy.spatial import cKDTree

from mmearth_data import ecoregion_table
from sampling import (SamplerConfig, initial_quotas, largest_remainder, load_ecoregions, lookup_ecoregion, sample,
                      write_locations)
from sampling.draw import E2, PolygonDraw
from sampling.ecoregions import default_ecoregions_path
from sampling.spacing import ecef

from conftest import FIXTURES


@pytest.fixture(scope="module")
def eco():
    return load_ecoregions()


@pytest.fixture(scope="module")
def small_islands(tmp_path_factory, eco):
    """Three tiny real ecoregions (islands) of one biome plus one large one of another, as a GeoPackage."""
    f = eco.frame
    ids = [67, 37, 60, 842]  # Amsterdam-St Paul, Ascension, St Helena, South Sahara desert
    sub = f[f.eco_id.isin(ids)][["eco_id", "biome_num", "geometry"]].rename(
        columns={"eco_id": "ECO_ID", "biome_num": "BIOME_NUM"})
    path = tmp_path_factory.mktemp("eco") / "islands.gpkg"
    sub.to_file(path)
    return path


def test_largest_remainder_is_exact():
    rng = np.random.default_rng(0)
    for total in (1, 13, 1000, 1_500_000):
        w = rng.random(846)
        q = largest_remainder(total, w)
        assert q.sum() == total and (q >= 0).all()
        assert np.abs(q - total * w / w.sum()).max() < 1
    assert largest_remainder(5, np.ones(3)).tolist() == [2, 2, 1]


@pytest.mark.parametrize("mode", ["area", "ecoregion-in-biome", "ecoregion"])
def test_initial_quotas_follow_the_mode(eco, mode):
    f = eco.frame
    areas = f.to_crs(6933).area.to_numpy()
    q = initial_quotas(100_000, mode, f.biome.to_numpy(), areas)
    assert q.sum() == 100_000
    per_biome = pd.Series(q).groupby(f.biome.to_numpy()).sum()
    if mode == "ecoregion":
        assert q.max() - q.min() <= 1
    else:
        assert per_biome.max() - per_biome.min() <= 1
    if mode == "ecoregion-in-biome":
        assert pd.Series(q).groupby(f.biome.to_numpy()).agg(lambda s: s.max() - s.min()).max() <= 1


def test_sample_meets_exact_quotas_without_overlaps(eco):
    r = sample(eco, SamplerConfig(size=20_000, seed=3))
    assert len(r.tiles) == 20_000 and r.achieved.sum() == 20_000
    assert (r.achieved == r.final_quota).all() and r.final_quota.sum() == 20_000
    assert_no_overlap(r.tiles, 1280.0)
    # every point lies in the polygon of the ecoregion it was drawn for
    geoms = eco.frame.geometry.to_numpy()[r.eco_index]
    assert shapely.intersects_xy(geoms, r.tiles.lon, r.tiles.lat).all()


def assert_no_overlap(tiles, size):
    """Independent check: per UTM zone a Chebyshev-distance tree; across zones, nothing within a diagonal."""
    for code in np.unique(tiles.epsg):
        idx = np.flatnonzero(tiles.epsg == code)
        xy = np.column_stack([tiles.x[idx], tiles.y[idx]])
        pairs = cKDTree(xy).query_pairs(size * (1 - 1e-9), p=np.inf)
        assert not pairs, f"{len(pairs)} overlapping tiles in EPSG:{code}"
    pairs = cKDTree(ecef(tiles.lon, tiles.lat)).query_pairs(size * np.sqrt(2), output_type="ndarray")
    cross = pairs[tiles.epsg[pairs[:, 0]] != tiles.epsg[pairs[:, 1]]]
    assert len(cross) == 0
    ids = set(zip(tiles.lon.tolist(), tiles.lat.tolist()))
    assert len(ids) == len(tiles), "a location repeats"


def test_saturation_moves_shortfall_and_terminates(small_islands):
    eco = load_ecoregions(small_islands)
    r = sample(eco, SamplerConfig(size=4_000, mode="ecoregion", seed=1))
    f = eco.frame
    islands = f.biome_num.to_numpy() != 13
    assert r.saturated[islands].all() and not r.saturated[~islands].any()
    assert r.achieved.sum() == 4_000  # the desert absorbs what the islands cannot hold
    assert r.achieved[~islands].sum() > 1000
    assert r.moves and any(m["scope"] == "across-biomes" and m["moved"] > 0 for m in r.moves)
    assert_no_overlap(r.tiles, 1280.0)
    tile_km2 = 1.28 ** 2
    cover = r.achieved[islands] * tile_km2 / r.areas_km2[islands]
    assert (cover <= np.maximum(0.3, tile_km2 / r.areas_km2[islands]) + 1e-9).all()
    none = sample(eco, SamplerConfig(size=4_000, mode="ecoregion", seed=1, spill="none"))
    assert none.achieved.sum() < 4_000 and none.achieved[~islands].sum() == 1_000


def test_deterministic_for_any_number_of_threads(eco, tmp_path):
    a = sample(eco, SamplerConfig(size=5_000, seed=7, threads=1))
    b = sample(eco, SamplerConfig(size=5_000, seed=7, threads=2))
    write_locations(a, tmp_path / "a.parquet")
    write_locations(b, tmp_path / "b.parquet")
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    c = sample(eco, SamplerConfig(size=5_000, seed=8))
    assert not np.array_equal(a.tiles.lon, c.tiles.lon)


def authalic_q(lat_deg):
    e = np.sqrt(E2)
    s = np.sin(np.radians(lat_deg))
    return (1 - E2) * (s / (1 - E2 * s * s) - np.log((1 - e * s) / (1 + e * s)) / (2 * e))


def test_points_are_uniform_on_the_surface_not_in_degrees():
    box = shapely.box(-20, 0, 20, 80)
    lon, lat = PolygonDraw(box).draw(np.random.default_rng(0), 40_000)
    edges = np.arange(0, 81, 10)
    observed = np.histogram(lat, edges)[0]
    share = np.diff(authalic_q(edges)) / (authalic_q(80) - authalic_q(0))  # exact area share on WGS84
    expected = share * len(lat)
    chi2 = ((observed - expected) ** 2 / expected).sum()
    assert chi2 < 24.3, chi2  # 7 degrees of freedom, p = 0.001
    uniform_degrees = np.full(8, len(lat) / 8)  # what lon/lat-uniform sampling would give
    assert ((uniform_degrees - expected) ** 2 / expected).sum() > 1000
    assert (lon >= -20).all() and (lon <= 20).all()


def test_representative_points_round_trip(eco):
    pts = pd.read_csv(FIXTURES / "ecoregions" / "resolve_ecoregions2017_representative_points.csv")
    pts = pts[pts.ECO_ID != 0]  # Rock and Ice is not an MMEarth class
    got = lookup_ecoregion(eco, pts.lon, pts.lat)
    assert (got == pts.ECO_ID.to_numpy()).all()
    table = {e["eco_id"]: e for e in ecoregion_table()}
    assert all(table[i]["biome_num"] == b for i, b in zip(got, pts.BIOME_NUM))
    assert lookup_ecoregion(eco, [4.8], [53.1])[0] == 0  # Texel: in no simplified polygon


def test_geoparquet_output_and_metadata(eco, tmp_path):
    r = sample(eco, SamplerConfig(size=2_000, seed=0))
    out = write_locations(r, tmp_path / "loc.parquet")
    g = gpd.read_parquet(out)
    assert g.crs.to_epsg() == 4326 and len(g) == 2_000
    assert list(g.columns) == ["tile_id", "lon", "lat", "biome", "biome_num", "eco_region", "eco_id", "utm_epsg",
                               "geometry"]
    assert g.tile_id.is_unique and np.allclose(g.geometry.x, g.lon) and np.allclose(g.geometry.y, g.lat)
    zone = (np.floor((g.lon + 180) / 6).astype(int) % 60) + 1
    assert (g.utm_epsg == np.where(g.lat >= 0, 32600, 32700) + zone).all()
    table = {e["eco_id"]: e for e in ecoregion_table()}
    assert all(table[i]["index"] == e and table[i]["biome_index"] == b
               for i, e, b in zip(g.eco_id, g.eco_region, g.biome))
    meta = json.loads(pq.read_schema(out).metadata[b"mmearth_sampler"])
    assert meta["settings"]["seed"] == 0 and meta["settings"]["mode"] == "area"
    assert meta["ecoregions"]["sha256"] == eco.sha256 and len(eco.sha256) == 64


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "mmearth_data.cli", *map(str, args)], capture_output=True, text=True)


def test_cli_sample_writes_file_and_report(tmp_path):
    out = tmp_path / "loc.parquet"
    res = run_cli("sample", "--size", "1k", "--oversample", "1.25", "--seed", "2", "--out", out)
    assert res.returncode == 0, res.stderr
    assert len(gpd.read_parquet(out)) == 1250
    rep = json.loads((tmp_path / "loc.parquet.report.json").read_text())
    assert rep["requested"] == 1250 and len(rep["biomes"]) == 14 and len(rep["ecoregions"]) == 846
    assert "Mangroves" in res.stdout


@pytest.fixture
def bad_inputs(tmp_path, eco):
    f = eco.frame.iloc[:3]
    no_cols = tmp_path / "nocols.gpkg"
    f[["geometry"]].assign(NAME="x").to_file(no_cols)
    cols = {"ECO_ID": f.eco_id.to_numpy(), "BIOME_NUM": f.biome_num.to_numpy()}
    no_crs = tmp_path / "nocrs.parquet"
    gpd.GeoDataFrame(cols, geometry=list(f.geometry)).to_parquet(no_crs)
    local = tmp_path / "local.gpkg"
    gpd.GeoDataFrame(cols, geometry=list(f.geometry), crs='LOCAL_CS["arbitrary",UNIT["metre",1]]').to_file(local)
    text = tmp_path / "eco.txt"
    text.write_text("x")
    return {"nocols": no_cols, "nocrs": no_crs, "local": local, "text": text}


@pytest.mark.parametrize("args,match", [
    (["--size", "0"], "--size '0': must be at least 1"),
    (["--size", "-5"], "--size '-5'"),
    (["--size", "10", "--mode", "biome"], "'biome' is not one of"),
    (["--size", "10", "--ecoregions", "{tmp}/missing.shp"], "missing.shp: no such file"),
    (["--size", "10", "--ecoregions", "{nocols}"], "missing column(s) ['ECO_ID', 'BIOME_NUM']"),
    (["--size", "10", "--ecoregions", "{nocrs}"], "has no CRS"),
    (["--size", "10", "--ecoregions", "{local}"], "cannot be transformed to EPSG:4326"),
    (["--size", "10", "--ecoregions", "{text}"], "unsupported format '.txt'"),
    (["--size", "10", "--max-coverage", "0.7"], "--max-coverage 0.7"),
])
def test_cli_errors_are_one_line(tmp_path, bad_inputs, args, match):
    args = [a.format(tmp=tmp_path, **bad_inputs) for a in args]
    res = run_cli("sample", "--out", tmp_path / "o.parquet", *args)
    assert res.returncode == 2
    assert match in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "o.parquet").exists()


def test_non_geographic_input_is_transformed(tmp_path, eco):
    path = tmp_path / "mercator.gpkg"
    f = eco.frame[eco.frame.eco_id.isin([842, 27])]
    gpd.GeoDataFrame({"ECO_ID": f.eco_id, "BIOME_NUM": f.biome_num}, geometry=f.geometry.values, crs=4326) \
        .to_crs(3857).to_file(path)
    loaded = load_ecoregions(path)
    assert loaded.frame.crs.to_epsg() == 4326 and sorted(loaded.frame.eco_id) == [27, 842]


def test_bundled_default_is_in_the_catalog():
    assert default_ecoregions_path().is_file()
    assert len(load_ecoregions().frame) == 846


def test_plot_locations(tmp_path, eco):
    out = tmp_path / "loc.parquet"
    write_locations(sample(eco, SamplerConfig(size=500)), out)
    res = run_cli("plot", "locations", out, "-o", tmp_path / "map.png")
    assert res.returncode == 0, res.stderr
    png = (tmp_path / "map.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000
    bad = tmp_path / "bad.parquet"
    pq.write_table(pq.read_table(out).drop(["biome"]), bad)
    res = run_cli("plot", "locations", bad, "-o", tmp_path / "m2.png")
    assert res.returncode == 2 and "missing column(s) ['biome']" in res.stderr


def test_near_neighbour_query_finds_every_pair_even_in_dense_clusters():
    from sampling.spacing import _near, make_tree

    rng = np.random.default_rng(4)
    pts = rng.normal(0, 800, (3000, 3)) + np.array([6.371e6, 0, 0])  # far more than 8 neighbours each
    tree = make_tree(pts)
    q = pts[:200] + rng.normal(0, 50, (200, 3))
    ii, jj = _near(tree, q, 1810.0)
    got = set(zip(ii.tolist(), jj.tolist()))
    want = {(i, j) for i, js in enumerate(tree.query_ball_point(q, 1810.0)) for j in js}
    assert got == want and len(want) > 200 * 8


@pytest.mark.parametrize("lon,lat", [((5.995, 6.005), (45.0, 45.0)),      # across a zone meridian
                                     ((20.0, 20.0), (-0.004, 0.004)),     # across the equator (N/S zones)
                                     ((179.995, -179.995), (10.0, 10.0))])  # across the antimeridian
def test_tiles_in_different_zones_close_together_conflict(lon, lat):
    from sampling.spacing import Occupancy, Tiles, internal_pairs

    t = Tiles(np.array(lon), np.array(lat))
    assert t.epsg[0] != t.epsg[1]
    assert internal_pairs(t, 1280.0).tolist() == [[0, 1]]
    occ = Occupancy(1280.0)
    occ.add(Tiles(np.array(lon[:1]), np.array(lat[:1])))
    assert occ.blocked(Tiles(np.array(lon[1:]), np.array(lat[1:]))).tolist() == [True]
    far = Tiles(np.array(lon), np.array([lat[0], lat[1] + 0.05]))  # about 5.5 km apart
    assert internal_pairs(far, 1280.0).tolist() == []
