"""A tile's pixels from Earth Engine: one merged image of every modality's part, fetched with ``computePixels``
(NPY) on the tile grid in as few requests as the endpoint's limits allow."""
from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mmearth_data.errors import MMEarthError

from ...faults import Attempts
from ...grid import TileGrid
from ...recipes.base import RecipeResult
from .decode import npy_bands
from .templates import Part
from .transport import OVER_MEMORY, EarthEngineError, Requests

MAX_BYTES = 48 * 1024 * 1024    # computePixels: at most this many bytes of pixels per request (uncompressed)
MAX_SIDE = 32768                # computePixels: pixels per side of the grid
MAX_BANDS = 1024                # computePixels: bands per request


@dataclass
class Compiled:
    """One modality's part of the merged image (None: nothing to fetch): its bands, and the recipe's conversion of
    their pixels."""

    part: Part | None
    bands: list[str]
    finish: Callable[[dict[str, np.ndarray]], RecipeResult]


def grid_spec(grid: TileGrid) -> dict[str, Any]:
    """The tile grid as computePixels' ``PixelGrid``."""
    t = grid.transform
    return {"dimensions": {"width": grid.width, "height": grid.height},
            "affineTransform": {"scaleX": t.a, "shearX": t.b, "translateX": t.c, "shearY": t.d,
                                "scaleY": t.e, "translateY": t.f},
            "crsCode": f"EPSG:{grid.epsg}"}


class Pixels:
    """Fetches merged images for one executor.

    Args:
        rest: the REST client (``compute_pixels``).
        requests: sends each request through the quota and the retry policy.
    """

    def __init__(self, rest, requests: Requests):
        self.rest, self.requests = rest, requests
        # one tile's arrays at a time: numpy releases the GIL around every call on a tile-sized array, and with many
        # threads turning answers into arrays at once each release handed the GIL to another of them (context
        # switches that cost a share of the CPU); serialized, they wait on this lock, not on the GIL
        self.numpy = threading.Lock()

    def fetch(self, image: str, grid: TileGrid, bands: Sequence[str], attempts: Attempts | None = None,
              max_bytes: int = MAX_BYTES) -> dict[str, np.ndarray]:
        """Band name -> float32 (h, w) plane of a merged image on ``grid``.

        The bands are split into groups of at most ``max_bytes`` and :data:`MAX_BANDS` bands, and a group whose
        computation passes Earth Engine's memory limit ("User memory limit exceeded.") is asked again in halves,
        down to one band.

        Args:
            image: the merged image's expression (JSON text).
            grid: the tile grid.
            bands: the image's bands.
            attempts: counts the tries (the ledger's ``attempts``).
            max_bytes: the most bytes of pixels one request may ask for.

        Returns:
            One plane per band, masked pixels as NaN.

        Raises:
            MMEarthError: the grid is larger than Earth Engine serves.
            EarthEngineError: Earth Engine refused a request, or answered something else than was asked.
        """
        if not bands:
            return {}
        h, w = grid.height, grid.width
        if max(h, w) > MAX_SIDE:
            raise MMEarthError(f"tile of {w} x {h} px: Earth Engine serves at most {MAX_SIDE} px per side")
        group = max(1, min(MAX_BANDS, max_bytes // (h * w * 4)))
        spec = grid_spec(grid)
        out: dict[str, np.ndarray] = {}
        todo = deque(list(bands[i:i + group]) for i in range(0, len(bands), group))
        while todo:
            part = todo.popleft()
            try:
                data = self.requests.call(lambda part=part: self.rest.compute_pixels(image, spec, part), attempts,
                                          "image:computePixels")
            except EarthEngineError as e:
                if len(part) == 1 or not OVER_MEMORY.search(str(e)):
                    raise
                todo.extendleft([part[len(part) // 2:], part[:len(part) // 2]])
                continue
            with self.numpy:
                out.update(npy_bands(data, part, (h, w)))
        return out
