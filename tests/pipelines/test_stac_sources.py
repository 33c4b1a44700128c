"""Source maps checked against real recorded items (../shared/fixtures/stac), their conversions, and the CLI's
backend options; no server needed."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from cli_runner import run_cli
from mmearth_data.cli import cli
from pipelines.faults import install_log_redaction, redact, retry_after
from pipelines.items import Item
from pipelines.recipes.base import load_source_map
from pipelines.recipes.sentinel2 import SPECTRAL, cloudmask_from_scl
from pipelines.sources import SourceChoice

FIX = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "stac"


def cassette_items(name: str) -> list[dict]:
    doc = yaml.safe_load((FIX / "pystac-client_cassettes" / name).read_text())
    out = []
    for inter in doc["interactions"]:
        body = json.loads(inter["response"]["body"]["string"])
        out += body.get("features", [])
    return out


def first(items: list[dict], collection: str) -> Item:
    return Item.from_dict(next(d for d in items if d["collection"] == collection))


@pytest.fixture(scope="module")
def earth_search():
    return cassette_items("test_cli/TestCLISearch.test_filter[inprocess].yaml")


def pc_item(name: str) -> Item:
    return Item.from_dict(json.loads((FIX / "stac-geoparquet_pc_items" / name).read_text())[0])


def test_every_mapped_band_is_an_asset_of_the_real_items(earth_search):
    pc = load_source_map("planetary-computer").sources
    es = load_source_map("earth-search").sources
    c1 = load_source_map("earth-search-c1").sources
    cases = [(pc["sentinel2_l2a"], pc_item("sentinel-2-l2a-pc.json")),
             (pc["sentinel1"], pc_item("sentinel-1-rtc-pc.json")),
             (pc["dem"], pc_item("cop-dem-glo-30-pc.json")),
             (es["sentinel2_l2a"], first(earth_search, "sentinel-2-l2a")),
             (c1["sentinel2_l2a"], first(earth_search, "sentinel-2-c1-l2a"))]
    wc = FIX / "stactools-esa-worldcover" / "ESA_WorldCover_10m_2020_v100_N00E006"
    cases.append((pc["esa_worldcover"], Item.from_dict(json.loads((wc / f"{wc.name}.json").read_text()))))
    for src, item in cases:
        assert item.collection == src.collection
        for band, asset in src.bands.items():
            if band in ("HH", "HV"):   # polarisations the recorded acquisition does not have
                continue
            assert item.band(asset).asset == asset, (src.key, band)
    # what the source maps leave out really is absent
    s2 = pc_item("sentinel-2-l2a-pc.json")
    assert not any(s2.has_band(b) for b in ("B10", "QA60", "MSK_CLDPRB"))
    assert first(earth_search, "sentinel-2-c1-l2a").band("cloud").href.endswith("CLD_20m.tif")
    assert "sentinel2_l1c" in load_source_map("planetary-computer").absent


def test_harmonization_offset_follows_the_baseline_and_the_endpoint(earth_search):
    pc = load_source_map("planetary-computer").sources["sentinel2_l2a"]
    es = load_source_map("earth-search").sources["sentinel2_l2a"]
    c1 = load_source_map("earth-search-c1").sources["sentinel2_l2a"]
    old = Item.from_dict(json.loads((FIX / "odc-stac" / "site2-2020_jun_jul-35MNM.geojson").read_text())["features"][0])
    assert old.properties["s2:processing_baseline"] == "02.12" and pc.offset(old) == 0
    assert pc.offset(pc_item("sentinel-2-l2a-pc.json")) == -1000          # baseline 05.10, PC keeps the offset
    es_item = first(earth_search, "sentinel-2-l2a")
    assert es_item.properties["earthsearch:boa_offset_applied"] is True and es.offset(es_item) == 0
    assert c1.offset(first(earth_search, "sentinel-2-c1-l2a")) == -1000   # collection 1: offset not applied
    # the same reflectance, served with and without the offset, comes out as the same DN
    dn = np.array([[0, 1000, 1500, 2500]], np.float32)
    a = pc.apply(old, dn.copy(), spectral=True)
    b = pc.apply(pc_item("sentinel-2-l2a-pc.json"), dn.copy() + 1000, spectral=True)
    assert np.isnan(a[0, 0]) and np.array_equal(a[0, 1:], b[0, 1:])
    assert set(pc.bands) >= set(SPECTRAL) - {"B10"}


def test_sentinel1_rtc_to_db_and_nodata():
    s1 = load_source_map("planetary-computer").sources["sentinel1"]
    item = pc_item("sentinel-1-rtc-pc.json")
    v = s1.apply(item, np.array([0.1, 1.0, -32768.0, 0.0], np.float32))
    np.testing.assert_allclose(v[:2], [-10.0, 0.0], atol=1e-6)
    assert np.isnan(v[2:]).all()
    assert "gamma0" in s1.describe and "sigma0" in s1.describe


def test_cloudmask_from_scl():
    scl = np.array([0, 3, 7, 8, 9, 10, 11, np.nan], np.float32)
    assert cloudmask_from_scl(scl)[:7].tolist() == [0, 0, 0, 1024, 1024, 2048, 0]
    assert np.isnan(cloudmask_from_scl(scl)[7])


def test_signed_urls_are_redacted_everywhere(caplog):
    import secrets
    from urllib.parse import urlencode

    # a URL shaped like a SAS-signed one, with a signature made up here (nothing signed is kept in the tree)
    query = urlencode({"st": "2024-04-19", "se": "2024-04-20T00:00Z", "sp": "rl", "sig": secrets.token_urlsafe(16)})
    url = f"https://acct.blob.core.windows.net/c/x.tif?{query}"
    text = redact(f"HTTP response code: 403 on {url} (retrying)")
    assert "sig=" not in text and "se=" not in text and "x.tif?<redacted>" in text
    install_log_redaction()
    with caplog.at_level(logging.WARNING):
        logging.getLogger("rasterio._env").warning("CPLE_HttpResponseError: %s", url)
    assert "sig=" not in caplog.text and "x.tif" in caplog.text
    assert retry_after("3") == 3.0 and retry_after(None) is None and retry_after("soon") is None


def test_dry_run_names_each_modalitys_collection_or_its_absence(tmp_path):
    r = CliRunner().invoke(cli, ["build", "--size", "1k", "--backend", "planetary-computer", "--out",
                                 str(tmp_path / "b"), "--modality-backend",
                                 "canopy_height_eth=local:/data/eth/catalog.json", "--dry-run"])
    assert r.exit_code == 0, r.output
    lines = {ln.split()[0]: ln for ln in r.output.splitlines()[2:] if ln.startswith("  ")}
    assert "sentinel-2-l2a" in lines["sentinel2"] and "no sentinel2_l1c" in lines["sentinel2"]
    assert "sentinel-1-rtc" in lines["sentinel1"] and "cop-dem-glo-30" in lines["aster"]
    assert "local:/data/eth/catalog.json: eth-canopy-height-2020" in lines["canopy_height_eth"]
    for mod in ("dynamic_world", "era5"):
        assert "no source on planetary-computer" in lines[mod] and "--modality-backend" in lines[mod]
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("args, message", [
    (["--backend", "stac"], "--backend stac needs --stac-url"),
    (["--backend", "stac", "--stac-url", "http://127.0.0.1:9"], "needs --stac-preset"),
    (["--backend", "stac", "--stac-url", "http://127.0.0.1:9", "--stac-preset", "nope"], "no source map 'nope'"),
    (["--backend", "planetary-computer", "--catalog", "x"], "--catalog is for --backend local"),
    (["--backend", "gee"], "--gee-project PROJECT is required"),
    (["--backend", "gee", "--stac-preset", "earth-search"], "--stac-preset is for --backend stac or local"),
    (["--backend", "synthetic", "--stac-url", "http://x"], "--stac-url/--sas-token-url are for"),
    (["--backend", "planetary-computer", "--modality-backend", "canopy"], "expected MOD=BACKEND"),
    (["--backend", "planetary-computer", "--modality-backend", "sentinel2=gee"], "use --backend gee"),
    (["--backend", "planetary-computer", "--modality-backend", "era5=gee"], "--gee-project PROJECT is required"),
    (["--backend", "planetary-computer", "--modality-backend", "aster=local"], "local needs a catalog"),
])
def test_backend_option_errors_are_one_line(tmp_path, args, message):
    r = run_cli("build", "--size", "10", "--out", tmp_path / "b", *args, "--dry-run", timeout=120)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("error: ")
    assert not (tmp_path / "b").exists()



def test_unreachable_stac_api_writes_nothing(tmp_path):
    from stac_world import write_locations

    locs = write_locations(tmp_path / "l.parquet", [("a", 27.5, -7.7)])
    r = run_cli("export", locs, "--backend", "planetary-computer", "--stac-url", "http://127.0.0.1:9/api",
                "--out", tmp_path / "e", "--attempts", "1", timeout=120)
    assert r.returncode == 2 and "--stac-url http://127.0.0.1:9/api: not a reachable STAC API" in r.stderr, r.stderr
    assert not (tmp_path / "e").exists()


def test_identity_of_a_stac_export_names_the_endpoint_not_the_token_service():
    a = SourceChoice("planetary-computer", sas_token_url="http://127.0.0.1:1")
    b = SourceChoice("planetary-computer", sas_token_url="http://127.0.0.1:2")
    assert a.identity() == b.identity() and a.identity()["stac_url"].startswith("https://planetarycomputer")
    assert SourceChoice("local", "c").identity() == {"backend": "local", "catalog": "c"}   # unchanged hashes


def test_earth_search_offset_rules_decided_on_the_recorded_items(earth_search):
    """Issue 26, item 7, on Earth Search's real items: ``sentinel-2-l2a`` says ``earthsearch:boa_offset_applied:
    false`` where the offset was removed (Element84/earth-search#66, #71), so from baseline 04.00 on only a true
    flag is believed and any other scene is left out (None); Collection 1 and pre-Collection 1 take the offset
    their assets' raster:bands declare, whatever the baseline (pre-c1: "data and metadata matching" c1)."""
    import copy

    es = load_source_map("earth-search").sources["sentinel2_l2a"]
    c1 = load_source_map("earth-search-c1").sources["sentinel2_l2a"]
    recorded = [Item.from_dict(d) for d in earth_search if d["collection"] == "sentinel-2-l2a"]
    assert recorded and all(it.properties["earthsearch:boa_offset_applied"] is True for it in recorded)
    assert all(es.offset(it) == 0 for it in recorded)
    as_reported = copy.deepcopy(next(d for d in earth_search if d["collection"] == "sentinel-2-l2a"))
    as_reported["properties"]["earthsearch:boa_offset_applied"] = False        # S2B_33UXP_20250302_0_L2A (#71)
    assert es.offset(Item.from_dict(as_reported)) is None
    as_reported["properties"]["s2:processing_baseline"] = "02.12"              # 2017-2020: never an offset
    assert es.offset(Item.from_dict(as_reported)) == 0
    c1_items = [d for d in earth_search if d["collection"] == "sentinel-2-c1-l2a"]
    assert c1_items and all(c1.offset(Item.from_dict(d)) == -1000 for d in c1_items)
    pre = copy.deepcopy(c1_items[0])
    pre["collection"] = "sentinel-2-pre-c1-l2a"
    pre["properties"]["s2:processing_baseline"] = "02.12"
    assert c1.offset(Item.from_dict(pre)) == -1000                              # the baseline says nothing here
    for band in c1.bands.values():                                              # each band's own declaration
        if band in pre["assets"] and "offset" in pre["assets"][band].get("raster:bands", [{}])[0]:
            assert c1.offset(Item.from_dict(pre), band) == -1000
    del pre["assets"]["red"]["raster:bands"][0]["offset"]
    del pre["assets"]["red"]["raster:bands"][0]["scale"]
    assert c1.offset(Item.from_dict(pre)) == 0
    pre["assets"]["red"].pop("raster:bands")
    assert c1.offset(Item.from_dict(pre)) is None                               # nothing declared: unknown
    assert c1.collections == ("sentinel-2-c1-l2a", "sentinel-2-pre-c1-l2a")
    assert c1.valid_nodata == ("MSK_CLDPRB",) and c1.band("MSK_CLDPRB") == "cloud"
    cloud = c1_items[0]["assets"]["cloud"]["raster:bands"][0]
    assert cloud["nodata"] == 0 and cloud["data_type"] == "uint8"               # the declaration we override
