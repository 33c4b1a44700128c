"""Non-overlapping tiles: each location is the centre of a square tile in its local UTM zone.

Two tiles in the same zone overlap when their UTM centres differ by less than the tile size on both axes.
Tiles in different zones are rotated against each other by the grid convergence; there (rare: zone borders)
any pair closer than the tile diagonal counts as overlapping, which is conservative. Candidate pairs come from
a KD-tree over Earth-centred coordinates, so the check is global and has no seams at the antimeridian.
"""
from __future__ import annotations

import functools

import numpy as np
from pyproj import Transformer
from scipy.spatial import cKDTree

R_EARTH = 6_371_008.8


def utm_epsg(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """EPSG code of the standard UTM zone of each point (326xx north, 327xx south)."""
    zone = (np.floor((np.asarray(lon) + 180.0) / 6.0).astype(np.int64) % 60) + 1
    return np.where(np.asarray(lat) >= 0, 32600, 32700) + zone


@functools.lru_cache(maxsize=None)
def _to_utm(code: int) -> Transformer:
    return Transformer.from_crs(4326, code, always_xy=True)


def utm_xy(lon: np.ndarray, lat: np.ndarray, epsg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.empty(len(lon)), np.empty(len(lon))
    order = np.argsort(epsg, kind="stable")
    codes, starts = np.unique(epsg[order], return_index=True)
    for code, idx in zip(codes, np.split(order, starts[1:])):
        x[idx], y[idx] = _to_utm(int(code)).transform(lon[idx], lat[idx])
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

    @functools.cached_property
    def xyz(self) -> np.ndarray:
        """Earth-centred coordinates, computed when a tree or query needs them (not carried through copies)."""
        return ecef(self.lon, self.lat)

    def __len__(self) -> int:
        return len(self.lon)


def overlapping(a: Tiles, i: np.ndarray, b: Tiles, j: np.ndarray, size: float) -> np.ndarray:
    """For candidate pairs (a[i], b[j]) closer than the diagonal: do the two tiles overlap?"""
    same = a.epsg[i] == b.epsg[j]
    return np.where(same, (np.abs(a.x[i] - b.x[j]) < size) & (np.abs(a.y[i] - b.y[j]) < size), True)


def search_radius(size: float) -> float:
    # tile diagonal, plus margin for UTM scale (<= 1.001 inside a zone) and sphere vs ellipsoid chords
    return size * np.sqrt(2.0) * 1.01


def make_tree(xyz: np.ndarray) -> cKDTree:
    # midpoint splits without node compaction build about 2x faster and query as fast for these point sets
    return cKDTree(xyz, balanced_tree=False, compact_nodes=False)


class Occupancy:
    """Accepted tiles, queryable for overlap with new candidates."""

    def __init__(self, size: float, workers: int = 1):
        self.size = size
        self.workers = workers
        self.parts: list[tuple[Tiles, cKDTree, np.ndarray]] = []

    def add(self, tiles: Tiles, tree: cKDTree | None = None, alive: np.ndarray | None = None) -> None:
        """Add the ``alive`` tiles of ``tiles`` (all if None), reusing ``tree`` if it indexes ``tiles``.

        Trees of similar size are merged (log-structured: amortised O(n log^2 n))."""
        alive = np.ones(len(tiles), dtype=bool) if alive is None else alive
        n = int(alive.sum())
        if not n:
            return
        if tree is None or (self.parts and len(self.parts[-1][0]) <= 2 * n):
            tiles = subset(tiles, alive)
            while self.parts and len(self.parts[-1][0]) <= 2 * len(tiles):
                old, _, old_alive = self.parts.pop()
                tiles = concat([subset(old, old_alive), tiles])
            tree, alive = make_tree(tiles.xyz), np.ones(len(tiles), dtype=bool)
        self.parts.append((tiles, tree, alive))

    def blocked(self, cand: Tiles) -> np.ndarray:
        """Mask of candidates that overlap an accepted tile."""
        out = np.zeros(len(cand), dtype=bool)
        if not len(cand):
            return out
        r = search_radius(self.size)
        for tiles, tree, alive in self.parts:
            ii, jj = _near(tree, cand.xyz, r, workers=self.workers)
            live = alive[jj]
            ii, jj = ii[live], jj[live]
            if len(ii):
                hit = overlapping(cand, ii, tiles, jj, self.size)
                out[ii[hit]] = True
        return out


def _near(tree: cKDTree, xyz: np.ndarray, r: float, k: int = 4, workers: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """All (query, tree) index pairs within ``r``, vectorized; rows with k hits are asked again with 4k."""
    k = min(k, tree.n)
    dist, idx = tree.query(xyz, k=k, distance_upper_bound=r, workers=workers)
    dist, idx = dist.reshape(len(xyz), k), idx.reshape(len(xyz), k)
    hit = np.isfinite(dist)
    ii, jj = np.nonzero(hit)[0], idx[hit]
    full = np.flatnonzero(hit[:, -1])
    if len(full) and k < tree.n:
        fi, fj = _near(tree, xyz[full], r, 4 * k, workers)
        ii = np.concatenate([ii[~np.isin(ii, full)], full[fi]])
        jj = np.concatenate([jj[~np.isin(np.nonzero(hit)[0], full)], fj])
    return ii.astype(np.int64), jj.astype(np.int64)


def internal_pairs(cand: Tiles, size: float, tree: cKDTree | None = None) -> np.ndarray:
    """(k, 2) index pairs of candidates that overlap each other."""
    if len(cand) < 2:
        return np.zeros((0, 2), dtype=np.int64)
    pairs = (tree or make_tree(cand.xyz)).query_pairs(search_radius(size), output_type="ndarray")
    if not len(pairs):
        return pairs.astype(np.int64)
    hit = overlapping(cand, pairs[:, 0], cand, pairs[:, 1], size)
    return pairs[hit].astype(np.int64)


FIELDS = ("lon", "lat", "epsg", "x", "y")


def concat(parts: list[Tiles]) -> Tiles:
    t = Tiles.__new__(Tiles)
    for name in FIELDS:
        setattr(t, name, np.concatenate([getattr(p, name) for p in parts]))
    return t


def subset(t: Tiles, mask: np.ndarray) -> Tiles:
    s = Tiles.__new__(Tiles)
    for name in FIELDS:
        setattr(s, name, getattr(t, name)[mask])
    return s


def greedy_keep(n: int, pairs: np.ndarray, priority: np.ndarray) -> np.ndarray:
    """Keep a maximal set of non-overlapping candidates, visiting conflicted ones by ascending priority.

    Candidates without conflicts are always kept; the result depends only on the priorities, never on order."""
    keep = np.ones(n, dtype=bool)
    if not len(pairs):
        return keep
    # rank = position in (priority, index) order; the parallel greedy below picks exactly what the sequential
    # greedy in rank order would: a point is decided once every better-ranked neighbour is decided.
    rank = np.empty(n, dtype=np.int64)
    rank[np.lexsort((np.arange(n), priority))] = np.arange(n)
    a, b = np.concatenate([pairs[:, 0], pairs[:, 1]]), np.concatenate([pairs[:, 1], pairs[:, 0]])
    state = np.zeros(n, dtype=np.int8)  # 0 undecided, 1 kept, -1 dropped
    involved = np.zeros(n, dtype=bool)
    involved[a] = True
    state[~involved] = 1
    while len(a):
        # undecided points with no undecided better-ranked neighbour are kept
        better_open = np.zeros(n, dtype=bool)
        better_open[a[rank[b] < rank[a]]] = True
        chosen = (state == 0) & ~better_open
        state[chosen] = 1
        dropped = np.zeros(n, dtype=bool)
        dropped[b[chosen[a]]] = True
        state[dropped & (state == 0)] = -1
        live = (state[a] == 0) & (state[b] == 0)
        a, b = a[live], b[live]
    state[state == 0] = 1
    return state == 1
