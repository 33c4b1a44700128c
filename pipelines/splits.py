"""Train/val/test splits that are seeded, stratified by biome and spatially blocked.

The original shuffled all tiles into train without a seed. Here whole blocks of ``block_deg`` x ``block_deg``
degrees go to one split, so a validation tile never has a training tile from the same block next door; blocks
are dealt per biome (a block's biome is that of most of its tiles) so each split sees every biome in proportion.
``fractions == (1, 0, 0)`` reproduces the v001 layout exactly: every row in train, in seeded shuffled order.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np

from mmearth_data.errors import MMEarthError
from mmearth_data.writer import default_splits

NAMES = ("train", "val", "test")


def parse_fractions(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or not all(0 <= p <= 1 for p in parts) or not abs(sum(parts) - 1) <= 1e-6:   # NaN fails
        raise MMEarthError(f"--splits {text!r}: give three fractions train,val,test that sum to 1, e.g. 0.9,0.05,0.05")
    return parts  # type: ignore[return-value]


def spatial_splits(lon: Sequence[float], lat: Sequence[float], biome: Sequence[int],
                   fractions: Sequence[float] = (1.0, 0.0, 0.0), seed: int = 0,
                   block_deg: float = 1.0) -> dict[str, list[int]]:
    n = len(lon)
    if fractions[0] == 1.0:
        return default_splits(n, seed)
    rng = np.random.default_rng([seed, 7])
    bx = np.floor(np.asarray(lon, dtype=np.float64) / block_deg).astype(np.int64)
    by = np.floor(np.asarray(lat, dtype=np.float64) / block_deg).astype(np.int64)
    blocks: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, key in enumerate(zip(bx.tolist(), by.tolist())):
        blocks[key].append(i)
    strata: dict[int, list[tuple[int, int]]] = defaultdict(list)
    biome = np.asarray(biome)
    for key in sorted(blocks):
        counts = Counter(biome[blocks[key]].tolist())
        strata[min(counts, key=lambda b: (-counts[b], b))].append(key)
    # deal blocks round-robin over the strata (each stratum's blocks in seeded random order); a block goes to the
    # split furthest below its share, counting both the block's stratum and the whole dataset, so small or
    # widely spread datasets still reach the global fractions
    fr = np.asarray(fractions, dtype=np.float64)
    queues = {b: [strata[b][k] for k in rng.permutation(len(strata[b]))] for b in sorted(strata)}
    size = {b: sum(len(blocks[k]) for k in keys) for b, keys in queues.items()}
    have_s = {b: np.zeros(3) for b in queues}
    have_g = np.zeros(3)
    out: dict[str, list[int]] = {name: [] for name in NAMES}
    while any(queues.values()):
        for b in sorted(queues):
            if not queues[b]:
                continue
            key = queues[b].pop(0)
            rows = blocks[key]
            score = (fr * size[b] - have_s[b]) + (fr * n - have_g)
            score[fr == 0] = -np.inf
            split = int(np.argmax(score))
            out[NAMES[split]].extend(rows)
            have_s[b][split] += len(rows)
            have_g[split] += len(rows)
    return {name: [int(i) for i in rng.permutation(np.asarray(rows, dtype=np.int64))] for name, rows in out.items()}
