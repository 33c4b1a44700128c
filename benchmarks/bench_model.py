"""MP-MAE atto with all heads vs the bare ConvNeXt V2 atto encoder: forward + backward time per batch, one run.

    python benchmarks/bench_model.py [--batch 16] [--input-size 112] [--steps 5] [--device cpu|cuda]

Baseline: the encoder alone (same 12-band input, same mask) with a scalar loss on its output. Ours: the whole
MP-MAE (encoder, shared decoder block, 12 heads, all losses, uncertainty weighting). Target: ratio <= 1.5x.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--input-size", type=int, default=112)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
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


if __name__ == "__main__":
    main()
