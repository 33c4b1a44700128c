"""How: modality recipes, backends, the resume ledger and the Dask packer that writes v001 HDF5 (issues #4, #5).

Packing goes through :class:`mmearth_data.V001Writer`, so every backend produces the same published layout.
"""
