"""The Earth Engine executor: the recipes' plans compiled into Earth Engine expressions, so that a tile costs one
``image:computePixels`` (NPY) of one merged image on the tile grid, plus its share of batched searches. Both are
the methods ``ee.data.computePixels`` / ``computeValue`` call, posted by session.Rest with the expressions ``ee``
built (templates.py).

It composes: the searches (searches.py: the recipes' own queries as filter chains, query.py), the batch protocol
(prepare.py: a batch of tiles' searches in one ``value:compute``), the prepared answers (answers.py), each recipe's
plan compiled into its part of the merged image (compile.py, with the operators of expressions.py), the pixel fetch
(pixels.py, decode.py) and ERA5-Land's area means (era5.py), all sent through the project's quota and the retry
policy (transport.py). No modality is known here: the searches, resampling, reducers and the conversion to v001
arrays and tile_info are the recipes' own, so the same input pixels give the same bytes as the pixel executor's.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import numpy as np

from mmearth_data.errors import MMEarthError

from ...faults import Attempts, NoCoverage, RetryPolicy, SourceError
from ...items import Item
from ...recipes import sentinel2
from ...recipes.base import RecipeResult, Source, TileContext
from ..capabilities import Capabilities
from . import expressions as ex
from .answers import Answers
from .compile import EmptyScene, assets, compile_plan, compile_recipe
from .decode import MASKED
from .decode import npy_bands as _npy_bands
from .era5 import Era5
from .limiter import AimdLimiter
from .pixels import MAX_BYTES, Compiled, Pixels
from .prepare import Preparer
from .searches import Searches
from .session import READ_TIMEOUT_S, connect
from .templates import SHARED, Prebuilt, PrebuiltDict, expression_json
from .transport import EarthEngineError, Requests, first_line

__all__ = ["CONCURRENCY", "EarthEngineError", "GeeExecutor", "MASKED", "MAX_BYTES", "RATE_PER_S", "VALUES",
           "_npy_bands"]

VALUES = ("era5",)   # computed by value:compute (reduceRegion), not computePixels
CONCURRENCY = 40     # Earth Engine's default quota per project: requests in flight...
RATE_PER_S = 100.0   # ...and requests per second, on either endpoint (developers.google.com/earth-engine/guides/usage)
RATE_MARGIN = 0.95   # requests are spaced below the rate: jitter on the way bunches them, no second may pass it
KINDS = ("collection", "image")   # how a source map's asset is loaded: ee.ImageCollection or ee.Image


class GeeExecutor:
    """Compiles, batches and fetches what is routed to Earth Engine; one instance (limiter, counters, prepared
    answers) per process. It is also the main backend of ``--backend gee`` (searches only: it reads nothing by
    itself).

    Args:
        sources: the Earth Engine source map's sources.
        project: the Cloud project registered for Earth Engine.
        key_file: a service account's JSON key (else the credentials ``ee`` finds).
        url: another endpoint (the tests' stand-in).
        high_volume: use the high-volume endpoint.
        concurrency: the project's quota of requests in flight.
        rate_per_s: the project's quota of requests per second.
        share: how many processes of this run use the quota at once (each takes its part: Earth Engine counts per
            project, not per process).
        timeout_s: the read timeout of every request.
        policy: the ledger's retry policy.

    Raises:
        MMEarthError: a source's ``kind`` is unknown, or the session cannot start.
    """

    name = "gee"
    default_threads = 16     # requests wait on the server: the limiter, not the thread count, bounds them
    capabilities = Capabilities(compiles=True, ranks_nearest=True, batch_size=50, meters_requests=True)

    def __init__(self, sources: dict[str, Source], project: str, *, key_file: str | None = None,
                 url: str | None = None, high_volume: bool = False, concurrency: int = CONCURRENCY,
                 rate_per_s: float = RATE_PER_S, share: int = 1, timeout_s: float = READ_TIMEOUT_S,
                 policy: RetryPolicy | None = None):
        for key, src in sources.items():
            if src.options.get("kind", "collection") not in KINDS:
                raise MMEarthError(f"catalogs/sources/gee.yaml: {key}: kind {src.options['kind']!r} is not one of "
                                   f"{', '.join(KINDS)}")
        share = max(1, int(share))
        self.project = project
        self.rest = connect(project, key_file, url, high_volume, pool=concurrency, read_timeout_s=timeout_s)
        self.sources = sources
        self.limiter = AimdLimiter(max(1, concurrency // share), rate_per_s=rate_per_s * RATE_MARGIN / share)
        self.requests = Requests(project, self.limiter, policy or RetryPolicy())
        self.by_method = self.requests.by_method   # requests sent, per REST method
        self.templates = SHARED
        self.answers = Answers()
        self._pending = self.answers.pending      # keys of a batched request in flight
        self.searches = Searches(sources, self.templates, self.answers, self._value)
        self.era5_means = Era5(self.templates, self.answers, self._value)
        self.preparer = Preparer(self.searches, self.era5_means, self.templates, self.answers, self._value)
        self.pixels = Pixels(self.rest, self.requests)

    def _value(self, expr: Prebuilt | PrebuiltDict, attempts: Attempts | None = None, batch: bool = False) -> Any:
        """The value of an expression (one ``value:compute``)."""
        expression = expression_json(expr)
        return self.requests.call(lambda: self.rest.compute_value(expression), attempts, batch=batch)

    def check_assets(self, keys: Sequence[str]) -> tuple[list[str], list[str]]:
        """One ``getAsset`` per asset the sources ``keys`` read: it exists, this project may read it, and its type
        is the source map's ``kind`` (an Image loaded as an ImageCollection fails every tile).

        Returns:
            (lines to print, problems found).
        """
        expected = {"collection": "IMAGE_COLLECTION", "image": "IMAGE"}
        found, problems = 0, []
        for key in keys:
            src = self.sources[key]
            kind = src.options.get("kind", "collection")
            for asset in assets(src):
                where = f"{asset} ({key} in catalogs/sources/gee.yaml)"
                try:   # retried as any request (a 503 is no verdict); credentials refused stop here
                    meta = self.requests.call(lambda asset=asset: self.rest.get_asset(asset), None, "getAsset")
                except EarthEngineError as e:
                    problems.append(f"{where}: not found, or project {self.project} may not read it"
                                    if "HTTP 404" in str(e) else f"{where}: {first_line(e)}")
                    continue
                except SourceError as e:   # still failing after the retries: the check cannot say more
                    problems.append(f"{where}: {first_line(e)}")
                    continue
                if meta.get("type") != expected[kind]:
                    problems.append(f"{where}: Earth Engine says it is {meta.get('type')}, the source map says "
                                    f"kind: {kind} ({expected[kind]})")
                else:
                    found += 1
        return [f"Earth Engine assets: {found} found, of the expected type"], problems

    def take_requests(self) -> dict[str, int]:
        """The requests sent per method since the last call: each is recorded once, by the partition that commits
        next (partitions of a process share this executor)."""
        return self.requests.take()

    def search(self, collection: str, bbox: Sequence[float], start: dt.datetime | None, end: dt.datetime | None,
               filters: dict | None = None, contains=None, nearest: dt.datetime | None = None,
               attempts: Attempts | None = None) -> list[Item]:
        """Items matching the query (prepared by a batch, else one request of its own), sorted by id. The
        footprint test (``contains``) and the time ranking (``nearest``) run server-side."""
        return self.searches.search(collection, bbox, start, end, filters, contains, nearest, attempts)

    def prepare(self, contexts: Sequence[TileContext]) -> None:
        """The searches of a batch of tiles in one batched request, before the tiles run (prepare.py)."""
        self.preparer.prepare(contexts)

    def compile(self, ctx: TileContext, recipe: str) -> Compiled:
        """The v001 bands of ``recipe`` as an image with explicit no-data, and how to turn them into its result."""
        return compile_recipe(ctx, recipe)

    def era5(self, ctx: TileContext, attempts: Attempts | None = None) -> RecipeResult:
        """The tile's v001 ``era5`` (its prepared answer, else one ``value:compute``)."""
        return self.era5_means.run(ctx, attempts)

    def fetch(self, ctx: TileContext, parts: Sequence[Compiled], attempts: Attempts | None = None
              ) -> dict[str, np.ndarray]:
        """Band name -> float32 (h, w) plane of the merged image of ``parts`` on the tile grid (pixels.py)."""
        parts = [p for p in parts if p.part is not None]
        bands = [b for p in parts for b in p.bands]
        if not bands:
            return {}
        # one part is its own image: ee cannot serialize a join of a single placeholder
        image = expression_json(self.templates.one(parts[0].part) if len(parts) == 1
                                else self.templates.joined([p.part for p in parts], ex.merged))
        return self.pixels.fetch(image, ctx.grid, bands, attempts, max_bytes=MAX_BYTES)

    def run(self, ctx: TileContext, recipes: Sequence[str]) -> dict[str, RecipeResult | BaseException]:
        """Every recipe of ``recipes`` for this tile: the pixel modalities (Sentinel-2 first, when it is asked:
        it fixes the grid) from one merged computePixels, ERA5 from its prepared or own value:compute.

        Returns:
            Each recipe's result, or the exception its request or conversion raised.
        """
        out: dict[str, RecipeResult | BaseException] = {}
        pixels = [r for r in recipes if r not in VALUES and r != sentinel2.NAME]
        counter = ctx.counter(recipes[0])
        if sentinel2.NAME in recipes:
            try:
                ordered = sentinel2.candidates(ctx)
            except Exception as e:  # noqa: BLE001 - no scene: the tile is no_s2, nothing else is fetched
                return {sentinel2.NAME: e}
            for item, level in ordered:
                sentinel2.fix(ctx, item, level)
                done = self._pixels(ctx, pixels, counter, compile_plan(ctx, sentinel2.scene_plan(ctx, item, level)))
                if not isinstance(done.get(sentinel2.NAME), EmptyScene):
                    out.update(done)
                    break
            else:
                return {sentinel2.NAME: NoCoverage(f"all {len(ordered)} Sentinel-2 scene(s) passing the filters "
                                                   "are no-data over the tile")}
        elif pixels:
            out.update(self._pixels(ctx, pixels, counter))
        for r in recipes:   # one request served them all: each carries the tries it cost
            if r != recipes[0] and r not in VALUES:
                ctx.counter(r).add(counter.tries)
        if "era5" in recipes:
            try:
                out["era5"] = self.era5(ctx, ctx.counter("era5"))
            except Exception as e:  # noqa: BLE001
                out["era5"] = e
        return out

    def _pixels(self, ctx: TileContext, recipes: Sequence[str], attempts: Attempts, s2: Compiled | None = None
                ) -> dict[str, RecipeResult | BaseException]:
        plans: dict[str, Compiled | BaseException] = {}
        if s2 is not None:
            plans[sentinel2.NAME] = s2
        for r in recipes:
            try:
                plans[r] = self.compile(ctx, r)
            except Exception as e:  # noqa: BLE001 - e.g. no Sentinel-1 acquisition: that modality only
                plans[r] = e
        compiled = [p for p in plans.values() if isinstance(p, Compiled)]
        try:
            px = self.fetch(ctx, compiled, attempts)
        except Exception as e:  # noqa: BLE001 - recorded per modality by the export
            return {r: (p if isinstance(p, BaseException) else e) for r, p in plans.items()}
        out: dict[str, RecipeResult | BaseException] = {}
        with self.pixels.numpy:
            for r, p in plans.items():
                if isinstance(p, BaseException):
                    out[r] = p
                    continue
                try:
                    out[r] = p.finish(px)
                except Exception as e:  # noqa: BLE001
                    out[r] = e
        return out
