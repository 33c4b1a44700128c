"""ConvNeXt V2 (Woo et al., CVPR 2023) in plain PyTorch, with FCMAE masking done densely.

The original MP-MAE encoder is a sparse ConvNeXt V2 (MinkowskiEngine): masked positions do not exist, so no
operation sees them. Densely, convolutions see masked positions as zeros (as a sparse convolution sums over active
neighbours only), but every bias and norm makes them non-zero again. So the mask is applied to the input, again
right after the stem's last LayerNorm, right before every GRN (whose global L2 statistic pools over space and
must count visible positions only, as ``MinkowskiGRN`` does) and after every block. Per-position operations
(LayerNorm, the pointwise linears, GELU) may leave values at masked positions: nothing reads them before the next
re-mask, and the downsampling convolutions' 2x2 windows never straddle a patch border. Masked positions of every
stage output are exactly zero, and visible outputs do not depend on masked inputs or on any parameter's value
there - what the sparse network guarantees - without a compiled extension. Depths and widths: the ConvNeXt V2
paper (Woo et al., CVPR 2023), Table 1.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

VARIANTS = {
    "atto": ([2, 2, 6, 2], [40, 80, 160, 320]),
    "femto": ([2, 2, 6, 2], [48, 96, 192, 384]),
    "pico": ([2, 2, 6, 2], [64, 128, 256, 512]),
    "nano": ([2, 2, 8, 2], [80, 160, 320, 640]),
    "tiny": ([3, 3, 9, 3], [96, 192, 384, 768]),
}


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel axis of (B, C, H, W)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias,
                            self.eps).permute(0, 3, 1, 2)


class GRN(nn.Module):
    """Global response normalization (channels last)."""

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gx = torch.norm(x, p=2, dim=(1, 2), keepdim=True)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
        return self.gamma * (x * nx) + self.beta + x


class Block(nn.Module):
    def __init__(self, dim: int, drop_path: float = 0.0):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.grn = GRN(4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        y = self.act(self.pwconv1(self.norm(self.dwconv(x).permute(0, 2, 3, 1))))
        if keep is not None:  # GRN pools over space: only visible positions may count (biases made the rest non-zero)
            y = y * keep.permute(0, 2, 3, 1)
        y = self.pwconv2(self.grn(y)).permute(0, 3, 1, 2)
        if self.training and self.drop_path > 0:
            survive = torch.rand(x.shape[0], 1, 1, 1, device=x.device) >= self.drop_path
            y = y * survive / (1 - self.drop_path)
        out = x + y
        return out if keep is None else out * keep


class ConvNeXtV2Encoder(nn.Module):
    """Four stages; total stride = ``patch_size`` so the last feature map is the patch grid.

    ``mmearth_stem=True`` (MMEarth's ``use_orig_stem=False``): 3x3 conv (stride 1) + LN + GELU, then a depthwise
    conv with kernel = stride = patch_size / 8 + LN. ``False``: the original 4x4 / stride-4 patchify stem.
    """

    def __init__(self, in_chans: int = 12, variant: str = "atto", patch_size: int = 16, mmearth_stem: bool = True,
                 drop_path: float = 0.0):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant {variant!r}: one of {', '.join(VARIANTS)}")
        depths, dims = VARIANTS[variant]
        self.dims, self.patch_size = dims, patch_size
        self.in_chans, self.variant, self.mmearth_stem = in_chans, variant, mmearth_stem
        if mmearth_stem:
            k = patch_size // 8
            self.stem = nn.Sequential(nn.Conv2d(in_chans, dims[0], 3, padding=1), LayerNorm2d(dims[0], eps=1e-6),
                                      nn.GELU(), nn.Conv2d(dims[0], dims[0], k, stride=k, groups=dims[0]),
                                      LayerNorm2d(dims[0], eps=1e-6))
        else:
            self.stem = nn.Sequential(nn.Conv2d(in_chans, dims[0], 4, stride=4), LayerNorm2d(dims[0], eps=1e-6))
        self.downsample = nn.ModuleList(
            [nn.Sequential(LayerNorm2d(dims[i], eps=1e-6), nn.Conv2d(dims[i], dims[i + 1], 2, stride=2))
             for i in range(3)])
        rates = torch.linspace(0, drop_path, sum(depths)).tolist()
        self.stages = nn.ModuleList()
        k = 0
        for i in range(4):
            self.stages.append(nn.ModuleList([Block(dims[i], rates[k + j]) for j in range(depths[i])]))
            k += depths[i]
        self.apply(_init)

    @property
    def out_channels(self) -> int:
        return self.dims[-1]

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``mask``: (B, h, w) with 1 = masked, on the patch grid (h = H / patch_size)."""
        keep_at = (lambda size: None) if mask is None else (
            lambda size: 1.0 - F.interpolate(mask[:, None].float(), size=size, mode="nearest"))
        keep = keep_at(x.shape[-2:])
        if keep is not None:
            x = x * keep
        x = self.stem(x)   # its last LayerNorm gives masked positions its bias: masked again below (i = 0)
        for i, blocks in enumerate(self.stages):
            if i:
                x = self.downsample[i - 1](x)
            keep = keep_at(x.shape[-2:])
            if keep is not None:
                x = x * keep
            for block in blocks:
                x = block(x, keep)
        return x


def _init(m: nn.Module) -> None:
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def random_mask(batch: int, grid: int, ratio: float, generator: torch.Generator | None = None,
                device=None) -> torch.Tensor:
    """(B, grid, grid), 1 = masked: FCMAE's ``gen_random_mask`` keeps ``int(L * (1 - ratio))`` patches and masks the
    rest (30 of 49 at 0.6)."""
    n = grid * grid
    k = n - int(n * (1 - ratio))
    noise = torch.rand(batch, n, generator=generator, device=device)
    order = noise.argsort(dim=1)
    mask = torch.zeros(batch, n, device=device)
    mask.scatter_(1, order[:, :k], 1.0)
    return mask.view(batch, grid, grid)
