"""The dataset card (README.md beside the data): written by build and shard, listed in a release's manifest, checked
by validate, and the same bytes for the same data wherever and however it was built."""
from __future__ import annotations

import json
import shlex

import pytest
import yaml

from cli_runner import run_cli as cli
from mmearth_data import open_dataset, validate
from mmearth_data.card import read_card, rebuild_command, write_card
from mmearth_data.card_text import size_category
from mmearth_data.releases import download_release, verify
from mmearth_data.sample_data import write_sample_dataset

STEM = "data_24_v001"


def front_matter(path) -> dict:
    text = path.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("\n---\n", 1)[0][4:])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A synthetic build (offline default), 1 worker."""
    out = tmp_path_factory.mktemp("card") / "first"
    run = cli("build", "--size", "24", "--out", out, "--splits", "0.8,0.1,0.1", "--workers", "1")
    assert run.returncode == 0, run.stderr
    return out


@pytest.mark.e2e
@pytest.mark.slow
def test_build_writes_a_card_that_states_the_data(built):
    meta = front_matter(built / "README.md")
    facts = meta["mmearth_data"]
    assert meta["license"] == "cc-by-4.0" and meta["size_categories"] == ["n<1K"] and "synthetic" in meta["tags"]
    assert meta["task_categories"] and meta["pretty_name"].startswith("MMEarth v001")
    build = yaml.safe_load((built / "build.yaml").read_text())
    info = json.loads((built / f"{STEM}_tile_info.json").read_text())
    assert facts["tiles"] == len(info) == 24 and facts["build_config_hash"] == build["config_hash"]
    assert sum(b["tiles"] for b in facts["biomes"]) == 24
    assert facts["sources"]["labels"]["licence"] == "CC-BY-4.0"
    assert all(r["licence"] == "CC0-1.0" for m, r in facts["sources"].items() if m != "labels")
    report = json.loads((built / "build_report.json").read_text())
    dropped = sum(sum(b["dropped"].values()) for b in report["biomes"])
    assert facts["report"]["exported"] == report["exported"] and sum(facts["report"]["dropped"].values()) == dropped
    text = (built / "README.md").read_text()
    for section in ("## How it was built", "### Sources and licences", "## Tiles per biome",
                    "## What is missing and why", "## Rebuild", "## Load", "## Citation", "nedungadi2024mmearth"):
        assert section in text
    assert str(built) not in text and str(built.parent) not in text   # no path of the machine that built it
    assert validate(built).ok


@pytest.mark.e2e
@pytest.mark.slow
def test_card_bytes_do_not_depend_on_workers_or_paths_and_its_command_rebuilds_the_data(built, tmp_path):
    command = next(line for line in (built / "README.md").read_text().splitlines()
                   if line.startswith("mmearth-data build "))
    again = tmp_path / "elsewhere" / "second"
    args = [a if a != "DIR" else str(again) for a in shlex.split(command)[1:]] + ["--workers", "2"]
    run = cli(*args)
    assert run.returncode == 0, run.stderr
    assert (again / "README.md").read_bytes() == (built / "README.md").read_bytes()
    assert (again / f"{STEM}.h5").read_bytes() == (built / f"{STEM}.h5").read_bytes()


@pytest.mark.e2e
@pytest.mark.slow
def test_shard_lists_the_card_download_carries_it_and_verify_checks_it(built, tmp_path):
    rel = tmp_path / "rel"
    run = cli("shard", built, "--out", rel, "--tiles-per-shard", "10")
    assert run.returncode == 0, run.stderr
    card = read_card(rel / "README.md")
    assert card["identity"] == read_card(built / "README.md")["identity"] == \
        json.loads((rel / "manifest.json").read_text())["identity"]
    assert card["release"] == {"tiles_per_shard": 10, "shards": {"all": 3}}
    assert card["build"] == read_card(built / "README.md")["build"]   # the build's facts travel with the data
    assert "## Release" in (rel / "README.md").read_text()
    listed = {f["name"]: f for f in json.loads((rel / "manifest.json").read_text())["files"]}
    assert listed["README.md"]["kind"] == "side"
    assert validate(rel).ok
    got = tmp_path / "got"
    download_release(str(rel / "manifest.json"), got, log=lambda s: None)
    assert (got / "README.md").read_bytes() == (rel / "README.md").read_bytes()
    assert verify(got, log=lambda s: None).ok
    with open(got / "README.md", "a") as fh:
        fh.write("edited\n")
    assert verify(got, log=lambda s: None).corrupt == ["README.md"]


@pytest.mark.e2e
@pytest.mark.slow
def test_validate_fails_on_a_card_that_disagrees_and_passes_without_one(built, tmp_path):
    import shutil

    d = tmp_path / "copy"
    shutil.copytree(built, d, ignore=shutil.ignore_patterns("work"))
    card = d / "README.md"
    card.write_text(card.read_text().replace("\n  tiles: 24\n", "\n  tiles: 25\n", 1))
    run = cli("validate", d)
    errors = [line for line in run.stdout.splitlines() if line.startswith("ERROR")]
    assert run.returncode == 1 and len(errors) == 1
    assert "README.md" in errors[0] and "tiles 25" in errors[0] and "24" in errors[0]
    card.write_text((built / "README.md").read_text().replace(read_card(built / "README.md")["identity"],
                                                               "0123456789abcdef"))
    assert any("identity" in e.message for e in validate(d).errors)
    card.write_text("---\nmmearth_data: [\n---\n# a damaged card\n")
    (error,) = validate(d).errors
    assert error.where == "README.md" and "not valid YAML" in error.message and "\n" not in error.message
    card.unlink()
    assert validate(d).ok   # a dataset without a card (older data, foreign files) is fine


def test_a_readme_of_someone_elses_is_left_alone_and_not_checked(tmp_path):
    write_sample_dataset(tmp_path, 8, tile_px=32, seed=1, stem="data_s_v001")
    (tmp_path / "README.md").write_text("# my notes\n")
    assert write_card(open_dataset(tmp_path)) is None
    assert (tmp_path / "README.md").read_text() == "# my notes\n" and validate(tmp_path).ok
    (tmp_path / "README.md").unlink()
    written = write_card(open_dataset(tmp_path))   # no build, no source plan: what the data says
    facts = read_card(written)
    assert facts["tiles"] == 8 and "build" not in facts and validate(tmp_path).ok
    assert front_matter(written)["license"] == "unknown"   # the sources' licences are not recorded


def test_rebuild_command_names_no_local_path_and_size_categories():
    cmd = rebuild_command({"size_label": "", "backend": "local", "catalog": "CATALOG", "tile_px": 96, "seed": 3,
                           "splits": [0.8, 0.1, 0.1], "allow_unlabelled": True, "dedupe": False,
                           "locations_sha256": "ab" * 32, "modality_backends": ["dynamic_world=gee"], "format": "v001"})
    assert cmd == ("mmearth-data build --backend local --catalog CATALOG --tile-px 96 --seed 3 --splits 0.8,0.1,0.1 "
                   "--allow-unlabelled --locations PLACES --modality-backend dynamic_world=gee --out DIR")
    from mmearth_data.card import public_build

    assert public_build({"catalog": "/home/me/cat.json", "modality_backends": ["aster=local:/data/c.json",
                                                                              "era5=stac:https://x.org/api"]}) == \
        {"catalog": "CATALOG", "modality_backends": ["aster=local:CATALOG", "era5=stac:https://x.org/api"]}
    assert [size_category(n) for n in (5, 1000, 123_456, 1_200_000)] == ["n<1K", "1K<n<10K", "100K<n<1M", "1M<n<10M"]
