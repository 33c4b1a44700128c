"""``<stem>_tiles.parquet``: a GeoParquet 1.1 index of a v001 dataset, one row per tile (issue 28).

Columns: ``tile_id``, ``row`` (the HDF5 row), ``geometry`` (the tile's footprint, a WKB polygon in lon/lat),
``bbox`` (its covering struct), ``lon``, ``lat``, ``biome`` (MMEarth's class index 0..13), ``biome_name``,
``eco_region`` (0..845), ``split``, ``s2_date``, ``s2_id``, ``s2_level``, ``crs``, ``source_ids`` (JSON, per
modality) and ``shard`` (the release file holding the row; null for a single file). Built from the side files and
the ``metadata`` dataset only, so it can be written for any v001 dataset, ours or the official ones, local or
streamed. It loads as is in geopandas, DuckDB and QGIS; :func:`select_rows` filters it (or, without pyarrow,
``tile_info``) by ids, bbox, biome, ecoregion, date range and split.
"""
from __future__ import annotations

import datetime as dt
import functools
import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import MMEarthError
from .validate import as_text

PIXEL_M = 10.0
BLOCK = 4096   # metadata rows read at a time


@dataclass(frozen=True)
class TileFilter:
    """Which tiles to use: each given criterion must hold (``bbox`` lon/lat ``(west, south, east, north)`` holds
    the tile's centre; ``biomes`` class indices or names; ``start``/``end`` inclusive ISO dates of the S2 scene)."""

    ids: Sequence[str] | None = None
    bbox: Sequence[float] | None = None
    biomes: Sequence[int | str] | None = None
    eco_regions: Sequence[int] | None = None
    start: str | None = None
    end: str | None = None
    split: str | None = None

    @classmethod
    def of(cls, tiles) -> "TileFilter":
        if isinstance(tiles, TileFilter):
            return tiles
        if isinstance(tiles, Mapping):
            unknown = set(tiles) - set(cls.__dataclass_fields__)
            if unknown:
                raise MMEarthError(f"tiles: unknown filter key(s) {sorted(unknown)}; known: "
                                   f"{sorted(cls.__dataclass_fields__)}")
            return cls(**tiles)
        if isinstance(tiles, str):
            return cls(ids=[tiles])
        return cls(ids=[str(t) for t in tiles])


def index_path(directory: Path, stem: str) -> Path:
    return Path(directory) / f"{stem}_tiles.parquet"


def _ids(h5) -> list[str]:
    meta = h5["metadata"]
    out: list[str] = []
    for a in range(0, meta.shape[0], BLOCK):
        out += [as_text(v[0]) for v in meta[a:a + BLOCK].tolist()]
    return out


def _shards(h5) -> list[str | None]:
    """The release file of each row (a virtual ``metadata``), else None per row."""
    meta = h5["metadata"]
    names: list[str | None] = [None] * meta.shape[0]
    if meta.is_virtual:
        from .chunks import virtual_spans

        for start, stop, name, _ in virtual_spans(meta):
            names[start:stop] = [name] * (min(stop, len(names)) - start)
    return names


def columns(files) -> dict[str, list]:
    """The index's columns (plain lists, row order) from a dataset's files (local or streamed)."""
    from .catalog import biome_table

    if files.is_release:   # a streamed release: its shards hold the ids, its own index says them
        raise MMEarthError(f"{files.h5_path.name}: a release carries its tile index ({files.stem}_tiles.parquet); "
                           "download it, or index the dataset it was sharded from")
    names = {b["index"]: b["name"] for b in biome_table()}
    with files.h5() as h5:
        ids, shards = _ids(h5), _shards(h5)
        px = int(h5.attrs.get("tile_px", 0)) or int(h5["sentinel2"].shape[-1])
    info, splits = files.tile_info, files.splits
    split_of: dict[int, str] = {}
    for name, rows in splits.items():
        for r in rows:
            split_of.setdefault(int(r), name)
    cols: dict[str, list] = {k: [] for k in ("tile_id", "row", "lon", "lat", "biome", "biome_name", "eco_region",
                                             "split", "s2_date", "s2_id", "s2_level", "crs", "source_ids", "shard")}
    for row, tid in enumerate(ids):
        t = info.get(tid) or {}
        biome, eco = t.get("biome"), t.get("eco_region")
        sources = t.get("source_ids") or {}
        s2 = sources.get("sentinel2") or [None]
        for k, v in (("tile_id", tid), ("row", row), ("lon", t.get("lon")), ("lat", t.get("lat")),
                     ("biome", biome), ("biome_name", names.get(biome)), ("eco_region", eco),
                     ("split", split_of.get(row)), ("s2_date", t.get("S2_DATE")), ("s2_id", s2[0]),
                     ("s2_level", t.get("S2_type")), ("crs", t.get("CRS")),
                     ("source_ids", json.dumps(sources, sort_keys=True) if sources else None),
                     ("shard", shards[row])):
            cols[k].append(v)
    cols["_px"] = [px]
    return cols


def footprint(lon: float, lat: float, crs: str | None, px: int) -> tuple[bytes, tuple[float, ...]]:
    """The tile's outline in lon/lat (WKB polygon, little-endian) and its bounds: the square of ``px`` 10 m pixels
    centred on the location in its UTM ``crs``."""
    epsg = int(crs.split(":")[1]) if crs and crs.upper().startswith("EPSG:") else \
        (32600 if lat >= 0 else 32700) + int((lon + 180) // 6) % 60 + 1
    x, y = _transformer(4326, epsg).transform(lon, lat)
    half = px * PIXEL_M / 2
    xs, ys = [x - half, x + half, x + half, x - half, x - half], [y - half, y - half, y + half, y + half, y - half]
    lons, lats = _transformer(epsg, 4326).transform(xs, ys)
    wkb = struct.pack("<BIII", 1, 3, 1, 5) + b"".join(struct.pack("<dd", a, b) for a, b in zip(lons, lats))
    return wkb, (min(lons), min(lats), max(lons), max(lats))


@functools.lru_cache(maxsize=256)
def _transformer(src: int, dst: int):
    from pyproj import Transformer

    return Transformer.from_crs(src, dst, always_xy=True)   # 120 UTM zones: built once each, not per tile


def write_index(files, out: Path | None = None) -> Path:
    """Write ``<stem>_tiles.parquet`` (beside a local dataset, or at ``out``); returns its path. Atomic."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .io_utils import atomic_path

    cols = columns(files)
    px = cols.pop("_px")[0]
    geoms, boxes = [], []
    for lon, lat, crs in zip(cols["lon"], cols["lat"], cols["crs"]):
        if lon is None or lat is None:
            geoms.append(None)
            boxes.append(None)
            continue
        wkb, b = footprint(float(lon), float(lat), crs, px)
        geoms.append(wkb)
        boxes.append(dict(zip(("xmin", "ymin", "xmax", "ymax"), b)))
    real = [b for b in boxes if b is not None]
    extent = [min(b["xmin"] for b in real), min(b["ymin"] for b in real), max(b["xmax"] for b in real),
              max(b["ymax"] for b in real)] if real else None
    geo = {"version": "1.1.0", "primary_column": "geometry", "columns": {"geometry": {
        "encoding": "WKB", "geometry_types": ["Polygon"], "bbox": extent,
        "covering": {"bbox": {k: ["bbox", k] for k in ("xmin", "ymin", "xmax", "ymax")}}}}}
    table = pa.table({
        "tile_id": pa.array(cols["tile_id"], pa.string()), "row": pa.array(cols["row"], pa.int64()),
        "geometry": pa.array(geoms, pa.binary()),
        "bbox": pa.array(boxes, pa.struct([(k, pa.float64()) for k in ("xmin", "ymin", "xmax", "ymax")])),
        "lon": pa.array(cols["lon"], pa.float64()), "lat": pa.array(cols["lat"], pa.float64()),
        "biome": pa.array(cols["biome"], pa.int16()), "biome_name": pa.array(cols["biome_name"], pa.string()),
        "eco_region": pa.array(cols["eco_region"], pa.int16()), "split": pa.array(cols["split"], pa.string()),
        "s2_date": pa.array(cols["s2_date"], pa.string()), "s2_id": pa.array(cols["s2_id"], pa.string()),
        "s2_level": pa.array(cols["s2_level"], pa.string()), "crs": pa.array(cols["crs"], pa.string()),
        "source_ids": pa.array(cols["source_ids"], pa.string()), "shard": pa.array(cols["shard"], pa.string()),
    }).replace_schema_metadata({b"geo": json.dumps(geo).encode()})
    target = Path(out) if out is not None else index_path(files.h5_path.parent, files.stem)
    with atomic_path(target) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return target


def _table(files) -> dict[str, np.ndarray]:
    """The columns a filter needs: from ``<stem>_tiles.parquet`` where pyarrow and the file are there, else from
    the side files."""
    if files.is_release:
        return read_index(files.tile_index())
    path = index_path(files.h5_path.parent, files.stem) if not files.remote else None
    if path is not None and path.is_file():
        try:
            return read_index(path.read_bytes())
        except ImportError:   # no pyarrow: the side files say the same
            pass
    cols = columns(files)
    cols.pop("_px")
    return {c: np.asarray(v, dtype=object) for c, v in cols.items()}


def select_rows(files, tiles) -> np.ndarray:
    """HDF5 rows (sorted) of the tiles ``tiles`` selects: ids, a mapping of filter keys, or a :class:`TileFilter`."""
    return rows_of(_table(files), TileFilter.of(tiles), files.h5_path.name)


def read_index(data: bytes) -> dict[str, np.ndarray]:
    """The filter columns of a ``<stem>_tiles.parquet`` given as bytes (fetched with a release's manifest)."""
    import io

    import pyarrow.parquet as pq

    t = pq.read_table(io.BytesIO(data), columns=["tile_id", "row", "lon", "lat", "biome", "eco_region", "split",
                                                 "s2_date"])
    return {c: np.asarray(t.column(c).to_pylist(), dtype=object) for c in t.column_names}


def rows_of(t: dict[str, np.ndarray], f: TileFilter, where: str) -> np.ndarray:
    """Rows of the index columns ``t`` that filter ``f`` keeps (``where`` names the dataset in errors)."""
    keep = np.ones(len(t["tile_id"]), bool)
    if f.ids is not None:
        wanted = {str(i) for i in f.ids}
        unknown = wanted - set(t["tile_id"])
        if unknown:
            raise MMEarthError(f"tiles: {len(unknown)} id(s) not in {where}, e.g. {sorted(unknown)[:3]}")
        keep &= np.isin(t["tile_id"], list(wanted))
    if f.bbox is not None:
        if len(f.bbox) != 4 or not (f.bbox[0] <= f.bbox[2] and f.bbox[1] <= f.bbox[3]):
            raise MMEarthError(f"tiles: bbox {tuple(f.bbox)} must be (west, south, east, north)")
        lon, lat = (np.array([np.nan if v is None else v for v in t[c]], float) for c in ("lon", "lat"))
        keep &= (lon >= f.bbox[0]) & (lon <= f.bbox[2]) & (lat >= f.bbox[1]) & (lat <= f.bbox[3])
    if f.biomes is not None:
        keep &= np.isin(t["biome"], _biome_indices(f.biomes))
    if f.eco_regions is not None:
        keep &= np.isin(t["eco_region"], [int(e) for e in f.eco_regions])
    if f.start is not None or f.end is not None:
        lo, hi = (_date(f.start) or "0000-00-00"), (_date(f.end) or "9999-99-99")
        keep &= np.array([d is not None and lo <= d <= hi for d in t["s2_date"]])
    if f.split is not None:
        keep &= t["split"] == f.split
    return np.sort(np.asarray(t["row"][keep], dtype=np.int64))


def _date(text: str | None) -> str | None:
    if text is None:
        return None
    try:
        return dt.date.fromisoformat(str(text)).isoformat()
    except ValueError:
        raise MMEarthError(f"tiles: {text!r} is not an ISO date (YYYY-MM-DD)") from None


def _biome_indices(biomes: Sequence[int | str]) -> list[int]:
    from .catalog import biome_table

    table = biome_table()
    out = []
    for b in biomes:
        if isinstance(b, str) and not b.isdigit():
            hits = [r["index"] for r in table if b.lower() in r["name"].lower()]
            if not hits:
                raise MMEarthError(f"tiles: no biome named like {b!r}; biomes: {[r['name'] for r in table]}")
            out += hits
        else:
            out.append(int(b))
    return out


def maybe_write_index(files, log=None) -> Path | None:
    """:func:`write_index` where its libraries (pyarrow, pyproj: the ``[build]`` extra) are installed; else one
    note and None (the dataset is complete without it)."""
    try:
        import pyarrow  # noqa: F401
        import pyproj  # noqa: F401
    except ImportError:
        if log is not None:
            log("no tile index written (it needs pyarrow and pyproj: pip install 'mmearth-data[build]')")
        return None
    return write_index(files)
