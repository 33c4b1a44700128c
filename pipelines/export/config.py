"""What an export is: its configuration, its identity, and the checks of its inputs (locations, tile size,
``--out``) that run before anything is written."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from mmearth_data.errors import MMEarthError
from mmearth_data.io_utils import nearest_existing, sha256_file

from ..faults import RetryPolicy
from ..defaults import ATTEMPTS, BACKOFF_S, PARTITION_SIZE, S2_WINDOW_DAYS, TILE_PX, TIMEOUT_S
from ..settings import run_setting, unflat
from ..sources import SourceChoice


REQUIRED_COLUMNS = ("tile_id", "lon", "lat", "biome", "eco_region", "utm_epsg")


# columns of given locations (sampling.given): per-tile time rules and label flags, kept in tile_info
OPTIONAL_COLUMNS = ("s2_date", "s2_start", "s2_end", "label_km", "unlabelled", "overlaps", "source_row")


@dataclass(frozen=True)
class ExportConfig:
    """An export: its locations, where it goes, the source of its pixels and the tile settings (these define the
    staged bytes: :func:`identity`), plus run settings that do not (threads, retries, where sources are kept)."""

    locations: str = run_setting()   # its content is part of the identity (hashed), never its path
    out: str = run_setting()
    source: SourceChoice = field(default_factory=SourceChoice)
    tile_px: int = TILE_PX
    seed: int = 0
    partition_size: int = run_setting(PARTITION_SIZE)   # a resume must use the same one: the staging files are cut by it
    limit: int | None = None
    s2_window_days: int = S2_WINDOW_DAYS   # given locations with a date: nearest scene within +- this many days
    threads: int | None = run_setting(None)
    attempts: int = run_setting(ATTEMPTS)
    backoff_s: float = run_setting(BACKOFF_S)
    timeout_s: float = run_setting(TIMEOUT_S)
    keep_sources: bool = run_setting(False)
    synthetic_dir: str | None = run_setting(None)   # where the synthetic backend writes its sources (default: --out)
    preflight: bool = run_setting(True)   # a service (EE, STAC): check it, and a few tiles, before anything is written
    tune_process: bool = run_setting(False)   # Earth Engine: each exporting process opts in to its settings (the CLI)

    @classmethod
    def of(cls, **options) -> "ExportConfig":
        """From flat option names, as on the command line: ``ExportConfig.of(locations=..., out=...,
        backend="local", catalog=..., gee_project=...)``."""
        return unflat(cls, options)

    @property
    def out_dir(self) -> Path:
        return Path(self.out)

    @property
    def synthetic_root(self) -> Path:
        return Path(self.synthetic_dir) if self.synthetic_dir else self.out_dir / "synthetic"

    def staging_path(self, index: int) -> Path:
        return self.out_dir / "staging" / f"part-{index:05d}.sqlite"

    def policy(self) -> RetryPolicy:
        return RetryPolicy(attempts=self.attempts, base_s=self.backoff_s)


def read_locations(path: str | Path) -> dict[str, np.ndarray]:
    """The columns the export needs from a sampler GeoParquet, checked."""
    path = Path(path)
    if not path.is_file():
        raise MMEarthError(f"{path}: locations file not found (make one with: mmearth-data sample --size 1k --out {path})")
    try:
        table = pq.read_table(path)
    except Exception as e:  # noqa: BLE001 - any parse failure is the user's file
        raise MMEarthError(f"{path}: not a readable Parquet file ({e})") from e
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise MMEarthError(f"{path}: missing column(s) {', '.join(missing)} (expected the output of mmearth-data sample, "
                           "or given locations: CSV with lon, lat columns, GeoParquet or GeoJSON points)")
    cols = {c: table.column(c).to_numpy(zero_copy_only=False) for c in REQUIRED_COLUMNS + OPTIONAL_COLUMNS
            if c in table.column_names}
    cols["tile_id"] = cols["tile_id"].astype(str)
    from sampling.given import tile_id_problem

    bad = [(i, p) for i, p in ((i, tile_id_problem(str(t))) for i, t in enumerate(cols["tile_id"])) if p]
    if bad:
        more = f" (and {len(bad) - 1} more rows)" if len(bad) > 1 else ""
        raise MMEarthError(f"{path}: row {bad[0][0] + 1}: {bad[0][1]}{more}")
    if len(set(cols["tile_id"])) != len(cols["tile_id"]):
        raise MMEarthError(f"{path}: tile_id values are not unique")
    return cols


def check_tile_px(tile_px: int) -> None:
    if not (32 <= tile_px <= 1024 and tile_px % 8 == 0):
        raise MMEarthError(f"--tile-px {tile_px}: use a multiple of 8 from 32 to 1024 (10 m pixels)")


def given_locations(path: str | Path, out_dir: str | Path, options, echo=print) -> Path:
    """The locations an export reads: the sampler's GeoParquet as it is; a user's CSV/GeoParquet/GeoJSON checked
    (one line per bad row, nothing written), labelled and converted to ``<out_dir>/locations.parquet``."""
    from sampling import load_ecoregions
    from sampling.given import echo_notes, is_sampler_output, read_given, write_given

    if not Path(path).is_file():
        raise MMEarthError(f"{path}: locations file not found (make one with: mmearth-data sample --size 1k --out "
                           f"{path}, or give a CSV with lon, lat columns)")
    if is_sampler_output(path, REQUIRED_COLUMNS):
        return Path(path)
    given = read_given(path, load_ecoregions(None), options)
    check_out_dir(Path(out_dir))
    echo_notes(given.notes, echo)
    return write_given(given, Path(out_dir) / "locations.parquet")


def partitions(n: int, size: int) -> list[range]:
    return [range(s, min(s + size, n)) for s in range(0, n, size)]


def check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise MMEarthError(f"--out {out}: exists and is not a directory")
    parent = nearest_existing(out)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise MMEarthError(f"--out {out}: {parent} is not writable")


def identity(cfg: ExportConfig) -> dict:
    """What defines the staged data (hashed into ``config_hash``): never paths, schedulers, worker, thread or
    partition counts."""
    return {"locations_sha256": sha256_file(cfg.locations), **cfg.source.identity(),
            "tile_px": cfg.tile_px, "seed": cfg.seed, "limit": cfg.limit,
            **({"s2_window_days": cfg.s2_window_days} if cfg.s2_window_days != S2_WINDOW_DAYS else {})}
