"""``mmearth-data build``: sample -> export -> pack in one command, resumable, with its configuration on disk.

Layout of ``--out``: ``build.yaml`` (effective configuration and its hash), ``<name>.h5`` and the three v001 JSON
files, and ``work/`` (``locations.parquet``, the export's staging and ledgers). Tiles are always exported at
128 px; ``--tile-px 64`` packs their centre 64 x 64, which is how MMEarth64 relates to MMEarth.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import yaml

from mmearth_data.catalog import load_spec
from mmearth_data.errors import MMEarthError
from mmearth_data.io_utils import atomic_write_bytes

EXPORT_PX = 128
AVAILABLE = ("synthetic", "local")
PLANNED = {"planetary-computer": "the STAC API / Planetary Computer backend", "gee": "the Earth Engine backend"}
# measured (benchmarks/bench_export.py, synthetic catalog over HTTP): requests per exported tile, and the gzip-4 +
# shuffle size of a packed 128 px tile relative to its raw bytes
REQUESTS_PER_TILE = {"synthetic": 0, "local": 28}
PACKED_RATIO = 0.33


@dataclass(frozen=True)
class BuildConfig:
    size: int
    size_label: str
    out: str
    backend: str = "synthetic"
    catalog: str | None = None
    tile_px: int = 128
    seed: int = 0
    mode: str = "area"
    oversample: float = 1.0
    splits: tuple[float, float, float] = (1.0, 0.0, 0.0)
    partition_size: int | None = None   # default: about 8 partitions, at most 1000 tiles each

    @property
    def partition_tiles(self) -> int:
        return self.partition_size or min(1000, max(25, math.ceil(self.locations_wanted / 8)))

    @property
    def name(self) -> str:
        return f"data_{self.size_label}_v001" + ("_64" if self.tile_px == 64 else "")

    @property
    def locations_wanted(self) -> int:
        return int(math.ceil(self.size * self.oversample))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["splits"] = list(self.splits)
        return d

    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def size_label(text: str) -> str:
    """``1k``, ``100k``, ``1.2M`` as they appear in MMEarth's stems (``data_100k_v001``)."""
    return text.strip().replace(" ", "")


def check_backend(cfg: BuildConfig) -> None:
    if cfg.backend in PLANNED:
        raise MMEarthError(f"--backend {cfg.backend}: {PLANNED[cfg.backend]} is not built yet; use synthetic or local")
    if cfg.backend not in AVAILABLE:
        raise MMEarthError(f"--backend {cfg.backend!r}: choose one of {', '.join(AVAILABLE + tuple(PLANNED))}")
    if cfg.tile_px not in (128, 64):
        raise MMEarthError(f"--tile-px {cfg.tile_px}: MMEarth uses 128 or 64")


def plan(cfg: BuildConfig) -> dict:
    """What ``--dry-run`` prints: tiles, requests, estimated bytes."""
    spec = load_spec()
    raw = sum(int(np.prod(d.tile_shape(cfg.tile_px))) * d.dtype.itemsize for d in spec.datasets.values())
    staged = sum(int(np.prod(d.tile_shape(EXPORT_PX))) * d.dtype.itemsize for d in spec.datasets.values())
    n = cfg.locations_wanted
    return {"locations": n, "name": cfg.name, "backend": cfg.backend,
            "requests_estimate": n * REQUESTS_PER_TILE.get(cfg.backend, 0),
            "raw_bytes_per_tile": raw, "packed_bytes_estimate": int(n * raw * PACKED_RATIO),
            "staging_bytes_estimate": int(n * staged * 0.45),
            "note": "tiles without a usable Sentinel-2 scene (about 20 %) are dropped; --oversample compensates"}


def format_plan(p: dict) -> str:
    gb = 1e9
    return (f"would build {p['name']} from {p['locations']} locations with the {p['backend']} backend: "
            f"~{p['requests_estimate']:,} source requests, ~{p['packed_bytes_estimate'] / gb:.2f} GB packed "
            f"({p['raw_bytes_per_tile'] / 1e6:.2f} MB raw per tile), ~{p['staging_bytes_estimate'] / gb:.2f} GB of "
            f"staging under work/; {p['note']}")


def write_config(cfg: BuildConfig, resume: bool) -> None:
    out = Path(cfg.out)
    path = out / "build.yaml"
    doc = {"mmearth_build": cfg.to_dict(), "config_hash": cfg.hash()}
    if path.exists():
        old = yaml.safe_load(path.read_text()) or {}
        if not resume:
            raise MMEarthError(f"{out} already holds a build: add --resume to continue it, or choose another --out")
        if old.get("config_hash") != doc["config_hash"]:
            diff = [k for k, v in doc["mmearth_build"].items() if (old.get("mmearth_build") or {}).get(k) != v]
            raise MMEarthError(f"{path}: --resume with different settings ({', '.join(diff)}); use the original ones")
        return
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, yaml.safe_dump(doc, sort_keys=False).encode())


def run_build(cfg: BuildConfig, *, resume: bool = False, scheduler: str = "auto", workers: int = 2,
              progress: bool = False, echo=print) -> dict:
    check_backend(cfg)
    write_config(cfg, resume)
    out = Path(cfg.out)
    work = out / "work"
    work.mkdir(exist_ok=True)
    times: dict[str, float] = {}

    t0 = time.perf_counter()
    locations = work / "locations.parquet"
    if not locations.exists():
        from sampling import SamplerConfig, load_ecoregions, sample, write_locations, write_report

        scfg = SamplerConfig(size=cfg.locations_wanted, mode=cfg.mode, seed=cfg.seed)
        scfg.check()
        result = sample(load_ecoregions(None), scfg)
        write_report(result, work / "locations.parquet.report.json")
        write_locations(result, locations)
    times["sample"] = time.perf_counter() - t0
    echo(f"[1/3] sample: {cfg.locations_wanted} locations ({times['sample']:.1f} s)")

    from .export import ExportConfig, run_export
    from .status import format_summary

    t0 = time.perf_counter()
    ecfg = ExportConfig(locations=str(locations), out=str(work / "export"), backend=cfg.backend, catalog=cfg.catalog,
                        tile_px=EXPORT_PX, seed=cfg.seed, partition_size=cfg.partition_tiles)
    summary = run_export(ecfg, resume=(work / "export" / "export.json").exists(), scheduler=scheduler,
                         workers=workers, progress=progress)
    times["export"] = time.perf_counter() - t0
    echo(f"[2/3] export ({times['export']:.1f} s): " + format_summary(summary))

    from .pack import PackConfig, pack

    t0 = time.perf_counter()
    h5 = pack(PackConfig(export_dir=str(work / "export"), out=str(out), name=cfg.name, tile_px=cfg.tile_px,
                         fractions=cfg.splits, seed=cfg.seed, overwrite=True, build_hash=cfg.hash()),
              scheduler=scheduler, workers=workers, progress=progress)
    times["pack"] = time.perf_counter() - t0
    files = [h5, *(out / f"{cfg.name}_{k}.json" for k in ("tile_info", "band_stats", "splits"))]
    nbytes = sum(p.stat().st_size for p in files)
    built = len(json.loads(files[1].read_text()))
    echo(f"[3/3] pack: {h5} ({nbytes / 1e6:.1f} MB, {times['pack']:.1f} s)")
    report = {"requested": cfg.size, "locations": cfg.locations_wanted, "built": built,
              "not_built": summary["by_status"], "failures": summary["failures"], "bytes": nbytes,
              "seconds": {k: round(v, 1) for k, v in times.items()}, "h5": str(h5), "config_hash": cfg.hash()}
    echo(f"built {built} of {cfg.size} requested tiles in {sum(times.values()):.0f} s "
         f"(sample {times['sample']:.0f} s, export {times['export']:.0f} s, pack {times['pack']:.0f} s); "
         f"{nbytes / 1e6:.1f} MB in {out}")
    return report
