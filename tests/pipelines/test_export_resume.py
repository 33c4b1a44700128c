"""Kill an export with SIGKILL mid-run, resume it: the staged data equals an uninterrupted run's, and committed
tiles are not redone. Also: the same export on a distributed LocalCluster gives the same bytes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from pipelines.export import ExportConfig, run_export
from stac_factory import committed, ledger_digest, tile_infos, write_locations_parquet

N = 24


@pytest.mark.slow
@pytest.mark.e2e
def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path):
    locations = write_locations_parquet(tmp_path / "loc.parquet", N, seed=5)
    cmd = [sys.executable, "-m", "mmearth_data.cli", "export", str(locations), "--backend", "synthetic",
           "--out", str(tmp_path / "killed"), "--tile-px", "32", "--partition-size", "8", "--workers", "1",
           "--threads", "2"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while len(committed(tmp_path / "killed")) < 5 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = committed(tmp_path / "killed")
    assert 5 <= len(before) < N, "the kill should land mid-run"

    resumed = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    after = committed(tmp_path / "killed")
    assert len(after) == N
    assert {t: after[t] for t in before} == before            # committed tiles were not redone

    run_export(ExportConfig.of(locations=str(locations), out=str(tmp_path / "straight"), backend="synthetic",
                            tile_px=32, partition_size=8, threads=2))
    assert ledger_digest(tmp_path / "killed") == ledger_digest(tmp_path / "straight")
    assert tile_infos(tmp_path / "killed") == tile_infos(tmp_path / "straight")
    status = subprocess.run([sys.executable, "-m", "mmearth_data.cli", "status", str(tmp_path / "killed"), "--json"],
                            capture_output=True, text=True, check=True)
    summary = json.loads(status.stdout)
    assert summary["final"] == N and summary["partitions_complete"] == 3 and summary["pending"] == 0


@pytest.mark.slow
def test_local_cluster_gives_the_same_bytes_as_threads(tmp_path):
    locations = write_locations_parquet(tmp_path / "loc.parquet", 8, seed=6)
    runs = {}
    for scheduler in ("threads", "local-cluster"):
        out = tmp_path / scheduler
        run_export(ExportConfig.of(locations=str(locations), out=str(out), backend="synthetic", tile_px=32,
                                partition_size=4), scheduler=scheduler, workers=2)
        runs[scheduler] = ledger_digest(out)
    assert runs["threads"] == runs["local-cluster"] and len(runs["threads"]) >= 8
