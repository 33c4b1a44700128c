"""``mmearth-data export`` / ``status``: one-line errors naming the input, nothing already written is lost."""
from __future__ import annotations

import json
from functools import partial

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cli_runner import run_cli
from stac_factory import write_locations_parquet

cli = partial(run_cli, timeout=300)


def test_help_lists_the_options():
    out = cli("export", "--help")
    assert out.returncode == 0
    for opt in ("--backend", "--catalog", "--resume", "--scheduler", "--partition-size", "--threads", "--attempts"):
        assert opt in out.stdout


@pytest.mark.parametrize("args, message", [
    (["export", "missing.parquet", "--out", "{tmp}/o"], "locations file not found"),
    (["export", "{tmp}/bad.parquet", "--out", "{tmp}/o"], "missing column(s) lat"),
    (["export", "{tmp}/loc.parquet", "--out", "{tmp}/o", "--backend", "local"], "--backend local needs --catalog"),
    (["export", "{tmp}/loc.parquet", "--out", "{tmp}/o", "--backend", "local", "--catalog", "{tmp}/nocat"],
     "no catalog.json there"),
    (["status", "{tmp}"], "not an export directory"),
])
def test_bad_input_is_one_line(tmp_path, args, message):
    write_locations_parquet(tmp_path / "loc.parquet", 3)
    pq.write_table(pa.table({"tile_id": ["a"], "lon": [1.0]}), tmp_path / "bad.parquet")   # neither sampled nor given
    out = cli(*[a.format(tmp=tmp_path) for a in args])
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1 and message in out.stderr and "Traceback" not in out.stderr


@pytest.mark.e2e
@pytest.mark.slow
def test_export_refuses_to_overwrite_and_resume_checks_settings(tmp_path):
    loc = write_locations_parquet(tmp_path / "loc.parquet", 4, seed=2)
    first = cli("export", loc, "--out", tmp_path / "o", "--tile-px", "32", "--partition-size", "2")
    assert first.returncode == 0, first.stderr
    assert "4/4 tiles final" in first.stdout
    before = sorted(p.name for p in (tmp_path / "o" / "staging").iterdir())
    again = cli("export", loc, "--out", tmp_path / "o", "--tile-px", "32", "--partition-size", "2")
    assert again.returncode == 2 and "add --resume" in again.stderr
    other = cli("export", loc, "--out", tmp_path / "o", "--tile-px", "40", "--partition-size", "2", "--resume")
    assert other.returncode == 2 and "different settings (tile_px)" in other.stderr
    assert sorted(p.name for p in (tmp_path / "o" / "staging").iterdir()) == before     # nothing lost
    resumed = cli("export", loc, "--out", tmp_path / "o", "--tile-px", "32", "--partition-size", "2", "--resume")
    assert resumed.returncode == 0 and "4/4 tiles final" in resumed.stdout
    status = json.loads(cli("status", tmp_path / "o", "--json").stdout)
    assert status["tiles"] == 4 and status["partitions_complete"] == 2
    assert not any((tmp_path / "o" / "synthetic" / "tiles").iterdir())                 # sources released
    export_json = json.loads((tmp_path / "o" / "export.json").read_text())
    assert export_json["identity"]["backend"] == "synthetic" and len(export_json["config_hash"]) == 16


def test_a_bad_catalog_leaves_no_export_behind(tmp_path):
    loc = write_locations_parquet(tmp_path / "loc.parquet", 2)
    out = cli("export", loc, "--out", tmp_path / "o", "--backend", "local", "--catalog", tmp_path / "nope")
    assert out.returncode == 2 and not (tmp_path / "o" / "export.json").exists()
