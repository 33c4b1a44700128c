"""The opt-in online tier: the real Earth Engine, Planetary Computer and Earth Search on a few fixed places, where the
stand-ins cannot follow. Run with ``pytest -m online``; the Earth Engine tests also need, in the environment,
``MMEARTH_ONLINE_GEE_PROJECT`` (a Cloud project registered for Earth Engine) plus credentials as ``ee`` finds them
(``earthengine authenticate``, or ``GOOGLE_APPLICATION_CREDENTIALS``); ``MMEARTH_ONLINE_GEE_KEY_FILE`` names a
service-account key instead. Each test is skipped when its service cannot be reached, and the tier never runs in
CI (no machine there reaches the services).

What it holds the backends to:
- ``mmearth-data check`` passes on the fixed places (credentials, project, every asset's type, every modality
  present with plausible values);
- with Planetary Computer fixing the scene and grid, the modalities both serve agree: ESA WorldCover class by class,
  and elevation from Earth Engine's ASTER GDEM against Planetary Computer's Copernicus DEM (two DEMs: close, not
  equal);
- ``mmearth-data check`` passes on Planetary Computer and on Earth Search at the fixed places (the API, its paging
  and filters, Planetary Computer's tokens, Earth Search's public S3 DEM, every modality they serve plausible).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

PROJECT = os.environ.get("MMEARTH_ONLINE_GEE_PROJECT")
KEY_FILE = os.environ.get("MMEARTH_ONLINE_GEE_KEY_FILE")

pytestmark = pytest.mark.online
needs_gee = pytest.mark.skipif(not PROJECT, reason="online tier: set MMEARTH_ONLINE_GEE_PROJECT (and credentials)")


def reachable(host: str) -> bool:
    import socket

    try:
        socket.create_connection((host, 443), timeout=5).close()
        return True
    except OSError:
        return False


def gee_args() -> list[str]:
    return ["--gee-project", PROJECT, *(["--gee-key-file", KEY_FILE] if KEY_FILE else [])]


@needs_gee
def test_check_passes_on_the_fixed_places():
    from cli_runner import run_cli

    r = run_cli("check", "--backend", "gee", *gee_args(), timeout=1800)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "preflight passed" in r.stdout


@needs_gee
def test_earth_engine_agrees_with_the_pixel_executor_where_both_serve(tmp_path):
    from cli_runner import run_cli
    from pipelines.preflight import places
    from pipelines.staging import PartitionStore

    where = places(tmp_path, 128)
    runs = {}
    for name, routes in (("gee", ["--modality-backend", "esa_worldcover=gee", "--modality-backend", "aster=gee",
                                  *gee_args()]),
                         ("pc", [])):
        out = tmp_path / name
        r = run_cli("export", where, "--backend", "planetary-computer", *routes, "--out", out, timeout=3600)
        assert r.returncode == 0, r.stdout + r.stderr
        arrays = {}
        for p in sorted((out / "staging").glob("part-*.sqlite")):
            with PartitionStore(p, readonly=True) as st:
                arrays.update({t: st.arrays(t) for t in st.tile_states()})
        runs[name] = arrays
    both = [t for t in runs["gee"] if "esa_worldcover" in runs["gee"][t] and "esa_worldcover" in runs["pc"].get(t, {})]
    assert both, "no fixed place has a Sentinel-2 scene on Planetary Computer"
    for t in both:
        g, p = runs["gee"][t], runs["pc"][t]
        agree = float((g["esa_worldcover"] == p["esa_worldcover"]).mean())
        assert agree > 0.9, (t, agree)                       # the same product, resampled by two services
        dem_g, dem_p = g["aster"][0].astype(np.float64), p["aster"][0].astype(np.float64)
        assert np.corrcoef(dem_g.ravel(), dem_p.ravel())[0, 1] > 0.8 or np.ptp(dem_p) < 10, t
        assert np.median(np.abs(dem_g - dem_p)) < 30, t      # ASTER GDEM vs Copernicus DEM: metres apart
    assert Path(tmp_path / "gee" / "export.json").exists()


@pytest.mark.parametrize("backend, host", [("planetary-computer", "planetarycomputer.microsoft.com"),
                                           ("earth-search", "earth-search.aws.element84.com")])
def test_check_passes_on_a_stac_api(backend, host):
    from cli_runner import run_cli

    if not reachable(host):
        pytest.skip(f"{host} cannot be reached from here")
    r = run_cli("check", "--backend", backend, timeout=1800)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "preflight passed" in r.stdout
