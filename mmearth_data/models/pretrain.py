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
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..dataset import MMEarthDataset
from ..errors import MMEarthError, one_line
from ..io_utils import atomic_write_bytes
from .checkpoints import load_encoder, load_encoder_and_size, read_checkpoint  # noqa: F401 - the public names
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


def save_checkpoint(path: Path, model: MPMAE, opt, scaler, epoch: int, step: int, cfg: PretrainConfig,
                    position: int = 0, crops: torch.Generator | None = None) -> None:
    """``position``: micro-batches done of ``epoch`` when the run stopped inside it (0: the epoch is finished);
    with the random states then (crops, masks) a resumed run continues it exactly."""
    buf = io.BytesIO()
    rng = {"crops": crops.get_state(), "torch": torch.get_rng_state(),
           "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None} if position else None
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "epoch": epoch, "step": step, "position": position, "rng": rng, "config": asdict(cfg)}, buf)
    atomic_write_bytes(path, buf.getvalue())


def epoch_seed(seed: int, epoch: int, stream: int) -> int:
    """The seed of one random stream of one epoch (0: the data order, 1: the crops, 2: masks and drop-path): an
    epoch draws the same numbers whether the run reached it straight or through ``--resume``."""
    return (seed * 1_000_003 + epoch) * 3 + stream


def keep_logged_steps(log_path: Path, last_step: int) -> None:
    """Drop the rows of ``losses.csv`` after the checkpoint's step: a run killed after writing them and before its
    next checkpoint runs those steps again."""
    with open(log_path, newline="") as fh:
        rows = list(csv.reader(fh))
    kept = rows[:1] + [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) <= last_step]
    if len(kept) != len(rows):
        text = io.StringIO()
        csv.writer(text).writerows(kept)
        atomic_write_bytes(log_path, text.getvalue().encode())


def micro_batches(n: int, accum: int) -> list[int]:
    """The micro-batch count of each optimizer step of an epoch of ``n`` micro-batches: groups of ``accum``, the
    last one shorter when ``n % accum`` (it steps at the epoch end instead of rolling into the next epoch)."""
    return [min(accum, n - k) for k in range(0, n, accum)]


def pretrain(cfg: PretrainConfig, *, resume: bool = False, progress: bool = False, log=None) -> dict:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not cfg.base_lr > 0:
        raise MMEarthError(f"--base-lr {cfg.base_lr}: must be above 0")
    ds = MMEarthDataset(cfg.data, split="train")
    if ds.tile_px is not None and ds.tile_px < cfg.input_size:
        raise MMEarthError(f"--input-size {cfg.input_size}: larger than the {ds.tile_px} px tiles of {cfg.data}; "
                           "use 56 (8 px patches) for 64 px tiles")
    if len(ds) < cfg.batch_size:
        raise MMEarthError(f"--batch-size {cfg.batch_size}: the train split of {cfg.data} has only {len(ds)} tiles")
    n_batches = len(ds) // cfg.batch_size   # micro-batches per epoch (the last partial one dropped)
    model = MPMAE(cfg.model, cfg.patch_size, targets=cfg.targets, mask_ratio=cfg.mask_ratio,
                  loss_aggr=cfg.loss_aggr).to(device)
    eff_batch = cfg.batch_size * cfg.accum
    peak = cfg.base_lr * eff_batch / 256
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=peak, betas=(0.9, 0.95))
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None
    groups = micro_batches(n_batches, cfg.accum)
    steps_per_epoch = len(groups)
    total = cfg.epochs * steps_per_epoch
    warmup_steps = cfg.warmup * steps_per_epoch
    if log is not None:
        log(f"schedule: {cfg.epochs} epoch(s) x {steps_per_epoch} step(s) of {cfg.batch_size} x {cfg.accum} = "
            f"{eff_batch} tiles (the last step of an epoch: {groups[-1]} micro-batch(es)); peak lr {peak:.3g} = "
            f"{cfg.base_lr:g} x {eff_batch} / 256 after {cfg.warmup:g} warmup epoch(s) ({warmup_steps:.0f} steps), "
            f"half-cycle cosine to 0; AdamW (0.9, 0.95), weight decay {cfg.weight_decay:g} on weights only")
    start_epoch, step, position, rng = 0, 0, 0, None
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
            start_epoch, step, position = int(state["epoch"]), int(state["step"]), int(state.get("position") or 0)
        except (TypeError, ValueError):
            raise MMEarthError(f"{ckpt}: epoch, step and position must be integers; start a new --out") from None
        rng = state.get("rng") if position else None
        if not 0 <= position < n_batches or (position and not (
                isinstance(rng, dict) and all(isinstance(rng.get(k), torch.Tensor) for k in ("crops", "torch")))):
            raise MMEarthError(f"{ckpt}: stopped at micro-batch {position} of an epoch of {n_batches} (another "
                               "--batch-size or dataset?), or without its random state; start a new --out")
        start_epoch += 0 if position else 1   # inside an epoch: go on with it; else the next one
    elif ckpt.exists():
        raise MMEarthError(f"{ckpt} exists: add --resume to continue that run, or choose another --out")
    elif resume and log is not None:
        log(f"no checkpoint in {out}: a new run starts")
    log_path = out / "losses.csv"
    new_log = not (resume and log_path.exists())
    if not new_log:
        keep_logged_steps(log_path, step)
    losses_file = open(log_path, "w" if new_log else "a", newline="")
    writer = csv.writer(losses_file)
    if new_log:
        writer.writerow(["step", "epoch", "lr", "total", *model.targets])
    from tqdm import tqdm

    bar = tqdm(total=total, initial=step, desc="pretrain", unit="step", disable=not progress)
    last = {}
    try:
        for epoch in range(start_epoch, cfg.epochs):
            if cfg.max_steps is not None and step >= cfg.max_steps:
                break
            done = position if epoch == start_epoch else 0   # micro-batches of this epoch done
            crop_gen = torch.Generator()
            if done:   # continue the epoch with the random states it stopped with
                crop_gen.set_state(rng["crops"].cpu())
                torch.set_rng_state(rng["torch"].cpu())
                if rng.get("cuda") is not None and torch.cuda.is_available():
                    torch.cuda.set_rng_state_all([t.cpu() for t in rng["cuda"]])
            else:
                crop_gen.manual_seed(epoch_seed(cfg.seed, epoch, 1))
                torch.manual_seed(epoch_seed(cfg.seed, epoch, 2))
            data_gen = torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch, 0))
            order = torch.randperm(len(ds), generator=data_gen)
            loader = DataLoader(ds, batch_size=cfg.batch_size, sampler=order[done * cfg.batch_size:].tolist(),
                                drop_last=True, num_workers=cfg.loader_workers, generator=data_gen)
            # (its own generator: a DataLoader draws its workers' base seed from the global one otherwise)
            model.train()
            for batch in loader:
                if cfg.max_steps is not None and step >= cfg.max_steps:
                    break
                i = done
                done += 1
                group = groups[i // cfg.accum]   # micro-batches in this step: the loss is their mean
                batch = random_crop(batch, cfg.input_size, generator=crop_gen)
                batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    preds, mask = model(model_input(batch))
                preds = {k: v.float() for k, v in preds.items()}
                losses = model.losses(preds, batch, mask)
                loss = model.total_loss(losses) / group
                (scaler.scale(loss) if scaler is not None else loss).backward()
                if (i + 1) % cfg.accum and i + 1 < n_batches:
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
            losses_file.flush()
            if log is not None and not progress and last:   # a batch job's log: a line per epoch
                log(f"epoch {epoch + 1}/{cfg.epochs}: step {step}/{total}, lr {lr:.3g}, loss {total_value:.4f}")
            position = done if done < n_batches else 0   # an epoch cut short by --max-steps: --resume goes on
            save_checkpoint(ckpt, model, opt, scaler, epoch, step, cfg, position, crop_gen)
            if position:
                break
    except MMEarthError as e:   # from a DataLoader worker, torch adds the worker's traceback to the message
        raise MMEarthError(str(e).rsplit("MMEarthError: ", 1)[-1].strip()) from None
    finally:
        bar.close()
        losses_file.close()
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
