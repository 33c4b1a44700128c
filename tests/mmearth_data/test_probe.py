"""The linear probe's parts: the spatial hold-out when a dataset has no val/test split, the few-shot subsets, the
two solvers and the scores."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mmearth_data import MMEarthDataset, MMEarthError
from mmearth_data.models import ConvNeXtV2Encoder
from mmearth_data.models import probe as P


@pytest.fixture(scope="module")
def all_train(synthetic_dataset):
    return synthetic_dataset(48, 64, 2)   # v001's default: every row in train


def test_without_val_or_test_the_probe_holds_out_whole_blocks(all_train):
    ds = MMEarthDataset(all_train, split="all", modalities=["sentinel2"], crop=56)
    held = P.holdout(ds, seed=0)
    assert 0.2 <= held.mean() < 0.5 and np.array_equal(held, P.holdout(ds, seed=0))
    info = ds.files.tile_info
    block = lambda i: tuple(math.floor(float(info[ds._ids(int(ds.rows[i]))[0]][k])) for k in ("lon", "lat"))  # noqa: E731
    assert not {block(i) for i in np.flatnonzero(held)} & {block(i) for i in np.flatnonzero(~held)}
    enc = ConvNeXtV2Encoder(12, "atto", 8)
    rep = P.probe(str(all_train), enc, P.random_encoder_like(enc, 1), 56, "esa_majority", [0.5, 1.0], log=lambda s: None)
    assert "hold-out" in rep.eval_split and rep.eval_tiles == int(held.sum())
    assert rep.lines()[-1].startswith("probe esa_majority: pretrained ")
    rep = P.probe(str(all_train), enc, P.random_encoder_like(enc, 1), 56, "biome", log=lambda s: None)   # default
    assert rep.lines()[-1].startswith("probe biome: pretrained ")
    with pytest.raises(MMEarthError, match="--task"):
        P.probe(str(all_train), enc, enc, 56, "landcover", log=lambda s: None)


def test_few_shot_subsets_solvers_and_scores(monkeypatch):
    y = np.array([0] * 50 + [1] * 30 + [2] * 2)
    sub = P.few_shot_subset(y, 0.05, seed=0)
    assert set(y[sub]) == {0, 1, 2} and len(sub) == 4 and np.array_equal(sub, P.few_shot_subset(y, 0.05, seed=0))
    assert len(P.few_shot_subset(y, 1.0, seed=0)) == len(y)
    assert P.parse_fractions("1%,5%,100%") == [0.01, 0.05, 1.0]
    with pytest.raises(MMEarthError):
        P.parse_fractions("0%")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 5, generator=g)
    labels = (x @ torch.randn(5, 3, generator=g)).argmax(1)   # linearly separable
    exact = P.fit_linear(x, labels, 3, seed=0)
    monkeypatch.setattr(P, "LBFGS_MAX_TILES", 10)          # the minibatch SGD path of large sets
    sgd = P.fit_linear(x, labels, 3, seed=0)
    for head in (exact, sgd):
        assert (head(x).argmax(1) == labels).float().mean() > 0.9
    acc, f1 = P.scores(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]))
    assert acc == 0.75 and f1 == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
