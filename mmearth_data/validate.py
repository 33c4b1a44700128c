"""Check a dataset directory against the v001 spec in ``catalogs/modalities.yaml``.

Two levels: *layout* (will MMEarth's and torchgeo's readers load it correctly: names, dtypes, shapes, chunking,
filters, metadata, tile_info ids, splits, band_stats) and *content* (are the values plausible: one-hot rows,
unit-circle encodings, value ranges, class codes). Known third-party deviations that readers tolerate are
warnings; anything that makes a reader fail or read wrong values is an error.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h5py
import numpy as np

from .catalog import FormatSpec, load_spec
from .chunks import H5Z_DEFLATE, H5Z_SHUFFLE, filter_pipeline
from .errors import MMEarthError
from .reader import MMEarthFiles, open_dataset
from .transforms import stats_key_in

# fletcher32 (3) and scale-offset (6) and n-bit (5) ship with libhdf5 too; szip (4) often does not.
BUILTIN_FILTERS = {H5Z_DEFLATE: "gzip", H5Z_SHUFFLE: "shuffle", 3: "fletcher32", 5: "nbit", 6: "scaleoffset"}
TILE_INFO_FIELDS = ("S2_DATE", "S2_type", "CRS", "lat", "lon", "biome", "eco_region", "NO_DATA", "BANDS")
BLOCK = 4096  # rows per read for full scans of image-level datasets


@dataclass
class Finding:
    level: str  # "error" | "warning"
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.level.upper():7s} {self.where}: {self.message}"


@dataclass
class Report:
    path: str
    n_tiles: int = 0
    tiles_checked: int = 0
    layout_only: bool = False
    findings: list[Finding] = field(default_factory=list)

    def error(self, where: str, message: str) -> None:
        self.findings.append(Finding("error", where, message))

    def warn(self, where: str, message: str) -> None:
        self.findings.append(Finding("warning", where, message))

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ok"] = self.ok
        d["n_errors"], d["n_warnings"] = len(self.errors), len(self.warnings)
        return d

    def format_text(self) -> str:
        scope = "layout only" if self.layout_only else f"layout + content ({self.tiles_checked} tiles' pixels)"
        lines = [f"{self.path}: {self.n_tiles} tiles, checked {scope}"]
        lines += [str(f) for f in sorted(self.findings, key=lambda f: f.level)]
        verdict = "FAILED" if self.errors else "passed"
        lines.append(f"{verdict}: {len(self.errors)} error(s), {len(self.warnings)} warning(s)")
        return "\n".join(lines)


def _examples(idx: np.ndarray, k: int = 3) -> str:
    return ", ".join(str(int(i)) for i in idx[:k]) + (", ..." if len(idx) > k else "")


class _Validator:
    def __init__(self, files: MMEarthFiles, spec: FormatSpec, report: Report, max_tiles: int | None,
                 seed: int, progress: bool):
        self.files, self.spec, self.r = files, spec, report
        self.max_tiles, self.seed, self.progress = max_tiles, seed, progress
        self.n: int | None = None
        self.tile_px: int | None = None
        self.ids: list[str] | None = None
        self.types: np.ndarray | None = None
        self.present: dict[str, h5py.Dataset] = {}
        self.unlabelled_allowed = False        # file attribute unlabelled_tiles: build --allow-unlabelled
        self.unlabelled_rows = np.zeros(0, dtype=np.int64)   # rows whose tile_info says "unlabelled"

    # ---- layout -------------------------------------------------------------------------------------------
    def check_datasets(self, f: h5py.File) -> None:
        lengths = {}
        for name, ds in self.spec.datasets.items():
            if name not in f:
                self.r.error(name, "dataset missing")
                continue
            d = f[name]
            if not isinstance(d, h5py.Dataset):
                self.r.error(name, "is a group, expected a dataset")
                continue
            if d.dtype != ds.dtype:
                if d.dtype in ds.lenient_dtypes:
                    self.r.warn(name, f"dtype {d.dtype} instead of {ds.dtype} (tolerated by known readers)")
                else:
                    self.r.error(name, f"dtype {d.dtype}, expected {ds.dtype}")
                    continue
            want_ndim = 4 if ds.is_pixel else 2
            if d.ndim != want_ndim or d.shape[1] != ds.channels:
                self.r.error(name, f"shape {d.shape}, expected (N, {ds.channels}{', H, W' if ds.is_pixel else ''})")
                continue
            if ds.is_pixel:
                h, w = d.shape[2:]
                if h != w:
                    self.r.error(name, f"tiles are {h}x{w}, expected square")
                    continue
                if self.tile_px is None:
                    self.tile_px = h
                elif h != self.tile_px:
                    self.r.error(name, f"tiles are {h} px, other pixel datasets are {self.tile_px} px")
                    continue
            lengths[name] = d.shape[0]
            self.present[name] = d
            self.check_storage(name, d)
        for name in f:
            if name not in self.spec.datasets and name != "metadata":
                self.r.warn(name, "not part of the v001 layout (readers ignore it)")
        if "metadata" in f:
            lengths["metadata"] = f["metadata"].shape[0]
        if lengths:
            self.n = max(set(lengths.values()), key=list(lengths.values()).count)
            for name, n in lengths.items():
                if n != self.n:
                    self.r.error(name, f"{n} rows, the other datasets have {self.n}")
                    self.present.pop(name, None)
        if self.tile_px is not None and self.tile_px not in self.spec.tile_px:
            self.r.warn("layout", f"tile size {self.tile_px} px is not one of the published {self.spec.tile_px}")

    def check_storage(self, name: str, d: h5py.Dataset) -> None:
        if d.chunks is None:
            self.r.warn(name, "contiguous storage: not one tile per chunk, so random tile reads are slower")
        elif d.chunks != (1, *d.shape[1:]):
            self.r.warn(name, f"chunks {d.chunks}: not one tile per chunk ({(1, *d.shape[1:])})")
        for fid in filter_pipeline(d):
            if fid not in BUILTIN_FILTERS:
                self.r.error(name, f"HDF5 filter {fid} is not built into libhdf5: existing readers cannot decode it")

    def check_metadata(self, f: h5py.File) -> None:
        if "metadata" not in f:
            self.r.error("metadata", "dataset missing")
            return
        m = f["metadata"]
        names = m.dtype.names or ()
        if len(names) != 2:
            self.r.error("metadata", f"compound fields {names}, expected (tile_id, S2_type)")
            return
        if names != ("tile_id", "S2_type"):
            self.r.warn("metadata", f"fields are named {names}, v001 names them ('tile_id', 'S2_type')")
        if m.dtype != self.spec.metadata_dtype:
            self.r.warn("metadata", f"dtype {m.dtype.descr}, v001 writes {self.spec.metadata_dtype.descr}")
        meta = m[()]
        id_field, type_field = names
        self.ids = [bytes(x).decode("utf-8", "replace") for x in meta[id_field]]
        types = np.array([bytes(x).decode("utf-8", "replace") for x in meta[type_field]])
        bad = np.flatnonzero(~np.isin(types, self.spec.s2_types))
        if bad.size:
            self.r.error("metadata", f"S2_type {str(types[bad[0]])!r} in rows {_examples(bad)}: expected one of {self.spec.s2_types}")
        self.types = types
        empty = [i for i, t in enumerate(self.ids) if not t]
        if empty:
            self.r.error("metadata", f"empty tile_id in rows {_examples(np.array(empty))}")
        if len(set(self.ids)) != len(self.ids):
            self.r.error("metadata", f"{len(self.ids) - len(set(self.ids))} duplicate tile_id(s)")

    def _side_file(self, kind: str, expected: str) -> tuple[str, dict | None]:
        """Parse ``<stem>_<kind>.json``; report and return None when it is missing, broken or not an object."""
        where = self.files.side_path(kind).name
        try:
            obj = getattr(self.files, kind)
        except MMEarthError as e:
            self.r.error(where, str(e))
            return where, None
        if not isinstance(obj, dict):
            self.r.error(where, f"expected an object {expected}")
            return where, None
        return where, obj

    def check_tile_info(self) -> None:
        where, info = self._side_file("tile_info", "keyed by tile_id")
        if info is None:
            return
        if self.ids is not None:
            ids = set(self.ids)
            missing, extra = sorted(ids - info.keys()), sorted(info.keys() - ids)
            if missing:
                self.r.error(where, f"{len(missing)} tile_id(s) of metadata have no record, e.g. {missing[:3]}")
            if extra:
                self.r.error(where, f"{len(extra)} record(s) for tile_ids not in metadata, e.g. {extra[:3]}")
        absent: dict[str, int] = {}
        mismatched = []
        unlabelled = []
        for row, tid in enumerate(self.ids or []):
            rec = info.get(tid)
            if not isinstance(rec, dict):
                continue
            if rec.get("unlabelled"):
                unlabelled.append(row)
            for k in TILE_INFO_FIELDS:
                if k not in rec:
                    absent[k] = absent.get(k, 0) + 1
            if self.types is not None and rec.get("S2_type") not in (None, self.types[row]):
                mismatched.append(tid)
        self.unlabelled_rows = np.asarray(unlabelled, dtype=np.int64)
        for k, c in absent.items():
            msg = f"{c} record(s) lack {k!r}"
            if k == "S2_type":
                self.r.error(where, msg + " (readers pick Sentinel-2 statistics by it)")
            else:
                self.r.warn(where, msg)
        if mismatched:
            self.r.error(where, f"S2_type disagrees with metadata for {len(mismatched)} tile(s), e.g. {mismatched[:3]}")

    def check_splits(self) -> None:
        where, splits = self._side_file("splits", "with train/val/test lists")
        if splits is None:
            return
        seen: dict[str, set] = {}
        for key in ("train", "val", "test"):
            if key not in splits:
                self.r.error(where, f"key {key!r} missing")
                continue
            rows = splits[key]
            if not isinstance(rows, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in rows):
                self.r.error(where, f"{key!r} must be a list of integer row indices")
                continue
            arr = np.asarray(rows, dtype=np.int64)
            if self.n is not None:
                out = arr[(arr < 0) | (arr >= self.n)]
                if out.size:
                    self.r.error(where, f"{key!r} holds rows outside 0..{self.n - 1}: {_examples(out)}")
            if len(set(rows)) != len(rows):
                self.r.error(where, f"{key!r} lists {len(rows) - len(set(rows))} row(s) twice")
            seen[key] = set(rows)
        for extra in sorted(set(splits) - {"train", "val", "test"}):
            self.r.warn(where, f"extra split {extra!r} (readers ignore it)")
        keys = list(seen)
        for i, a in enumerate(keys):
            for b in keys[i + 1:]:
                both = seen[a] & seen[b]
                if both:
                    self.r.error(where, f"{a!r} and {b!r} share {len(both)} row(s), e.g. {sorted(both)[:3]}")
        if self.n is not None and seen:
            unused = self.n - len(set().union(*seen.values()))
            if unused > 0:
                self.r.warn(where, f"{unused} row(s) are in no split")

    def check_band_stats(self) -> None:
        where, stats = self._side_file("band_stats", "keyed by modality")
        if stats is None:
            return
        types_present = set(self.spec.s2_types)
        if self.types is not None:
            types_present &= set(self.types.tolist())
        for name, ds in self.spec.datasets.items():
            if not ds.stats_keys:
                continue
            for s2 in sorted(types_present) if ds.stats_split_by else [None]:
                key = stats_key_in(stats, ds, s2)
                if key != ds.stats_key(s2):
                    self.r.warn(where, f"key {ds.stats_key(s2)!r} missing; falling back to the unsplit {key!r} statistics")
                if key not in stats:
                    msg = f"key {key!r} missing (needed to normalize {name})"
                    if ds.task == "auxiliary":  # MP-MAE never normalizes the cloud layers
                        self.r.warn(where, msg)
                    else:
                        self.r.error(where, msg)
                    continue
                entry = stats[key]
                if not isinstance(entry, dict):
                    self.r.error(where, f"{key!r} must be an object with mean/std/min/max")
                    continue
                for stat in ("mean", "std", "min", "max"):
                    vals = entry.get(stat)
                    if not isinstance(vals, list) or len(vals) != ds.channels:
                        got = "missing" if vals is None else f"length {len(vals) if isinstance(vals, list) else type(vals).__name__}"
                        self.r.error(where, f"{key}.{stat}: {got}, expected a list of {ds.channels}")
                    elif not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
                        self.r.error(where, f"{key}.{stat}: holds non-numeric values")
                    elif stat == "std" and any(v < 0 for v in vals if not math.isnan(v)):
                        self.r.error(where, f"{key}.std: negative values")

    # ---- content ------------------------------------------------------------------------------------------
    def check_content(self) -> None:
        n = self.n or 0
        image = [k for k, d in self.present.items() if not self.spec.datasets[k].is_pixel]
        pixel = [k for k, d in self.present.items() if self.spec.datasets[k].is_pixel]
        rows = np.arange(n)
        if self.max_tiles is not None and n > self.max_tiles:
            rows = np.sort(np.random.default_rng(self.seed).choice(n, self.max_tiles, replace=False))
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
        ds, d = self.spec.datasets[name], self.present[name]
        bad_rows: list[np.ndarray] = []
        problem = ""
        unlabelled = 0
        for start in range(0, d.shape[0], BLOCK):
            a = d[start:start + BLOCK]
            if ds.one_hot:
                bad = (a.sum(axis=1, dtype=np.int64) != 1) | (a.max(axis=1) != 1)
                problem = "are not one-hot (exactly one 1 per row)"
                if self.unlabelled_allowed:   # given locations kept without a label: all-zero rows, flagged
                    flagged = (a.sum(axis=1, dtype=np.int64) == 0) & np.isin(
                        np.arange(start, start + len(a)), self.unlabelled_rows)
                    unlabelled += int(flagged.sum())
                    bad &= ~flagged
            elif ds.bands[0].startswith("sin"):
                x = a.astype(np.float64)
                bad = (np.abs(x) > 1 + 1e-6).any(axis=1) | (np.abs(x[:, 0] ** 2 + x[:, 1] ** 2 - 1) > 1e-3)
                problem = "are not (sin, cos) pairs on the unit circle"
            else:
                miss = ds.missing_mask(a)
                lo, hi = ds.valid_range or (-np.inf, np.inf)
                bad = (((a < lo) | (a > hi)) & ~miss).any(axis=1) if miss is not None else ((a < lo) | (a > hi)).any(axis=1)
                problem = f"hold values outside {lo}..{hi}"
            idx = np.flatnonzero(bad)
            if idx.size:
                bad_rows.append(idx + start)
            bar.update(1)
        if bad_rows:
            idx = np.concatenate(bad_rows)
            self.r.error(name, f"{idx.size} of {d.shape[0]} rows {problem}, e.g. rows {_examples(idx)}")
        if unlabelled:
            self.r.warn(name, f"{unlabelled} row(s) are all zero: given locations kept without a label "
                              "(--allow-unlabelled; tile_info says unlabelled)")

    def _check_pixel(self, name: str, rows: np.ndarray, bar) -> None:
        ds, d = self.spec.datasets[name], self.present[name]
        nodata = d.attrs.get("nodata")
        nodata = None if nodata is None else np.asarray(nodata).item()
        allowed = None
        if ds.classes:
            allowed = np.array([c for c, _ in ds.classes] + [v for v in ds.missing_values if float(v).is_integer()])
        bad_rows, example = [], None
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
            if bad.any():
                bad_rows.append(int(i))
                example = a[bad].flat[0] if example is None else example
            bar.update(1)
        if bad_rows:
            what = f"codes outside {sorted(allowed.tolist())}" if allowed is not None else f"values outside {ds.valid_range}"
            self.r.error(name, f"{len(bad_rows)} of {len(rows)} checked tiles hold {what} "
                               f"(e.g. {example!r} in row {bad_rows[0]})")


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


def validate(path: str | Path, *, layout_only: bool = False, max_tiles: int | None = 1000, seed: int = 0,
             progress: bool = False) -> Report:
    """Validate a v001 dataset (directory or ``.h5``) and return a :class:`Report`.

    ``max_tiles`` bounds how many tiles' pixels the content check reads (a seeded random subset; ``None``
    reads all); image-level datasets are always read in full.
    """
    files = open_dataset(path)
    report = Report(path=str(path), layout_only=layout_only)
    v = _Validator(files, load_spec(), report, max_tiles, seed, progress)
    with files.h5() as f:
        v.unlabelled_allowed = int(np.asarray(f.attrs.get("unlabelled_tiles", 0))) > 0
        v.check_datasets(f)
        v.check_metadata(f)
        report.n_tiles = v.n or 0
        v.check_tile_info()
        v.check_splits()
        v.check_band_stats()
        if not layout_only:
            v.check_content()
    return report
