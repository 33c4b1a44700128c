"""Where: the biome-stratified global location sampler over RESOLVE Ecoregions 2017 (see issue #3).

Label tables (MMEarth biome/eco_region index <-> RESOLVE BIOME_NUM/ECO_ID) come from
:func:`mmearth_data.biome_table` and :func:`mmearth_data.ecoregion_table`.
"""
