"""One tile: every recipe run through its executor, each modality's outcome recorded as a ledger row."""
from __future__ import annotations

import json
import traceback
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..faults import NoCoverage, SourceError, redact, stops_the_run
from ..recipes import RECIPES, TileContext, nodata_array
from ..recipes import sentinel2
from ..staging import (FAILED, NODATA, OK, RETRY, SKIPPED, TILE_DONE, TILE_FAILED, TILE_NO_S2, TILE_RETRY, LedgerRow,
                      digest)


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
    except Exception as e:  # noqa: BLE001 - a source fault or a bug: recorded, the partition goes on
        if stops_the_run(e):
            raise
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
        except Exception as e:  # noqa: BLE001 - see _finish_row: a bug becomes a failed row with its traceback
            if stops_the_run(e):
                raise   # every request would fail alike: the run stops, the tile stays pending
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
