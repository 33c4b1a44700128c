"""The layout checks of ``validate``."""
from __future__ import annotations

import h5py
import numpy as np

from ..catalog import FormatSpec
from ..chunks import H5Z_DEFLATE, H5Z_SHUFFLE, filter_pipeline, open_source, virtual_spans
from ..errors import MMEarthError
from ..manifest import DOWNLOAD_RECORD
from ..reader import MMEarthFiles, covered
from ..transforms import stats_key_in
from .partial import PartialDownload, Ranges
from .problems import (as_text, dataset_problems, examples, is_int_list, metadata_problems, rows_problem,
                       split_problems, stats_entry_problems, unknown_stat_bands)
from .report import Finding, Report

# fletcher32 (3) and scale-offset (6) and n-bit (5) ship with libhdf5 too; szip (4) often does not.
BUILTIN_FILTERS = {H5Z_DEFLATE: "gzip", H5Z_SHUFFLE: "shuffle", 3: "fletcher32", 5: "nbit", 6: "scaleoffset"}
TILE_INFO_FIELDS = ("S2_DATE", "S2_type", "CRS", "lat", "lon", "biome", "eco_region", "NO_DATA", "BANDS")
BLOCK = 4096  # rows per read for full scans of image-level datasets


class LayoutChecks:
    """Will MMEarth's and torchgeo's readers load it correctly: names, dtypes, shapes, chunking, filters, metadata,
    tile_info ids, splits, band_stats. What it learns (rows, tile ids, readable datasets, statistics without
    numbers) is what the content check reads."""

    def __init__(self, files: MMEarthFiles, spec: FormatSpec, report: Report):
        self.files, self.spec, self.r = files, spec, report
        self.n: int | None = None
        self.tile_px: int | None = None
        self.ids: list[str] | None = None
        self.types: np.ndarray | None = None
        self.id_rows: np.ndarray | None = None   # the rows of ids and types (all rows, or a partial download's)
        self.present: dict[str, h5py.Dataset] = {}
        self.unlabelled_allowed = False        # file attribute unlabelled_tiles: build --allow-unlabelled
        self.unlabelled_rows = np.zeros(0, dtype=np.int64)   # rows whose tile_info says "unlabelled"
        self.rows_stored = True                # False: metadata declares rows its file does not hold
        self.download: PartialDownload | None = None   # a downloaded release's records (validate sets it)
        self.held: dict[str, Ranges] = {}      # a partial download: the rows each dataset holds (absent: all)
        self.not_downloaded: list[str] = []    # a partial download: datasets none of whose shards was fetched
        # (dataset, S2 type or None) -> (band_stats key, bands whose mean/std are not numbers)
        self.stat_gaps: dict[tuple[str, str | None], tuple[str, np.ndarray]] = {}

    def check_datasets(self, f: h5py.File) -> None:
        lengths = {}
        for name, ds in self.spec.datasets.items():
            if name not in f:
                if self.download is not None and not self.download.problem and name in self.download.absent:
                    self.not_downloaded.append(name)   # its modality was not selected: reported as partial
                else:
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
                if why and self.download is not None:   # a partial download its records vouch for?
                    held, why = self.download.held(f[name], name, why)
                    if held is not None:
                        self.held[name] = held
                if why:
                    self.r.error(name, why + "; its rows are not read")
                    self.present.pop(name, None)
                    if name == "metadata":
                        self.rows_stored = False
        if self.tile_px is not None and self.tile_px not in self.spec.tile_px:
            self.r.warn("layout", f"tile size {self.tile_px} px is not one of the published {self.spec.tile_px}")
        if self.held or self.not_downloaded:
            msg = f"partial download: {covered(self.ranges('metadata'))} of {self.n} tiles present"
            if self.not_downloaded:
                msg += f"; not downloaded: {', '.join(self.not_downloaded)}"
            self.r.warn(DOWNLOAD_RECORD, msg + " (only what is present is checked)")

    def ranges(self, name: str) -> Ranges:
        """The rows of ``name`` to read: all, or those a partial download holds."""
        return self.held.get(name, [(0, self.n or 0)] if self.n else [])

    def rows(self, name: str) -> np.ndarray:
        return np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in self.ranges(name)] or
                              [np.zeros(0, np.int64)])

    def s2_type(self, row: int) -> str | None:
        """The S2_type metadata gives ``row`` (None where it was not read)."""
        if self.types is None or self.id_rows is None:
            return None
        k = int(np.searchsorted(self.id_rows, row))
        return str(self.types[k]) if k < len(self.id_rows) and self.id_rows[k] == row else None

    def check_storage(self, name: str, d: h5py.Dataset) -> None:
        if not d.is_virtual:
            for level, msg in storage_problems(d):
                self.r.findings.append(Finding(level, name, msg))
            return
        # a release's VDS has no chunks of its own: its shards' storage is what readers meet
        found: dict[tuple[str, str], list[str]] = {}
        for span in {s[2:]: s for s in virtual_spans(d)}.values():
            try:
                src, sd = open_source(d, span)
            except MMEarthError:
                continue   # rows_problem reports it
            with src:
                for problem in storage_problems(sd):
                    found.setdefault(problem, []).append(span[2])
        for (level, msg), shards in found.items():
            more = f" (and {len(shards) - 1} other shard(s))" if len(shards) > 1 else ""
            self.r.findings.append(Finding(level, name, f"{shards[0]}{more}: {msg}"))

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
        for a, b in self.ranges("metadata"):
            for start in range(a, b, BLOCK):   # bounded reads: never the whole compound at once
                block = m[start:min(b, start + BLOCK)]
                ids += [as_text(x) for x in block[id_field]]
                types += [as_text(x) for x in block[type_field]]
        self.ids, self.types, self.id_rows = ids, np.array(types), self.rows("metadata")
        bad = np.flatnonzero(~np.isin(self.types, self.spec.s2_types))
        if bad.size:
            self.r.error("metadata", f"S2_type {str(self.types[bad[0]])!r} in rows {examples(self.id_rows[bad])}: "
                                     f"expected one of {self.spec.s2_types}")
        empty = [i for i, t in enumerate(self.ids) if not t]
        if empty:
            self.r.error("metadata", f"empty tile_id in rows {examples(self.id_rows[empty])}")
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
            if extra and ("metadata" not in self.held or len(extra) > (self.n or 0) - len(ids)):
                # a partial download holds records of the tiles it did not fetch, no more
                self.r.error(where, f"{len(extra)} record(s) for tile_ids not in metadata, e.g. {extra[:3]}")
        absent: dict[str, int] = {}
        mismatched = []
        unlabelled = []
        not_objects = [k for k, rec in info.items() if not isinstance(rec, dict)]
        if not_objects:
            self.r.error(where, f"{len(not_objects)} record(s) are not objects, e.g. {not_objects[:3]}")
        for i, tid in enumerate(self.ids or []):
            row = int(self.id_rows[i])
            rec = info.get(tid)
            if not isinstance(rec, dict):
                continue
            if rec.get("unlabelled"):
                unlabelled.append(row)
            for k in TILE_INFO_FIELDS:
                if k not in rec:
                    absent[k] = absent.get(k, 0) + 1
            if self.types is not None and rec.get("S2_type") not in (None, self.types[i]):
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
            if not is_int_list(rows):
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


def storage_problems(d: h5py.Dataset) -> list[tuple[str, str]]:
    """(level, message) for a stored dataset not one tile per chunk, or compressed by a filter readers lack."""
    out = []
    if d.chunks is None:
        out.append(("warning", "contiguous storage: not one tile per chunk, so random tile reads are slower"))
    elif d.chunks != (1, *d.shape[1:]):
        out.append(("warning", f"chunks {d.chunks}: not one tile per chunk ({(1, *d.shape[1:])})"))
    for fid in filter_pipeline(d):
        if fid not in BUILTIN_FILTERS:
            out.append(("error", f"HDF5 filter {fid} is not built into libhdf5: existing readers cannot decode it"))
    return out
