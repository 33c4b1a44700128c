"""Non-overlapping tiles: each location is the centre of a square tile in its local UTM zone.

Two tiles in the same zone overlap when their UTM centres differ by less than the tile size on both axes, so
they lie in the same or adjacent tile-sized cells: overlaps are found by searching sorted cell keys. Tiles in
different zones are rotated against each other by the grid convergence; there any pair closer than the tile
diagonal counts as overlapping (conservative). Such pairs can only involve tiles near a zone border (a zone
meridian, the antimeridian or the equator), which a small KD-tree over Earth-centred coordinates checks.
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
    # midpoint splits without node compaction build faster and query as fast for these point sets
    return cKDTree(xyz, balanced_tree=False, compact_nodes=False)


# ---- same-zone overlaps: a grid of tile-sized UTM cells ------------------------------------------------------
# Two same-zone tiles overlap iff their centres differ by < size on both axes, i.e. they sit in the same or
# adjacent cells; two accepted (non-overlapping) tiles never share a cell. Keys pack (zone, cell x, cell y).
_OFF = 1 << 23


def cell_keys(t: Tiles, size: float) -> np.ndarray:
    """Key of each tile's cell; the key of the cell (dx, dy) away is ``key + (dx << 24) + dy``."""
    cx = np.floor(t.x / size).astype(np.int64) + _OFF
    cy = np.floor(t.y / size).astype(np.int64) + _OFF
    return ((t.epsg.astype(np.int64) - 32600) << 48) | (cx << 24) | cy


def _ranges(sorted_keys: np.ndarray, low: np.ndarray, high: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(query index, position in sorted_keys) for every key in [low, high] (high defaults to low)."""
    lo = np.searchsorted(sorted_keys, low, "left")
    hi = np.searchsorted(sorted_keys, low if high is None else high, "right")
    cnt = hi - lo
    qi = np.repeat(np.arange(len(low)), cnt)
    pos = lo[qi] + (np.arange(len(qi)) - np.repeat(np.cumsum(cnt) - cnt, cnt))
    return qi, pos


# ---- cross-zone overlaps: only tiles near a zone border can meet one from another zone ------------------------
def near_border(t: Tiles, size: float) -> np.ndarray:
    """Tiles within the search radius of a UTM zone border (a zone meridian or the equator)."""
    margin = search_radius(size) * 1.05 / R_EARTH  # radians
    west = np.floor((t.lon + 180.0) / 6.0) * 6.0 - 180.0
    dlon = np.radians(np.minimum(t.lon - west, west + 6.0 - t.lon))
    to_meridian = np.arcsin(np.clip(np.sin(dlon) * np.cos(np.radians(t.lat)), -1, 1))
    return (to_meridian < margin) | (np.abs(np.radians(t.lat)) < margin)


class Occupancy:
    """Accepted tiles, queryable for overlap with new candidates (sorted cell keys + a small border KD-tree)."""

    def __init__(self, size: float, workers: int = 1):
        self.size = size
        self.workers = workers
        self.parts: list[tuple[Tiles, np.ndarray, np.ndarray]] = []  # tiles, sorted keys, order
        self.border: Tiles | None = None
        self.border_tree: cKDTree | None = None

    def add(self, tiles: Tiles, alive: np.ndarray | None = None) -> None:
        """Add the ``alive`` tiles of ``tiles``; parts of similar size are merged (log-structured)."""
        if alive is not None:
            tiles = subset(tiles, alive)
        if not len(tiles):
            return
        edge = near_border(tiles, self.size)
        if edge.any():
            new = subset(tiles, edge)
            self.border = new if self.border is None else concat([self.border, new])
            self.border_tree = make_tree(self.border.xyz)
        keys = cell_keys(tiles, self.size)
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        while self.parts and len(self.parts[-1][0]) <= 2 * len(tiles):
            old, old_keys, old_order = self.parts.pop()
            merged = np.concatenate([old_keys, keys])
            run = np.argsort(merged, kind="stable")  # two sorted runs: timsort merges them in linear time
            order = np.concatenate([old_order, order + len(old)])[run]
            keys, tiles = merged[run], concat([old, tiles])
        self.parts.append((tiles, keys, order))

    def blocked(self, cand: Tiles) -> np.ndarray:
        """Mask of candidates that overlap an accepted tile."""
        out = np.zeros(len(cand), dtype=bool)
        if not len(cand):
            return out
        base = cell_keys(cand, self.size)
        corder = np.argsort(base, kind="stable")
        base = base[corder]  # sorted needles: searchsorted resumes from the previous hit instead of cache-missing
        for tiles, keys, order in self.parts:
            for dx in (-1, 0, 1):  # cells (dx, -1..1) are three consecutive keys: one range search per column
                qi, pos = _ranges(keys, base + ((dx << 24) - 1), base + ((dx << 24) + 1))
                if len(qi):
                    ii, jj = corder[qi], order[pos]
                    hit = overlapping(cand, ii, tiles, jj, self.size)
                    out[ii[hit]] = True
        if self.border_tree is not None:
            edge = np.flatnonzero(near_border(cand, self.size))
            if len(edge):
                sub = subset(cand, edge)
                ii, jj = _near(self.border_tree, sub.xyz, search_radius(self.size), workers=self.workers)
                cross = sub.epsg[ii] != self.border.epsg[jj]
                out[edge[ii[cross]]] = True
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


def internal_pairs(cand: Tiles, size: float) -> np.ndarray:
    """(k, 2) index pairs of candidates that overlap each other."""
    if len(cand) < 2:
        return np.zeros((0, 2), dtype=np.int64)
    keys = cell_keys(cand, size)
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    found = []
    # same cell: every later member of the run of equal keys
    start = np.flatnonzero(np.concatenate([[True], sk[1:] != sk[:-1]]))  # runs of equal keys (already sorted)
    count = np.diff(np.append(start, len(sk)))
    run_end = np.repeat(start + count, count)
    after = run_end - np.arange(len(sk)) - 1
    pi = np.repeat(np.arange(len(sk)), after)
    pj = pi + 1 + (np.arange(len(pi)) - np.repeat(np.cumsum(after) - after, after))
    found.append(np.column_stack([order[pi], order[pj]]))
    # half of the neighbouring cells, so each pair is found once
    for low, high in (((1 << 24) - 1, (1 << 24) + 1), (1, 1)):  # cells (1, -1..1) and (0, 1)
        qi, pos = _ranges(sk, sk + low, sk + high)
        found.append(np.column_stack([order[qi], order[pos]]))
    pairs = np.concatenate(found)
    pairs = pairs[overlapping(cand, pairs[:, 0], cand, pairs[:, 1], size)]
    edge = np.flatnonzero(near_border(cand, size))
    if len(edge) > 1:
        sub = subset(cand, edge)
        bp = make_tree(sub.xyz).query_pairs(search_radius(size), output_type="ndarray")
        bp = bp[sub.epsg[bp[:, 0]] != sub.epsg[bp[:, 1]]]
        pairs = np.concatenate([pairs, edge[bp]])
    return pairs.astype(np.int64)


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
