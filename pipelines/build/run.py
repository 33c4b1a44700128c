"""The build's two drivers: sampled (sample, export rounds until every ecoregion has its count, pack) and
given places (one export, pack what is done)."""
from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

from mmearth_data.errors import MMEarthError
from mmearth_data.io_utils import atomic_write_json
from mmearth_data.writer import SIDE_FILES, side_path

from .config import BuildConfig, EXPORT_PX, check_inputs, write_config
from .rounds import (MAX_ROUNDS, Tally, _exhausted_path, _read_round, _replacements, _round_paths, _select, _targets,
                     build_report, format_report)


def run_build(cfg: BuildConfig, *, resume: bool = False, scheduler: str = "auto", workers: int = 2,
              progress: bool = False, echo=print) -> dict:
    from ..scheduling import output_lock

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

    from ..preflight import places, preflight

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
    from ..export import ExportConfig

    return ExportConfig(locations=str(locations), out=str(export_dir), source=cfg.source, threads=cfg.threads,
                        attempts=cfg.attempts, timeout_s=cfg.timeout_s, tune_process=cfg.tune_process,
                        tile_px=tile_px, seed=cfg.seed, partition_size=cfg.partition_tiles(n_loc),
                        s2_window_days=cfg.s2_window_days, preflight=False,   # run_build checked once
                        synthetic_dir=str(Path(cfg.out) / "work" / "synthetic"))   # one ERA5 for every round


def dataset_bytes(h5: Path) -> int:
    """Bytes of a packed dataset: the HDF5 file and its three JSON side files."""
    return sum(p.stat().st_size for p in [h5, *(side_path(h5.parent, h5.stem, k) for k in SIDE_FILES)])


def given_outcomes(export_dir: Path) -> list[dict]:
    """Per given row, in the given order: tile_id, row, status and, for a tile not done, the reason."""
    from ..staging import PartitionStore

    out = []
    for p in sorted((export_dir / "staging").glob("part-*.sqlite")):
        with PartitionStore(p, readonly=True) as store:
            reasons = store.unfinished_reasons()
            for tid, row, st, info in store.tiles_in_order():
                entry = {"tile_id": tid, "row": int(info.get("source_row", row + 1)), "status": st}
                if st != "done":
                    entry["reason"] = reasons.get(tid, st).splitlines()[0][:300]
                out.append(entry)
    return out


def _run_given_build(cfg: BuildConfig, given, resume: bool, scheduler: str, workers: int, progress: bool,
                     echo) -> dict:
    """build --locations: one export of the given places at --tile-px, in their order, then pack what is done.
    Nothing is replaced: a place without a usable scene is reported (and is an error with --require-all)."""
    from sampling.given import echo_notes, write_given

    from ..export import run_export
    from ..pack import PackConfig, pack
    from ..status import format_summary

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
                         progress=progress, retry_failed=cfg.retry_failed, echo=echo)
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

    from ..export import run_export
    from ..pack import PackConfig, pack
    from ..status import format_summary

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
                             workers=workers, progress=progress, retry_failed=cfg.retry_failed, echo=echo)
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
