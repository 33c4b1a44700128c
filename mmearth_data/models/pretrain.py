"""MP-MAE pretraining on an MMEarth v001 dataset (CPU or GPU), resumable, with per-modality loss logs.

Recipe (Nedungadi et al., ECCV 2024, §4 and its supplement): AdamW (0.9, 0.95), lr = base_lr x effective batch / 256 with linear warmup and
half-cycle cosine decay per iteration, weight decay 0.05, gradient accumulation, mixed precision on GPU.
"""
from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..dataset import MMEarthDataset
from ..errors import MMEarthError
from ..io_utils import atomic_write_bytes
from .mpmae import ALL_TARGETS, MPMAE, model_input, random_crop


@dataclass
class PretrainConfig:
    data: str
    out: str
    model: str = "atto"
    input_size: int = 112          # 112 with 16 px patches, or 56 with 8 px patches: a 7 x 7 patch grid
    epochs: int = 1
    batch_size: int = 32
    accum: int = 1
    base_lr: float = 1.5e-4
    warmup_epochs: float = 0.0
    weight_decay: float = 0.05
    mask_ratio: float = 0.6
    loss_aggr: str = "uncertainty"
    workers: int = 0
    seed: int = 0
    max_steps: int | None = None    # stop early (tests, smoke runs)
    targets: tuple[str, ...] = ALL_TARGETS

    @property
    def patch_size(self) -> int:
        if self.input_size % 7:
            raise MMEarthError(f"--input-size {self.input_size}: must be 7 x the patch size (112 or 56)")
        return self.input_size // 7


def lr_at(step: float, total: int, warmup: float, peak: float) -> float:
    if step < warmup:
        return peak * step / max(warmup, 1e-9)
    progress = (step - warmup) / max(total - warmup, 1e-9)
    return peak * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def checkpoint_path(out: Path) -> Path:
    return out / "checkpoint.pt"


def save_checkpoint(path: Path, model: MPMAE, opt, scaler, epoch: int, step: int, cfg: PretrainConfig) -> None:
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "epoch": epoch, "step": step, "config": asdict(cfg)}, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_encoder(checkpoint: str | os.PathLike) -> torch.nn.Module:
    """The pretrained ConvNeXt V2 encoder of an MP-MAE checkpoint, for fine-tuning or linear probing."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    cfg = state["config"]
    model = MPMAE(cfg["model"], cfg["input_size"] // 7, targets=tuple(cfg.get("targets") or _targets(state["model"])))
    model.load_state_dict(state["model"])
    return model.encoder


def _targets(state: dict) -> tuple[str, ...]:
    return tuple(t for t in ALL_TARGETS if f"log_vars.{t}" in state)


def pretrain(cfg: PretrainConfig, *, resume: bool = False, progress: bool = False) -> dict:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ds = MMEarthDataset(cfg.data, split="train")
    if len(ds) < cfg.batch_size:
        raise MMEarthError(f"--batch-size {cfg.batch_size}: the train split of {cfg.data} has only {len(ds)} tiles")
    loader = DataLoader(ds, batch_size=cfg.batch_size, shuffle=True, drop_last=True, num_workers=cfg.workers,
                        generator=torch.Generator().manual_seed(cfg.seed))
    model = MPMAE(cfg.model, cfg.patch_size, targets=cfg.targets, mask_ratio=cfg.mask_ratio,
                  loss_aggr=cfg.loss_aggr).to(device)
    eff_batch = cfg.batch_size * cfg.accum
    peak = cfg.base_lr * eff_batch / 256
    opt = torch.optim.AdamW(model.parameters(), lr=peak, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None
    steps_per_epoch = len(loader) // cfg.accum
    total = cfg.epochs * steps_per_epoch
    start_epoch, step = 0, 0
    ckpt = checkpoint_path(out)
    if resume and ckpt.exists():
        state = torch.load(ckpt, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch, step = int(state["epoch"]) + 1, int(state["step"])
    elif ckpt.exists():
        raise MMEarthError(f"{ckpt} exists: add --resume to continue that run, or choose another --out")
    log_path = out / "losses.csv"
    new_log = not (resume and log_path.exists())
    log = open(log_path, "w" if new_log else "a", newline="")
    writer = csv.writer(log)
    if new_log:
        writer.writerow(["step", "epoch", "lr", "total", *model.targets])
    from tqdm import tqdm

    bar = tqdm(total=total, initial=step, desc="pretrain", unit="step", disable=not progress)
    crop_gen = torch.Generator().manual_seed(cfg.seed + 1)
    last = {}
    try:
        for epoch in range(start_epoch, cfg.epochs):
            model.train()
            for i, batch in enumerate(loader):
                if cfg.max_steps is not None and step >= cfg.max_steps:
                    break
                batch = random_crop(batch, cfg.input_size, generator=crop_gen)
                batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    preds, mask = model(model_input(batch))
                preds = {k: v.float() for k, v in preds.items()}
                losses = model.losses(preds, batch, mask)
                loss = model.total_loss(losses) / cfg.accum
                (scaler.scale(loss) if scaler is not None else loss).backward()
                if (i + 1) % cfg.accum:
                    continue
                lr = lr_at(step, total, cfg.warmup_epochs * steps_per_epoch, peak)
                for g in opt.param_groups:
                    g["lr"] = lr
                if scaler is not None:
                    scaler.step(opt)
                    scaler.update()
                else:
                    opt.step()
                opt.zero_grad(set_to_none=True)
                step += 1
                last = {k: float(v.detach()) for k, v in losses.items()}
                total_value = float(loss.detach()) * cfg.accum
                writer.writerow([step, epoch, f"{lr:.6g}", f"{total_value:.6g}", *(f"{last[t]:.6g}" for t in model.targets)])
                bar.set_postfix({"total": f"{total_value:.3f}", **{t[:6]: f"{v:.3f}" for t, v in last.items()}},
                                refresh=False)
                bar.update(1)
            log.flush()
            stopped = cfg.max_steps is not None and step >= cfg.max_steps
            # an epoch cut short by --max-steps is recorded as not finished: --resume runs it again from its start
            save_checkpoint(ckpt, model, opt, scaler, epoch - 1 if stopped and i + 1 < len(loader) else epoch, step, cfg)
            if stopped:
                break
    finally:
        bar.close()
        log.close()
    plot_losses(log_path, out / "losses.png")
    return {"steps": step, "checkpoint": str(ckpt), "last": last}


def plot_losses(csv_path: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(9, 5))
    steps = [int(r["step"]) for r in rows]
    for key in [k for k in rows[0] if k not in ("step", "epoch", "lr")]:
        ax.plot(steps, [float(r[key]) for r in rows], label=key, lw=1.5 if key == "total" else 0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend(fontsize=7, ncol=2)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(png, buf.getvalue())


@torch.no_grad()
def embed(data: str, checkpoint: str, batch_size: int = 32) -> torch.Tensor:
    """Global-average-pooled encoder features of every tile of ``data`` (no masking, centre crop)."""
    encoder = load_encoder(checkpoint).eval()
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    size = int(state["config"]["input_size"])
    ds = MMEarthDataset(data, split="all", modalities=["sentinel2"], crop=size)
    out = []
    for batch in DataLoader(ds, batch_size=batch_size):
        out.append(encoder(model_input(batch)).mean(dim=(2, 3)))
    return torch.cat(out)
