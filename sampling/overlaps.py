"""Given places closer than a tile side: the pairs to report and the rows ``--dedupe`` drops, in O(n log n) whatever
the file (great-circle distances from unit vectors; a KD-tree over distinct places)."""
from __future__ import annotations

import numpy as np

from .spacing import R_EARTH, ecef

OVERLAPS_LISTED = 8   # overlapping rows listed per row: a file of n identical rows lists ~8n pairs, not n^2/2


def _unit_xyz(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    return ecef(np.asarray(lon, float), np.asarray(lat, float)) / R_EARTH


def _places(lon: np.ndarray, lat: np.ndarray):
    """(distinct places as unit vectors, rows of each place in row order, a KD-tree over the places). Rows at
    exactly the same place are grouped first: a KD-tree over many identical points degenerates to a scan."""
    from scipy.spatial import cKDTree

    _, first, inverse = np.unique(np.column_stack([lon, lat]), axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")           # places in the order of their first row
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    place = rank[np.asarray(inverse).ravel()]
    rows = np.argsort(place, kind="stable")
    groups = np.split(rows, np.cumsum(np.bincount(place, minlength=len(order)))[:-1])
    xyz = _unit_xyz(lon[first[order]], lat[first[order]])
    return xyz, groups, cKDTree(xyz)


def _chord(side_m: float) -> float:
    return 2 * np.sin(side_m / (2 * R_EARTH)) * (1 - 1e-12)


def _metres(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * R_EARTH * np.arcsin(min(1.0, np.linalg.norm(a - b) / 2)))


def overlapping_pairs(lon: np.ndarray, lat: np.ndarray, side_m: float,
                      per_row: int = OVERLAPS_LISTED) -> list[tuple[int, int, float]]:
    """(i, j, metres), i < j, for rows closer than ``side_m`` (great-circle): each row's nearest ``per_row`` such
    rows (same place first, then by distance and row), so the work and the list stay O(n log n) whatever the file."""
    if len(lon) < 2:
        return []
    xyz, groups, tree = _places(lon, lat)
    at = _unit_xyz(lon, lat)
    k = min(len(xyz), per_row + 1)
    dist, near = tree.query(xyz, k=k, distance_upper_bound=_chord(side_m))
    dist, near = np.asarray(dist).reshape(len(xyz), -1), np.asarray(near).reshape(len(xyz), -1)
    pairs: dict[tuple[int, int], float] = {}
    for p, members in enumerate(groups):
        candidates: list[int] = []
        for q in near[p][np.isfinite(dist[p])]:        # nearest first; the place itself at 0
            candidates += groups[q][:per_row + 1].tolist()
        for i in members.tolist():
            for j in [j for j in candidates if j != i][:per_row]:
                a, b = min(i, j), max(i, j)
                if (a, b) not in pairs:
                    pairs[(a, b)] = _metres(at[a], at[b])
    return sorted((a, b, d) for (a, b), d in pairs.items())


def dedupe_rows(lon: np.ndarray, lat: np.ndarray, side_m: float) -> dict[int, tuple[int, float]]:
    """Rows to drop so no two kept rows are closer than ``side_m``, greedily in row order (a row is kept unless an
    earlier kept row is too close): dropped row -> (the kept row, metres). O(n log n): only kept places are asked
    for their neighbours, and kept places are a tile side apart, so a place is found by a handful of them."""
    if len(lon) < 2:
        return {}
    xyz, groups, tree = _places(lon, lat)
    dropped: dict[int, tuple[int, float]] = {}
    by_place: dict[int, tuple[int, float]] = {}     # a later place -> (the kept row too close to it, metres)
    for p, members in enumerate(groups):
        if p in by_place:
            dropped.update((int(i), by_place[p]) for i in members)
            continue
        keeper = int(members[0])
        dropped.update((int(i), (keeper, 0.0)) for i in members[1:])
        for q in tree.query_ball_point(xyz[p], _chord(side_m)):
            if q > p and q not in by_place:
                by_place[q] = (keeper, _metres(xyz[p], xyz[q]))
    return dropped
