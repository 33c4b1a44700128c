"""A static STAC catalog walked once and searched in-process.

pystac-client cannot search a static catalog, so the catalog is walked once (``catalog.json`` -> children ->
items, fetched in parallel over HTTP) and searched with a shapely STRtree per collection.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import urllib.request
from collections import defaultdict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import shapely

from mmearth_data.errors import MMEarthError

from ...faults import RetryPolicy, redact, with_retry
from ...items import Item
from .hrefs import file_path, is_http, join

MAX_DOCUMENT_BYTES = 64 << 20   # one STAC document (a FeatureCollection of thousands of items fits)


def _document(data: bytes, href: str) -> dict:
    if len(data) > MAX_DOCUMENT_BYTES:
        raise MMEarthError(f"{redact(href)}: a STAC document larger than {MAX_DOCUMENT_BYTES >> 20} MB")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise MMEarthError(f"{redact(href)}: not valid JSON ({str(e)[:100]})") from None
    if not isinstance(doc, dict):
        raise MMEarthError(f"{redact(href)}: not a STAC document (a JSON object)")
    return doc



class StaticCatalog:
    """All items of a static STAC catalog, indexed per collection for bbox/time/property search.

    What a catalog may point at (issue 27): a remote (http) document links only to http(s) documents and to
    http(s) or s3 assets, never to local files; no href is a GDAL ``/vsi`` path; a local catalog's documents and
    files stay inside its root directory (symlinks resolved) unless ``allow_outside``. Anything else refuses the
    whole catalog in one line before a pixel is read."""

    def __init__(self, roots: Sequence[str], fetch_threads: int = 16, policy: RetryPolicy | None = None,
                 allow_outside: bool = False):
        self.policy = policy or RetryPolicy()
        self.allow_outside = allow_outside
        self.items: dict[str, list[Item]] = defaultdict(list)
        seen: set[str] = set()
        pending = [self.resolve(str(r)) for r in roots]
        self.roots = list(pending)
        self._inside = [os.path.dirname(os.path.realpath(file_path(r))) for r in pending if r.startswith("file:")]
        remote = any(is_http(h) for h in pending)
        with ThreadPoolExecutor(fetch_threads if remote else 1) as pool:   # local files: threads only cost
            while pending:
                docs = list(pool.map(self._fetch, pending)) if remote else [self._fetch(h) for h in pending]
                nxt = []
                for href, doc in zip(pending, docs):
                    seen.add(href)
                    if doc.get("type") == "Feature":
                        self._add(doc, href)
                        continue
                    if doc.get("type") == "FeatureCollection":
                        for f in doc.get("features", []):
                            self._add(f, href)
                        continue
                    for link in doc.get("links", []):
                        if isinstance(link, dict) and link.get("rel") in ("child", "item"):
                            if not isinstance(link.get("href"), str):
                                raise MMEarthError(f"{redact(href)}: a {link.get('rel')} link has no href")
                            target = self.allowed(href, join(href, link["href"]), "link")
                            if target not in seen:
                                nxt.append(target)
                pending = sorted(set(nxt))
        for its in self.items.values():
            its.sort(key=lambda it: it.id)
        self._trees = {c: shapely.STRtree([it.geometry for it in its]) for c, its in self.items.items()}

    @staticmethod
    def resolve(root: str) -> str:
        if is_http(root):   # the query (a signature) stays a query: https://h/c?sig=x -> https://h/c/catalog.json?sig=x
            u = urlparse(root)
            return root if u.path.endswith(".json") else u._replace(path=u.path.rstrip("/") + "/catalog.json").geturl()
        p = Path(root)
        if p.is_dir():
            p = p / "catalog.json"
        if not p.is_file():
            raise MMEarthError(f"--catalog {root}: no catalog.json there (give a static STAC catalog file, "
                               "directory or http(s) URL)")
        return p.resolve().as_uri()

    @classmethod
    def probe(cls, root: str, policy: RetryPolicy | None = None) -> str:
        """Check that ``root`` is reachable and is a STAC document before a run writes anything; returns its
        resolved href. Raises a one-line :class:`MMEarthError` naming the catalog."""
        href = cls.resolve(root)
        probe = cls.__new__(cls)
        probe.policy = policy or RetryPolicy(attempts=2, base_s=0.2)
        try:
            doc = probe._fetch(href)
        except MMEarthError as e:
            raise MMEarthError(f"--catalog {root}: {e}") from None
        if not isinstance(doc, dict) or doc.get("type") not in ("Catalog", "Collection", "Feature", "FeatureCollection"):
            raise MMEarthError(f"--catalog {root}: {href} is JSON but not a STAC catalog, collection or item")
        return href

    def allowed(self, doc: str, target: str, what: str) -> str:
        """``target`` (resolved against document ``doc``) if this catalog may point at it, else one line."""
        scheme = urlparse(target).scheme
        local = scheme in ("", "file")
        path = file_path(target) if scheme == "file" else target
        why = None
        if local and path.startswith("/vsi") or target.startswith("/vsi"):
            why = "a GDAL /vsi path"
        elif is_http(doc) and not (is_http(target) or (what == "asset" and scheme == "s3")):
            why = "a remote catalog may only point at http(s) documents and http(s) or s3 files"
        elif not local and scheme not in ("http", "https", "s3"):
            why = f"the {scheme!r} scheme is not read"
        elif local and not self.allow_outside and self._inside:
            real = os.path.realpath(path)
            if not any(real == d or real.startswith(d.rstrip("/") + "/") for d in self._inside):
                why = "outside the catalog's directory (--allow-outside-catalog allows it)"
        if why:
            raise MMEarthError(f"{redact(doc)}: {what} {redact(target)} refused: {why}")
        return target

    def _fetch(self, href: str) -> dict:
        def get() -> dict:
            if href.startswith("file:"):
                path = Path(file_path(href))
                if not path.is_file():
                    raise MMEarthError(f"{path}: not a regular file")
                with open(path, "rb") as fh:
                    return _document(fh.read(MAX_DOCUMENT_BYTES + 1), href)
            with urllib.request.urlopen(href, timeout=30) as r:
                data = r.read(MAX_DOCUMENT_BYTES + 1)
                if r.length and len(data) <= MAX_DOCUMENT_BYTES:   # a bounded read does not raise on a cut body
                    import http.client

                    raise http.client.IncompleteRead(data, r.length)   # transient: asked again
                return _document(data, href)

        try:
            return with_retry(get, self.policy, remote=is_http(href))
        except MMEarthError:
            raise
        except Exception as e:
            raise MMEarthError(redact(f"{href}: cannot read the STAC document ({e})")) from None

    def _add(self, doc: Mapping, href: str) -> None:
        def resolve(asset_href: str) -> str:
            if not isinstance(asset_href, str):
                raise MMEarthError(f"{redact(href)}: an asset of item {doc.get('id')!r} has no href")
            full = self.allowed(href, join(href, asset_href), "asset")
            return file_path(full) if full.startswith("file:") else full

        item = Item.from_dict(doc, resolve)
        self.items[item.collection].append(item)

    def search(self, collection: str, bbox: Sequence[float], start: dt.datetime | None, end: dt.datetime | None,
               filters: Mapping[str, tuple[str, Any]] | None = None) -> list[Item]:
        items = self.items.get(collection)
        if not items:
            return []
        hits = self._trees[collection].query(shapely.box(*bbox), predicate="intersects")
        return [items[i] for i in sorted(hits) if items[i].overlaps_time(start, end) and items[i].matches(filters)]
