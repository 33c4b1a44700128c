"""Does MMEarth64 pretraining learn what a random encoder does not? The published MMEarth64 setting end to end, at
full size, over several seeds: ``build --tile-px 64`` on the synthetic backend, ``pretrain`` atto at
``--input-size 56`` (8 px patches), then ``probe`` the checkpoint on the tiles' Dynamic World majority class against
the same probe on a randomly initialised encoder of the same seed.

    python benchmarks/bench_pretrain.py [--size 600] [--epochs 10] [--batch-size 16] [--base-lr 0.02]
                                        [--seeds 0,1,2] [--work DIR]

On the synthetic world a class's spectrum varies by region, so a tile's land cover is not a linear function of its
mean spectrum (which a random encoder's pooled features read off): the pretrained features must carry more.
Target, for every seed: pretrained accuracy at least the random-init accuracy + 0.04 (about 10 of the 240 val+test
tiles of a 600-tile build) and a better macro-F1; the exit status is 1 when a seed misses it.
tests/mmearth_data/test_pretrain.py runs the same chain at a size a test can afford.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results_table import write_results  # this folder is on sys.path when run as a script

ROOT = Path(__file__).resolve().parents[1]
MARGIN = 0.04
# the threads a 2-core machine trains with: importing dask.distributed in a parent sets OMP_NUM_THREADS=1
THREADS = {k: str(min(2, os.cpu_count() or 1)) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}


def cli(*args: object) -> tuple[str, float]:
    """Run ``mmearth-data`` as a user does; (stdout, wall seconds). A failure ends the benchmark with its stderr."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mmearth_data.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **THREADS})
    if proc.returncode:
        sys.exit(f"mmearth-data {args[0]} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc.stdout, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=600, help="tiles of the build (splits 0.6/0.2/0.2)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--base-lr", type=float, default=0.02)
    ap.add_argument("--seeds", default="0,1,2", help="pretrain and probe seeds, one run each")
    ap.add_argument("--work", type=Path, help="keep the build and runs here (default: a temporary directory)")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench_pretrain_") as tmp:
        work = args.work or Path(tmp)
        data = work / f"b{args.size}"
        _, build_s = cli("build", "--size", args.size, "--tile-px", "64", "--splits", "0.6,0.2,0.2", "--out", data,
                         "--resume")
        rows, missed = [], []
        for seed in seeds:
            run = work / f"run_seed{seed}"
            out, train_s = cli("pretrain", "--data", data, "--input-size", "56", "--batch-size", args.batch_size,
                               "--epochs", args.epochs, "--base-lr", args.base_lr, "--seed", seed, "--out", run)
            steps = next((line.split(" of ")[0] for line in out.splitlines() if line.startswith("schedule:")), "")
            report = run / "probe.json"
            _, probe_s = cli("probe", "--data", data, "--checkpoint", run / "checkpoint.pt", "--task",
                             "dynamic_world_majority", "--seed", seed, "--report", report)
            rep = json.loads(report.read_text())
            pre, rnd = rep["pretrained"][-1], rep["random_init"][-1]
            gain = pre["accuracy"] - rnd["accuracy"]
            if gain < MARGIN or pre["macro_f1"] <= rnd["macro_f1"]:
                missed.append(seed)
            rows.append((seed, rep["eval_tiles"], f"{pre['accuracy']:.3f}", f"{rnd['accuracy']:.3f}", f"{gain:+.3f}",
                         f"{pre['macro_f1']:.3f}", f"{rnd['macro_f1']:.3f}", f"{train_s:.0f}", f"{probe_s:.0f}"))
            print(*rows[-1], steps, flush=True)
    path = write_results(
        "bench_pretrain", f"MMEarth64 pretraining vs a random encoder: {args.size}-tile build, atto at 56 px, "
        f"{args.epochs} epochs of batch {args.batch_size}",
        ("seed", "eval tiles", "pretrained acc", "random-init acc", "gain", "pretrained macro-F1",
         "random-init macro-F1", "pretrain s", "probe s"), rows,
        [f"Linear probe of the Dynamic World majority class on the val+test tiles. Target for every seed: gain >= "
         f"{MARGIN} and a better macro-F1 ({'met' if not missed else f'missed by seed(s) {missed}'}). Build: "
         f"{build_s:.0f} s."])
    print(f"written {path}")
    sys.exit(1 if missed else 0)


if __name__ == "__main__":
    main()
