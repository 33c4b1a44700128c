"""A v001 dataset at a URL: its ``.h5`` read by ranged requests, its side files beside it."""
from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import ClassVar
from urllib.parse import urlparse

import h5py

from ..errors import MMEarthError, redact
from ..reader import SideFiles
from ..remote import Client, http_url
from .cache import ChunkCache
from .source import RemoteSource

MAX_SIDE_FILE = 2 << 30    # a JSON side file read whole (the official 1.2M tile_info is a few hundred MB)


class Url(str):
    """A URL that answers ``.name`` like a path does (messages name files the same way for both)."""

    @property
    def name(self) -> str:
        return PurePosixPath(urlparse(self).path).name


def sibling(url: str, name: str) -> Url:
    """``name`` in the same directory as ``url``, with ``url``'s query (a signature covers its siblings): how a
    release's files are found beside its manifest (:func:`mmearth_data.releases.file_source`)."""
    from ..releases import file_source, release_base

    return Url(file_source(release_base(url, None), name))


class RemoteFiles(SideFiles):
    """A v001 dataset at a URL (its ``.h5``; the side files beside it): what :class:`MMEarthDataset` needs of
    :class:`mmearth_data.reader.MMEarthFiles`, read remotely."""

    remote: ClassVar[bool] = True

    def __init__(self, url: str, client: Client | None = None, cache_dir: str | os.PathLike | None = None,
                 cache_size: int = 0):
        path = PurePosixPath(urlparse(url).path)
        if path.suffix != ".h5":
            raise MMEarthError(f"{redact(url)}: give the URL of the dataset's .h5 file (its side files are read "
                               "beside it)")
        self.h5_path = Url(url)
        self.stem = path.stem
        self.client = client or Client()
        cache = Path(cache_dir) if cache_dir is not None else None
        self.source = RemoteSource([url], self.client, ChunkCache(cache / "chunks", cache_size)
                                   if cache is not None and cache_size > 0 else None,
                                   cache / "index" if cache is not None else None)
        self._cache: dict = {}

    def side_path(self, kind: str) -> Url:
        return sibling(http_url(self.h5_path), f"{self.stem}_{kind}.json")   # s3/gs: resolved in their https form

    def _side_bytes(self, kind: str) -> tuple[object, bytes]:
        url = self.side_path(kind)
        return redact(url), self.client.get_all(url, MAX_SIDE_FILE)

    def h5(self, **kwargs) -> h5py.File:
        return self.source.h5()
