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

from .card import CARD_NAME, card_problems
from .catalog import DatasetSpec, FormatSpec, load_spec
from .chunks import H5Z_DEFLATE, H5Z_SHUFFLE, filter_pipeline
from .errors import MMEarthError
from .reader import MMEarthFiles, covered, open_dataset, stored_rows
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


def _examples(idx, k: int = 3) -> str:
    return ", ".join(str(int(i)) for i in idx[:k]) + (", ..." if len(idx) > k else "")


# ---- checks shared with the loader (MMEarthDataset refuses what the validator calls an error) ----------------------
Problem = tuple[str, str]   # (level, message)


def dataset_problems(ds: DatasetSpec, d: object) -> list[Problem]:
    """Layout problems of HDF5 object ``d`` as dataset ``ds``, ending at the first error: a reader handed a
    wrong dtype or shape reads wrong values silently, or fails deep inside with a raw IndexError."""
    if not isinstance(d, h5py.Dataset):
        return [("error", "is a group, expected a dataset")]
    out: list[Problem] = []
    if d.dtype != ds.dtype:
        if d.dtype not in ds.lenient_dtypes:
            return [("error", f"dtype {d.dtype}, expected {ds.dtype}")]
        out.append(("warning", f"dtype {d.dtype} instead of {ds.dtype} (tolerated by known readers)"))
    if d.ndim != (4 if ds.is_pixel else 2) or d.shape[1] != ds.channels:
        return out + [("error", f"shape {d.shape}, expected (N, {ds.channels}{', H, W' if ds.is_pixel else ''})")]
    if ds.is_pixel and d.shape[2] != d.shape[3]:
        return out + [("error", f"tiles are {d.shape[2]}x{d.shape[3]}, expected square")]
    if d.external:
        return out + [("error", "keeps its values in external files; a v001 dataset holds them in the .h5")]
    if "nodata" in d.attrs:
        nodata = np.asarray(d.attrs["nodata"])
        if nodata.size != 1 or nodata.dtype.kind not in "uif":
            return out + [("error", f"attribute nodata {nodata.tolist()!r}: expected one number")]
    return out


def metadata_problems(d: object, spec: FormatSpec) -> list[Problem]:
    """Layout problems of the compound ``metadata`` dataset (tile ids and S2 types), ending at the first error."""
    if not isinstance(d, h5py.Dataset):
        return [("error", "is a group, expected a dataset")]
    names = d.dtype.names or ()
    if d.ndim != 1 or len(names) != 2:
        return [("error", f"compound fields {names} of shape {d.shape}, expected (N,) of (tile_id, S2_type)")]
    if any(d.dtype[k].kind not in "SUO" for k in names):
        return [("error", f"fields {d.dtype.descr}: tile_id and S2_type must be strings")]
    out: list[Problem] = []
    if names != ("tile_id", "S2_type"):
        out.append(("warning", f"fields are named {names}, v001 names them ('tile_id', 'S2_type')"))
    if d.dtype != spec.metadata_dtype:
        out.append(("warning", f"dtype {d.dtype.descr}, v001 writes {spec.metadata_dtype.descr}"))
    return out


def rows_problem(d: h5py.Dataset, exact: bool = True) -> str | None:
    """Why the rows ``d`` declares are not all in its file (sparse, truncated, or a release missing shards)."""
    n = d.shape[0]
    try:
        held = covered(stored_rows(d, exact))
    except MMEarthError as e:   # a release's shard that does not hold the rows mapped onto it
        return str(e)
    if held >= n:
        return None
    if d.is_virtual:
        return f"declares {n} rows, but its shards hold only {held} (a partial download, or a forged manifest)"
    return f"declares {n} rows, but its file stores only {held} (a sparse, truncated or forged file)"


def stats_entry_problems(key: str, entry: object, channels: int) -> list[str]:
    """Why a band_stats entry cannot normalize a modality of ``channels`` bands."""
    if not isinstance(entry, dict):
        return [f"{key!r} must be an object with mean/std/min/max"]
    out = []
    for stat in ("mean", "std", "min", "max"):
        vals = entry.get(stat)
        if not isinstance(vals, list) or len(vals) != channels:
            got = "missing" if vals is None else \
                f"length {len(vals) if isinstance(vals, list) else type(vals).__name__}"
            out.append(f"{key}.{stat}: {got}, expected a list of {channels}")
        elif not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            out.append(f"{key}.{stat}: holds non-numeric values")
        elif stat == "std" and any(v < 0 for v in vals if not math.isnan(v)):
            out.append(f"{key}.std: negative values")
    return out


def unknown_stat_bands(entry: dict) -> np.ndarray:
    """Bands whose mean or std is NaN or infinite: statistics over no valid value (a band with no data, e.g. B10
    of L2A). Correct only where the data has no valid value there either, else normalizing yields NaN."""
    mean = np.asarray(entry["mean"], dtype=np.float64)
    return ~(np.isfinite(mean) & np.isfinite(np.asarray(entry["std"], dtype=np.float64)))


def nan_stats_message(key: str, ds: DatasetSpec, band: int, example: str) -> str:
    return (f"{key}: mean/std of band {ds.bands[band]} are not numbers, but {ds.name} holds valid values there "
            f"({example}); normalizing would give NaN: recompute the statistics")


def _int_list(rows: object) -> bool:
    return isinstance(rows, list) and set(map(type, rows)) <= {int}   # bool is not a row index


def as_text(value: object) -> str:
    """A metadata string field (fixed-length bytes in v001, str or bytes elsewhere) as text."""
    return bytes(value).decode("utf-8", "replace") if isinstance(value, (bytes, np.bytes_)) else str(value)


def split_array(rows: object) -> np.ndarray | None:
    """``rows`` (a split) as int64 row indices in one NumPy pass, or None where they are not a list of integers
    (then :func:`split_problems` says why). Lenient where harmless: a bool among integers reads as 0 or 1."""
    if not isinstance(rows, list):
        return None
    try:
        arr = np.asarray(rows)
    except (ValueError, OverflowError):   # ragged nesting
        return None
    if rows and (arr.ndim != 1 or arr.dtype.kind not in "iu"):   # floats, strings, beyond 64 bits (object)
        return None
    return arr.astype(np.int64)


def split_problems(key: str, rows: object, n: int | None, duplicates: bool = True) -> list[str]:
    """Why ``rows`` (a split of ``<stem>_splits.json``) are not valid row indices of a file of ``n`` rows;
    ``duplicates``: also rows listed twice."""
    if not _int_list(rows):
        return [f"{key!r} must be a list of integer row indices"]
    out = []
    if n is not None and rows:
        try:
            arr = np.asarray(rows, dtype=np.int64)
            bad = arr[(arr < 0) | (arr >= n)]
        except OverflowError:   # beyond int64: compare as Python ints
            bad = [i for i in rows if not 0 <= i < n]
        if len(bad):
            out.append(f"{key!r} holds rows outside 0..{n - 1}: {_examples(bad)}")
    if duplicates and len(set(rows)) != len(rows):
        out.append(f"{key!r} lists {len(rows) - len(set(rows))} row(s) twice")
    return out


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
        self.rows_stored = True                # False: metadata declares rows its file does not hold
        # (dataset, S2 type or None) -> (band_stats key, bands whose mean/std are not numbers)
        self.stat_gaps: dict[tuple[str, str | None], tuple[str, np.ndarray]] = {}
        self.gaps_reported: set[str] = set()

    # ---- layout -------------------------------------------------------------------------------------------
    def check_datasets(self, f: h5py.File) -> None:
        lengths = {}
        for name, ds in self.spec.datasets.items():
            if name not in f:
                self.r.error(name, "dataset missing")
                continue
            d = f[name]
            problems = dataset_problems(ds, d)
            for level, msg in problems:
                self.r.findings.append(Finding(level, name, msg))
            if any(level == "error" for level, _ in problems):
                continue
            if ds.is_pixel:
                h = d.shape[2]
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
        meta = f.get("metadata")
        if isinstance(meta, h5py.Dataset) and meta.ndim == 1:
            lengths["metadata"] = meta.shape[0]
        if lengths:
            self.n = max(set(lengths.values()), key=list(lengths.values()).count)
            for name, n in lengths.items():
                if n != self.n:
                    self.r.error(name, f"{n} rows, the other datasets have {self.n}")
                    self.present.pop(name, None)
                    continue
                why = rows_problem(f[name])   # before any read: a sparse header must not size an allocation
                if why:
                    self.r.error(name, why + "; its rows are not read")
                    self.present.pop(name, None)
                    if name == "metadata":
                        self.rows_stored = False
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
        problems = metadata_problems(m, self.spec)
        for level, msg in problems:
            self.r.findings.append(Finding(level, "metadata", msg))
        if any(level == "error" for level, _ in problems) or not self.rows_stored or m.shape[0] != self.n:
            return
        records = self._record_count()
        if records is not None and self.n > 2 * records:   # most rows cannot have a record: not worth reading
            self.r.error("metadata", f"{self.n} rows, but {self.files.side_path('tile_info').name} holds only "
                                     f"{records} records (one per tile); tile ids not read")
            return
        id_field, type_field = m.dtype.names
        ids: list[str] = []
        types: list[str] = []
        for start in range(0, self.n, BLOCK):   # bounded reads: never the whole compound at once
            block = m[start:start + BLOCK]
            ids += [as_text(x) for x in block[id_field]]
            types += [as_text(x) for x in block[type_field]]
        self.ids, self.types = ids, np.array(types)
        bad = np.flatnonzero(~np.isin(self.types, self.spec.s2_types))
        if bad.size:
            self.r.error("metadata", f"S2_type {str(self.types[bad[0]])!r} in rows {_examples(bad)}: expected one of {self.spec.s2_types}")
        empty = [i for i, t in enumerate(self.ids) if not t]
        if empty:
            self.r.error("metadata", f"empty tile_id in rows {_examples(np.array(empty))}")
        if len(set(self.ids)) != len(self.ids):
            self.r.error("metadata", f"{len(self.ids) - len(set(self.ids))} duplicate tile_id(s)")

    def _record_count(self) -> int | None:
        try:
            info = self.files.tile_info
        except MMEarthError:
            return None   # reported by check_tile_info
        return len(info)

    def _side_file(self, kind: str) -> tuple[str, dict | None]:
        """Parse ``<stem>_<kind>.json``; report and return None when it is missing, broken or not an object."""
        where = self.files.side_path(kind).name
        try:
            obj = getattr(self.files, kind)   # a JSON object, or MMEarthError
        except MMEarthError as e:
            self.r.error(where, str(e))
            return where, None
        return where, obj

    def check_tile_info(self) -> None:
        where, info = self._side_file("tile_info")
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
        not_objects = [k for k, rec in info.items() if not isinstance(rec, dict)]
        if not_objects:
            self.r.error(where, f"{len(not_objects)} record(s) are not objects, e.g. {not_objects[:3]}")
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
        where, splits = self._side_file("splits")
        if splits is None:
            return
        seen: dict[str, set] = {}
        for key in ("train", "val", "test"):
            if key not in splits:
                self.r.error(where, f"key {key!r} missing")
                continue
            rows = splits[key]
            problems = split_problems(key, rows, self.n)
            for msg in problems:
                self.r.error(where, msg)
            if not _int_list(rows):
                continue
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
        where, stats = self._side_file("band_stats")
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
                problems = stats_entry_problems(key, stats[key], ds.channels)
                for msg in problems:
                    self.r.error(where, msg)
                if problems:
                    continue
                unknown = np.flatnonzero(unknown_stat_bands(stats[key]))
                if unknown.size:   # the content check tells whether the data has valid values there
                    self.stat_gaps[(name, s2)] = (key, unknown)
                if unknown.size == ds.channels and ds.task != "auxiliary" and self.r.layout_only:
                    self.r.warn(where, f"{key}: mean/std of every band are not numbers: right only if {name} "
                                       "holds no valid value (the content check reads it)")

    # ---- content ------------------------------------------------------------------------------------------
    def check_content(self) -> None:
        if not self.rows_stored:
            return   # reported: reading rows the file does not hold would allocate for each of them
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
                s2 = str(self.types[int(i)]) if ds.stats_split_by and self.types is not None else None
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
        gap = self.stat_gaps.get((ds.name, s2))
        if gap is None or gap[0] in self.gaps_reported:
            return
        key, bands = gap
        valid = ~miss[:, bands].reshape(miss.shape[0], len(bands), -1).all(axis=2)   # rows x gap bands
        if valid.any():
            r, b = np.argwhere(valid)[0]
            self.gaps_reported.add(key)
            self.r.error(self.files.side_path("band_stats").name,
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


def validate(path: str | Path, *, layout_only: bool = False, max_tiles: int | None = 1000, seed: int = 0,
             progress: bool = False) -> Report:
    """Validate a v001 dataset (directory or ``.h5``) and return a :class:`Report`.

    ``max_tiles`` bounds how many tiles' pixels the content check reads (a seeded random subset; ``None``
    reads all); image-level datasets are always read in full. A dataset card beside the data (``README.md``,
    :mod:`mmearth_data.card`) is checked against it: tile count, identity and build hash.
    """
    files = open_dataset(path)
    report = Report(path=str(path), layout_only=layout_only)
    v = _Validator(files, load_spec(), report, max_tiles, seed, progress)
    with files.h5() as f:
        flag = np.asarray(f.attrs.get("unlabelled_tiles", 0))
        if flag.size != 1 or flag.dtype.kind not in "biu":
            report.error("layout", f"file attribute unlabelled_tiles {flag.tolist()!r}: expected a count")
        v.unlabelled_allowed = flag.size == 1 and flag.dtype.kind in "biu" and int(flag) > 0
        v.check_datasets(f)
        v.check_metadata(f)
        report.n_tiles = v.n or 0
        v.check_tile_info()
        v.check_splits()
        v.check_band_stats()
        if not layout_only:
            v.check_content()
    if isinstance(files, MMEarthFiles):   # a card beside the data (README.md) must agree with it
        report.findings += [Finding(level, CARD_NAME, msg) for level, msg in card_problems(files)]
    return report
