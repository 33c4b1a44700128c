"""MP-MAE pretraining on an MMEarth v001 dataset (CPU or GPU), resumable, with per-modality loss logs.

Recipe (Nedungadi et al., ECCV 2024, §4 and its supplement; MMEarth-train ``main_pretrain.py``): AdamW (0.9, 0.95),
lr = base_lr x effective batch / 256 with linear warmup (40 of 200 epochs: 20 % by default) and half-cycle cosine
decay per optimizer step, weight decay 0.05 on weights only (not on biases, norm parameters, the mask token or the
uncertainty weights, as ConvNeXt V2 / timm group them), gradient accumulation that never carries over an epoch
end, mixed precision on GPU.
"""
from __future__ import annotations

import csv
import io
import math
import os
import pickle
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..dataset import MMEarthDataset
from ..errors import MMEarthError, one_line
from ..io_utils import atomic_write_bytes
from .convnextv2 import VARIANTS, ConvNeXtV2Encoder
from .mpmae import ALL_TARGETS, MPMAE, model_input, random_crop


WARMUP_SHARE = 0.2


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weights only: biases, every 1-D parameter (norms, GRN), the mask token and the uncertainty
    weights ``log_vars`` are not decayed (decaying ``log_vars`` would pull every task weight towards 1)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = (p.ndim <= 1 or name.endswith(".bias") or name == "mask_token" or name.startswith("log_vars.")
                or name.endswith((".gamma", ".beta")))
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


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
    warmup_epochs: float | None = None   # None: 20 % of --epochs (the paper: 40 of 200)
    weight_decay: float = 0.05
    mask_ratio: float = 0.6
    loss_aggr: str = "uncertainty"
    loader_workers: int = 0
    seed: int = 0
    max_steps: int | None = None    # stop early (tests, smoke runs)
    targets: tuple[str, ...] = ALL_TARGETS

    @property
    def warmup(self) -> float:
        return WARMUP_SHARE * self.epochs if self.warmup_epochs is None else self.warmup_epochs

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


ZIP_MAGIC, LEGACY_MAGIC = b"PK\x03\x04", b"\x80\x02"   # torch.save's zip format; its pre-1.6 pickle protocol 2


def read_checkpoint(path: Path, map_location, where: str) -> object:
    """``torch.load(weights_only=True)`` of a user's file, every failure one MMEarthError line.

    torch's refusal text advises retrying with weights_only=False, which would run whatever code the file holds;
    it is never passed on. A file in neither of torch.save's formats (an empty file, a bare pickle) is refused
    before torch reads it (an empty one would end in EOFError, which click reports as Ctrl-C)."""
    import argparse

    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as e:
        raise MMEarthError(f"{where}: cannot be read ({e.strerror or e})") from None
    if head != ZIP_MAGIC and head[:2] != LEGACY_MAGIC:
        what = "an empty file" if not head else "neither of torch.save's formats"
        raise MMEarthError(f"{where}: not a PyTorch checkpoint ({what})")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):   # MMEarth-train saves its args
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f"it refers to {found.group(1)}" if found else "its pickle holds more than tensors and plain data"
        raise MMEarthError(f"{where}: refused: {what}, which a checkpoint of weights never needs; "
                           "it was not loaded") from None
    except Exception as e:  # noqa: BLE001 - a truncated archive, a bad record: the user's file
        first = next((x for x in re.split(r"(?<=\.)\s+", one_line(e, 1000)) if "weights_only" not in x), "")
        raise MMEarthError(f"{where}: not a readable PyTorch checkpoint ({type(e).__name__}: "
                           f"{first[:200] or 'no detail'})") from None


def load_encoder(checkpoint: str | os.PathLike) -> torch.nn.Module:
    """The pretrained ConvNeXt V2 encoder of an MP-MAE checkpoint (ours, or an official MMEarth-train one), for
    fine-tuning or linear probing."""
    return load_encoder_and_size(checkpoint)[0]


def load_encoder_and_size(checkpoint: str | os.PathLike) -> tuple[ConvNeXtV2Encoder, int]:
    """(encoder, input size) of a checkpoint: an ``mmearth-data pretrain`` one, or one in MMEarth-train's layout
    (``{"model": state_dict}`` or a bare state dict; its sparse FCMAE encoder or its dense ``convnextv2``)."""
    path = Path(checkpoint)
    if not path.is_file():
        raise MMEarthError(f"--checkpoint {path}: no such file")
    state = read_checkpoint(path, "cpu", f"--checkpoint {path}")
    if isinstance(state, dict) and "config" in state and "model" in state:   # ours
        try:
            cfg = state["config"]
            model = MPMAE(cfg["model"], cfg["input_size"] // 7,
                          targets=tuple(cfg.get("targets") or _targets(state["model"])))
            model.load_state_dict(state["model"])
            return model.encoder, int(cfg["input_size"])
        except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:
            raise MMEarthError(f"--checkpoint {path}: an mmearth-data checkpoint whose config or weights do not "
                               f"fit together ({type(e).__name__}: {one_line(e, 200)})") from None
    weights = state.get("model", state) if isinstance(state, dict) else None
    if not isinstance(weights, dict) or not weights:
        raise MMEarthError(f"--checkpoint {path}: holds no state dict")
    encoder = encoder_from_mmearth_train(weights, str(path))
    return encoder, 7 * encoder.patch_size


def _dense_from_sparse(weights: dict) -> dict:
    """MinkowskiEngine names and shapes -> dense ones (what MMEarth-train's ``remap_checkpoint_keys`` does):
    ``kernel`` (k*k, in, out) or (k*k, dim) -> conv ``weight``; ``.ln.``/``.linear.`` wrappers dropped; (1, C)
    biases flattened; GRN (1, C) -> (1, 1, 1, C)."""
    out = {}
    for k, v in weights.items():
        parts = k.split(".")
        if parts[-1] == "kernel":
            ks = math.isqrt(v.shape[0])
            if v.ndim == 3:   # (k*k, in, out) -> (out, in, k, k)
                v = v.permute(2, 1, 0).reshape(v.shape[2], v.shape[1], ks, ks).transpose(3, 2)
            else:             # depthwise (k*k, dim) -> (dim, 1, k, k)
                v = v.permute(1, 0).reshape(v.shape[1], 1, ks, ks).transpose(3, 2)
            parts[-1] = "weight"
        elif len(parts) >= 2 and parts[-2] in ("ln", "linear"):
            parts.pop(-2)
        name = ".".join(parts)
        if name.endswith("bias") and v.ndim != 1:
            v = v.reshape(-1)
        elif ".grn." in name and v.ndim == 2:
            v = v[None, None]
        out[name] = v
    return out


STEM_NAMES = {"initial_conv.0": "stem.0", "initial_conv.1": "stem.1", "stem.0": "stem.3", "stem.1": "stem.4",
              "stem_orig.0": "stem.0", "stem_orig.1": "stem.1", "downsample_layers": "downsample"}


def encoder_from_mmearth_train(weights: dict, where: str = "checkpoint") -> ConvNeXtV2Encoder:
    """Our encoder from MMEarth-train's state dict: the names map one to one (``initial_conv`` + ``stem`` are our
    ``stem``, ``downsample_layers`` our ``downsample``); the variant, input channels and patch size are read from
    the shapes. Decoder, heads, mask token and a classifier head are ignored."""
    if any(k.endswith(".kernel") for k in weights):
        weights = _dense_from_sparse(weights)
    enc = {}
    for k, v in weights.items():
        k = k[len("encoder."):] if k.startswith("encoder.") else k
        if not k.startswith(("initial_conv.", "stem.", "stem_orig.", "downsample_layers.", "stages.")):
            continue   # proj, mask_token, decoder_dict, pred_dict, norm, head
        for old, new in STEM_NAMES.items():
            if k.startswith(old + "."):
                k = new + k[len(old):]
                break
        enc[k] = v
    try:
        dims = [enc[f"stages.{i}.0.dwconv.weight"].shape[0] for i in range(4)]
        depths = [len({k.split(".")[2] for k in enc if k.startswith(f"stages.{i}.")}) for i in range(4)]
        in_chans = enc["stem.0.weight"].shape[1]
    except KeyError as e:
        raise MMEarthError(f"{where}: not an MMEarth-train ConvNeXt V2 state dict (no {e.args[0]})") from None
    variant = next((name for name, (d, w) in VARIANTS.items() if d == depths and w == dims), None)
    if variant is None:
        raise MMEarthError(f"{where}: depths {depths} and widths {dims} match no ConvNeXt V2 variant")
    mmearth_stem = "stem.3.weight" in enc
    k = enc["stem.3.weight"].shape[-1] if mmearth_stem else enc["stem.0.weight"].shape[-1]
    encoder = ConvNeXtV2Encoder(in_chans, variant, 8 * k, mmearth_stem=mmearth_stem)
    try:
        missing, unexpected = encoder.load_state_dict(enc, strict=False)
    except RuntimeError as e:
        raise MMEarthError(f"{where}: state dict does not fit ConvNeXt V2 {variant} ({str(e).splitlines()[-1].strip()})"
                           ) from None
    if missing or unexpected:
        raise MMEarthError(f"{where}: state dict does not fit ConvNeXt V2 {variant}: missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]}")
    return encoder


def _targets(state: dict) -> tuple[str, ...]:
    return tuple(t for t in ALL_TARGETS if f"log_vars.{t}" in state)


def micro_batches(n: int, accum: int) -> list[int]:
    """The micro-batch count of each optimizer step of an epoch of ``n`` micro-batches: groups of ``accum``, the
    last one shorter when ``n % accum`` (it steps at the epoch end instead of rolling into the next epoch)."""
    return [min(accum, n - k) for k in range(0, n, accum)]


def pretrain(cfg: PretrainConfig, *, resume: bool = False, progress: bool = False, log=None) -> dict:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ds = MMEarthDataset(cfg.data, split="train")
    if len(ds) < cfg.batch_size:
        raise MMEarthError(f"--batch-size {cfg.batch_size}: the train split of {cfg.data} has only {len(ds)} tiles")
    loader = DataLoader(ds, batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                        num_workers=cfg.loader_workers, generator=torch.Generator().manual_seed(cfg.seed))
    model = MPMAE(cfg.model, cfg.patch_size, targets=cfg.targets, mask_ratio=cfg.mask_ratio,
                  loss_aggr=cfg.loss_aggr).to(device)
    eff_batch = cfg.batch_size * cfg.accum
    peak = cfg.base_lr * eff_batch / 256
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=peak, betas=(0.9, 0.95))
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None
    groups = micro_batches(len(loader), cfg.accum)
    steps_per_epoch = len(groups)
    total = cfg.epochs * steps_per_epoch
    warmup_steps = cfg.warmup * steps_per_epoch
    if log is not None:
        log(f"schedule: {cfg.epochs} epoch(s) x {steps_per_epoch} step(s) of {cfg.batch_size} x {cfg.accum} = "
            f"{eff_batch} tiles (the last step of an epoch: {groups[-1]} micro-batch(es)); peak lr {peak:.3g} = "
            f"{cfg.base_lr:g} x {eff_batch} / 256 after {cfg.warmup:g} warmup epoch(s) ({warmup_steps:.0f} steps), "
            f"half-cycle cosine to 0; AdamW (0.9, 0.95), weight decay {cfg.weight_decay:g} on weights only")
    start_epoch, step = 0, 0
    ckpt = checkpoint_path(out)
    if resume and ckpt.exists():
        state = read_checkpoint(ckpt, device, str(ckpt))
        if not isinstance(state, dict) or not {"model", "optimizer", "epoch", "step"} <= state.keys():
            raise MMEarthError(f"{ckpt}: not a checkpoint of mmearth-data pretrain (no model, optimizer, epoch and "
                               "step); start a new --out")
        try:
            model.load_state_dict(state["model"])
        except (RuntimeError, TypeError, AttributeError) as e:
            raise MMEarthError(f"{ckpt}: its weights do not fit this run's model (--model {cfg.model}, --input-size "
                               f"{cfg.input_size}, --targets): {one_line(e, 200)}") from None
        try:
            opt.load_state_dict(state["optimizer"])
        except ValueError:
            raise MMEarthError(f"{ckpt}: written by an older mmearth-data (one optimizer parameter group, weight decay "
                               "on every parameter); start a new --out") from None
        except (KeyError, TypeError, AttributeError) as e:
            raise MMEarthError(f"{ckpt}: its optimizer state is malformed ({type(e).__name__}: {one_line(e, 120)}); "
                               "start a new --out") from None
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        try:
            start_epoch, step = int(state["epoch"]) + 1, int(state["step"])
        except (TypeError, ValueError):
            raise MMEarthError(f"{ckpt}: epoch and step must be integers; start a new --out") from None
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
                group = groups[i // cfg.accum]   # micro-batches in this step: the loss is their mean
                batch = random_crop(batch, cfg.input_size, generator=crop_gen)
                batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    preds, mask = model(model_input(batch))
                preds = {k: v.float() for k, v in preds.items()}
                losses = model.losses(preds, batch, mask)
                loss = model.total_loss(losses) / group
                (scaler.scale(loss) if scaler is not None else loss).backward()
                if (i + 1) % cfg.accum and i + 1 < len(loader):
                    continue
                lr = lr_at(step, total, warmup_steps, peak)
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
                total_value = float(loss.detach()) * group
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
    except MMEarthError as e:   # from a DataLoader worker, torch adds the worker's traceback to the message
        raise MMEarthError(str(e).rsplit("MMEarthError: ", 1)[-1].strip()) from None
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
    from .probe import pooled

    encoder, size = load_encoder_and_size(checkpoint)
    return pooled(encoder, MMEarthDataset(data, split="all", modalities=["sentinel2"], crop=size), batch_size)
