"""GeoParquet output of the sampler and its report (target vs achieved, every quota move)."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyproj import CRS

from mmearth_data import __version__
from mmearth_data.catalog import biome_table
from mmearth_data.io_utils import atomic_path, atomic_write_json

from .sampler import SampleResult

META_KEY = b"mmearth_sampler"


def tile_ids(result: SampleResult) -> pa.Array:
    """Stable ids: RESOLVE ECO_ID and the ecoregion's own draw counter, e.g. ``842_000017``."""
    eco_ids = pa.array(result.eco.frame.eco_id.to_numpy()[result.eco_index]).cast(pa.string())
    counter = pc.utf8_lpad(pa.array(result.draw_index).cast(pa.string()), 6, "0")
    return pc.binary_join_element_wise(eco_ids, counter, "_")


def point_wkb(lon: np.ndarray, lat: np.ndarray) -> pa.Array:
    """ISO WKB points (21 bytes each: little-endian flag, type 1, x, y) built without per-point objects."""
    rec = np.empty(len(lon), dtype=np.dtype([("order", "u1"), ("type", "<u4"), ("x", "<f8"), ("y", "<f8")]))
    rec["order"], rec["type"], rec["x"], rec["y"] = 1, 1, lon, lat
    offsets = np.arange(0, 21 * len(lon) + 1, 21, dtype=np.int32)
    return pa.Array.from_buffers(pa.binary(), len(lon), [None, pa.py_buffer(offsets), pa.py_buffer(rec.tobytes())])


def to_table(result: SampleResult) -> pa.Table:
    f = result.eco.frame
    e = result.eco_index
    t = result.tiles
    table = pa.table({
        "tile_id": tile_ids(result),
        "lon": pa.array(t.lon, pa.float64()),
        "lat": pa.array(t.lat, pa.float64()),
        "biome": pa.array(f.biome.to_numpy()[e], pa.int16()),
        "biome_num": pa.array(f.biome_num.to_numpy()[e], pa.int16()),
        "eco_region": pa.array(f.eco_region.to_numpy()[e], pa.int16()),
        "eco_id": pa.array(f.eco_id.to_numpy()[e], pa.int32()),
        "utm_epsg": pa.array(t.epsg, pa.int32()),
        "geometry": point_wkb(t.lon, t.lat),
    })
    meta = {
        "producer": f"mmearth-data {__version__}",
        "settings": asdict(result.config) | {"threads": None},  # threads never change the result
        "ecoregions": {"source": Path(result.eco.source).name, "sha256": result.eco.sha256},
        "requested": int(result.config.size),
        "achieved": int(len(result.tiles)),
    }
    return table.replace_schema_metadata({b"geo": geo_metadata(t.lon, t.lat), META_KEY: json.dumps(meta).encode()})


def geo_metadata(lon: np.ndarray, lat: np.ndarray) -> bytes:
    """GeoParquet 1.1 metadata of a WKB point column ``geometry`` in EPSG:4326."""
    bbox = [float(np.min(lon)), float(np.min(lat)), float(np.max(lon)), float(np.max(lat))] if len(lon) else []
    return json.dumps({"version": "1.1.0", "primary_column": "geometry",
                       "columns": {"geometry": {"encoding": "WKB", "geometry_types": ["Point"],
                                                "crs": CRS.from_epsg(4326).to_json_dict(), "bbox": bbox}}}).encode()


def write_locations(result: SampleResult, out: str | Path) -> Path:
    """Write the GeoParquet atomically (temp file in the same directory, then rename)."""
    out = Path(out)
    with atomic_path(out) as tmp:
        pq.write_table(to_table(result), tmp, compression="zstd", row_group_size=256_000,
                       use_dictionary=["biome", "biome_num", "eco_region", "eco_id", "utm_epsg"])
    return out


def report(result: SampleResult) -> dict:
    """Target vs achieved per biome and ecoregion, plus the moves that explain the difference."""
    f = result.eco.frame
    names = {b["index"]: b["name"] for b in biome_table()}
    biomes = []
    for b in sorted(set(f.biome)):
        idx = np.flatnonzero(f.biome.to_numpy() == b)
        biomes.append({"biome": int(b), "name": names[int(b)], "target": int(result.target[idx].sum()),
                       "quota_after_moves": int(result.final_quota[idx].sum()),
                       "achieved": int(result.achieved[idx].sum()),
                       "saturated_ecoregions": int(result.saturated[idx].sum()), "ecoregions": int(len(idx))})
    ecos = [{"eco_id": int(f.eco_id.iat[i]), "eco_region": int(f.eco_region.iat[i]), "biome": int(f.biome.iat[i]),
             "name": f.eco_name.iat[i], "area_km2": round(float(result.areas_km2[i]), 3),
             "target": int(result.target[i]), "quota_after_moves": int(result.final_quota[i]),
             "achieved": int(result.achieved[i]), "saturated": bool(result.saturated[i])} for i in range(len(f))]
    return {"requested": int(result.config.size), "achieved": int(len(result.tiles)), "rounds": result.rounds,
            "settings": asdict(result.config), "ecoregions_sha256": result.eco.sha256, "biomes": biomes,
            "moves": result.moves, "ecoregions": ecos}


def write_report(result: SampleResult, path: str | Path) -> dict:
    rep = report(result)
    atomic_write_json(path, rep, indent=1)
    return rep


def format_report(rep: dict) -> str:
    lines = [f"{'biome':<58} {'target':>9} {'quota':>9} {'achieved':>9} {'saturated eco':>13}"]
    for b in rep["biomes"]:
        lines.append(f"{b['biome']:>2} {b['name'][:55]:<55} {b['target']:>9} {b['quota_after_moves']:>9} "
                     f"{b['achieved']:>9} {b['saturated_ecoregions']:>6}/{b['ecoregions']:<6}")
    moved = sum(m["moved"] for m in rep["moves"])
    lines.append(f"total: requested {rep['requested']}, achieved {rep['achieved']} in {rep['rounds']} rounds; "
                 f"{len(rep['moves'])} quota moves shifted {moved} tiles"
                 + (f", {rep['requested'] - rep['achieved']} could not be placed" if rep['achieved'] < rep['requested'] else ""))
    return "\n".join(lines)
