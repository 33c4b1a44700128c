"""``stac``: any STAC API (Planetary Computer, Earth Search, a local stac-fastapi), searched with pystac-client and
read with the same rasterio code as ``local``.

Searches are cached per collection, time window, range filter and search cell (``cell_deg`` squares of lon/lat):
tiles of one Sentinel-2 MGRS tile and year, or of one DEM or WorldCover tile, share one request. Collections with
a handful of items per cell (``together``: DEM and WorldCover) are fetched in one request per cell. Equality filters
(orbit direction, product version) are applied in-process, so both orbit directions of Sentinel-1 share one
search too. What a search returns is then filtered exactly as ``local`` filters a static catalog (bbox intersects,
time overlap, property filters) and sorted by id, so both backends hand the recipes the same items in the same
order. Requests go through the ledger's retry policy (pystac-client's own retries are off) and honour Retry-After.
"""
from __future__ import annotations

import datetime as dt
import math
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import shapely

from mmearth_data.errors import MMEarthError

from ..faults import RetryPolicy, SourceError, TransientSourceError, classify, redact, retry_after, with_retry
from ..items import Item, compact
from .capabilities import Capabilities
from .local import LocalBackend
from .signing import SasSigner

RANGE_OPS = {"<": "lt", "<=": "lte", ">": "gt", ">=": "gte"}
SEARCH_FIELDS = ("id", "type", "collection", "geometry", "bbox", "stac_version", "stac_extensions", "properties")
_LAST = threading.local()   # the last response's status and Retry-After, per thread (APIError carries neither header)


def _remember(response, *args, **kwargs):
    _LAST.status, _LAST.retry_after = response.status_code, response.headers.get("Retry-After")
    return response


def _count(found: dict[str, dict[str, Item]]) -> int:
    return sum(len(v) for v in found.values())


def _iso(t: dt.datetime | None) -> str:
    return ".." if t is None else t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class StacBackend(LocalBackend):
    """Search a STAC API; read its COG assets onto tile grids (signed just before each read when ``signer``)."""

    name = "stac"
    default_threads = 8
    capabilities = Capabilities(counts_searches=True)

    def __init__(self, url: str, *, signer: SasSigner | None = None, filter_lang: str = "cql2-json",
                 cell_deg: float = 0.5, timeout_s: float = 20.0, policy: RetryPolicy | None = None,
                 cache_searches: int = 512, cache_items: int = 20_000, open_datasets: int = 128,
                 together: Sequence[str] = (), page_limit: int = 250, s3_public: bool = False,
                 assets: Sequence[str] = (), fields: bool = False):
        """``cache_searches`` / ``cache_items``: the search cache holds at most this many searches and items; the
        least recently used go first. ``assets``: the asset keys (or band names) the run reads: items are kept with
        those only (a real PC Sentinel-2 item: 44 KiB in memory whole, 23 KiB so; 20k items ~0.5 GB at most).
        ``fields``: ask the API for only those (the fields extension), where it conforms to it."""
        self._reader(policy, timeout_s, open_datasets)
        self.s3_public = s3_public
        self.url = url
        self.signer = signer
        self.filter_lang = filter_lang
        self.cell_deg = cell_deg
        # collections with a handful of items per cell whatever the time (DEM, WorldCover): searched in one request,
        # without a time filter, and cached for any time window (time is filtered in-process)
        self.together = tuple(together)
        self.page_limit = page_limit
        self.assets = frozenset(assets)
        self.cache_searches = cache_searches
        self.cache_items = cache_items
        self._cached_items = 0
        self.searches = 0            # requests sent (pages included), for the per-tile report
        self._thread = threading.local()
        self._cache: OrderedDict[tuple, dict[str, Item]] = OrderedDict()
        self._pending: dict[tuple, threading.Event] = {}
        self._lock = threading.Lock()
        self.client = with_retry(self._open_client, self.policy, remote=True)
        # any version of the sort extension (pystac-client 0.9 knows v1.0.0's URI only; pgstac declares v1.1.0)
        self.sortable = self.client.conforms_to("SORT") or any(
            str(uri).endswith("item-search#sort") for uri in self.client.get_conforms_to())
        if self.sortable and not self.client.conforms_to("SORT"):
            self.client.add_conforms_to("SORT")   # else pystac-client warns on every sorted search
        self.fields = bool(fields and self.assets and self.client.conforms_to("FIELDS"))
        if self.filter_lang != "query" and not self.client.conforms_to("FILTER") and self.client.conforms_to("QUERY"):
            # Earth Search conforms to `query`, not `filter`: a CQL2 filter would be ignored and every cloud level
            # fetched (its numberMatched for a cloud filter: 115,912,757)
            self.filter_lang = "query"

    @classmethod
    def probe(cls, url: str, policy: RetryPolicy | None = None) -> None:
        """Check that ``url`` answers as a STAC API with item search before a run writes anything."""
        try:
            client = with_retry(lambda: cls._client(url, 20.0), policy or RetryPolicy(attempts=2, base_s=0.2),
                                remote=True)
        except Exception as e:  # noqa: BLE001 - any failure here is the user's URL or the service
            raise MMEarthError(f"--stac-url {url}: not a reachable STAC API ({redact(str(e))[:200]})") from None
        if not client.conforms_to("ITEM_SEARCH"):
            raise MMEarthError(f"--stac-url {url}: the API does not conform to STAC item search")

    @staticmethod
    def _client(url: str, timeout_s: float):
        from pystac_client import Client
        from pystac_client.stac_api_io import StacApiIO

        io = StacApiIO(timeout=timeout_s, max_retries=0)   # retries are ours: counted, jittered, Retry-After
        io.session.hooks["response"].append(_remember)
        return Client.open(url, stac_io=io)

    def _open_client(self):
        try:
            return self._client(self.url, self.timeout_s)
        except Exception as e:  # noqa: BLE001
            raise self._classify(e) from None

    @staticmethod
    def _classify(exc: BaseException):
        status = getattr(exc, "status_code", None) or getattr(_LAST, "status", None)
        if status is not None and (status == 429 or status >= 500):
            return TransientSourceError(redact(f"STAC API HTTP Error {status}: {str(exc)[:200]}"),
                                        retry_after_s=retry_after(getattr(_LAST, "retry_after", None)))
        return classify(exc, remote=True)

    # -- search ------------------------------------------------------------------------------------------------
    def cells(self, bbox: Sequence[float]) -> list[tuple[int, int]]:
        c = self.cell_deg
        x0, y0 = math.floor(bbox[0] / c), math.floor(bbox[1] / c)
        x1, y1 = math.floor(bbox[2] / c), math.floor(bbox[3] / c)
        return [(x, y) for x in range(x0, x1 + 1) for y in range(y0, y1 + 1)]

    def search(self, collection: str | tuple[str, ...], bbox: Sequence[float], start: dt.datetime | None,
               end: dt.datetime | None, filters: Mapping[str, tuple[str, Any]] | None = None) -> list[Item]:
        """``collection``: one id, or several searched in one request (a source spread over collections)."""
        ranges = tuple(sorted((k, op, v) for k, (op, v) in (filters or {}).items() if op in RANGE_OPS))
        names = (collection,) if isinstance(collection, str) else tuple(collection)
        found: dict[tuple[str, str], Item] = {}
        for cell in self.cells(bbox):
            if len(names) == 1 and collection in self.together and not ranges:
                cached = self._cell((self.together, cell, "..", "..", ()))
            else:
                cached = self._cell((names, cell, _iso(start), _iso(end), ranges))
            for name in names:
                found.update(((name, i), it) for i, it in cached.get(name, {}).items())
        area = shapely.box(*bbox)
        hits = [it for it in found.values()
                if it.geometry.intersects(area) and it.overlaps_time(start, end) and it.matches(filters)]
        return sorted(hits, key=lambda it: it.id)

    def _cell(self, key: tuple) -> dict[str, dict[str, Item]]:
        """The items of one search cell, from the cache or from one (paged) search shared by concurrent askers."""
        while True:
            with self._lock:
                if key in self._cache:
                    self._cache.move_to_end(key)
                    return self._cache[key]
                waiting = self._pending.get(key)
                if waiting is None:
                    self._pending[key] = threading.Event()
                    break
            waiting.wait()
        try:
            items = with_retry(lambda: self._search(key), self.policy, remote=True)
            with self._lock:
                self._cache[key] = items
                self._cached_items += _count(items)
                while len(self._cache) > 1 and (len(self._cache) > self.cache_searches
                                                or self._cached_items > self.cache_items):
                    self._cached_items -= _count(self._cache.popitem(last=False)[1])
            return items
        finally:
            with self._lock:
                self._pending.pop(key).set()

    def _search(self, key: tuple) -> dict[str, dict[str, Item]]:
        collections, (cx, cy), start, end, ranges = key
        c = self.cell_deg
        bbox = [cx * c, cy * c, (cx + 1) * c, (cy + 1) * c]
        kwargs: dict[str, Any] = {"collections": list(collections), "bbox": bbox, "limit": self.page_limit}
        if self.sortable:   # sorted by id on the server too: pages stay stable while the catalog changes
            kwargs["sortby"] = [{"field": "id", "direction": "asc"}]
        if start != ".." or end != "..":
            kwargs["datetime"] = f"{start}/{end}"
        if self.fields:   # a page of 250 full Sentinel-2 items is ~10 MB; of these fields, a tenth of it
            kwargs["fields"] = {"include": [*SEARCH_FIELDS, *sorted(f"assets.{a}" for a in self.assets)],
                                "exclude": ["links"]}
        conditions = [{"op": op, "args": [{"property": k}, v]} for k, op, v in ranges]
        if ranges and self.filter_lang == "query":
            kwargs["query"] = {k: {RANGE_OPS[op]: v} for k, op, v in ranges}
            conditions = []
        out: dict[str, dict[str, Item]] = {coll: {} for coll in collections}
        after = None
        try:
            while True:
                where = conditions + ([{"op": ">", "args": [{"property": "id"}, after]}] if after else [])
                if where:
                    kwargs["filter"] = where[0] if len(where) == 1 else {"op": "and", "args": where}
                    kwargs["filter_lang"] = "cql2-json"
                cut, got, matched = None, 0, None
                for page in self.client.search(**kwargs).pages_as_dicts():
                    with self._lock:
                        self.searches += 1
                    self._thread.searches = self.thread_searches() + 1
                    features = page.get("features", [])
                    got += len(features)
                    for d in features:
                        it = Item.from_dict(compact(d, self.assets) if self.assets else d)
                        out.setdefault(it.collection, {})[it.id] = it
                    linked = any(link.get("rel") == "next" for link in page.get("links", []))
                    matched = page.get("numberMatched", (page.get("context") or {}).get("matched", matched))
                    cut = features[-1]["id"] if len(features) >= self.page_limit and not linked else None
                if cut is None or (matched is not None and got >= matched):   # all there: a last page just full
                    return out
                after = self._after(cut, after, collections)
        except SourceError:
            raise
        except Exception as e:  # noqa: BLE001 - classified: 429/5xx/timeouts are retried
            raise self._classify(e) from None

    def _after(self, last_id: str, before: str | None, collections: tuple) -> str:
        """A full page came back without a link to the next one (Planetary Computer does this:
        microsoft/planetary-computer-apis#274): the search goes on after the page's last id (keyset paging, as
        rslearn does), where the API sorts by id and filters in CQL2, and as long as each page moves past the last;
        elsewhere the search would be cut, and that is an error, never a silent truncation."""
        where = f"STAC API {self.url}: a full page of {self.page_limit} items of {', '.join(collections)} came " \
                "back without a link to the next page"
        if not (self.sortable and self.filter_lang != "query" and self.client.conforms_to("FILTER")):
            raise SourceError(f"{where}, and the API cannot be paged by id (no sort or CQL2 filter): the search "
                              "would be cut")
        if before is not None and last_id <= before:
            raise SourceError(f"{where}, and paging after id {before} did not move past it (the API ignores the "
                              "filter?): the search would be cut")
        return last_id

    def thread_searches(self) -> int:
        """Search requests this thread has sent (the export charges each tile with its own)."""
        return getattr(self._thread, "searches", 0)

    # -- read --------------------------------------------------------------------------------------------------
    def signed(self, item: Item, href: str) -> str:
        href = super().signed(item, href)
        return self.signer.sign(item.collection, href) if self.signer is not None else href

    def _on_retry(self, item: Item, href: str):
        forget = super()._on_retry(item, href)
        if self.signer is None:
            return forget

        def renew() -> None:  # a 403 after expiry must not replay: drop the token, then GDAL's memory of the URL
            self.signer.invalidate(item.collection, href)
            if forget is not None:
                forget()
        return renew

    def _guarded(self, href: str, fn):
        try:
            return super()._guarded(href, fn)
        except Exception as e:  # noqa: BLE001
            if self.signer is not None and "403" in str(e):   # an expired or revoked signature: renew and retry
                raise TransientSourceError(redact(f"{type(e).__name__}: {e}"), becomes=type(classify(e, True))) from None
            raise
