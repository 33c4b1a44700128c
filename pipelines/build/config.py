"""What a build is: its configuration and identity (``build.yaml``), the checks before anything is written,
and ``--dry-run``'s plan."""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import yaml

from mmearth_data.catalog import load_spec
from mmearth_data.errors import MMEarthError
from mmearth_data.io_utils import atomic_write_bytes

from ..defaults import ATTEMPTS, LABEL_MAX_KM, S2_WINDOW_DAYS, TILE_PX, TIMEOUT_S
from ..faults import redact_all
from ..settings import IDENTITY, identity_fields, run_fields, run_setting, setting
from ..sources import SourceChoice
from ..sources import format_plan as format_sources


EXPORT_PX = 128


# the gzip-4 + shuffle size of a packed 128 px tile relative to its raw bytes (benchmarks/bench_export.py)
PACKED_RATIO = 0.33


GIVEN = "given"   # a field of build --locations: part of the identity only then


@dataclass(frozen=True)
class BuildConfig:
    """A build: what defines the dataset (hashed: :meth:`identity`) and how the run goes (``build.yaml``'s run
    section); the source and the export's run settings are the same objects ``export`` takes."""

    size: int
    size_label: str
    out: str = run_setting()
    source: SourceChoice = field(default_factory=SourceChoice)
    tile_px: int = TILE_PX
    seed: int = 0
    mode: str = "area"
    oversample: float = 1.0
    splits: tuple[float, float, float] = (1.0, 0.0, 0.0)
    partition_size: int | None = run_setting(None)   # default: about 16 partitions, at most 1000 tiles each
    max_failed: str = run_setting("1%")
    retry_failed: bool = run_setting(False)
    threads: int | None = run_setting(None)
    attempts: int = run_setting(ATTEMPTS)
    timeout_s: float = run_setting(TIMEOUT_S)
    # build --locations FILE: given places instead of sampled ones (sampling.given)
    locations: str | None = setting(None, identity=GIVEN)
    label_max_km: float = setting(LABEL_MAX_KM, identity=GIVEN)
    allow_unlabelled: bool = setting(False, identity=GIVEN)
    dedupe: bool = setting(False, identity=GIVEN)
    s2_window_days: int = setting(S2_WINDOW_DAYS, identity=GIVEN)
    require_all: bool = run_setting(False)
    preflight: bool = run_setting(True)   # a service (EE, STAC): check it, and a few tiles, before anything is written
    tune_process: bool = run_setting(False)   # Earth Engine: each exporting process opts in to its settings (the CLI)

    def partition_tiles(self, n: int) -> int:
        return self.partition_size or min(1000, max(20, math.ceil(n / 16)))

    @property
    def name(self) -> str:
        if self.locations:   # data_<file stem>_v001 (MMEarth-train globs data_*.h5)
            stem = "".join(c if c.isalnum() or c in "-" else "-" for c in Path(self.locations).stem)[:60] or "given"
            return f"data_{stem}_v001" + (f"_{self.tile_px}" if self.tile_px != 128 else "")
        return f"data_{self.size_label}_v001" + ("_64" if self.tile_px == 64 else "")

    @property
    def locations_wanted(self) -> int:
        return int(math.ceil(self.size * self.oversample))

    def identity(self) -> dict:
        """What defines the bytes of the dataset (size, mode, seed, backend and its source, tile size, splits,
        oversampling, format version): never where or how the build ran."""
        d = redact_all(identity_fields(self))
        if self.locations:   # the file's content defines the data, never its path; no sampling then
            from mmearth_data.io_utils import sha256_file

            d.update({f.name: getattr(self, f.name) for f in fields(self)
                      if f.metadata.get(IDENTITY) == GIVEN and f.name != "locations"},
                     locations_sha256=sha256_file(self.locations))
            for k in ("size", "mode", "oversample"):
                d.pop(k)
        d["splits"] = list(self.splits)
        if self.source.modality_backends:
            d["modality_backends"] = sorted(self.source.modality_backends)
        d["format"] = "v001"
        return d

    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:16]

    def max_failed_tiles(self) -> float:
        """Failed tiles tolerated before the build exits non-zero (a share of --size may be fractional)."""
        text = str(self.max_failed).strip()
        try:
            if text.endswith("%"):
                share = float(text[:-1])
                if not 0 <= share <= 100:   # NaN fails too
                    raise ValueError
                return share / 100.0 * self.size
            count = int(text)
            if count < 0:
                raise ValueError
            return float(count)
        except ValueError:
            raise MMEarthError(f"--max-failed {self.max_failed!r}: give a tile count (e.g. 10, at least 0) or a "
                               "percentage of --size from 0% to 100% (e.g. 1%)") from None


def size_label(text: str) -> str:
    """``1k``, ``100k``, ``1.2M`` as they appear in MMEarth's stems (``data_100k_v001``)."""
    return text.strip().replace(" ", "")


def check_backend(cfg: BuildConfig) -> None:
    cfg.source.check()
    if cfg.locations:
        from ..export import check_tile_px

        check_tile_px(cfg.tile_px)
    elif cfg.tile_px not in (128, 64):
        raise MMEarthError(f"--tile-px {cfg.tile_px}: MMEarth uses 128 or 64 (any multiple of 8 from 32 to 1024 "
                           "with --locations)")
    cfg.max_failed_tiles()
    if not cfg.locations:   # the dry run's plan too: no size the sampler cannot draw
        from sampling import load_ecoregions
        from sampling.sampler import check_size

        check_size(load_ecoregions(None), cfg.locations_wanted, what=f"--size {cfg.size_label} "
                   f"({cfg.locations_wanted:,} locations with --oversample {cfg.oversample:g})")


def check_inputs(cfg: BuildConfig) -> None:
    """Everything checkable before a byte is written: a failing check leaves --out untouched."""
    from ..export import check_out_dir

    check_backend(cfg)
    check_out_dir(Path(cfg.out))
    cfg.source.probe()


def plan(cfg: BuildConfig) -> dict:
    """What ``--dry-run`` prints: tiles, requests, estimated bytes."""
    spec = load_spec()
    raw = sum(int(np.prod(d.tile_shape(cfg.tile_px))) * d.dtype.itemsize for d in spec.datasets.values())
    staged = sum(int(np.prod(d.tile_shape(EXPORT_PX))) * d.dtype.itemsize for d in spec.datasets.values())
    n = cfg.size if cfg.locations else cfg.locations_wanted
    exported = n if cfg.locations else int(n * 1.3)   # ~22 % are dropped (no usable S2 scene) and replaced
    return {"locations": n, "tiles": cfg.size, "name": cfg.name, "backend": cfg.source.backend,
            "requests_estimate": int(exported * cfg.source.spec.requests_per_tile),
            "sources": cfg.source.plan(),
            "raw_bytes_per_tile": raw, "packed_bytes_estimate": int(cfg.size * raw * PACKED_RATIO),
            "staging_bytes_estimate": int(exported * staged * 0.45),
            "note": "given places without a usable Sentinel-2 scene are reported, not replaced" if cfg.locations else
                    "tiles without a usable Sentinel-2 scene (about 20 %) are replaced from the same ecoregion"}


def format_plan(p: dict) -> str:
    gb = 1e9
    return (f"would build {p['name']} ({p['tiles']} tiles) from {p['locations']} locations with the "
            f"{p['backend']} backend: ~{p['requests_estimate']:,} source requests, "
            f"~{p['packed_bytes_estimate'] / gb:.2f} GB packed ({p['raw_bytes_per_tile'] / 1e6:.2f} MB raw per "
            f"tile), ~{p['staging_bytes_estimate'] / gb:.2f} GB of staging under work/; {p['note']}\n"
            "per modality:\n" + "\n".join(format_sources(p["sources"])))


def read_build_yaml(path: Path) -> dict:
    """The build record at ``path``; one line when it is not one (damaged, emptied, or overwritten by another file):
    resuming against it could not say whether the settings are the same."""
    try:
        doc = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError) as e:
        reason = getattr(e, "strerror", None) or type(e).__name__
        raise MMEarthError(f"{path}: not a readable build record ({reason}); restore it, or start over in another "
                           "--out") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("mmearth_build"), dict) or "config_hash" not in doc:
        raise MMEarthError(f"{path}: not a build record of mmearth-data (no mmearth_build and config_hash); restore "
                           "it, or start over in another --out")
    return doc


def write_config(cfg: BuildConfig, resume: bool) -> None:
    out = Path(cfg.out)
    path = out / "build.yaml"
    doc = {"mmearth_build": cfg.identity(), "config_hash": cfg.hash(),
           "run": redact_all(run_fields(cfg))}
    if path.exists():
        old = read_build_yaml(path)
        if not resume:
            raise MMEarthError(f"{out} already holds a build: add --resume to continue it, or choose another --out")
        if old.get("config_hash") != doc["config_hash"]:
            diff = [k for k, v in doc["mmearth_build"].items() if (old.get("mmearth_build") or {}).get(k) != v]
            raise MMEarthError(f"{path}: --resume with different settings ({', '.join(diff)}); use the original ones")
        return
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, yaml.safe_dump(doc, sort_keys=False).encode())
