"""How: the export stage (tile grid, modality recipes, backends, staging + ledger, Dask runner) and, next, the
Dask packer that writes v001 HDF5 through :class:`mmearth_data.V001Writer`.

Modules: :mod:`.grid` (the tile grid), :mod:`.recipes` (one per modality, science only), :mod:`.backends`
(``local`` static STAC + COGs, ``synthetic``; transport only), :mod:`.staging` (one SQLite file per partition:
arrays, tile_info, ledger), :mod:`.export` (partitions as Dask tasks, resume), :mod:`.status` (progress, failures).
"""
