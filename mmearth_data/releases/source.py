"""Where a release comes from: its manifest (a URL or a path) and the base its files are fetched from."""
from __future__ import annotations

import json
import urllib.parse
from collections import Counter
from pathlib import Path

from ..download import Fetcher, is_url
from ..errors import MMEarthError, redact
from ..manifest import MANIFEST, Manifest, parse_manifest, read_manifest

MAX_MANIFEST = 64 << 20
MANIFEST_ATTEMPTS = 3                   # the first contact: a wrong or unreachable host fails within seconds


def fetch_manifest(source: str, fetcher: Fetcher) -> tuple[Manifest, str]:
    """The manifest at ``source`` (URL or path) and the base its files are fetched from. A remote manifest can
    only point at http(s): it never makes us read a local file."""
    shown = f"--manifest {redact(source)}"
    if is_url(source):
        def get() -> bytes:
            stream, _ = fetcher.transport.open(source)
            try:
                return stream.read(MAX_MANIFEST + 1)
            finally:
                stream.close()

        try:
            raw = fetcher.retrying(get, shown, Counter(), MANIFEST_ATTEMPTS)
        except MMEarthError as e:   # a message naming the URL (redacted) gets the option's name
            raise MMEarthError(str(e) if str(e).startswith("--manifest") else f"--manifest {e}") from None
        if len(raw) > MAX_MANIFEST:
            raise MMEarthError(f"{shown}: larger than {MAX_MANIFEST >> 20} MiB; not a release manifest")
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError) as e:   # also UnicodeDecodeError; RecursionError: nested too deeply
            raise MMEarthError(f"{shown}: not valid JSON ({e})") from None
        manifest = parse_manifest(doc, shown)
        base = release_base(source, manifest.base_url)
        if not is_url(base):
            raise MMEarthError(f"{shown}: base_url {redact(manifest.base_url)!r} is not http(s); a remote manifest "
                               "never points at local files")
        return manifest, base
    if source.startswith("file:"):
        raise MMEarthError(f"--manifest {source}: pass a local manifest as a path, not a file:// URL")
    path = Path(source)
    if path.is_dir():
        path = path / MANIFEST
    manifest = read_manifest(path)
    return manifest, manifest.base_url or str(path.parent.resolve())


def release_base(source: str, base_url: str | None) -> str:
    """Where a remote manifest's files are: its ``base_url`` resolved against the manifest's URL (urljoin), else
    the manifest's own directory; a directory either way. A base on the manifest's host without a query of its own
    gets the manifest's query (the signature of a SAS-signed container)."""
    src = urllib.parse.urlsplit(source)
    b = urllib.parse.urlsplit(urllib.parse.urljoin(source, base_url if base_url else "."))
    query = b.query or (src.query if (b.scheme, b.netloc) == (src.scheme, src.netloc) else "")
    return urllib.parse.urlunsplit((b.scheme, b.netloc, b.path, query, ""))


def file_source(base: str, name: str) -> str:
    """``name`` inside the directory ``base`` (a URL, whose query is kept, or a path)."""
    if is_url(base):
        b = urllib.parse.urlsplit(base)
        path = b.path if b.path.endswith("/") else b.path + "/"
        return urllib.parse.urlunsplit((b.scheme, b.netloc, path + urllib.parse.quote(name), b.query, ""))
    return str(Path(base) / name)
