"""One partition task: its tiles exported by a bounded thread pool and group-committed to its staging file;
what an earlier run committed is kept and merged."""
from __future__ import annotations

import datetime as dt
import json
import logging
import time
import warnings
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..faults import stops_the_run
from ..recipes import TileContext
from ..recipes.base import S2Rule
from ..backends.gee.batches import Batches
from ..scheduling import lock_holder
from ..sources import routes_for
from ..staging import FAILED, FINAL, OK, RETRY, TILE_FAILED, TILE_RETRY, LedgerRow, PartitionStore
from .config import ExportConfig, partitions, read_locations
from .tile import TileOutcome, export_tile, failed_tile, tile_status

log = logging.getLogger(__name__)
COMMIT_TILES, COMMIT_S = 8, 2.0   # group commit of finished tiles


def export_partition(cfg: ExportConfig, index: int, owner: str | None = None, retry_failed: bool = False) -> dict:
    """Export the tiles of partition ``index`` not yet final in its ledger; returns a small summary.

    ``owner`` is the lock text of the run that dispatched this task: a task still running on a remote worker after
    that run died stops at the next tile once a newer run holds the directory. ``retry_failed`` redoes tiles and
    modalities that failed permanently or with an internal error."""
    if cfg.tune_process:   # the CLI's own processes; once per partition task, in whichever process runs it
        # rasterio warns that an in-memory warp source has no geotransform though one is given (odc-geo#131)
        warnings.filterwarnings("ignore", message="Dataset has no geotransform")
        if cfg.source.uses_gee:
            from ..backends.gee.session import tune_process

            tune_process()
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
                from ..backends.local import forget_all_remote

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
    from ..backends.synthetic import Location

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
        except Exception as e:  # noqa: BLE001 - one bad tile never stops the partition...
            if stops_the_run(e):   # ...but this machine's fault stops every tile alike
                raise
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
                except Exception as e:   # ...but one that every tile would meet: what is finished is kept
                    if not stops_the_run(e):
                        raise
                    finished += [fut.result() for fut in done if fut.exception() is None]
                    commit()   # (on a full disk this fails too: its error then carries the first one)
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
