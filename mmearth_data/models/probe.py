"""Linear probing: does a pretrained encoder's representation carry a class target better than a random one?

As MMEarth's linear probing (Nedungadi et al., ECCV 2024, §5; MMEarth-train ``main_linprobe.py``): the encoder is
frozen, each tile is embedded by the global average pool of its last stage (then LayerNorm, as ConvNeXt V2's
``forward_features``), and a linear classifier is fitted on the train split. It is scored on the val/test splits,
or on a seeded spatial hold-out (1 degree blocks) when those are empty. The baseline is the same probe on a
randomly initialised encoder of the same shape and seed.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..dataset import MMEarthDataset
from ..errors import MMEarthError
from .convnextv2 import ConvNeXtV2Encoder
from .mpmae import model_input

TASKS = {"biome": "biome", "eco_region": "eco_region", "dynamic_world_majority": "dynamic_world",
         "esa_majority": "esa_worldcover"}
LBFGS_MAX_TILES = 50_000    # full-batch L-BFGS below this many training tiles, seeded minibatch SGD above


@dataclass
class ProbeScore:
    fraction: float
    train_tiles: int
    accuracy: float
    macro_f1: float


@dataclass
class ProbeReport:
    task: str
    eval_split: str
    eval_tiles: int
    classes: int
    pretrained: list[ProbeScore] = field(default_factory=list)
    random_init: list[ProbeScore] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"{'train share':>11} {'tiles':>7} {'pretrained acc':>15} {'macro-F1':>9} {'random-init acc':>16} "
               f"{'macro-F1':>9} {'ratio':>6}"]
        for p, r in zip(self.pretrained, self.random_init):
            out.append(f"{p.fraction:>10.0%} {p.train_tiles:>7} {p.accuracy:>15.3f} {p.macro_f1:>9.3f} "
                       f"{r.accuracy:>16.3f} {r.macro_f1:>9.3f} {p.accuracy / max(r.accuracy, 1e-9):>6.2f}")
        p, r = self.pretrained[-1], self.random_init[-1]
        out.append(f"probe {self.task}: pretrained {p.accuracy:.3f} random-init {r.accuracy:.3f} ratio "
                   f"{p.accuracy / max(r.accuracy, 1e-9):.2f}")
        return out


def parse_fractions(text: str | None) -> list[float]:
    """``1%,5%,100%`` (or ``0.01,0.05,1``) -> [0.01, 0.05, 1.0]."""
    if not text:
        return [1.0]
    out = []
    for part in text.split(","):
        part = part.strip()
        try:
            v = float(part[:-1]) / 100 if part.endswith("%") else float(part)
        except ValueError:
            raise MMEarthError(f"--few-shot {text!r}: use shares such as 1%,5%,100%") from None
        if not 0 < v <= 1:
            raise MMEarthError(f"--few-shot {text!r}: {part} is not in (0, 100%]")
        out.append(v)
    return sorted(set(out))


def labels_of(ds: MMEarthDataset, task: str) -> np.ndarray:
    """One class per tile (-1: none): the one-hot's class, or the most frequent valid class of a label map."""
    name = TASKS[task]
    out = np.full(len(ds), -1, dtype=np.int64)
    for i in range(len(ds)):
        v = ds[i][name].numpy()
        if v.ndim == 0:
            out[i] = int(v)
        else:
            valid = v[v >= 0]
            if valid.size:
                out[i] = int(np.bincount(valid).argmax())
    return out


@torch.no_grad()
def pooled(encoder: torch.nn.Module, ds: MMEarthDataset, batch_size: int = 64, device: str = "cpu") -> torch.Tensor:
    """Global average pool of the last stage for every item of ``ds`` (Sentinel-2 input, no mask)."""
    encoder.eval().to(device)
    return torch.cat([encoder(model_input(batch).to(device)).mean(dim=(2, 3)).cpu()
                      for batch in DataLoader(ds, batch_size=batch_size)])


def embed(encoder: torch.nn.Module, ds: MMEarthDataset, batch_size: int = 64, device: str = "cpu") -> torch.Tensor:
    """The probe's features: the pooled last stage, then LayerNorm (ConvNeXt V2's ``forward_features``)."""
    z = pooled(encoder, ds, batch_size, device)
    return F.layer_norm(z, z.shape[-1:])


def holdout(ds: MMEarthDataset, seed: int, share: float = 0.2, block_deg: float = 1.0) -> np.ndarray:
    """A seeded spatial hold-out: whole 1 degree blocks (from tile_info's lon/lat), drawn until ``share`` of the
    tiles is reached, so neighbouring tiles never sit on both sides."""
    info = ds.files.tile_info
    keys = []
    for r in ds.rows:
        rec = info.get(ds._ids(int(r))[0], {})
        keys.append((math.floor(float(rec.get("lon", 0.0)) / block_deg),
                     math.floor(float(rec.get("lat", 0.0)) / block_deg)))
    blocks = sorted(set(keys))
    count = {b: 0 for b in blocks}
    for k in keys:
        count[k] += 1
    chosen, n = set(), 0
    for k in np.random.default_rng([seed, 11]).permutation(len(blocks)):
        if n >= share * len(keys):
            break
        chosen.add(blocks[k])
        n += count[blocks[k]]
    return np.array([key in chosen for key in keys])


def fit_linear(x: torch.Tensor, y: torch.Tensor, classes: int, seed: int, weight_decay: float = 1e-4,
               epochs: int = 30) -> torch.nn.Linear:
    """Multinomial logistic regression on standardised features: full-batch L-BFGS for up to
    ``LBFGS_MAX_TILES`` tiles, else minibatch SGD with a seeded order and a cosine schedule."""
    torch.manual_seed(seed)
    head = torch.nn.Linear(x.shape[1], classes)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    if len(x) <= LBFGS_MAX_TILES:
        opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=500, history_size=20,
                                line_search_fn="strong_wolfe", tolerance_grad=1e-7, tolerance_change=1e-10)

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(head(x), y) + weight_decay * head.weight.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        return head
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9, weight_decay=weight_decay)
    steps = epochs * math.ceil(len(x) / 1024)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(1024):
            opt.zero_grad()
            F.cross_entropy(head(x[idx]), y[idx]).backward()
            opt.step()
            sched.step()
    return head


def scores(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Accuracy and macro-F1 over the classes present in the truth or the predictions."""
    acc = float((pred == truth).mean()) if len(truth) else float("nan")
    f1s = []
    for c in np.union1d(np.unique(truth), np.unique(pred)):
        tp = np.sum((pred == c) & (truth == c))
        fp = np.sum((pred == c) & (truth != c))
        fn = np.sum((pred != c) & (truth == c))
        f1s.append(2 * tp / max(2 * tp + fp + fn, 1))
    return acc, float(np.mean(f1s)) if f1s else float("nan")


def few_shot_subset(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A seeded subset of ``fraction`` of the training tiles with at least one tile of every class."""
    if fraction >= 1:
        return np.arange(len(y))
    rng = np.random.default_rng([seed, int(fraction * 1e6)])
    n = max(1, int(round(fraction * len(y))))
    first = [int(rng.choice(np.flatnonzero(y == c))) for c in np.unique(y)]
    rest = rng.permutation(np.setdiff1d(np.arange(len(y)), first))
    return np.sort(np.concatenate([first, rest[:max(0, n - len(first))]]).astype(np.int64))


def probe(data: str, encoder: torch.nn.Module, random_encoder: torch.nn.Module, input_size: int, task: str,
          fractions: Sequence[float] = (1.0,), seed: int = 0, log=print) -> ProbeReport:
    if task not in TASKS:
        raise MMEarthError(f"--task {task!r}: choose one of {', '.join(TASKS)}")
    ds = MMEarthDataset(data, split="all", modalities=["sentinel2"], crop=input_size)
    labels = labels_of(MMEarthDataset(data, split="all", modalities=[TASKS[task]], crop=input_size), task)
    splits = ds.files.splits
    row_of = {int(r): i for i, r in enumerate(ds.rows)}
    train = np.zeros(len(ds), bool)
    train[[row_of[r] for r in splits.get("train", []) if r in row_of]] = True
    evaluate = np.zeros(len(ds), bool)
    evaluate[[row_of[r] for s in ("val", "test") for r in splits.get(s, []) if r in row_of]] = True
    eval_name = "val+test"
    if not evaluate.any():
        evaluate = holdout(ds, seed)
        train = ~evaluate
        eval_name = "a seeded spatial hold-out (1 degree blocks, 20 %)"
    train &= labels >= 0
    evaluate &= labels >= 0
    if train.sum() < 2 or not evaluate.any():
        raise MMEarthError(f"{data}: too few labelled tiles for a probe ({int(train.sum())} train, "
                           f"{int(evaluate.sum())} eval)")
    classes = int(labels.max()) + 1
    log(f"probe {task}: {int(train.sum())} train / {int(evaluate.sum())} eval tiles ({eval_name}), "
        f"{len(np.unique(labels[train]))} classes in train")
    report = ProbeReport(task, eval_name, int(evaluate.sum()), classes)
    for which, enc in (("pretrained", encoder), ("random_init", random_encoder)):
        z = embed(enc, ds)
        mean, std = z[train].mean(0), z[train].std(0).clamp(min=1e-6)
        z = (z - mean) / std
        for frac in fractions:
            sub = np.flatnonzero(train)[few_shot_subset(labels[train], frac, seed)]
            head = fit_linear(z[sub], torch.from_numpy(labels[sub]), classes, seed)
            with torch.no_grad():
                pred = head(z[evaluate]).argmax(1).numpy()
            acc, f1 = scores(pred, labels[evaluate])
            getattr(report, which).append(ProbeScore(frac, len(sub), acc, f1))
    return report


def random_encoder_like(encoder: ConvNeXtV2Encoder, seed: int) -> ConvNeXtV2Encoder:
    """An encoder of the same shape, randomly initialised with ``seed`` (the probe's baseline)."""
    torch.manual_seed(seed)
    return ConvNeXtV2Encoder(encoder.in_chans, encoder.variant, encoder.patch_size, encoder.mmearth_stem)
