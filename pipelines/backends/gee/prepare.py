"""The batch protocol: the searches of a batch of tiles answered in one ``value:compute`` before the tiles run.

The first request holds every tile's Sentinel-2 candidates, the scene Earth Engine picks among them with the tile's
seeded rule, and, on the grid that scene will most likely fix, the tile's Sentinel-1 nearest acquisitions to it and
its ERA5-Land means of the months that scene uses. The seeded choice is then made locally by the recipe's own code
over the returned list (the same choice as the pixel executor's over the same scenes); a tile whose scene is not
the guess (another UTM zone, a given day) has its Sentinel-1 and ERA5-Land asked again, with the others of its batch,
in a second request that the rest of the batch does not wait for. A batch Earth Engine refuses is split in halves
until the entry it refuses is alone; a query not prepared (a resumed tile) is sent on its own.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ...faults import RunStopped, redact
from ...grid import TileGrid
from ...items import Item
from ...recipes import era5, sentinel1, sentinel2
from ...recipes.base import TileContext
from ...recipes.plan import run_search
from . import expressions as ex
from .answers import Answers
from .era5 import Era5
from .query import Query, ms
from .searches import Searches
from .templates import Part, Prebuilt, PrebuiltDict, Templates
from .transport import TIMED_OUT, EarthEngineError

ERA5_GUESS_MONTHS = 36   # months a window may span for ERA5-Land to be asked before the scene is chosen
AFTER_SCENE = ("sentinel1", "era5_land_monthly")   # the sources whose searches need the tile's scene
log = logging.getLogger(__name__)


@dataclass
class _Guess:
    """A tile's part of the first batched request: the grid guessed, and the keys of the answers that hold if its
    scene confirms it (the scene Earth Engine picked; Sentinel-1 as (query on the guessed grid, key); ERA5-Land's
    months)."""

    grid: TileGrid
    pick: tuple
    s1: list[tuple[Query, tuple]]
    era5: tuple | None


def serves(ctx: TileContext, *keys: str) -> bool:
    """Whether any of the sources ``keys`` is routed to a compiling executor for this tile."""
    return any(k in ctx.routes and ctx.routes[k][0].capabilities.compiles for k in keys)


class Preparer:
    """Prepares batches of tiles for one executor.

    Args:
        searches: compiles and parses the searches.
        era5: compiles and parses ERA5-Land's means.
        templates: the expression templates of the process.
        answers: where the answers are kept for the tiles.
        value: sends one expression to ``value:compute`` (``value(expression, attempts, batch)``).
    """

    def __init__(self, searches: Searches, era5_means: Era5, templates: Templates, answers: Answers,
                 value: Callable[..., Any]):
        self.searches, self.era5, self.templates, self.answers, self.value = (searches, era5_means, templates,
                                                                              answers, value)

    def prepare(self, contexts: Sequence[TileContext]) -> None:
        """One batched request for a batch of tiles, before their scenes are chosen (see the module's docstring);
        the queries are the ones the recipes' own searches send (collected, not written again here). What fails
        here is left to the tile's own requests."""
        contexts = [c for c in contexts if serves(c, "sentinel2_l2a", "sentinel2_l1c", *AFTER_SCENE)]
        scenes: dict[str, list[Query]] = {}
        with self.searches.collect() as queries:
            for c in contexts:
                if serves(c, "sentinel2_l2a", "sentinel2_l1c"):
                    first, levels = len(queries), sentinel2.queries(c)
                    for q in levels:
                        sentinel2.run_query(c, q)
                    if len(queries) - first == len(levels):   # every level asked here: Earth Engine can pick
                        scenes[c.tile_id] = queries[first:]
        compiled = {q: self.searches.compile(q) for q in dict.fromkeys(queries)
                    if self.answers.recall(q, wait=False) is None}
        guesses: dict[str, _Guess] = {}
        extra: dict[Any, tuple[Prebuilt, Callable[[Any], Any]]] = {}
        for c in contexts:
            if c.tile_id in scenes:
                guess = self._guess(c, [compiled.get(q) or self.searches.compile(q) for q in scenes[c.tile_id]],
                                    extra)
                if guess is not None:
                    guesses[c.tile_id] = guess
        self._prefetch(queries, extra, compiled)
        leftover = []
        for c in contexts:
            if not serves(c, *AFTER_SCENE):
                continue
            try:
                item, _ = sentinel2.locate(c)
            except Exception:  # noqa: BLE001 - no scene (or a refused query): the tile says so itself
                continue
            guess = guesses.get(c.tile_id)
            if guess is None or not self._confirm(c, item, guess):
                leftover.append(c)
        if leftover:
            self._in_background(*self._after_scene(leftover))

    def _after_scene(self, located: Sequence[TileContext]) -> tuple[list[Query], dict]:
        """The queries that need the tile's scene (its date and grid): Sentinel-1's nearest acquisitions and
        ERA5-Land's months."""
        extra = {}
        with self.searches.collect() as queries:
            for c in located:
                self._sentinel1(c, c.grid, c.s2_date)
                if serves(c, "era5_land_monthly"):
                    extra[self.era5.key(c)] = (self.era5.compile(c), lambda v, c=c: self.era5.result(c, v))
        return queries, extra

    @staticmethod
    def _sentinel1(ctx: TileContext, grid: TileGrid, when: dt.datetime) -> None:
        """Sentinel-1's searches of a tile (noted while collecting): the recipe's own, on ``grid`` around ``when``."""
        if serves(ctx, "sentinel1"):
            for s in sentinel1.searches(ctx, grid, when):
                run_search(ctx, s)

    def _guess(self, ctx: TileContext, scene_queries: list[Prebuilt], extra: dict) -> _Guess | None:
        """What the first request can ask for a tile before its scene is known, on the grid that scene will most
        likely fix: the location's UTM zone, on the 10 m grid from the zone's origin (Sentinel-2's MGRS tiles lie
        on it). Sentinel-1 is ranked by time around the scene Earth Engine picks with the seeded rule
        (:func:`~.expressions.scene_pick`); ERA5-Land covers every month a scene of the window can need. None where
        the rule is not the seeded uniform pick (a given day) or nothing else is asked here."""
        if ctx.s2_rule is not None and ctx.s2_rule.target is not None or not serves(ctx, *AFTER_SCENE):
            return None
        d = sentinel2.draw(ctx)
        grid = TileGrid.centred(ctx.lon, ctx.lat, ctx.utm_epsg, ctx.tile_px)
        pick = self.templates.one(Part(ex.scene_pick, (len(scene_queries),),
                                       {**{str(i): q.slots["images"] for i, q in enumerate(scene_queries)},
                                        "pick": d.pick}))
        when = self.templates.one(Part(ex.picked_time, (), {"scene": pick}))
        guess = _Guess(grid, ("scene-pick", ctx.tile_id), [], None)
        extra[guess.pick] = (pick, lambda v: v)
        start, end = sentinel2.window(ctx, d)
        first_day = dt.datetime(start.year, start.month, start.day, tzinfo=dt.timezone.utc)
        with self.searches.collect() as s1:   # ranked by the computed time below, not by this one
            self._sentinel1(ctx, grid, first_day)
        for i, q in enumerate(s1):
            key = ("s1-nearest-pick", ctx.tile_id, i)
            extra[key] = (self.searches.compile(q, nearest=when), lambda v: v)
            guess.s1.append((q, key))
        if serves(ctx, "era5_land_monthly"):
            _, first, _ = era5.month_range(first_day)
            _, _, after = era5.month_range(dt.datetime(end.year, end.month, 1, tzinfo=dt.timezone.utc))
            if (after.year - first.year) * 12 + after.month - first.month <= ERA5_GUESS_MONTHS:
                guess.era5 = ("era5-window", ctx.tile_id)
                extra[guess.era5] = (self.era5.expression(ctx, grid, first, after, until=when), lambda v: v)
        return guess

    def _confirm(self, ctx: TileContext, item: Item, guess: _Guess) -> bool:
        """Whether the tile's located scene is the one Earth Engine picked and fixes the guessed grid; then its
        guessed answers are remembered under the tile's own queries (False: they are not used)."""
        recall = self.answers.recall
        if ctx.grid != guess.grid or recall(guess.pick, wait=False) != [item.id, ms(ctx.s2_date)]:
            return False
        with self.searches.collect() as s1:
            self._sentinel1(ctx, ctx.grid, ctx.s2_date)
        answers = [recall(key, wait=False) for _, key in guess.s1]
        if len(s1) != len(guess.s1) or any(not isinstance(a, dict) for a in answers) or any(
                dataclasses.replace(q, nearest_ms=None) != dataclasses.replace(g, nearest_ms=None)
                for q, (g, _) in zip(s1, guess.s1)):
            return False
        months = recall(guess.era5, wait=False) if guess.era5 else None
        if guess.era5 and not isinstance(months, dict):
            return False
        for q, answer in zip(s1, answers):
            self.answers.remember(q, self.searches.items(q, answer))
        if guess.era5:
            try:
                self.answers.remember(self.era5.key(ctx), self.era5.result(ctx, months))
            except Exception as e:  # noqa: BLE001 - e.g. ERA5 with no month: that tile's answer, raised there
                self.answers.remember(self.era5.key(ctx), e)
        return True

    def _in_background(self, queries: Sequence[Query], extra: dict) -> None:
        """One batched request sent by a thread of its own; until it is answered its keys are pending."""
        def send() -> None:
            try:
                self._prefetch(queries, extra)
            except RunStopped:
                pass   # the tiles waiting for these keys ask on their own, and meet it too
            except Exception as e:  # noqa: BLE001 - the tiles then ask on their own
                log.warning("a batched Earth Engine request for %d tiles' Sentinel-1 and ERA5-Land failed (%s); "
                            "they are fetched one by one", len(extra) or len(queries), redact(str(e))[:200])
        self.answers.in_background([*queries, *extra], send, "gee-prepare-after-scene")

    def _prefetch(self, queries: Sequence[Query], extra: dict | None = None, compiled: dict | None = None) -> None:
        compiled = compiled or {}
        todo = {q: compiled.get(q) or self.searches.compile(q) for q in dict.fromkeys(queries)
                if self.answers.recall(q, wait=False) is None}
        parse = {q: (lambda a, q=q: self.searches.items(q, a)) for q in todo}
        for key, (expr, fn) in (extra or {}).items():
            todo[key], parse[key] = expr, fn
        self._batch(todo, parse)

    def _batch(self, exprs: dict[Any, Any], parse: dict[Any, Callable[[Any], Any]]) -> None:
        """Answer many keyed expressions in one ``value:compute`` and remember the parsed answers. The request is
        all or nothing: when Earth Engine refuses it, it is split in halves (:meth:`_bisect`), so one bad entry
        costs about 2 log2(n) requests, not n."""
        if not exprs:
            return
        try:
            self._answer(exprs, parse)
        except EarthEngineError as e:
            self._bisect(list(exprs), exprs, parse, e)

    def _bisect(self, keys: list, exprs: dict, parse: dict, error: EarthEngineError) -> None:
        """``keys`` failed together with ``error``: a single one keeps it as its answer (its tile records it, or,
        for a computation that timed out, asks again on its own); else each half is asked, and a half that fails is
        split again: k bad entries cost about 2 k log2(n) requests."""
        if len(keys) == 1:
            if not TIMED_OUT.search(str(error)):
                self.answers.remember(keys[0], error)
            return
        for half in (keys[:len(keys) // 2], keys[len(keys) // 2:]):
            try:
                self._answer({k: exprs[k] for k in half}, parse)
            except EarthEngineError as e:
                self._bisect(half, exprs, parse, e)

    def _answer(self, exprs: dict, parse: dict) -> None:
        names = {k: str(i) for i, k in enumerate(exprs)}
        value = self.value(PrebuiltDict({names[k]: e for k, e in exprs.items()}), batch=len(exprs) > 1)
        for k in exprs:
            try:
                answer = parse[k](value[names[k]])
            except Exception as e:  # noqa: BLE001 - e.g. ERA5 with no month: that tile's answer, raised there
                answer = e
            self.answers.remember(k, answer)
