"""The content checks of ``validate``: are the values plausible (one-hot rows, unit-circle encodings, value
ranges, class codes, statistics that are numbers where the data has values)."""
from __future__ import annotations

import numpy as np

from ..catalog import DatasetSpec
from ..reader import covered
from .layout import BLOCK, LayoutChecks
from .problems import examples, nan_stats_message


class ContentChecks:
    """Reads the datasets the layout checks found readable: image-level ones in full, the pixels of ``max_tiles``
    tiles (a seeded random subset; None: all)."""

    def __init__(self, layout: LayoutChecks, max_tiles: int | None, seed: int, progress: bool):
        self.layout, self.spec, self.r = layout, layout.spec, layout.r
        self.max_tiles, self.seed, self.progress = max_tiles, seed, progress
        self.gaps_reported: set[str] = set()

    def run(self) -> None:
        if not self.layout.rows_stored:
            return   # reported: reading rows the file does not hold would allocate for each of them
        image = [k for k, d in self.layout.present.items() if not self.spec.datasets[k].is_pixel]
        pixel = [k for k, d in self.layout.present.items() if self.spec.datasets[k].is_pixel]
        rows = self.layout.rows("metadata")   # all rows, or those a partial download holds
        n = len(rows)
        if self.max_tiles is not None and n > self.max_tiles:
            rows = np.sort(np.random.default_rng(self.seed).choice(rows, self.max_tiles, replace=False))
        self.r.tiles_checked = len(rows)
        total = len(image) * max(1, -(-n // BLOCK)) + len(pixel) * len(rows)
        bar = _progress(total, self.progress)
        try:
            for name in image:
                self._check_image(name, bar)
            for name in pixel:
                self._check_pixel(name, rows, bar)
        finally:
            bar.close()

    def _check_image(self, name: str, bar) -> None:
        ds, d = self.spec.datasets[name], self.layout.present[name]
        bad_rows: list[np.ndarray] = []
        problem = ""
        unlabelled = 0
        ranges = self.layout.ranges(name)
        for start, stop in ((s, min(b, s + BLOCK)) for a, b in ranges for s in range(a, b, BLOCK)):
            a = d[start:stop]
            if ds.one_hot:
                bad = (a.sum(axis=1, dtype=np.int64) != 1) | (a.max(axis=1) != 1)
                problem = "are not one-hot (exactly one 1 per row)"
                if self.layout.unlabelled_allowed:   # given locations kept without a label: all-zero rows, flagged
                    flagged = (a.sum(axis=1, dtype=np.int64) == 0) & np.isin(
                        np.arange(start, start + len(a)), self.layout.unlabelled_rows)
                    unlabelled += int(flagged.sum())
                    bad &= ~flagged
            elif ds.bands[0].startswith("sin"):
                x = a.astype(np.float64)
                bad = (np.abs(x) > 1 + 1e-6).any(axis=1) | (np.abs(x[:, 0] ** 2 + x[:, 1] ** 2 - 1) > 1e-3)
                problem = "are not (sin, cos) pairs on the unit circle"
                self._check_gaps(ds, None, ~np.isfinite(x), start)
            else:
                miss = ds.missing_mask(a)
                lo, hi = ds.valid_range or (-np.inf, np.inf)
                bad = (((a < lo) | (a > hi)) & ~miss).any(axis=1) if miss is not None else ((a < lo) | (a > hi)).any(axis=1)
                problem = f"hold values outside {lo}..{hi}"
                self._check_gaps(ds, None, miss if miss is not None else np.zeros(a.shape, bool), start)
            idx = np.flatnonzero(bad)
            if idx.size:
                bad_rows.append(idx + start)
            bar.update(1)
        if bad_rows:
            idx = np.concatenate(bad_rows)
            self.r.error(name, f"{idx.size} of {covered(ranges)} rows {problem}, e.g. rows {examples(idx)}")
        if unlabelled:
            self.r.warn(name, f"{unlabelled} row(s) are all zero: given locations kept without a label "
                              "(--allow-unlabelled; tile_info says unlabelled)")

    def _check_pixel(self, name: str, rows: np.ndarray, bar) -> None:
        ds, d = self.spec.datasets[name], self.layout.present[name]
        nodata = d.attrs.get("nodata")
        nodata = None if nodata is None else np.asarray(nodata).item()
        allowed = None
        if ds.classes:
            allowed = np.array([c for c, _ in ds.classes] + [v for v in ds.missing_values if float(v).is_integer()])
        bad_rows, example = [], None
        if name in self.layout.held:   # a partial download: the rows this dataset's shards hold
            rows = rows[np.isin(rows, self.layout.rows(name))]
        for i in rows:
            a = d[int(i)]
            if allowed is not None:
                bad = ~np.isin(a, allowed)
            else:
                miss = ds.missing_mask(a, nodata)
                lo, hi = ds.valid_range or (-np.inf, np.inf)
                bad = (a < lo) | (a > hi)
                if miss is not None:
                    bad &= ~miss
                s2 = self.layout.s2_type(int(i)) if ds.stats_split_by else None
                self._check_gaps(ds, s2, (miss if miss is not None else np.zeros(a.shape, bool))[None], int(i))
            if bad.any():
                bad_rows.append(int(i))
                example = a[bad].flat[0] if example is None else example
            bar.update(1)
        if bad_rows:
            what = f"codes outside {sorted(allowed.tolist())}" if allowed is not None else f"values outside {ds.valid_range}"
            self.r.error(name, f"{len(bad_rows)} of {len(rows)} checked tiles hold {what} "
                               f"(e.g. {example!r} in row {bad_rows[0]})")


    def _check_gaps(self, ds: DatasetSpec, s2: str | None, miss: np.ndarray, first_row: int) -> None:
        """Error once per band_stats key where its statistics are not numbers for a band holding valid values
        in ``miss`` (rows x bands x ...), the no-data mask of rows from ``first_row``."""
        gap = self.layout.stat_gaps.get((ds.name, s2))
        if gap is None or gap[0] in self.gaps_reported:
            return
        key, bands = gap
        valid = ~miss[:, bands].reshape(miss.shape[0], len(bands), -1).all(axis=2)   # rows x gap bands
        if valid.any():
            r, b = np.argwhere(valid)[0]
            self.gaps_reported.add(key)
            self.r.error(self.layout.files.side_path("band_stats").name,
                         nan_stats_message(key, ds, int(bands[b]), f"row {first_row + int(r)}"))


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc="validate", unit="block", leave=False)
