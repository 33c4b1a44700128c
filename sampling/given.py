"""Locations a user gives (field sites, a benchmark's points, a region of interest), checked and labelled.

Reads CSV (``lon``, ``lat`` columns), GeoParquet or GeoJSON (point geometries in any CRS, converted to EPSG:4326),
with an optional ``tile_id`` column (kept as the dataset's ids) and optional time columns: ``date`` (one day) or
``start`` and ``end``. Every bad row is reported, one line each, before anything is written.

Biome and ecoregion come from the RESOLVE polygons. A point in no polygon (coasts, small islands, gaps of the
simplified geometry) takes the nearest one within ``label_max_km``, measured on the ground (azimuthal equidistant
around the point), and the distance is kept (``label_km``, then ``tile_info``). Points farther than that, or only
in Rock and Ice (which has no MMEarth index), are refused, or kept with ``allow_unlabelled`` as all-zero one-hot
rows and flagged. Points closer than a tile side are reported in pairs; ``dedupe`` drops the second of each pair.

The result is the sampler's GeoParquet schema plus ``label_km``, ``unlabelled``, ``overlaps``, ``s2_date``,
``s2_start``, ``s2_end`` and ``source_row``, in the given order, so ``export`` runs it like a sampled file.
"""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import shapely

from mmearth_data import __version__
from mmearth_data.errors import MMEarthError
from mmearth_data.io_utils import atomic_path, sha256_file

from .ecoregions import Ecoregions
from .lookup import lookup_ecoregion
from .output import geo_metadata, point_wkb
from .overlaps import OVERLAPS_LISTED, dedupe_rows, overlapping_pairs
from .spacing import utm_epsg

META_KEY = b"mmearth_given"
MAX_ID_BYTES = 100              # tile_id is stored as S100 in the v001 metadata
S2_FIRST_DAY = dt.date(2015, 6, 23)   # Sentinel-2A's launch
MAX_LINES = 50
LON_NAMES, LAT_NAMES = ("lon", "longitude", "lng", "x"), ("lat", "latitude", "y")


@dataclass(frozen=True)
class GivenOptions:
    label_max_km: float = 10.0
    allow_unlabelled: bool = False
    dedupe: bool = False
    tile_px: int = 128


@dataclass
class GivenLocations:
    table: pa.Table
    notes: list[str] = field(default_factory=list)   # what the user should know: fallbacks, overlaps, drops


def _frame(path: Path) -> tuple[pd.DataFrame, np.ndarray | None, np.ndarray | None, list[str]]:
    """(attribute columns as strings, lon, lat from point geometries or None, row errors of the geometries)."""
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv", ".txt"):
            df = pd.read_csv(path, dtype=str, keep_default_na=False, sep="\t" if suffix == ".tsv" else ",",
                             skipinitialspace=True)
            return df, None, None, []
        if suffix in (".parquet", ".geoparquet"):
            meta = pq.read_schema(path).metadata or {}
            if b"geo" not in meta:
                return pd.read_parquet(path).astype(str), None, None, []
            import geopandas as gpd

            gdf = gpd.read_parquet(path)
        elif suffix in (".geojson", ".json", ".gpkg", ".fgb", ".shp"):
            import geopandas as gpd

            gdf = gpd.read_file(path)
        else:
            raise MMEarthError(f"--locations {path}: unsupported format {suffix!r}; use CSV (lon, lat columns), "
                               "GeoParquet or GeoJSON (points)")
    except MMEarthError:
        raise
    except FileNotFoundError:
        raise MMEarthError(f"--locations {path}: no such file") from None
    except Exception as e:  # noqa: BLE001 - any parse failure is the user's file
        raise MMEarthError(f"--locations {path}: cannot be read ({type(e).__name__}: {e})") from None
    if gdf.crs is not None and gdf.crs.to_epsg() != 4326:
        gdf = gdf.to_crs(4326)
    errors = []
    geoms = gdf.geometry.to_numpy()
    kinds = shapely.get_type_id(geoms)
    for i, (g, k) in enumerate(zip(geoms, kinds)):
        if g is None or shapely.is_empty(g):
            errors.append(f"row {i + 1}: no geometry")
        elif k != 0:
            errors.append(f"row {i + 1}: geometry is a {g.geom_type}, not a point")
    ok = kinds == 0
    lon = np.where(ok, shapely.get_x(np.where(ok, geoms, None)), np.nan)
    lat = np.where(ok, shapely.get_y(np.where(ok, geoms, None)), np.nan)
    attrs = pd.DataFrame(gdf.drop(columns=gdf.geometry.name)).astype(str)
    return attrs, lon, lat, errors


def _column(df: pd.DataFrame, names: tuple[str, ...]) -> str | None:
    lower = {c.lower().strip(): c for c in df.columns}
    return next((lower[n] for n in names if n in lower), None)


def _date(text: str) -> dt.date:
    text = text.strip()
    try:
        return dt.date.fromisoformat(text[:10]) if len(text) >= 10 else dt.date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"unparseable date {text!r} (use YYYY-MM-DD)") from None


def _parse(path: Path) -> tuple[pd.DataFrame, list[str]]:
    """Rows with ``tile_id, lon, lat, s2_date, s2_start, s2_end, source_row``; and the problems, one per row."""
    df, glon, glat, errors = _frame(path)
    n = len(df)
    if glon is None:
        clon, clat = _column(df, LON_NAMES), _column(df, LAT_NAMES)
        if clon is None or clat is None:
            missing = [name for name, c in (("lon", clon), ("lat", clat)) if c is None]
            raise MMEarthError(f"--locations {path}: missing column(s) {', '.join(missing)} (need lon and lat "
                               f"columns, or point geometries); it has {', '.join(map(str, df.columns)) or 'none'}")
        lon, lat = np.full(n, np.nan), np.full(n, np.nan)
        for i, (x, y) in enumerate(zip(df[clon], df[clat])):
            try:
                lon[i], lat[i] = float(str(x).strip()), float(str(y).strip())
                if not (np.isfinite(lon[i]) and np.isfinite(lat[i])):
                    raise ValueError
            except ValueError:
                lon[i] = lat[i] = np.nan
                errors.append(f"row {i + 1}: unparseable coordinates lon={str(x)!r}, lat={str(y)!r}")
    else:
        lon, lat = glon, glat
    for i in range(n):
        if np.isfinite(lon[i]) and not (-180 <= lon[i] <= 180 and -90 <= lat[i] <= 90):
            errors.append(f"row {i + 1}: lon {lon[i]:g}, lat {lat[i]:g} out of range (lon -180..180, lat -90..90)")
    cid = _column(df, ("tile_id", "id"))
    ids = [f"loc_{i:06d}" for i in range(n)] if cid is None else [str(v).strip() for v in df[cid]]
    first: dict[str, int] = {}
    for i, t in enumerate(ids):
        problem = tile_id_problem(t)
        if problem:
            errors.append(f"row {i + 1}: {problem}")
        elif t in first:
            errors.append(f"row {i + 1}: tile_id {t!r} repeats row {first[t] + 1}")
        else:
            first[t] = i
    dates: dict[str, list] = {"s2_date": [None] * n, "s2_start": [None] * n, "s2_end": [None] * n}
    cols = {k: _column(df, (k,)) for k in ("date", "start", "end")}
    if (cols["start"] is None) != (cols["end"] is None):
        raise MMEarthError(f"--locations {path}: has a {'start' if cols['start'] else 'end'} column but no "
                           f"{'end' if cols['start'] else 'start'}; give both, or a date column")
    for i in range(n):
        raw = {k: str(df[c].iat[i]).strip() if c else "" for k, c in cols.items()}
        raw = {k: ("" if v.lower() in ("nan", "none", "nat") else v) for k, v in raw.items()}
        try:
            if raw["date"] and (raw["start"] or raw["end"]):
                raise ValueError("has a date and a start/end; give one or the other")
            if bool(raw["start"]) != bool(raw["end"]):
                raise ValueError("has only one of start and end")
            parsed = {k: _date(v) for k, v in raw.items() if v}
            if "start" in parsed and parsed["start"] > parsed["end"]:
                raise ValueError(f"start {parsed['start']} is after end {parsed['end']}")
            late = [d for d in parsed.values() if d < S2_FIRST_DAY]
            if late:
                raise ValueError(f"date {late[0]} is before Sentinel-2 ({S2_FIRST_DAY})")
        except ValueError as e:
            errors.append(f"row {i + 1}: {e}")
            continue
        for k, key in (("date", "s2_date"), ("start", "s2_start"), ("end", "s2_end")):
            if k in parsed:
                dates[key][i] = parsed[k].isoformat()
    rows = pd.DataFrame({"tile_id": ids, "lon": lon, "lat": lat, **dates, "source_row": np.arange(1, n + 1)})
    return rows, errors


def tile_id_problem(t: str) -> str | None:
    """Why ``t`` cannot be a tile id, or None. Ids name files and keys (synthetic sources, staging, shards), so
    they are plain names: no path separators, no ``..``, no leading dot, no control characters."""
    if not t or t.lower() == "nan":
        return "empty tile_id"
    if len(t.encode()) > MAX_ID_BYTES:
        return f"tile_id is {len(t.encode())} bytes, more than {MAX_ID_BYTES}"
    if any(ord(c) < 32 or ord(c) == 127 for c in t):
        return f"tile_id {t!r} has control characters"
    if "/" in t or "\\" in t or ".." in t or t.startswith("."):
        return f"tile_id {t!r} is not a plain name (no '/', '\\', '..' or leading '.')"
    return None


def _fail(path: Path, lines: list[str]) -> None:
    shown = [f"--locations {path}: {line}" for line in lines[:MAX_LINES]]
    if len(lines) > MAX_LINES:
        shown.append(f"--locations {path}: ... and {len(lines) - MAX_LINES} more")
    raise MMEarthError("\n".join(shown))


def nearest_ecoregion(eco: Ecoregions, lon: float, lat: float, max_km: float,
                      tree: shapely.STRtree | None = None) -> tuple[int, float | None]:
    """(ECO_ID, km) of the nearest polygon within ``max_km`` on the ground, else (0, None). ``tree``: an STRtree
    over ``eco``'s geometries, to share between calls."""
    from pyproj import Transformer

    frame = eco.frame
    dlat = max_km / 110.574 + 1e-6
    dlon = min(180.0, max_km / (111.320 * max(np.cos(np.radians(lat)), 1e-3)) + 1e-6)
    tree = tree if tree is not None else shapely.STRtree(frame.geometry.to_numpy())
    near = tree.query(shapely.box(lon - dlon, lat - dlat, lon + dlon, lat + dlat))
    if not len(near):
        return 0, None
    to_local = Transformer.from_crs(4326, f"+proj=aeqd +lat_0={lat} +lon_0={lon} +datum=WGS84 +units=m",
                                    always_xy=True)
    geoms = shapely.clip_by_rect(frame.geometry.to_numpy()[near], lon - dlon, lat - dlat, lon + dlon, lat + dlat)
    local = shapely.transform(geoms, lambda xy: np.column_stack(to_local.transform(xy[:, 0], xy[:, 1])))
    km = shapely.distance(shapely.points(0.0, 0.0), local) / 1000.0
    km = np.where(np.isnan(km), np.inf, km)   # clipped away: outside the search box
    k = int(np.argmin(km))
    if not np.isfinite(km[k]) or km[k] > max_km:
        return 0, None
    return int(frame.eco_id.to_numpy()[near[k]]), float(km[k])


def read_given(path: str | Path, eco: Ecoregions, opts: GivenOptions = GivenOptions()) -> GivenLocations:
    """Check and label a user's locations file; raises one line per bad row (nothing is written)."""
    path = Path(path)
    if not path.is_file():
        raise MMEarthError(f"--locations {path}: no such file")
    if opts.label_max_km < 0:
        raise MMEarthError(f"--label-max-km {opts.label_max_km:g}: must be >= 0")
    rows, errors = _parse(path)
    if errors:
        _fail(path, errors)
    if not len(rows):
        raise MMEarthError(f"--locations {path}: holds no rows")
    lon, lat = rows.lon.to_numpy(float), rows.lat.to_numpy(float)
    tree = shapely.STRtree(eco.frame.geometry.to_numpy())   # one index for the lookup and every fallback
    eco_id = lookup_ecoregion(eco, lon, lat, tree)
    label_km = np.full(len(rows), np.nan)
    notes, refused = [], []
    for i in np.flatnonzero(eco_id == 0):
        found, km = nearest_ecoregion(eco, float(lon[i]), float(lat[i]), opts.label_max_km, tree)
        who = f"row {i + 1} ({rows.tile_id.iat[i]}, {lon[i]:.5f}, {lat[i]:.5f})"
        if found:
            eco_id[i], label_km[i] = found, km
            notes.append(f"{who}: in no ecoregion polygon; labelled from the nearest, {km:.2f} km away (ECO_ID {found})")
        else:
            refused.append(f"{who}: no ecoregion within {opts.label_max_km:g} km (sea, Rock and Ice, or a gap)")
    if refused and not opts.allow_unlabelled:
        _fail(path, [f"{r}; --allow-unlabelled keeps it with all-zero biome/eco_region" for r in refused])
    notes += [f"{r}; kept unlabelled (--allow-unlabelled)" for r in refused]
    frame = eco.frame.set_index("eco_id")
    labelled = eco_id != 0
    biome = np.full(len(rows), -1, np.int16)
    eco_region = np.full(len(rows), -1, np.int16)
    biome_num = np.zeros(len(rows), np.int16)
    biome[labelled] = frame.loc[eco_id[labelled], "biome"].to_numpy()
    eco_region[labelled] = frame.loc[eco_id[labelled], "eco_region"].to_numpy()
    biome_num[labelled] = frame.loc[eco_id[labelled], "biome_num"].to_numpy()
    side = 10.0 * opts.tile_px
    overlaps: list[list[str]] = [[] for _ in range(len(rows))]
    drop: set[int] = set()
    ids = rows.tile_id.tolist()
    if opts.dedupe:
        for j, (i, d) in sorted(dedupe_rows(lon, lat, side).items()):
            drop.add(j)
            notes.append(f"rows {i + 1} and {j + 1} ({ids[i]}, {ids[j]}) are {d:.0f} m apart, closer than a "
                         f"tile side ({side:.0f} m): dropped row {j + 1} (--dedupe)")
    else:
        cut: set[int] = set()
        for i, j, d in overlapping_pairs(lon, lat, side):
            for a, b in ((i, j), (j, i)):
                if len(overlaps[a]) < OVERLAPS_LISTED:
                    overlaps[a].append(ids[b])
                else:
                    cut.add(a)
            notes.append(f"rows {i + 1} and {j + 1} ({ids[i]}, {ids[j]}) are {d:.0f} m apart, closer than a tile "
                         f"side ({side:.0f} m): both kept and flagged (--dedupe drops the second)")
        notes += [f"row {a + 1} ({ids[a]}): more rows overlap it than are listed in its overlaps ({OVERLAPS_LISTED})"
                  for a in sorted(cut)]
    keep = np.array([i not in drop for i in range(len(rows))])
    table = pa.table({
        "tile_id": pa.array(ids, pa.string()),
        "lon": pa.array(lon, pa.float64()), "lat": pa.array(lat, pa.float64()),
        "biome": pa.array(biome, pa.int16()), "biome_num": pa.array(biome_num, pa.int16()),
        "eco_region": pa.array(eco_region, pa.int16()), "eco_id": pa.array(eco_id, pa.int32()),
        "utm_epsg": pa.array(utm_epsg(lon, lat), pa.int32()),
        "geometry": point_wkb(lon, lat),
        "label_km": pa.array(label_km, pa.float64()),
        "unlabelled": pa.array(~labelled, pa.bool_()),
        "overlaps": pa.array([",".join(o) for o in overlaps], pa.string()),
        "s2_date": pa.array([v if isinstance(v, str) else None for v in rows.s2_date], pa.string()),
        "s2_start": pa.array([v if isinstance(v, str) else None for v in rows.s2_start], pa.string()),
        "s2_end": pa.array([v if isinstance(v, str) else None for v in rows.s2_end], pa.string()),
        "source_row": pa.array(rows.source_row.to_numpy(np.int32), pa.int32()),
    }).filter(pa.array(keep))
    meta = {"producer": f"mmearth-data {__version__}", "source": path.name, "source_sha256": sha256_file(path),
            "options": asdict(opts), "ecoregions": {"source": Path(eco.source).name, "sha256": eco.sha256}}
    table = table.replace_schema_metadata({b"geo": geo_metadata(lon[keep], lat[keep]),
                                           META_KEY: json.dumps(meta, sort_keys=True).encode()})
    return GivenLocations(table, notes)


def echo_notes(notes: list[str], echo, where: str = "", limit: int = MAX_LINES) -> None:
    """The first ``limit`` notes, one per line, then how many more (and ``where`` they all are)."""
    for line in notes[:limit]:
        echo(line)
    if len(notes) > limit:
        echo(f"... and {len(notes) - limit} more notes" + (f" ({where} lists them all)" if where else ""))


def write_given(given: GivenLocations, out: str | Path) -> Path:
    out = Path(out)
    with atomic_path(out) as tmp:
        pq.write_table(given.table, tmp, compression="zstd")
    return out


def is_sampler_output(path: str | Path, required: tuple[str, ...]) -> bool:
    """A Parquet file that already has the export's columns (the sampler's output, or a converted given file)."""
    p = Path(path)
    if p.suffix.lower() not in (".parquet", ".geoparquet") or not p.is_file():
        return False
    try:
        names = pq.read_schema(p).names
    except Exception:  # noqa: BLE001 - not Parquet: the reader below says why
        return False
    return all(c in names for c in required)
