"""The STAC backend against a real local STAC API (stac-fastapi-pgstac) loaded with real Planetary Computer item
JSON whose assets are our COGs on a Range server; Planetary Computer signing against a local token endpoint."""
from __future__ import annotations

import json
import secrets
import time
from pathlib import Path

import numpy as np
import pytest

from pipelines.export import ExportConfig, run_export
from pipelines.grid import pixel_centres
from pipelines.recipes.sentinel2 import cloudmask_from_scl
from pipelines.staging import PartitionStore
from servers.http_range import RangeServer
from servers.proxy import FaultProxy
from servers.sas import TokenServer
from stac_factory import ledger_digest
from stac_world import AREA, World, s1_power, tile_ids_drawing, write_locations

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def world(pgstac, tmp_path_factory):
    root = Path(tmp_path_factory.mktemp("world"))
    with RangeServer(root) as cogs, TokenServer(lifetime_s=3600) as tokens:
        w = World(root, cogs.url).build()
        pgstac.clear()
        pgstac.load(w.items)
        yield {"world": w, "cogs": cogs, "tokens": tokens, "api": pgstac.url, "root": root}


@pytest.fixture(autouse=True)
def fresh_backends():
    """Each export opens its own STAC client (the process-wide cache would carry searches between tests), and asks
    for its tokens at start again."""
    from pipelines import sources

    sources._BACKENDS.clear()
    sources._ACCOUNTS_CHECKED.clear()
    yield
    sources._BACKENDS.clear()
    sources._ACCOUNTS_CHECKED.clear()


def tiles() -> dict[str, list]:
    """Tile ids by what their seeded Sentinel-2 draw makes them test."""
    return {"y2020_l2a": tile_ids_drawing(2020, "l2a", 2), "y2020_l1c": tile_ids_drawing(2020, "l1c", 2),
            "y2018": tile_ids_drawing(2018, None, 1), "y2019": tile_ids_drawing(2019, None, 1),
            "y2017": tile_ids_drawing(2017, None, 1)}


def locations(path: Path) -> tuple[Path, dict]:
    t = tiles()
    cx, cy = (AREA[0] + AREA[2]) / 2, (AREA[1] + AREA[3]) / 2
    rows = []
    for k, tid in enumerate(t["y2020_l2a"] + t["y2020_l1c"]):
        rows.append((tid, cx - 0.06 + 0.03 * k, cy + 0.02))
    # the baseline pair: same place, one tile draws 2018 (baseline 02.12), the other 2019 (baseline 05.10)
    rows += [(t["y2018"][0], cx, cy - 0.05), (t["y2019"][0], cx, cy - 0.05), (t["y2017"][0], cx, cy + 0.06)]
    return write_locations(path, rows), t


def export(env, tmp: Path, name: str, **kw) -> Path:
    locs, _ = locations(tmp / "locations.parquet")
    out = tmp / name
    cfg = ExportConfig.of(locations=str(locs), out=str(out), tile_px=64, partition_size=4, attempts=4, backoff_s=0.05,
                       **{"preflight": False, **kw})   # the preflight's own tests: test_stac_real_service.py
    run_export(cfg)
    return out


def pc(env, **kw) -> dict:
    return {"backend": "planetary-computer", "stac_url": env["api"], "sas_token_url": env["tokens"].url, **kw}


def staged(out: Path) -> dict[str, tuple[dict, dict, dict]]:
    """tile_id -> (arrays, tile_info, ledger rows by modality)."""
    res = {}
    for p in sorted((out / "staging").glob("part-*.sqlite")):
        with PartitionStore(p, readonly=True) as st:
            for tid in st.tile_states():
                res[tid] = (st.arrays(tid), st.tile_info(tid) or {}, {r["modality"]: r for r in st.ledger(tid)})
    return res


def test_science_on_real_metadata(world, tmp_path):
    out = export(world, tmp_path, "pc", **pc(world))
    got = staged(out)
    t = tiles()
    items = {it["id"]: it for it in world["world"].items}
    for tid in t["y2020_l2a"] + t["y2020_l1c"]:
        arrays, info, rows = got[tid]
        assert rows["sentinel2"]["status"] == "ok", rows["sentinel2"]
        s2_id = json.loads(rows["sentinel2"]["source_ids"])[0]
        assert items[s2_id]["properties"]["eo:cloud_cover"] < 10   # the cloud filter, server-side (CQL2)
        assert info["S2_type"] == "l2a"
        # no QA60 on PC: the v001 cloud mask is derived from SCL (8, 9 opaque; 10 cirrus)
        scl = arrays["sentinel2_scl"][0].astype(np.float32)
        scl[scl == 255] = np.nan                                         # SCL 0 (no data) is the COG's nodata
        want = cloudmask_from_scl(scl)
        assert np.array_equal(arrays["sentinel2_cloudmask"][0], np.where(np.isnan(want), 65535, want).astype(np.uint16))
        assert {1024, 2048} <= set(np.unique(arrays["sentinel2_cloudmask"]))
        assert info["derived"] == {"QA60": "SCL"}
        assert (arrays["sentinel2_cloudprod"] == 65535).all()           # PC serves no MSK_CLDPRB
        # Sentinel-1 RTC: linear power -> dB, nearest per orbit; HH/HV absent -> -inf
        s1 = arrays["sentinel1"]
        grid_tr = _grid_transform(info, 64)
        xs, ys = pixel_centres(grid_tr, 64, 64)
        np.testing.assert_allclose(s1[4], 10 * np.log10(s1_power(0, xs, ys)), atol=1e-4)   # desc_VV
        np.testing.assert_allclose(s1[0], 10 * np.log10(s1_power(2, xs, ys)), atol=1e-4)   # asc_VV
        assert np.isneginf(s1[[2, 3, 6, 7]]).all()
        # WorldCover v100 (2020), never v200 (all class 50 in this world)
        esa = arrays["esa_worldcover"]
        assert not (esa == 50).all() and set(np.unique(esa)) <= {10, 20, 30, 40, 50, 60, 70, 80, 90}
        assert "ESA_WorldCover_10m_2020_v100" in rows["esa_worldcover"]["source_ids"]
        # no STAC source: no-data, BANDS null, missing = no_source, never zeros
        for mod, ds, nodata in (("canopy_height_eth", "canopy_height_eth", -1), ("dynamic_world", "dynamic_world", 0)):
            assert info["missing"][mod] == "no_source" and info["BANDS"][ds] is None
            assert (arrays[ds] == nodata).all()
        assert info["missing"]["era5"] == "no_source" and np.isnan(arrays["era5"]).all()
        assert (arrays["aster"][0] != -32768).all()                      # Copernicus DEM read, slope computed
    for tid in t["y2020_l1c"]:   # PC has no L1C: the L1C arm falls back to L2A, and tile_info says so
        assert got[tid][1]["S2_level_drawn"] == "l1c"
    for tid in t["y2020_l2a"]:
        assert "S2_level_drawn" not in got[tid][1]
    # harmonization: baseline 05.10 (offset in the DN) and 02.12 give the same output DN
    a, b = got[t["y2018"][0]], got[t["y2019"][0]]
    assert "S2_harmonized_offset" not in a[1] and b[1]["S2_harmonized_offset"] == -1000
    assert np.array_equal(a[0]["sentinel2"], b[0]["sentinel2"])
    assert got[t["y2017"][0]][2]["sentinel2"]["status"] == "nodata"     # no 2017 scene: no_s2
    # nothing signed reaches the ledger or tile_info
    text = json.dumps({k: [v[1], v[2]] for k, v in got.items()}, default=str)
    assert "sig=" not in text and "se=" not in text


def _grid_transform(info: dict, px: int):
    """The tile grid as export fixed it (the S2 scene's UTM grid), from the tile's centre and CRS."""
    from pipelines.grid import TileGrid
    from stac_world import EPSG

    grid = TileGrid.centred(info["lon"], info["lat"], EPSG, px, align=(499980.0, 9200020.0))
    return grid.transform


def test_parity_local_static_catalog_and_stac_api(world, tmp_path):
    """The same world through --backend local (a static mirror, same source map) and through the STAC API."""
    catalog = world["world"].write_static_catalog(tmp_path / "static")
    out_local = export(world, tmp_path, "local", backend="local", catalog=str(catalog),
                       stac_preset="planetary-computer")
    out_stac = export(world, tmp_path, "stac", **pc(world))
    a, b = ledger_digest(out_local), ledger_digest(out_stac)
    assert a == b
    assert sum(1 for (_, mod), (status, _) in a.items() if mod == "sentinel2" and status == "ok") >= 6


def test_searches_are_shared_between_tiles(world, tmp_path):
    from pipelines import sources

    out = export(world, tmp_path, "pc", **pc(world))
    backend = next(b for k, b in sources._BACKENDS.items() if k[0] == "stac")
    n_tiles = len(staged(out))
    # 5 modalities have a source on PC (S2 L2A, S1 both orbits, DEM, WorldCover): well below one search each
    assert backend.searches / n_tiles < 3.0, (backend.searches, n_tiles)


@pytest.mark.slow
def test_tokens_expire_during_the_export_and_nothing_is_lost(world, pgstac, tmp_path):
    """2 s tokens, a Range server that refuses expired signatures with 403 and 40 ms per request: the export runs
    for several token lifetimes, finishes every tile, and asks for a bounded number of tokens."""
    root = tmp_path / "world"
    with RangeServer(root) as cogs, TokenServer(lifetime_s=2.0) as tokens:
        w = World(root, cogs.url).build()
        pgstac.clear()
        pgstac.load(w.items)
        try:
            _expiring_tokens(pgstac, cogs, tokens, tmp_path)
        finally:   # the module's world again, for the tests after this one
            pgstac.clear()
            pgstac.load(world["world"].items)


def _expiring_tokens(pgstac, cogs, tokens, tmp_path) -> None:
    cogs.authorize = tokens.valid
    cogs.latency_s = 0.04
    t0 = time.monotonic()
    out = export({}, tmp_path, "pc", backend="planetary-computer", stac_url=pgstac.url,
                 sas_token_url=tokens.url, threads=2)
    elapsed = time.monotonic() - t0
    got = staged(out)
    assert elapsed > 3 * tokens.lifetime_s, elapsed
    for tid, (_, info, rows) in got.items():
        assert all(r["status"] in ("ok", "nodata", "skipped") for r in rows.values()), (tid, rows)
    collections = 4   # sentinel-2-l2a, sentinel-1-rtc, cop-dem-glo-30, esa-worldcover
    bound = collections * (elapsed / (0.75 * tokens.lifetime_s) + 2)
    assert 2 * collections <= len(tokens.requests) <= bound, (len(tokens.requests), bound)
    text = json.dumps({k: [v[1], v[2]] for k, v in got.items()}, default=str)
    assert "sig=" not in text


def test_a_collection_that_needs_an_account_is_no_source_with_one_line_at_start(world, tmp_path, monkeypatch,
                                                                                caplog):
    """sentinel-1-rtc may need a Planetary Computer account ("msft:requires_account": true; PlanetaryComputer#230,
    #338): the token endpoint refuses it with 403. One line says so at start, Sentinel-1 is no_source on every tile
    (not a failure per read, the endpoint asked once more at most), and the key in PC_SDK_SUBSCRIPTION_KEY, sent as
    the SDK sends it, makes it readable."""
    tokens = world["tokens"]
    key = secrets.token_hex(8)   # made up here: no key is kept in the tree
    tokens.account_only, tokens.subscription_keys = {"sentinel-1-rtc"}, {key}
    monkeypatch.delenv("PC_SDK_SUBSCRIPTION_KEY", raising=False)
    try:
        before = len(tokens.requests)
        with caplog.at_level("WARNING"):
            out = export(world, tmp_path, "no_key", **pc(world))
        asked = [r for r in tokens.requests[before:] if r.endswith("/sentinel-1-rtc")]
        assert len(asked) <= 2                                      # the start's check, the export's signer
        warned = [r.getMessage() for r in caplog.records if "needs a Planetary Computer account" in r.getMessage()]
        assert len(warned) == 1 and "PC_SDK_SUBSCRIPTION_KEY" in warned[0] and "\n" not in warned[0]
        rows = {t: r for t, (_, _, r) in staged(out).items() if r["sentinel2"]["status"] == "ok"}
        assert rows and all(r["sentinel1"]["status"] == "nodata" and r["sentinel1"]["error_class"] == "no_source"
                            for r in rows.values())
        monkeypatch.setenv("PC_SDK_SUBSCRIPTION_KEY", key)
        from pipelines import sources

        sources._BACKENDS.clear()
        keyed = staged(export(world, tmp_path, "with_key", **pc(world)))
        assert all(keyed[t][2]["sentinel1"]["status"] == "ok" for t in rows)
    finally:
        tokens.account_only, tokens.subscription_keys = set(), set()


def test_a_mirror_with_its_own_urls_is_not_signed(world, tmp_path):
    """The Planetary Computer preset over a mirror whose assets are not Azure blobs (here: loopback), without
    --sas-token-url: nothing is signed, so Planetary Computer's token endpoint (unreachable here) is never asked,
    and every tile is read."""
    tokens = world["tokens"]
    before = len(tokens.requests)
    rows = staged(export(world, tmp_path, "mirror", backend="planetary-computer", stac_url=world["api"]))
    assert len(tokens.requests) == before
    done = [r for _, _, r in rows.values() if r["sentinel2"]["status"] == "ok"]
    assert done and all(r[m]["status"] == "ok" for r in done for m in ("sentinel2", "sentinel1", "aster"))


def test_an_unreachable_token_endpoint_is_one_line_at_start(world, tmp_path):
    from mmearth_data.errors import MMEarthError

    with pytest.raises(MMEarthError, match=r"SAS token endpoint http://127\.0\.0\.1:9/x: no token") as e:
        export(world, tmp_path, "dead", **pc(world, sas_token_url="http://127.0.0.1:9/x"))
    assert "\n" not in str(e.value) and not (tmp_path / "dead").exists()


def test_gdal_caches_stay_bounded():
    """GDAL keeps a cache per open handle (VSI_CACHE_SIZE, 25 MB by default) and the reader keeps up to 128 handles
    per thread: bounded per handle, the worst case of 8 threads stays near 1 GB, not 25 GB."""
    from pipelines.backends.local import gdal_options

    assert gdal_options(20)["VSI_CACHE_SIZE"] * 128 * 8 <= 1_100_000_000


def test_tokens_are_per_container_and_a_429_stalls_only_its_own(world):
    """A SAS token is for a storage container (the SDK asks {token_url}/{account}/{container}): hrefs of one
    container share a token whatever their collection; a container waiting out a 429 does not hold up another's."""
    import threading

    from pipelines.backends.signing import SasSigner
    from pipelines.faults import RetryPolicy

    tokens = world["tokens"]
    signer = SasSigner(tokens.url, policy=RetryPolicy(attempts=3, base_s=0.01))
    before = len(tokens.requests)
    for collection, name in (("sentinel-1-rtc", "a.tif"), ("another", "b.tif")):
        signed = signer.sign(collection, f"https://sentinel1euwestrtc.blob.core.windows.net/sentinel1-grd-rtc/{name}")
        assert tokens.valid(signed.partition("?")[2])
    assert tokens.requests[before:] == ["/sentinel1euwestrtc/sentinel1-grd-rtc"]
    saved, tokens.retry_after_s = tokens.retry_after_s, 0.8
    try:
        tokens.faults = [("status", 429)]
        waiting = threading.Thread(target=signer.sign, args=(
            "cop-dem-glo-30", "https://elevationeuwest.blob.core.windows.net/copernicus-dem/x.tif"))
        started = len(tokens.requests)
        waiting.start()
        while len(tokens.requests) == started:   # its first request was answered 429: it waits 0.8 s
            time.sleep(0.01)
        t0 = time.monotonic()
        signer.sign("esa-worldcover", "https://ai4edataeuwest.blob.core.windows.net/esa-worldcover/y.tif")
        assert time.monotonic() - t0 < 0.5
        waiting.join()
    finally:
        tokens.retry_after_s = saved


def test_check_command_on_a_stac_api(world, tmp_path):
    """`mmearth-data check` on Planetary Computer's preset: the API answers, how it is asked, then sample tiles
    exported and judged; a token endpoint that refuses a collection is named on one line first."""
    from cli_runner import run_cli

    locs, _ = locations(tmp_path / "locations.parquet")
    r = run_cli("check", "--backend", "planetary-computer", "--stac-url", world["api"], "--sas-token-url",
                world["tokens"].url, "--locations", locs, "--tile-px", 64, "--tiles", 3, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "sorted by id" in r.stdout and "cloud cover filtered with CQL2" in r.stdout
    assert "sentinel1" in r.stdout and "preflight passed" in r.stdout
    # a token endpoint that cannot be reached: one line, before anything is exported
    r = run_cli("check", "--backend", "planetary-computer", "--stac-url", world["api"], "--sas-token-url",
                "http://127.0.0.1:9/t", "--locations", locs, "--tile-px", 64, timeout=300)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "SAS token endpoint http://127.0.0.1:9/t" in r.stderr


def test_search_and_token_faults_are_retried_honouring_retry_after(world, tmp_path):
    from pipelines.backends.signing import SasSigner
    from pipelines.backends.stac import StacBackend
    from pipelines.faults import RetryPolicy

    slept: list[float] = []
    policy = RetryPolicy(attempts=4, base_s=0.01, sleep=lambda s: slept.append(s))
    with FaultProxy(world["api"], retry_after_s=0.7) as proxy:
        backend = StacBackend(proxy.url, policy=policy)
        proxy.faults = [("status", 504), ("status", 429)]
        found = backend.search("sentinel-2-l2a", AREA, None, None, {"eo:cloud_cover": ("<", 10.0)})
        assert found and all(it.properties["eo:cloud_cover"] < 10 for it in found)
        assert any(s >= 0.7 for s in slept), slept       # Retry-After of the 429
    slept.clear()
    tokens = world["tokens"]
    tokens.faults = [("status", 429), ("status", 503)]
    signer = SasSigner(tokens.url, policy=policy)
    signed = signer.sign("sentinel-2-l2a", "https://sentinel2l2a01.blob.core.windows.net/sentinel2-l2/x.tif")
    assert tokens.valid(signed.partition("?")[2])
    assert any(s >= tokens.retry_after_s for s in slept), slept
    assert signer.requests == 3


def test_paged_search_returns_every_item_once(world):
    from pipelines.backends.stac import StacBackend

    whole = StacBackend(world["api"]).search("sentinel-2-l2a", AREA, None, None)
    paged = StacBackend(world["api"], page_limit=4)
    got = paged.search("sentinel-2-l2a", AREA, None, None)
    assert [it.id for it in got] == [it.id for it in whole] and len(got) >= 13
    assert paged.searches >= 4                      # every page is a request, and counted


@pytest.mark.e2e
def test_cli_export_pack_validate_on_planetary_computer_preset(world, tmp_path):
    from click.testing import CliRunner

    from mmearth_data.cli import cli

    locs, _ = locations(tmp_path / "locations.parquet")
    runner = CliRunner()
    r = runner.invoke(cli, ["export", str(locs), "--backend", "planetary-computer", "--stac-url", world["api"],
                            "--sas-token-url", world["tokens"].url, "--out", str(tmp_path / "exp"),
                            "--tile-px", "128", "--scheduler", "threads"])
    assert r.exit_code == 0, (r.output, r.exception)
    assert "no source on planetary-computer" in r.output and "--modality-backend" in r.output
    per_tile = float(r.output.split("STAC searches (")[1].split()[0])   # reported by status
    assert 0 < per_tile < 3
    r = runner.invoke(cli, ["pack", str(tmp_path / "exp"), "--out", str(tmp_path / "ds"), "--name", "data_t_v001"])
    assert r.exit_code == 0, (r.output, r.exception)
    r = runner.invoke(cli, ["validate", str(tmp_path / "ds")])
    assert r.exit_code == 0, (r.output, r.exception)
    import h5py

    with h5py.File(tmp_path / "ds" / "data_t_v001.h5") as f:
        assert "Copernicus DEM" in f["aster"].attrs["source"] and "not ASTER" in f["aster"].attrs["source"]
        assert "gamma0" in f["sentinel1"].attrs["source"] and "sigma0" in f["sentinel1"].attrs["source"]
        assert f["sentinel2_cloudmask"].attrs["derived"] == "SCL"
        assert "no-data" in f["canopy_height_eth"].attrs["source"]
        assert "L1C" in f.attrs["s2_l1c_fallback"]


def test_a_modality_from_another_backend(world, tmp_path):
    """--modality-backend canopy_height_eth=local:CATALOG: ETH canopy height from a static catalog of COGs while
    everything else comes from the STAC API."""
    w = World(world["root"], world["cogs"].url)
    rel = {}
    for band, value in (("height", 23.0), ("std", 4.0)):
        w._geo_cog(f"eth/{band}.tif", lambda lon, lat, v=value: np.full(lon.shape, v),
                                       1 / 12000, "float32", -9999.0)
        rel[band] = w.href(f"eth/{band}.tif")
    item = {"type": "Feature", "stac_version": "1.0.0", "id": "ETH_GlobalCanopyHeight_10m_2020_S09E027",
            "collection": "eth-canopy-height-2020", "geometry": {"type": "Polygon", "coordinates": [[
                [27, -9], [30, -9], [30, -6], [27, -6], [27, -9]]]}, "bbox": [27, -9, 30, -6],
            "properties": {"datetime": "2020-01-01T00:00:00Z"},
            "assets": {b: {"href": h, "roles": ["data"], "type": "image/tiff"} for b, h in rel.items()}, "links": []}
    extra = World(tmp_path, world["cogs"].url)
    extra.items = [item]
    catalog = extra.write_static_catalog(tmp_path / "eth")
    out = export(world, tmp_path, "pc", **pc(world, modality_backends=(f"canopy_height_eth=local:{catalog}",)))
    got = staged(out)
    done = [v for v in got.values() if v[2]["sentinel2"]["status"] == "ok"]
    assert done
    for arrays, info, rows in done:
        assert rows["canopy_height_eth"]["status"] == "ok"
        assert json.loads(rows["canopy_height_eth"]["source_ids"]) == [item["id"]]
        assert (arrays["canopy_height_eth"][0] == 23).all() and (arrays["canopy_height_eth"][1] == 4).all()
        assert "canopy_height_eth" not in info.get("missing", {})
        assert info["missing"]["dynamic_world"] == "no_source"


def earth_search_form(items: list[dict]) -> list[dict]:
    """The world's Sentinel-2 scenes as Earth Search serves them: its real item JSON as the template (common-name
    asset keys, ``earthsearch:boa_offset_applied``), ids in its scheme, the offset already removed from the DN of
    baseline >= 04.00 (so those assets point at the offset-free twin's COGs)."""
    import copy

    from pipelines.recipes.base import load_source_map
    from test_stac_sources import cassette_items

    template = next(d for d in cassette_items("test_cli/TestCLISearch.test_filter[inprocess].yaml")
                    if d["collection"] == "sentinel-2-l2a")
    pc_bands = load_source_map("planetary-computer").sources["sentinel2_l2a"].bands
    es_bands = load_source_map("earth-search").sources["sentinel2_l2a"].bands
    out = []
    for it in items:
        if it["collection"] == "cop-dem-glo-30":
            out.append(it)
        if it["collection"] != "sentinel-2-l2a":
            continue
        es = copy.deepcopy(template)
        p = it["properties"]
        day = p["datetime"][:10].replace("-", "")
        es["id"] = f"{it['id'][:3]}_35MNM_{day}_0_L2A"
        es["geometry"], es["bbox"] = it["geometry"], it["bbox"]
        applied = p["s2:processing_baseline"] >= "04.00"
        es["properties"].update({"datetime": p["datetime"], "eo:cloud_cover": p["eo:cloud_cover"],
                                 "proj:epsg": p["proj:epsg"], "s2:processing_baseline": p["s2:processing_baseline"],
                                 "earthsearch:boa_offset_applied": applied})
        assets = {}
        for band, pc_key in pc_bands.items():
            a = copy.deepcopy(it["assets"][pc_key])
            if applied:
                a["href"] = a["href"].replace(it["id"], "S2A_MSIL2A_20180731T080611_R078_T35MNM_moved_baseline0212")
            assets[es_bands[band]] = {**es["assets"][es_bands[band]], "href": a["href"],
                                      "proj:transform": a["proj:transform"], "proj:shape": a["proj:shape"]}
        es["assets"] = assets
        out.append(es)
    return out


def test_the_output_does_not_depend_on_the_endpoint(world, pgstac, tmp_path):
    """The same scenes served the Planetary Computer way (asset keys B01.., offset in the DN from baseline 04.00)
    and the Earth Search way (common names, offset removed, flagged): identical Sentinel-2 and DEM bytes."""
    out_pc = export(world, tmp_path, "pc", **pc(world))
    pgstac.clear()
    pgstac.load(earth_search_form(world["world"].items))
    try:
        out_es = export(world, tmp_path, "es", backend="earth-search", stac_url=world["api"])
    finally:
        pgstac.clear()
        pgstac.load(world["world"].items)
    a, b = ledger_digest(out_pc), ledger_digest(out_es)
    s2 = [k for k in a if k[1] in ("sentinel2", "aster")]
    assert sum(a[k][0] == "ok" for k in s2) >= 12
    assert {k: a[k] for k in s2} == {k: b[k] for k in s2}
    with_s2 = {t for (t, mod), (status, _) in b.items() if mod == "sentinel2" and status == "ok"}
    assert all(b[(t, mod)][0] == "nodata" for t in with_s2 for mod in ("sentinel1", "esa_worldcover"))  # no source


def test_planetary_computer_with_earth_engine_for_what_only_it_serves(world, tmp_path):
    """--backend planetary-computer --modality-backend dynamic_world=gee --modality-backend canopy_height_eth=gee:
    the S2 grid and date come from the STAC API, the two modalities from Earth Engine (the stand-in), in one
    computePixels per tile."""
    from pipelines.backends.local import LocalBackend
    from servers.earthengine import EarthEngineStandIn, Evaluator

    w = World(world["root"], world["cogs"].url)
    box = {"type": "Polygon", "coordinates": [[[27, -9], [30, -9], [30, -6], [27, -6], [27, -9]]]}
    items = []
    for k, label in enumerate((3, 3, 5)):   # the mode over 2020 is 3 (+1 = 4 in v001)
        w._geo_cog(f"dw/{k}.tif", lambda lon, lat, v=label: np.full(lon.shape, v), 1 / 12000, "uint8", 255)
        items.append({"type": "Feature", "stac_version": "1.0.0", "id": f"dw_2020_{k}", "collection": "dynamic-world",
                      "geometry": box, "bbox": [27, -9, 30, -6], "links": [],
                      "properties": {"datetime": f"2020-0{k + 3}-01T00:00:00Z"},
                      "assets": {"label": {"href": w.href(f"dw/{k}.tif"), "roles": ["data"]}}})
    for band, value in (("height", 17.0), ("std", 3.0)):
        w._geo_cog(f"eth2/{band}.tif", lambda lon, lat, v=value: np.full(lon.shape, v), 1 / 12000, "float32", -9999.0)
    items.append({"type": "Feature", "stac_version": "1.0.0", "id": "eth_S09E027", "collection": "eth-canopy-height-2020",
                  "geometry": box, "bbox": [27, -9, 30, -6], "links": [], "properties": {"datetime": "2020-01-01T00:00:00Z"},
                  "assets": {b: {"href": w.href(f"eth2/{b}.tif"), "roles": ["data"]} for b in ("height", "std")}})
    extra = World(tmp_path, world["cogs"].url)
    extra.items = items
    catalog = extra.write_static_catalog(tmp_path / "ee-world")
    assets = {"GOOGLE/DYNAMICWORLD/V1": ("dynamic-world", {"label": "label"}),
              "users/nlang/ETH_GlobalCanopyHeight_2020_10m_v1": ("eth-canopy-height-2020", {"b1": "height"}),
              "users/nlang/ETH_GlobalCanopyHeightSD_2020_10m_v1": ("eth-canopy-height-2020", {"b1": "std"})}
    with EarthEngineStandIn(Evaluator(LocalBackend(str(catalog)), assets)) as ee_server:
        out = export(world, tmp_path, "mixed", **pc(world, modality_backends=(
            "dynamic_world=gee", "canopy_height_eth=gee"), gee_project="p", gee_url=ee_server.url,
            preflight=False))   # its requests would be counted below; the preflight: test_gee_real_service.py
        got = staged(out)
        done = [v for v in got.values() if v[2]["sentinel2"]["status"] == "ok"]
        assert len(ee_server.pixel_requests()) == len(done) >= 6
    for arrays, info, rows in done:
        year = int(info["S2_DATE"][:4])
        dw = arrays["dynamic_world"]
        assert (dw == (4 if year == 2020 else 0)).all()          # mode 3 + 1 in 2020; no image in other years
        assert (arrays["canopy_height_eth"][0] == 17).all() and (arrays["canopy_height_eth"][1] == 3).all()
        assert rows["sentinel1"]["status"] == "ok"                # still from Planetary Computer


def test_searches_ask_only_what_is_read_and_keep_compact_items(world, pgstac):
    """Issue 26, item 5: Planetary Computer and Earth Search conform to the fields extension; a search asks for the
    item fields and the assets the run reads, and the cache keeps those only (a real PC Sentinel-2 item is ~40 KiB
    in memory, most of it assets and links never read). On PC's real item, served whole by pgstac."""
    import tracemalloc

    from pipelines import sources
    from pipelines.faults import RetryPolicy
    from pipelines.items import ASSET_FIELDS, Item, compact

    real = json.loads((Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "stac" /
                       "stac-geoparquet_pc_items" / "sentinel-2-l2a-pc.json").read_text())[0]
    pgstac.load([real])   # at its own place, far from the world's tiles

    def search(fields: bool) -> tuple[list, int, list[bytes]]:
        with FaultProxy(world["api"]) as proxy:
            sources._BACKENDS.clear()
            b = sources.stac_backend("planetary-computer", proxy.url, world["tokens"].url, 20.0, RetryPolicy())
            b.fields = fields and b.fields
            found = b.search("sentinel-2-l2a", real["bbox"], None, None, {"eo:cloud_cover": ("<", 100.0)})
            return found, proxy.searched_bytes, list(proxy.bodies)

    lean, lean_bytes, bodies = search(True)
    full, full_bytes, _ = search(False)
    sources._BACKENDS.clear()
    asked = [json.loads(b)["fields"] for b in bodies if b"fields" in b]
    assert asked and "assets.B04" in asked[0]["include"] and "assets.visual" not in asked[0]["include"]
    assert [it.id for it in lean] == [it.id for it in full] == [real["id"]]
    assert full_bytes > 1.3 * lean_bytes, (full_bytes, lean_bytes)   # 17 KB of JSON per item, 13 of 24 assets
    wanted = {a for s in sources.load_source_map("planetary-computer").sources.values() for a in s.bands.values()}
    assert {"visual", "rendered_preview", "tilejson"} <= set(real["assets"]) and len(real["assets"]) > len(wanted)
    for it in lean + full:   # the cache holds the compact record, whichever the API sent
        assert set(it.assets) == set(real["assets"]) & wanted
        assert all(set(a) <= set(ASSET_FIELDS) for a in it.assets.values())
        assert it.properties == real["properties"]

    def held(doc) -> int:
        tracemalloc.start()
        keep = [Item.from_dict(json.loads(json.dumps(doc))) for _ in range(20)]
        size = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        del keep
        return size // 20

    full_kib, lean_kib = held(real) / 1024, held(compact(real, frozenset(wanted))) / 1024
    assert full_kib > 1.7 * lean_kib, (full_kib, lean_kib)           # measured: 43.5 vs 22.8 KiB
