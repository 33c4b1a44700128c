"""The biome-stratified sampler: quotas -> equal-area draws -> non-overlapping tiles -> saturation moves.

Policy when a quota cannot be met (documented in the README):
1. An ecoregion holds at most ``max_coverage`` of its area in tiles (default 0.3; random sequential placement
   of squares jams near 0.55 and slows to a crawl well before). Its quota is capped there up front, and
   lowered to what it reached if placement stalls earlier (a round accepting under ``min_acceptance`` of its
   candidates, or ``max_rounds`` rounds). Every ecoregion may hold at least one tile.
2. The shortfall moves to the other ecoregions of the same biome, by the mode's weights (area or equal).
3. What the biome cannot absorb moves to the other biomes in proportion to their quotas (``spill="global"``),
   or is left unfilled (``spill="none"``). Every move is recorded in the report.
Randomness: one generator per ecoregion, seeded from (seed, ECO_ID); a candidate's fate depends only on
those streams and on priorities drawn from them, so the result is identical for any number of threads.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from mmearth_data.errors import MMEarthError

from .draw import PolygonDraw
from .ecoregions import Ecoregions
from .quotas import MODES, initial_quotas, largest_remainder, within_weights
from .spacing import Occupancy, Tiles, concat, greedy_keep, internal_pairs, subset

log = logging.getLogger(__name__)


@dataclass
class SamplerConfig:
    size: int
    mode: str = "area"
    seed: int = 0
    tile_size_m: float = 1280.0
    max_coverage: float = 0.3
    spill: str = "global"  # or "none"
    min_acceptance: float = 0.02
    max_rounds: int = 40
    threads: int = 1

    def check(self) -> None:
        if self.mode not in MODES:
            raise MMEarthError(f"--mode {self.mode!r}: unknown; choose one of {', '.join(MODES)}")
        if self.size <= 0:
            raise MMEarthError(f"--size {self.size}: must be at least 1")
        if not 10 <= self.tile_size_m <= 100_000:
            raise MMEarthError(f"--tile-size {self.tile_size_m}: must be between 10 and 100000 metres")
        if not 0 < self.max_coverage < 0.55:
            raise MMEarthError(f"--max-coverage {self.max_coverage}: must be in (0, 0.55); random placement jams near 0.55")
        if self.spill not in ("global", "none"):
            raise MMEarthError(f"--spill {self.spill!r}: choose 'global' or 'none'")
        if self.threads < 1:
            raise MMEarthError(f"--threads {self.threads}: must be at least 1")


@dataclass
class SampleResult:
    eco: Ecoregions
    config: SamplerConfig
    eco_index: np.ndarray  # row of eco.frame for each tile
    draw_index: np.ndarray  # per-ecoregion candidate counter (stable tile id)
    tiles: Tiles
    target: np.ndarray  # initial quota per ecoregion
    final_quota: np.ndarray  # after moves
    achieved: np.ndarray
    saturated: np.ndarray
    areas_km2: np.ndarray
    moves: list[dict] = field(default_factory=list)
    rounds: int = 0


class _Stream:
    """One ecoregion's generator and draw counter; ``stream`` > 0 is a further, independent stream of the same
    ecoregion (replacement round ``stream`` of a build), whose counters start at ``first``."""

    def __init__(self, seed: int, eco_id: int, geom, stream: int = 0, first: int = 0):
        self.rng = np.random.default_rng([seed, eco_id] if stream == 0 else [seed, eco_id, stream])
        self.poly = PolygonDraw(geom)
        self.count = first

    def draw(self, n: int):
        if self.poly.empty:  # a degenerate polygon (no area): nothing to draw, it saturates at once
            return np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0, np.int64)
        lon, lat = self.poly.draw(self.rng, n)
        priority = self.rng.random(n)
        idx = np.arange(self.count, self.count + n)
        self.count += n
        return lon, lat, priority, idx


def _redistribute(quota, cap, biome, weights, spill, moves, stage):
    """Cap quotas at ``cap`` and move the excess: same biome first, then (spill) across biomes."""
    excess = np.maximum(quota - cap, 0)
    if not excess.any():
        return quota
    quota = np.minimum(quota, cap)
    spare = lambda: cap - quota  # noqa: E731
    leftover_total = 0
    per_biome_left = {}
    for b in np.unique(biome[excess > 0]):
        idx = np.flatnonzero(biome == b)
        amount = int(excess[idx].sum())
        given = _fill(quota, spare(), idx, weights[idx], amount)
        left = amount - int(given.sum())
        moves.append({"stage": stage, "scope": "within-biome", "biome": int(b),
                      "from": {int(i): int(excess[i]) for i in idx if excess[i]},
                      "to": {int(i): int(g) for i, g in zip(idx, given) if g}, "moved": int(given.sum()),
                      "unplaced": left})
        per_biome_left[int(b)] = left
        leftover_total += left
    if leftover_total and spill == "global":
        others = np.unique(biome)
        share = np.array([quota[biome == b].sum() for b in others], dtype=float)
        room = np.array([spare()[biome == b].sum() for b in others])
        alloc = _capped_split(leftover_total, share, room)
        placed = 0
        for b, a in zip(others, alloc):
            if a:
                idx = np.flatnonzero(biome == b)
                got = _fill(quota, spare(), idx, weights[idx], int(a))
                placed += int(got.sum())
        moves.append({"stage": stage, "scope": "across-biomes", "from_biomes": per_biome_left,
                      "to_biomes": {int(b): int(a) for b, a in zip(others, alloc) if a}, "moved": placed,
                      "unplaced": leftover_total - placed})
    return quota


def _capped_split(total, weights, room):
    """Largest-remainder split of ``total`` by ``weights`` where part k takes at most ``room[k]`` (water-filling)."""
    alloc = np.zeros(len(weights), dtype=np.int64)
    room = np.asarray(room, dtype=np.int64).copy()
    left = int(total)
    while left > 0:
        open_ = room > 0
        if not open_.any():
            break
        w = np.where(open_, weights, 0.0)
        if w.sum() <= 0:
            w = open_.astype(float)
        part = np.minimum(largest_remainder(left, w), room)
        if part.sum() == 0:
            break
        alloc += part
        room -= part
        left -= int(part.sum())
    return alloc


def _fill(quota, spare, idx, weights, amount):
    given = _capped_split(amount, weights, np.maximum(spare[idx], 0))
    quota[idx] += given
    return given


@dataclass
class Continuation:
    """Draw more tiles after an earlier sample (a build's replacement round): per-ecoregion ``quota`` instead of
    the strata, ``occupied`` tiles that new ones must not overlap, ``existing`` tiles per ecoregion (counted
    against its coverage cap), and counters that continue after ``first_index`` so ids stay unique."""

    quota: np.ndarray
    occupied: Tiles
    existing: np.ndarray
    first_index: np.ndarray
    stream: int


SAMPLE_BASE_BYTES = 300_000_000   # peak RSS of `sample` is ~260 MB + ~330 B per tile (measured at 20k, 200k, 2M)
SAMPLE_BYTES_PER_TILE = 450


def capacity(eco: Ecoregions, tile_size_m: float = 1280.0, max_coverage: float = 0.3) -> int:
    """How many non-overlapping tiles the ecoregions hold at ``max_coverage`` (each holds at least one)."""
    areas = eco.frame.to_crs(6933).area.to_numpy() / 1e6
    return int(np.maximum(np.floor(max_coverage * areas / (tile_size_m / 1000.0) ** 2), 1).sum())


def available_memory() -> int | None:
    """Bytes this machine can still give (``MemAvailable``), None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_size(eco: Ecoregions, size: int, tile_size_m: float = 1280.0, max_coverage: float = 0.3,
               what: str | None = None) -> None:
    """One line, before anything is allocated, for a size the ecoregions cannot hold or this machine cannot sample."""
    what = what or f"--size {size:,}"
    held = capacity(eco, tile_size_m, max_coverage)
    if size > held:
        raise MMEarthError(f"{what}: the ecoregions hold at most {held:,} non-overlapping "
                           f"{tile_size_m / 1000:g} km tiles at --max-coverage {max_coverage:g}")
    need, free = SAMPLE_BASE_BYTES + SAMPLE_BYTES_PER_TILE * size, available_memory()
    if free is not None and need > free:
        raise MMEarthError(f"{what}: sampling needs about {need / 1e9:.1f} GB of memory and this machine "
                           f"has {free / 1e9:.1f} GB available; sample fewer tiles (or on a larger machine)")


def sample(eco: Ecoregions, config: SamplerConfig, progress=None, more: Continuation | None = None) -> SampleResult:
    """Draw ``config.size`` non-overlapping, equal-area tile centres stratified by biome and ecoregion (or, with
    ``more``, the continuation's quotas from further streams of the same ecoregions)."""
    config.check()
    if more is None:
        check_size(eco, config.size, config.tile_size_m, config.max_coverage)
    frame = eco.frame
    n_eco = len(frame)
    biome = frame.biome.to_numpy()
    areas = frame.to_crs(6933).area.to_numpy() / 1e6  # km², EASE-Grid 2.0 equal-area
    tile_km2 = (config.tile_size_m / 1000.0) ** 2
    cap = np.maximum(np.floor(config.max_coverage * areas / tile_km2).astype(np.int64), 1)
    weights = within_weights(config.mode, areas).astype(float)
    if more is None:
        target = initial_quotas(config.size, config.mode, biome, areas)
    else:
        target = more.quota.astype(np.int64).copy()
        cap = np.maximum(cap - more.existing, 0)
    moves: list[dict] = []
    quota = _redistribute(target.copy(), cap, biome, weights, config.spill, moves, "capacity")

    eco_ids = frame.eco_id.to_numpy()
    geoms = frame.geometry.to_numpy()
    streams: dict[int, _Stream] = {}
    pool = ThreadPoolExecutor(config.threads) if config.threads > 1 else None

    def draw_for(e: int, n: int):
        if e not in streams:
            streams[e] = _Stream(config.seed, int(eco_ids[e]), geoms[e], *(
                (more.stream, int(more.first_index[e])) if more is not None else ()))
        return streams[e].draw(n)

    def draw_group(ecos: np.ndarray, counts: np.ndarray):
        results = [draw_for(int(e), int(n)) for e, n in zip(ecos, counts)]
        owner = np.repeat(ecos, [len(r[0]) for r in results])
        lon = np.concatenate([r[0] for r in results])
        lat = np.concatenate([r[1] for r in results])
        return (owner, np.concatenate([r[2] for r in results]), np.concatenate([r[3] for r in results]),
                Tiles(lon, lat))

    occ = Occupancy(config.tile_size_m, config.threads)
    if more is not None:
        occ.add(more.occupied)
    kept_parts: list[tuple[np.ndarray, np.ndarray, Tiles]] = []
    achieved = np.zeros(n_eco, dtype=np.int64)
    saturated = np.zeros(n_eco, dtype=bool)
    rounds_run = np.zeros(n_eco, dtype=np.int64)
    total_rounds = 0
    for _ in range(config.max_rounds * 4):  # hard bound: never loop forever
        need = np.where(saturated, 0, quota - achieved)
        active = np.flatnonzero(need > 0)
        if not len(active):
            stalled = saturated & (quota > achieved)
            if not stalled.any():
                break
            new_cap = np.where(saturated, achieved, cap)
            before = quota.copy()
            quota = _redistribute(quota, new_cap, biome, weights, config.spill, moves, f"stalled-round-{total_rounds}")
            cap = new_cap
            if np.array_equal(before, quota) or not (np.where(saturated, 0, quota - achieved) > 0).any():
                break
            continue
        total_rounds += 1
        ns = need[active]
        # contiguous groups of ecoregions per worker; each group draws and projects its points (pyproj,
        # shapely and large NumPy ops release the GIL); concatenating in group order keeps the result fixed
        groups = np.array_split(np.arange(len(active)), config.threads if len(active) >= 4 * config.threads else 1)
        parts = list(pool.map(draw_group, [active[g] for g in groups], [ns[g] for g in groups])) if pool \
            else [draw_group(active[g], ns[g]) for g in groups]
        owner = np.concatenate([p[0] for p in parts])
        prio = np.concatenate([p[1] for p in parts])
        didx = np.concatenate([p[2] for p in parts])
        cand = concat([p[3] for p in parts])
        free = ~occ.blocked(cand)
        pairs = internal_pairs(cand, config.tile_size_m)
        pairs = pairs[free[pairs[:, 0]] & free[pairs[:, 1]]]
        keep = greedy_keep(len(cand), pairs, prio) & free
        new = subset(cand, keep)
        occ.add(cand, keep)
        kept_parts.append((owner[keep], didx[keep], new))
        got = np.bincount(owner[keep], minlength=n_eco)
        achieved += got
        rounds_run[active] += 1
        rate = got[active] / ns
        stall = active[(rate < config.min_acceptance) | (rounds_run[active] >= config.max_rounds)]
        saturated[stall[achieved[stall] < quota[stall]]] = True
        if progress is not None:
            progress(int(achieved.sum()), int(quota.sum()))
        log.debug("round %d: %d candidates, %d kept", total_rounds, len(cand), int(keep.sum()))
    if pool:
        pool.shutdown()

    owner = np.concatenate([p[0] for p in kept_parts]) if kept_parts else np.zeros(0, np.int64)
    didx = np.concatenate([p[1] for p in kept_parts]) if kept_parts else np.zeros(0, np.int64)
    tiles = concat([p[2] for p in kept_parts]) if kept_parts else Tiles(np.zeros(0), np.zeros(0))
    order = np.lexsort((didx, eco_ids[owner]))
    saturated |= cap < target
    return SampleResult(eco=eco, config=config, eco_index=owner[order], draw_index=didx[order],
                        tiles=subset(tiles, order), target=target, final_quota=quota, achieved=achieved,
                        saturated=saturated, areas_km2=areas, moves=moves, rounds=total_rounds)
