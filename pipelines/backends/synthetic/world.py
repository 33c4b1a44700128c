"""A deterministic synthetic Earth: continuous fields of (lon, lat) that every synthetic source samples.

Because each field is a function of position (hashed lattice value noise, seeded by the global seed), sources
written on different grids and CRSs agree where they overlap, exactly like real products of one landscape:
terrain gives slope, land cover follows biome and terrain, spectra/backscatter/canopy follow land cover (spectra
also vary by region), and clouds are a per-acquisition field. Nothing here is real data.
"""
from __future__ import annotations

import math

import numpy as np

# Dynamic World order: water, trees, grass, flooded_vegetation, crops, shrub_and_scrub, built, bare, snow_and_ice.
# Class shares per MMEarth biome index (0 Tundra ... 13 Tropical coniferous, catalogs/labels/biomes.csv).
BIOME_COVER = np.array([
    [.08, .02, .35, .05, .00, .25, .00, .15, .10],   # tundra
    [.03, .75, .05, .02, .08, .03, .02, .02, .00],   # tropical moist broadleaf
    [.02, .25, .15, .00, .20, .28, .05, .05, .00],   # mediterranean
    [.01, .01, .05, .00, .03, .20, .01, .69, .00],   # deserts and xeric shrublands
    [.02, .05, .50, .02, .30, .07, .02, .02, .00],   # temperate grasslands
    [.08, .65, .08, .05, .02, .07, .01, .03, .01],   # boreal
    [.03, .60, .12, .01, .08, .10, .02, .04, .00],   # temperate conifer
    [.03, .45, .12, .01, .28, .05, .05, .01, .00],   # temperate broadleaf and mixed
    [.02, .05, .50, .02, .05, .20, .01, .12, .03],   # montane grasslands
    [.30, .40, .02, .25, .01, .01, .01, .00, .00],   # mangroves
    [.15, .05, .30, .40, .05, .03, .01, .01, .00],   # flooded grasslands
    [.02, .15, .45, .02, .10, .22, .02, .02, .00],   # tropical grasslands and savannas
    [.02, .45, .12, .00, .18, .18, .03, .02, .00],   # tropical dry broadleaf
    [.02, .65, .10, .00, .08, .10, .02, .03, .00],   # tropical coniferous
])
# (base elevation m, relief m) per biome
BIOME_TERRAIN = np.array([[300, 400], [300, 600], [400, 800], [500, 500], [400, 300], [300, 300], [900, 1200],
                          [300, 500], [3200, 1000], [2, 6], [50, 20], [600, 400], [400, 500], [1200, 900]],
                         dtype=np.float64)
# cover classes ordered from low ground to high ground: the order in which terrain-ranked noise assigns them
TERRAIN_ORDER = np.array([0, 3, 4, 6, 2, 1, 5, 7, 8])


def _hash01(i: np.ndarray, j: np.ndarray, salt: int) -> np.ndarray:
    """Uniform [0, 1) per integer lattice point (splitmix64 finaliser of a mixed key)."""
    with np.errstate(over="ignore"):
        z = (i.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) ^ (j.astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F))
        z ^= np.uint64(salt & 0xFFFFFFFFFFFFFFFF)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def value_noise(lon: np.ndarray, lat: np.ndarray, scale_deg: float, salt: int) -> np.ndarray:
    """Smooth noise in [0, 1] with features about ``scale_deg`` wide (smoothstep-interpolated lattice values)."""
    x, y = np.asarray(lon, np.float64) / scale_deg, np.asarray(lat, np.float64) / scale_deg
    x0, y0 = np.floor(x), np.floor(y)
    tx, ty = x - x0, y - y0
    tx, ty = tx * tx * (3 - 2 * tx), ty * ty * (3 - 2 * ty)
    i, j = x0.astype(np.int64), y0.astype(np.int64)
    # hash only the lattice points the pixels fall between (a handful), then gather: same values, far fewer hashes
    i_min, j_min = int(i.min()), int(j.min())
    gi, gj = np.meshgrid(np.arange(i_min, int(i.max()) + 2), np.arange(j_min, int(j.max()) + 2), indexing="ij")
    lattice = _hash01(gi, gj, salt)
    flat, w = lattice.ravel(), lattice.shape[1]
    k = (i - i_min) * w + (j - j_min)
    a, b, c, d = flat[k], flat[k + w], flat[k + 1], flat[k + w + 1]
    return (a + (b - a) * tx) * (1 - ty) + (c + (d - c) * tx) * ty


def fbm(lon, lat, scale_deg: float, salt: int, octaves: int = 3) -> np.ndarray:
    total, norm, amp = 0.0, 0.0, 1.0
    for o in range(octaves):
        total = total + amp * value_noise(lon, lat, scale_deg / 2 ** o, salt + 7919 * o)
        norm += amp
        amp *= 0.5
    return total / norm


def _to_uniform(v: np.ndarray, sd: float) -> np.ndarray:
    """Approximately uniform [0, 1] from bell-shaped noise centred on 0.5 (normal CDF)."""
    return 0.5 * (1 + _erf((np.asarray(v) - 0.5) / (sd * math.sqrt(2))))


def _erf(x: np.ndarray) -> np.ndarray:
    # Abramowitz-Stegun 7.1.26, |error| < 1.5e-7: plenty for class thresholds
    s = np.sign(x)
    x = np.abs(x)
    t = 1 / (1 + 0.3275911 * x)
    y = 1 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * np.exp(-x * x)
    return s * y


class World:
    """The landscape around one location (its biome sets the cover mix and terrain), seeded globally."""

    def __init__(self, seed: int, biome: int):
        self.salt = int(seed) * 1_000_003 + 17
        self.biome = int(biome)
        self.base, self.relief = BIOME_TERRAIN[self.biome]
        self.cum = np.cumsum(BIOME_COVER[self.biome][TERRAIN_ORDER])
        self.cum /= self.cum[-1]

    def elevation(self, lon, lat) -> np.ndarray:
        broad = fbm(lon, lat, 0.05, self.salt + 1, 2)
        local = fbm(lon, lat, 0.006, self.salt + 2, 3)
        return (self.base + self.relief * (0.7 * broad + 0.3 * local) ** 1.5).astype(np.float32)

    def cover(self, lon, lat) -> np.ndarray:
        """Dynamic World class 0..8: noise ranked together with terrain picks from the biome's class shares."""
        terrain = fbm(lon, lat, 0.05, self.salt + 1, 2) * 0.7 + fbm(lon, lat, 0.006, self.salt + 2, 3) * 0.3
        u = _to_uniform(0.55 * fbm(lon, lat, 0.004, self.salt + 3, 3) + 0.45 * terrain, 0.11)
        k = np.searchsorted(self.cum, np.clip(u, 0, 1 - 1e-12), side="right")
        return TERRAIN_ORDER[np.minimum(k, len(TERRAIN_ORDER) - 1)]

    def canopy(self, lon, lat, cover: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        height = np.where(cover == 1, 6 + 28 * fbm(lon, lat, 0.002, self.salt + 4, 2), 0.0)
        return height.astype(np.float32), np.where(cover == 1, 2 + height / 6, 0.0).astype(np.float32)

    def clouds(self, lon, lat, acquisition_salt: int) -> np.ndarray:
        """Cloud density in [0, 1]; an acquisition's cloud fraction is set by thresholding it."""
        return fbm(lon, lat, 0.006, self.salt + acquisition_salt, 3)


def era5_month(lat: np.ndarray, lon: np.ndarray, year: int, month: int, seed: int) -> np.ndarray:
    """Monthly ERA5-Land-like climate (K, K, K, m): warmer at the equator, seasons flip across it."""
    season = np.cos(2 * math.pi * (month - 7) / 12) * np.sign(lat)
    amp = 0.35 * np.abs(lat)
    wobble = 1.5 * (value_noise(lon + year * 37.0, lat + month * 11.0, 20.0, seed + 99) - 0.5)
    t = 300.0 - 0.45 * np.abs(lat) + amp * season * 0.5 + wobble
    spread = 4.0 + 0.12 * np.abs(lat)
    wet = 1 + 0.6 * np.cos(2 * math.pi * (month - 7) / 12) * np.sign(lat)   # a wet summer, a dry winter
    precip = (0.01 + 0.25 * np.exp(-(lat / 15.0) ** 2) + 0.02 * value_noise(lon, lat + year, 15.0, seed + 5)) * wet
    return np.stack([t, t - spread, t + spread, precip]).astype(np.float32)
