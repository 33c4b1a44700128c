"""ConvNeXt V2 encoder: reference parameter counts, shapes, and dense masking that behaves like sparse convs."""
from __future__ import annotations

import pytest
import torch

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


def test_random_mask_ratio_and_seed():
    m = random_mask(4, 7, 0.6, generator=torch.Generator().manual_seed(3))
    assert m.shape == (4, 7, 7) and (m.sum((1, 2)) == 29).all()
    assert torch.equal(m, random_mask(4, 7, 0.6, generator=torch.Generator().manual_seed(3)))
