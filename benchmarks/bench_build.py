"""The first command people run: synthetic export speed, ours (assets written when first read) vs the eager
baseline (every source scene of a location written as COGs up front, as before), side by side in one process;
then, optionally, the README's main job end to end.

    python benchmarks/bench_build.py [--tiles 120] [--workers 2] [--full-build 1k]

Both arms export the same sampled locations through the same recipes and the same rasterio read path
(`--backend synthetic`; the baseline sets ``keep_sources``, which generates every asset of a location eagerly and
keeps it). Printed: seconds, tiles/s and the ratio (ours / baseline speed). ``--full-build N`` also runs
``mmearth-data build --size N --backend synthetic`` and prints its wall time against the issue's goal
(1000 tiles in <= 180 s on 2 cores).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.export import ExportConfig, run_export  # noqa: E402
from results_table import write_results  # noqa: E402  (this folder is on sys.path when run as a script)
from sampling import SamplerConfig, load_ecoregions, sample, write_locations  # noqa: E402

GOAL_S = 180.0


def export_seconds(locations: Path, out: Path, eager: bool, workers: int) -> tuple[float, dict]:
    cfg = ExportConfig.of(locations=str(locations), out=str(out), backend="synthetic", partition_size=30,
                       keep_sources=eager)
    t0 = time.perf_counter()
    summary = run_export(cfg, scheduler="processes" if workers > 1 else "threads", workers=workers)
    return time.perf_counter() - t0, summary


def staged_digests(export_dir: Path) -> dict:
    from pipelines.staging import PartitionStore

    out = {}
    for p in sorted((export_dir / "staging").glob("part-*.sqlite")):
        with PartitionStore(p, readonly=True) as st:
            out.update({(r["tile_id"], r["modality"]): r["sha256"] for r in st.ledger()})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiles", type=int, default=120)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--full-build", help="Also time `mmearth-data build --size N` (e.g. 1k).")
    ap.add_argument("--dir", type=Path)
    args = ap.parse_args()
    work = args.dir or Path(tempfile.mkdtemp(prefix="bench_build_"))
    work.mkdir(parents=True, exist_ok=True)
    locations = work / "locations.parquet"
    write_locations(sample(load_ecoregions(None), SamplerConfig(size=args.tiles, seed=3)), locations)

    base_s, base = export_seconds(locations, work / "eager", eager=True, workers=args.workers)
    ours_s, ours = export_seconds(locations, work / "lazy", eager=False, workers=args.workers)
    assert base["by_status"] == ours["by_status"], (base["by_status"], ours["by_status"])
    assert staged_digests(work / "eager") == staged_digests(work / "lazy"), "the two arms staged different data"
    n = ours["tiles"]
    print(f"synthetic export of {n} locations, {args.workers} workers ({ours['by_status']})")
    print(f"  baseline (every asset written up front): {base_s:7.1f} s  {n / base_s:6.2f} tiles/s")
    print(f"  ours (assets written when first read):   {ours_s:7.1f} s  {n / ours_s:6.2f} tiles/s")
    print(f"  ratio: {base_s / ours_s:.2f}x faster")
    rows = [("baseline: every synthetic asset written up front", f"{base_s:.1f}", f"{n / base_s:.2f}"),
            ("ours: assets written when first read", f"{ours_s:.1f}", f"{n / ours_s:.2f}"),
            ("ratio", f"{base_s / ours_s:.2f}x faster", "")]

    if args.full_build:
        out = work / "full"
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "mmearth_data.cli", "build", "--size", args.full_build,
                               "--backend", "synthetic", "--out", str(out), "--workers", str(args.workers)],
                              capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode:
            sys.exit(proc.stdout[-2000:] + proc.stderr[-2000:])
        print(proc.stdout.strip().splitlines()[-1])
        print(f"  build --size {args.full_build}: {wall:.1f} s wall (goal for 1k: <= {GOAL_S:.0f} s; "
              f"{wall / GOAL_S:.2f} of it)")
        rows.append((f"`build --size {args.full_build} --backend synthetic`", f"{wall:.1f}", ""))
    write_results("bench_build", f"Synthetic export of {n} locations, {args.workers} workers",
                  ("arm", "seconds", "tiles/s"), rows,
                  [f"Both arms stage the same bytes (checked). Goal for `build --size 1k`: <= {GOAL_S:.0f} s."])


if __name__ == "__main__":
    main()
