"""``local``: a static STAC catalog (on disk or served over HTTP) whose assets are COGs, read with rasterio.

pystac-client cannot search a static catalog, so the catalog is walked once (``catalog.json`` -> children ->
items, fetched in parallel over HTTP) and searched in-process with a shapely STRtree per collection. Reads build a
``WarpedVRT`` straight onto the tile grid (3-11 ms per 128 px patch, against 130-170 ms for a VRT over the whole image then windowed); http(s)
assets go through GDAL's ``/vsicurl/`` with GDAL's own retries off, so every retry is ours and counted.
"""
from __future__ import annotations

import datetime as dt
import functools
import json
import math
import os
import re
import threading
import urllib.request
from collections import OrderedDict, defaultdict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlparse
from urllib.request import url2pathname

import numpy as np
import rasterio
import shapely
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window, from_bounds

from mmearth_data.errors import MMEarthError

from ..faults import Attempts, CorruptSource, MissingAsset, NotOrthorectified, RetryPolicy, TransientSourceError, \
    redact, with_retry
from ..grid import TileGrid, project
from ..items import Item
from .base import NativeRaster

RESAMPLING = {"nearest": Resampling.nearest, "bilinear": Resampling.bilinear, "mode": Resampling.mode}


def is_remote(href: str) -> bool:
    """An asset read over the network (its failures are retried as transient)."""
    return urlparse(str(href)).scheme in ("http", "https", "s3")


def is_http(href: str) -> bool:
    """A document fetched with HTTP (a catalog; an s3:// catalog is not supported)."""
    return urlparse(str(href)).scheme in ("http", "https")


def public_s3_url(href: str, region: str | None = None) -> str:
    """An ``s3://bucket/key`` href of a public bucket as the HTTPS URL anyone may read it at (no credentials: GDAL's
    /vsis3/ would ask for them); the key percent-encoded. ``AWS_S3_ENDPOINT`` (GDAL's own variable; ``AWS_HTTPS=NO``
    for http) names another S3-compatible server, addressed path-style, as is a bucket whose name holds dots (the
    virtual-host name would not match AWS's certificate)."""
    from urllib.parse import quote

    bucket, _, key = href[len("s3://"):].partition("/")
    # both come from a catalog and go into the URL's host: only what S3 allows, so no item can name another host
    if not _S3_BUCKET.fullmatch(bucket) or (region is not None and not _S3_REGION.fullmatch(str(region))):
        raise MissingAsset(f"{href}: not an S3 bucket name or region (storage:region {region!r}) that can be read")
    key = quote(key, safe="/~")
    endpoint = os.environ.get("AWS_S3_ENDPOINT")
    if endpoint:
        https = os.environ.get("AWS_HTTPS", "YES").upper() not in ("NO", "FALSE", "0")
        host = endpoint.split("://", 1)[-1].rstrip("/")
        return f"{'https' if https else 'http'}://{host}/{bucket}/{key}"
    aws = f"s3.{region}.amazonaws.com" if region else "s3.amazonaws.com"
    return f"https://{aws}/{bucket}/{key}" if "." in bucket else f"https://{bucket}.{aws}/{key}"


_S3_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")   # S3's bucket naming rules
_S3_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d+")


def gdal_path(href: str) -> str:
    """What GDAL opens: http(s) through /vsicurl/; an s3:// href as it is (rasterio hands it to /vsis3/)."""
    return f"/vsicurl/{href}" if is_http(href) else href


@functools.lru_cache(maxsize=1)
def _gdal_lib():
    """The GDAL library rasterio loaded (bundled in wheels as rasterio.libs/libgdal-*.so), for two C calls."""
    import ctypes
    import ctypes.util

    candidates = sorted(Path(rasterio.__file__).parent.parent.glob("rasterio.libs/libgdal*.so*"))
    for path in [*map(str, candidates), ctypes.util.find_library("gdal")]:
        if not path:
            continue
        try:
            lib = ctypes.CDLL(path)
            lib.VSICurlPartialClearCache.argtypes = [ctypes.c_char_p]
            lib.VSICurlClearCache.argtypes = []
            return lib
        except (OSError, AttributeError):
            continue
    return None


def forget_remote(href: str) -> None:
    """Drop what GDAL's /vsicurl/ cached about ``href`` (its size, an error status, partial blocks).

    GDAL remembers a failed open or a truncated header for the rest of the process, so without this a retry of a
    transient fault fails again without a single request being sent.
    """
    lib = _gdal_lib()
    if lib is not None:
        lib.VSICurlPartialClearCache(gdal_path(href).encode())


def forget_all_remote() -> None:
    """Drop everything GDAL's /vsicurl/ cached, errors included (a new partition starts from what is served now)."""
    lib = _gdal_lib()
    if lib is not None:
        lib.VSICurlClearCache()


VSI_CACHE_BYTES = 1_000_000


def gdal_options(timeout_s: float) -> dict[str, Any]:
    return {
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",   # no directory listing per open
        "GDAL_HTTP_MAX_RETRY": 0,                      # retries are ours (counted, with jitter)
        "GDAL_HTTP_TIMEOUT": max(1, int(round(timeout_s))),
        "GDAL_HTTP_CONNECTTIMEOUT": max(1, int(round(timeout_s))),
        "GDAL_INGESTED_BYTES_AT_OPEN": 65536,          # header and the first blocks of a small COG in one request
        "GDAL_CACHEMAX": 256_000_000,                  # in bytes: a small number here disables the block cache
        "VSI_CACHE": True,
        # per open handle (GDAL's default: 25 MB); a tile reads tens of kB of a COG, and up to 128 handles per thread
        # stay open: 25 MB each could hold GBs per process
        "VSI_CACHE_SIZE": VSI_CACHE_BYTES,
        "CPL_VSIL_CURL_CHUNK_SIZE": 65536,
        "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    }


_THREAD = threading.local()


def thread_gdal_env(timeout_s: float) -> None:
    """Enter one GDAL environment per thread and keep it (entering one per read costs more than the read)."""
    if getattr(_THREAD, "timeout_s", None) == timeout_s:
        return
    if getattr(_THREAD, "env", None) is not None:
        _THREAD.env.__exit__(None, None, None)
    _THREAD.env = rasterio.Env(**gdal_options(timeout_s))
    _THREAD.env.__enter__()
    _THREAD.timeout_s = timeout_s


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


def join(base: str, href: str) -> str:
    """``href`` resolved against document ``base`` as a browser would (``urljoin``); a relative href of a document
    fetched with a query (a SAS-signed container, a token) keeps that query: its siblings need the same signature,
    and it goes to the same host only."""
    full = urljoin(base, href)
    b, h = urlparse(base), urlparse(href)
    if b.query and is_http(base) and not h.scheme and not h.netloc and not h.query:
        full = urlparse(full)._replace(query=b.query).geturl()
    return full


def file_path(uri: str) -> str:
    """A ``file:`` URI back to a local path (percent-decoded)."""
    return url2pathname(urlparse(uri).path)


MAX_DOCUMENT_BYTES = 64 << 20   # one STAC document (a FeatureCollection of thousands of items fits)


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


class LocalBackend:
    """Search a static STAC catalog in-process; read its COG assets onto tile grids with rasterio."""

    name = "local"
    default_threads = 8

    def __init__(self, catalog: str | Sequence[str], *, timeout_s: float = 20.0, policy: RetryPolicy | None = None,
                 shared: Sequence[StaticCatalog] = (), open_datasets: int = 128, allow_outside: bool = False):
        roots = [catalog] if isinstance(catalog, (str, Path)) else list(catalog)
        self._reader(policy, timeout_s, open_datasets)
        self.catalogs = [StaticCatalog([str(r) for r in roots], policy=self.policy, allow_outside=allow_outside),
                         *shared]
        # local files of shared catalogs (the ERA5 months every tile reads) are held open like remote ones
        self._hold = tuple(str(Path(file_path(c.roots[0])).parent) + "/" for c in shared
                           if c.roots and c.roots[0].startswith("file:"))

    def _reader(self, policy: RetryPolicy | None, timeout_s: float, open_datasets: int) -> None:
        """The read side's settings (a backend that searches elsewhere, e.g. a STAC API, reads with this code)."""
        self.policy = policy or RetryPolicy()
        self.timeout_s = timeout_s
        self.open_datasets = open_datasets
        self.s3_public = False   # s3:// hrefs are public buckets (Earth Search's source maps say so)
        self._env = _THREAD   # open datasets are shared by every backend of a thread: hrefs name them globally
        self.catalogs: list[StaticCatalog] = []
        self._hold: tuple[str, ...] = ()

    # -- search ------------------------------------------------------------------------------------------------
    def search(self, collection, bbox, start, end, filters=None) -> list[Item]:
        """``collection``: one id, or a tuple of ids searched together (a source spread over several)."""
        names = (collection,) if isinstance(collection, str) else tuple(collection)
        found = [it for c in self.catalogs for name in names for it in c.search(name, bbox, start, end, filters)]
        return sorted(found, key=lambda it: it.id) if len(self.catalogs) > 1 or len(names) > 1 else found

    # -- read --------------------------------------------------------------------------------------------------
    def _gdal_env(self) -> None:
        thread_gdal_env(self.timeout_s)

    def _on_retry(self, item: Item, href: str):
        return (lambda: forget_remote(self.signed(item, href))) if is_remote(href) else None

    def _by_asset(self, item: Item, bands: Sequence[str]) -> dict[str, tuple[str, list[int], list[int]]]:
        groups: dict[str, tuple[str, list[int], list[int]]] = {}
        for pos, b in enumerate(bands):
            ref = item.band(b)
            href, idx, out = groups.setdefault(ref.asset, (ref.href, [], []))
            idx.append(ref.index)
            out.append(pos)
        return groups

    def read(self, item: Item, bands: Sequence[str], grid: TileGrid, resampling: str,
             attempts: Attempts | None = None, keep_nodata: bool = False) -> np.ndarray:
        """``keep_nodata``: the files' declared no-data value is read as a value (Earth Search Collection 1's
        cloud probability declares no-data 0, a valid 0 %); outside the raster is still NaN."""
        out = np.full((len(bands), grid.height, grid.width), np.nan, dtype=np.float32)
        for href, indexes, positions in self._by_asset(item, bands).values():
            out[positions] = with_retry(
                lambda h=href, i=indexes: self._warp(self.signed(item, h), i, grid, resampling, keep_nodata),
                self.policy, is_remote(href), attempts, on_retry=self._on_retry(item, href))
        return out

    def signed(self, item: Item, href: str) -> str:
        """The href to open, just before it is opened (a backend with signed URLs signs it here). An ``s3://`` href
        of a public bucket (the item says ``storage:requester_pays: false``, or the source map ``s3_public``) is
        read anonymously over HTTPS."""
        pays = item.properties.get("storage:requester_pays")
        if href.startswith("s3://") and pays is not True and (self.s3_public or pays is False):
            return public_s3_url(href, item.properties.get("storage:region"))
        return href

    @staticmethod
    def _check(src, href: str) -> None:
        """A header cut short can still parse as a TIFF without georeferencing: never read that as data."""
        if (src.crs is None or src.transform.is_identity) and src.gcps[0]:
            raise NotOrthorectified(f"{href}: georeferenced by GCPs only, not orthorectified (use a terrain-corrected "
                                    "product, e.g. Sentinel-1 RTC or GEE's COPERNICUS/S1_GRD)")
        if src.crs is None or src.transform.is_identity:
            msg = f"{href}: no georeferencing in the GeoTIFF header (truncated or corrupt)"
            raise TransientSourceError(msg, becomes=CorruptSource) if is_remote(href) else CorruptSource(msg)

    def _open(self, href: str):
        """An open remote dataset from this thread's LRU: shared sources (ERA5 months) are read by many tiles, and
        each reopen would cost requests and parse the header again."""
        self._gdal_env()
        cache = getattr(self._env, "datasets", None)
        if cache is None:
            cache = self._env.datasets = OrderedDict()
        src = cache.pop(href, None)
        if src is None:
            src = rasterio.open(gdal_path(href))
            try:
                self._check(src, href)
            except Exception:
                src.close()
                raise
        cache[href] = src
        while len(cache) > self.open_datasets:
            cache.popitem(last=False)[1].close()
        return src

    def _evict(self, href: str) -> None:
        cache = getattr(self._env, "datasets", None)
        if cache is not None and href in cache:
            cache.pop(href).close()

    def _guarded(self, href: str, fn):
        """Run ``fn(src)`` on a dataset: remote ones come from the per-thread cache, and a failure closes and
        forgets them so a retry starts clean; local files are cheap to open and are not held (file handles)."""
        if not is_remote(href) and not (self._hold and href.startswith(self._hold)):
            self._gdal_env()
            with rasterio.open(href) as src:
                self._check(src, href)
                return fn(src)
        try:
            return fn(self._open(href))
        except Exception:
            self._evict(href)
            raise

    def _warp(self, href: str, indexes: list[int], grid: TileGrid, resampling: str,
              keep_nodata: bool = False) -> np.ndarray:
        def warp(src) -> np.ndarray:
            win = _aligned_window(src, grid)
            if win is not None:  # same CRS, same pixel grid, inside the raster: no resampling at all
                data = src.read(indexes, window=win, masked=not keep_nodata, out_dtype="float32")
            elif keep_nodata:   # no source no-data; the destination's own no-data marks what lies outside
                with WarpedVRT(src, crs=grid.crs, transform=grid.transform, width=grid.width, height=grid.height,
                               resampling=RESAMPLING[resampling], src_nodata=None, nodata=np.nan,
                               dtype="float32") as vrt:
                    data = vrt.read(indexes)
            else:
                with WarpedVRT(src, crs=grid.crs, transform=grid.transform, width=grid.width, height=grid.height,
                               resampling=RESAMPLING[resampling], src_nodata=src.nodata) as vrt:
                    data = vrt.read(indexes, masked=True, out_dtype="float32")
            return np.ma.filled(data, np.nan).astype(np.float32, copy=False)

        return self._guarded(href, warp)

    def read_native(self, item: Item, bands: Sequence[str], grid: TileGrid, margin_px: int = 2,
                    attempts: Attempts | None = None) -> NativeRaster:
        groups = list(self._by_asset(item, bands).values())
        if len(groups) != 1:
            raise ValueError("read_native reads bands of one asset")
        href, indexes, _ = groups[0]
        return with_retry(lambda: self._native(self.signed(item, href), indexes, grid, margin_px), self.policy,
                          is_remote(href), attempts, on_retry=self._on_retry(item, href))

    def _native(self, href: str, indexes: list[int], grid: TileGrid, margin_px: int) -> NativeRaster:
        def native(src) -> NativeRaster:
            epsg = src.crs.to_epsg()
            left, bottom, right, top = grid.bounds
            xs, ys = project(grid.epsg, epsg, [left, right, right, left], [top, top, bottom, bottom])
            win = from_bounds(min(xs), min(ys), max(xs), max(ys), src.transform)
            col0, row0 = math.floor(win.col_off) - margin_px, math.floor(win.row_off) - margin_px
            col1 = math.ceil(win.col_off + win.width) + margin_px
            row1 = math.ceil(win.row_off + win.height) + margin_px
            win = Window(col0, row0, col1 - col0, row1 - row0)
            inside = col0 >= 0 and row0 >= 0 and col1 <= src.width and row1 <= src.height
            # boundless reads build a VRT document per call: only pay for it at the raster's edge
            data = src.read(indexes, window=win, boundless=not inside, masked=True, out_dtype="float32")
            return NativeRaster(np.ma.filled(data, np.nan).astype(np.float32, copy=False), src.window_transform(win),
                                f"EPSG:{epsg}")

        return self._guarded(href, native)


def _aligned_window(src, grid: TileGrid) -> Window | None:
    """The window of ``src`` that is exactly ``grid`` (same CRS and pixel grid, fully inside), else None."""
    t = src.transform
    if src.crs is None or src.crs.to_epsg() != grid.epsg or t.b or t.d or abs(t.a - grid.res) > 1e-9 \
            or abs(t.e + grid.res) > 1e-9:
        return None
    col, row = (grid.x0 - t.c) / t.a, (grid.y0 - t.f) / t.e
    if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
        return None
    col, row = int(round(col)), int(round(row))
    if col < 0 or row < 0 or col + grid.width > src.width or row + grid.height > src.height:
        return None
    return Window(col, row, grid.width, grid.height)
