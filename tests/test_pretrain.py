"""``mmearth-data pretrain``: the loss falls on CPU, checkpoints round-trip, --resume continues the curve."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from mmearth_data.models import ConvNeXtV2Encoder
from mmearth_data.models.pretrain import PretrainConfig, embed, load_encoder, lr_at, pretrain
from mmearth_data.sample_data import write_sample_dataset


@pytest.fixture(scope="module")
def data64(tmp_path_factory):
    root = tmp_path_factory.mktemp("pt")
    write_sample_dataset(root, 32, tile_px=64, seed=1)
    return root


def rows(run) -> list[dict]:
    with open(run / "losses.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_loss_falls_on_cpu(data64, tmp_path):
    torch.set_num_threads(2)
    cfg = PretrainConfig(data=str(data64), out=str(tmp_path / "run"), input_size=56, epochs=100, batch_size=8,
                         base_lr=0.05, max_steps=60, loss_aggr="unweighted")
    result = pretrain(cfg)
    log = rows(tmp_path / "run")
    assert result["steps"] == 60 and len(log) == 60
    first = np.mean([float(r["total"]) for r in log[:3]])
    last = np.mean([float(r["total"]) for r in log[-10:]])
    assert last < 0.85 * first, (first, last)
    assert (tmp_path / "run" / "losses.png").read_bytes()[:4] == b"\x89PNG"


def test_checkpoint_round_trip_and_resume_continue_the_curve(data64, tmp_path):
    run = tmp_path / "run"
    base = dict(data=str(data64), out=str(run), input_size=56, epochs=3, batch_size=8)
    pretrain(PretrainConfig(**base, max_steps=5))
    with pytest.raises(Exception, match="--resume"):
        pretrain(PretrainConfig(**base, max_steps=5))
    pretrain(PretrainConfig(**base), resume=True)
    log = rows(run)
    # the epoch cut by --max-steps (step 5) is run again from its start: 5 + 2 full epochs of 4 steps
    assert [int(r["step"]) for r in log] == list(range(1, 14))
    lrs = [float(r["lr"]) for r in log]
    assert lrs == sorted(lrs, reverse=True)                            # one cosine schedule across the restart
    enc = load_encoder(run / "checkpoint.pt")
    assert isinstance(enc, ConvNeXtV2Encoder) and enc.patch_size == 8
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert torch.equal(enc.stem[0].weight, state["model"]["encoder.stem.0.weight"])
    emb = embed(str(data64), str(run / "checkpoint.pt"))
    assert emb.shape == (32, 320) and torch.isfinite(emb).all()


def test_learning_rate_schedule():
    assert lr_at(0, 100, 10, 1.0) == 0 and lr_at(10, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(55, 100, 10, 1.0) == pytest.approx(0.5) and lr_at(100, 100, 10, 1.0) == pytest.approx(0.0)
