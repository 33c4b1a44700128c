from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from mmearth_data.sample_data import write_sample_dataset

_ENVIRON = dict(os.environ)   # before any test module imports dask


@pytest.fixture(autouse=True)
def _environment_as_it_was():
    """A test that starts a dask cluster in this process leaves dask's pre-spawn environment in ``os.environ``
    (``OMP_NUM_THREADS=1``, ``MALLOC_TRIM_THRESHOLD_=65536``, a fixed ``PYTHONHASHSEED``); every later test's CLI
    run would inherit it, and a malloc trim threshold (which also turns off glibc's adaptive mmap threshold)
    doubles the time of a CPU training run. Each test starts from the environment the session started with."""
    if os.environ != _ENVIRON:
        os.environ.clear()
        os.environ.update(_ENVIRON)
    yield

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures"
TORCHGEO_REF = FIXTURES / "mmearth" / "torchgeo_SYNTHETIC_layout_reference" / "data_1M_v001_64"


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory):
    """``synthetic_dataset(tiles, tile_px, seed, stem)``: the directory of a small synthetic v001 dataset, written
    once per session for each set of arguments; do not modify it (copy it with ``copy_of``)."""
    made: dict[tuple, Path] = {}

    def make(tiles: int, tile_px: int, seed: int, stem: str | None = None) -> Path:
        key = (tiles, tile_px, seed, stem)
        if key not in made:
            d = tmp_path_factory.mktemp(stem or "synthetic")
            write_sample_dataset(d, tiles, tile_px=tile_px, seed=seed, stem=stem)
            made[key] = d
        return made[key]

    return make


@pytest.fixture(scope="session")
def sharded_release(synthetic_dataset, tmp_path_factory):
    """``sharded_release(stem)``: ``<dir>/rel``, a release of the 30-tile dataset ``stem`` (8 tiles per shard, a
    shard file per modality group), written once per session; serve ``<dir>`` to fetch it."""
    made: dict[str, Path] = {}

    def make(stem: str) -> Path:
        if stem not in made:
            from mmearth_data.shards import shard

            made[stem] = tmp_path_factory.mktemp(stem) / "rel"
            shard(synthetic_dataset(30, 32, 3, stem), made[stem], tiles_per_shard=8, split_modalities=True)
        return made[stem]

    return make


def copy_of(src: Path, dst: Path) -> Path:
    """A private copy of a dataset directory that a test may corrupt."""
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="session")
def sample_dir(synthetic_dataset) -> Path:
    """A small synthetic v001 dataset (40 tiles of 32 px), written once per session; do not modify."""
    return synthetic_dataset(40, 32, 1, "data_test_v001")


@pytest.fixture
def sample_copy(sample_dir, tmp_path) -> Path:
    """A private copy of ``sample_dir`` that a test may corrupt."""
    return copy_of(sample_dir, tmp_path / "copy")


_PGSTAC_USED: list[str] = []


@pytest.fixture(scope="session")
def pgstac(tmp_path_factory):
    """A real STAC API (stac-fastapi-pgstac over PostgreSQL + PostGIS) on loopback, for the whole session.

    Skipped, with the reason, only where PostgreSQL cannot run; ``MMEARTH_REQUIRE_PGSTAC=1`` (set by .ci/run)
    turns that skip into a failure, so CI never passes without these tests."""
    import os

    from servers.pgstac import PgStacServer, unavailable

    why = unavailable()
    if why:
        if os.environ.get("MMEARTH_REQUIRE_PGSTAC") == "1":
            pytest.fail(f"pgstac required (MMEARTH_REQUIRE_PGSTAC=1) but cannot run: {why}")
        pytest.skip(f"pgstac STAC API cannot run here: {why}")
    import tempfile

    # not under pytest's tmp dir: that is private to root, and the cluster runs as the postgres user
    workdir = Path(tempfile.mkdtemp(prefix="mmearth-pgstac-"))
    server = PgStacServer(workdir).start()
    _PGSTAC_USED.append(server.url)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


_PGSTAC_TESTS: set[str] = set()


@pytest.hookimpl(tryfirst=True)   # before -m deselects: the marks added here count
def pytest_collection_modifyitems(config, items):
    for item in items:   # every test that needs the STAC API (directly or through a fixture) is marked pgstac
        if "pgstac" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.pgstac)
            _PGSTAC_TESTS.add(item.nodeid)
    if "online" not in (config.getoption("markexpr") or ""):   # the online tier runs only when asked for by name
        skip = pytest.mark.skip(reason="online tier: run pytest -m online (tests/integration/test_online.py says what it needs)")
        for item in items:
            if "online" in item.keywords:
                item.add_marker(skip)


def pytest_terminal_summary(terminalreporter):
    if _PGSTAC_USED:
        passed = [r for r in terminalreporter.stats.get("passed", []) if r.nodeid in _PGSTAC_TESTS]
        terminalreporter.write_line(f"pgstac: stac-fastapi-pgstac ran at {_PGSTAC_USED[0]}; "
                                    f"{len(passed)} STAC tests passed against it")
