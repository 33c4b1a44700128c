"""The STAC backend against a real local STAC API (stac-fastapi-pgstac) loaded with real Planetary Computer item
JSON whose assets are our COGs on a Range server; Planetary Computer signing against a local token endpoint."""
from __future__ import annotations

import json
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
    """Each export opens its own STAC client (the process-wide cache would carry searches between tests)."""
    from pipelines import sources

    sources._BACKENDS.clear()
    yield
    sources._BACKENDS.clear()


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
    cfg = ExportConfig(locations=str(locs), out=str(out), tile_px=64, partition_size=4, attempts=4, backoff_s=0.05,
                       **kw)
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
    signed = signer.sign("sentinel-2-l2a", "http://127.0.0.1/x.tif")
    assert tokens.valid(signed.partition("?")[2])
    assert any(s >= tokens.retry_after_s for s in slept), slept
    assert signer.requests == 3


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
