"""The training commands: pretrain, probe, embed (they need the train extra: torch)."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from ..errors import MMEarthError
from .base import OutputDir, OutputFile, cli, resumable


@cli.command("pretrain")
@click.option("--data", type=click.Path(path_type=Path), required=True, help="A v001 dataset directory.")
@click.option("--out", type=OutputDir(), required=True, help="Run directory (checkpoint, losses).")
@click.option("--model", type=click.Choice(["atto", "femto", "pico", "nano", "tiny"]), default="atto",
              show_default=True, help="ConvNeXt V2 size of the encoder.")
@click.option("--input-size", type=click.Choice(["112", "56"]), default="112", show_default=True,
              help="Crop size: 112 with 16 px patches (128 px data) or 56 with 8 px patches (64 px data).")
@click.option("--epochs", type=click.IntRange(min=1), default=1, show_default=True, help="Passes over the train split.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Samples per step (per accumulation step with --accum).")
@click.option("--accum", type=click.IntRange(min=1), default=1, show_default=True, help="Gradient accumulation steps.")
@click.option("--base-lr", type=float, default=1.5e-4, show_default=True, help="lr = base-lr x effective batch / 256.")
@click.option("--warmup-epochs", type=click.FloatRange(min=0), help="Linear warmup (default: 20 % of --epochs, the "
              "paper's 40 of 200).")
@click.option("--loss", "loss_aggr", type=click.Choice(["uncertainty", "unweighted"]), default="uncertainty",
              show_default=True, help="How the pretext tasks' losses are summed: uncertainty-weighted (MMEarth's) or "
              "plain.")
@click.option("--loader-workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="DataLoader worker processes (0: read in the training process).")
@click.option("--workers", "loader_workers", type=click.IntRange(min=0), hidden=True)   # the earlier name
@click.option("--max-steps", type=click.IntRange(min=1), help="Stop after this many optimizer steps.")
@click.option("--targets", "targets_text", help="Comma-separated target modalities (default: all 12), e.g. "
              "sentinel2,dynamic_world,biome.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the weights, masks and data order.")
@click.option("--resume", is_flag=True, help="Continue from --out/checkpoint.pt.")
def pretrain_cmd(data, out, model, input_size, epochs, batch_size, accum, base_lr, warmup_epochs, loss_aggr,
                 loader_workers, max_steps, targets_text, seed, resume) -> None:
    """Pretrain MP-MAE (dense ConvNeXt V2, all MMEarth pretext tasks) on CPU or GPU."""
    from ..models.mpmae import ALL_TARGETS
    from ..models.pretrain import PretrainConfig, pretrain

    targets = tuple(t.strip() for t in targets_text.split(",") if t.strip()) if targets_text else ALL_TARGETS
    unknown = [t for t in targets if t not in ALL_TARGETS]
    if unknown:
        raise MMEarthError(f"--targets: unknown modalities {unknown}; choose from {', '.join(ALL_TARGETS)}")

    cfg = PretrainConfig(data=str(data), out=str(out), model=model, input_size=int(input_size), epochs=epochs,
                         batch_size=batch_size, accum=accum, base_lr=base_lr, warmup_epochs=warmup_epochs,
                         loss_aggr=loss_aggr, loader_workers=loader_workers, seed=seed, max_steps=max_steps,
                         targets=targets)
    result = resumable(pretrain, cfg, resume_flag=True, resume=resume, progress=sys.stderr.isatty(), log=click.echo)
    click.echo(f"{result['steps']} steps; checkpoint {result['checkpoint']}; losses in {out / 'losses.csv'}")


@cli.command("probe")
@click.option("--data", type=click.Path(path_type=Path), required=True, help="A v001 dataset directory.")
@click.option("--checkpoint", type=click.Path(path_type=Path), required=True,
              help="An mmearth-data pretrain checkpoint, or an official MMEarth-train one (its state dict layout).")
@click.option("--task", type=click.Choice(["biome", "eco_region", "dynamic_world_majority", "esa_majority"]),
              default="biome", show_default=True, help="The class target: a one-hot label, or a map's majority class.")
@click.option("--few-shot", "few_shot", help="Train shares for a label-efficiency curve, e.g. 1%,5%,100%.")
@click.option("--input-size", type=click.IntRange(min=8), help="Crop for the encoder (default: the checkpoint's).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the random-init baseline, subsets, "
              "the hold-out and the classifier.")
@click.option("--report", "json_out", type=OutputFile("JSON", b"{"), help="Also write the scores here (JSON).")
@click.option("--json", "json_out", type=OutputFile("JSON", b"{"), hidden=True)   # the earlier name of --report
def probe_cmd(data, checkpoint, task, few_shot, input_size, seed, json_out) -> None:
    """Linear probe of a frozen encoder against the same probe on a randomly initialised one.

    Embeds every tile (global average pool of the last stage), fits a linear classifier on the train split and
    reports accuracy and macro-F1 on val/test (or a seeded spatial hold-out). The last line reads
    `probe <task>: pretrained <acc> random-init <acc> ratio <r>`."""
    from dataclasses import asdict

    import torch

    from ..io_utils import atomic_write_json
    from ..models.pretrain import load_encoder_and_size
    from ..models.probe import parse_fractions, probe, random_encoder_like

    torch.manual_seed(seed)
    encoder, size = load_encoder_and_size(checkpoint)
    report = probe(str(data), encoder, random_encoder_like(encoder, seed), input_size or size, task,
                   parse_fractions(few_shot), seed, log=click.echo)
    for line in report.lines():
        click.echo(line)
    if json_out:
        atomic_write_json(json_out, asdict(report), indent=1)


@cli.command("embed")
@click.option("--data", type=click.Path(path_type=Path), required=True, help="A v001 dataset directory.")
@click.option("--checkpoint", type=click.Path(path_type=Path), required=True, help="A pretrain checkpoint.")
@click.option("--out", type=OutputFile("NumPy .npy", b"\x93NUMPY"), required=True,
              help="Output .npy (tiles x channels).")
def embed_cmd(data, checkpoint, out) -> None:
    """Pooled encoder embeddings of every tile of a dataset."""
    import io

    import numpy as np

    from ..io_utils import atomic_write_bytes
    from ..models.pretrain import embed

    emb = embed(str(data), str(checkpoint)).numpy()
    buf = io.BytesIO()
    np.save(buf, emb)
    atomic_write_bytes(out, buf.getvalue())
    click.echo(f"wrote {out} {emb.shape}")
