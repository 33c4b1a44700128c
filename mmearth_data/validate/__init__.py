"""Check a dataset directory against the v001 spec in ``catalogs/modalities.yaml``.

Two levels: *layout* (will MMEarth's and torchgeo's readers load it correctly: names, dtypes, shapes, chunking,
filters, metadata, tile_info ids, splits, band_stats) and *content* (are the values plausible: one-hot rows,
unit-circle encodings, value ranges, class codes). Known third-party deviations that readers tolerate are
warnings; anything that makes a reader fail or read wrong values is an error.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..card import CARD_NAME, card_problems
from ..catalog import load_spec
from ..reader import MMEarthFiles, open_dataset
from .content import ContentChecks
from .layout import LayoutChecks
from .partial import read_download
from .problems import (Problem, as_text, dataset_problems, metadata_problems, nan_stats_message, rows_problem,
                       split_array, split_problems, stats_entry_problems, unknown_stat_bands)
from .report import Finding, Report


def validate(path: str | Path, *, layout_only: bool = False, max_tiles: int | None = 1000, seed: int = 0,
             progress: bool = False) -> Report:
    """Validate a v001 dataset (directory or ``.h5``) and return a :class:`Report`.

    ``max_tiles`` bounds how many tiles' pixels the content check reads (a seeded random subset; ``None``
    reads all); image-level datasets are always read in full. A dataset card beside the data (``README.md``,
    :mod:`mmearth_data.card`) is checked against it: tile count, identity and build hash.
    """
    files = open_dataset(path)
    report = Report(path=str(path), layout_only=layout_only)
    v = LayoutChecks(files, load_spec(), report)
    with files.h5() as f:
        flag = np.asarray(f.attrs.get("unlabelled_tiles", 0))
        if flag.size != 1 or flag.dtype.kind not in "biu":
            report.error("layout", f"file attribute unlabelled_tiles {flag.tolist()!r}: expected a count")
        v.unlabelled_allowed = flag.size == 1 and flag.dtype.kind in "biu" and int(flag) > 0
        v.download = read_download(files, f)   # a downloaded release: its records say which shards it fetched
        v.check_datasets(f)
        v.check_metadata(f)
        report.n_tiles = v.n or 0
        v.check_tile_info()
        v.check_splits()
        v.check_band_stats()
        if not layout_only:
            ContentChecks(v, max_tiles, seed, progress).run()
    if isinstance(files, MMEarthFiles):   # a card beside the data (README.md) must agree with it
        report.findings += [Finding(level, CARD_NAME, msg) for level, msg in card_problems(files)]
    return report


__all__ = ["Finding", "Problem", "Report", "as_text", "dataset_problems", "metadata_problems", "nan_stats_message",
           "rows_problem", "split_array", "split_problems", "stats_entry_problems", "unknown_stat_bands", "validate"]
