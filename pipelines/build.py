"""``mmearth-data build``: sample -> export -> replace what was dropped -> pack, resumable, exactly the size asked.

Layout of ``--out``: ``build.yaml`` (the identity of the data and its hash, plus the run settings),
``<name>.h5`` with the three v001 JSON files, ``build_report.json`` (per biome and ecoregion: target, sampled,
dropped by reason, replaced, final) and ``work/`` (locations and the export of every round). Tiles are exported at
128 px; ``--tile-px 64`` packs their centre 64 x 64, which is how MMEarth64 relates to MMEarth.

Exactly N: a tile dropped after sampling (no usable Sentinel-2 scene, a permanent or internal failure) is replaced
by a new location from the same ecoregion, drawn from a further seeded stream of that ecoregion and never
overlapping any tile drawn before (the sampler with a :class:`~sampling.sampler.Continuation`). Replacements are
exported in further rounds until every ecoregion has its count; an ecoregion that runs out of room moves its
shortfall as the sampler's saturation policy does. Each round's locations depend only on the rounds before, so
the result is the same bytes however often the build is killed and resumed.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import yaml

from mmearth_data.catalog import load_spec
from mmearth_data.errors import MMEarthError
from mmearth_data.io_utils import atomic_write_bytes, atomic_write_json
from mmearth_data.writer import SIDE_FILES, side_path

from .defaults import ATTEMPTS, LABEL_MAX_KM, S2_WINDOW_DAYS, TILE_PX, TIMEOUT_S
from .faults import redact_all
from .settings import IDENTITY, identity_fields, run_fields, run_setting, setting
from .sources import SourceChoice
from .sources import format_plan as format_sources

EXPORT_PX = 128
# the gzip-4 + shuffle size of a packed 128 px tile relative to its raw bytes (benchmarks/bench_export.py)
PACKED_RATIO = 0.33
MAX_ROUNDS = 12          # replacement rounds before the build reports a shortfall
MIN_SUCCESS = 0.25       # floor of the observed success rate used to size a replacement round


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
        from .export import check_tile_px

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
    from .export import check_out_dir

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


def write_config(cfg: BuildConfig, resume: bool) -> None:
    out = Path(cfg.out)
    path = out / "build.yaml"
    doc = {"mmearth_build": cfg.identity(), "config_hash": cfg.hash(),
           "run": redact_all(run_fields(cfg))}
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


# -- rounds ----------------------------------------------------------------------------------------------------
@dataclass
class Tally:
    """Per ecoregion (RESOLVE ECO_ID) over all rounds: what was drawn, dropped (by reason) and done."""

    biome: dict[int, int] = field(default_factory=dict)
    sampled: Counter = field(default_factory=Counter)
    replacements: Counter = field(default_factory=Counter)
    dropped: dict[int, Counter] = field(default_factory=lambda: defaultdict(Counter))
    done: dict[int, list[str]] = field(default_factory=lambda: defaultdict(list))   # tile ids in row order
    replacement_ids: set[str] = field(default_factory=set)
    failed: Counter = field(default_factory=Counter)   # reason -> tiles
    exported: int = 0


def _round_paths(work: Path, r: int) -> tuple[Path, Path]:
    return (work / ("locations.parquet" if r == 0 else f"locations-r{r}.parquet"),
            work / ("export" if r == 0 else f"export-r{r}"))


def _read_round(locations: Path, export_dir: Path, r: int, tally: Tally) -> dict:
    """Add one exported round to ``tally``; returns its locations (for the occupancy of the next round)."""
    import pyarrow.parquet as pq

    from .staging import TILE_DONE, PartitionStore

    table = pq.read_table(locations, columns=["tile_id", "lon", "lat", "eco_id", "biome"]).to_pydict()
    status: dict[str, tuple[str, str]] = {}
    for p in sorted((export_dir / "staging").glob("part-*.sqlite")):
        with PartitionStore(p, readonly=True) as store:
            reasons = {t: f"{s}:{e}" for t, s, e in store.db.execute(
                "SELECT tile_id, status, error_class FROM ledger WHERE status = 'failed' ORDER BY modality DESC")}
            for tid, st in store.db.execute("SELECT tile_id, status FROM tiles ORDER BY row"):
                status[tid] = (st, reasons.get(tid, st) if st == "failed" else st)
    for tid, eco, b in zip(table["tile_id"], table["eco_id"], table["biome"]):
        tally.biome[int(eco)] = int(b)
        (tally.sampled if r == 0 else tally.replacements)[int(eco)] += 1
        st, reason = status.get(tid, ("pending", "pending"))
        if st == TILE_DONE:
            tally.done[int(eco)].append(tid)
            if r:
                tally.replacement_ids.add(tid)
        else:
            tally.dropped[int(eco)][st] += 1
            if st == "failed":
                tally.failed[reason] += 1
    tally.exported += len(table["tile_id"])
    return table


def _targets(cfg: BuildConfig, tally: Tally) -> dict[int, int]:
    """Tiles wanted per ecoregion: the sampled strata, scaled to ``--size`` when ``--oversample`` drew more."""
    from sampling.quotas import largest_remainder

    ecos = sorted(tally.sampled)
    counts = np.array([tally.sampled[e] for e in ecos], dtype=float)
    total = int(counts.sum())
    if total == cfg.size:
        return {e: int(c) for e, c in zip(ecos, counts)}
    want = largest_remainder(cfg.size, counts) if total else np.zeros(0, np.int64)
    return {e: int(q) for e, q in zip(ecos, want)}


def _exhausted_path(locations: Path) -> Path:
    return locations.with_name(locations.stem + ".exhausted.json")


def _replacements(cfg: BuildConfig, eco, r: int, need: dict[int, int], drawn: list[dict], success: float,
                  path: Path) -> int:
    """Draw round ``r``'s replacement locations (written atomically to ``path``, after the ecoregions that ran
    out of room, so a resumed build knows them too); returns how many."""
    from sampling import SamplerConfig, write_locations
    from sampling.sampler import Continuation, sample
    from sampling.spacing import Tiles

    frame = eco.frame
    row_of = {int(e): i for i, e in enumerate(frame.eco_id.to_numpy())}
    from sampling.quotas import largest_remainder

    quota = np.zeros(len(frame), dtype=np.int64)
    ecos = sorted(need)
    missing = np.array([need[e] for e in ecos], dtype=np.int64)
    # ask for more than is missing, as many as the observed success rate says will be dropped again; the extra
    # is shared in proportion to what each ecoregion misses (a per-ecoregion ceil would double the 1s)
    extra = int(math.ceil(missing.sum() / max(success, MIN_SUCCESS))) - int(missing.sum())
    for e, n in zip(ecos, missing + largest_remainder(max(extra, 0), missing.astype(float))):
        quota[row_of[e]] = int(n)
    lon = np.concatenate([np.asarray(d["lon"], float) for d in drawn])
    lat = np.concatenate([np.asarray(d["lat"], float) for d in drawn])
    existing = np.zeros(len(frame), dtype=np.int64)
    first = np.zeros(len(frame), dtype=np.int64)
    for d in drawn:
        for tid, e in zip(d["tile_id"], d["eco_id"]):
            i = row_of[int(e)]
            existing[i] += 1
            first[i] = max(first[i], int(tid.rsplit("_", 1)[1]) + 1)
    scfg = SamplerConfig(size=int(quota.sum()), mode=cfg.mode, seed=cfg.seed)
    result = sample(eco, scfg, more=Continuation(quota, Tiles(lon, lat), existing, first, stream=r))
    if len(result.tiles):
        full = frame.eco_id.to_numpy()[result.saturated & (quota > 0)]
        atomic_write_json(_exhausted_path(path), sorted(int(e) for e in full))
        write_locations(result, path)
    return len(result.tiles)


def _select(targets: dict[int, int], tally: Tally) -> tuple[list[str], dict[int, int]]:
    """The tiles packed: per ecoregion its first ``target`` done tiles in row order; the shortfall of an
    ecoregion that has too few is filled from the spare done tiles of its biome, then of any biome (the
    sampler's saturation policy). Returns the ids and the count per ecoregion."""
    keep = {e: tally.done.get(e, [])[:t] for e, t in targets.items()}
    spare = [(e, tid) for e in sorted(tally.done) for tid in tally.done[e][targets.get(e, 0):]]
    short: Counter = Counter()
    for e, t in targets.items():
        short[tally.biome[e]] += t - len(keep[e])
    for same_biome in (True, False):
        rest = []
        for e, tid in spare:
            b = tally.biome[e] if same_biome else next((k for k, v in sorted(short.items()) if v > 0), None)
            if b is not None and short[b] > 0:
                keep.setdefault(e, []).append(tid)
                short[b] -= 1
            else:
                rest.append((e, tid))
        spare = rest
    return [t for e in sorted(keep) for t in keep[e]], {e: len(v) for e, v in keep.items() if v}


def build_report(cfg: BuildConfig, targets: dict[int, int], keep: list[str], final: dict[int, int], tally: Tally,
                 rounds: int) -> dict:
    from mmearth_data.catalog import biome_table

    names = {b["index"]: b["name"] for b in biome_table()}
    ecos = sorted(set(targets) | set(tally.sampled) | set(tally.replacements))
    replaced = Counter(int(t.rsplit("_", 1)[0]) for t in keep if t in tally.replacement_ids)
    rows = []
    for e in ecos:
        rows.append({"eco_id": e, "biome": tally.biome[e], "target": targets.get(e, 0),
                     "sampled": tally.sampled.get(e, 0), "dropped": dict(sorted(tally.dropped.get(e, Counter()).items())),
                     "replacements_drawn": tally.replacements.get(e, 0), "replaced": replaced.get(e, 0),
                     "final": final.get(e, 0)})
    biomes = []
    for b in sorted({r["biome"] for r in rows}):
        sel = [r for r in rows if r["biome"] == b]
        dropped: Counter = Counter()
        for r in sel:
            dropped.update(r["dropped"])
        biomes.append({"biome": b, "name": names.get(b, str(b)), "ecoregions": len(sel),
                       **{k: sum(r[k] for r in sel) for k in ("target", "sampled", "replacements_drawn", "replaced",
                                                              "final")},
                       "dropped": dict(sorted(dropped.items()))})
    return {"requested": cfg.size, "final": sum(final.values()), "rounds": rounds, "exported": tally.exported,
            "failed_by_reason": dict(sorted(tally.failed.items())), "config_hash": cfg.hash(),
            "biomes": biomes, "ecoregions": rows}


def format_report(rep: dict) -> str:
    lines = [f"{'biome':<48} {'target':>7} {'sampled':>8} {'dropped':>8} {'replaced':>9} {'final':>7}"]
    for b in rep["biomes"]:
        lines.append(f"{b['biome']:>2} {b['name'][:45]:<45} {b['target']:>7} {b['sampled']:>8} "
                     f"{sum(b['dropped'].values()):>8} {b['replaced']:>9} {b['final']:>7}")
    return "\n".join(lines)


# -- the build -------------------------------------------------------------------------------------------------
def run_build(cfg: BuildConfig, *, resume: bool = False, scheduler: str = "auto", workers: int = 2,
              progress: bool = False, echo=print) -> dict:
    from .scheduling import output_lock

    check_inputs(cfg)
    given = _read_given(cfg) if cfg.locations else None   # every bad row reported before anything is written
    if cfg.preflight and cfg.source.remote:
        _preflight(cfg, given, echo)
    if given is not None:
        cfg = replace(cfg, size=given.table.num_rows)
        with output_lock(cfg.out, "build"):
            return _run_given_build(cfg, given, resume, scheduler, workers, progress, echo)
    with output_lock(cfg.out, "build"):
        return _run_build(cfg, resume, scheduler, workers, progress, echo)


def _preflight(cfg: BuildConfig, given, echo) -> None:
    """The preflight (Earth Engine, STAC), before anything is written: on the first given places, or on a few fixed
    places where every modality exists (with --size: nothing is sampled yet)."""
    import tempfile

    from sampling.given import write_given

    from .preflight import places, preflight

    with tempfile.TemporaryDirectory(prefix="mmearth-preflight-") as tmp:
        where = write_given(given, Path(tmp) / "given.parquet") if given is not None else places(tmp, cfg.tile_px)
        ecfg = _export_config(cfg, where, Path(tmp) / "export", cfg.tile_px, given.table.num_rows if given else 3)
        preflight(replace(ecfg, synthetic_dir=None), echo=echo, expect_all=given is None, probed=True)   # check_inputs


def _read_given(cfg: BuildConfig):
    from sampling import load_ecoregions
    from sampling.given import GivenOptions, read_given

    return read_given(cfg.locations, load_ecoregions(None),
                      GivenOptions(cfg.label_max_km, cfg.allow_unlabelled, cfg.dedupe, cfg.tile_px))


def _export_config(cfg: BuildConfig, locations: Path, export_dir: Path, tile_px: int, n_loc: int):
    from .export import ExportConfig

    return ExportConfig(locations=str(locations), out=str(export_dir), source=cfg.source, threads=cfg.threads,
                        attempts=cfg.attempts, timeout_s=cfg.timeout_s,
                        tile_px=tile_px, seed=cfg.seed, partition_size=cfg.partition_tiles(n_loc),
                        s2_window_days=cfg.s2_window_days, preflight=False,   # run_build checked once
                        synthetic_dir=str(Path(cfg.out) / "work" / "synthetic"))   # one ERA5 for every round


def dataset_bytes(h5: Path) -> int:
    """Bytes of a packed dataset: the HDF5 file and its three JSON side files."""
    return sum(p.stat().st_size for p in [h5, *(side_path(h5.parent, h5.stem, k) for k in SIDE_FILES)])


def given_outcomes(export_dir: Path) -> list[dict]:
    """Per given row, in the given order: tile_id, row, status and, for a tile not done, the reason."""
    from .staging import PartitionStore

    out = []
    for p in sorted((export_dir / "staging").glob("part-*.sqlite")):
        with PartitionStore(p, readonly=True) as store:
            reasons = {t: (m or c or s) for t, s, c, m in store.db.execute(
                "SELECT tile_id, status, error_class, message FROM ledger WHERE modality IN ('sentinel2', 'tile') "
                "AND status IN ('nodata', 'failed', 'retry')")}
            for tid, row, st, info in store.db.execute("SELECT tile_id, row, status, info FROM tiles ORDER BY row"):
                entry = {"tile_id": tid, "row": int(json.loads(info).get("source_row", row + 1)), "status": st}
                if st != "done":
                    entry["reason"] = reasons.get(tid, st).splitlines()[0][:300]
                out.append(entry)
    return out


def _run_given_build(cfg: BuildConfig, given, resume: bool, scheduler: str, workers: int, progress: bool,
                     echo) -> dict:
    """build --locations: one export of the given places at --tile-px, in their order, then pack what is done.
    Nothing is replaced: a place without a usable scene is reported (and is an error with --require-all)."""
    from sampling.given import echo_notes, write_given

    from .export import run_export
    from .pack import PackConfig, pack
    from .status import format_summary

    write_config(cfg, resume)
    out, work = Path(cfg.out), Path(cfg.out) / "work"
    work.mkdir(exist_ok=True)
    locations, export_dir = work / "locations.parquet", work / "export"
    if not locations.exists():
        write_given(given, locations)
    echo_notes(given.notes, echo, where="build_report.json")
    n = given.table.num_rows
    echo(f"[1/3] locations: {n} given places from {cfg.locations}")
    t0 = time.perf_counter()
    ecfg = _export_config(cfg, locations, export_dir, cfg.tile_px, n)
    summary = run_export(ecfg, resume=(export_dir / "export.json").exists(), scheduler=scheduler, workers=workers,
                         progress=progress, retry_failed=cfg.retry_failed)
    export_s = time.perf_counter() - t0
    echo(f"[2/3] export ({export_s:.1f} s): " + format_summary(summary))
    rows = given_outcomes(export_dir)
    missing = [r for r in rows if r["status"] != "done"]
    for r in missing[:50]:
        echo(f"row {r['row']} ({r['tile_id']}): {r['status']}: {r['reason']}")
    if len(missing) > 50:
        echo(f"... and {len(missing) - 50} more rows without a tile (build_report.json lists them all)")
    failed = Counter(f"{r['status']}:{r['reason'].split(':')[0]}" for r in missing if r["status"] == "failed")
    report = {"requested": n, "final": n - len(missing), "given": str(cfg.locations), "missing": missing,
              "notes": given.notes, "config_hash": cfg.hash()}
    atomic_write_json(out / "build_report.json", report, indent=1)
    if missing and cfg.require_all:
        raise MMEarthError(f"--require-all: {len(missing)} of {n} given places have no tile (first: row "
                           f"{missing[0]['row']} {missing[0]['tile_id']}: {missing[0]['reason']}); see "
                           f"{out / 'build_report.json'}")
    done = [r["tile_id"] for r in rows if r["status"] == "done"]
    if not done:
        raise MMEarthError(f"{export_dir}: no given place got a tile (mmearth-data status {export_dir})")
    t0 = time.perf_counter()
    h5 = pack(PackConfig(export_dir=str(export_dir), out=str(out), name=cfg.name, tile_px=cfg.tile_px,
                         fractions=cfg.splits, seed=cfg.seed, overwrite=True, build_hash=cfg.hash(),
                         keep_ids=frozenset(done)), scheduler=scheduler, workers=workers, progress=progress)
    pack_s = time.perf_counter() - t0
    nbytes = dataset_bytes(h5)
    echo(f"[3/3] pack: {h5} ({nbytes / 1e6:.1f} MB, {pack_s:.1f} s)")
    echo(f"built {len(done)} of {n} given places ({len(missing)} without a usable Sentinel-2 scene or failed); "
         f"{nbytes / 1e6:.1f} MB in {out}")
    return {"requested": n, "built": len(done), "rounds": 1, "exported": n, "dropped": len(missing),
            "failed": sum(failed.values()), "failed_by_reason": dict(failed), "max_failed": cfg.max_failed_tiles(),
            "bytes": nbytes, "seconds": {"export": round(export_s, 1), "pack": round(pack_s, 1)}, "h5": str(h5),
            "config_hash": cfg.hash(), "missing": missing}


def _run_build(cfg: BuildConfig, resume: bool, scheduler: str, workers: int, progress: bool, echo) -> dict:
    from sampling import SamplerConfig, load_ecoregions, sample, write_locations, write_report

    from .export import run_export
    from .pack import PackConfig, pack
    from .status import format_summary

    write_config(cfg, resume)
    out = Path(cfg.out)
    work = out / "work"
    work.mkdir(exist_ok=True)
    times: Counter = Counter()

    t0 = time.perf_counter()
    eco = load_ecoregions(None)
    locations, _ = _round_paths(work, 0)
    if not locations.exists():
        scfg = SamplerConfig(size=cfg.locations_wanted, mode=cfg.mode, seed=cfg.seed)
        scfg.check()
        result = sample(eco, scfg)
        write_report(result, work / "locations.parquet.report.json")
        write_locations(result, locations)
    times["sample"] += time.perf_counter() - t0
    echo(f"[1/3] sample: {cfg.locations_wanted} locations ({times['sample']:.1f} s)")

    tally = Tally()
    drawn: list[dict] = []
    exports: list[str] = []
    targets: dict[int, int] = {}
    exhausted: set[int] = set()   # ecoregions with no room left: their shortfall moves (see _select)
    rounds = 0
    for r in range(MAX_ROUNDS + 1):
        locations, export_dir = _round_paths(work, r)
        if r > 0:
            have = {e: len(v) for e, v in tally.done.items()}
            need = {e: t - have.get(e, 0) for e, t in targets.items() if t > have.get(e, 0) and e not in exhausted}
            if not need:
                break
            if not locations.exists():
                t0 = time.perf_counter()
                success = sum(have.values()) / max(tally.exported, 1)
                n = _replacements(cfg, eco, r, need, drawn, success, locations)
                times["sample"] += time.perf_counter() - t0
                if not n:
                    echo(f"round {r}: no room left for {sum(need.values())} replacement(s) in their ecoregions")
                    break
        if not locations.exists():
            break
        if r > 0:
            exhausted |= set(json.loads(_exhausted_path(locations).read_text()))
        t0 = time.perf_counter()
        import pyarrow.parquet as pq

        n_loc = pq.read_metadata(locations).num_rows
        ecfg = _export_config(cfg, locations, export_dir, EXPORT_PX, n_loc)
        summary = run_export(ecfg, resume=(export_dir / "export.json").exists(), scheduler=scheduler,
                             workers=workers, progress=progress, retry_failed=cfg.retry_failed)
        times["export"] += time.perf_counter() - t0
        label = "export" if r == 0 else f"export round {r} ({n_loc} replacements)"
        echo(f"[2/3] {label} ({time.perf_counter() - t0:.1f} s): " + format_summary(summary))
        drawn.append(_read_round(locations, export_dir, r, tally))
        exports.append(str(export_dir))
        rounds = r
        if r == 0:
            targets = _targets(cfg, tally)

    keep, final = _select(targets, tally)
    if not keep:
        raise MMEarthError(f"{work / 'export'}: no tile is done (mmearth-data status {work / 'export'})")
    report = build_report(cfg, targets, keep, final, tally, rounds)
    atomic_write_json(out / "build_report.json", report, indent=1)

    t0 = time.perf_counter()
    h5 = pack(PackConfig(export_dir=exports[0], more_exports=tuple(exports[1:]), out=str(out), name=cfg.name,
                         tile_px=cfg.tile_px, fractions=cfg.splits, seed=cfg.seed, overwrite=True,
                         build_hash=cfg.hash(), keep_ids=frozenset(keep)),
              scheduler=scheduler, workers=workers, progress=progress)
    times["pack"] += time.perf_counter() - t0
    nbytes = dataset_bytes(h5)
    built = len(json.loads(side_path(h5.parent, h5.stem, "tile_info").read_text()))
    echo(f"[3/3] pack: {h5} ({nbytes / 1e6:.1f} MB, {times['pack']:.1f} s)")
    echo(format_report(report))
    dropped = sum(sum(c.values()) for c in tally.dropped.values())
    echo(f"built {built} of {cfg.size} requested tiles in {sum(times.values()):.0f} s (sample {times['sample']:.0f} s, "
         f"export {times['export']:.0f} s, pack {times['pack']:.0f} s); {tally.exported} locations exported in "
         f"{rounds + 1} round(s), {dropped} dropped and replaced; {nbytes / 1e6:.1f} MB in {out}")
    failed = sum(tally.failed.values())
    return {"requested": cfg.size, "built": built, "rounds": rounds + 1, "exported": tally.exported,
            "dropped": dropped, "failed": failed, "failed_by_reason": dict(tally.failed),
            "max_failed": cfg.max_failed_tiles(), "bytes": nbytes,
            "seconds": {k: round(v, 1) for k, v in times.items()}, "h5": str(h5), "config_hash": cfg.hash()}
