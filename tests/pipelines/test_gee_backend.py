"""Earth Engine beside another main backend (``--modality-backend MOD=gee``: every modality but Sentinel-2, which
fixes the grid), with the unmodified ``ee`` client against a local stand-in that evaluates the expressions over a
static catalog. ``--backend gee`` for everything: test_gee_full.py."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from pipelines.backends.gee.limiter import AimdLimiter
from pipelines.export import ExportConfig, run_export
from servers.earthengine import EarthEngineStandIn
from stac_factory import ledger_digest, synthetic_world, write_locations_parquet

GEE_MODS = ("sentinel1", "aster", "dynamic_world", "esa_worldcover", "canopy_height_eth", "era5")
PIXEL_ONLY = ("dynamic_world", "esa_worldcover", "canopy_height_eth")   # no searches: nothing to prepare


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = Path(tmp_path_factory.mktemp("gee"))
    locations, catalog = synthetic_world(root, 12, seed=5)
    with EarthEngineStandIn.over(catalog) as ee_server:
        yield {"locations": locations, "catalog": str(catalog), "ee": ee_server}


@pytest.fixture(autouse=True)
def fresh_backends():
    from pipelines import sources

    sources._BACKENDS.clear()
    yield
    sources._BACKENDS.clear()


def export(world, out: Path, gee: bool, mods=GEE_MODS, **kw) -> Path:
    routes = tuple(f"{m}=gee" for m in mods) if gee else ()
    cfg = ExportConfig.of(locations=str(world["locations"]), out=str(out), backend="local", catalog=world["catalog"],
                       tile_px=32, partition_size=6, modality_backends=routes, attempts=4, backoff_s=0.01,
                       gee_project="p" if gee else None, gee_url=world["ee"].url if gee else None,
                       **{"preflight": False, **kw})   # its own tests: test_gee_real_service.py
    run_export(cfg)
    return out


def test_same_bytes_as_the_pixel_executor_in_one_request_per_tile(world, tmp_path):
    local = ledger_digest(export(world, tmp_path / "local", gee=False))
    before = len(world["ee"].pixel_requests())
    gee = ledger_digest(export(world, tmp_path / "gee", gee=True))
    with_s2 = {t for (t, m), (status, _) in local.items() if m == "sentinel2" and status == "ok"}
    assert len(with_s2) >= 6
    for t in with_s2:
        for m in (*GEE_MODS, "sentinel2", "sentinel1", "aster", "era5"):
            assert gee[(t, m)] == local[(t, m)], (t, m)
    assert local == {k: v for k, v in gee.items()}     # statuses and bytes of every modality, every tile
    sent = world["ee"].requests[before:]
    requests = [r for r in sent if r["path"].endswith("image:computePixels")]
    assert len(requests) == len(with_s2)                 # one computePixels per tile for the five pixel modalities
    values = [r for r in sent if r["path"].endswith("value:compute")]
    assert len(values) == 2                              # one batch per partition: S1, DEM and ERA5 of its tiles
    assert "COPERNICUS/S1_GRD" in json.dumps(values[0]["body"]) and "ERA5_LAND" in json.dumps(values[0]["body"])
    assert len(sent) <= 2 * 12
    body = requests[0]["body"]
    text = json.dumps(body["expression"])
    for needle in ("GOOGLE/DYNAMICWORLD/V1", "ESA/WorldCover/v100", "users/nlang/ETH_GlobalCanopyHeight_2020_10m_v1",
                   "Reducer.mode", "Filter.dateRangeContains", "Filter.intersects", '"bilinear"', "Terrain.slope",
                   "COPERNICUS/S1_GRD/", "projects/sat-io/open-datasets/ASTER/GDEM"):
        assert needle in text, needle
    assert body["fileFormat"] == "NPY" and body["grid"]["crsCode"].startswith("EPSG:32")
    assert body["grid"]["affineTransform"]["scaleX"] == 10 and body["grid"]["dimensions"]["width"] == 32


def test_quota_errors_halve_the_concurrency_and_lose_nothing(world, tmp_path):
    from pipelines import sources

    world["ee"].faults = [("status", 429, "Too many concurrent aggregations.")] * 3
    out = export(world, tmp_path / "gee", gee=True, gee_concurrency=8)
    executor = next(b for k, b in sources._BACKENDS.items() if k[0] == "gee")
    s = executor.limiter.summary()
    assert s["start"] == 8 and s["min"] <= 2, s          # halved on each quota error
    rows = ledger_digest(out)
    assert not [k for k, (status, _) in rows.items() if status in ("retry", "failed")]
    from pipelines.status import format_summary, summarize

    summary = summarize(out)
    assert summary["gee_concurrency"]["start"] == 8 and summary["gee_concurrency"]["min"] <= 2
    assert "Earth Engine concurrency: started at 8" in format_summary(summary)
    assert all(rows[(t, m)][0] == "ok" for (t, mod), (st, _) in rows.items() if mod == "sentinel2" and st == "ok"
               for m in GEE_MODS)


def test_a_stalled_or_truncated_answer_is_retried_and_loses_nothing(world, tmp_path):
    """Earth Engine's client sets no timeout of its own: a request the server never answers would hold its thread
    for ever. Ours times out after --gee-timeout and retries; a body cut short is retried too, never decoded."""
    before = len(world["ee"].requests)
    reference = ledger_digest(export(world, tmp_path / "ref", gee=True))
    sent = len(world["ee"].requests) - before
    world["ee"].faults = [("delay", 4.0), ("truncate", 0), ("truncate", 700)]
    before = len(world["ee"].requests)
    out = export(world, tmp_path / "gee", gee=True, gee_timeout_s=1.0)
    assert world["ee"].faults == []                      # all three were served
    assert len(world["ee"].requests) - before == sent + 3   # each one retried once
    assert ledger_digest(out) == reference               # the same statuses and bytes: nothing lost or short


def test_missing_credentials_is_one_line_and_writes_nothing(tmp_path, monkeypatch):
    from cli_runner import run_cli

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    locs = write_locations_parquet(tmp_path / "l.parquet", 2)
    r = run_cli("export", locs, "--backend", "planetary-computer", "--modality-backend", "dynamic_world=gee",
                "--gee-project", "p", "--out", tmp_path / "o", timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "no Earth Engine credentials" in r.stderr and "earthengine authenticate" in r.stderr
    assert not (tmp_path / "o").exists()


def test_aimd_limiter_halves_on_overload_and_recovers_additively():
    lim = AimdLimiter(start=16)
    lim.overload()
    lim.overload()
    assert lim.limit == 4
    for _ in range(4):
        lim.success()
    assert lim.limit == 5                                 # +1 after `limit` successes
    for _ in range(200):
        lim.success()
    assert lim.limit == 16                                # never above the start
    assert AimdLimiter.is_overload(Exception("Too many concurrent aggregations."))
    assert not AimdLimiter.is_overload(Exception("User memory limit exceeded."))   # the computation's, not a quota
    assert not AimdLimiter.is_overload(Exception("Image.select: band not found"))
    # the in-flight bound holds across threads
    lim = AimdLimiter(start=3)
    peak, now, lock = [0], [0], threading.Lock()

    def work():
        with lim.slot():
            with lock:
                now[0] += 1
                peak[0] = max(peak[0], now[0])
            threading.Event().wait(0.01)
            with lock:
                now[0] -= 1
    threads = [threading.Thread(target=work) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] == 3


def test_the_stand_in_refuses_what_it_cannot_evaluate(world):
    import ee

    from pipelines.backends.gee.session import connect

    connect("p", url=world["ee"].url)
    with pytest.raises(ee.EEException, match="unknown function"):
        ee.Image("ESA/WorldCover/v100").focal_max(3).getInfo()
    assert ee.Number(2).gt(1).getInfo() is True           # value:compute is evaluated, not invented


def test_a_response_over_the_limit_is_split_by_bands(world, tmp_path, monkeypatch):
    """computePixels answers at most 48 MB: a tile whose bands would pass it is fetched in band groups."""
    from pipelines.backends.gee import executor as gee_executor

    monkeypatch.setattr(gee_executor, "MAX_BYTES", 32 * 32 * 4 * 2)   # two float32 bands of a 32 px tile
    before = len(world["ee"].pixel_requests())
    rows = ledger_digest(export(world, tmp_path / "split", gee=True, mods=PIXEL_ONLY))
    tiles = {t for (t, m), (st, _) in rows.items() if m == "sentinel2" and st == "ok"}
    assert len(world["ee"].pixel_requests()) - before == 2 * len(tiles)    # 4 bands in 2 requests per tile
    local = ledger_digest(export(world, tmp_path / "local", gee=False))
    assert all(rows[(t, m)] == local[(t, m)] for t in tiles for m in PIXEL_ONLY)


@pytest.mark.parametrize("content, message", [
    ("not json", "not a readable JSON key file"),
    ('{"type": "authorized_user"}', "not a service-account key"),
])
def test_a_bad_key_file_is_one_line(tmp_path, content, message):
    from mmearth_data.errors import MMEarthError
    from pipelines.backends.gee.session import check

    key = tmp_path / "key.json"
    key.write_text(content)
    with pytest.raises(MMEarthError, match=message) as e:
        check("p", str(key), None)
    assert content not in str(e.value)                    # the key's content never reaches a message
    with pytest.raises(MMEarthError, match="--gee-project"):
        check(None, str(key), None)


def test_a_pixels_answer_becomes_planes_only_when_it_is_what_was_asked():
    """computePixels answers are read in place (NPY header parsed once per band set): masked pixels become NaN, and
    a truncated, reordered, reshaped or foreign body is refused, never read as pixels."""
    import io

    import numpy as np
    from numpy.lib import format as npy

    from pipelines.backends.gee.executor import MASKED, EarthEngineError, _npy_bands

    bands = ["a", "b"]
    arr = np.zeros((3, 4), dtype=[("a", "<f4"), ("b", "<f4")])
    arr["a"] = np.arange(12, dtype=np.float32).reshape(3, 4)
    arr["b"] = 7
    arr["b"][0, 0] = MASKED
    for version in ((1, 0), (2, 0)):
        buf = io.BytesIO()
        npy.write_array(buf, arr, version=version)
        data = buf.getvalue()
        out = _npy_bands(data, bands, (3, 4))
        assert np.array_equal(out["a"], arr["a"]) and out["a"].flags.c_contiguous
        assert np.isnan(out["b"][0, 0]) and (out["b"][1:] == 7).all()
        out["a"][0, 0] = -1                               # planes of their own, writable
        for bad, asked, shape in ((data[:-4], bands, (3, 4)), (data + b"\0" * 8, bands, (3, 4)),
                                  (data, ["a", "c"], (3, 4)), (data, bands, (4, 3)), (data, ["a"], (3, 4)),
                                  (b"<html>quota</html>", bands, (3, 4)), (data[:9], bands, (3, 4))):
            with pytest.raises(EarthEngineError, match="computePixels"):
                _npy_bands(bad, asked, shape)
    # Earth Engine documents the answer only as NumPy: fields are matched by name, in any order and byte order
    for order in ("<", ">"):
        other = np.zeros((3, 4), dtype=[("b", f"{order}f4"), ("a", f"{order}f4")])
        other["a"], other["b"] = arr["a"], arr["b"]
        buf = io.BytesIO()
        np.save(buf, other)
        out = _npy_bands(buf.getvalue(), bands, (3, 4))
        assert np.array_equal(out["a"], arr["a"]) and np.isnan(out["b"][0, 0]) and (out["b"][1:] == 7).all()
    wide = np.zeros((3, 4), dtype=[("a", "<f8"), ("b", "<f8")])   # not the 4-byte floats asked for
    buf = io.BytesIO()
    np.save(buf, wide)
    with pytest.raises(EarthEngineError, match="computePixels"):
        _npy_bands(buf.getvalue(), bands, (3, 4))


def test_earth_engine_requests_go_through_the_proxy_the_environment_names(world, tmp_path, monkeypatch):
    """The transport reads ``HTTP(S)_PROXY`` / ``NO_PROXY`` itself (as ``requests`` would): behind a proxy, every
    request of an export goes through it; a host in ``NO_PROXY`` is reached directly."""
    from servers.proxy import FaultProxy

    from pipelines.backends.gee import session
    from pipelines.backends.gee.session import Transport

    session._CURRENT.clear()   # a client of its own
    try:
        with FaultProxy() as proxy:
            monkeypatch.setenv("HTTP_PROXY", proxy.url)
            monkeypatch.setenv("NO_PROXY", "example.invalid")
            monkeypatch.delenv("http_proxy", raising=False)
            monkeypatch.delenv("no_proxy", raising=False)
            before = len(world["ee"].requests)
            rows = ledger_digest(export(world, tmp_path / "proxied", gee=True, mods=PIXEL_ONLY))
            sent = len(world["ee"].requests) - before
            assert sent and len([r for r in proxy.requests if "/v1/projects/p/" in r]) == sent
            assert rows == ledger_digest(export(world, tmp_path / "direct", gee=False, mods=PIXEL_ONLY))
            transport = Transport()
            assert type(transport._manager("http://example.invalid/v1")).__name__ == "PoolManager"
            assert type(transport._manager("http://127.0.0.1:1/v1")).__name__ == "ProxyManager"
    finally:
        session._CURRENT.clear()   # the next test's client is initialized without the proxy


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="glibc's allocator")
@pytest.mark.parametrize("keep", [False, True])
def test_freed_answers_stay_in_the_heap_instead_of_being_faulted_in_again(keep):
    """A tile's answer-sized blocks, freed and allocated again, come back without page faults once
    keep_freed_memory() ran (counted in a fresh process: glibc's thresholds are per process)."""
    import subprocess
    import sys

    code = ("import resource, numpy as np\n"
            "from pipelines.backends.gee.session import keep_freed_memory\n"
            f"assert keep_freed_memory() if {keep} else True\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
            "for _ in range(100):\n"
            "    a = np.ones(2_000_000 // 4, np.float32); b = a.copy(); del a, b\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n")
    faults = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                cwd=Path(__file__).resolve().parents[2]).stdout)
    if keep:
        assert faults < 5_000     # the 4 MB of the first round, then none
    else:
        assert faults > 20_000    # glibc's default: ~490 pages per 2 MB block, each time (its threshold adapts)


@pytest.mark.parametrize("tuned", [False, True])
def test_connecting_changes_the_process_only_when_it_opted_in(world, tuned):
    """Library code leaves the process as it found it: connecting to Earth Engine freezes no object for the garbage
    collector and starts no thread; after ``tune_process()`` (the CLI's export) the ``ee`` client's objects are set
    aside and projections run on their thread (a fresh process: these settings are per process)."""
    import subprocess
    import sys

    code = ("import gc, threading\n"
            "from pipelines.backends.gee import session\n"
            "from pipelines.grid import project\n"
            f"if {tuned}:\n"
            "    session.tune_process()\n"
            "frozen = gc.get_freeze_count()\n"
            f"session.connect('p', url={world['ee'].url!r})\n"
            "project(4326, 32633, 15.0, 45.0)\n"
            "print(gc.get_freeze_count() > frozen, any(t.name.startswith('pyproj') for t in threading.enumerate()))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2]).stdout.split()
    assert out == [str(tuned)] * 2


def test_a_plan_is_all_an_executor_needs(world):
    """Each executor runs a recipe's plan with its own operators, none of them a modality's: a composite that no
    recipe declares (Dynamic World's labels of the S2 year, bilinear, the first valid instead of their mode) gives
    the same values through the pixel executor as compiled for Earth Engine."""
    import datetime as dt

    import numpy as np

    from pipelines.backends.gee.compile import compile_plan
    from pipelines.backends.gee.executor import GeeExecutor
    from pipelines.backends.local import LocalBackend
    from pipelines.export import read_locations
    from pipelines.faults import NoCoverage
    from pipelines.recipes import sentinel2
    from pipelines.recipes.base import TileContext, load_sources
    from pipelines.recipes.pixels import run_composite
    from pipelines.recipes.plan import FIRST_VALID, Composite, Search

    def plan(ctx: TileContext) -> Composite:
        year = ctx.s2_date.year
        search = Search("dynamic_world", dt.datetime(year, 1, 1, tzinfo=dt.timezone.utc),
                        dt.datetime(year, 12, 31, 23, 59, 59, tzinfo=dt.timezone.utc))
        return Composite("dynamic_world", search, ("label",), "bilinear", FIRST_VALID,
                         lambda values, ids, count: values, "no image")

    local = LocalBackend(world["catalog"])
    gee = GeeExecutor(load_sources("gee"), "p", url=world["ee"].url)
    locs = read_locations(world["locations"])
    compared = 0
    for i in range(len(locs["tile_id"])):
        where = (str(locs["tile_id"][i]), float(locs["lon"][i]), float(locs["lat"][i]), int(locs["utm_epsg"][i]),
                 0, 0, 32, 0, local, load_sources("local"))
        pixel = TileContext(*where)
        try:
            sentinel2.locate(pixel)
        except NoCoverage:
            continue
        compiled = TileContext(*where, grid=pixel.grid, s2_date=pixel.s2_date,
                               routes={"dynamic_world": (gee, gee.sources["dynamic_world"])})
        part = compile_plan(compiled, plan(compiled))
        got = part.finish(gee.fetch(compiled, [part]))
        expected = run_composite(pixel, plan(pixel))
        assert got.shape == expected.shape == (1, 32, 32) and np.isfinite(expected).any()
        assert np.array_equal(got, expected, equal_nan=True), pixel.tile_id
        compared += 1
    assert compared >= 6
