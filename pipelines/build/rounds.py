"""Exactly N: the tally of every export round per ecoregion, the replacements drawn for what was dropped, the
tiles kept, and the build report."""
from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmearth_data.io_utils import atomic_write_json

from .config import BuildConfig


MAX_ROUNDS = 12          # replacement rounds before the build reports a shortfall
MIN_SUCCESS = 0.25       # floor of the observed success rate used to size a replacement round


@dataclass
class Tally:
    """Per ecoregion (RESOLVE ECO_ID) over all rounds: what was drawn, dropped (by reason) and done."""

    biome: dict[int, int] = field(default_factory=dict)
    sampled: Counter = field(default_factory=Counter)
    replacements: Counter = field(default_factory=Counter)
    dropped: dict[int, Counter] = field(default_factory=lambda: defaultdict(Counter))
    done: dict[int, list[str]] = field(default_factory=lambda: defaultdict(list))   # tile ids in row order
    replacement_ids: set[str] = field(default_factory=set)
    failed: Counter = field(default_factory=Counter)   # reason -> tiles
    exported: int = 0


def _round_paths(work: Path, r: int) -> tuple[Path, Path]:
    return (work / ("locations.parquet" if r == 0 else f"locations-r{r}.parquet"),
            work / ("export" if r == 0 else f"export-r{r}"))


def _read_round(locations: Path, export_dir: Path, r: int, tally: Tally) -> dict:
    """Add one exported round to ``tally``; returns its locations (for the occupancy of the next round)."""
    import pyarrow.parquet as pq

    from ..staging import TILE_DONE, PartitionStore

    table = pq.read_table(locations, columns=["tile_id", "lon", "lat", "eco_id", "biome"]).to_pydict()
    status: dict[str, tuple[str, str]] = {}
    for p in sorted((export_dir / "staging").glob("part-*.sqlite")):
        with PartitionStore(p, readonly=True) as store:
            reasons = store.failed_reasons()
            for tid, _, st, _ in store.tiles_in_order():
                status[tid] = (st, reasons.get(tid, st) if st == "failed" else st)
    for tid, eco, b in zip(table["tile_id"], table["eco_id"], table["biome"]):
        tally.biome[int(eco)] = int(b)
        (tally.sampled if r == 0 else tally.replacements)[int(eco)] += 1
        st, reason = status.get(tid, ("pending", "pending"))
        if st == TILE_DONE:
            tally.done[int(eco)].append(tid)
            if r:
                tally.replacement_ids.add(tid)
        else:
            tally.dropped[int(eco)][st] += 1
            if st == "failed":
                tally.failed[reason] += 1
    tally.exported += len(table["tile_id"])
    return table


def _targets(cfg: BuildConfig, tally: Tally) -> dict[int, int]:
    """Tiles wanted per ecoregion: the sampled strata, scaled to ``--size`` when ``--oversample`` drew more."""
    from sampling.quotas import largest_remainder

    ecos = sorted(tally.sampled)
    counts = np.array([tally.sampled[e] for e in ecos], dtype=float)
    total = int(counts.sum())
    if total == cfg.size:
        return {e: int(c) for e, c in zip(ecos, counts)}
    want = largest_remainder(cfg.size, counts) if total else np.zeros(0, np.int64)
    return {e: int(q) for e, q in zip(ecos, want)}


def _exhausted_path(locations: Path) -> Path:
    return locations.with_name(locations.stem + ".exhausted.json")


def _replacements(cfg: BuildConfig, eco, r: int, need: dict[int, int], drawn: list[dict], success: float,
                  path: Path) -> int:
    """Draw round ``r``'s replacement locations (written atomically to ``path``, after the ecoregions that ran
    out of room, so a resumed build knows them too); returns how many."""
    from sampling import SamplerConfig, write_locations
    from sampling.sampler import Continuation, sample
    from sampling.spacing import Tiles

    frame = eco.frame
    row_of = {int(e): i for i, e in enumerate(frame.eco_id.to_numpy())}
    from sampling.quotas import largest_remainder

    quota = np.zeros(len(frame), dtype=np.int64)
    ecos = sorted(need)
    missing = np.array([need[e] for e in ecos], dtype=np.int64)
    # ask for more than is missing, as many as the observed success rate says will be dropped again; the extra
    # is shared in proportion to what each ecoregion misses (a per-ecoregion ceil would double the 1s)
    extra = int(math.ceil(missing.sum() / max(success, MIN_SUCCESS))) - int(missing.sum())
    for e, n in zip(ecos, missing + largest_remainder(max(extra, 0), missing.astype(float))):
        quota[row_of[e]] = int(n)
    lon = np.concatenate([np.asarray(d["lon"], float) for d in drawn])
    lat = np.concatenate([np.asarray(d["lat"], float) for d in drawn])
    existing = np.zeros(len(frame), dtype=np.int64)
    first = np.zeros(len(frame), dtype=np.int64)
    for d in drawn:
        for tid, e in zip(d["tile_id"], d["eco_id"]):
            i = row_of[int(e)]
            existing[i] += 1
            first[i] = max(first[i], int(tid.rsplit("_", 1)[1]) + 1)
    scfg = SamplerConfig(size=int(quota.sum()), mode=cfg.mode, seed=cfg.seed)
    result = sample(eco, scfg, more=Continuation(quota, Tiles(lon, lat), existing, first, stream=r))
    if len(result.tiles):
        full = frame.eco_id.to_numpy()[result.saturated & (quota > 0)]
        atomic_write_json(_exhausted_path(path), sorted(int(e) for e in full))
        write_locations(result, path)
    return len(result.tiles)


def _select(targets: dict[int, int], tally: Tally) -> tuple[list[str], dict[int, int]]:
    """The tiles packed: per ecoregion its first ``target`` done tiles in row order; the shortfall of an
    ecoregion that has too few is filled from the spare done tiles of its biome, then of any biome (the
    sampler's saturation policy). Returns the ids and the count per ecoregion."""
    keep = {e: tally.done.get(e, [])[:t] for e, t in targets.items()}
    spare = [(e, tid) for e in sorted(tally.done) for tid in tally.done[e][targets.get(e, 0):]]
    short: Counter = Counter()
    for e, t in targets.items():
        short[tally.biome[e]] += t - len(keep[e])
    for same_biome in (True, False):
        rest = []
        for e, tid in spare:
            b = tally.biome[e] if same_biome else next((k for k, v in sorted(short.items()) if v > 0), None)
            if b is not None and short[b] > 0:
                keep.setdefault(e, []).append(tid)
                short[b] -= 1
            else:
                rest.append((e, tid))
        spare = rest
    return [t for e in sorted(keep) for t in keep[e]], {e: len(v) for e, v in keep.items() if v}


def build_report(cfg: BuildConfig, targets: dict[int, int], keep: list[str], final: dict[int, int], tally: Tally,
                 rounds: int) -> dict:
    from mmearth_data.catalog import biome_table

    names = {b["index"]: b["name"] for b in biome_table()}
    ecos = sorted(set(targets) | set(tally.sampled) | set(tally.replacements))
    replaced = Counter(int(t.rsplit("_", 1)[0]) for t in keep if t in tally.replacement_ids)
    rows = []
    for e in ecos:
        rows.append({"eco_id": e, "biome": tally.biome[e], "target": targets.get(e, 0),
                     "sampled": tally.sampled.get(e, 0), "dropped": dict(sorted(tally.dropped.get(e, Counter()).items())),
                     "replacements_drawn": tally.replacements.get(e, 0), "replaced": replaced.get(e, 0),
                     "final": final.get(e, 0)})
    biomes = []
    for b in sorted({r["biome"] for r in rows}):
        sel = [r for r in rows if r["biome"] == b]
        dropped: Counter = Counter()
        for r in sel:
            dropped.update(r["dropped"])
        biomes.append({"biome": b, "name": names.get(b, str(b)), "ecoregions": len(sel),
                       **{k: sum(r[k] for r in sel) for k in ("target", "sampled", "replacements_drawn", "replaced",
                                                              "final")},
                       "dropped": dict(sorted(dropped.items()))})
    return {"requested": cfg.size, "final": sum(final.values()), "rounds": rounds, "exported": tally.exported,
            "failed_by_reason": dict(sorted(tally.failed.items())), "config_hash": cfg.hash(),
            "biomes": biomes, "ecoregions": rows}


def format_report(rep: dict) -> str:
    lines = [f"{'biome':<48} {'target':>7} {'sampled':>8} {'dropped':>8} {'replaced':>9} {'final':>7}"]
    for b in rep["biomes"]:
        lines.append(f"{b['biome']:>2} {b['name'][:45]:<45} {b['target']:>7} {b['sampled']:>8} "
                     f"{sum(b['dropped'].values()):>8} {b['replaced']:>9} {b['final']:>7}")
    return "\n".join(lines)
