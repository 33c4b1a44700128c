"""How: the export stage (tile grid, modality recipes, backends, staging + ledger, Dask runner), the Dask packer
that writes v001 HDF5 through :class:`mmearth_data.V001Writer`, and the build that runs sample -> export ->
replacement rounds -> pack to exactly the size asked for.

Modules: :mod:`.grid` (the tile grid), :mod:`.recipes` (one per modality, science only), :mod:`.backends`
(``local`` static STAC + COGs, ``synthetic``; transport only), :mod:`.staging` (one SQLite file per partition:
arrays, tile_info, ledger), :mod:`.export` (partitions as Dask tasks, resume), :mod:`.scheduling` (the one dispatch
of export and pack, worker watchdog, output-directory lock), :mod:`.status` (progress, failures), :mod:`.pack`,
:mod:`.splits`, :mod:`.build`.
"""
