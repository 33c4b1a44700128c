"""GDAL's settings for reading COGs: one environment per thread, its own HTTP retries off (every retry is ours and
counted), and the /vsicurl/ cache forgotten before a retry."""
from __future__ import annotations

import functools
import threading
from pathlib import Path
from typing import Any

import rasterio

from .hrefs import gdal_path


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


THREAD_STATE = threading.local()   # per thread: its GDAL environment and (LocalBackend) its open datasets


def thread_gdal_env(timeout_s: float) -> None:
    """Enter one GDAL environment per thread and keep it (entering one per read costs more than the read)."""
    if getattr(THREAD_STATE, "timeout_s", None) == timeout_s:
        return
    if getattr(THREAD_STATE, "env", None) is not None:
        THREAD_STATE.env.__exit__(None, None, None)
    THREAD_STATE.env = rasterio.Env(**gdal_options(timeout_s))
    THREAD_STATE.env.__enter__()
    THREAD_STATE.timeout_s = timeout_s
