"""The export stage: ``locations.parquet`` -> per-tile arrays for every modality, staged per partition.

Locations are cut into partitions of ``partition_size`` rows; each partition is one Dask task that owns its
staging/ledger file (:mod:`pipelines.staging`) and overlaps I/O with a bounded thread pool. The same tasks run on
Dask's threaded scheduler, a ``LocalCluster`` or an existing ``distributed`` cluster with shared storage. Only a
small summary per partition goes back to the client; progress is read from the ledgers themselves, so it works
the same for every scheduler. A killed run is resumed with ``--resume``: committed tiles are never redone.
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from mmearth_data import __version__
from mmearth_data.errors import MMEarthError
from mmearth_data.io_utils import atomic_write_json, sha256_file

from .faults import NoCoverage, RetryPolicy, SourceError
from .recipes import RECIPES, TileContext, load_sources, nodata_array
from .recipes import sentinel2
from .scheduling import LOCAL_SCHEDULERS, distributed_client
from .status import CONFIG_NAME
from .staging import (FAILED, FINAL, NODATA, OK, RETRY, SKIPPED, TILE_DONE, TILE_FAILED, TILE_NO_S2, TILE_RETRY,
                      LedgerRow, PartitionStore, digest)

log = logging.getLogger(__name__)
REQUIRED_COLUMNS = ("tile_id", "lon", "lat", "biome", "eco_region", "utm_epsg")
BACKENDS = ("synthetic", "local")


@dataclass(frozen=True)
class ExportConfig:
    """Everything that determines the staged bytes (hashed), plus knobs that do not (``threads``, retries...)."""

    locations: str
    out: str
    backend: str = "synthetic"
    catalog: str | None = None
    tile_px: int = 128
    seed: int = 0
    partition_size: int = 1000
    limit: int | None = None
    # not part of the identity of the result:
    threads: int | None = None
    attempts: int = 5
    backoff_s: float = 0.2
    timeout_s: float = 20.0
    keep_sources: bool = False

    @property
    def out_dir(self) -> Path:
        return Path(self.out)

    @property
    def synthetic_root(self) -> Path:
        return self.out_dir / "synthetic"

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
        raise MMEarthError(f"{path}: missing column(s) {', '.join(missing)} (expected the output of mmearth-data sample)")
    cols = {c: table.column(c).to_numpy(zero_copy_only=False) for c in REQUIRED_COLUMNS}
    cols["tile_id"] = cols["tile_id"].astype(str)
    if len(set(cols["tile_id"])) != len(cols["tile_id"]):
        raise MMEarthError(f"{path}: tile_id values are not unique")
    return cols


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


def _finish_row(name: str, ctx: TileContext, status: str, exc: BaseException | None = None, result=None) -> LedgerRow:
    counter = ctx.counter(name)
    row = LedgerRow(name, status, attempts=1 + counter.retries)
    if exc is not None:
        row.error_class = exc.error_class if isinstance(exc, SourceError) else type(exc).__name__
        row.message = str(exc)[:500]
    if result is not None:
        row.source_ids = result.source_ids
        row.message = row.message or result.message
    return row


def export_tile(ctx: TileContext, row: int, previous: dict[str, dict] | None = None,
                backend_name: str = "local", extra_info: dict | None = None) -> TileOutcome:
    """Run every recipe for one tile. ``previous``: ledger rows of an earlier attempt (only non-final ones redo)."""
    previous = previous or {}
    info: dict[str, Any] = {"NO_DATA": False, "BANDS": {}, "source_ids": {}, "backend": backend_name,
                            **(extra_info or {})}
    rows: list[LedgerRow] = []
    arrays: dict[str, np.ndarray] = {}
    s2_prev = previous.get(sentinel2.NAME)
    try:
        if s2_prev and s2_prev["status"] == OK:
            sentinel2.locate(ctx)  # the scene choice is deterministic: recompute it, do not re-read pixels
            todo = [r for r in RECIPES if previous.get(r.name, {}).get("status") not in (OK, NODATA, FAILED)]
        else:
            todo = list(RECIPES)
    except NoCoverage as e:
        return _no_s2(ctx, row, info, e)
    except SourceError as e:
        return _s2_failed(ctx, row, info, e)
    for recipe in todo:
        try:
            result = recipe.run(ctx)
        except SourceError as e:
            if recipe.name == sentinel2.NAME:
                return _no_s2(ctx, row, info, e) if isinstance(e, NoCoverage) else _s2_failed(ctx, row, info, e)
            status = NODATA if isinstance(e, NoCoverage) else RETRY if e.transient else FAILED
            r = _finish_row(recipe.name, ctx, status, e)
            rows.append(r)
            info.setdefault("missing", {})[recipe.name] = e.error_class   # why the modality is empty
            if status != RETRY:  # the modality is final: its no-data arrays are the staged result
                filled = {o: nodata_array(o, ctx.tile_px) for o in recipe.outputs}
                r.nbytes, r.sha256 = digest(filled[o] for o in recipe.outputs)
                arrays.update(filled)
            continue
        r = _finish_row(recipe.name, ctx, OK, result=result)
        r.nbytes, r.sha256 = digest(result.arrays[o] for o in recipe.outputs)
        rows.append(r)
        arrays.update(result.arrays)
        info.update(result.info)
        info["BANDS"].update(result.bands)
        info["source_ids"][recipe.name] = result.source_ids
        info.get("missing", {}).pop(recipe.name, None)
    status = TILE_RETRY if any(r.status == RETRY for r in rows) else TILE_DONE
    return TileOutcome(ctx.tile_id, row, status, info, rows, arrays)


def _no_s2(ctx: TileContext, row: int, info: dict, exc: BaseException) -> TileOutcome:
    info.update(NO_DATA=True)
    rows = [_finish_row(sentinel2.NAME, ctx, NODATA, exc)]
    rows += [LedgerRow(r.name, SKIPPED, message="no Sentinel-2 scene") for r in RECIPES if r.name != sentinel2.NAME]
    return TileOutcome(ctx.tile_id, row, TILE_NO_S2, info, rows)


def _s2_failed(ctx: TileContext, row: int, info: dict, exc: SourceError) -> TileOutcome:
    status = TILE_RETRY if exc.transient else TILE_FAILED
    info.update(NO_DATA=True)
    rows = [_finish_row(sentinel2.NAME, ctx, RETRY if exc.transient else FAILED, exc)]
    return TileOutcome(ctx.tile_id, row, status, info, rows)


# -- one partition ---------------------------------------------------------------------------------------------
_BACKENDS: dict[tuple, Any] = {}
_BACKENDS_LOCK = threading.Lock()


def make_backend(cfg: ExportConfig):
    """The backend for a partition task (a local catalog is loaded once per process and shared by its tasks)."""
    from .backends.local import LocalBackend
    from .backends.synthetic import SyntheticBackend

    if cfg.backend == "local":
        key = ("local", cfg.catalog, cfg.timeout_s, cfg.attempts)
        with _BACKENDS_LOCK:
            if key not in _BACKENDS:
                _BACKENDS[key] = LocalBackend(cfg.catalog, timeout_s=cfg.timeout_s, policy=cfg.policy())
            return _BACKENDS[key]
    if cfg.backend == "synthetic":
        return SyntheticBackend(cfg.synthetic_root, cfg.seed, cfg.tile_px, keep_sources=cfg.keep_sources,
                                timeout_s=cfg.timeout_s, policy=cfg.policy())
    raise MMEarthError(f"--backend {cfg.backend!r}: choose one of {', '.join(BACKENDS)}")


def export_partition(cfg: ExportConfig, index: int) -> dict:
    """Export the tiles of partition ``index`` not yet final in its ledger; returns a small summary."""
    locs = read_locations(cfg.locations)
    n = len(locs["tile_id"]) if cfg.limit is None else min(cfg.limit, len(locs["tile_id"]))
    rows = partitions(n, cfg.partition_size)[index]
    with PartitionStore(cfg.staging_path(index)) as store:
        store.set_meta("partition", {"index": index, "rows": [rows.start, rows.stop], "tiles": len(rows)})
        store.set_meta("backend", cfg.backend)
        if cfg.backend == "synthetic":
            store.set_meta("synthetic", "SYNTHETIC sources: plausible values, not real data")
        states = store.tile_states()
        todo = [i for i in rows if states.get(str(locs["tile_id"][i])) not in FINAL]
        if todo:
            log.info("partition %d: %d of %d tiles to export", index, len(todo), len(rows))
            if cfg.backend == "local":
                from .backends.local import forget_all_remote

                forget_all_remote()  # failures cached by an earlier run in this process must not replay
            backend = make_backend(cfg)
            _run_tiles(cfg, backend, store, locs, todo)
        counts = store.counts()
        summary = {"partition": index, "tiles": len(rows), **counts}
        if sum(counts.get(s, 0) for s in FINAL) == len(rows):
            store.set_meta("complete", summary)
    return summary


@dataclass
class Earlier:
    """What an earlier run committed for a tile it left in ``retry``: kept, and only the rest is redone."""

    rows: dict[str, dict]
    arrays: dict[str, np.ndarray]
    info: dict

    def merge_into(self, o: TileOutcome) -> None:
        redone = {r.modality for r in o.rows}
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


def _run_tiles(cfg: ExportConfig, backend, store: PartitionStore, locs: dict[str, np.ndarray], todo: list[int]) -> None:
    from .backends.synthetic import Location

    sources = load_sources("local")
    threads = cfg.threads or backend.default_threads
    extra = {"synthetic": True} if cfg.backend == "synthetic" else {}
    states = store.tile_states()
    earlier = {}  # read here: the SQLite connection stays in this thread
    for i in todo:
        tid = str(locs["tile_id"][i])
        if states.get(tid) == TILE_RETRY:
            earlier[tid] = Earlier({r["modality"]: r for r in store.ledger(tid)}, store.arrays(tid),
                                   store.tile_info(tid) or {})

    def work(i: int) -> TileOutcome:
        tile_id = str(locs["tile_id"][i])
        ctx = TileContext(tile_id=tile_id, lon=float(locs["lon"][i]), lat=float(locs["lat"][i]),
                          utm_epsg=int(locs["utm_epsg"][i]), biome=int(locs["biome"][i]),
                          eco_region=int(locs["eco_region"][i]), tile_px=cfg.tile_px, seed=cfg.seed,
                          backend=backend, sources=sources)
        if hasattr(backend, "for_tile"):  # synthetic: this location's sources, generated on demand
            ctx.backend = backend.for_tile(Location(tile_id, ctx.lon, ctx.lat, ctx.biome))
        before = earlier.get(tile_id)
        outcome = export_tile(ctx, i, before.rows if before else None, cfg.backend, extra)
        if before is not None:
            before.merge_into(outcome)
        return outcome

    pending = deque(todo)
    with ThreadPoolExecutor(threads, thread_name_prefix="tile") as pool:
        running: set = set()
        while pending or running:
            while pending and len(running) < 2 * threads:
                running.add(pool.submit(work, pending.popleft()))
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                o = fut.result()
                store.commit_tile(o.tile_id, o.row, o.status, o.info, o.rows, o.arrays)
                if hasattr(backend, "release"):
                    backend.release(o.tile_id)


# -- the whole export ------------------------------------------------------------------------------------------
def prepare(cfg: ExportConfig, resume: bool) -> tuple[ExportConfig, int]:
    """Check inputs, write/compare ``export.json``; returns the config and the partition count."""
    if cfg.backend not in BACKENDS:
        raise MMEarthError(f"--backend {cfg.backend!r}: choose one of {', '.join(BACKENDS)}")
    if cfg.backend == "local" and not cfg.catalog:
        raise MMEarthError("--backend local needs --catalog PATH_OR_URL (a static STAC catalog)")
    if cfg.backend == "local":
        from .backends.local import StaticCatalog

        StaticCatalog.resolve(cfg.catalog)  # fail before anything is written
    if cfg.backend == "synthetic" and cfg.catalog:
        raise MMEarthError("--catalog is for --backend local; the synthetic backend writes its own sources under --out")
    if cfg.partition_size < 1:
        raise MMEarthError(f"--partition-size {cfg.partition_size}: must be at least 1")
    locs = read_locations(cfg.locations)
    n = len(locs["tile_id"]) if cfg.limit is None else min(cfg.limit, len(locs["tile_id"]))
    identity = {"locations_sha256": sha256_file(cfg.locations), "backend": cfg.backend, "catalog": cfg.catalog,
                "tile_px": cfg.tile_px, "seed": cfg.seed, "partition_size": cfg.partition_size, "limit": cfg.limit}
    doc = {"format": "mmearth-data export", "producer": f"mmearth-data {__version__}",
           "config_hash": hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16],
           "identity": identity, "tiles": n, "partitions": len(partitions(n, cfg.partition_size)),
           "config": {k: v for k, v in asdict(cfg).items()}}
    path = cfg.out_dir / CONFIG_NAME
    if path.exists():
        old = json.loads(path.read_text())
        if not resume:
            raise MMEarthError(f"{cfg.out_dir} already holds an export: add --resume to continue it, or choose another --out")
        diff = [k for k in identity if old.get("identity", {}).get(k) != identity[k]]
        if diff:
            raise MMEarthError(f"{path}: --resume with different settings ({', '.join(diff)}); use the original ones "
                               "or a new --out")
    else:
        cfg.out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, doc)
    return cfg, doc["partitions"]


def run_export(cfg: ExportConfig, *, resume: bool = False, scheduler: str = "threads", workers: int = 1,
               progress: bool = False) -> dict:
    """Run (or resume) an export; returns the summary that ``mmearth-data status`` prints."""
    cfg, n_parts = prepare(cfg, resume)
    if cfg.backend == "synthetic":  # shared by every partition: build once, before the tasks start
        from .backends.synthetic import SyntheticBackend

        SyntheticBackend(cfg.synthetic_root, cfg.seed, cfg.tile_px).era5_root()
    indices = list(range(n_parts))
    done_event = threading.Event()
    errors: list[BaseException] = []

    def compute() -> None:
        try:
            _dispatch(cfg, indices, scheduler, workers)
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


def _dispatch(cfg: ExportConfig, indices: list[int], scheduler: str, workers: int) -> None:
    import dask

    if scheduler == "auto":  # generating sources is CPU-bound Python (processes); reading them is I/O (threads)
        scheduler = "processes" if cfg.backend == "synthetic" and workers > 1 else "threads"

    if scheduler in LOCAL_SCHEDULERS:
        tasks = [dask.delayed(export_partition, pure=False)(cfg, i) for i in indices]
        dask.compute(*tasks, scheduler=scheduler, num_workers=workers)
        return
    from distributed import as_completed

    with distributed_client(scheduler, workers) as client:
        futures = client.map(export_partition, [cfg] * len(indices), indices, pure=False, retries=2)
        for fut in as_completed(futures):
            fut.result()
