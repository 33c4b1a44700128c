"""Earth Engine as the real service behaves, not as our code assumed: each test holds the backend against a behaviour
of the stand-in that public evidence backs (tests/servers/README.md, the conformance table), and each failed on the
code before issue 25."""
from __future__ import annotations

import json
import math
import secrets
from pathlib import Path

import numpy as np
import pytest

from mmearth_data.errors import MMEarthError
from pipelines.export import ExportConfig, run_export
from pipelines.staging import PartitionStore
from servers.earthengine import MAX_RATE, EarthEngineStandIn
from stac_factory import ledger_digest, synthetic_world

GEE_MODS = ("sentinel1", "aster", "dynamic_world", "esa_worldcover", "canopy_height_eth", "era5")
TILES = 24


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = Path(tmp_path_factory.mktemp("gee_real"))
    locations, catalog = synthetic_world(root, TILES, seed=8)
    with EarthEngineStandIn.over(catalog) as ee_server:
        w = {"locations": locations, "catalog": str(catalog), "ee": ee_server, "root": root}
        w["local"] = ledger_digest(export(w, root / "local", gee=False))
        yield w


@pytest.fixture(autouse=True)
def fresh(world):
    from pipelines import sources
    from pipelines.backends.gee import session

    sources._BACKENDS.clear()
    server = world["ee"]
    yield server
    sources._BACKENDS.clear()
    session._CURRENT.clear()
    server.faults, server.pixel_faults, server.poison = [], [], {}
    server.latency_s, server.revoke_after, server.refresh_tokens = 0.0, None, None
    server.rate_burst, server._buckets, server.always = None, {}, None
    server.npy_byte_order, server.npy_reverse_fields = "<", False


def export(world, out: Path, gee: bool = True, resume: bool = False, **kw) -> Path:
    routes = tuple(f"{m}=gee" for m in GEE_MODS) if gee else ()
    cfg = ExportConfig.of(locations=str(world["locations"]), out=str(out), backend="local", catalog=world["catalog"],
                       tile_px=32, partition_size=TILES, modality_backends=routes, attempts=4, backoff_s=0.01,
                       gee_project="p" if gee else None, gee_url=world["ee"].url if gee else None,
                       **{"preflight": False, **kw})
    run_export(cfg, resume=resume)
    return out


def same_as_local(world, out: Path) -> None:
    rows = ledger_digest(out)
    assert not [k for k, (status, _) in rows.items() if status in ("retry", "failed")], rows
    assert rows == world["local"]


def staged(out: Path) -> dict[str, dict]:
    found = {}
    for p in sorted((out / "staging").glob("part-*.sqlite")):
        with PartitionStore(p, readonly=True) as st:
            for tile_id in st.tile_states():
                found[tile_id] = (st.arrays(tile_id), st.tile_info(tile_id))
    return found


# -- the stand-in answers as Earth Engine answers ----------------------------------------------------------------
def connect(world):
    from pipelines.backends.gee.session import connect as start

    return start("p", url=world["ee"].url)


def test_asset_types_are_earth_engines(world):
    """ASTER GDEM and the ETH canopy height are Image assets: loading one as an ImageCollection is an error, as is
    loading a collection as an Image; getAsset says which type an id is."""
    import ee

    rest = connect(world)
    with pytest.raises(ee.EEException, match="is not an ImageCollection"):
        ee.ImageCollection("projects/sat-io/open-datasets/ASTER/GDEM").size().getInfo()
    with pytest.raises(ee.EEException, match="is not an Image"):
        ee.Image("COPERNICUS/S1_GRD").projection().getInfo()
    assert rest.get_asset("projects/sat-io/open-datasets/ASTER/GDEM")["type"] == "IMAGE"
    assert rest.get_asset("COPERNICUS/S2_SR_HARMONIZED")["type"] == "IMAGE_COLLECTION"
    from pipelines.backends.gee.session import RestError

    with pytest.raises(RestError, match="404"):
        rest.get_asset("COPERNICUS/NO_SUCH_THING")


def test_a_features_system_index_is_its_top_level_id(world):
    import ee

    connect(world)
    fc = ee.ImageCollection("ECMWF/ERA5_LAND/MONTHLY_AGGR").filterDate("2019-01-01", "2019-03-01").map(
        lambda im: ee.Feature(None, {"t": im.get("system:time_start")})).getInfo()
    ids = [f["id"] for f in fc["features"]]
    assert ids and all(i.startswith("ERA5_LAND_MONTHLY_2019") for i in ids)
    assert all("system:index" not in f["properties"] for f in fc["features"])


def test_unmask_keeps_the_footprint_unless_told_not_to(world):
    """``Image.unmask(v)`` leaves pixels outside the image's footprint masked (computePixels answers them as 0);
    ``unmask(v, False)`` fills them. Every unmask the executor sends says False."""
    import ee

    from pipelines.backends.gee import expressions as gx
    from pipelines.grid import TileGrid, projected, utm_epsg

    connect(world)
    items = world["ee"].evaluator.items("GOOGLE/DYNAMICWORLD/V1")
    item = items[0]
    left, bottom, right, top = item.geometry.bounds
    epsg = utm_epsg(left, bottom)
    x, y = projected(left, top, epsg)
    grid = TileGrid(epsg, math.floor(x / 10) * 10 - 160, math.ceil(y / 10) * 10 + 160, 32, 32, 10.0)  # its corner
    image = ee.Image(f"GOOGLE/DYNAMICWORLD/V1/{item.id}").select(["label"]).toFloat()
    spec = {"dimensions": {"width": 32, "height": 32}, "crsCode": f"EPSG:{epsg}",
            "affineTransform": {"scaleX": 10, "shearX": 0, "translateX": grid.x0, "shearY": 0, "scaleY": -10,
                                "translateY": grid.y0}}
    kept = ee.data.computePixels({"expression": image.unmask(-7), "fileFormat": "NUMPY_NDARRAY", "grid": spec})
    filled = ee.data.computePixels({"expression": image.unmask(-7, False), "fileFormat": "NUMPY_NDARRAY",
                                    "grid": spec})
    outside = (kept["label"] == 0) & (filled["label"] == -7)
    assert 0 < outside.sum() < 32 * 32                    # the part of the grid off the image stays masked (0)
    assert ((filled["label"] == kept["label"]) | outside).all()   # inside, both are the image's own pixels
    dated = {"region": [0, 0, 1, 1], "start": 0, "end": 1}
    for builder, args, slots in ((gx.scenes, ((("0", ((("B4",), ("s2_B4",), "bilinear"), (("SCL",), ("s2_SCL",),
                                                                                       "nearest"))),),), {"0": "x/y"}),
                                 (gx.composite, ASTER, {}),
                                 (gx.composite, ((("users/nlang/a", ("b1",), ("h",)),
                                                  ("users/nlang/b", ("b1",), ("s",))),
                                                 "image", False, "first_valid", (), "bilinear"), {}),
                                 (gx.composite, ((("GOOGLE/DYNAMICWORLD/V1", ("label",), ("dw_label",)),), "collection",
                                                 True, "mode", (), "nearest"), dated),
                                 (gx.composite, ((("ESA/WorldCover/v100", ("Map",), ("esa_Map",)),), "collection", True,
                                                 "first_valid", (), "nearest"), dated)):
        from pipelines.backends.gee.templates import SHARED, Part, expression_json

        text = expression_json(SHARED.one(Part(builder, args, slots)))
        calls = list(invocations(json.loads(text), "Image.unmask"))
        assert calls, builder.__name__
        for c in calls:
            assert c["arguments"]["sameFootprint"] == {"constantValue": False}, builder.__name__


# the DEM's composite as the executor compiles terrain's plan: elevation and its slope from one Image asset
ASTER = ((("projects/sat-io/open-datasets/ASTER/GDEM", ("b1",), ("aster_elevation",)),), "image", False, "first_valid",
         (("slope", "aster_slope"),), "bilinear")


def invocations(node, name: str):
    """Every invocation of the function ``name`` in an expression graph (JSON), however deep."""
    if isinstance(node, dict):
        call = node.get("functionInvocationValue")
        if call and call.get("functionName") == name:
            yield call
        for v in node.values():
            yield from invocations(v, name)
    elif isinstance(node, list):
        for v in node:
            yield from invocations(v, name)


def test_a_list_index_must_be_an_integer(world):
    import ee

    connect(world)
    with pytest.raises(ee.EEException, match="Expected type: Integer"):
        ee.List([1, 2, 3]).get(ee.Number(1.5).floor()).getInfo()
    assert ee.List([1, 2, 3]).get(ee.Number(1.5).floor().int()).getInfo() == 2


def test_the_stand_in_refuses_what_earth_engine_refuses_in_pixels(world):
    """computePixels: at most 32768 px per side, 1024 bands and 48 MB; a malformed workload tag is refused."""
    from pipelines.backends.gee.session import RestError

    rest = connect(world)
    image = json.dumps(__import__("ee").Image.constant(1).serialize(for_cloud_api=True) and
                       json.loads(__import__("ee").serializer.toJSON(__import__("ee").Image.constant(1),
                                                                      for_cloud_api=True)))
    grid = {"dimensions": {"width": 40000, "height": 8}, "crsCode": "EPSG:32633",
            "affineTransform": {"scaleX": 10, "shearX": 0, "translateX": 0, "shearY": 0, "scaleY": -10,
                                "translateY": 0}}
    with pytest.raises(RestError, match="32768"):
        rest.compute_pixels(image, grid, ["constant"])
    grid["dimensions"] = {"width": 4000, "height": 4000}
    with pytest.raises(RestError, match="Total request size"):
        rest.compute_pixels(image, grid, ["constant"])
    with pytest.raises(RestError, match="Invalid workload tag"):
        rest.post("value:compute", '{"expression":' + image + ',"workloadTag":"Not OK"}')


# -- the backend against it ------------------------------------------------------------------------------------
def partly_empty_s1(out: Path) -> list[tuple[str, str, str]]:
    """(tile, orbit, polarisation) of every Sentinel-1 band that is present but not everywhere valid."""
    from pipelines.recipes import sentinel1

    found = []
    for tile_id, (arrays, info) in staged(out).items():
        if "sentinel1" not in arrays:
            continue
        for slot, short in enumerate(("asc", "desc")):
            for p in info["BANDS"].get(f"sentinel1_{short}") or []:
                band = arrays["sentinel1"][slot * 4 + sentinel1.POLARISATIONS.index(p)]
                if not np.isfinite(band).all():
                    found.append((tile_id, short, p))
    return found


def test_sentinel1_acquisitions_contain_the_tile_plus_200_m(world, tmp_path, monkeypatch):
    """MMEarth keeps only acquisitions whose footprint contains the tile + 200 m. Without the rule, the nearest one
    in time may end across the tile (15 % of the synthetic world's slices do) and leave part of it empty; with it,
    no present band is partly empty, and Earth Engine compiles the same rule (the same bytes as the pixel executor)."""
    assert partly_empty_s1(world["root"] / "local") == []
    gee = export(world, tmp_path / "gee")
    same_as_local(world, gee)
    body = json.dumps([r["body"] for r in world["ee"].requests if r["path"].endswith("value:compute")])
    assert "COPERNICUS/S1_GRD" in body and "Filter.contains" in body
    from pipelines.recipes.base import TileContext

    search = TileContext.search

    def without_the_rule(self, source, *args, contains=None, **kw):
        return search(self, source, *args, contains=None if source == "sentinel1" else contains, **kw)
    monkeypatch.setattr(TileContext, "search", without_the_rule)
    assert partly_empty_s1(export(world, tmp_path / "no_rule", gee=False))   # the world exercises the rule


def test_computation_timed_out_is_retried_not_recorded(world, tmp_path):
    world["ee"].faults = [("status", 400, "Computation timed out.")] * 3
    same_as_local(world, export(world, tmp_path / "gee"))
    assert world["ee"].faults == []


def test_one_bad_entry_costs_a_few_requests_not_a_batch(world, tmp_path):
    """value:compute is all or nothing: a batch Earth Engine refuses is split in halves until the bad entry is
    alone (about 2 log2(n) requests), and the tile it belongs to records the refusal; the others lose nothing."""
    from pipelines.backends.gee.batches import slow_start
    from pipelines.recipes import sentinel2

    tile = "5_000005"
    world["ee"].poison = {json.dumps(sentinel2._draw(0, tile).pick): "Image.load: Asset 'x' not found."}
    before = len(world["ee"].requests)
    out = export(world, tmp_path / "gee")
    values = [r for r in world["ee"].requests[before:] if r["path"].endswith("value:compute")]
    batches = len(slow_start(TILES, 50))
    assert len(values) <= 2 * batches + 2 * math.ceil(math.log2(TILES * 4)) + 4, len(values)
    same_as_local(world, out)    # the refused entry was the tile's guess: its queries were asked again


def service_account_key(path: Path, email: str, token_uri: str) -> str:
    """A service-account JSON key with a fresh RSA key, whose tokens come from ``token_uri`` (the stand-in's)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    path.write_text(json.dumps({"type": "service_account", "client_email": email, "private_key": pem,
                                "private_key_id": "k", "client_id": "1", "token_uri": token_uri}))
    return str(path)


def test_revoked_credentials_stop_the_run_and_resume_finishes_it(world, tmp_path):
    """Credentials revoked mid-run (a refresh that fails, or a 401 that survives it) would fail every request: the
    export stops with one line naming the remedy, marks no tile failed, and --resume with working credentials ends
    with the same bytes."""
    server = world["ee"]
    key = service_account_key(tmp_path / "key.json", "sa@p.iam.gserviceaccount.com", f"{server.url}/token")
    server.refresh_tokens = {"sa@p.iam.gserviceaccount.com"}
    server.revoke_after = len(server.requests) + 6
    with pytest.raises(MMEarthError) as e:
        export(world, tmp_path / "gee", gee_key_file=key)
    assert "\n" not in str(e.value) and "earthengine authenticate" in str(e.value) and "--resume" in str(e.value)
    assert "can no longer be refreshed" in str(e.value) or "HTTP 401" in str(e.value)
    rows = ledger_digest(tmp_path / "gee")
    assert not [k for k, (status, _) in rows.items() if status == "failed"]
    assert len({t for t, _ in rows}) < TILES                               # stopped early: tiles left pending
    from pipelines import sources
    from pipelines.backends.gee import session

    sources._BACKENDS.clear()
    session._CURRENT.clear()
    server.revoke_after, server.refresh_tokens = None, {"sa@p.iam.gserviceaccount.com"}
    same_as_local(world, export(world, tmp_path / "gee", resume=True, gee_key_file=key))


def test_a_401_that_survives_the_refresh_stops_the_run(world, tmp_path):
    """google-auth refreshes the token on a 401 and tries again (twice); a 401 after that would meet every request."""
    server = world["ee"]
    key = service_account_key(tmp_path / "key.json", "sa@p.iam.gserviceaccount.com", f"{server.url}/token")
    server.refresh_tokens = {"sa@p.iam.gserviceaccount.com"}
    server.always = ("status", 401, "Request had invalid authentication credentials.")
    before = len(server.access_tokens)
    with pytest.raises(MMEarthError) as e:
        export(world, tmp_path / "gee", gee_key_file=key)
    assert "HTTP 401" in str(e.value) and "\n" not in str(e.value)
    assert len(server.access_tokens) - before >= 3      # the first token, then a refresh before each retry
    assert not [k for k, (status, _) in ledger_digest(tmp_path / "gee").items() if status == "failed"]


def test_credentials_refused_at_start_are_one_line(world, tmp_path):
    server = world["ee"]
    key = service_account_key(tmp_path / "key.json", "gone@p.iam.gserviceaccount.com", f"{server.url}/token")
    server.refresh_tokens = {"sa@p.iam.gserviceaccount.com"}
    with pytest.raises(MMEarthError) as e:
        export(world, tmp_path / "gee", gee_key_file=key)
    assert "\n" not in str(e.value) and "earthengine authenticate" in str(e.value), str(e.value)
    assert "invalid_grant" in str(e.value)


def test_quota_of_40_in_flight_and_100_per_second_is_kept(world, tmp_path):
    """The stand-in refuses (429) what passes Earth Engine's default quota per project, here with a burst of 5
    requests; at 30 ms per answer 40 requests in flight would send ~1,300 per second: the client's own rate keeps
    every request within it."""
    server = world["ee"]
    server.latency_s, server.rate_burst, server._buckets = 0.03, 5, {}
    before = len(server.requests)
    same_as_local(world, export(world, tmp_path / "gee"))
    sent = server.requests[before:]
    assert server.refused == []
    times = sorted(r["t"] for r in sent)
    peak = max(sum(1 for u in times if t <= u < t + 1.0) for t in times)
    assert peak <= MAX_RATE


def test_processes_share_the_projects_quota(world):
    from pipelines.backends.gee.executor import GeeExecutor
    from pipelines.recipes.base import load_source_map
    from pipelines.scheduling import worker_processes

    executor = GeeExecutor(load_source_map("gee").sources, "p", url=world["ee"].url, share=4)
    assert executor.limiter.limit == 10 and executor.limiter.rate_per_s == pytest.approx(25 * 0.95)
    assert worker_processes("threads", 8, 100) == 1
    assert worker_processes("processes", 4, 100) == 4 and worker_processes("local-cluster", 8, 3) == 3


def test_over_the_memory_limit_a_tile_is_asked_in_halves(world, tmp_path):
    server = world["ee"]
    server.pixel_faults = [("status", 400, "User memory limit exceeded.")] * 2
    before = len(server.pixel_requests())
    out = export(world, tmp_path / "gee")
    same_as_local(world, out)
    with_s2 = {t for (t, m), (st, _) in world["local"].items() if m == "sentinel2" and st == "ok"}
    assert len(server.pixel_requests()) - before == len(with_s2) + 2 + 2   # two refused, each asked in 2 halves
    from pipelines import sources

    executor = next(b for k, b in sources._BACKENDS.items() if k[0] == "gee")
    assert executor.limiter.summary()["changes"] == 0                   # not a quota: nobody slowed down


def test_era5_is_reduced_for_the_months_a_tile_uses_only(world, tmp_path):
    server = world["ee"]
    before = server.evaluator.reductions
    same_as_local(world, export(world, tmp_path / "gee"))
    with_s2 = {t for (t, m), (st, _) in world["local"].items() if m == "sentinel2" and st == "ok"}
    # 12 months per tile, 12 more for a tile whose scene was not the guess (asked again once)
    assert server.evaluator.reductions - before <= 12 * (len(with_s2) + 4)


def test_every_request_carries_the_workload_tag(world, tmp_path):
    before = len(world["ee"].requests)
    export(world, tmp_path / "gee")
    assert {r["body"].get("workloadTag") for r in world["ee"].requests[before:]} == {"mmearth-data"}


def test_pixels_are_matched_by_band_name_in_either_byte_order(world, tmp_path):
    world["ee"].npy_byte_order, world["ee"].npy_reverse_fields = ">", True
    same_as_local(world, export(world, tmp_path / "gee"))


def test_credentials_are_found_in_ees_order(tmp_path, monkeypatch):
    """The file ``earthengine authenticate`` writes comes first, then google.auth.default() (a key file named by
    GOOGLE_APPLICATION_CREDENTIALS, gcloud's ADC, the metadata server); none at all is one line."""
    from pipelines.backends.gee.session import check, credentials

    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    monkeypatch.setenv("NO_GCE_CHECK", "True")   # no metadata server here: do not wait for one
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    with pytest.raises(MMEarthError, match="no Earth Engine credentials found"):
        check("p", None, None)
    assert credentials("http://127.0.0.1:1")[0] == "none"                # a stand-in needs none
    adc = tmp_path / "adc.json"
    adc.write_text(json.dumps({"type": "authorized_user", "client_id": "c",   # values made here, never real ones
                               "client_secret": secrets.token_hex(8), "refresh_token": secrets.token_hex(8)}))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(adc))
    assert check("p", None, None) == "application-default"
    stored = home / ".config" / "earthengine" / "credentials"
    stored.parent.mkdir(parents=True)
    token = secrets.token_hex(8)
    stored.write_text(json.dumps({"refresh_token": token}))
    kind, found = credentials()
    assert kind == "earthengine" and found.refresh_token == token


# -- the preflight ---------------------------------------------------------------------------------------------
def test_preflight_runs_before_an_export_and_stops_it_on_a_wrong_asset_type(world, tmp_path, monkeypatch):
    """Before anything is written: credentials, one getAsset per asset (its type against the source map's kind),
    then a few of the run's own tiles exported into a temporary directory and judged."""
    from servers import earthengine

    server = world["ee"]
    before = len(server.requests)
    out = export(world, tmp_path / "ok", preflight=True)
    same_as_local(world, out)
    gets = [r for r in server.requests[before:] if "/assets/" in r["path"]]
    assert len(gets) == 7   # the 7 assets the six Earth Engine modalities read (canopy: height and SD)
    monkeypatch.setitem(earthengine.ASSET_TYPES, "users/nlang/ETH_GlobalCanopyHeight_2020_10m_v1", "IMAGE_COLLECTION")
    with pytest.raises(MMEarthError) as e:
        export(world, tmp_path / "bad", preflight=True)
    assert "\n" not in str(e.value) and "ETH_GlobalCanopyHeight_2020_10m_v1" in str(e.value)
    assert "kind: image" in str(e.value) and "--no-preflight" in str(e.value)
    assert not (tmp_path / "bad").exists()                                # nothing written


def test_preflight_judges_the_sample_tiles(world, tmp_path):
    """A modality Earth Engine refuses on the sample tiles, or values no real data holds, stop the run first."""
    from pipelines.preflight import implausible
    from mmearth_data.catalog import load_spec

    world["ee"].pixel_faults = [("status", 400, "Image.select: Pattern 'b1' did not match any bands.")]
    with pytest.raises(MMEarthError, match=r"preflight: tile \S+ (sentinel1|aster|dynamic_world|esa_worldcover|"
                                           r"canopy_height_eth): failed"):
        export(world, tmp_path / "bad", preflight=True)
    assert not (tmp_path / "bad").exists()
    spec = load_spec().datasets
    flat = np.full((13, 32, 32), 7, np.uint16)   # masked pixels answered as a value: flat where noise never is
    assert "every pixel" in implausible(spec["sentinel2"], "sentinel2", flat)
    assert implausible(spec["canopy_height_eth"], "canopy_height_eth", np.zeros((2, 32, 32), np.int8)) is None
    assert "median" in implausible(spec["era5"], "era5", np.full(12, 15.0, np.float32))   # Celsius, not K


def test_check_command_alone(world, tmp_path):
    from cli_runner import run_cli

    server = world["ee"]
    ok = run_cli("check", "--backend", "local", "--catalog", world["catalog"], "--tile-px", 32,
                 *[a for m in GEE_MODS for a in ("--modality-backend", f"{m}=gee")], "--gee-project", "p",
                 "--gee-url", server.url, "--locations", world["locations"], "--tiles", 4, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert "Earth Engine assets: 7 found" in ok.stdout and "preflight passed" in ok.stdout
    # the fixed places are not in the stand-in's world: every modality must be present there, and is not
    fixed = run_cli("check", "--backend", "gee", "--gee-project", "p", "--gee-url", server.url, "--tile-px", 32,
                    timeout=300)
    assert fixed.returncode == 2 and fixed.stderr.count("\n") == 1, fixed.stderr
    assert "preflight: none of the 3 sample tiles has a Sentinel-2 scene" in fixed.stderr


def test_slope_is_computed_where_its_input_is_pinned(world):
    """Earth Engine computes ``Terrain.slope`` in the requested projection (the elevation arriving there by nearest
    neighbour) unless its input is reprojected: the executor pins the DEM to its own grid, as the pixel executor
    computes the slope."""
    import ee

    from pipelines.backends.gee import expressions as gx
    from pipelines.backends.gee.templates import SHARED, Part, expression_json
    from pipelines.grid import TileGrid

    connect(world)
    text = expression_json(SHARED.one(Part(gx.composite, ASTER, {})))
    assert list(invocations(json.loads(text), "Image.reproject"))
    dem = ee.Image("projects/sat-io/open-datasets/ASTER/GDEM").select(["b1"])
    item = world["ee"].evaluator._images("projects/sat-io/open-datasets/ASTER/GDEM")[0]
    lon, lat = item.props["geometry"].centroid.x, item.props["geometry"].centroid.y
    grid = TileGrid.centred(lon, lat, 32600 + int((lon + 180) // 6) + 1 + (100 if lat < 0 else 0), 32)
    spec = {"dimensions": {"width": 32, "height": 32}, "crsCode": grid.crs,
            "affineTransform": {"scaleX": 10, "shearX": 0, "translateX": grid.x0, "shearY": 0, "scaleY": -10,
                                "translateY": grid.y0}}
    on_grid, pinned = (ee.data.computePixels({"expression": ee.Terrain.slope(d).unmask(-1, False),
                                              "fileFormat": "NUMPY_NDARRAY", "grid": spec})["slope"]
                       for d in (dem, dem.reproject(dem.projection())))
    def jumps(a):   # mean change between neighbours: a 30 m DEM seen at 10 m has steps, its slope jumps
        return float(np.abs(np.diff(a[1:-1, 1:-1], axis=1)).mean())
    assert jumps(on_grid) > 1.5 * jumps(pinned), (jumps(on_grid), jumps(pinned))
