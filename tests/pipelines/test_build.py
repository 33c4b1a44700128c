"""``mmearth-data build`` end to end on the synthetic backend (sample -> export -> pack), resume, dry run."""
from __future__ import annotations

import pytest
import yaml

from cli_runner import run_cli as cli
from mmearth_data import MMEarthDataset, validate


@pytest.mark.e2e
@pytest.mark.slow
def test_build_end_to_end_then_resume_is_a_no_op(tmp_path):
    out = tmp_path / "b"
    first = cli("build", "--size", "30", "--out", out, "--splits", "0.8,0.1,0.1", "--workers", "2")
    assert first.returncode == 0, first.stderr
    assert "[3/3] pack" in first.stdout and "built " in first.stdout
    assert validate(out).ok
    ds = MMEarthDataset(out, split="train")
    assert len(ds) > 10 and ds[0]["sentinel2"].shape == (13, 128, 128)
    cfg = yaml.safe_load((out / "build.yaml").read_text())
    assert cfg["mmearth_build"]["backend"] == "synthetic" and len(cfg["config_hash"]) == 16
    h5 = out / "data_30_v001.h5"
    import h5py

    with h5py.File(h5) as f:
        assert f.attrs["build_config_hash"] == cfg["config_hash"] and f.attrs["synthetic"]
    before = h5.read_bytes()
    again = cli("build", "--size", "30", "--out", out, "--splits", "0.8,0.1,0.1", "--resume")
    assert again.returncode == 0, again.stderr
    assert h5.read_bytes() == before                                   # same bytes from the same staging
    refused = cli("build", "--size", "30", "--out", out)
    assert refused.returncode == 2 and "add --resume" in refused.stderr
    other = cli("build", "--size", "30", "--out", out, "--seed", "1", "--resume")
    assert other.returncode == 2 and "different settings (seed" in other.stderr


def test_dry_run_and_unbuilt_backends(tmp_path):
    dry = cli("build", "--size", "100k", "--out", tmp_path / "x", "--dry-run", "--tile-px", "64")
    assert dry.returncode == 0 and "data_100k_v001_64" in dry.stdout and "GB packed" in dry.stdout
    assert not (tmp_path / "x").exists()
    gee = cli("build", "--size", "1k", "--backend", "gee", "--out", tmp_path / "y")
    assert gee.returncode == 2 and "--gee-project" in gee.stderr and gee.stderr.count("\n") == 1
    assert not (tmp_path / "y").exists()
