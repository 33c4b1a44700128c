import hashlib
import subprocess
import sys

import geopandas as gpd
import pytest

from mmearth_data import MMEarthError
from mmearth_data.download import download
from sampling import load_ecoregions
from sampling.ecoregions import download_ecoregions

from conftest import FIXTURES
from servers.http_range import RangeServer


@pytest.fixture
def served(tmp_path):
    """A zip of a few real RESOLVE ecoregions, served from loopback."""
    root = tmp_path / "www"
    root.mkdir()
    src = gpd.read_file(FIXTURES / "ecoregions" / "resolve_ecoregions2017_simplified" / "Ecoregions2017.shp")
    shp_dir = tmp_path / "shp"
    shp_dir.mkdir()
    src[src.ECO_ID.isin(["842", "27", "271"])].to_file(shp_dir / "Ecoregions2017.shp")
    import zipfile

    with zipfile.ZipFile(root / "Ecoregions2017.zip", "w") as z:
        for p in sorted(shp_dir.iterdir()):
            z.write(p, p.name)
    data = (root / "Ecoregions2017.zip").read_bytes()
    with RangeServer(root) as server:
        yield server, data


def test_download_retries_faults_and_resumes(served, tmp_path):
    server, data = served
    server.faults = [None, ("status", 503), ("truncate", 1000), ("status", 429), ("truncate", 500)]
    dest = tmp_path / "cache" / "x.zip"
    sha = download(f"{server.url}/Ecoregions2017.zip", dest, backoff=0.01)
    assert dest.read_bytes() == data and sha == hashlib.sha256(data).hexdigest()
    assert (tmp_path / "cache" / "x.zip.sha256").read_text().startswith(sha)
    ranges = [r["range"] for r in server.requests]
    last = f"{len(data) - 1}"
    assert ranges == ["bytes=0-0", f"bytes=0-{last}", f"bytes=0-{last}", f"bytes=1000-{last}", f"bytes=1000-{last}",
                      f"bytes=1500-{last}"]   # a size probe, then resumed where the written bytes end, not restarted
    assert not (tmp_path / "cache" / "x.zip.partial").exists()


def test_server_ignoring_range_restarts_cleanly(served, tmp_path):
    server, data = served
    server.faults = [None, ("truncate", 700), ("no-range",)]
    dest = tmp_path / "y.zip"
    download(f"{server.url}/Ecoregions2017.zip", dest, backoff=0.01)
    assert dest.read_bytes() == data


def test_checksum_mismatch_and_permanent_errors(served, tmp_path):
    server, _ = served
    with pytest.raises(MMEarthError, match="checksum mismatch"):
        download(f"{server.url}/Ecoregions2017.zip", tmp_path / "z.zip", sha256="0" * 64)
    assert not (tmp_path / "z.zip").exists() and not (tmp_path / "z.zip.partial").exists()
    with pytest.raises(MMEarthError, match="HTTP 404"):
        download(f"{server.url}/missing.zip", tmp_path / "m.zip")
    server.faults = [("status", 503)] * 3
    with pytest.raises(MMEarthError, match="gave up after 3 attempts"):
        download(f"{server.url}/Ecoregions2017.zip", tmp_path / "g.zip", retries=2, backoff=0.01)


def test_ecoregions_download_feeds_the_sampler(served, tmp_path):
    server, _ = served
    path, sha = download_ecoregions(tmp_path / "cache", f"{server.url}/Ecoregions2017.zip", backoff=0.01)
    eco = load_ecoregions(path)
    assert sorted(eco.frame.eco_id) == [27, 271, 842] and eco.sha256 == sha
    out = subprocess.run([sys.executable, "-m", "mmearth_data.cli", "ecoregions", "download", "--cache",
                          str(tmp_path / "c2"), "--url", f"{server.url}/Ecoregions2017.zip"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "c2" / "ecoregions" / "Ecoregions2017.zip").is_file() and "sha256" in out.stdout
