"""``--backend gee``: all twelve modalities through Earth Engine, with the unmodified ``ee`` client against the local
stand-in (tests/servers/earthengine.py) evaluating the expressions over a synthetic world; the same world as a
static catalog is the pixel executor's reference."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.backends.synthetic import write_synthetic_catalog
from pipelines.export import ExportConfig, run_export
from pipelines.staging import PartitionStore
from servers.earthengine import EarthEngineStandIn
from stac_factory import (committed, ledger_digest, synthetic_locations, synthetic_world, tile_infos,
                          write_locations_parquet)

TILES = 200
COMPOSITES = ("dynamic_world", "esa_worldcover", "canopy_height_eth")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = Path(tmp_path_factory.mktemp("gee_full"))
    locations, catalog = synthetic_world(root, TILES, seed=11, workers=2)
    with EarthEngineStandIn.over(catalog) as ee_server:
        yield {"locations": locations, "catalog": str(catalog), "ee": ee_server, "root": root}


@pytest.fixture(autouse=True)
def fresh_backends():
    from pipelines import sources

    sources._BACKENDS.clear()
    yield
    sources._BACKENDS.clear()


def export(world, out: Path, backend: str, partition_size: int = 100, **kw) -> Path:
    gee = backend == "gee"
    cfg = ExportConfig.of(locations=str(world["locations"]), out=str(out), backend=backend,
                       catalog=None if gee else world["catalog"], tile_px=32, partition_size=partition_size, attempts=4,
                       backoff_s=0.01, gee_project="p" if gee else None, gee_url=world["ee"].url if gee else None,
                       **{"preflight": False, **kw})   # its own tests: test_gee_real_service.py
    run_export(cfg)
    return out


@pytest.fixture(scope="module")
def local_50(world):
    return export(world, world["root"] / "local50", "local", limit=50)


def staged_arrays(out: Path, tile_id: str) -> dict:
    for p in sorted((out / "staging").glob("part-*.sqlite")):
        with PartitionStore(p, readonly=True) as st:
            if st.tile_info(tile_id) is not None:
                return st.arrays(tile_id)
    raise KeyError(tile_id)


def assert_same_data(local: Path, gee: Path) -> set[str]:
    """Same ledger (statuses, sha256) but ``aster``, which is within 1 (see below); returns the tiles with S2."""
    import numpy as np

    local_rows, gee_rows = ledger_digest(local), ledger_digest(gee)
    assert gee_rows.keys() == local_rows.keys()
    exact = {k for k in local_rows if k[1] != "aster"}
    assert {k: gee_rows[k] for k in exact} == {k: local_rows[k] for k in exact}   # status and sha256
    with_s2 = {t for (t, m), (st, _) in local_rows.items() if m == "sentinel2" and st == "ok"}
    for t in with_s2:
        assert gee_rows[(t, "aster")][0] == local_rows[(t, "aster")][0]
        a, b = staged_arrays(local, t)["aster"], staged_arrays(gee, t)["aster"]
        assert np.abs(a.astype(np.int32) - b.astype(np.int32)).max() <= 1, t
    return with_s2


@pytest.mark.slow
def test_same_tiles_tile_info_and_bytes_as_the_pixel_executor_on_50_locations(world, local_50, tmp_path):
    """The stand-in reads pixels with the pixel executor's rasterio code, so every array but ``aster`` is equal to
    the byte. Elevation is within 1 m and slope within 1 degree: the pixel executor warps the DEM window it read
    (slope needs it) with an in-memory reproject, Earth Engine resamples the source image on the request grid (the
    stand-in: a WarpedVRT); both bilinear, they round differently at .5."""
    gee = export(world, tmp_path / "gee", "gee", limit=50)
    with_s2 = assert_same_data(local_50, gee)
    assert 25 <= len(with_s2) < 50                        # both kinds of tile: with and without a scene
    local_info, gee_info = tile_infos(local_50), tile_infos(gee)
    for t in with_s2:
        a, b = dict(local_info[t]), dict(gee_info[t])
        assert (a.pop("backend"), b.pop("backend")) == ("local", "gee")
        for composite in COMPOSITES:   # Earth Engine reduces server-side: the source is the collection, not items
            assert b["source_ids"].pop(composite)[0].startswith(("GOOGLE/", "ESA/", "users/nlang/"))
            a["source_ids"].pop(composite)
        # the DEM is one Image asset on Earth Engine (the pixel executor's: the DEM tiles under the tile)
        assert b["source_ids"].pop("aster") == ["projects/sat-io/open-datasets/ASTER/GDEM"]
        assert a["source_ids"].pop("aster")
        assert b == a, t                                  # same scene, date, CRS, level, S1/DEM/ERA5 ids, bands, values


def canonical(expression: dict):
    """An expression as one tree (references resolved, constant lists folded): equal trees compute the same."""
    values = expression["values"]

    def tree(node):
        if "valueReference" in node:
            return tree(values[node["valueReference"]])
        if "functionInvocationValue" in node:
            call = node["functionInvocationValue"]
            return ("call", call.get("functionName") or tree(values[call["functionReference"]]),
                    tuple(sorted((k, tree(v)) for k, v in call.get("arguments", {}).items())))
        if "functionDefinitionValue" in node:
            fn = node["functionDefinitionValue"]
            return ("fn", tuple(fn["argumentNames"]), tree(values[fn["body"]]))
        if "arrayValue" in node:
            items = [tree(v) for v in node["arrayValue"]["values"]]
            if all(i[0] == "const" for i in items):
                return ("const", json.dumps([json.loads(i[1]) for i in items]))
            return ("array", tuple(items))
        if "dictionaryValue" in node:
            return ("dict", tuple(sorted((k, tree(v)) for k, v in node["dictionaryValue"]["values"].items())))
        if "constantValue" in node:
            return ("const", json.dumps(node["constantValue"]))
        return ("other", json.dumps(node, sort_keys=True))
    return tree(values[expression["result"]])


@pytest.mark.slow
def test_every_filled_template_equals_the_expression_built_for_its_tile(world, tmp_path, monkeypatch):
    """A template is built by the first tile of its shape and filled by the others: for every expression an export
    sends, the JSON posted (put together from the filled template's text, without ``ee``) computes exactly what
    ``ee`` builds and serializes for that tile (so a shape's key misses no constant that varies between tiles, and
    the text is what ``ee`` would send); a batch's dictionary holds its entries' expressions."""
    import ee
    from ee import serializer

    from pipelines.backends.gee import executor as X
    from pipelines.backends.gee import templates as T

    def posted(top):
        return canonical(json.loads(T.expression_json(top)))

    batches = []

    def as_posted(top):
        if isinstance(top, T.PrebuiltDict):
            batches.append(posted(top) == ("dict", tuple(sorted((k, posted(v)) for k, v in top.entries.items()))))
        return T.expression_json(top)
    monkeypatch.setattr(X, "expression_json", as_posted)

    made = {}   # id of a filled expression -> what ee built for it (a slot may hold another expression)

    def direct(part):
        def constant(name, type_name="Object"):
            value = part.values[name]
            if isinstance(value, T.Prebuilt):
                return made[id(value)]
            return {"String": ee.String, "Number": ee.Number, "List": ee.List}.get(type_name, lambda x: x)(value)
        return part.builder(*part.args, constant)

    compared = []

    def check(filled, built):
        compared.append(posted(filled) == canonical(serializer.encode(built)))
        return filled
    one, joined = T.Templates.one, T.Templates.joined

    def one_checked(self, part):
        filled, built = one(self, part), direct(part)
        made[id(filled)] = built
        return check(filled, built)
    monkeypatch.setattr(T.Templates, "one", one_checked)
    monkeypatch.setattr(T.Templates, "joined", lambda self, parts, join, type_name="Image": check(
        joined(self, parts, join, type_name), join([direct(p) for p in parts])))
    built = []
    get = T.Templates.get
    monkeypatch.setattr(T.Templates, "get",
                        lambda self, key, build: get(self, key, lambda: built.append(key) or build()))
    export(world, tmp_path / "gee", "gee", limit=60)
    assert len(compared) > 100 and all(compared), compared.count(False)
    assert len(batches) >= 4 and all(batches), batches
    assert len(built) < len(compared) / 5          # shapes are few: most expressions are filled, not built


@pytest.mark.slow
def test_at_most_two_requests_per_tile_on_200_tiles(world, tmp_path):
    before = len(world["ee"].requests)
    out = export(world, tmp_path / "gee", "gee")
    sent = world["ee"].requests[before:]
    rows = ledger_digest(out)
    assert not [k for k, (st, _) in rows.items() if st in ("retry", "failed")]
    with_s2 = {t for (t, m), (st, _) in rows.items() if m == "sentinel2" and st == "ok"}
    pixels = [r for r in sent if r["path"].endswith("image:computePixels")]
    values = [r for r in sent if r["path"].endswith("value:compute")]
    assert len(pixels) == len(with_s2)                     # one merged image per tile
    from pipelines.backends.gee.batches import slow_start

    batches = len(slow_start(100, 50)) * TILES // 100     # per partition of 100: 6, 12, 24, 48, then the 10 left
    assert len(sent) / TILES <= 2, len(sent) / TILES
    print(f"gee: {len(sent) / TILES:.2f} requests per tile ({len(pixels)} computePixels, {len(values)} value:compute)")

    bodies = [json.dumps(v["body"]["expression"]) for v in values]   # batches are prepared in parallel: any order
    first = [b for b in bodies if "CLOUDY_PIXEL_PERCENTAGE" in b]     # a batch's scenes, and what they imply
    after = [b for b in bodies if "CLOUDY_PIXEL_PERCENTAGE" not in b]  # for tiles whose scene was not the guess
    assert len(first) == batches and len(after) <= batches
    for needle in ("COPERNICUS/S2_SR_HARMONIZED", "COPERNICUS/S2_HARMONIZED", "Filter.contains", "Filter.lessThan",
                   "Filter.dateRangeContains", "Image.projection", '"B4"',
                   "AggregateFeatureCollection.array", "Number.multiply", "Number.floor", "List.get",   # the pick
                   "Number.int",   # List.get takes an Integer
                   "COPERNICUS/S1_GRD", '"ASCENDING"', '"DESCENDING"', '"instrumentMode"', '"IW"', "Collection.limit",
                   "Number.abs", "ECMWF/ERA5_LAND/MONTHLY_AGGR", "Image.reduceRegion", "Reducer.mean"):
        assert needle in first[0], needle
    assert "projects/sat-io/open-datasets/ASTER/GDEM" not in first[0]   # one Image asset: nothing to search
    # the synthetic world puts ~15 % of the scenes in a neighbouring UTM zone: only their tiles are asked again
    again = sum(b.count('"ECMWF/ERA5_LAND/MONTHLY_AGGR"') for b in after)
    assert 0 < again < len(with_s2) / 3, (again, len(with_s2))
    for needle in ("COPERNICUS/S1_GRD", "Image.reduceRegion"):
        assert needle in after[0], needle
    body = pixels[0]["body"]
    text = json.dumps(body["expression"])
    for needle in ("Terrain.slope", '"Image.load", "arguments": {"id": {"constantValue": '
                   '"projects/sat-io/open-datasets/ASTER/GDEM"', "COPERNICUS/S1_GRD/", "GOOGLE/DYNAMICWORLD/V1", "Reducer.mode",
                   "ESA/WorldCover/v100", "users/nlang/ETH_GlobalCanopyHeightSD_2020_10m_v1", '"bilinear"',
                   '"s2_QA60"', '"s2_B4"'):
        assert needle in text, needle
    assert "COPERNICUS/S2_SR_HARMONIZED/" in text or "COPERNICUS/S2_HARMONIZED/" in text   # the chosen scene by id
    assert body["grid"]["affineTransform"]["scaleX"] == 10 and body["grid"]["crsCode"].startswith("EPSG:32")
    assert body["grid"]["affineTransform"]["translateX"] % 10 == 0                # snapped to the scene's 10 m grid

    from pipelines.status import format_summary, summarize

    assert "Earth Engine concurrency" in format_summary(summarize(out))


@pytest.mark.slow
def test_quota_errors_in_batches_and_pixels_slow_down_recover_and_lose_nothing(world, local_50, tmp_path):
    from pipelines import sources

    world["ee"].faults = [("status", 429, "Too many concurrent aggregations.")] * 2 + \
        [("status", 429, "Too many concurrent requests")] + [("status", 503, "Backend unavailable")]
    out = export(world, tmp_path / "gee", "gee", limit=50, gee_concurrency=8)
    executor = next(b for k, b in sources._BACKENDS.items() if k[0] == "gee")
    s = executor.limiter.summary()
    assert s["start"] == 8 and s["min"] <= 1 and s["now"] > s["min"], s      # halved three times, then recovered
    assert_same_data(local_50, out)                                             # nothing lost, same data


def test_missing_credentials_is_one_line_and_writes_nothing(tmp_path, monkeypatch):
    from cli_runner import run_cli

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    locs = write_locations_parquet(tmp_path / "l.parquet", 2)
    r = run_cli("export", locs, "--backend", "gee", "--gee-project", "p", "--out", tmp_path / "o", timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "no Earth Engine credentials" in r.stderr and "earthengine authenticate" in r.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
@pytest.mark.e2e
def test_a_full_build_through_earth_engine_validates_and_matches_the_synthetic_build(tmp_path):
    """``build --backend gee`` end to end (sample, export rounds, pack) over a world that holds the synthetic
    backend's sources at every location a synthetic build of the same size drew (all its rounds)."""
    import h5py
    import numpy as np

    from cli_runner import run_cli
    from mmearth_data import MMEarthDataset, validate
    from pipelines.export import read_locations

    ref = tmp_path / "ref"
    r = run_cli("build", "--size", "8", "--out", ref, "--workers", "1", timeout=600)
    assert r.returncode == 0, r.stderr
    rounds = sorted((ref / "work").glob("locations*.parquet"))
    from pipelines.preflight import places

    # the world also holds the preflight's fixed places: build --size checks Earth Engine there first
    locs = [loc for p in [*rounds, places(tmp_path, 128)] for loc in synthetic_locations(p)]
    catalog = write_synthetic_catalog(tmp_path / "world", locs, seed=0, tile_px=128, workers=1)
    with EarthEngineStandIn.over(catalog) as ee_server:
        out = tmp_path / "gee"
        r = run_cli("build", "--size", "8", "--backend", "gee", "--gee-project", "p", "--gee-url", ee_server.url,
                    "--out", out, "--workers", "1", timeout=600)
        assert r.returncode == 0, r.stderr
        assert "built 8 of 8" in r.stdout and "Earth Engine concurrency" in r.stdout
        assert "preflight passed" in r.stdout
    report = validate(out)
    assert report.ok, report.format_text()
    ds = MMEarthDataset(out)
    assert len(ds) == 8 and ds[0]["sentinel2"].shape == (13, 128, 128)
    assert sum(len(read_locations(p)["tile_id"]) for p in rounds) >= 8
    with h5py.File(next(out.glob("*.h5"))) as g, h5py.File(next(ref.glob("*.h5"))) as s:
        assert list(g["metadata"][:]) == list(s["metadata"][:])     # the same tiles, in the same order
        for name in ("sentinel2", "sentinel1", "dynamic_world", "esa_worldcover", "canopy_height_eth", "era5"):
            assert np.array_equal(g[name][:], s[name][:], equal_nan=True), name
        assert np.abs(g["aster"][:].astype(np.int32) - s["aster"][:].astype(np.int32)).max() <= 1
        assert "Earth Engine" in g["sentinel2"].attrs["source"]


@pytest.mark.slow
def test_sigkill_mid_export_then_resume_equals_an_uninterrupted_run(world, tmp_path):
    """The CLI killed with SIGKILL while batches and pixels are in flight; ``--resume`` ends with the same ledger
    and tile_info as a run that was never killed, committed tiles are not redone, and no process outlives the
    kill."""
    import os
    import signal
    import subprocess
    import sys
    import time

    args = [str(world["locations"]), "--backend", "gee", "--gee-project", "p", "--gee-url", world["ee"].url,
            "--tile-px", "32", "--limit", "40", "--partition-size", "20", "--threads", "4"]
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "mmearth_data.cli", "export", *args, "--out", str(killed)]
    world["ee"].latency_s = 0.05                      # keep requests in flight when the kill lands
    try:
        proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while len(committed(killed)) < 8 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        time.sleep(0.2)
        with pytest.raises(ProcessLookupError):
            os.killpg(proc.pid, 0)                   # nothing of the killed run is left
        before = committed(killed)
        assert 8 <= len(before) < 40, "the kill should land mid-run"
        resumed = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=300)
        assert resumed.returncode == 0, resumed.stderr
    finally:
        world["ee"].latency_s = 0.0
    after = committed(killed)
    assert {t: after[t] for t in before} == before     # committed tiles were not redone
    straight = export(world, tmp_path / "straight", "gee", limit=40, partition_size=20)
    assert ledger_digest(killed) == ledger_digest(straight)
    assert tile_infos(killed) == tile_infos(straight)


@pytest.mark.slow
def test_one_request_prepares_every_tile_whose_scene_is_in_its_own_utm_zone(world):
    """A batch's first request picks each tile's scene server-side with the seeded rule and asks its Sentinel-1,
    DEM and ERA5-Land on the grid of the location's UTM zone. The scene is then chosen locally by the recipe's own
    code: for every tile whose scene lies in its own zone the two agree (no further request but its pixels); only
    the others (the synthetic world puts ~15 % of the scenes in a neighbouring zone) are asked again, together."""
    import time

    from pipelines.backends.gee.executor import GeeExecutor
    from pipelines.export import read_locations
    from pipelines.recipes import sentinel2
    from pipelines.recipes.base import TileContext, load_source_map

    sources = load_source_map("gee").sources
    executor = GeeExecutor(sources, "p", url=world["ee"].url)
    locs = read_locations(world["locations"])

    def make(i: int) -> TileContext:
        return TileContext(str(locs["tile_id"][i]), float(locs["lon"][i]), float(locs["lat"][i]),
                           int(locs["utm_epsg"][i]), 0, 0, 32, 0, executor, sources,
                           routes={k: (executor, s) for k, s in sources.items()})
    confirmed, picks = [], 0
    for batch in (range(k, k + 50) for k in range(0, TILES, 50)):   # every tile: few have two scenes to pick from
        before = len(world["ee"].requests)
        executor.prepare([make(i) for i in batch])
        for _ in range(600):
            if not executor._pending:
                break
            time.sleep(0.05)
        sent = world["ee"].requests[before:]
        elsewhere = 0
        for i in batch:
            ctx = make(i)
            try:
                item, _ = sentinel2.locate(ctx)
            except Exception:  # noqa: BLE001 - no scene
                continue
            if item.epsg() != ctx.utm_epsg:
                elsewhere += 1
            else:
                confirmed.append(i)
                picks += max(len(sentinel2.run_query(ctx, q)) for q in sentinel2.queries(ctx)) > 1
        assert [r["path"].rsplit("/", 1)[1] for r in sent] == ["value:compute"] * (1 + (elsewhere > 0))
        assert json.dumps(sent[-1]["body"]).count('"ECMWF/ERA5_LAND/MONTHLY_AGGR"') == elsewhere
    assert len(confirmed) > 80 and picks > 10, (len(confirmed), picks)
    before = len(world["ee"].requests)
    confirmed = confirmed[:6]
    for i in confirmed:
        out = executor.run(make(i), ["sentinel2", "sentinel1", "aster", "canopy_height_eth", "dynamic_world",
                                     "esa_worldcover", "era5"])
        assert not isinstance(out["sentinel2"], BaseException) and not isinstance(out["era5"], BaseException)
    paths = [r["path"].rsplit("/", 1)[1] for r in world["ee"].requests[before:]]
    assert paths == ["image:computePixels"] * len(confirmed)
