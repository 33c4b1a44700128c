"""Builds that survive SIGKILL, whose bytes depend only on what defines the data, of exactly the size asked for,
and that one bad tile or one dead worker never stops. Everything here kills real processes."""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest

from conftest import REPO

spec = importlib.util.spec_from_file_location("crash_resume", REPO / "scripts" / "crash_resume.py")
crash = importlib.util.module_from_spec(spec)
sys.modules["crash_resume"] = crash
spec.loader.exec_module(crash)

SIZE = 40
pytestmark = [pytest.mark.slow, pytest.mark.e2e]   # every test here builds, samples or kills whole runs
FAULT_INJECTION = Path(__file__).parents[1] / "fault_injection"   # its sitecustomize.py patches the CLI's processes


def build(out: Path, *args, env=None, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "mmearth_data.cli", "build", "--size", str(SIZE), "--out", str(out),
                           "--splits", "0.8,0.1,0.1", *map(str, args)], capture_output=True, text=True, timeout=900,
                          env={**os.environ, **(env or {})})
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def dataset_digests(out: Path) -> dict[str, str]:
    return {k: v for k, v in crash.output_digests(out).items() if k.startswith("data_")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The single-machine build every other build here must equal, byte for byte."""
    out = tmp_path_factory.mktemp("ref") / "build"
    build(out, "--scheduler", "threads", "--workers", "1", "--partition-size", "10")
    return out


def test_exactly_the_size_asked_for_with_a_report_that_adds_up(reference):
    with h5py.File(reference / f"data_{SIZE}_v001.h5") as f:
        assert f["sentinel2"].shape[0] == SIZE and f["metadata"].shape[0] == SIZE
    rep = json.loads((reference / "build_report.json").read_text())
    assert rep["final"] == SIZE == sum(b["final"] for b in rep["biomes"])
    assert sum(b["target"] for b in rep["biomes"]) == SIZE
    assert rep["rounds"] >= 1 and rep["exported"] > SIZE          # some tiles were no_s2 and were replaced
    for b in rep["biomes"]:   # stratified as the sampler drew them
        assert b["final"] == b["target"], b
        assert b["sampled"] - sum(b["dropped"].values()) + b["replacements_drawn"] >= b["final"]
    for e in rep["ecoregions"]:
        assert e["final"] <= e["target"] + e["replacements_drawn"]
    ids = json.loads((reference / f"data_{SIZE}_v001_tile_info.json").read_text())
    assert len(ids) == SIZE


def test_bytes_do_not_depend_on_out_scheduler_workers_or_partitions(reference, tmp_path):
    other = tmp_path / "somewhere" / "else"
    build(other, "--scheduler", "processes", "--workers", "2", "--partition-size", "7")
    assert dataset_digests(other) == dataset_digests(reference)
    assert len(dataset_digests(reference)) == 5   # .h5, three JSON side files, the GeoParquet tile index


def test_sigkill_at_random_instants_then_resume_gives_the_same_bytes_and_no_orphans(tmp_path):
    result = crash.crash_resume(tmp_path, kills=5, size=60, partition_size=15, seed=1)
    assert result.kills == 5
    assert not result.orphans, result.summary()
    assert not result.mismatched, result.summary()


def test_a_recipe_that_raises_fails_one_tile_and_the_build_goes_on(reference, tmp_path):
    """A test-only fault (tests/fault_injection: MMEARTH_DATA_TEST_RAISE) makes the canopy recipe raise for one
    tile: that tile gets one failed row (internal, with the traceback in the ledger), the others end done, and it is
    replaced."""
    out = tmp_path / "raising"
    loc = json.loads((reference / f"data_{SIZE}_v001_tile_info.json").read_text())
    victim = sorted(loc)[3]
    from pipelines.recipes import load_sources

    fault = {"MMEARTH_DATA_TEST_RAISE": f"{load_sources('local')['canopy_height'].collection}:{victim}",
             "PYTHONPATH": os.pathsep.join(filter(None, [str(FAULT_INJECTION), os.environ.get("PYTHONPATH")]))}
    proc = build(out, "--workers", "1", "--max-failed", "1", env=fault)
    from pipelines.staging import PartitionStore

    rows = []
    for p in sorted((out / "work").glob("export*/staging/*.sqlite")):
        with PartitionStore(p, readonly=True) as store:
            rows += store.ledger()
            states = store.tile_states()
            if victim in states:
                assert states[victim] == "failed"
                assert all(s in ("done", "no_s2") for t, s in states.items() if t != victim)
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["tile_id"] == victim and failed[0]["error_class"] == "internal"
    assert "RuntimeError" in failed[0]["message"] and "Traceback" in failed[0]["message"]
    assert "Traceback" not in proc.stdout + proc.stderr           # the console gets one line per reason
    with h5py.File(out / f"data_{SIZE}_v001.h5") as f:
        assert f["sentinel2"].shape[0] == SIZE
    assert victim not in json.loads((out / f"data_{SIZE}_v001_tile_info.json").read_text())
    strict = build(tmp_path / "strict", "--workers", "1", "--max-failed", "0", check=False, env=fault)
    assert strict.returncode == 1 and "failed:internal" in strict.stderr


def test_second_run_on_the_same_out_is_refused_and_a_stale_lock_is_not(tmp_path):
    out = tmp_path / "locked"
    cmd = [sys.executable, "-m", "mmearth_data.cli", "build", "--size", "30", "--out", str(out), "--workers", "2",
           "--resume"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 60
    while not (out / "work" / "locations.parquet").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert second.returncode == 2 and f"pid {first.pid}" in second.stderr and len(second.stderr.splitlines()) == 1
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert crash.wait_group_gone(first.pid, 10.0), "a worker of the killed build outlived it"
    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]


def _dask(*args: str, cwd: Path) -> subprocess.Popen:
    exe = Path(sys.executable).parent / "dask"
    return subprocess.Popen([str(exe), *args], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def test_tcp_cluster_survives_a_worker_killed_during_the_export(reference, tmp_path):
    sched_file = tmp_path / "scheduler.json"
    procs = [_dask("scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard", "--scheduler-file",
                   str(sched_file), cwd=tmp_path)]
    try:
        deadline = time.monotonic() + 60
        while not sched_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        address = json.loads(sched_file.read_text())["address"]
        workers = [_dask("worker", address, "--nthreads", "1", "--no-nanny", "--no-dashboard", "--host", "127.0.0.1",
                         cwd=tmp_path) for _ in range(2)]
        procs += workers
        out = tmp_path / "cluster"
        run = subprocess.Popen([sys.executable, "-m", "mmearth_data.cli", "build", "--size", str(SIZE), "--out",
                                str(out), "--splits", "0.8,0.1,0.1", "--scheduler", address, "--partition-size", "10"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        staging = out / "work" / "export" / "staging"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and run.poll() is None:
            if len(list(staging.glob("*.sqlite"))) >= 2:
                break
            time.sleep(0.1)
        time.sleep(1.0)
        workers[0].send_signal(signal.SIGKILL)   # mid-export: its partition is rerun on the other worker
        workers[0].wait()
        text, _ = run.communicate(timeout=900)
        assert run.returncode == 0, text[-3000:]
        assert dataset_digests(out) == dataset_digests(reference)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()


def test_sample_killed_then_resumed_gives_the_same_bytes(tmp_path):
    args = ["--size", "30k", "--seed", "4", "--threads", "1"]
    ref = tmp_path / "ref.parquet"
    subprocess.run([sys.executable, "-m", "mmearth_data.cli", "sample", *args, "--out", str(ref)], check=True,
                   capture_output=True, timeout=600)
    out = tmp_path / "killed.parquet"
    cmd = [sys.executable, "-m", "mmearth_data.cli", "sample", *args, "--out", str(out), "--resume"]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    time.sleep(2.5)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert crash.wait_group_gone(p.pid)
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0 and out.read_bytes() == ref.read_bytes()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert "already complete" in again.stdout and out.read_bytes() == ref.read_bytes()


@pytest.mark.parametrize("command", [["build", "--size", "60"], ["pretrain", "--input-size", "56", "--epochs", "50"]])
def test_ctrl_c_says_to_rerun_with_resume_and_exits_130(command, tmp_path, synthetic_dataset):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) during a build or a pretraining run:
    click said only "aborted"; the run now says how to go on, as shard and download do."""
    out = tmp_path / "run"
    data = synthetic_dataset(32, 64, 1)
    args = [*command, "--out", str(out)] + (["--data", str(data)] if command[0] == "pretrain" else [])
    proc = subprocess.Popen([sys.executable, "-m", "mmearth_data.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    started = out / ("work" if command[0] == "build" else "losses.csv")
    deadline = time.monotonic() + 120
    while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    assert proc.poll() is None, proc.communicate()
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == "interrupted: run the same command with --resume to continue"
