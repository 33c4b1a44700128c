"""The configuration objects (issue 29.1): one nested configuration whose identity is field metadata. The data's
identity hashes are those the flat configurations of earlier versions gave (a build made before can be resumed),
run settings never enter them, and flat option names build the nested object."""
from __future__ import annotations

import pytest

from pipelines.backends.gee.options import GeeOptions
from pipelines.build import BuildConfig
from pipelines.export import ExportConfig, identity
from pipelines.settings import flat, run_fields
from pipelines.sources import SourceChoice


def test_build_hashes_are_those_of_the_flat_configuration_before(tmp_path):
    given = tmp_path / "given.csv"
    given.write_text("lon,lat\n1,2\n")
    # computed by the flat BuildConfig of commit 616398d with the same settings
    assert BuildConfig(size=10, size_label="10", out="o", source=SourceChoice(
        "local", "c", gee=GeeOptions(url="u"))).hash() == "bd04b74dc34e957a"
    assert BuildConfig(size=0, size_label="", out="o", locations=str(given), dedupe=True, source=SourceChoice(
        "planetary-computer", modality_backends=("dynamic_world=gee", "aster=local:/c"),
        gee=GeeOptions(project="p", concurrency=7))).hash() == "ae2ddca599e96470"
    assert BuildConfig(size=1000, size_label="1k", out="o", tile_px=64, oversample=1.2, splits=(0.8, 0.1, 0.1),
                       source=SourceChoice("stac", stac_url="http://x/stac", stac_preset="earth-search-c1")
                       ).hash() == "ab54a1cecb3cee62"


def test_run_settings_never_change_the_identity(tmp_path):
    base = BuildConfig(size=10, size_label="10", out="a")
    other = BuildConfig(size=10, size_label="10", out=str(tmp_path), threads=3, attempts=9, timeout_s=5.0,
                        partition_size=7, max_failed="5", preflight=False, source=SourceChoice(
                            sas_token_url="http://t", allow_outside_catalog=True,
                            gee=GeeOptions(project="q", key_file="k", concurrency=3, timeout_s=9.0)))
    assert base.identity() == other.identity()
    run = run_fields(other)
    assert run["gee_project"] == "q" and run["threads"] == 3 and "backend" not in run and "seed" not in run


def test_flat_options_build_the_nested_configuration(tmp_path):
    locations = tmp_path / "l.parquet"
    locations.write_bytes(b"x")
    cfg = ExportConfig.of(locations=str(locations), out="o", backend="local", catalog="c", gee_project="p",
                          gee_concurrency=3, threads=4)
    assert cfg.source == SourceChoice("local", "c", gee=GeeOptions(project="p", concurrency=3))
    assert flat(cfg)["gee_concurrency"] == 3 and flat(cfg)["threads"] == 4
    assert ExportConfig.of(**flat(cfg)) == cfg
    assert identity(cfg)["backend"] == "local" and "gee_project" not in identity(cfg)
    with pytest.raises(TypeError, match="gee_projcet"):
        ExportConfig.of(locations="l", out="o", gee_projcet="p")
