"""The identity of a v001 dataset's content: what a release's manifest, its shards and the dataset card name."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np

from .io_utils import sha256_file


def dataset_identity(h5_path: Path, side: dict[str, Path]) -> str:
    """What defines a dataset's content, cheap to compute on a 600 GB file: its row count, layout, file
    attributes and the sha256 of its side files (tile ids, statistics and splits).

    Args:
        h5_path: the dataset's ``.h5`` file (a release's virtual-dataset file gives the same identity).
        side: the side files by kind (``tile_info``, ``band_stats``, ``splits``).

    Returns:
        16 hex digits.
    """
    with h5py.File(h5_path, "r") as f:
        layout = {k: [str(f[k].dtype), list(f[k].shape)] for k in sorted(f) if isinstance(f[k], h5py.Dataset)}
        attrs = {k: np.asarray(v).tolist() for k, v in sorted(f.attrs.items()) if k != "release"}
    doc = {"layout": layout, "attrs": attrs, "side": {k: sha256_file(p) for k, p in sorted(side.items())}}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def plain(value):
    """An HDF5 attribute as JSON (numbers, strings, lists of them)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return [plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value
