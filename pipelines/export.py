"""The export stage: ``locations.parquet`` -> per-tile arrays for every modality, staged per partition.

Locations are cut into partitions of ``partition_size`` rows; each partition is one Dask task that owns its
staging/ledger file (:mod:`pipelines.staging`) and overlaps I/O with a bounded thread pool. The same tasks run on
Dask's threaded scheduler, a ``LocalCluster`` or an existing ``distributed`` cluster with shared storage. Only a
small summary per partition goes back to the client; progress is read from the ledgers themselves, so it works
the same for every scheduler. A killed run is resumed with ``--resume``: committed tiles are never redone.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import threading
import time
import traceback
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from mmearth_data import __version__
from mmearth_data.errors import MMEarthError
from mmearth_data.io_utils import atomic_write_json, sha256_file

from .faults import NoCoverage, RetryPolicy, RunStopped, SourceError, redact, redact_all
from .recipes import RECIPES, TileContext, nodata_array
from .recipes.base import S2Rule
from .recipes import sentinel2
from .backends.gee.batches import Batches
from .scheduling import dispatch, lock_holder, output_lock, worker_processes
from .defaults import ATTEMPTS, BACKOFF_S, PARTITION_SIZE, S2_WINDOW_DAYS, TILE_PX, TIMEOUT_S
from .settings import flat, run_setting, unflat
from .sources import SourceChoice, routes_for
from .status import CONFIG_NAME, read_config
from .staging import (FAILED, FINAL, NODATA, OK, RETRY, SKIPPED, TILE_DONE, TILE_FAILED, TILE_NO_S2, TILE_RETRY,
                      LedgerRow, PartitionStore, digest)

log = logging.getLogger(__name__)
REQUIRED_COLUMNS = ("tile_id", "lon", "lat", "biome", "eco_region", "utm_epsg")
# columns of given locations (sampling.given): per-tile time rules and label flags, kept in tile_info
OPTIONAL_COLUMNS = ("s2_date", "s2_start", "s2_end", "label_km", "unlabelled", "overlaps", "source_row")
COMMIT_TILES, COMMIT_S = 8, 2.0   # group commit of finished tiles


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


# -- one tile --------------------------------------------------------------------------------------------------
@dataclass
class TileOutcome:
    tile_id: str
    row: int
    status: str
    info: dict
    rows: list[LedgerRow]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    searches: int = 0


INTERNAL = "internal"   # error class of an unexpected exception (a bug, or a source no rule foresaw)


def internal_message(exc: BaseException) -> str:
    """``Type: message`` and the traceback, for the ledger (the console gets one line per reason)."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return redact(f"{type(exc).__name__}: {exc}\n{tb[-3000:]}")


def _finish_row(name: str, ctx: TileContext, status: str, exc: BaseException | None = None, result=None) -> LedgerRow:
    counter = ctx.counter(name)
    row = LedgerRow(name, status, attempts=1 + counter.retries)
    if isinstance(exc, SourceError):
        row.error_class, row.message = exc.error_class, redact(str(exc))[:500]
    elif exc is not None:
        row.error_class, row.message = INTERNAL, internal_message(exc)
    if result is not None:
        row.source_ids = result.source_ids
        row.message = row.message or result.message
    return row


def export_tile(ctx: TileContext, row: int, previous: dict[str, dict] | None = None,
                backend_name: str = "local", extra_info: dict | None = None,
                redo: tuple[str, ...] = (RETRY,)) -> TileOutcome:
    """Run every recipe for one tile. ``previous``: ledger rows of an earlier attempt; only modalities whose
    status is in ``redo`` (``retry``, plus ``failed`` for ``--retry-failed``) are run again."""
    previous = previous or {}
    info: dict[str, Any] = {"NO_DATA": False, "BANDS": {}, "source_ids": {}, "backend": backend_name,
                            **(extra_info or {})}
    rows: list[LedgerRow] = []
    arrays: dict[str, np.ndarray] = {}
    s2_prev = previous.get(sentinel2.NAME)
    try:
        if s2_prev and s2_prev["status"] == OK:
            # the scene choice is deterministic: find the same scene again, do not re-read its pixels
            sentinel2.locate(ctx, chosen=(json.loads(s2_prev["source_ids"] or "[]") or [None])[0])
            todo = [r for r in RECIPES if r.name != sentinel2.NAME
                    and previous.get(r.name, {}).get("status", RETRY) in redo]
        else:
            todo = list(RECIPES)
    except NoCoverage as e:
        return _no_s2(ctx, row, info, e)
    except RunStopped:
        raise
    except Exception as e:  # noqa: BLE001 - a source fault or a bug: recorded, the partition goes on
        return _s2_failed(ctx, row, info, e)
    batch: dict[str, Any] = {}

    def run(recipe):
        """The recipe through its executor: the pixel executor (search + read), or one that compiles every
        modality of the tile routed to it into one request (Earth Engine), run once for all of them."""
        executor = _compiling(ctx, recipe)
        if executor is None:
            return recipe.run(ctx)
        if recipe.name not in batch:
            names = [r.name for r in todo if _compiling(ctx, r) is executor and r.name not in batch]
            batch.update(executor.run(ctx, names))
        result = batch[recipe.name]
        if isinstance(result, BaseException):
            raise result
        return result

    for recipe in todo:
        try:
            result = run(recipe)
        except RunStopped:
            raise   # every request would fail alike: the run stops, the tile stays pending
        except Exception as e:  # noqa: BLE001 - see _finish_row: a bug becomes a failed row with its traceback
            if recipe.name == sentinel2.NAME:
                return _no_s2(ctx, row, info, e) if isinstance(e, NoCoverage) else _s2_failed(ctx, row, info, e)
            status = NODATA if isinstance(e, NoCoverage) else RETRY if getattr(e, "transient", False) else FAILED
            r = _finish_row(recipe.name, ctx, status, e)
            rows.append(r)
            info.setdefault("missing", {})[recipe.name] = r.error_class   # why the modality is empty
            if status != RETRY:  # the modality is final: its no-data arrays are the staged result
                info["BANDS"].update({o: None for o in recipe.outputs})
                filled = {o: nodata_array(o, ctx.tile_px) for o in recipe.outputs}
                r.nbytes, r.sha256 = digest(filled[o] for o in recipe.outputs)
                arrays.update(filled)
            continue
        r = _finish_row(recipe.name, ctx, OK, result=result)
        r.nbytes, r.sha256 = digest(result.arrays[o] for o in recipe.outputs)
        rows.append(r)
        arrays.update(result.arrays)
        info.update(result.info)
        for o in recipe.outputs:
            if info["BANDS"].get(o, 0) is None:
                del info["BANDS"][o]
        info["BANDS"].update(result.bands)
        info["source_ids"][recipe.name] = result.source_ids
        info.get("missing", {}).pop(recipe.name, None)
    return TileOutcome(ctx.tile_id, row, tile_status(rows), info, rows, arrays)


def _compiling(ctx: TileContext, recipe):
    """The compiling executor (e.g. Earth Engine) a recipe's sources are routed to, if any."""
    for key in recipe.sources:
        route = ctx.routes.get(key)
        if route is not None and route[0].capabilities.compiles:
            return route[0]
    return None


def tile_status(rows: list[LedgerRow]) -> str:
    """A tile waits for ``--resume`` while a modality is ``retry``; a bug in any recipe fails the whole tile (its
    data cannot be trusted; it is replaced, and ``--retry-failed`` runs it again once the cause is fixed)."""
    if any(r.status == RETRY for r in rows):
        return TILE_RETRY
    if any(r.error_class == INTERNAL for r in rows):
        return TILE_FAILED
    return TILE_DONE


def _no_s2(ctx: TileContext, row: int, info: dict, exc: BaseException) -> TileOutcome:
    info.update(NO_DATA=True)
    rows = [_finish_row(sentinel2.NAME, ctx, NODATA, exc)]
    rows += [LedgerRow(r.name, SKIPPED, message="no Sentinel-2 scene") for r in RECIPES if r.name != sentinel2.NAME]
    return TileOutcome(ctx.tile_id, row, TILE_NO_S2, info, rows)


def _s2_failed(ctx: TileContext, row: int, info: dict, exc: BaseException) -> TileOutcome:
    transient = getattr(exc, "transient", False)
    info.update(NO_DATA=True)
    rows = [_finish_row(sentinel2.NAME, ctx, RETRY if transient else FAILED, exc)]
    return TileOutcome(ctx.tile_id, row, TILE_RETRY if transient else TILE_FAILED, info, rows)


def failed_tile(tile_id: str, row: int, exc: BaseException, backend_name: str) -> TileOutcome:
    """A tile whose setup raised before any recipe ran (e.g. generating its synthetic sources)."""
    r = LedgerRow("tile", FAILED, attempts=1, error_class=INTERNAL, message=internal_message(exc))
    return TileOutcome(tile_id, row, TILE_FAILED, {"NO_DATA": True, "backend": backend_name}, [r])


# -- one partition ---------------------------------------------------------------------------------------------
def export_partition(cfg: ExportConfig, index: int, owner: str | None = None, retry_failed: bool = False) -> dict:
    """Export the tiles of partition ``index`` not yet final in its ledger; returns a small summary.

    ``owner`` is the lock text of the run that dispatched this task: a task still running on a remote worker after
    that run died stops at the next tile once a newer run holds the directory. ``retry_failed`` redoes tiles and
    modalities that failed permanently or with an internal error."""
    locs = read_locations(cfg.locations)
    n = len(locs["tile_id"]) if cfg.limit is None else min(cfg.limit, len(locs["tile_id"]))
    rows = partitions(n, cfg.partition_size)[index]
    with PartitionStore(cfg.staging_path(index)) as store:
        store.set_meta("partition", {"index": index, "rows": [rows.start, rows.stop], "tiles": len(rows)})
        store.set_meta("backend", cfg.source.backend)
        if cfg.source.spec.synthetic:
            store.set_meta("synthetic", "SYNTHETIC sources: plausible values, not real data")
        states = store.tile_states()
        final = tuple(s for s in FINAL if not (retry_failed and s == TILE_FAILED))
        todo = [i for i in rows if states.get(str(locs["tile_id"][i])) not in final]
        if todo:
            log.info("partition %d: %d of %d tiles to export", index, len(todo), len(rows))
            if not cfg.source.spec.synthetic:
                from .backends.local import forget_all_remote

                forget_all_remote()  # failures cached by an earlier run in this process must not replay
            backend = cfg.source.spec.open(cfg)
            _run_tiles(cfg, backend, store, locs, todo, owner, retry_failed)
        counts = store.counts()
        summary = {"partition": index, "tiles": len(rows), **counts}
        if sum(counts.get(s, 0) for s in FINAL) == len(rows):
            store.set_meta("complete", summary)
    return summary


class Superseded(Exception):
    """A newer run holds the output directory: this (orphaned) task stops writing."""


def _check_owner(cfg: ExportConfig, owner: str | None) -> None:
    if owner is not None and lock_holder(cfg.out_dir) != owner:
        raise Superseded(f"{cfg.out_dir}: now held by {lock_holder(cfg.out_dir) or 'nobody'}; stopping")


@dataclass
class Earlier:
    """What an earlier run committed for a tile it left in ``retry``: kept, and only the rest is redone."""

    rows: dict[str, dict]
    arrays: dict[str, np.ndarray]
    info: dict

    def merge_into(self, o: TileOutcome) -> None:
        redone = {r.modality for r in o.rows} | {"tile"}   # a setup failure is superseded by any new attempt
        for r in o.rows:  # attempts accumulate across runs
            r.attempts += int(self.rows.get(r.modality, {}).get("attempts", 0))
        for name, p in self.rows.items():
            if name not in redone:
                o.rows.append(LedgerRow(name, p["status"], p["attempts"], p["error_class"], p["message"] or "",
                                        json.loads(p["source_ids"] or "[]"), p["nbytes"] or 0, p["sha256"]))
        o.arrays = {**self.arrays, **o.arrays}
        ok_now = {r.modality for r in o.rows if r.status == OK}
        missing = {k: v for k, v in {**self.info.get("missing", {}), **o.info.get("missing", {})}.items()
                   if k not in ok_now}
        o.info = {**self.info, **o.info, "BANDS": {**self.info.get("BANDS", {}), **o.info.get("BANDS", {})},
                  "source_ids": {**self.info.get("source_ids", {}), **o.info.get("source_ids", {})}}
        o.info.pop("missing", None)
        if missing:
            o.info["missing"] = missing
        o.status = tile_status(o.rows)


def _run_tiles(cfg: ExportConfig, backend, store: PartitionStore, locs: dict[str, np.ndarray], todo: list[int],
               owner: str | None = None, retry_failed: bool = False) -> None:
    from .backends.synthetic import Location

    choice = cfg.source
    sources = choice.source_map().sources
    routes = routes_for(choice, cfg.timeout_s, cfg.policy())
    threads = cfg.threads or backend.default_threads
    extra = {"synthetic": True} if cfg.source.spec.synthetic else {}
    redo = (RETRY, FAILED) if retry_failed else (RETRY,)
    states = store.tile_states()
    earlier = {}  # read here: the SQLite connection stays in this thread
    for i in todo:
        tid = str(locs["tile_id"][i])
        if states.get(tid) == TILE_RETRY or (retry_failed and states.get(tid) == TILE_FAILED):
            earlier[tid] = Earlier({r["modality"]: r for r in store.ledger(tid)}, store.arrays(tid),
                                   store.tile_info(tid) or {})

    def context(i: int) -> TileContext:
        return TileContext(tile_id=str(locs["tile_id"][i]), lon=float(locs["lon"][i]), lat=float(locs["lat"][i]),
                           utm_epsg=int(locs["utm_epsg"][i]), biome=int(locs["biome"][i]),
                           eco_region=int(locs["eco_region"][i]), tile_px=cfg.tile_px, seed=cfg.seed,
                           backend=backend, sources=sources, routes=routes, s2_rule=time_rule(locs, i, cfg))

    batches = Batches(next((b for b, _ in routes.values() if b.capabilities.batch_size), None), todo, context)

    def work(i: int) -> TileOutcome:
        tile_id = str(locs["tile_id"][i])
        batches.ensure(i)
        try:
            ctx = context(i)
            if backend.capabilities.per_tile:  # synthetic: this location's sources, generated on demand
                ctx.backend = backend.for_tile(Location(tile_id, ctx.lon, ctx.lat, ctx.biome))
        except Exception as e:  # noqa: BLE001 - one bad tile never stops the partition
            return failed_tile(tile_id, i, e, cfg.source.backend)
        before = earlier.get(tile_id)
        outcome = export_tile(ctx, i, before.rows if before else None, cfg.source.backend, {**extra, **given_info(locs, i)},
                              redo)
        outcome.searches = ctx.searches
        if before is not None:
            before.merge_into(outcome)
        return outcome

    pending = deque(todo)
    checked = 0.0
    finished: list[TileOutcome] = []
    committed = time.monotonic()

    def commit() -> None:
        """Group commit (at most ``COMMIT_TILES`` tiles or ``COMMIT_S`` seconds): a kill loses only those, and
        ``--resume`` redoes them to the same bytes; their synthetic sources are released only once committed."""
        nonlocal committed
        store.commit_tiles((o.tile_id, o.row, o.status, o.info, o.rows, o.arrays) for o in finished)
        searched = sum(o.searches for o in finished)
        if searched:   # search requests sent, for status' per-tile figure
            store.set_meta("searches", store.meta("searches", 0) + searched)
        for key, (route, _) in routes.items():   # Earth Engine's requests and adaptive concurrency, for status
            if route.capabilities.meters_requests:
                sent = store.meta("gee", {}).get("by_method", {})
                for method, n in route.take_requests().items():
                    sent[method] = sent.get(method, 0) + n
                store.set_meta("gee", {"by_method": sent, "concurrency": route.limiter.summary()})
                break
        if backend.capabilities.per_tile:
            for o in finished:
                backend.release(o.tile_id)
        finished.clear()
        committed = time.monotonic()

    with ThreadPoolExecutor(threads, thread_name_prefix="tile") as pool:
        running: set = set()
        try:
            while pending or running:
                if time.monotonic() - checked > 1.0:
                    _check_owner(cfg, owner)
                    checked = time.monotonic()
                while pending and len(running) < 2 * threads:
                    running.add(pool.submit(work, pending.popleft()))
                done, running = wait(running, return_when=FIRST_COMPLETED)
                try:
                    finished += [fut.result() for fut in done]  # work() makes every exception a failed outcome...
                except RunStopped:   # ...but one that every tile would meet: what is finished is kept
                    finished += [fut.result() for fut in done if fut.exception() is None]
                    commit()
                    raise
                if len(finished) >= COMMIT_TILES or time.monotonic() - committed > COMMIT_S:
                    commit()
            commit()
        except BaseException:
            pending.clear()
            for fut in running:
                fut.cancel()
            raise


def time_rule(locs: dict[str, np.ndarray], i: int, cfg: ExportConfig) -> S2Rule | None:
    """The Sentinel-2 time rule a given location carries: nearest to its ``s2_date`` within the window, or a seeded
    choice in ``s2_start..s2_end``; None: MMEarth's rule."""
    def day(col: str) -> dt.date | None:
        v = locs.get(col)
        return dt.date.fromisoformat(str(v[i])) if v is not None and v[i] not in (None, "") else None

    target, start, end = day("s2_date"), day("s2_start"), day("s2_end")
    if target is not None:
        w = dt.timedelta(days=cfg.s2_window_days)
        return S2Rule(target - w, target + w, target)
    if start is not None and end is not None:
        return S2Rule(start, end)
    return None


def given_info(locs: dict[str, np.ndarray], i: int) -> dict:
    """What tile_info says about a given location: the label fallback distance, unlabelled, overlapping ids."""
    info: dict[str, Any] = {}
    if "label_km" in locs and np.isfinite(locs["label_km"][i]):
        info["label_distance_km"] = round(float(locs["label_km"][i]), 3)
    if "unlabelled" in locs and bool(locs["unlabelled"][i]):
        info["unlabelled"] = True
    if "overlaps" in locs and locs["overlaps"][i]:
        info["overlaps"] = str(locs["overlaps"][i]).split(",")
    if "source_row" in locs:
        info["source_row"] = int(locs["source_row"][i])
    return info


# -- the whole export ------------------------------------------------------------------------------------------
def check_inputs(cfg: ExportConfig) -> dict[str, np.ndarray]:
    """Every check that needs no output: backend options, the catalog (reachable and a STAC document), the
    locations file and ``--out``. A failing check writes nothing, so the corrected command is accepted."""
    choice = cfg.source
    choice.check()
    check_tile_px(cfg.tile_px)
    if cfg.s2_window_days < 0:
        raise MMEarthError(f"--s2-window {cfg.s2_window_days}: must be >= 0 days")
    if cfg.partition_size < 1:
        raise MMEarthError(f"--partition-size {cfg.partition_size}: must be at least 1")
    check_out_dir(cfg.out_dir)
    locs = read_locations(cfg.locations)
    choice.probe(RetryPolicy(attempts=min(cfg.attempts, 3), base_s=cfg.backoff_s), crawl_policy=cfg.policy())
    return locs


def check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise MMEarthError(f"--out {out}: exists and is not a directory")
    parent = next((p for p in [out, *out.parents] if p.exists()), Path("."))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise MMEarthError(f"--out {out}: {parent} is not writable")


def identity(cfg: ExportConfig) -> dict:
    """What defines the staged data (hashed into ``config_hash``): never paths, schedulers, worker, thread or
    partition counts."""
    return {"locations_sha256": sha256_file(cfg.locations), **cfg.source.identity(),
            "tile_px": cfg.tile_px, "seed": cfg.seed, "limit": cfg.limit,
            **({"s2_window_days": cfg.s2_window_days} if cfg.s2_window_days != S2_WINDOW_DAYS else {})}


def prepare(cfg: ExportConfig, resume: bool, locs: dict[str, np.ndarray]) -> int:
    """Write or compare ``export.json`` (the caller holds the directory's lock); returns the partition count."""
    n = len(locs["tile_id"]) if cfg.limit is None else min(cfg.limit, len(locs["tile_id"]))
    ident = identity(cfg)
    doc = {"format": "mmearth-data export", "producer": f"mmearth-data {__version__}",
           "config_hash": hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16],
           "identity": ident, "partition_size": cfg.partition_size, "tiles": n,
           "partitions": len(partitions(n, cfg.partition_size)), "config": redact_all(flat(cfg)),
           "sources": cfg.source.plan(), "notes": cfg.source.notes()}
    path = cfg.out_dir / CONFIG_NAME
    if path.exists():
        old = read_config(path)
        if not resume:
            raise MMEarthError(f"{cfg.out_dir} already holds an export: add --resume to continue it, or choose another --out")
        diff = [k for k in ident if old.get("identity", {}).get(k) != ident[k]]
        if old.get("partition_size", cfg.partition_size) != cfg.partition_size:
            diff.append("partition_size")   # the staging files are cut by it
        if diff:
            raise MMEarthError(f"{path}: --resume with different settings ({', '.join(diff)}); use the original ones "
                               "or a new --out")
    else:
        atomic_write_json(path, doc)
    return doc["partitions"]


def run_export(cfg: ExportConfig, *, resume: bool = False, scheduler: str = "threads", workers: int = 1,
               progress: bool = False, retry_failed: bool = False, echo=log.info) -> dict:
    """Run (or resume) an export; returns the summary that ``mmearth-data status`` prints. On Earth Engine the
    preflight (pipelines.preflight) runs first, on the run's own first locations, unless ``cfg.preflight`` is off."""
    locs = check_inputs(cfg)
    if cfg.preflight and cfg.source.remote:
        from .preflight import preflight

        preflight(cfg, echo=echo, probed=True)   # check_inputs probed
    with output_lock(cfg.out_dir, "export"):
        n_parts = prepare(cfg, resume, locs)
        owner = lock_holder(cfg.out_dir)
        if cfg.source.spec.prepare_run is not None:   # e.g. sources shared by every partition, made once
            cfg.source.spec.prepare_run(cfg)
        if scheduler == "auto":  # generating sources is CPU-bound Python (processes); reading them is I/O (threads)
            scheduler = "processes" if cfg.source.spec.synthetic and workers > 1 and n_parts > 1 else "threads"
        if cfg.source.uses_gee:   # Earth Engine's quota is the project's: each process of the run takes its part
            gee = replace(cfg.source.gee, processes=worker_processes(scheduler, workers, n_parts))
            cfg = replace(cfg, source=replace(cfg.source, gee=gee))
        done_event = threading.Event()
        errors: list[BaseException] = []

        def compute() -> None:
            try:
                dispatch(export_partition, [(cfg, i, owner, retry_failed) for i in range(n_parts)], scheduler, workers)
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                errors.append(e)
            finally:
                done_event.set()

        runner = threading.Thread(target=compute, name="export-dispatch", daemon=True)
        runner.start()
        from .status import ProgressView

        with ProgressView(cfg.out_dir, enabled=progress) as view:
            while not done_event.wait(0.5):
                view.refresh()
            view.refresh()
        runner.join()
        if errors:
            raise errors[0]
        from .status import summarize

        return summarize(cfg.out_dir)
