"""Read a v001 dataset from a URL without downloading it (issue 28).

Every v001 dataset stores one tile per chunk (ours, and the official files: MMEarth-data rewrites them with
``chunks=(1, ...)``), so a sample is one byte range per modality. A **chunk index** (per dataset and row: byte
offset, size, filter mask) is built once by walking the file's chunk B-trees through ranged reads and cached
locally, keyed by the URL, the file's size and its ETag/Last-Modified, so a changed file is noticed. Per sample
the ranges of all modalities are fetched concurrently (adjacent ones in one request), then inflated by the same
code as local reads (:func:`mmearth_data.chunks.decode_raw`). A bounded on-disk **chunk cache** serves what was
read before, so a second epoch runs at local speed; it survives restarts and never holds more than its size.
"""
from __future__ import annotations

from .cache import ChunkCache
from .chunk_index import ChunkTable, chunk_table, load_tables, save_tables
from .files import MAX_SIDE_FILE, RemoteFiles, Url, sibling
from .prefetch import Prefetch
from .release import RemoteRelease, write_release_index
from .source import COALESCE_GAP, FETCH_THREADS, RemoteSource, StreamTileReader, without_query

__all__ = ["COALESCE_GAP", "FETCH_THREADS", "MAX_SIDE_FILE", "ChunkCache", "ChunkTable", "Prefetch", "RemoteFiles",
           "RemoteRelease", "RemoteSource", "StreamTileReader", "Url", "chunk_table", "load_tables", "save_tables",
           "sibling", "write_release_index", "without_query"]
