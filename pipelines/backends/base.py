"""The one interface every backend implements. A backend knows transport (files, HTTP, APIs), not science."""
from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from ..faults import Attempts
from ..grid import TileGrid
from ..items import Item, NativeRaster
from .capabilities import Capabilities


class Backend(Protocol):
    name: str
    #: what it does beyond search and read (compiling recipes, per-tile sources, batches...)
    capabilities: Capabilities
    #: bounded thread pool size inside one partition task (I/O overlap)
    default_threads: int

    def search(self, collection: str, bbox: Sequence[float], start: dt.datetime | None, end: dt.datetime | None,
               filters: Mapping[str, tuple[str, Any]] | None = None) -> list[Item]:
        """Items of ``collection`` intersecting ``bbox`` (lon/lat) within [start, end], sorted by id."""

    def read(self, item: Item, bands: Sequence[str], grid: TileGrid, resampling: str,
             attempts: Attempts | None = None) -> np.ndarray:
        """``bands`` of ``item`` warped onto ``grid``: float32 (len(bands), h, w), NaN where there is no data.
        ``attempts`` counts the tries spent (the ledger's ``attempts`` column)."""

    def read_native(self, item: Item, bands: Sequence[str], grid: TileGrid, margin_px: int = 2,
                    attempts: Attempts | None = None) -> NativeRaster:
        """``bands`` of ``item`` on its own pixel grid, over the footprint of ``grid`` plus ``margin_px``."""
