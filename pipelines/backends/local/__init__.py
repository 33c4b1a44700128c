"""``local``: a static STAC catalog (on disk or served over HTTP) whose assets are COGs, read with rasterio.

Modules, each using only those above it: ``hrefs`` (remote or local, public S3 as HTTPS, relative links),
``gdal_env`` (GDAL's per-thread settings and /vsicurl/ cache), ``catalog`` (:class:`StaticCatalog`, walked once
and searched in-process) and ``backend`` (:class:`LocalBackend`, which reads assets onto tile grids).
"""
from .backend import RESAMPLING, LocalBackend
from .catalog import MAX_DOCUMENT_BYTES, StaticCatalog
from .gdal_env import VSI_CACHE_BYTES, forget_all_remote, forget_remote, gdal_options, thread_gdal_env
from .hrefs import file_path, gdal_path, is_http, is_remote, join, public_s3_url

__all__ = ["MAX_DOCUMENT_BYTES", "RESAMPLING", "VSI_CACHE_BYTES", "LocalBackend", "StaticCatalog", "file_path",
           "forget_all_remote", "forget_remote", "gdal_options", "gdal_path", "is_http", "is_remote", "join",
           "public_s3_url", "thread_gdal_env"]
