from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mmearth_data.sample_data import write_sample_dataset

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures"
TORCHGEO_REF = FIXTURES / "mmearth" / "torchgeo_SYNTHETIC_layout_reference" / "data_1M_v001_64"


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> Path:
    """A small synthetic v001 dataset (40 tiles of 32 px), written once per session; do not modify."""
    d = tmp_path_factory.mktemp("sample")
    write_sample_dataset(d, 40, tile_px=32, seed=1, stem="data_test_v001")
    return d


@pytest.fixture
def sample_copy(sample_dir, tmp_path) -> Path:
    """A private copy of ``sample_dir`` that a test may corrupt."""
    dst = tmp_path / "copy"
    shutil.copytree(sample_dir, dst)
    return dst
