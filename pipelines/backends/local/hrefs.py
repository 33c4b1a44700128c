"""Where a static catalog's documents and assets are: remote or local hrefs, public S3 objects as HTTPS URLs, what
GDAL opens, and relative links resolved as a browser resolves them (a signed container's query kept)."""
from __future__ import annotations

import os
import re
from urllib.parse import urljoin, urlparse
from urllib.request import url2pathname

from ...faults import MissingAsset


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
