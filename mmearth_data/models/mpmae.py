"""MP-MAE (Nedungadi et al., ECCV 2024): a masked ConvNeXt V2 encoder, a shared decoder block, one head per
target modality, and NaN-aware per-modality losses combined by learned uncertainty weighting.

Reference: ``vishalned/MMEarth-train`` ``models/fcmae.py`` and ``custom_loss.py`` (Nedungadi et al., ECCV 2024, §4).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .convnextv2 import Block, ConvNeXtV2Encoder, random_mask

PIXEL_TARGETS = {"sentinel2": 12, "sentinel1": 8, "aster": 2, "canopy_height_eth": 2}
PIXEL_CLASSES = {"dynamic_world": 9, "esa_worldcover": 11}
IMAGE_CLASSES = {"biome": 14, "eco_region": 846}
IMAGE_TARGETS = {"era5": 12, "lat": 2, "lon": 2, "month": 2}
ALL_TARGETS = (*PIXEL_TARGETS, *PIXEL_CLASSES, *IMAGE_CLASSES, *IMAGE_TARGETS)
S2_INPUT = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12]   # B1..B12 without B10 (index 10)


class MPMAE(nn.Module):
    def __init__(self, variant: str = "atto", patch_size: int = 16, in_chans: int = 12,
                 targets: Sequence[str] = ALL_TARGETS, decoder_dim: int = 512, mask_ratio: float = 0.6,
                 loss_aggr: str = "uncertainty", norm_pix_loss: bool = True):
        super().__init__()
        unknown = [t for t in targets if t not in ALL_TARGETS]
        if unknown:
            raise ValueError(f"unknown target modalities {unknown}; choose from {ALL_TARGETS}")
        self.patch_size, self.mask_ratio, self.targets = patch_size, mask_ratio, tuple(targets)
        self.loss_aggr, self.norm_pix_loss = loss_aggr, norm_pix_loss
        self.encoder = ConvNeXtV2Encoder(in_chans, variant, patch_size)
        self.proj = nn.Conv2d(self.encoder.out_channels, decoder_dim, 1)
        self.mask_token = nn.Parameter(torch.zeros(1, decoder_dim, 1, 1))
        self.decoder = Block(decoder_dim)              # one block, shared by every modality (as the reference)
        p2 = patch_size * patch_size
        self.pixel_heads = nn.ModuleDict(
            {t: nn.Conv2d(decoder_dim, p2 * c, 1) for t, c in {**PIXEL_TARGETS, **PIXEL_CLASSES}.items() if t in targets})
        self.image_norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.image_heads = nn.ModuleDict(
            {t: nn.Linear(decoder_dim, c) for t, c in {**IMAGE_CLASSES, **IMAGE_TARGETS}.items() if t in targets})
        self.log_vars = nn.ParameterDict({t: nn.Parameter(torch.zeros(())) for t in self.targets})
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """``x``: (B, in_chans, H, W) with H = 7 * patch_size. Returns predictions per target and the mask."""
        grid = x.shape[-1] // self.patch_size
        if mask is None:
            mask = random_mask(x.shape[0], grid, self.mask_ratio, device=x.device)
        z = self.proj(self.encoder(x, mask))
        m = mask[:, None].to(z.dtype)
        z = self.decoder(z * (1 - m) + self.mask_token * m)
        out = {t: F.pixel_shuffle(head(z), self.patch_size) for t, head in self.pixel_heads.items()}
        pooled = self.image_norm(z.mean(dim=(2, 3)))
        out.update({t: head(pooled) for t, head in self.image_heads.items()})
        return out, mask

    def losses(self, preds: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor],
               mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-target losses: pixel targets on masked patches only, NaN and -1 ignored."""
        pixel_mask = mask.repeat_interleave(self.patch_size, 1).repeat_interleave(self.patch_size, 2).bool()
        out = {}
        for t in self.targets:
            pred, target = preds[t], batch[t]
            if t == "sentinel2" and target.shape[1] == 13:
                target = target[:, S2_INPUT]  # the 12 bands the model reconstructs (B10 is empty on L2A)
            if t in PIXEL_TARGETS:
                out[t] = masked_mse(pred, target, pixel_mask, self.patch_size,
                                    norm_pix=t == "sentinel2" and self.norm_pix_loss)
            elif t in PIXEL_CLASSES:
                labels = target[:, 0].long().masked_fill(~pixel_mask, -1)
                out[t] = _ce(pred, labels)
            elif t in IMAGE_CLASSES:
                labels = target.long() if target.dim() == 1 else target.argmax(dim=1)
                out[t] = _ce(pred, labels)
            else:
                valid = torch.isfinite(target)
                out[t] = ((pred - torch.nan_to_num(target)) ** 2)[valid].mean() if valid.any() else pred.sum() * 0
        return out

    def total_loss(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Uncertainty weighting (Kendall et al.): sum of exp(-s) * L + s; a task whose loss is exactly 0 adds 0."""
        if self.loss_aggr == "unweighted":
            return sum(losses.values())
        total = 0.0
        for t, loss in losses.items():
            s = self.log_vars[t]
            total = total + torch.where(loss == 0, torch.zeros_like(loss), torch.exp(-s) * loss + s)
        return total


def masked_mse(pred: torch.Tensor, target: torch.Tensor, pixel_mask: torch.Tensor, patch: int,
               norm_pix: bool = False) -> torch.Tensor:
    """MMEarth-train's continuous pixel loss: squared error averaged per patch over its finite values, then over
    the masked patches that have any. ``norm_pix`` (``norm_pix_loss``) first normalises each patch's p*p*C target
    values (flattened over all channels, as FCMAE's ``patchify``): minus their mean, over sqrt(unbiased variance
    + 1e-6), the statistics taken over the finite values."""
    p = patch
    t, q = _patches(target, p), _patches(pred, p)           # (B, L, p*p*C)
    finite = torch.isfinite(t)
    t0 = torch.nan_to_num(t, nan=0.0, posinf=0.0, neginf=0.0)
    if norm_pix:
        n = finite.sum(-1, keepdim=True)
        mean = (t0 * finite).sum(-1, keepdim=True) / n.clamp(min=1)
        var = (((t0 - mean) * finite) ** 2).sum(-1, keepdim=True) / (n - 1).clamp(min=1)
        t0 = (t0 - mean) / (var + 1e-6).sqrt()
    err = ((q - t0) ** 2) * finite
    count = finite.sum(-1)
    per_patch = err.sum(-1) / count.clamp(min=1)
    masked = _patches(pixel_mask[:, None].float(), p)[..., 0] > 0   # (B, L)
    use = masked & (count > 0)
    if not use.any():
        return pred.sum() * 0
    return per_patch[use].mean()


def _patches(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, L, p*p*C), FCMAE's ``patchify`` order (row, column, then channel fastest)."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(b, (h // p) * (w // p), p * p * c)


def _ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if not (labels >= 0).any():
        return logits.sum() * 0
    return F.cross_entropy(logits, labels, ignore_index=-1)


def random_crop(batch: Mapping[str, torch.Tensor], size: int, generator: torch.Generator | None = None) -> dict:
    """One crop window per sample, shared by every pixel modality of that sample (as kornia's RandomCrop with
    shared parameters in the reference)."""
    ref = batch["sentinel2"]
    h, w = ref.shape[-2:]
    out = dict(batch)
    b = ref.shape[0]
    tops = torch.randint(0, h - size + 1, (b,), generator=generator)
    lefts = torch.randint(0, w - size + 1, (b,), generator=generator)
    for k, v in batch.items():
        if isinstance(v, torch.Tensor) and v.dim() == 4 and v.shape[-2:] == (h, w):
            out[k] = torch.stack([v[i, :, t:t + size, l:l + size] for i, (t, l) in enumerate(zip(tops, lefts))])
    return out


def model_input(batch: Mapping[str, torch.Tensor], bands: Sequence[int] = S2_INPUT) -> torch.Tensor:
    """Sentinel-2's 12 bands (B10 dropped), no-data (NaN/inf) as 0 after z-scoring, as in the reference."""
    return torch.nan_to_num(batch["sentinel2"][:, list(bands)], nan=0.0, posinf=0.0, neginf=0.0)
