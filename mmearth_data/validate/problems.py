"""Checks shared by the validator and the loader (:class:`~mmearth_data.MMEarthDataset` refuses what the
validator calls an error): dataset and metadata layout, stored rows, band statistics and splits."""
from __future__ import annotations

import math

import h5py
import numpy as np

from ..catalog import DatasetSpec, FormatSpec
from ..errors import MMEarthError
from ..manifest import MAX_TILE_PX
from ..reader import covered, stored_rows


def examples(idx, k: int = 3) -> str:
    return ", ".join(str(int(i)) for i in idx[:k]) + (", ..." if len(idx) > k else "")


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
    if ds.is_pixel and d.shape[2] > MAX_TILE_PX:   # a reader allocates whole tiles: a header must not size them
        return out + [("error", f"tiles of {d.shape[2]} px, larger than any dataset holds (at most {MAX_TILE_PX})")]
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


def is_int_list(rows: object) -> bool:
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
    if not is_int_list(rows):
        return [f"{key!r} must be a list of integer row indices"]
    out = []
    if n is not None and rows:
        try:
            arr = np.asarray(rows, dtype=np.int64)
            bad = arr[(arr < 0) | (arr >= n)]
        except OverflowError:   # beyond int64: compare as Python ints
            bad = [i for i in rows if not 0 <= i < n]
        if len(bad):
            out.append(f"{key!r} holds rows outside 0..{n - 1}: {examples(bad)}")
    if duplicates and len(set(rows)) != len(rows):
        out.append(f"{key!r} lists {len(rows) - len(set(rows))} row(s) twice")
    return out
