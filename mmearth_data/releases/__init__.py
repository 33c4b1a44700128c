"""Fetch and check prebuilt data: a sharded release by its manifest, or one of the official MMEarth v001 variants.

``download.json`` in the output directory records where the files came from, which were selected and the
SHA-256 of each verified file (for the official variants, whose authors publish no checksums, the one computed
on download), so ``verify`` can check them later and ``verify --fix`` can fetch what is bad again.

URLs with a query (a SAS-signed container, a token): the record and every message show them redacted
(``...?<redacted>``); the full URL is kept only in ``.download-source.json`` (mode 0600), for ``verify --fix``.
Relative names resolve with :func:`urllib.parse.urljoin` semantics, and a base URL's query is carried to every file
fetched from it: a SAS token on a container (or on the manifest, for the files beside it) signs each blob in it.
The manifest's query is never carried to another host.
"""
from __future__ import annotations

from .fetch import download_release, parse_shards, select, shards_holding
from .record import RECORD, SOURCE_FILE, Record, full_source, keep_source
from .source import MAX_MANIFEST, fetch_manifest, file_source, release_base
from .variants import Variant, download_variant, variants
from .integrity import Verification, expected, verify

__all__ = ["MAX_MANIFEST", "RECORD", "SOURCE_FILE", "Record", "Variant", "Verification", "download_release",
           "download_variant", "expected", "fetch_manifest", "file_source", "full_source", "keep_source",
           "parse_shards", "release_base", "select", "shards_holding", "variants", "verify"]
