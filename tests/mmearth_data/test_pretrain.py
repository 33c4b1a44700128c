"""``mmearth-data pretrain``: the loss falls on CPU, checkpoints round-trip, --resume continues the curve."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from mmearth_data.models import ConvNeXtV2Encoder
from mmearth_data.models.pretrain import PretrainConfig, embed, load_encoder, lr_at, pretrain


@pytest.fixture(scope="module")
def data64(synthetic_dataset):
    return synthetic_dataset(32, 64, 1)


def same_weights(a, b) -> None:
    wa, wb = (torch.load(p, weights_only=True)["model"] for p in (a, b))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_run_killed_before_its_checkpoint_resumes_to_the_same_log_and_weights(data64, tmp_path):
    """SIGKILL at the instant the second epoch's checkpoint is renamed into place (the child kills itself there):
    the log already holds that epoch's rows, the checkpoint is the first epoch's. --resume drops the rows after the
    checkpoint (they used to be appended twice) and runs the epoch again with its own order, crops and masks (it
    used to replay epoch 0's), ending with the log and weights of a run never killed."""
    import os
    import signal
    import subprocess
    import sys

    base = dict(data=str(data64), input_size=56, epochs=3, batch_size=8, warmup_epochs=0)
    run = tmp_path / "run"
    code = ("import os, signal, sys; from mmearth_data.models.pretrain import PretrainConfig, pretrain\n"
            "rename, seen = os.replace, []\n"
            "def replace(src, dst):\n"
            "    if str(dst).endswith('checkpoint.pt'):\n"
            "        seen.append(dst)\n"
            "        if len(seen) == 2: os.kill(os.getpid(), signal.SIGKILL)\n"
            "    rename(src, dst)\n"
            "os.replace = replace\n"
            f"pretrain(PretrainConfig(**{base!r}, out=sys.argv[1]))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", code, str(run)], env=env, timeout=600)
    assert proc.returncode == -signal.SIGKILL
    assert [int(r["step"]) for r in rows(run)] == list(range(1, 9))   # 8 rows logged, the checkpoint at step 4
    pretrain(PretrainConfig(**base, out=str(run)), resume=True)
    pretrain(PretrainConfig(**base, out=str(tmp_path / "straight")))
    assert (run / "losses.csv").read_bytes() == (tmp_path / "straight" / "losses.csv").read_bytes()
    same_weights(run / "checkpoint.pt", tmp_path / "straight" / "checkpoint.pt")


def rows(run) -> list[dict]:
    with open(run / "losses.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
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


@pytest.mark.slow
def test_checkpoint_round_trip_and_resume_continue_the_curve(data64, tmp_path):
    run = tmp_path / "run"
    base = dict(data=str(data64), out=str(run), input_size=56, epochs=3, batch_size=8, warmup_epochs=0)
    pretrain(PretrainConfig(**base, max_steps=5))
    with pytest.raises(Exception, match="--resume"):
        pretrain(PretrainConfig(**base, max_steps=5))
    pretrain(PretrainConfig(**base), resume=True)
    log = rows(run)
    # the epoch cut by --max-steps (after step 5, one micro-batch into epoch 1) goes on where it stopped: 3 x 4 steps
    assert [int(r["step"]) for r in log] == list(range(1, 13))
    lrs = [float(r["lr"]) for r in log]
    assert lrs == sorted(lrs, reverse=True)                            # one cosine schedule across the restart
    straight = tmp_path / "straight"
    pretrain(PretrainConfig(**{**base, "out": str(straight)}))
    assert (run / "losses.csv").read_bytes() == (straight / "losses.csv").read_bytes()   # same order, crops, masks
    same_weights(run / "checkpoint.pt", straight / "checkpoint.pt")
    enc = load_encoder(run / "checkpoint.pt")
    assert isinstance(enc, ConvNeXtV2Encoder) and enc.patch_size == 8
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert torch.equal(enc.stem[0].weight, state["model"]["encoder.stem.0.weight"])
    emb = embed(str(data64), str(run / "checkpoint.pt"))
    assert emb.shape == (32, 320) and torch.isfinite(emb).all()


def test_learning_rate_schedule():
    assert lr_at(0, 100, 10, 1.0) == 0 and lr_at(10, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(55, 100, 10, 1.0) == pytest.approx(0.5) and lr_at(100, 100, 10, 1.0) == pytest.approx(0.0)


@pytest.mark.slow
def test_default_warmup_accumulation_at_epoch_end_and_decay_groups(data64, tmp_path):
    """20 % warmup by default; 4 micro-batches per epoch with --accum 3 make steps of 3 and 1 (the remainder steps
    at the epoch end, scaled by its real size); weight decay spares biases, norms, the mask token and log_vars."""
    said = []
    cfg = PretrainConfig(data=str(data64), out=str(tmp_path / "run"), input_size=56, epochs=5, batch_size=8, accum=3)
    pretrain(cfg, log=said.append)
    log = rows(tmp_path / "run")
    assert [int(r["epoch"]) for r in log] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]   # 2 steps per epoch, none carried
    lrs = [float(r["lr"]) for r in log]
    assert lrs[0] == 0 and lrs[1] < lrs[2] and lrs[2] == max(lrs) and lrs[2:] == sorted(lrs[2:], reverse=True)
    assert "1 warmup epoch(s) (2 steps)" in said[0] and "last step of an epoch: 1 micro-batch" in said[0]
    from mmearth_data.models.mpmae import MPMAE
    from mmearth_data.models.pretrain import micro_batches, param_groups

    assert micro_batches(4, 3) == [3, 1] and micro_batches(6, 3) == [3, 3] and micro_batches(2, 4) == [2]
    model = MPMAE("atto", 8)
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    spared = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert "mask_token" in spared and all(f"log_vars.{t}" in spared for t in model.targets)
    assert "encoder.stages.0.0.grn.gamma" in spared and "encoder.stages.0.0.norm.weight" in spared
    assert "encoder.stages.0.0.pwconv1.bias" in spared and "encoder.stages.0.0.pwconv1.weight" not in spared
    assert {names[id(p)] for p in decay["params"]} == {n for n, p in model.named_parameters() if n not in spared}


def mmearth_train_layout(encoder: ConvNeXtV2Encoder, sparse: bool) -> dict:
    """Our encoder's weights in MMEarth-train's state dict layout: the dense ``convnextv2`` names, or (sparse) the
    FCMAE checkpoint's MinkowskiEngine names and shapes (``kernel`` (k*k, in, out), ``.ln.``, ``.linear.``, (1, C)
    biases and GRN parameters) under ``encoder.``, beside decoder weights the loader must ignore."""
    rename = {"stem.0": "initial_conv.0", "stem.1": "initial_conv.1", "stem.3": "stem.0", "stem.4": "stem.1",
              "downsample": "downsample_layers"}
    modules = dict(encoder.named_modules())
    out = {}
    for name, v in encoder.state_dict().items():
        owner, leaf = name.rsplit(".", 1)
        module = modules[owner]
        for old, new in rename.items():
            if name.startswith(old + "."):
                name = new + name[len(old):]
                break
        if not sparse:
            out[name] = v.clone()
            continue
        head = name.rsplit(".", 1)[0]
        if isinstance(module, torch.nn.Conv2d) and leaf == "weight":
            o, i, k, _ = v.shape
            kern = v.transpose(3, 2).reshape(o, i, k * k).permute(2, 1, 0)
            out[f"encoder.{head}.kernel"] = kern[:, 0, :].contiguous() if module.groups > 1 else kern.contiguous()
        elif isinstance(module, torch.nn.Conv2d):
            out[f"encoder.{name}"] = v.reshape(1, -1).clone()
        elif isinstance(module, torch.nn.LayerNorm):
            out[f"encoder.{head}.ln.{leaf}"] = v.clone()
        elif isinstance(module, torch.nn.Linear):
            out[f"encoder.{head}.linear.{leaf}"] = v.clone()
        else:   # GRN
            out[f"encoder.{name}"] = v.reshape(1, -1).clone()
    if sparse:
        out.update({"proj.weight": torch.zeros(512, 320, 1, 1), "mask_token": torch.zeros(1, 512, 1, 1),
                    "decoder_dict.sentinel2.0.dwconv.weight": torch.zeros(512, 1, 7, 7)})
    else:
        out.update({"norm.weight": torch.ones(320), "head.weight": torch.zeros(10, 320)})
    return out


@pytest.mark.parametrize("sparse", [True, False])
def test_official_mmearth_train_checkpoints_load_one_to_one(tmp_path, sparse):
    import argparse

    torch.manual_seed(3)
    ours = ConvNeXtV2Encoder(12, "atto", 8).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(0, 0.1)
    path = tmp_path / "checkpoint-199.pth"
    torch.save({"model": mmearth_train_layout(ours, sparse), "epoch": 199,
                "args": argparse.Namespace(model="convnextv2_atto", input_size=56, patch_size=8)}, path)
    enc = load_encoder(path).eval()
    assert enc.variant == "atto" and enc.patch_size == 8 and enc.in_chans == 12
    for (n, a), (_, b) in zip(ours.state_dict().items(), enc.state_dict().items()):
        assert torch.equal(a, b), n
    x = torch.randn(2, 12, 56, 56)
    with torch.no_grad():
        assert torch.equal(ours(x), enc(x))
    with pytest.raises(Exception, match="match no ConvNeXt V2 variant|not an MMEarth-train"):
        bad = {k: v for k, v in mmearth_train_layout(ours, sparse).items() if ".stages.3." not in f".{k}"}
        torch.save(bad, tmp_path / "bad.pth")
        load_encoder(tmp_path / "bad.pth")


@pytest.mark.e2e
@pytest.mark.slow
def test_mmearth64_build_pretrain_probe_as_a_user_runs_them(tmp_path):
    """The published MMEarth64 setting end to end through the CLI, at a size a test affords: build --tile-px 64,
    pretrain atto at --input-size 56 (8 px patches) on the train split, then probe the checkpoint against a
    random-init encoder on the val+test tiles with a few-shot curve. Whether pretraining learns what a random
    encoder does not needs a 600-tile build and 220 steps over several seeds: benchmarks/bench_pretrain.py."""
    import json
    import re

    from cli_runner import run_cli

    data = tmp_path / "b64"
    built = run_cli("build", "--size", "40", "--tile-px", "64", "--splits", "0.6,0.2,0.2", "--out", data)
    assert built.returncode == 0, built.stderr[-2000:]
    run = tmp_path / "run"
    # importing dask.distributed sets OMP_NUM_THREADS=1 in this process (its nanny's pre-spawn environment)
    threads = {k: "2" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    trained = run_cli("pretrain", "--data", data, "--input-size", "56", "--batch-size", "8", "--epochs", "2",
                      "--base-lr", "0.02", "--out", run, env=threads)
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert "schedule: 2 epoch(s) x 3 step(s)" in trained.stdout   # 24 train tiles, whole batches of 8
    log = rows(run)
    assert [int(r["step"]) for r in log] == list(range(1, 7)) and all(np.isfinite(float(r["total"])) for r in log)
    enc = load_encoder(run / "checkpoint.pt")
    assert enc.patch_size == 8 and enc.in_chans == 12 and enc.variant == "atto"
    probed = run_cli("probe", "--data", data, "--checkpoint", run / "checkpoint.pt", "--task",
                     "dynamic_world_majority", "--few-shot", "50%,100%", "--report", tmp_path / "probe.json",
                     env=threads)
    assert probed.returncode == 0, probed.stderr[-2000:]
    last = probed.stdout.strip().splitlines()[-1]
    m = re.fullmatch(r"probe dynamic_world_majority: pretrained ([0-9.]+) random-init ([0-9.]+) ratio ([0-9.]+)", last)
    assert m, last
    rep = json.loads((tmp_path / "probe.json").read_text())
    assert rep["eval_split"] == "val+test" and rep["eval_tiles"] == 16
    for arm in ("pretrained", "random_init"):
        assert [s["fraction"] for s in rep[arm]] == [0.5, 1.0]
        assert rep[arm][0]["train_tiles"] < rep[arm][1]["train_tiles"] <= 24
        assert all(0 <= s["accuracy"] <= 1 and 0 <= s["macro_f1"] <= 1 for s in rep[arm])
    assert float(m.group(1)) == round(rep["pretrained"][-1]["accuracy"], 3)
    assert float(m.group(2)) == round(rep["random_init"][-1]["accuracy"], 3)


def test_without_a_terminal_each_epoch_is_a_line(data64, tmp_path):
    """A batch job's log got the schedule and then nothing until the end: one line per epoch now."""
    lines: list[str] = []
    pretrain(PretrainConfig(data=str(data64), out=str(tmp_path / "run"), input_size=56, epochs=2, batch_size=8),
             log=lines.append)
    epochs = [x for x in lines if x.startswith("epoch ")]
    assert [x.split(",")[0] for x in epochs] == ["epoch 1/2: step 4/8", "epoch 2/2: step 8/8"], lines
