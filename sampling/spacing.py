"""Non-overlapping tiles: each location is the centre of a square tile in its local UTM zone.

Two tiles in the same zone overlap when their UTM centres differ by less than the tile size on both axes.
Tiles in different zones are rotated against each other by the grid convergence; there (rare: zone borders)
any pair closer than the tile diagonal counts as overlapping, which is conservative. Candidate pairs come from
a KD-tree over Earth-centred coordinates, so the check is global and has no seams at the antimeridian.
"""
from __future__ import annotations

import numpy as np
from pyproj import Transformer
from scipy.spatial import cKDTree

R_EARTH = 6_371_008.8


def utm_epsg(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """EPSG code of the standard UTM zone of each point (326xx north, 327xx south)."""
    zone = (np.floor((np.asarray(lon) + 180.0) / 6.0).astype(np.int64) % 60) + 1
    return np.where(np.asarray(lat) >= 0, 32600, 32700) + zone


def utm_xy(lon: np.ndarray, lat: np.ndarray, epsg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.empty(len(lon)), np.empty(len(lon))
    for code in np.unique(epsg):
        idx = np.flatnonzero(epsg == code)
        tr = Transformer.from_crs(4326, int(code), always_xy=True)
        x[idx], y[idx] = tr.transform(lon[idx], lat[idx])
    return x, y


def ecef(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    lam, phi = np.radians(lon), np.radians(lat)
    return R_EARTH * np.column_stack([np.cos(phi) * np.cos(lam), np.cos(phi) * np.sin(lam), np.sin(phi)])


class Tiles:
    """Tile centres with what the overlap test needs."""

    def __init__(self, lon: np.ndarray, lat: np.ndarray):
        self.lon, self.lat = np.asarray(lon, float), np.asarray(lat, float)
        self.epsg = utm_epsg(self.lon, self.lat)
        self.x, self.y = utm_xy(self.lon, self.lat, self.epsg)
        self.xyz = ecef(self.lon, self.lat)

    def __len__(self) -> int:
        return len(self.lon)


def overlapping(a: Tiles, i: np.ndarray, b: Tiles, j: np.ndarray, size: float) -> np.ndarray:
    """For candidate pairs (a[i], b[j]) closer than the diagonal: do the two tiles overlap?"""
    same = a.epsg[i] == b.epsg[j]
    return np.where(same, (np.abs(a.x[i] - b.x[j]) < size) & (np.abs(a.y[i] - b.y[j]) < size), True)


def search_radius(size: float) -> float:
    # tile diagonal, plus margin for UTM scale (<= 1.001 inside a zone) and sphere vs ellipsoid chords
    return size * np.sqrt(2.0) * 1.01


class Occupancy:
    """Accepted tiles, queryable for overlap with new candidates."""

    def __init__(self, size: float):
        self.size = size
        self.parts: list[tuple[Tiles, cKDTree]] = []

    def add(self, tiles: Tiles) -> None:
        """Add accepted tiles; trees of similar size are merged (log-structured: amortised O(n log^2 n))."""
        if not len(tiles):
            return
        while self.parts and len(self.parts[-1][0]) <= 2 * len(tiles):
            tiles = _concat([self.parts.pop()[0], tiles])
        self.parts.append((tiles, cKDTree(tiles.xyz)))

    def blocked(self, cand: Tiles) -> np.ndarray:
        """Mask of candidates that overlap an accepted tile."""
        out = np.zeros(len(cand), dtype=bool)
        if not len(cand):
            return out
        r = search_radius(self.size)
        cand_tree = None
        for tiles, tree in self.parts:
            if 20 * len(cand) < len(tiles):  # few candidates: point queries beat a dual-tree walk
                lists = tree.query_ball_point(cand.xyz, r)
                ii = np.repeat(np.arange(len(cand)), [len(x) for x in lists])
                jj = np.fromiter((k for x in lists for k in x), dtype=np.int64, count=len(ii))
            else:
                if cand_tree is None:
                    cand_tree = cKDTree(cand.xyz)
                sm = cand_tree.sparse_distance_matrix(tree, r, output_type="coo_matrix")
                ii, jj = sm.row.astype(np.int64), sm.col.astype(np.int64)
            if len(ii):
                hit = overlapping(cand, ii, tiles, jj, self.size)
                out[ii[hit]] = True
        return out


def internal_pairs(cand: Tiles, size: float) -> np.ndarray:
    """(k, 2) index pairs of candidates that overlap each other."""
    if len(cand) < 2:
        return np.zeros((0, 2), dtype=np.int64)
    pairs = cKDTree(cand.xyz).query_pairs(search_radius(size), output_type="ndarray")
    if not len(pairs):
        return pairs.astype(np.int64)
    hit = overlapping(cand, pairs[:, 0], cand, pairs[:, 1], size)
    return pairs[hit].astype(np.int64)


def _concat(parts: list[Tiles]) -> Tiles:
    t = Tiles.__new__(Tiles)
    for name in ("lon", "lat", "epsg", "x", "y"):
        setattr(t, name, np.concatenate([getattr(p, name) for p in parts]))
    t.xyz = np.concatenate([p.xyz for p in parts])
    return t


def subset(t: Tiles, mask: np.ndarray) -> Tiles:
    s = Tiles.__new__(Tiles)
    for name in ("lon", "lat", "epsg", "x", "y", "xyz"):
        setattr(s, name, getattr(t, name)[mask])
    return s


def greedy_keep(n: int, pairs: np.ndarray, priority: np.ndarray) -> np.ndarray:
    """Keep a maximal set of non-overlapping candidates, visiting conflicted ones by ascending priority.

    Candidates without conflicts are always kept; the result depends only on the priorities, never on order."""
    keep = np.ones(n, dtype=bool)
    if not len(pairs):
        return keep
    involved = np.unique(pairs)
    nbrs: dict[int, list[int]] = {int(k): [] for k in involved}
    for a, b in pairs.tolist():
        nbrs[a].append(b)
        nbrs[b].append(a)
    keep[involved] = False
    for k in involved[np.lexsort((involved, priority[involved]))].tolist():
        if not any(keep[m] for m in nbrs[k]):
            keep[k] = True
    return keep
