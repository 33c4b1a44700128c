"""Samples/s of MMEarthDataset against (a) a per-item-open h5py reader, (b) the zlib limit and (c) torchgeo's
``MMEarth`` where torchgeo is importable, in one run.

    python benchmarks/bench_loader.py [--tiles 2000] [--tile-px 128] [--seconds 8] [--dir DIR]

(a) opens the file for every item and indexes ``f[name][i]`` for each modality (how an existing reader does it),
then applies the same transforms as ours. (b) reads every chunk of the tile with ``read_direct_chunk`` and
only inflates it with ``zlib.decompress`` (no unshuffle, no transforms): the ceiling of any zlib-based reader.
(c) is torchgeo's own reader on the same files (linked under its ``MMEarth100k``/``MMEarth64`` names), all
its default modalities, z-score normalised. torchgeo pins a CUDA torch; ``pip install --no-deps torchgeo
torchvision einops kornia kornia_rs lightning_utilities`` beside the CPU torch is enough for its reader.
Targets: ours >= 3x (a), above (b), >= 10x (c).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
import zlib
from pathlib import Path

import h5py
import numpy as np
import torch

from mmearth_data import MMEarthDataset, open_dataset
from mmearth_data.sample_data import write_sample_dataset
from results_table import write_results


def rate(fn, order, seconds: float) -> float:
    """Items per second of ``fn(row)`` over ``order``, run for about ``seconds``."""
    fn(int(order[0]))  # warm-up (opens files, builds readers)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn(int(order[n % len(order)]))
        n += 1
    return n / (time.perf_counter() - t0)


def torchgeo_reader(root: Path, h5_path: Path, tile_px: int):
    """torchgeo's ``MMEarth`` over the files in ``root``, or None where torchgeo cannot be imported."""
    try:
        from torchgeo.datasets import MMEarth
    except Exception as exc:  # noqa: BLE001 - any import failure means "not measured", said in the output
        print(f"(c) torchgeo not measured: {type(exc).__name__}: {exc}")
        return None
    subset = "MMEarth64" if tile_px == 64 else "MMEarth100k"
    stem = MMEarth.filenames[subset]
    linked = root / "torchgeo" / stem
    linked.mkdir(parents=True, exist_ok=True)
    for path in root.glob(h5_path.stem + "*"):
        target = linked / path.name.replace(h5_path.stem, stem, 1)
        if path.is_file() and not target.exists():
            target.symlink_to(path.resolve())
    return MMEarth(root / "torchgeo", subset=subset)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiles", type=int, default=2000)
    ap.add_argument("--tile-px", type=int, default=128)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--dir", type=Path, help="reuse/keep the generated dataset here")
    args = ap.parse_args()

    tmp = None
    root = args.dir
    if root is None:
        tmp = tempfile.TemporaryDirectory()
        root = Path(tmp.name)
    if not any(root.glob("*.h5")):
        t0 = time.perf_counter()
        write_sample_dataset(root, args.tiles, tile_px=args.tile_px, progress=True)
        print(f"generated {args.tiles} tiles of {args.tile_px} px in {time.perf_counter() - t0:.1f} s")
    files = open_dataset(root)
    print(f"file: {files.h5_path} ({files.h5_path.stat().st_size / 1e6:.0f} MB, gzip level 4 + shuffle)")

    ds = MMEarthDataset(root, split="all", normalize=True)
    order = np.random.default_rng(0).permutation(len(ds))
    names = list(ds.modalities)

    def naive(row: int) -> dict:
        with h5py.File(files.h5_path, "r") as f:
            s2_type = f["metadata"][row]["S2_type"].decode()
            out = {m: torch.from_numpy(ds.transforms[m](f[m][row], s2_type)) for m in names}
            out["id"] = f["metadata"][row]["tile_id"].decode()
        return out

    h5 = h5py.File(files.h5_path, "r")
    chunk_dsets = [h5[m] for m in names] + [h5["metadata"]]

    def zlib_limit(row: int) -> int:
        total = 0
        for d in chunk_dsets:
            _, raw = d.id.read_direct_chunk((row,) + (0,) * (d.ndim - 1))
            total += len(zlib.decompress(raw))
        return total

    ours = rate(lambda r: ds[r], order, args.seconds)
    ds1 = MMEarthDataset(root, split="all", normalize=True, decode_threads=1)
    ours1 = rate(lambda r: ds1[r], order, args.seconds)
    base_a = rate(naive, order, args.seconds)
    base_b = rate(zlib_limit, order, args.seconds)
    tg = torchgeo_reader(root, files.h5_path, args.tile_px)
    base_c = rate(lambda r: tg[r % len(tg)], order, args.seconds) if tg is not None else None

    def loader_rate(dataset, workers: int, transform=None) -> float:
        loader = torch.utils.data.DataLoader(dataset, batch_size=32, num_workers=workers, sampler=order.tolist(),
                                             persistent_workers=False)
        it = iter(loader)
        next(it)
        n, t0 = 0, time.perf_counter()
        for batch in it:
            if transform is not None:
                batch = transform(batch)
            n += len(batch["id"])
            if time.perf_counter() - t0 > args.seconds:
                break
        return n / (time.perf_counter() - t0)

    stored = MMEarthDataset(root, split="all", normalize=True, stored_dtypes=True)
    norm = stored.batch_transform()
    counts = sorted({0, 1, 2, min(4, os.cpu_count() or 1)})
    by_workers = {w: (loader_rate(ds, w), loader_rate(stored, w), loader_rate(stored, w, norm)) for w in counts}
    workers2 = by_workers[2][0]
    h5.close()

    print(f"modalities: {', '.join(names)} ({len(ds)} tiles, {args.tile_px} px, normalized)")
    print(f"(a) per-item open + f[name][i]      : {base_a:8.1f} samples/s")
    print(f"(b) zlib limit (raw chunks + zlib)   : {base_b:8.1f} samples/s")
    print(f"ours MMEarthDataset, 1 thread        : {ours1:8.1f} samples/s")
    print(f"ours MMEarthDataset, 1 process       : {ours:8.1f} samples/s (default: 2 decode threads)")
    print(f"ours DataLoader, 2 workers, batch 32 : {workers2:8.1f} samples/s")
    print("DataLoader, batch 32, samples/s by workers: float32 per sample | stored dtypes (what a GPU loop gets; "
          "Normalize runs there) | stored dtypes + Normalize on this CPU")
    for w, (f32, raw, cpu) in by_workers.items():
        print(f"  {w} worker(s): {f32:8.1f} | {raw:8.1f} | {cpu:8.1f}   ratio to 1 process, 1 thread: "
              f"{f32 / ours1:.2f}x | {raw / ours1:.2f}x | {cpu / ours1:.2f}x")
    print(f"goal: 2 workers >= 1.6x one process's single-thread rate ({1.6 * ours1:.0f} samples/s)")
    print(f"ratio ours / (a) = {ours / base_a:.2f}x (target >= 3x)")
    print(f"ratio ours / (b) = {ours / base_b:.2f}x (target > 1x); single-threaded {ours1 / base_b:.2f}x")
    if base_c is not None:
        print(f"(c) torchgeo MMEarth, 1 process      : {base_c:8.1f} samples/s ({len(tg.modalities)} modalities)")
        print(f"ratio ours / (c) = {ours / base_c:.2f}x (target >= 10x); single-threaded {ours1 / base_c:.2f}x")
    rows = [("(a) per-item open + `f[name][i]`", f"{base_a:.1f}", "1.00x", ""),
            ("(b) zlib limit (raw chunks + zlib)", f"{base_b:.1f}", f"{base_b / base_a:.2f}x", ""),
            ("(c) torchgeo `MMEarth`, 1 process", f"{base_c:.1f}" if base_c else "not measured",
             f"{base_c / base_a:.2f}x" if base_c else "", ""),
            ("ours, `MMEarthDataset`, 1 thread", f"{ours1:.1f}", f"{ours1 / base_a:.2f}x", ""),
            ("ours, `MMEarthDataset`, 1 process (2 decode threads)", f"{ours:.1f}", f"{ours / base_a:.2f}x",
             f">= 3x (a), > 1x (b){', >= 10x (c)' if base_c else ''}")]
    for w, (f32, raw, cpu) in by_workers.items():
        rows += [(f"DataLoader, {w} worker(s), batch 32, float32 per sample", f"{f32:.1f}", f"{f32 / base_a:.2f}x",
                  f"{f32 / ours1:.2f}x of 1 thread" + (" (goal >= 1.6x)" if w == 2 else "")),
                 (f"DataLoader, {w} worker(s), stored dtypes (`Normalize` on the GPU)", f"{raw:.1f}",
                  f"{raw / base_a:.2f}x", f"{raw / ours1:.2f}x of 1 thread"),
                 (f"DataLoader, {w} worker(s), stored dtypes + `Normalize` on this CPU", f"{cpu:.1f}",
                  f"{cpu / base_a:.2f}x", f"{cpu / ours1:.2f}x of 1 thread")]
    write_results("bench_loader", f"Loader: {len(ds)} tiles of {args.tile_px} px, {len(names)} modalities, normalized",
                  ("reader", "samples/s", "vs (a)", "goal / note"), rows)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
