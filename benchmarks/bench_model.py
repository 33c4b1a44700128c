"""MP-MAE atto with all heads vs the bare ConvNeXt V2 atto encoder, and a full training step with the loader.

    python benchmarks/bench_model.py [--batch 16] [--input-size 112] [--steps 5] [--device cpu|cuda]
                                     [--loader-workers 2] [--loader-steps 20] [--worker-sweep 0,2,4,8]

1. Forward + backward time per batch. Baseline: the encoder alone (same 12-band input, same mask) with a scalar
   loss on its output. Ours: the whole MP-MAE (encoder, shared decoder block, 12 heads, all losses, uncertainty
   weighting). Target: ratio <= 1.5x.
2. A full training step as ``pretrain`` runs it (MMEarthDataset over a generated v001 file, DataLoader with
   ``--loader-workers``, shared random crop, forward/backward in bf16 autocast on GPU, AdamW step): samples/s and
   the share of the step time spent waiting for the next batch. ``--worker-sweep`` repeats it per worker count, to find how
   many loader workers keep the device busy (waiting below 10 %).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmearth_data.models import MPMAE, random_mask  # noqa: E402
from mmearth_data.models.mpmae import IMAGE_CLASSES, IMAGE_TARGETS, PIXEL_CLASSES, PIXEL_TARGETS  # noqa: E402
from results_table import write_results  # noqa: E402  (this folder is on sys.path when run as a script)


def fake_batch(b: int, px: int, device) -> dict:
    out = {k: torch.randn(b, c, px, px, device=device) for k, c in PIXEL_TARGETS.items()}
    out["sentinel2"] = torch.randn(b, 13, px, px, device=device)
    out.update({k: torch.randint(-1, c, (b, 1, px, px), device=device) for k, c in PIXEL_CLASSES.items()})
    out.update({k: torch.randint(0, c, (b,), device=device) for k, c in IMAGE_CLASSES.items()})
    out.update({k: torch.randn(b, c, device=device) for k, c in IMAGE_TARGETS.items()})
    return out


def timed(fn, steps: int, device) -> float:
    fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def train_throughput(data: Path, workers: int, batch: int, input_size: int, steps: int, device) -> tuple[float, float]:
    """(samples/s, share of wall time waiting for data) of ``steps`` full training steps after 2 warm-up steps."""
    from torch.utils.data import DataLoader

    from mmearth_data import MMEarthDataset
    from mmearth_data.models.mpmae import model_input, random_crop
    from mmearth_data.models.pretrain import param_groups

    torch.manual_seed(0)
    model = MPMAE("atto", input_size // 7).to(device)
    opt = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-4, betas=(0.9, 0.95))
    loader = DataLoader(MMEarthDataset(data, split="all"), batch_size=batch, shuffle=True, drop_last=True,
                        num_workers=workers, persistent_workers=workers > 0, pin_memory=device.type == "cuda")
    gen = torch.Generator().manual_seed(1)
    waited, done, t0 = 0.0, 0, None
    it = iter(loader)
    for k in range(steps + 2):
        t = time.perf_counter()
        try:
            b = next(it)
        except StopIteration:
            it = iter(loader)
            b = next(it)
        if k >= 2:
            waited += time.perf_counter() - t
        elif k == 1:
            t0 = time.perf_counter()   # after the warm-up: workers started, kernels chosen
        b = random_crop(b, input_size, generator=gen)
        b = {n: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for n, v in b.items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            preds, mask = model(model_input(b))
        loss = model.total_loss(model.losses({n: v.float() for n, v in preds.items()}, b, mask))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if k >= 2:
            done += batch
    total = time.perf_counter() - t0 - 0.0
    return done / total, waited / total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--input-size", type=int, default=112)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--loader-workers", type=int, default=2, help="loader workers of the training-step measurement")
    ap.add_argument("--loader-steps", type=int, default=20)
    ap.add_argument("--worker-sweep", help="e.g. 0,2,4,8: the training step for each worker count")
    ap.add_argument("--tiles", type=int, default=256, help="tiles of the generated dataset")
    args = ap.parse_args()
    device = torch.device(args.device)
    patch = args.input_size // 7
    model = MPMAE("atto", patch).to(device)
    batch = fake_batch(args.batch, args.input_size, device)
    x = batch["sentinel2"][:, :12]
    mask = random_mask(args.batch, 7, 0.6, device=device)

    def encoder_only():
        model.zero_grad(set_to_none=True)
        model.encoder(x, mask).mean().backward()

    def full():
        model.zero_grad(set_to_none=True)
        preds, m = model(x, mask)
        model.total_loss(model.losses(preds, batch, m)).backward()

    base = timed(encoder_only, args.steps, device)
    ours = timed(full, args.steps, device)
    print(f"device {device}, batch {args.batch}, input {args.input_size} px, patch {patch}")
    print(f"encoder alone (forward+backward): {base * 1000:.0f} ms/batch, {args.batch / base:.1f} samples/s")
    print(f"MP-MAE, all 12 heads and losses:  {ours * 1000:.0f} ms/batch, {args.batch / ours:.1f} samples/s")
    print(f"ratio MP-MAE/encoder: {ours / base:.2f}x  (target <= 1.5x)")
    rows = [("encoder alone, forward + backward", f"{base * 1000:.0f} ms/batch", f"{args.batch / base:.1f}", ""),
            ("MP-MAE, all 12 heads and losses", f"{ours * 1000:.0f} ms/batch", f"{args.batch / ours:.1f}",
             f"{ours / base:.2f}x the encoder (target <= 1.5x)")]

    import tempfile

    from mmearth_data.sample_data import write_sample_dataset

    with tempfile.TemporaryDirectory() as tmp:
        px = 128 if args.input_size > 64 else 64
        write_sample_dataset(tmp, args.tiles, tile_px=px, seed=0)
        counts = [int(w) for w in args.worker_sweep.split(",")] if args.worker_sweep else [args.loader_workers]
        for w in counts:
            rate, wait = train_throughput(Path(tmp), w, args.batch, args.input_size, args.loader_steps, device)
            print(f"training step with the loader ({w} workers, {'bf16' if device.type == 'cuda' else 'fp32'}): "
                  f"{rate:.1f} samples/s, {wait:.0%} of the step time waiting for data")
            rows.append((f"training step with the loader, {w} workers", "", f"{rate:.1f}",
                         f"{wait:.0%} of the step waiting for data"))
    write_results("bench_model", f"MP-MAE atto on {device}, batch {args.batch}, input {args.input_size} px, "
                  f"patch {patch}", ("arm", "time", "samples/s", "note"), rows)


if __name__ == "__main__":
    main()
