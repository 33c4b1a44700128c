"""ConvNeXt V2 encoder: reference parameter counts, shapes, and dense masking that behaves like sparse convs."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmearth_data.models import ConvNeXtV2Encoder, random_mask
from mmearth_data.models.convnextv2 import GRN

# ConvNeXt V2 paper (Woo et al. 2023), ImageNet-1k models: 3-channel 4x4 stem + 1000-class head, in millions
REFERENCE_M = {"atto": 3.7, "femto": 5.2, "pico": 9.1, "nano": 15.6, "tiny": 28.6}


@pytest.mark.parametrize("variant", sorted(REFERENCE_M))
def test_parameter_counts_match_the_reference(variant):
    enc = ConvNeXtV2Encoder(3, variant, mmearth_stem=False)
    head = 2 * enc.out_channels + (enc.out_channels + 1) * 1000          # final LayerNorm + linear classifier
    total = sum(p.numel() for p in enc.parameters()) + head
    assert round(total / 1e6, 1) == REFERENCE_M[variant]


@pytest.mark.parametrize("size, patch", [(112, 16), (56, 8)])
def test_the_last_feature_map_is_the_7x7_patch_grid(size, patch):
    enc = ConvNeXtV2Encoder(12, "atto", patch)
    out = enc(torch.randn(2, 12, size, size), random_mask(2, 7, 0.6))
    assert out.shape == (2, 320, 7, 7)


def test_masked_inputs_carry_no_signal():
    torch.manual_seed(0)
    enc = ConvNeXtV2Encoder(12, "atto", 16).eval()
    for m in enc.modules():  # GRN starts as the identity: give it weight so its global statistics are tested
        if isinstance(m, GRN):
            m.gamma.data.normal_(0, 0.5)
    x = torch.randn(1, 12, 112, 112)
    mask = random_mask(1, 7, 0.6, generator=torch.Generator().manual_seed(1))
    y = x.clone()
    masked = mask[0].repeat_interleave(16, 0).repeat_interleave(16, 1).bool()
    y[:, :, masked] = torch.randn(int(masked.sum()) * 12).view(12, -1)[None]   # change only masked pixels
    with torch.no_grad():
        a, b = enc(x, mask), enc(y, mask)
    visible = ~mask[0].bool()
    assert torch.allclose(a[..., visible], b[..., visible], atol=1e-6)
    assert (a[..., mask[0].bool()] == 0).all()                              # masked positions stay empty
    with torch.no_grad():
        c = enc(x)                                                          # no mask: every pixel counts
    assert not torch.allclose(c[..., visible], a[..., visible])


def test_grn_statistics_count_visible_positions_only_whatever_the_biases():
    """With every bias, LayerNorm and GRN parameter random and non-zero, masked positions are zero wherever GRN
    pools over space, and visible outputs do not depend on masked inputs (the sparse encoder's guarantee)."""
    torch.manual_seed(0)
    enc = ConvNeXtV2Encoder(12, "atto", 16).eval()
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if p.ndim == 1 or name.endswith((".gamma", ".beta")):
                p.normal_(0.3, 0.5)
    seen: list[torch.Tensor] = []
    for m in enc.modules():
        if isinstance(m, GRN):
            m.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    mask = random_mask(2, 7, 0.6, generator=torch.Generator().manual_seed(4))
    x = torch.randn(2, 12, 112, 112)
    y = x.clone()
    px = mask.repeat_interleave(16, 1).repeat_interleave(16, 2).bool()
    y[px[:, None].expand_as(y)] = torch.randn(int(px.sum()) * 12)
    with torch.no_grad():
        a = enc(x, mask)
        grn_inputs = list(seen)
        b = enc(y, mask)
    assert len(grn_inputs) == sum(len(s) for s in enc.stages)
    for t in grn_inputs:   # (B, H, W, C): each stage's GRN input is exactly zero at masked positions
        at = F.interpolate(mask[:, None], size=t.shape[1:3], mode="nearest")[:, 0].bool()
        assert (t[at] == 0).all() and (t[~at] != 0).any()
    visible = ~mask.bool()
    assert torch.allclose(a.permute(0, 2, 3, 1)[visible], b.permute(0, 2, 3, 1)[visible], atol=1e-5)
    assert (a.permute(0, 2, 3, 1)[mask.bool()] == 0).all()


def test_random_mask_ratio_and_seed():
    m = random_mask(4, 7, 0.6, generator=torch.Generator().manual_seed(3))
    assert m.shape == (4, 7, 7) and (m.sum((1, 2)) == 30).all()   # FCMAE keeps int(49 * 0.4) = 19
    assert torch.equal(m, random_mask(4, 7, 0.6, generator=torch.Generator().manual_seed(3)))


from mmearth_data.models import ALL_TARGETS, MPMAE, model_input, random_crop  # noqa: E402


def fake_batch(b: int, px: int) -> dict:
    g = torch.Generator().manual_seed(0)
    batch = {"sentinel2": torch.randn(b, 13, px, px, generator=g), "sentinel1": torch.randn(b, 8, px, px, generator=g),
             "aster": torch.randn(b, 2, px, px, generator=g), "canopy_height_eth": torch.randn(b, 2, px, px, generator=g),
             "dynamic_world": torch.randint(-1, 9, (b, 1, px, px), generator=g),
             "esa_worldcover": torch.randint(-1, 11, (b, 1, px, px), generator=g),
             "biome": torch.randint(0, 14, (b,), generator=g), "eco_region": torch.randint(0, 846, (b,), generator=g),
             "era5": torch.randn(b, 12, generator=g), "lat": torch.randn(b, 2, generator=g),
             "lon": torch.randn(b, 2, generator=g), "month": torch.randn(b, 2, generator=g)}
    batch["sentinel1"][:, 2:4] = float("nan")          # absent polarisations
    batch["era5"][0] = float("nan")
    return batch


@pytest.mark.parametrize("size, patch", [(112, 16), (56, 8)])
def test_every_head_has_the_right_shape(size, patch):
    model = MPMAE("atto", patch)
    batch = random_crop(fake_batch(2, size + 16), size, generator=torch.Generator().manual_seed(0))
    preds, mask = model(model_input(batch))
    assert mask.shape == (2, 7, 7)
    want = {"sentinel2": 12, "sentinel1": 8, "aster": 2, "canopy_height_eth": 2, "dynamic_world": 9,
            "esa_worldcover": 11}
    for t, c in want.items():
        assert preds[t].shape == (2, c, size, size)
    for t, c in {"biome": 14, "eco_region": 846, "era5": 12, "lat": 2, "lon": 2, "month": 2}.items():
        assert preds[t].shape == (2, c)
    assert set(preds) == set(ALL_TARGETS)


def test_losses_ignore_nan_and_minus_one_and_weight_by_uncertainty():
    model = MPMAE("atto", 8)
    batch = fake_batch(2, 56)
    preds, mask = model(model_input(batch))
    losses = model.losses(preds, batch, mask)
    assert all(torch.isfinite(v) for v in losses.values())
    empty = dict(batch, dynamic_world=torch.full_like(batch["dynamic_world"], -1),
                 aster=torch.full_like(batch["aster"], float("nan")))
    zero = model.losses(preds, empty, mask)
    assert zero["dynamic_world"] == 0 and zero["aster"] == 0
    with torch.no_grad():
        model.log_vars["biome"].fill_(1.0)
    total = model.total_loss(zero)
    expected = sum(torch.exp(-model.log_vars[t]) * v + model.log_vars[t] for t, v in zero.items() if v != 0)
    assert torch.allclose(total, expected)
    total.backward()                                       # gradients flow to every head and the log-variances
    assert model.log_vars["biome"].grad is not None


def test_norm_pix_loss_is_fcmae_s_per_patch_normalisation():
    """Against MMEarth-train's forward_loss for sentinel2 (finite targets): patchify to p*p*C, per-patch mean and
    unbiased variance, (t - mean) / sqrt(var + 1e-6), squared error averaged per patch, then over masked patches."""
    from mmearth_data.models.mpmae import masked_mse

    g = torch.Generator().manual_seed(0)
    p, c = 8, 12
    imgs = torch.randn(2, c, 56, 56, generator=g) * 3 + 1
    pred = torch.randn(2, c, 56, 56, generator=g)
    mask = random_mask(2, 7, 0.6, generator=g)
    pix = mask.repeat_interleave(p, 1).repeat_interleave(p, 2).bool()

    def patchify(x):
        x = x.reshape(2, c, 7, p, 7, p)
        return torch.einsum("nchpwq->nhwpqc", x).reshape(2, 49, p * p * c)

    target = patchify(imgs)
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
    loss = ((patchify(pred) - target) ** 2).mean(-1)
    want = (loss * mask.view(2, 49)).sum() / mask.sum()
    assert torch.allclose(masked_mse(pred, imgs, pix, p, norm_pix=True), want, rtol=1e-5)
    plain = (((patchify(pred) - patchify(imgs)) ** 2).mean(-1) * mask.view(2, 49)).sum() / mask.sum()
    assert torch.allclose(masked_mse(pred, imgs, pix, p), plain, rtol=1e-5)
