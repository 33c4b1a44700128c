"""Sampler speed: geopandas.GeoSeries.sample_points vs ours, same per-ecoregion counts, one process.

    python benchmarks/bench_sampler.py [--size 1.5M] [--mode area]

Ours: load the bundled ecoregions, compute quotas, draw equal-area points, enforce non-overlapping UTM tiles,
move saturated quotas, and write the GeoParquet (end to end, as `mmearth-data sample` does). Baseline:
``sample_points`` with the per-ecoregion counts ours achieved (uniform in degrees, no overlap check, no output).
Targets: <= 12 s end to end and >= 5x faster than the baseline; peak memory < 4 GB.
"""
from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

from mmearth_data.sizes import parse_size
from results_table import write_results
from sampling import SamplerConfig, load_ecoregions, sample, write_locations


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1.5M")
    ap.add_argument("--mode", default="area")
    ap.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1), help="as `mmearth-data sample`")
    args = ap.parse_args()
    size = parse_size(args.size)

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        eco = load_ecoregions()
        result = sample(eco, SamplerConfig(size=size, mode=args.mode, threads=args.threads))
        write_locations(result, Path(tmp) / "locations.parquet")
        ours = time.perf_counter() - t0
    ours_peak = peak_rss_gb()

    counts = result.achieved
    t0 = time.perf_counter()
    base_points = eco.frame.geometry.sample_points(size=counts, rng=0)
    base = time.perf_counter() - t0
    n_base = int(base_points.count_coordinates().sum()) if hasattr(base_points, "count_coordinates") else int(counts.sum())

    print(f"{size} locations, mode {args.mode}, bundled simplified RESOLVE polygons, {args.threads} thread(s)")
    print(f"baseline geopandas sample_points : {base:7.2f} s for {n_base} points (uniform in degrees, overlaps allowed)")
    print(f"ours (end to end, GeoParquet)    : {ours:7.2f} s for {len(result.tiles)} equal-area, non-overlapping tiles")
    print(f"ratio baseline / ours = {base / ours:.1f}x (target >= 5x); ours <= 12 s: {ours <= 12}")
    print(f"peak RSS after ours: {ours_peak:.2f} GB (target < 4 GB)")
    write_results("bench_sampler", f"Sampler: {size} locations, mode {args.mode}, {args.threads} thread(s)",
                  ("arm", "seconds", "points", "note"),
                  [("baseline: geopandas `sample_points`", f"{base:.2f}", n_base,
                    "uniform in degrees, overlaps allowed, no output"),
                   ("ours: `sample` end to end, GeoParquet", f"{ours:.2f}", len(result.tiles),
                    "equal-area, non-overlapping tiles"),
                   ("ratio baseline / ours", f"{base / ours:.1f}x", "", "target >= 5x, ours <= 12 s"),
                   ("peak RSS after ours", f"{ours_peak:.2f} GB", "", "target < 4 GB")])


if __name__ == "__main__":
    main()
