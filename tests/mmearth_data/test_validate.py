import json
import subprocess
import sys

import h5py
import numpy as np
import pytest

from mmearth_data import validate

from conftest import TORCHGEO_REF


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "mmearth_data.cli", *map(str, args)], capture_output=True, text=True)


def messages(report, level="error"):
    return "\n".join(str(f) for f in report.findings if f.level == level)


def test_own_output_passes_cleanly(sample_dir):
    report = validate(sample_dir, max_tiles=None)
    assert report.ok, report.format_text()
    # 32 px is not a published tile size: the only remark
    assert [f.where for f in report.warnings] == ["layout"]
    assert report.n_tiles == 40 and report.tiles_checked == 40


def test_torchgeo_reference_passes_layout_with_warnings():
    report = validate(TORCHGEO_REF, layout_only=True)
    assert report.ok, report.format_text()
    warned = messages(report, "warning")
    assert "month: dtype int32 instead of float32" in warned
    assert "sentinel2_scl: dtype uint16 instead of uint8" in warned
    assert "fields are named ('meta_id', 'S2_type')" in warned
    assert "contiguous storage" in warned


def test_torchgeo_reference_random_values_fail_content_checks():
    # The fixture is SYNTHETIC with random values: its biome rows are all-zero or all-one, which would give a
    # reader argmax 0 for every tile. The content check must say so.
    report = validate(TORCHGEO_REF)
    errs = messages(report)
    assert "biome: 10 of 10 rows are not one-hot" in errs
    assert "lat: 10 of 10 rows are not (sin, cos) pairs" in errs


def corrupt(path, name, fn):
    with h5py.File(next(path.glob("*.h5")), "r+") as f:
        fn(f, name)


@pytest.mark.parametrize("mutate,expect", [
    (lambda f, n: f.__delitem__("aster"), "aster: dataset missing"),
    (lambda f, n: (f.__delitem__("month"), f.create_dataset("month", data=np.zeros((40, 2), "f8"))),
     "month: dtype float64, expected float32"),
    (lambda f, n: (f.__delitem__("lat"), f.create_dataset("lat", data=np.zeros((40, 3), "f4"))),
     "lat: shape (40, 3), expected (N, 2)"),
    (lambda f, n: (f.__delitem__("era5"), f.create_dataset("era5", data=np.zeros((39, 12), "f4"))),
     "era5: 39 rows, the other datasets have 40"),
    (lambda f, n: f["biome"].__setitem__(3, np.ones(14, "u1")), "biome: 1 of 40 rows are not one-hot"),
    (lambda f, n: f["dynamic_world"].__setitem__((5, 0, 0, 0), 12), "dynamic_world: 1 of 40 checked tiles hold codes"),
    (lambda f, n: f["lon"].__setitem__(7, np.array([0.5, 0.5], "f4")), "lon: 1 of 40 rows are not (sin, cos)"),
    (lambda f, n: f["metadata"].__setitem__(2, (b"0", b"l2a")), "duplicate tile_id"),
    (lambda f, n: f["metadata"].__setitem__(2, (b"x2", b"L2A")), "S2_type 'L2A' in rows 2"),
])
def test_corrupted_h5_fails_with_clear_message(sample_copy, mutate, expect):
    corrupt(sample_copy, None, mutate)
    report = validate(sample_copy, max_tiles=None)
    assert not report.ok
    assert expect in messages(report), report.format_text()


def edit_json(path, kind, fn):
    p = next(path.glob(f"*_{kind}.json"))
    obj = json.loads(p.read_text())
    fn(obj)
    p.write_text(json.dumps(obj))


@pytest.mark.parametrize("kind,mutate,expect", [
    ("tile_info", lambda d: d.pop("3"), "1 tile_id(s) of metadata have no record, e.g. ['3']"),
    ("tile_info", lambda d: d.__setitem__("zz", {"S2_type": "l1c"}), "1 record(s) for tile_ids not in metadata"),
    ("tile_info", lambda d: d["4"].pop("S2_type"), "1 record(s) lack 'S2_type'"),
    ("splits", lambda d: d["val"].append(d["train"][0]), "'train' and 'val' share 1 row(s)"),
    ("splits", lambda d: d["test"].append(40), "'test' holds rows outside 0..39: 40"),
    ("splits", lambda d: d.pop("val"), "key 'val' missing"),
    ("band_stats", lambda d: d["sentinel1"]["std"].pop(), "sentinel1.std: length 7, expected a list of 8"),
    ("band_stats", lambda d: d.pop("aster"), "key 'aster' missing (needed to normalize aster)"),
])
def test_corrupted_side_files_fail(sample_copy, kind, mutate, expect):
    edit_json(sample_copy, kind, mutate)
    report = validate(sample_copy)
    assert not report.ok and expect in messages(report), report.format_text()


def test_cli_exit_codes_and_json(sample_copy):
    ok = run_cli("validate", sample_copy, "--json")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    data = json.loads(ok.stdout)
    assert data["ok"] and data["n_errors"] == 0 and data["n_tiles"] == 40
    corrupt(sample_copy, None, lambda f, n: f.__delitem__("sentinel1"))
    bad = run_cli("validate", sample_copy)
    assert bad.returncode == 1 and "sentinel1: dataset missing" in bad.stdout and "FAILED" in bad.stdout
    missing = run_cli("validate", sample_copy / "nope")
    assert missing.returncode == 2 and missing.stderr.strip().count("\n") == 0 and "no such file" in missing.stderr


def test_missing_side_file_is_an_error(sample_copy):
    next(sample_copy.glob("*_splits.json")).unlink()
    report = validate(sample_copy)
    assert "splits.json: missing" in messages(report)
