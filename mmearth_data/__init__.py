"""mmearth-data: build, fetch and load MMEarth-style multi-modal Earth-observation data (v001 layout).

The consume side (this package minus the CLI's build commands) needs only numpy and h5py, plus torch for
:class:`MMEarthDataset`; it never imports GDAL, Earth Engine or geopandas.
"""
from __future__ import annotations

__version__ = "0.1.0"

from .catalog import biome_table, ecoregion_table, load_spec  # noqa: E402
from .errors import MMEarthError  # noqa: E402
from .reader import MMEarthFiles, open_dataset  # noqa: E402
from .validate import validate  # noqa: E402
from .writer import V001Writer  # noqa: E402

__all__ = ["MMEarthDataset", "MMEarthError", "MMEarthFiles", "V001Writer", "biome_table", "ecoregion_table",
           "load_spec", "open_dataset", "validate", "__version__"]


def __getattr__(name: str):
    if name == "MMEarthDataset":  # torch is imported only when the dataset is asked for
        from .dataset import MMEarthDataset

        return MMEarthDataset
    raise AttributeError(f"module 'mmearth_data' has no attribute {name!r}")
