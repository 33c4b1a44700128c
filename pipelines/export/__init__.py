"""The export stage: ``locations.parquet`` -> per-tile arrays for every modality, staged per partition.

Locations are cut into partitions of ``partition_size`` rows; each partition is one Dask task that owns its
staging/ledger file (:mod:`pipelines.staging`) and overlaps I/O with a bounded thread pool. The same tasks run on
Dask's threaded scheduler, a ``LocalCluster`` or an existing ``distributed`` cluster with shared storage. Only a
small summary per partition goes back to the client; progress is read from the ledgers themselves, so it works
the same for every scheduler. A killed run is resumed with ``--resume``: committed tiles are never redone.

Modules: :mod:`.config` (the configuration and input checks), :mod:`.tile` (one tile), :mod:`.partition`
(one partition task), :mod:`.run` (the whole export).
"""
from .config import (OPTIONAL_COLUMNS, REQUIRED_COLUMNS, ExportConfig, check_out_dir, check_tile_px, given_locations,
                     identity, partitions, read_locations)
from .tile import TileOutcome, export_tile, tile_status
from .partition import Superseded, export_partition
from .run import check_inputs, prepare, run_export

__all__ = ["OPTIONAL_COLUMNS", "REQUIRED_COLUMNS", "ExportConfig", "check_out_dir", "check_tile_px", "given_locations",
           "identity", "partitions", "read_locations", "TileOutcome", "export_tile", "tile_status", "export_partition",
           "Superseded", "check_inputs", "prepare", "run_export"]
