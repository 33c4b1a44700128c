"""Searches compiled into Earth Engine: a :class:`~.query.Query` becomes one filter chain (date, bounds, metadata,
``Filter.contains`` on the footprint, a time ranking for "nearest") mapped to small features (id, time, the source's
properties, the grid band's projection), and the answer becomes :class:`~pipelines.items.Item` s. A source whose
``kind`` is ``image`` (one Image asset) is not searched: its one item is the asset."""
from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import Any

import shapely

from ...faults import Attempts
from ...items import Item
from ...recipes.base import Source
from . import expressions as ex
from .answers import Answers
from .query import Query, hashable
from .templates import Part, Prebuilt, Templates

NO_FOOTPRINT = shapely.Polygon()   # shared (geometries are immutable): the footprint test ran server-side
END_OF_TIME_MS = 253402300800000   # 10000-01-01: the end of an open date range


class Searches:
    """Compiles, answers and parses the searches of one executor.

    Args:
        sources: the Earth Engine source map's sources.
        templates: the expression templates of the process.
        answers: prepared answers (a search asked by a batch is answered from there).
        value: sends one expression to ``value:compute`` (``value(expression, attempts)``).
    """

    def __init__(self, sources: dict[str, Source], templates: Templates, answers: Answers,
                 value: Callable[..., Any]):
        self.sources, self.templates, self.answers, self.value = sources, templates, answers, value
        self._local = threading.local()

    def source_of(self, collection: str) -> Source:
        return next(s for s in self.sources.values() if s.collection == collection)

    def parts(self, q: Query) -> tuple[Part, Part]:
        """The query as two template parts: its images (collection, filters, which rules apply, and the constants
        in slots), and their features (the source's properties; its ``images`` slot left to fill). Apart, the
        images can be referenced by another expression (the scene picked, :func:`~.expressions.scene_pick`) as
        ``ee`` builds it: no mapped function comes with them."""
        src = self.source_of(q.collection)
        values = src.options.get("values", {})
        filters = tuple((prop, op, hashable(values.get(prop, {}).get(value, value))) for prop, op, value in q.filters)
        dated = q.start_ms is not None or q.end_ms is not None
        slots: dict[str, Any] = {"bbox": list(q.bbox)}
        if dated:
            slots.update(start=q.start_ms if q.start_ms is not None else 0,
                         end=q.end_ms if q.end_ms is not None else END_OF_TIME_MS)
        contains = None
        if q.contains is not None:
            contains = "Polygon"
            slots["contains"] = q.contains   # tuples: JSON arrays
        if q.nearest_ms is not None:
            slots["t0"] = q.nearest_ms
        return (Part(ex.query_images, (q.collection, dated, filters, contains, q.nearest_ms is not None), slots),
                Part(ex.query_features, (tuple(src.properties.values()), src.options.get("grid_band"))))

    def compile(self, q: Query, nearest: Prebuilt | None = None) -> Prebuilt:
        """The query as a FeatureCollection of (id, time, the source's properties, the grid band's projection);
        ``nearest``: a computed time to rank by instead of the query's."""
        images, features = self.parts(q)
        if nearest is not None:
            images = Part(images.builder, images.args, {**images.values, "t0": nearest})
        return self.templates.one(Part(features.builder, features.args, {"images": self.templates.one(images)}))

    def items(self, q: Query, answer: dict) -> list[Item]:
        """The items of a query's answer, sorted by id (their footprints were tested server-side)."""
        src = self.source_of(q.collection)
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
            out.append(Item(iid, q.collection, NO_FOOTPRINT, p, assets, start=when, end=when))
        return sorted(out, key=lambda it: it.id)

    def search(self, collection: str, bbox: Sequence[float], start: dt.datetime | None, end: dt.datetime | None,
               filters: dict | None = None, contains=None, nearest: dt.datetime | None = None,
               attempts: Attempts | None = None) -> list[Item]:
        """Items matching the query (prepared by a batch, else one request of its own), sorted by id. The
        footprint test (``contains``) and the time ranking (``nearest``) run server-side."""
        src = self.source_of(collection)
        if src.options.get("kind") == "image":   # one Image asset: nothing to search
            return [Item(collection, collection, NO_FOOTPRINT, {},   # its id: the asset's, as composites record
                         dict.fromkeys(src.bands.values(), {"href": f"ee:{collection}", "roles": ["data"]}))]
        q = Query.of(collection, bbox, start, end, filters, contains, nearest)
        collecting = getattr(self._local, "collecting", None)
        if collecting is not None:   # a batch asks what the recipes would search: noted, answered later
            collecting.append(q)
            return []
        items = self.answers.recall(q)
        if isinstance(items, BaseException):
            raise items
        if items is None:
            items = self.items(q, self.value(self.compile(q), attempts))
            self.answers.remember(q, items)
        return items

    @contextmanager
    def collect(self):
        """Within: this thread's searches are noted (and answered empty) instead of sent."""
        self._local.collecting = noted = []
        try:
            yield noted
        finally:
            self._local.collecting = None
