"""Exact integer quotas: how many tiles each biome and ecoregion should get (MMEarth's three modes)."""
from __future__ import annotations

import numpy as np

from mmearth_data.errors import MMEarthError

MODES = ("area", "ecoregion-in-biome", "ecoregion")


def largest_remainder(total: int, weights: np.ndarray) -> np.ndarray:
    """Split ``total`` into integers proportional to ``weights`` that sum exactly to ``total``.

    Ties in the remainders go to the lower index, so the split is deterministic."""
    weights = np.asarray(weights, dtype=np.float64)
    out = np.zeros(len(weights), dtype=np.int64)
    if total <= 0 or len(weights) == 0 or weights.sum() <= 0:
        return out
    raw = total * weights / weights.sum()
    out = np.floor(raw).astype(np.int64)
    rest = total - int(out.sum())
    if rest:
        order = np.lexsort((np.arange(len(raw)), -(raw - out)))
        out[order[:rest]] += 1
    return out


def within_weights(mode: str, areas: np.ndarray) -> np.ndarray:
    """How a biome's quota is split among its ecoregions: by area (``area``) or equally."""
    return areas if mode == "area" else np.ones_like(areas)


def initial_quotas(size: int, mode: str, biome: np.ndarray, areas: np.ndarray) -> np.ndarray:
    """Per-ecoregion quota summing to ``size``.

    ``area``: each biome gets size/14, split among its ecoregions by area (MMEarth's default, uniform_type 0);
    ``ecoregion-in-biome``: size/14 per biome, equal per ecoregion (1); ``ecoregion``: size/846 each (2).
    """
    if mode not in MODES:
        raise MMEarthError(f"--mode {mode!r}: unknown; choose one of {', '.join(MODES)}")
    if size <= 0:
        raise MMEarthError(f"--size {size}: must be at least 1")
    quota = np.zeros(len(biome), dtype=np.int64)
    if mode == "ecoregion":
        return largest_remainder(size, np.ones(len(biome)))
    biomes = np.unique(biome)
    per_biome = largest_remainder(size, np.ones(len(biomes)))
    for b, q in zip(biomes, per_biome):
        idx = np.flatnonzero(biome == b)
        quota[idx] = largest_remainder(int(q), within_weights(mode, areas[idx]))
    return quota
