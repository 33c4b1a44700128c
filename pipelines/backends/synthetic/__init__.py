"""``synthetic``: writes deterministic, plausible source scenes as COGs plus a static STAC catalog, then reads them
through :class:`~pipelines.backends.local.LocalBackend` - so a fresh machine exercises the whole export path
(search, containment, reprojection, resampling, retries) with no network and no credentials.

Modules, each using only those above it: ``world`` (continuous fields of lon/lat every source samples), ``files``
(the COG and static STAC writer), ``scenes`` (one location's Sentinel-2, Sentinel-1, Dynamic World, elevation,
canopy and WorldCover items), ``catalog`` (per-location and ERA5 catalogs, and the bulk writer for
``--backend local``), ``backend`` (:class:`SyntheticBackend`). One directory per location, written under a
temporary name and renamed when complete; ERA5-Land-like monthly climate is one global 1-degree COG per month
(2016-2020), shared by all partitions.

Every file says it is synthetic: a ``SYNTHETIC=true`` GeoTIFF tag, ``mmearth:synthetic`` in every STAC document.
"""
from .backend import LazyLocalBackend, SyntheticBackend
from .catalog import ERA5_MONTHS, neighbours, safe_name, write_era5, write_locations, write_synthetic_catalog
from .files import NOTE, Deferred, ItemWriter, build_atomically, write_catalog, write_cog
from .scenes import L2A_FROM, S2_ASSETS, S2_RES, Location, LocationScenes

__all__ = ["ERA5_MONTHS", "L2A_FROM", "NOTE", "S2_ASSETS", "S2_RES", "Deferred", "ItemWriter", "LazyLocalBackend",
           "Location", "LocationScenes", "SyntheticBackend", "build_atomically", "neighbours", "safe_name",
           "write_catalog", "write_cog", "write_era5", "write_locations", "write_synthetic_catalog"]
