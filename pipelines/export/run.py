"""The whole export: checks, ``export.json`` (written once, compared on resume), the partition tasks dispatched
under the directory's lock, progress."""
from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import replace

import numpy as np

from mmearth_data import __version__
from mmearth_data.errors import MMEarthError
from mmearth_data.io_utils import atomic_write_json

from ..faults import RetryPolicy, redact_all
from ..scheduling import dispatch, lock_holder, output_lock, worker_processes
from ..settings import flat
from ..status import CONFIG_NAME, read_config
from .config import ExportConfig, check_out_dir, check_tile_px, identity, partitions, read_locations
from .partition import export_partition

log = logging.getLogger(__name__)
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
        from ..preflight import preflight

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
        from ..status import ProgressView

        with ProgressView(cfg.out_dir, enabled=progress, log=echo) as view:
            while not done_event.wait(0.5):
                view.refresh()
            view.refresh()
        runner.join()
        if errors:
            raise errors[0]
        from ..status import summarize

        return summarize(cfg.out_dir)
