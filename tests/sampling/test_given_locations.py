"""build/export --locations: given places with their ids, dates and labels (coasts, islands, the sea), bad rows,
overlaps, tile sizes, and a full build on the synthetic backend."""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from mmearth_data import MMEarthDataset, MMEarthError, validate
from mmearth_data.catalog import ecoregion_table
from pipelines.recipes import sentinel2
from pipelines.recipes.base import S2Rule
from sampling import load_ecoregions
from sampling.given import GivenOptions, read_given

from cli_runner import run_cli
from conftest import FIXTURES
from stac_factory import EPSG, CatalogBuilder, context, utc
from test_export_recipes import s2_assets, tile_polygon

ECO = {e["eco_id"]: e for e in ecoregion_table()}
# ../shared/fixtures/SOURCES.md §1 check values, plus coastal points of Sao Tome outside the simplified polygon
PLACES = [("sahara", -11.4247, 24.8013, 842), ("sao-tome", 6.6, 0.25, 27), ("ghats", 76.9, 10.2, 271),
          ("rome", 12.5, 42.0, 795), ("sao-tome-north-coast", 6.52, 0.42, 27), ("sao-tome-west-coast", 6.465, 0.2, 27)]


@pytest.fixture(scope="module")
def eco():
    return load_ecoregions(None)


def write_csv(path: Path, rows: list[dict]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_real_places_get_their_labels_with_a_coastal_fallback(eco, tmp_path):
    csv = write_csv(tmp_path / "places.csv", [{"tile_id": f"  {t} ", "lon": x, "lat": y} for t, x, y, _ in PLACES])
    given = read_given(csv, eco)
    t = given.table.to_pandas()
    assert t.tile_id.tolist() == [p[0] for p in PLACES]   # stripped, in the given order
    for (_, _, _, eco_id), (_, row) in zip(PLACES, t.iterrows()):
        assert row.eco_id == eco_id
        assert row.eco_region == ECO[eco_id]["index"] and row.biome == ECO[eco_id]["biome_index"]
    assert t.biome.tolist()[:4] == [3, 1, 1, 2]   # desert, moist broadleaf x2, Mediterranean (MMEarth indices)
    inside, coast = t.label_km[:4], t.label_km[4:]
    assert inside.isna().all() and (coast > 0).all() and (coast < 10).all()
    assert sum("nearest" in n for n in given.notes) == 2 and all(not r for r in t.unlabelled)


def test_a_point_in_the_sea_is_refused_unless_allowed(eco, tmp_path):
    csv = write_csv(tmp_path / "sea.csv", [{"lon": 6.6, "lat": 0.25}, {"lon": 0.0, "lat": 0.0},
                                           {"lon": -163.5, "lat": -89.5}])   # Gulf of Guinea; Rock and Ice
    with pytest.raises(MMEarthError) as e:
        read_given(csv, eco)
    lines = str(e.value).splitlines()
    assert len(lines) == 2 and "row 2" in lines[0] and "row 3" in lines[1]
    assert all("no ecoregion within 10 km" in line and "--allow-unlabelled" in line for line in lines)
    kept = read_given(csv, eco, GivenOptions(allow_unlabelled=True)).table.to_pandas()
    assert kept.unlabelled.tolist() == [False, True, True] and kept.biome.tolist()[1:] == [-1, -1]
    # Texel is 16.5 km from the simplified polygons: refused at 10 km, labelled at 20 km
    texel = write_csv(tmp_path / "texel.csv", [{"lon": 4.8, "lat": 53.1}])
    with pytest.raises(MMEarthError, match="row 1"):
        read_given(texel, eco)
    assert 16 < read_given(texel, eco, GivenOptions(label_max_km=20)).table.column("label_km")[0].as_py() < 17


def test_three_kinds_of_bad_rows_give_three_lines_and_write_nothing(tmp_path):
    csv = write_csv(tmp_path / "bad.csv", [
        {"tile_id": "a", "lon": "12.5", "lat": "42.0", "date": "2019-06-01"},
        {"tile_id": "b", "lon": "twelve", "lat": "42.0", "date": "2019-06-01"},   # unparseable coordinates
        {"tile_id": "c", "lon": "12.5", "lat": "95.0", "date": "2019-06-01"},     # out of range
        {"tile_id": "a", "lon": "12.6", "lat": "42.1", "date": "2019-06-01"},     # duplicate id
        {"tile_id": "e", "lon": "12.7", "lat": "42.2", "date": "June 2019"},      # unparseable date
    ])
    out = tmp_path / "out"
    proc = run_cli("build", "--locations", csv, "--out", out)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 4, proc.stderr
    assert ["row 2" in lines[0], "row 3" in lines[1], "row 4" in lines[2], "row 5" in lines[3]] == [True] * 4
    assert "unparseable coordinates" in lines[0] and "out of range" in lines[1] and "repeats row 1" in lines[2]
    assert "unparseable date" in lines[3]
    assert not out.exists()
    missing = write_csv(tmp_path / "nolat.csv", [{"x_coord": 1, "lon": 2}])
    proc = run_cli("export", missing, "--out", out)
    assert proc.returncode == 2 and "missing column(s) lat" in proc.stderr and not out.exists()


def test_a_given_date_picks_the_nearest_passing_scene_and_a_window_the_seeded_one(tmp_path):
    """Per year the catalog has a clear scene on 06-01, one on 07-01 (9.99 % clouds), a cloudy one on 06-05 and
    one on 06-09 that does not contain the tile + 200 m."""
    cb = CatalogBuilder(tmp_path / "s2")
    good, tight = tile_polygon(400), tile_polygon(100)
    for level in ("l1c", "l2a"):
        coll, p = f"sentinel-2-{level}", {"proj:epsg": EPSG}
        cb.add(coll, f"{level}_good", utc(2019, 6, 1), good, {**p, "eo:cloud_cover": 3.0}, s2_assets(level))
        cb.add(coll, f"{level}_good2", utc(2019, 7, 1), good, {**p, "eo:cloud_cover": 9.99}, s2_assets(level))
        cb.add(coll, f"{level}_cloudy", utc(2019, 6, 5), good, {**p, "eo:cloud_cover": 10.0}, s2_assets(level))
        cb.add(coll, f"{level}_tight", utc(2019, 6, 9), tight, {**p, "eo:cloud_cover": 1.0}, s2_assets(level))
    backend = cb.backend()

    def chosen(target=None, start=None, end=None, window=30, tile="t1"):
        ctx = context(backend, tile_id=tile)
        if target:
            d = dt.date.fromisoformat(target)
            ctx.s2_rule = S2Rule(d - dt.timedelta(days=window), d + dt.timedelta(days=window), d)
        elif start:
            ctx.s2_rule = S2Rule(dt.date.fromisoformat(start), dt.date.fromisoformat(end))
        return sentinel2.choose_scene(ctx)[0].id.split("_", 1)[1]

    assert chosen("2019-06-08") == "good"      # the cloudy (3 days) and tight (1 day) ones do not pass
    assert chosen("2019-06-20") == "good2"     # 11 days vs 19
    assert chosen("2019-06-15") == "good"      # 14.5 days (from noon) vs 15.5
    with pytest.raises(Exception, match="2019-07-05..2019-08-04"):
        chosen("2019-07-20", window=15)        # nothing within +-15 days
    picks = {chosen(start="2019-05-01", end="2019-07-31", tile=f"t{i}") for i in range(30)}
    assert picks == {"good", "good2"}          # seeded choice among the passing scenes in the window


@pytest.fixture(scope="module")
def given_build(tmp_path_factory):
    """64 given places on the synthetic backend at 48 px: representative points of real ecoregions, in a
    scrambled order with their own ids, one in the sea (kept unlabelled), two 300 m apart, dates on some rows."""
    d = tmp_path_factory.mktemp("given")
    pts = pd.read_csv(FIXTURES / "ecoregions" / "resolve_ecoregions2017_representative_points.csv")
    pts = pts[pts.ECO_ID > 0].iloc[::13].head(61)
    rows = [{"tile_id": f"site-{k:03d}", "lon": x, "lat": y, "date": ""} for k, (x, y) in
            enumerate(zip(pts.lon, pts.lat))][::-1]
    rows[3]["date"] = "2019-06-15"
    rows += [{"tile_id": "sea", "lon": 0.0, "lat": 0.0, "date": ""},
             {"tile_id": "rome-a", "lon": 12.5, "lat": 42.0, "date": "2020-05-01"},
             {"tile_id": "rome-b", "lon": 12.5036, "lat": 42.0, "date": "2020-05-01"}]
    csv = write_csv(d / "sites.csv", rows)
    out = d / "build"
    proc = run_cli("build", "--locations", csv, "--out", out, "--tile-px", "48", "--allow-unlabelled",
                   "--s2-window", "200", "--splits", "0.8,0.1,0.1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return csv, out, rows, proc.stdout


@pytest.mark.slow
@pytest.mark.e2e
def test_given_build_validates_keeps_ids_order_and_reports_missing_rows(given_build):
    csv, out, rows, stdout = given_build
    h5 = out / "data_sites_v001_48.h5"
    report = json.loads((out / "build_report.json").read_text())
    missing = {m["tile_id"]: m for m in report["missing"]}
    assert report["requested"] == 64 and report["final"] == 64 - len(missing) > 40
    for m in missing.values():   # one line per row without a tile, with its reason
        assert f"row {m['row']} ({m['tile_id']}): {m['status']}: " in stdout and m["reason"]
    with h5py.File(h5) as f:
        ids = [bytes(r[0]).decode() for r in f["metadata"][:]]
        assert f["sentinel2"].shape[1:] == (13, 48, 48) and f.attrs["unlabelled_tiles"] == ("sea" in ids)
    assert ids == [r["tile_id"] for r in rows if r["tile_id"] not in missing]   # the given order
    assert "sea" in ids and "rome-a" in ids   # seeded: these two got a scene
    rep = validate(out)
    assert rep.ok, rep.format_text()
    assert any("unlabelled" in w.message for w in rep.warnings)
    info = json.loads((out / "data_sites_v001_48_tile_info.json").read_text())
    assert [info[t]["source_row"] for t in ids] == sorted(info[t]["source_row"] for t in ids)
    assert "rows 63 and 64 (rome-a, rome-b) are 297 m apart, closer than a tile side (480 m)" in stdout
    assert info["rome-a"]["overlaps"] == ["rome-b"]
    assert abs(dt.date.fromisoformat(info["rome-a"]["S2_DATE"]) - dt.date(2020, 5, 1)) <= dt.timedelta(days=200)
    assert info["sea"]["unlabelled"] is True and "label_distance_km" not in info["sea"]
    ds = MMEarthDataset(out, split="all", modalities=["biome", "eco_region"])
    sample = ds[ids.index("sea")]
    assert sample["biome"].item() == -1 and sample["eco_region"].item() == -1


@pytest.mark.slow
@pytest.mark.e2e
def test_given_build_resumes_and_require_all_fails_on_missing_scenes(given_build, tmp_path):
    csv, out, rows, _ = given_build
    proc = run_cli("build", "--locations", csv, "--out", out, "--tile-px", "48", "--allow-unlabelled",
                   "--s2-window", "200", "--splits", "0.8,0.1,0.1", "--resume")
    assert proc.returncode == 0, proc.stderr[-2000:]
    small = write_csv(tmp_path / "three.csv", [r for r in rows if r["tile_id"] not in ("sea",)][:12])
    proc = run_cli("build", "--locations", small, "--out", tmp_path / "strict", "--tile-px", "32", "--require-all")
    report = json.loads((tmp_path / "strict" / "build_report.json").read_text())
    if report["missing"]:
        assert proc.returncode == 2 and "--require-all" in proc.stderr and not list((tmp_path / "strict").glob("*.h5"))
    else:
        assert proc.returncode == 0


@pytest.mark.e2e
@pytest.mark.slow
def test_export_takes_geojson_in_another_crs_and_pack_crops_to_any_multiple_of_8(eco, tmp_path):
    import geopandas as gpd
    from shapely import points

    gdf = gpd.GeoDataFrame({"tile_id": ["rome", "ghats"]}, geometry=points([[12.5, 42.0], [76.9, 10.2]]), crs=4326)
    path = tmp_path / "pts.geojson"
    gdf.to_crs(3857).to_file(path)
    out = tmp_path / "exp"
    proc = run_cli("export", path, "--out", out, "--tile-px", "40", "--dedupe")
    assert proc.returncode == 0, proc.stderr[-2000:]
    import pyarrow.parquet as pq

    t = pq.read_table(out / "locations.parquet").to_pandas()
    assert t.tile_id.tolist() == ["rome", "ghats"] and np.allclose(t.lon, [12.5, 76.9]) and t.eco_id.tolist() == [795, 271]
    for px, ok in (("40", True), ("24", True), ("64", False), ("20", False)):
        proc = run_cli("pack", out, "--out", tmp_path / f"p{px}", "--name", "data_x_v001", "--tile-px", px)
        assert (proc.returncode == 0) == ok, proc.stderr
    with h5py.File(tmp_path / "p24" / "data_x_v001.h5") as f:
        assert f["sentinel2"].shape[-1] == 24
    proc = run_cli("export", path, "--out", tmp_path / "bad", "--tile-px", "36")
    assert proc.returncode == 2 and "multiple of 8" in proc.stderr and not (tmp_path / "bad").exists()
