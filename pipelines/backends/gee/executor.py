"""The Earth Engine executor: the recipes' rules compiled into Earth Engine expressions, so that a tile costs one
``image:computePixels`` (NPY) of one merged image on the tile grid, plus its share of batched searches. Both are
the methods ``ee.data.computePixels`` / ``computeValue`` call, posted by session.Rest with the expressions ``ee``
built (templates.py).

Searches are the recipes' own queries (:class:`~pipelines.recipes.sentinel2.SceneQuery`, Sentinel-1's nearest
acquisition per orbit among those containing the tile + 200 m): a pixel backend runs them as a search and a
containment test; here each is a filter chain (date, bounds, metadata, ``Filter.contains`` on the footprint, a time
ranking for "nearest") mapped to small features (id, time, properties, the B4 projection). A source whose ``kind``
is ``image`` (the ASTER GDEM, the ETH canopy height) is one Image asset: nothing is searched, it is loaded with
``ee.Image``. :meth:`GeeExecutor.prepare` sends the queries of a batch of tiles (``batch_size``, 50) in one
``value:compute``: every tile's Sentinel-2 candidates, the scene Earth Engine picks among them with the tile's
seeded rule, and, on the grid that scene will most likely fix, the tile's Sentinel-1 nearest acquisitions to it and
its ERA5-Land means of the 12 months that scene uses. The seeded choice is then made locally by the recipe's own
code over the returned list (same choice as the pixel executor over the same scenes); a tile whose scene is not the
guess (another UTM zone, a given day) has its Sentinel-1 and ERA5-Land asked again, with the others of its batch, in
a second request that the rest of the batch does not wait for. A batch Earth Engine refuses is split in halves until
the entry it refuses is alone (``_bisect``); a query not prepared (a resumed tile) is sent on its own. So a tile
costs 1 + 1/50 requests, up to 1 + 2/50 (a little more at the start of a partition: its first batches are smaller,
export.Batches), and its pixels are asked one round trip after its batch's first request.

Pixels, per modality (the rule of the pixel executor, written as an expression): Sentinel-2 by id, spectral bands
and MSK_CLDPRB bilinear, SCL and QA60 nearest; Sentinel-1 by id per orbit, bilinear; elevation and
``ee.Terrain.slope`` computed on the DEM's own grid before resampling (a DEM collection: per image, then mosaicked
with the first by id on top, as ``first_valid``); Dynamic World is ``label`` over the S2 calendar year, reduced with
the mode (ties to the smaller label, as ``temporal_mode``) and + 1; ESA WorldCover v100 the mosaic with the first
item by id on top; the ETH canopy height and its SD bilinear. Every band is unmasked to an explicit no-data value
before the download, over the whole grid (``unmask(value, False)``: computePixels returns masked pixels as 0, a
valid value, and by default ``unmask`` keeps the image's footprint masked). The conversion to v001 arrays and
tile_info is the recipes' own (``scene_result``, ``sentinel1.result``, ``terrain.result``, ``to_dataset``): the same
bytes for the same input pixels.

ERA5-Land is 12 monthly ``reduceRegion(mean)`` over the tile, sampled on the pixel executor's 16 x 16 cell grid
(``crsTransform``).

Each expression is written once, as a builder of its shape (the module-level ``_query_images``, ``_sentinel2``,
...) whose per-tile constants come through placeholders; it is built and serialized once per shape and filled per
tile (templates.py), which keeps the client's CPU per tile low enough for 40 requests in flight.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import io
import logging
import re
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely

from mmearth_data.errors import MMEarthError, one_line

from ...faults import Attempts, NoCoverage, RetryPolicy, RunStopped, SourceError, TransientSourceError, classify, \
    redact, retry_after, with_retry
from ...grid import TileGrid
from ...items import Item
from ...recipes import era5, landcover, sentinel1, sentinel2, terrain
from ...recipes.base import RecipeResult, Source, TileContext, to_dataset
from .limiter import AimdLimiter
from .session import HOW, READ_TIMEOUT_S, RestError, connect
from .templates import SHARED, Part, Prebuilt, PrebuiltDict, expression_json

NODATA = {"dynamic_world": 0, "esa_worldcover": 255, "canopy": -9999}
MASKED = -99999.0               # what a masked pixel of S2, S1 or the DEM is unmasked to (no valid value is)
MAX_BYTES = 48 * 1024 * 1024    # computePixels: at most this many bytes of pixels per request (uncompressed)
MAX_SIDE = 32768                # computePixels: pixels per side of the grid
MAX_BANDS = 1024                # computePixels: bands per request
NEAREST_K = 4                   # a "nearest" query returns this many, ranked by |t - t0|: ties are resolved locally
COMPILED = ("sentinel2", "sentinel1", "aster", "canopy_height_eth", "dynamic_world", "esa_worldcover", "era5")
VALUES = ("era5",)   # computed by value:compute (reduceRegion), not computePixels
CONCURRENCY = 40     # Earth Engine's default quota per project: requests in flight...
RATE_PER_S = 100.0   # ...and requests per second, on either endpoint (developers.google.com/earth-engine/guides/usage)
RATE_MARGIN = 0.95   # requests are spaced for 95 of the 100/s: jitter on the way bunches them, no second may pass it
NO_FOOTPRINT = shapely.Polygon()   # shared (geometries are immutable): making one parses WKT, ~20 us
TRANSPOSE_ROWS = 512             # pixels per block when an answer's records become band planes
CACHE = 50_000       # prepared query answers kept (a tile's are used within moments of its batch)
ERA5_GUESS_MONTHS = 36   # months a window may span for ERA5-Land to be asked before the scene is chosen (MMEarth: 23)
KINDS = ("collection", "image")   # how a source map's asset is loaded: ee.ImageCollection or ee.Image

log = logging.getLogger(__name__)


class EarthEngineError(SourceError):
    """Earth Engine refused the expression (an invalid argument, a missing asset): retrying cannot help."""

    error_class = "earth_engine"


TIMED_OUT = re.compile(r"Computation timed out", re.IGNORECASE)   # HTTP 400, often transient (geemap#1790)
OVER_MEMORY = re.compile(r"User memory limit exceeded", re.IGNORECASE)   # HTTP 400: the computation is too large


def _is_refresh_error(exc: BaseException) -> bool:
    """google-auth's ``RefreshError`` (a revoked or expired refresh token), without importing google-auth."""
    return any(c.__name__ == "RefreshError" for c in type(exc).__mro__)


def _first_line(exc: BaseException) -> str:
    """An error's text for a one-line message: a RefreshError's first argument (its second is the token
    endpoint's whole answer), folded, redacted."""
    text = exc.args[0] if len(exc.args) > 1 and isinstance(exc.args[0], str) else exc
    return redact(one_line(text, 200)) or type(exc).__name__


@dataclass(frozen=True)
class Query:
    """One search as data (hashable: the key of prepared answers)."""

    collection: str
    bbox: tuple[float, ...]
    start_ms: int | None
    end_ms: int | None                  # exclusive
    filters: tuple[tuple[str, str, Any], ...]
    contains: tuple | None = None       # rings (exterior first) of a lon/lat polygon the footprint must contain
    nearest_ms: int | None = None       # rank by |time - nearest_ms|, keep NEAREST_K

    def __hash__(self) -> int:   # computed once: a query is looked up several times, its rings make it long
        try:
            return self._hash
        except AttributeError:
            value = hash((self.collection, self.bbox, self.start_ms, self.end_ms, self.filters, self.contains,
                          self.nearest_ms))
            object.__setattr__(self, "_hash", value)
            return value

    @classmethod
    def of(cls, collection: str, bbox, start: dt.datetime | None, end: dt.datetime | None, filters: dict | None,
           contains=None, nearest: dt.datetime | None = None) -> "Query":
        return cls(collection, tuple(round(float(v), 9) for v in bbox), _ms(start),
                   None if end is None else _ms(end) + 1,
                   tuple(sorted((k, op, _hashable(v)) for k, (op, v) in (filters or {}).items())),
                   None if contains is None else _rings(contains), _ms(nearest))


def _ms(t: dt.datetime | None) -> int | None:
    """Earth Engine's time (ms since 1970)."""
    return None if t is None else int(np.floor(t.timestamp() * 1000))


def _rings(polygon) -> tuple:
    """A lon/lat polygon's rings as coordinate pairs rounded to 1e-9 degree (hashable, and GeoJSON's polygon
    coordinates once listed): read as arrays, 4x faster than a WKT round trip or shapely's ``mapping()``; kept per
    polygon object (a tile's outline is one cached object, asked for by each of its scene searches)."""
    found = _RINGS.get(id(polygon))
    if found is not None and found[0] is polygon:
        return found[1]
    if polygon.geom_type != "Polygon":
        raise MMEarthError(f"Earth Engine footprint test: a polygon is needed, not a {polygon.geom_type}")
    parts = [polygon] if shapely.get_num_interior_rings(polygon) == 0 else shapely.get_rings(polygon)
    rings = tuple(tuple(map(tuple, shapely.get_coordinates(r).round(9).tolist())) for r in parts)
    if len(_RINGS) >= CACHE:
        _RINGS.clear()
    _RINGS[id(polygon)] = (polygon, rings)   # the polygon is held: its id is not reused while it is a key
    return rings


_RINGS: dict[int, tuple] = {}


def _hashable(v):
    return tuple(v) if isinstance(v, list) else v


_FILTERS = {"<": "lt", "<=": "lte", ">": "gt", ">=": "gte", "==": "eq", "!=": "neq"}


class GeeExecutor:
    """Compiles, batches and fetches what is routed to Earth Engine; one instance (limiter, counters, prepared
    answers) per process. It is also the main backend of ``--backend gee`` (searches only: it reads nothing by
    itself)."""

    compiles = True
    ranks_nearest = True
    name = "gee"
    default_threads = 16     # requests wait on the server: the limiter, not the thread count, bounds them
    batch_size = 50

    def __init__(self, sources: dict[str, Source], project: str, *, key_file: str | None = None,
                 url: str | None = None, high_volume: bool = False, concurrency: int = CONCURRENCY,
                 rate_per_s: float = RATE_PER_S, share: int = 1, timeout_s: float = READ_TIMEOUT_S,
                 policy: RetryPolicy | None = None):
        """``concurrency`` and ``rate_per_s`` are the project's quota; ``share``: how many processes of this run
        use it at once (each takes its part: Earth Engine counts per project, not per process)."""
        for key, src in sources.items():
            if src.options.get("kind", "collection") not in KINDS:
                raise MMEarthError(f"catalogs/sources/gee.yaml: {key}: kind {src.options['kind']!r} is not one of "
                                   f"{', '.join(KINDS)}")
        share = max(1, int(share))
        self.project = project
        self.rest = connect(project, key_file, url, high_volume, pool=concurrency, read_timeout_s=timeout_s)
        self.sources = sources
        self.policy = policy or RetryPolicy()
        self.limiter = AimdLimiter(max(1, concurrency // share), rate_per_s=rate_per_s * RATE_MARGIN / share)
        self.by_method: dict[str, int] = {}   # requests sent, per REST method
        self._untaken: dict[str, int] = {}    # ... not yet taken into a partition's record (take_requests)
        self._lock = threading.Lock()
        self._answers: OrderedDict[Any, Any] = OrderedDict()
        self._pending: dict[Any, threading.Event] = {}   # keys of a batch request in flight -> set when answered
        self.templates = SHARED
        self._local = threading.local()
        # one tile's arrays at a time: numpy releases the GIL around every call on a tile-sized array, and with 40
        # threads turning answers into arrays at once each release handed the GIL to another of them (~200 context
        # switches per tile, a third of the CPU at 40 in flight); serialized, they wait on this lock, not the GIL
        self._numpy = threading.Lock()

    # -- transport ---------------------------------------------------------------------------------------------
    def _call(self, fn: Callable[[], Any], attempts: Attempts | None, method: str = "value:compute",
              batch: bool = False) -> Any:
        """One request through the limiter and the ledger's retry policy (quota errors slow every thread);
        ``batch``: it holds many tiles' entries, and a computation that timed out is split, not retried."""
        def once():
            with self.limiter.slot():
                with self._lock:
                    self.by_method[method] = self.by_method.get(method, 0) + 1
                    self._untaken[method] = self._untaken.get(method, 0) + 1
                try:
                    out = fn()
                except Exception as e:  # noqa: BLE001 - classified: quota errors slow everyone down
                    raise self._classify(e, batch) from None
            self.limiter.success()
            return out

        return with_retry(once, self.policy, remote=True, attempts=attempts)

    def check_assets(self, keys: Sequence[str]) -> tuple[list[str], list[str]]:
        """(lines, problems) of one ``getAsset`` per asset the sources ``keys`` read: it exists, this project may
        read it, and its type is the source map's ``kind`` (an Image loaded as an ImageCollection fails every tile)."""
        expected = {"collection": "IMAGE_COLLECTION", "image": "IMAGE"}
        found, problems = 0, []
        for key in keys:
            src = self.sources[key]
            kind = src.options.get("kind", "collection")
            for asset in dict.fromkeys(a for a in (src.collection, src.options.get("std_collection")) if a):
                where = f"{asset} ({key} in catalogs/sources/gee.yaml)"
                try:   # retried as any request (a 503 is no verdict); credentials refused stop here
                    meta = self._call(lambda asset=asset: self.rest.get_asset(asset), None, "getAsset")
                except EarthEngineError as e:
                    problems.append(f"{where}: not found, or project {self.project} may not read it"
                                    if "HTTP 404" in str(e) else f"{where}: {_first_line(e)}")
                    continue
                except SourceError as e:   # still failing after the retries: the check cannot say more
                    problems.append(f"{where}: {_first_line(e)}")
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
        with self._lock:
            out, self._untaken = self._untaken, {}
        return out

    def _value(self, expr: "Prebuilt | PrebuiltDict", attempts: Attempts | None = None, batch: bool = False) -> Any:
        expression = expression_json(expr)
        return self._call(lambda: self.rest.compute_value(expression), attempts, batch=batch)

    def _classify(self, exc: BaseException, batch: bool = False):
        """Credentials that no longer work stop the run (every request would fail alike); quota errors slow every
        thread down and are retried; 5xx, timeouts and "Computation timed out." (a 400 that often passes) are
        retried, but a batch that timed out is split instead (``batch``); any other answer of Earth Engine (an invalid expression, a missing asset, a computation over the
        memory limit) is permanent."""
        text = redact(f"{type(exc).__name__}: {exc}")
        status = exc.status if isinstance(exc, RestError) else None
        if status == 429 or self.limiter.is_overload(exc):
            self.limiter.overload()
            return TransientSourceError(text, retry_after_s=retry_after(getattr(exc, "retry_after", None)))
        if _is_refresh_error(exc):
            if getattr(exc, "retryable", False):
                return TransientSourceError(text)
            return RunStopped(f"Earth Engine: the credentials can no longer be refreshed ({_first_line(exc)}); "
                              f"{HOW}, then run the same command again (an export goes on with --resume)")
        if status in (401, 403):   # 401: still refused after google-auth refreshed the token; 403: the project
            return RunStopped(f"Earth Engine refused this run's credentials (HTTP {status}: {_first_line(exc)}); "
                              f"check that project {self.project} is registered for Earth Engine and that the "
                              f"credentials may use it ({HOW}), then run the same command again (an export goes "
                              "on with --resume)")
        if status is not None and TIMED_OUT.search(text):   # a batch is split (less to compute), a tile retried
            return EarthEngineError(text) if batch else TransientSourceError(text)
        if status is not None and int(status) >= 500:
            return TransientSourceError(text)
        if status is not None:
            return EarthEngineError(text)
        return classify(exc, remote=True)

    def _remember(self, key, value) -> None:
        with self._lock:
            self._answers[key] = value
            self._answers.move_to_end(key)
            while len(self._answers) > CACHE:
                self._answers.popitem(last=False)

    def _recall(self, key, wait: bool = True):
        """The prepared answer of ``key`` (None: not prepared); one being prepared is waited for."""
        found = self._answers.get(key)   # one C call, atomic: no lock (read ~10 times per tile by every thread)
        if found is None and wait:
            sent = self._pending.get(key)
            if sent is not None:
                sent.wait()
                found = self._answers.get(key)
        return found

    # -- searches ----------------------------------------------------------------------------------------------
    def _source_of(self, collection: str) -> Source:
        return next(s for s in self.sources.values() if s.collection == collection)

    def query_parts(self, q: Query) -> tuple[Part, Part]:
        """The query as two template parts: its images (collection, filters, which rules apply, and the constants
        in slots), and their features (the source's properties; its ``images`` slot left to fill). Apart, the
        images can be referenced by another expression (the scene picked, :func:`_scene_pick`) as ``ee`` builds
        it: no mapped function comes with them."""
        src = self._source_of(q.collection)
        values = src.options.get("values", {})
        filters = tuple((prop, op, _hashable(values.get(prop, {}).get(value, value))) for prop, op, value in q.filters)
        dated = q.start_ms is not None or q.end_ms is not None
        slots: dict[str, Any] = {"bbox": list(q.bbox)}
        if dated:
            slots.update(start=q.start_ms if q.start_ms is not None else 0,
                         end=q.end_ms if q.end_ms is not None else 253402300800000)
        contains = None
        if q.contains is not None:
            contains = "Polygon"
            slots["contains"] = q.contains   # tuples: JSON arrays
        if q.nearest_ms is not None:
            slots["t0"] = q.nearest_ms
        return (Part(_query_images, (q.collection, dated, filters, contains, q.nearest_ms is not None), slots),
                Part(_query_features, (tuple(src.properties.values()), src.options.get("grid_band"))))

    def compile_query(self, q: Query, nearest: Prebuilt | None = None) -> Prebuilt:
        """The query as a FeatureCollection of (id, time, the source's properties, the grid band's projection);
        ``nearest``: a computed time to rank by instead of the query's."""
        images, features = self.query_parts(q)
        if nearest is not None:
            images = Part(images.builder, images.args, {**images.values, "t0": nearest})
        return self.templates.one(Part(features.builder, features.args, {"images": self.templates.one(images)}))

    def _items(self, q: Query, answer: dict) -> list[Item]:
        src = self._source_of(q.collection)
        out = []
        for f in answer.get("features", []):
            p = dict(f["properties"])
            iid, t, proj = str(p.pop("id")), p.pop("t"), p.pop("proj", None)
            when = dt.datetime.fromtimestamp(t / 1000, dt.timezone.utc) if t is not None else None
            asset = {"href": f"ee:{q.collection}/{iid}", "roles": ["data"]}
            assets = dict.fromkeys(src.bands.values(), asset)   # one image: every band is the same asset
            if proj:
                p["proj:epsg"] = int(str(proj["crs"]).split(":")[1])
                assets[src.options["grid_band"]] = {**asset, "proj:transform": list(proj["transform"])}
            out.append(Item(iid, q.collection, NO_FOOTPRINT, p, assets, start=when, end=when))   # tested server-side
        return sorted(out, key=lambda it: it.id)

    def search(self, collection: str, bbox: Sequence[float], start: dt.datetime | None, end: dt.datetime | None,
               filters: dict | None = None, contains=None, nearest: dt.datetime | None = None,
               attempts: Attempts | None = None) -> list[Item]:
        """Items matching the query (prepared by a batch, else one request of its own), sorted by id. The
        footprint test (``contains``) and the time ranking (``nearest``) run server-side."""
        src = self._source_of(collection)
        if src.options.get("kind") == "image":   # one Image asset (the ASTER GDEM): nothing to search
            return [Item(collection, collection, NO_FOOTPRINT, {},   # its id: the asset's, as composites record
                         dict.fromkeys(src.bands.values(), {"href": f"ee:{collection}", "roles": ["data"]}))]
        q = Query.of(collection, bbox, start, end, filters, contains, nearest)
        collecting = getattr(self._local, "collecting", None)
        if collecting is not None:   # prepare() asks what the recipes would search: noted, answered later
            collecting.append(q)
            return []
        items = self._recall(q)
        if isinstance(items, BaseException):
            raise items
        if items is None:
            items = self._items(q, self._value(self.compile_query(q), attempts))
            self._remember(q, items)
        return items

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
                self._remember(keys[0], error)
            return
        for half in (keys[:len(keys) // 2], keys[len(keys) // 2:]):
            try:
                self._answer({k: exprs[k] for k in half}, parse)
            except EarthEngineError as e:
                self._bisect(half, exprs, parse, e)

    def _answer(self, exprs: dict, parse: dict) -> None:
        names = {k: str(i) for i, k in enumerate(exprs)}
        value = self._value(PrebuiltDict({names[k]: e for k, e in exprs.items()}), batch=len(exprs) > 1)
        for k in exprs:
            try:
                answer = parse[k](value[names[k]])
            except Exception as e:  # noqa: BLE001 - e.g. ERA5 with no month: that tile's answer, raised there
                answer = e
            self._remember(k, answer)

    def _prefetch(self, queries: Sequence[Query], extra: dict | None = None, compiled: dict | None = None) -> None:
        compiled = compiled or {}
        todo = {q: compiled.get(q) or self.compile_query(q) for q in dict.fromkeys(queries)
                if self._recall(q, wait=False) is None}
        parse = {q: (lambda a, q=q: self._items(q, a)) for q in todo}
        for key, (expr, fn) in (extra or {}).items():
            todo[key], parse[key] = expr, fn
        self._batch(todo, parse)

    def prepare(self, contexts: Sequence[TileContext]) -> None:
        """One batched request for a batch of tiles, before their scenes are chosen: every tile's Sentinel-2
        candidates (when Earth Engine serves Sentinel-2) and, on the grid its scene will most likely fix (a guess,
        :meth:`_guess`), its Sentinel-1 nearest acquisitions to the scene Earth Engine picks with the tile's seeded
        rule, its DEM tiles and its ERA5-Land months. The seeded choice is then made locally by the recipe's own
        code over the returned candidates (the same choice as the pixel executor's over the same scenes); where it
        confirms the guess (same scene, same grid) the tile has all it needs. The others (a scene in a neighbouring
        UTM zone, a given day, Sentinel-2 from another backend) get their Sentinel-1, DEM and ERA5 queries in a
        second batched request, sent in the background: their tiles wait for it, the rest of the batch goes on. The
        queries are the ones the recipes' own searches send (collected, not written again here). What fails here is
        left to the tile's own requests."""
        later = ("sentinel1", "dem", "era5_land_monthly")
        contexts = [c for c in contexts if self._serves(c, "sentinel2_l2a", "sentinel2_l1c", *later)]
        scenes: dict[str, list[Query]] = {}
        with self._collect() as queries:
            for c in contexts:
                if self._serves(c, "sentinel2_l2a", "sentinel2_l1c"):
                    first, levels = len(queries), sentinel2.queries(c)
                    for q in levels:
                        sentinel2.run_query(c, q)
                    if len(queries) - first == len(levels):   # every level asked here: Earth Engine can pick
                        scenes[c.tile_id] = queries[first:]
        compiled = {q: self.compile_query(q) for q in dict.fromkeys(queries) if self._recall(q, wait=False) is None}
        guesses: dict[str, _Guess] = {}
        extra: dict[Any, tuple[Prebuilt, Callable[[Any], Any]]] = {}
        for c in contexts:
            if c.tile_id in scenes:
                guess = self._guess(c, [compiled.get(q) or self.compile_query(q) for q in scenes[c.tile_id]], extra)
                if guess is not None:
                    guesses[c.tile_id] = guess
                    queries += guess.queries
        self._prefetch(queries, extra, compiled)
        leftover = []
        for c in contexts:
            if not self._serves(c, *later):
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
        """The queries that need the tile's scene (its date and grid): Sentinel-1 nearest acquisitions, DEM tiles,
        ERA5-Land months."""
        extra = {}
        with self._collect() as queries:
            for c in located:
                if self._serves(c, "sentinel1"):
                    sentinel1.picks(c)
                if self._serves(c, "dem"):
                    with suppress(NoCoverage):   # noted queries are answered empty
                        terrain.tiles(c)
                if self._serves(c, "era5_land_monthly"):
                    extra[self._era5_key(c)] = (self.compile_era5(c), lambda v, c=c: self._era5_result(c, v))
        return queries, extra

    def _guess(self, ctx: TileContext, scene_queries: list[Prebuilt], extra: dict) -> "_Guess | None":
        """What the first request can ask for a tile before its scene is known, on the grid that scene will most
        likely fix: the location's UTM zone, on the 10 m grid from the zone's origin (Sentinel-2's MGRS tiles lie
        on it). Sentinel-1 is ranked by time around the scene Earth Engine picks with the seeded rule
        (:func:`_scene_pick`); ERA5-Land covers every month a scene of the window can need. None where the rule
        is not the seeded uniform pick (a given day) or nothing else is asked here."""
        if ctx.s2_rule is not None and ctx.s2_rule.target is not None \
                or not self._serves(ctx, "sentinel1", "dem", "era5_land_monthly"):
            return None
        d = sentinel2.draw(ctx)
        grid = TileGrid.centred(ctx.lon, ctx.lat, ctx.utm_epsg, ctx.tile_px)
        pick = self.templates.one(Part(_scene_pick, (len(scene_queries),),
                                       {**{str(i): q.slots["images"] for i, q in enumerate(scene_queries)},
                                        "pick": d.pick}))
        when = self.templates.one(Part(_picked_time, (), {"scene": pick}))
        guess = _Guess(grid, ("scene-pick", ctx.tile_id), [], [], None)
        extra[guess.pick] = (pick, lambda v: v)
        start, end = sentinel2.window(ctx, d)
        saved = ctx.grid, ctx.s2_date   # the recipes' queries are collected on the guessed grid, then forgotten
        ctx.grid, ctx.s2_date = grid, dt.datetime(start.year, start.month, start.day, tzinfo=dt.timezone.utc)
        try:
            if self._serves(ctx, "sentinel1"):
                with self._collect() as s1:
                    sentinel1.picks(ctx)
                for i, q in enumerate(s1):
                    key = ("s1-nearest-pick", ctx.tile_id, i)
                    extra[key] = (self.compile_query(q, nearest=when), lambda v: v)
                    guess.s1.append((q, key))
            if self._serves(ctx, "dem"):
                with self._collect() as dem, suppress(NoCoverage):
                    terrain.tiles(ctx)
                guess.queries += dem
            if self._serves(ctx, "era5_land_monthly"):
                _, first, _ = era5.month_range(ctx.s2_date)
                _, _, after = era5.month_range(dt.datetime(end.year, end.month, 1, tzinfo=dt.timezone.utc))
                if (after.year - first.year) * 12 + after.month - first.month <= ERA5_GUESS_MONTHS:
                    guess.era5 = ("era5-window", ctx.tile_id)
                    extra[guess.era5] = (self._era5_expression(ctx, first, after, until=when), lambda v: v)
        finally:
            ctx.grid, ctx.s2_date = saved
        return guess

    def _confirm(self, ctx: TileContext, item: Item, guess: "_Guess") -> bool:
        """Whether the tile's located scene is the one Earth Engine picked and fixes the guessed grid; then its
        guessed answers are remembered under the tile's own queries (False: they are not used)."""
        if ctx.grid != guess.grid or self._recall(guess.pick, wait=False) != [item.id, _ms(ctx.s2_date)]:
            return False
        with self._collect() as s1:
            if self._serves(ctx, "sentinel1"):
                sentinel1.picks(ctx)
        answers = [self._recall(key, wait=False) for _, key in guess.s1]
        if len(s1) != len(guess.s1) or any(not isinstance(a, dict) for a in answers) or any(
                dataclasses.replace(q, nearest_ms=None) != dataclasses.replace(g, nearest_ms=None)
                for q, (g, _) in zip(s1, guess.s1)):
            return False
        months = self._recall(guess.era5, wait=False) if guess.era5 else None
        if guess.era5 and not isinstance(months, dict):
            return False
        for q, answer in zip(s1, answers):
            self._remember(q, self._items(q, answer))
        if guess.era5:
            try:
                self._remember(self._era5_key(ctx), self._era5_result(ctx, months))
            except Exception as e:  # noqa: BLE001 - e.g. ERA5 with no month: that tile's answer, raised there
                self._remember(self._era5_key(ctx), e)
        return True   # the DEM tiles were asked on the same grid: their query is the tile's own

    def _in_background(self, queries: Sequence[Query], extra: dict) -> None:
        """One batched request sent by a thread of its own; until it is answered its keys are pending (a tile
        asking for one waits, instead of sending its own request)."""
        keys = [*queries, *extra]
        sent = threading.Event()
        with self._lock:
            for k in keys:
                self._pending[k] = sent

        def send() -> None:
            try:
                self._prefetch(queries, extra)
            except RunStopped:
                pass   # the tiles waiting for these keys ask on their own, and meet it too
            except Exception as e:  # noqa: BLE001 - the tiles then ask on their own
                log.warning("a batched Earth Engine request for %d tiles' Sentinel-1, DEM and ERA5-Land failed (%s); "
                            "they are fetched one by one", len(extra) or len(queries), redact(str(e))[:200])
            finally:
                with self._lock:
                    for k in keys:
                        if self._pending.get(k) is sent:
                            del self._pending[k]
                sent.set()
        threading.Thread(target=send, name="gee-prepare-after-scene", daemon=True).start()

    @contextmanager
    def _collect(self):
        """Within: this thread's searches are noted (and answered empty) instead of sent."""
        self._local.collecting = noted = []
        try:
            yield noted
        finally:
            self._local.collecting = None

    @staticmethod
    def _serves(ctx: TileContext, *keys: str) -> bool:
        return any(k in ctx.routes and getattr(ctx.routes[k][0], "compiles", False) for k in keys)

    # -- compile -----------------------------------------------------------------------------------------------
    @staticmethod
    def _region(ctx: TileContext) -> list[float]:
        """The tile's lon/lat bounds: the coordinates of the region its composites are filtered by."""
        return [float(v) for v in ctx.grid.bbox_lonlat()]

    def compile(self, ctx: TileContext, recipe: str) -> "Compiled":
        """The v001 bands of ``recipe`` as an image with explicit no-data, and how to turn them into its result."""
        if recipe == "dynamic_world":
            src = ctx.source("dynamic_world")
            part = Part(_dynamic_world, (src.collection, src.band("label"), ctx.s2_date.year),
                        {"region": self._region(ctx)})
            return Compiled(part, ["dynamic_world"], self._dw)
        if recipe == "esa_worldcover":
            src = ctx.source("esa_worldcover")
            part = Part(_worldcover, (src.collection, src.band("Map")), {"region": self._region(ctx)})
            return Compiled(part, ["esa_worldcover"], self._esa)
        if recipe == "canopy_height_eth":
            src = ctx.source("canopy_height")
            part = Part(_canopy, (src.collection, src.band("height"), src.options["std_collection"], src.band("std"),
                                  src.options.get("kind", "collection")), {"region": self._region(ctx)})
            return Compiled(part, ["canopy_height", "canopy_std"], self._canopy)
        if recipe == "sentinel1":
            return self._compile_s1(ctx)
        if recipe == "aster":
            return self._compile_aster(ctx)
        raise MMEarthError(f"the Earth Engine executor does not compile {recipe} (it compiles {', '.join(COMPILED)})")

    def _compile_s2(self, ctx: TileContext, item: Item, level: str) -> "Compiled":
        src = ctx.source(f"sentinel2_{level}")
        spectral, continuous, categorical = sentinel2.scene_bands(ctx, item, level)
        smooth = spectral + continuous

        def finish(px):
            values = {}
            for names, reflectance in ((spectral, True), (continuous + categorical, False)):
                if names:
                    values.update(zip(names, src.apply(item, np.stack([px[f"s2_{b}"] for b in names]), reflectance)))
            result = sentinel2.scene_result(ctx, item, level, values)
            if result is None:
                raise _EmptyScene(item.id)
            return result
        part = Part(_sentinel2, (tuple((src.band(b), f"s2_{b}") for b in smooth),
                                 tuple((src.band(b), f"s2_{b}") for b in categorical)),
                    {"id": f"{src.collection}/{item.id}"})
        return Compiled(part, [f"s2_{b}" for b in smooth + categorical], finish)

    def _compile_s1(self, ctx: TileContext) -> "Compiled":
        src = ctx.source("sentinel1")
        chosen = sentinel1.picks(ctx)
        layout, ids, bands = [], {}, []
        for slot, item, pols in chosen:
            if item is not None and pols:
                names = [f"s1_{slot}_{p}" for p in pols]
                layout.append((slot, tuple(src.band(p) for p in pols), tuple(names)))
                ids[str(slot)] = f"{src.collection}/{item.id}"
                bands += names

        def finish(px):
            layers = {slot: dict(zip(pols, src.apply(item, np.stack([px[f"s1_{slot}_{p}"] for p in pols]))))
                      for slot, item, pols in chosen if item is not None and pols}
            return sentinel1.result(ctx, chosen, layers)
        return Compiled(Part(_sentinel1, (tuple(layout),), ids) if layout else None, bands, finish)

    def _compile_aster(self, ctx: TileContext) -> "Compiled":
        src = ctx.source("dem")
        found = terrain.tiles(ctx)

        def finish(px):
            values = np.stack([src.apply(found[0], px["aster_elevation"]), px["aster_slope"]])
            if not np.isfinite(values[0]).any():   # an Image asset is not searched: past its coverage it is empty
                raise NoCoverage("no elevation data over the tile")
            return terrain.result(values, [it.id for it in found])
        part = Part(_aster, (src.collection, src.band("elevation"), src.options.get("kind", "collection")),
                    {"region": self._region(ctx)})
        return Compiled(part, ["aster_elevation", "aster_slope"], finish)

    # -- fetch -------------------------------------------------------------------------------------------------
    @staticmethod
    def grid_spec(ctx: TileContext) -> dict[str, Any]:
        t = ctx.grid.transform
        return {"dimensions": {"width": ctx.grid.width, "height": ctx.grid.height},
                "affineTransform": {"scaleX": t.a, "shearX": t.b, "translateX": t.c, "shearY": t.d,
                                    "scaleY": t.e, "translateY": t.f},
                "crsCode": f"EPSG:{ctx.grid.epsg}"}

    def fetch(self, ctx: TileContext, parts: Sequence["Compiled"], attempts: Attempts | None = None
              ) -> dict[str, np.ndarray]:
        """Band name -> float32 (h, w) of the merged image, in as few computePixels calls as the limits allow: the
        bands are split into groups of at most 48 MB and 1024 bands, and a group whose computation passes Earth
        Engine's memory limit ("User memory limit exceeded.") is asked again in halves, down to one band."""
        parts = [p for p in parts if p.part is not None]
        bands = [b for p in parts for b in p.bands]
        if not bands:
            return {}
        h, w = ctx.grid.height, ctx.grid.width
        if max(h, w) > MAX_SIDE:
            raise MMEarthError(f"tile of {w} x {h} px: Earth Engine serves at most {MAX_SIDE} px per side")
        group = max(1, min(MAX_BANDS, MAX_BYTES // (h * w * 4)))
        image = expression_json(self.templates.joined([p.part for p in parts], _merged))
        grid = self.grid_spec(ctx)
        out: dict[str, np.ndarray] = {}
        todo = deque(bands[i:i + group] for i in range(0, len(bands), group))
        while todo:
            part = todo.popleft()
            try:
                data = self._call(lambda part=part: self.rest.compute_pixels(image, grid, part), attempts,
                                  "image:computePixels")
            except EarthEngineError as e:
                if len(part) == 1 or not OVER_MEMORY.search(str(e)):
                    raise
                todo.extendleft([part[len(part) // 2:], part[:len(part) // 2]])
                continue
            with self._numpy:
                out.update(_npy_bands(data, part, (h, w)))
        return out

    # -- results -----------------------------------------------------------------------------------------------
    def run(self, ctx: TileContext, recipes: Sequence[str]) -> dict[str, RecipeResult | BaseException]:
        """Every recipe of ``recipes`` for this tile: the pixel modalities (Sentinel-2 first, when it is asked:
        it fixes the grid) from one merged computePixels, ERA5 from its prepared or own value:compute (an
        exception per recipe when its request fails)."""
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
                done = self._pixels(ctx, pixels, counter, self._compile_s2(ctx, item, level))
                if not isinstance(done.get(sentinel2.NAME), _EmptyScene):
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

    def _pixels(self, ctx: TileContext, recipes: Sequence[str], attempts: Attempts, s2: "Compiled | None" = None
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
        with self._numpy:
            for r, p in plans.items():
                if isinstance(p, BaseException):
                    out[r] = p
                    continue
                try:
                    out[r] = p.finish(px)
                except Exception as e:  # noqa: BLE001
                    out[r] = e
        return out

    # -- ERA5-Land: 12 monthly area means in one value:compute ---------------------------------------------------
    def compile_era5(self, ctx: TileContext) -> Prebuilt:
        """Each month's mean over the tile, sampled at the centres of the 16 x 16 cells the pixel executor uses
        (``reduceRegion`` on that grid: every cell lies inside the tile, so each weighs the same)."""
        _, start, end = era5.month_range(ctx.s2_date)
        return self._era5_expression(ctx, start, end)

    def _era5_expression(self, ctx: TileContext, start: dt.datetime, end: dt.datetime,
                         until: Prebuilt | None = None) -> Prebuilt:
        """The monthly means over the tile grid of the months from ``start`` until ``end`` (exclusive); with
        ``until`` (a computed time: the scene Earth Engine picks), only the 12 months ending with its month."""
        src = ctx.source("era5_land_monthly")
        t = era5.sample_grid(ctx.grid).transform
        crs = f"EPSG:{ctx.grid.epsg}"
        slots = {"region": [float(v) for v in ctx.grid.bounds], "start": start.strftime("%Y-%m-%d"),
                 "end": end.strftime("%Y-%m-%d"), "transform": [t.a, t.b, t.c, t.d, t.e, t.f]}
        if until is not None:
            slots["until"] = until
        return self.templates.one(Part(
            _era5, (src.collection, tuple(src.band(v) for v in era5.VARIABLES), crs, until is not None), slots))

    @staticmethod
    def _era5_key(ctx: TileContext) -> tuple:
        return ("era5", ctx.grid.epsg, ctx.grid.bounds, ctx.s2_date.year, ctx.s2_date.month)

    def era5(self, ctx: TileContext, attempts: Attempts | None = None) -> RecipeResult:
        key = self._era5_key(ctx)
        prepared = self._recall(key)
        if isinstance(prepared, BaseException):
            raise prepared
        if prepared is not None:
            return prepared
        return self._era5_result(ctx, self._value(self.compile_era5(ctx), attempts))

    def _era5_result(self, ctx: TileContext, value: dict) -> RecipeResult:
        src = ctx.source("era5_land_monthly")
        months, _, _ = era5.month_range(ctx.s2_date)
        monthly = np.full((12, 4), np.nan, dtype=np.float32)
        ids: dict[tuple[int, int], str] = {}
        # a feature's system:index comes back as its top-level "id", not as a property
        for f in sorted(value.get("features", []), key=lambda f: str(f.get("id"))):
            p = f["properties"]
            t = dt.datetime.fromtimestamp(p["system:time_start"] / 1000, dt.timezone.utc)
            ym = (t.year, t.month)
            if ym in months and ym not in ids:
                ids[ym] = str(f.get("id"))   # as every id this executor records: the image's system:index
                monthly[months.index(ym)] = [np.nan if p.get(src.band(v)) is None else p[src.band(v)]
                                             for v in era5.VARIABLES]
        return era5.result(months, monthly, ids)

    def _dw(self, px) -> RecipeResult:
        v = px["dynamic_world"]
        valid = np.isfinite(v) & (v >= 1) & (v <= landcover.DW_CLASSES)
        out = np.where(valid, v, 0).astype(np.uint8)[None]
        return RecipeResult(arrays={landcover.DW: out}, source_ids=[self.sources["dynamic_world"].collection],
                            bands={landcover.DW: ["label"]}, message="mode over the S2 calendar year (Earth Engine)")

    def _esa(self, px) -> RecipeResult:
        v = px["esa_worldcover"]
        valid = np.isfinite(v) & (v > 0) & (v < 255)
        out = np.where(valid, v, 255).astype(np.uint8)[None]
        return RecipeResult(arrays={landcover.ESA: out}, source_ids=[self.sources["esa_worldcover"].collection],
                            bands={landcover.ESA: ["Map"]})

    def _canopy(self, px) -> RecipeResult:
        stack = np.stack([px["canopy_height"], px["canopy_std"]])
        stack[stack == NODATA["canopy"]] = np.nan
        src = self.sources["canopy_height"]
        return RecipeResult(arrays={"canopy_height_eth": to_dataset("canopy_height_eth", stack)},
                            source_ids=[src.collection, src.options["std_collection"]],
                            bands={"canopy_height_eth": ["height", "std"]})


@dataclass
class _Guess:
    """A tile's part of the first batched request: the grid guessed, and the keys of the answers that hold if its
    scene confirms it (the scene Earth Engine picked; Sentinel-1 as (query on the guessed grid, key); the DEM
    queries, the tile's own when the grid is confirmed; ERA5-Land's months)."""

    grid: TileGrid
    pick: tuple
    s1: list[tuple[Query, tuple]]
    queries: list[Query]
    era5: tuple | None


@dataclass
class Compiled:
    """One modality's part of the merged image (None: nothing to fetch): its bands, and the recipe's conversion of
    their pixels."""

    part: Part | None
    bands: list[str]
    finish: Callable[[dict[str, np.ndarray]], RecipeResult]


def _rectangle(coordinates, crs: str | None = None):
    """A planar rectangle (edges along the CRS axes, as the pixel executor's bounds) from computed coordinates."""
    import ee

    return ee.Geometry.Rectangle(coordinates, crs, False)


def _merged(images: list):
    import ee

    return ee.Image.cat(images).toFloat()


# -- the expressions, one builder per shape: each reads only its arguments, the per-tile constants come through
# ``slot`` (see templates.py) ---------------------------------------------------------------------------------------
def _query_images(collection: str, dated: bool, filters: tuple, contains: str | None, nearest: bool, slot):
    import ee

    ic = ee.ImageCollection(collection)
    if dated:
        ic = ic.filterDate(slot("start", "Number"), slot("end", "Number"))
    ic = ic.filterBounds(_rectangle(slot("bbox", "List")))
    for prop, op, value in filters:
        ic = ic.filter(getattr(ee.Filter, _FILTERS[op])(prop, value))
    if contains:
        footprint = getattr(ee.Geometry, contains)(slot("contains", "List"), None, False)
        ic = ic.filter(ee.Filter.contains(".geo", footprint))
    if nearest:
        t0 = slot("t0", "Number")
        ic = ic.map(lambda im: im.set("mmearth_dt", ee.Number(im.get("system:time_start")).subtract(t0).abs()))
        ic = ic.limit(NEAREST_K, "mmearth_dt")
    return ic


def _query_features(properties: tuple, grid_band: str | None, slot):
    import ee

    def feature(im):
        props = {"id": im.get("system:index"), "t": im.get("system:time_start")}
        props.update({p: im.get(p) for p in properties})
        if grid_band:
            props["proj"] = im.select([grid_band]).projection()
        return ee.Feature(None, props)
    return ee.FeatureCollection(ee.ImageCollection(slot("images", "ImageCollection")).map(feature))


def _scene_pick(levels: int, slot):
    """``[id, time]`` of the scene the seeded rule picks among a tile's candidates (``sentinel2.candidates``):
    the first level with a survivor, its survivors sorted by id, the one at ``min(floor(pick * n), n - 1)``
    (``Draw.index``; the same double product); ``["", 0]`` when none survives."""
    import ee

    survivors = [ee.ImageCollection(slot(str(i), "ImageCollection")).sort("system:index") for i in range(levels)]
    chosen = survivors[-1]
    for ic in reversed(survivors[:-1]):
        chosen = ee.ImageCollection(ee.Algorithms.If(ic.size().gt(0), ic, chosen))
    n = chosen.size()
    # List.get takes an Integer: the floored product is a Float until cast
    k = ee.Number(slot("pick", "Number")).multiply(n).floor().min(n.subtract(1)).max(0).int()
    return ee.List([chosen.aggregate_array("system:index").add("").get(k),
                    chosen.aggregate_array("system:time_start").add(0).get(k)])


def _picked_time(slot):
    import ee

    return ee.Number(ee.List(slot("scene", "List")).get(1))


def _filled(image, value):
    """``image`` with its masked pixels set to ``value`` everywhere on the grid: ``unmask`` keeps the input's
    footprint by default (``sameFootprint``), which would leave the pixels outside a scene masked, and computePixels
    answers masked pixels as 0, a valid value."""
    return image.unmask(value, False)


def _sentinel2(smooth: tuple, categorical: tuple, slot):
    """Spectral bands and MSK_CLDPRB bilinear, SCL and QA60 nearest; ``(source band, name)`` pairs."""
    import ee

    img = ee.Image.load(slot("id", "String"))
    image = img.select([b for b, _ in smooth], [n for _, n in smooth]).resample("bilinear")
    if categorical:
        image = image.addBands(img.select([b for b, _ in categorical], [n for _, n in categorical]))
    return _filled(image.toFloat(), MASKED)


def _sentinel1(layout: tuple, slot):
    """One image per orbit slot by id, ``(slot, source bands, names)``, bilinear."""
    import ee

    parts = [ee.Image.load(slot(str(orbit), "String")).select(list(bands), list(names))
             for orbit, bands, names in layout]
    return _filled(ee.Image.cat(parts).resample("bilinear").toFloat(), MASKED)


def _top_first(collection: str, slot):
    """The images of a collection over the region as one image, the first by id on top (``mosaic`` puts the last
    on top), as the pixel executor's ``first_valid``."""
    import ee

    return ee.ImageCollection(collection).filterBounds(_rectangle(slot("region", "List"))).sort("system:index", False)


def _aster(collection: str, band: str, kind: str, slot):
    """Elevation and slope; ``kind``: the asset is one Image (the ASTER GDEM: ``ee.Image``, MMEarth's
    ``ee_data.aster``) or an ImageCollection of DEM tiles (each tile's slope, then the mosaic)."""
    import ee

    def both(im):   # slope on the DEM's own grid, then both bands resampled, as the pixel executor does: Earth Engine
        # pulls inputs in the requested projection (guides/projections), so unpinned the slope would be taken from
        # the elevation resampled by nearest neighbour onto the 10 m grid (terraces of zero slope)
        elevation = ee.Image(im).select([band], ["aster_elevation"])
        native = elevation.reproject(elevation.projection())
        return elevation.addBands(ee.Terrain.slope(native).rename(["aster_slope"])).resample("bilinear")
    image = both(ee.Image(collection)) if kind == "image" else _top_first(collection, slot).map(both).mosaic()
    return _filled(image.toFloat(), MASKED)


def _dynamic_world(collection: str, band: str, year: int, slot):
    import ee

    ic = (ee.ImageCollection(collection).filterDate(f"{year}-01-01", f"{year + 1}-01-01")
          .filterBounds(_rectangle(slot("region", "List"))).select([band]))
    # an empty year has no band to reduce: then a fully masked image, i.e. no data, never a label
    empty = ee.Image.constant(-1).updateMask(0).rename(["label_mode"])
    mode = ee.Image(ee.Algorithms.If(ic.size().gt(0), ic.reduce(ee.Reducer.mode()), empty))
    return _filled(mode, -1).add(1).rename(["dynamic_world"])


def _worldcover(collection: str, band: str, slot):
    import ee

    ic = ee.ImageCollection(collection).filterBounds(_rectangle(slot("region", "List"))).select([band])
    # mosaic puts the last image on top: sort descending so the first by id wins, as first_valid does
    empty = ee.Image.constant(0).updateMask(0).rename([band])
    top = ee.Image(ee.Algorithms.If(ic.size().gt(0), ic.sort("system:index", False).mosaic(), empty))
    return _filled(top, NODATA["esa_worldcover"]).rename(["esa_worldcover"])


def _canopy(collection: str, band: str, std_collection: str, std_band: str, kind: str, slot):
    import ee

    def load(asset: str):
        return ee.Image(asset) if kind == "image" else _top_first(asset, slot).mosaic()
    height = load(collection).select([band]).rename(["canopy_height"])
    std = load(std_collection).select([std_band]).rename(["canopy_std"])
    return _filled(height.addBands(std).resample("bilinear").toFloat(), NODATA["canopy"])


def _era5(collection: str, bands: tuple, crs: str, until: bool, slot):
    """Each month's mean over the region; ``until``: only the 12 latest months starting at or before the computed
    time in that slot (the months a scene at that time uses: era5.month_range), so 12 reductions, not the window's."""
    import ee

    region = _rectangle(slot("region", "List"), crs)
    ic = ee.ImageCollection(collection).filterDate(slot("start", "String"), slot("end", "String")).filterBounds(region)
    if until:
        ic = (ic.filter(ee.Filter.lte("system:time_start", slot("until", "Number")))
              .limit(12, "system:time_start", False))
    ic = ic.select(list(bands))
    transform = slot("transform", "List")

    def month(img):
        stats = img.reduceRegion(reducer=ee.Reducer.mean(), geometry=region, crs=crs, crsTransform=transform,
                                 maxPixels=1_000_000)
        return (ee.Feature(None, stats).set("system:time_start", img.get("system:time_start"))
                .set("system:index", img.get("system:index")))
    return ee.FeatureCollection(ic.map(month))


class _EmptyScene(NoCoverage):
    """The chosen scene is no-data over the tile: the next candidate is tried (as the pixel executor does)."""


def _npy_bands(data: bytes, bands: Sequence[str], shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """Band -> (h, w) float32 plane of a computePixels NPY answer (a structured array, one field per band), with
    :data:`MASKED` as NaN (no other band has that value: theirs are unmasked to their own no-data).

    Earth Engine documents the format only as NumPy: fields are matched by band name, in any order and either byte
    order, as 4-byte floats (every band is asked ``toFloat``). Read in place when the answer is the usual
    little-endian fields in request order (``ee``'s NUMPY_NDARRAY conversion copies the 2 MB record by record); an
    answer that is not what was asked for is refused, so a truncated or foreign body never becomes pixels."""
    try:
        offset, (dims, fortran, dtype) = _npy_header(_npy_prefix(data))
    except ValueError as e:
        raise EarthEngineError(f"computePixels: not a NumPy array ({e})") from None
    fields = dtype.fields or {}
    if (tuple(dims) != shape or fortran or sorted(fields) != sorted(bands)
            or any(fields[b][0].kind != "f" or fields[b][0].itemsize != 4 for b in bands)
            or len(data) != offset + dtype.itemsize * shape[0] * shape[1]):
        raise EarthEngineError(f"computePixels: expected {shape} x {len(bands)} float32 bands, got {tuple(dims)} "
                               f"of {dtype} in {len(data)} bytes")
    n = shape[0] * shape[1]
    planes = np.empty((len(bands), n), np.float32)
    if list(dtype.names) == list(bands) and all(fields[b][0] == np.dtype("<f4") for b in bands) \
            and dtype.itemsize == 4 * len(bands):
        pixels = np.frombuffer(data, dtype="<f4", offset=offset).reshape(n, len(bands))
        for start in range(0, n, TRANSPOSE_ROWS):   # in cache-sized blocks: 2x faster than one .T.copy()
            planes[:, start:start + TRANSPOSE_ROWS] = pixels[start:start + TRANSPOSE_ROWS].T
    else:
        records = np.frombuffer(data, dtype=dtype, offset=offset, count=n)
        for k, b in enumerate(bands):
            planes[k] = records[b]   # by name, converted from the field's byte order
    planes[planes == MASKED] = np.nan
    return {b: planes[k].reshape(shape) for k, b in enumerate(bands)}


def _npy_prefix(data: bytes) -> bytes:
    """The magic, version and header of an NPY file (the format's fixed layout: 6 + 2 bytes, then the header's length
    in 2 bytes for version 1, in 4 bytes for versions 2 and 3)."""
    if data[:6] != b"\x93NUMPY" or len(data) < 12 or data[6] not in (1, 2, 3):
        raise ValueError("no NPY magic string and version")
    start = 10 if data[6] == 1 else 12
    return data[:start + int.from_bytes(data[8:start], "little")]


@functools.lru_cache(maxsize=1024)
def _npy_header(head: bytes) -> tuple[int, tuple]:
    """(data offset, (shape, fortran order, dtype)) of an NPY file's magic, version and header; cached: the tiles of
    one band set share their header, which numpy parses with ``ast.literal_eval``."""
    from numpy.lib import format as npy

    buf = io.BytesIO(head)
    version = npy.read_magic(buf)
    read_header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
    header = read_header(buf)
    return buf.tell(), header
