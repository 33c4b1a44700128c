"""Point -> ecoregion lookup (spatial index over the polygons), for checks and for user-supplied locations."""
from __future__ import annotations

import numpy as np
import shapely

from .ecoregions import Ecoregions


def lookup_ecoregion(eco: Ecoregions, lon, lat, tree: shapely.STRtree | None = None) -> np.ndarray:
    """RESOLVE ECO_ID of the polygon holding each point, 0 where none does (``tree``: an STRtree over ``eco``'s
    geometries, when the caller has one).

    Simplified polygons overlap in a few places; a point in two ecoregions gets the smaller one (the more
    specific polygon), so the answer is deterministic."""
    points = shapely.points(np.asarray(lon, float), np.asarray(lat, float))
    geoms = eco.frame.geometry.to_numpy()
    tree = tree if tree is not None else shapely.STRtree(geoms)
    pi, gi = tree.query(points, predicate="intersects")
    out = np.zeros(len(points), dtype=np.int64)
    if len(pi):
        area = shapely.area(geoms)[gi]
        order = np.lexsort((area, pi))[::-1]  # per point, the smallest area is written last
        out[pi[order]] = eco.frame.eco_id.to_numpy()[gi[order]]
    return out
