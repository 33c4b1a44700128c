"""Load the ecoregion polygons the sampler draws from (RESOLVE Ecoregions 2017 or a user file).

The default is the bundled simplified RESOLVE copy (``catalogs/ecoregions/resolve_ecoregions2017_simplified.parquet``,
CC-BY 4.0, see ``catalogs/NOTICE.md``); production runs pass the full-resolution release
(``mmearth-data ecoregions download``). Every polygon is joined with MMEarth's label tables, so each row carries
both RESOLVE ids (``eco_id``, ``biome_num``) and MMEarth class indices (``eco_region``, ``biome``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd

from mmearth_data.catalog import catalog_dir, ecoregion_table
from mmearth_data.errors import MMEarthError
from mmearth_data.io_utils import sha256_file

DEFAULT_NAME = "resolve_ecoregions2017_simplified.parquet"
READABLE = (".shp", ".gpkg", ".parquet", ".geoparquet", ".zip", ".geojson", ".json", ".fgb")


def default_ecoregions_path() -> Path:
    return catalog_dir() / "ecoregions" / DEFAULT_NAME


@dataclass
class Ecoregions:
    """Polygons in EPSG:4326, one row per ecoregion, sorted by ``eco_id``, with the input's checksum."""

    frame: gpd.GeoDataFrame  # columns: eco_id, biome_num, eco_region, biome, eco_name, geometry
    source: str
    sha256: str


def file_sha256(path: Path) -> str:
    """Checksum of the input; for a shapefile, of its .shp, .shx, .dbf and .prj together."""
    parts = [path]
    if path.suffix.lower() == ".shp":
        parts = [path.with_suffix(s) for s in (".shp", ".shx", ".dbf", ".prj") if path.with_suffix(s).exists()]
    return sha256_file(parts)


def _read(path: Path) -> gpd.GeoDataFrame:
    suffix = path.suffix.lower()
    if suffix not in READABLE:
        raise MMEarthError(f"--ecoregions {path}: unsupported format {suffix!r}; use one of {', '.join(READABLE)}")
    try:
        if suffix in (".parquet", ".geoparquet"):
            return gpd.read_parquet(path)
        return gpd.read_file(path)
    except Exception as e:  # pyogrio/pyarrow raise many types; the user needs the path and the reason
        raise MMEarthError(f"--ecoregions {path}: cannot be read ({type(e).__name__}: {e})") from None


def load_ecoregions(path: str | Path | None = None) -> Ecoregions:
    """Read, check and label the ecoregion polygons; Rock and Ice (ECO_ID 0) is dropped as MMEarth does."""
    path = Path(path) if path is not None else default_ecoregions_path()
    if not path.exists():
        raise MMEarthError(f"--ecoregions {path}: no such file")
    gdf = _read(path)
    cols = {c.upper(): c for c in gdf.columns}
    missing = [c for c in ("ECO_ID", "BIOME_NUM") if c not in cols]
    if missing:
        raise MMEarthError(f"--ecoregions {path}: missing column(s) {missing}; expected RESOLVE's ECO_ID and BIOME_NUM")
    if gdf.crs is None:
        raise MMEarthError(f"--ecoregions {path}: has no CRS; set one (RESOLVE ships EPSG:4326)")
    if not gdf.crs.is_geographic or gdf.crs.to_epsg() != 4326:
        try:
            gdf = gdf.to_crs(4326)
        except Exception as e:
            raise MMEarthError(f"--ecoregions {path}: CRS {gdf.crs.name!r} cannot be transformed to EPSG:4326 ({e})") from None
        if not np.isfinite(gdf.total_bounds).all():
            raise MMEarthError(f"--ecoregions {path}: CRS {gdf.crs.name!r} does not transform to finite lon/lat")
    try:
        eco_id = pd.to_numeric(gdf[cols["ECO_ID"]]).astype(int).to_numpy()
        biome_num = pd.to_numeric(gdf[cols["BIOME_NUM"]]).astype(int).to_numpy()
    except (ValueError, TypeError) as e:
        raise MMEarthError(f"--ecoregions {path}: ECO_ID/BIOME_NUM are not integers ({e})") from None
    labels = pd.DataFrame(ecoregion_table()).set_index("eco_id")
    frame = gpd.GeoDataFrame({"eco_id": eco_id, "biome_num": biome_num}, geometry=gdf.geometry.values, crs=4326)
    frame = frame[(frame.eco_id != 0) & ~frame.geometry.is_empty & frame.geometry.notna()]
    unknown = sorted(set(frame.eco_id) - set(labels.index))
    if unknown:
        raise MMEarthError(f"--ecoregions {path}: ECO_ID(s) {unknown[:5]} are not in MMEarth's 846 ecoregions")
    frame = frame.dissolve(by="eco_id", as_index=False, aggfunc="first") if frame.eco_id.duplicated().any() else frame
    bad_biome = frame.biome_num.to_numpy() != labels.loc[frame.eco_id, "biome_num"].to_numpy()
    if bad_biome.any():
        raise MMEarthError(f"--ecoregions {path}: BIOME_NUM disagrees with RESOLVE for ECO_ID "
                           f"{frame.eco_id[bad_biome].tolist()[:5]}")
    frame = frame.sort_values("eco_id").reset_index(drop=True)
    frame["eco_region"] = labels.loc[frame.eco_id, "index"].to_numpy()
    frame["biome"] = labels.loc[frame.eco_id, "biome_index"].to_numpy()
    frame["eco_name"] = labels.loc[frame.eco_id, "name"].to_numpy()
    frame["geometry"] = frame.geometry.make_valid()
    return Ecoregions(frame=frame[["eco_id", "biome_num", "eco_region", "biome", "eco_name", "geometry"]],
                      source=str(path), sha256=file_sha256(path))


def cache_dir() -> Path:
    """Where downloads go: $MMEARTH_DATA_CACHE, else $XDG_CACHE_HOME/mmearth-data, else ~/.cache/mmearth-data."""
    import os

    root = os.environ.get("MMEARTH_DATA_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mmearth-data"


def download_ecoregions(cache: str | Path | None = None, url: str | None = None, *, progress: bool = False,
                        **kwargs) -> tuple[Path, str]:
    """Fetch the full-resolution RESOLVE release into the cache (resumable); returns (path, sha256)."""
    import yaml

    from mmearth_data.download import download

    src = yaml.safe_load((catalog_dir() / "sources" / "ecoregions.yaml").read_text())
    dest = Path(cache or cache_dir()) / "ecoregions" / src["filename"]
    sha = download(url or src["url"], dest, sha256=src.get("sha256"), progress=progress, **kwargs)
    return dest, sha
