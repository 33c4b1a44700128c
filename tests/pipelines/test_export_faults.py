"""The local backend over HTTP (a loopback Range server) with injected faults, and permanent failures."""
from __future__ import annotations

import shutil

import pytest

from pipelines.backends.synthetic import write_synthetic_catalog
from mmearth_data import MMEarthDataset, validate
from pipelines.export import ExportConfig, run_export
from pipelines.pack import PackConfig, pack
from pipelines.staging import PartitionStore
from servers.http_range import RangeServer
from stac_factory import ledger_digest, synthetic_locations, write_locations_parquet

N_TILES = 200


@pytest.fixture(scope="module")
def catalog200(tmp_path_factory):
    root = tmp_path_factory.mktemp("cat200")
    locations = write_locations_parquet(root / "locations.parquet", N_TILES, seed=3)
    write_synthetic_catalog(root / "catalog", synthetic_locations(locations), seed=0, tile_px=32, workers=2)
    return locations, root / "catalog"


def export(locations, out, catalog, **kw):
    cfg = ExportConfig.of(locations=str(locations), out=str(out), backend="local", catalog=str(catalog), tile_px=32,
                       partition_size=50, **kw)
    return run_export(cfg, workers=2)


@pytest.mark.slow
def test_export_over_http_with_20_percent_faults_loses_nothing(catalog200, tmp_path):
    locations, catalog = catalog200
    clean = export(locations, tmp_path / "disk", catalog, threads=4)
    assert clean["final"] == N_TILES and clean["retries"] == 0
    assert clean["by_status"]["done"] > 0.6 * N_TILES
    # end to end on a few hundred tiles: pack, validate, load
    pack(PackConfig(str(tmp_path / "disk"), str(tmp_path / "ds"), "data_200_v001", tile_px=32,
                    fractions=(0.8, 0.1, 0.1)), workers=2)
    assert validate(tmp_path / "ds").ok
    ds = MMEarthDataset(tmp_path / "ds", split="val")
    assert len(ds) > 5 and ds[0]["dynamic_world"].shape == (1, 32, 32)

    with RangeServer(catalog) as server:
        server.random_faults(0.2, seed=1, stall_s=2.5)
        faulty = export(locations, tmp_path / "http", f"{server.url}/catalog.json", threads=8, attempts=10,
                        backoff_s=0.01, timeout_s=1)
        injected = dict(server.injected)
    assert faulty["final"] == N_TILES and faulty["by_status"] == clean["by_status"]
    assert "retry" not in faulty["by_status"] and "failed" not in faulty["by_status"]
    assert ledger_digest(tmp_path / "http") == ledger_digest(tmp_path / "disk")   # byte-identical staged arrays
    assert sum(injected.values()) > 500 and {"503", "429", "truncate", "delay"} <= set(injected) | {"500", "502"}
    assert faulty["retries"] > 100                                               # retries counted in the ledger


@pytest.mark.slow
def test_permanent_faults_are_recorded_once_with_their_reason(catalog200, tmp_path):
    locations, catalog = catalog200
    local = tmp_path / "catalog"
    shutil.copytree(catalog, local)
    clean = ledger_digest(export(locations, tmp_path / "clean", local, limit=12, threads=2)["out"])
    done = sorted({t for (t, m), (status, _) in clean.items() if m == "aster" and status == "ok"})[:2]
    for dem in (local / "tiles" / done[0]).glob("aster-gdem/*_elevation.tif"):
        dem.write_bytes(b"II*\x00" + b"\x00" * 64)            # a corrupt GeoTIFF
    for chm in (local / "tiles" / done[1]).glob("eth-canopy-height-2020/*.tif"):
        chm.unlink()                                          # a missing asset
    summary = export(locations, tmp_path / "out", local, limit=12, threads=2)
    rows = {(r["tile_id"], r["modality"]): r for p in (tmp_path / "out" / "staging").glob("*.sqlite")
            for r in PartitionStore(p, readonly=True).ledger()}
    aster, chm = rows[(done[0], "aster")], rows[(done[1], "canopy_height_eth")]
    assert (aster["status"], aster["error_class"], aster["attempts"]) == ("failed", "corrupt", 1)
    assert (chm["status"], chm["error_class"], chm["attempts"]) == ("failed", "missing_asset", 1)
    assert summary["by_status"] == {"done": sum(1 for (t, m), v in clean.items() if m == "labels" and v[0] == "ok"),
                                    "no_s2": summary["by_status"].get("no_s2", 0)}   # the tiles themselves are kept
    reasons = {(f["modality"], f["reason"]) for f in summary["failures"]}
    assert {("aster", "corrupt"), ("canopy_height_eth", "missing_asset")} <= reasons
    from mmearth_data.catalog import load_spec

    with PartitionStore(next((tmp_path / "out" / "staging").glob("*.sqlite")), readonly=True) as st:
        arrays = st.arrays(done[0])
    assert (arrays["aster"] == load_spec().datasets["aster"].nodata).all()   # filled with no-data, not zeros


@pytest.mark.slow
def test_exhausted_transient_fault_is_retried_by_resume_and_only_that_modality(catalog200, tmp_path):
    locations, catalog = catalog200
    clean = ledger_digest(export(locations, tmp_path / "disk", catalog, limit=8, threads=2)["out"])
    victim = sorted(t for (t, m), (status, _) in clean.items() if m == "canopy_height_eth" and status == "ok")[0]
    with RangeServer(catalog) as server:
        server.always_fail = {f"/tiles/{victim}/eth-canopy-height-2020/CHM_{victim}_"}   # the COGs, not the JSON
        url = f"{server.url}/catalog.json"
        first = export(locations, tmp_path / "http", url, limit=8, threads=2, attempts=2, backoff_s=0.01)
        assert first["by_status"].get("retry") == 1
        with PartitionStore(next((tmp_path / "http" / "staging").glob("*.sqlite")), readonly=True) as st:
            rows = {r["modality"]: r for r in st.ledger(victim)}
            info = st.tile_info(victim)
        assert rows["canopy_height_eth"]["status"] == "retry" and rows["canopy_height_eth"]["attempts"] == 2
        assert rows["sentinel2"]["status"] == "ok" and info["missing"] == {"canopy_height_eth": "transient"}
        server.always_fail.clear()
        server.requests.clear()
        cfg = ExportConfig.of(locations=str(locations), out=str(tmp_path / "http"), backend="local", catalog=url,
                           tile_px=32, partition_size=50, limit=8, threads=2, attempts=2, backoff_s=0.01)
        second = run_export(cfg, resume=True)
        redone = {r["path"].split("/")[3] for r in server.requests if r["path"].startswith("/tiles/")
                  and r["path"].endswith(".tif")}
    assert second["by_status"].get("retry") is None and second["final"] == 8
    assert ledger_digest(tmp_path / "http") == clean                    # same bytes as a run without faults
    assert redone == {"eth-canopy-height-2020"}                         # only the failed modality was fetched
    with PartitionStore(next((tmp_path / "http" / "staging").glob("*.sqlite")), readonly=True) as st:
        rows = {r["modality"]: r for r in st.ledger(victim)}
        info = st.tile_info(victim)
    assert rows["canopy_height_eth"]["attempts"] == 3 and "missing" not in info
    assert info["source_ids"]["canopy_height_eth"] and info["S2_DATE"]


@pytest.mark.parametrize("fault", [MemoryError(), OSError(28, "No space left on device", "/x.tif"),
                                   OSError(24, "Too many open files"), OSError(30, "Read-only file system"),
                                   RuntimeError("_tiffWriteProc: /x.tif: No space left on device")])
def test_this_machines_fault_is_never_classified_as_a_sources(fault):
    """Classified, a full disk or exhausted memory would become CorruptSource: permanent no-data in a tile marked
    done. It passes through the retry loop untouched, after one try, so the run stops and the tile stays pending."""
    from pipelines.faults import Attempts, RetryPolicy, machine_fault, with_retry

    tries = Attempts()

    def read():
        raise fault

    assert machine_fault(fault)
    for remote in (False, True):
        with pytest.raises(type(fault)):
            with_retry(read, RetryPolicy(attempts=3, sleep=lambda s: None), remote=remote, attempts=tries)
    assert tries.tries == 2
    assert not machine_fault(OSError(2, "No such file or directory")) and not machine_fault(ValueError("x"))
