"""Pack speed and memory: ours (Dask workers + libdeflate + write_direct_chunk) vs a plain h5py loop, one run.

    python benchmarks/bench_pack.py [--tiles 2000] [--workers 2] [--dir DIR]

Staging with ``--tiles`` synthetic 128 px tiles (all v001 datasets) is written first (``mmearth_data.sample_data``
tiles committed through the real staging store). Baseline: one thread reads each staged tile and writes it with
h5py, one tile per chunk, gzip level 4 (the original's setting). Ours: ``pipelines.pack.pack``. Printed: tiles/s,
the ratio (target >= 8x on 2 cores), file sizes (target: within 10 % of the baseline), and peak RSS of the packing
process(es) for this tile count (run twice with different --tiles to see it does not grow with the dataset).
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmearth_data.catalog import load_spec  # noqa: E402
from mmearth_data.io_utils import atomic_write_json  # noqa: E402
from mmearth_data.sample_data import synthetic_tile  # noqa: E402
from pipelines.pack import PackConfig, pack  # noqa: E402
from pipelines.staging import TILE_DONE, PartitionStore  # noqa: E402
from results_table import write_results  # noqa: E402  (this folder is on sys.path when run as a script)


def write_staging(export_dir: Path, n: int, partition_size: int = 250) -> None:
    rng = np.random.default_rng(0)
    parts = -(-n // partition_size)
    for p in range(parts):
        with PartitionStore(export_dir / "staging" / f"part-{p:05d}.sqlite") as st:
            for i in range(p * partition_size, min(n, (p + 1) * partition_size)):
                arrays, info = synthetic_tile(rng, str(i), 128)
                st.commit_tile(str(i), i, TILE_DONE, info, [], arrays)
    atomic_write_json(export_dir / "export.json", {
        "config_hash": "bench", "tiles": n, "partitions": parts,
        "identity": {"backend": "bench"}, "config": {"tile_px": 128}})


def baseline(export_dir: Path, out: Path) -> float:
    spec = load_spec()
    t0 = time.perf_counter()
    with h5py.File(out, "w") as f:
        dsets = {}
        row = 0
        for part in sorted((export_dir / "staging").glob("part-*.sqlite")):
            with PartitionStore(part, readonly=True) as st:
                ids = [t for (t,) in st.db.execute("SELECT tile_id FROM tiles ORDER BY row")]
                for tid in ids:
                    arrays = st.arrays(tid)
                    for name, ds in spec.datasets.items():
                        if name not in dsets:
                            shape = ds.tile_shape(128)
                            dsets[name] = f.create_dataset(name, shape=(0, *shape), maxshape=(None, *shape),
                                                           dtype=ds.dtype, chunks=(1, *shape), compression="gzip",
                                                           compression_opts=4)
                        d = dsets[name]
                        d.resize(row + 1, axis=0)
                        d[row] = arrays[name]
                    row += 1
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiles", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--dir", type=Path)
    ap.add_argument("--skip-baseline", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.dir or Path(tmp)
        export_dir = work / f"export-{args.tiles}"
        if not (export_dir / "export.json").exists():
            t0 = time.perf_counter()
            write_staging(export_dir, args.tiles)
            print(f"staged {args.tiles} synthetic tiles in {time.perf_counter() - t0:.0f} s")
        out = work / f"ours-{time.time_ns()}"
        t0 = time.perf_counter()
        h5 = pack(PackConfig(str(export_dir), str(out), "bench"), workers=args.workers)
        ours = time.perf_counter() - t0
        rss_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        rss_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"ours: {args.tiles / ours:.1f} tiles/s ({ours:.1f} s, {args.workers} workers), "
              f"{h5.stat().st_size / 1e6:.0f} MB; peak RSS writer {rss_self:.0f} MB, worker {rss_children:.0f} MB")
        if args.skip_baseline:
            return
        base_path = work / f"baseline-{time.time_ns()}.h5"
        base = baseline(export_dir, base_path)
        print(f"baseline (h5py loop, gzip 4, 1 thread): {args.tiles / base:.1f} tiles/s ({base:.1f} s), "
              f"{base_path.stat().st_size / 1e6:.0f} MB")
        print(f"ratio ours/baseline: {base / ours:.1f}x  (target >= 8x); size ours/baseline: "
              f"{h5.stat().st_size / base_path.stat().st_size:.2f}  (target within 1.10)")
        print(json.dumps({"tiles": args.tiles, "ours_s": round(ours, 1), "baseline_s": round(base, 1)}))
        write_results("bench_pack", f"Pack: {args.tiles} staged synthetic tiles", ("arm", "tiles/s", "seconds", "MB"),
                      [("baseline: h5py loop, gzip 4, 1 thread", f"{args.tiles / base:.1f}", f"{base:.1f}",
                        f"{base_path.stat().st_size / 1e6:.0f}"),
                       (f"ours: `pack`, {args.workers} workers", f"{args.tiles / ours:.1f}", f"{ours:.1f}",
                        f"{h5.stat().st_size / 1e6:.0f}"),
                       ("ratio ours / baseline", f"{base / ours:.1f}x", "",
                        f"{h5.stat().st_size / base_path.stat().st_size:.2f}")],
                      ["Targets: >= 8x the baseline's rate, size within 1.10 of it. "
                       f"Peak RSS: writer {rss_self:.0f} MB, worker {rss_children:.0f} MB."])


if __name__ == "__main__":
    main()
