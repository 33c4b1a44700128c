"""Reading checkpoints: an ``mmearth-data pretrain`` one, or an official MMEarth-train one (its sparse FCMAE
encoder, MinkowskiEngine names, or its dense ``convnextv2``), every failure one line: a checkpoint is a user's
file, loaded with ``weights_only=True`` and never with torch's advice to drop it."""
from __future__ import annotations

import math
import os
import pickle
import re
from pathlib import Path

import torch

from ..errors import MMEarthError, one_line
from .convnextv2 import VARIANTS, ConvNeXtV2Encoder
from .mpmae import ALL_TARGETS, MPMAE

ZIP_MAGIC, LEGACY_MAGIC = b"PK\x03\x04", b"\x80\x02"   # torch.save's zip format; its pre-1.6 pickle protocol 2


def read_checkpoint(path: Path, map_location, where: str) -> object:
    """``torch.load(weights_only=True)`` of a user's file, every failure one MMEarthError line.

    torch's refusal text advises retrying with weights_only=False, which would run whatever code the file holds;
    it is never passed on. A file in neither of torch.save's formats (an empty file, a bare pickle) is refused
    before torch reads it (an empty one would end in EOFError, which click reports as Ctrl-C)."""
    import argparse

    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as e:
        raise MMEarthError(f"{where}: cannot be read ({e.strerror or e})") from None
    if head != ZIP_MAGIC and head[:2] != LEGACY_MAGIC:
        what = "an empty file" if not head else "neither of torch.save's formats"
        raise MMEarthError(f"{where}: not a PyTorch checkpoint ({what})")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):   # MMEarth-train saves its args
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f"it refers to {found.group(1)}" if found else "its pickle holds more than tensors and plain data"
        raise MMEarthError(f"{where}: refused: {what}, which a checkpoint of weights never needs; "
                           "it was not loaded") from None
    except Exception as e:  # noqa: BLE001 - a truncated archive, a bad record: the user's file
        first = next((x for x in re.split(r"(?<=\.)\s+", one_line(e, 1000)) if "weights_only" not in x), "")
        raise MMEarthError(f"{where}: not a readable PyTorch checkpoint ({type(e).__name__}: "
                           f"{first[:200] or 'no detail'})") from None


def load_encoder(checkpoint: str | os.PathLike) -> torch.nn.Module:
    """The pretrained ConvNeXt V2 encoder of an MP-MAE checkpoint (ours, or an official MMEarth-train one), for
    fine-tuning or linear probing."""
    return load_encoder_and_size(checkpoint)[0]


def load_encoder_and_size(checkpoint: str | os.PathLike) -> tuple[ConvNeXtV2Encoder, int]:
    """(encoder, input size) of a checkpoint: an ``mmearth-data pretrain`` one, or one in MMEarth-train's layout
    (``{"model": state_dict}`` or a bare state dict; its sparse FCMAE encoder or its dense ``convnextv2``)."""
    path = Path(checkpoint)
    if not path.is_file():
        raise MMEarthError(f"--checkpoint {path}: no such file")
    state = read_checkpoint(path, "cpu", f"--checkpoint {path}")
    if isinstance(state, dict) and "config" in state and "model" in state:   # ours
        try:
            cfg = state["config"]
            model = MPMAE(cfg["model"], cfg["input_size"] // 7,
                          targets=tuple(cfg.get("targets") or _targets(state["model"])))
            model.load_state_dict(state["model"])
            return model.encoder, int(cfg["input_size"])
        except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:
            raise MMEarthError(f"--checkpoint {path}: an mmearth-data checkpoint whose config or weights do not "
                               f"fit together ({type(e).__name__}: {one_line(e, 200)})") from None
    weights = state.get("model", state) if isinstance(state, dict) else None
    if not isinstance(weights, dict) or not weights:
        raise MMEarthError(f"--checkpoint {path}: holds no state dict")
    encoder = encoder_from_mmearth_train(weights, str(path))
    return encoder, 7 * encoder.patch_size


def _dense_from_sparse(weights: dict) -> dict:
    """MinkowskiEngine names and shapes -> dense ones (what MMEarth-train's ``remap_checkpoint_keys`` does):
    ``kernel`` (k*k, in, out) or (k*k, dim) -> conv ``weight``; ``.ln.``/``.linear.`` wrappers dropped; (1, C)
    biases flattened; GRN (1, C) -> (1, 1, 1, C)."""
    out = {}
    for k, v in weights.items():
        parts = k.split(".")
        if parts[-1] == "kernel":
            ks = math.isqrt(v.shape[0])
            if v.ndim == 3:   # (k*k, in, out) -> (out, in, k, k)
                v = v.permute(2, 1, 0).reshape(v.shape[2], v.shape[1], ks, ks).transpose(3, 2)
            else:             # depthwise (k*k, dim) -> (dim, 1, k, k)
                v = v.permute(1, 0).reshape(v.shape[1], 1, ks, ks).transpose(3, 2)
            parts[-1] = "weight"
        elif len(parts) >= 2 and parts[-2] in ("ln", "linear"):
            parts.pop(-2)
        name = ".".join(parts)
        if name.endswith("bias") and v.ndim != 1:
            v = v.reshape(-1)
        elif ".grn." in name and v.ndim == 2:
            v = v[None, None]
        out[name] = v
    return out


STEM_NAMES = {"initial_conv.0": "stem.0", "initial_conv.1": "stem.1", "stem.0": "stem.3", "stem.1": "stem.4",
              "stem_orig.0": "stem.0", "stem_orig.1": "stem.1", "downsample_layers": "downsample"}


def encoder_from_mmearth_train(weights: dict, where: str = "checkpoint") -> ConvNeXtV2Encoder:
    """Our encoder from MMEarth-train's state dict: the names map one to one (``initial_conv`` + ``stem`` are our
    ``stem``, ``downsample_layers`` our ``downsample``); the variant, input channels and patch size are read from
    the shapes. Decoder, heads, mask token and a classifier head are ignored."""
    if any(k.endswith(".kernel") for k in weights):
        weights = _dense_from_sparse(weights)
    enc = {}
    for k, v in weights.items():
        k = k[len("encoder."):] if k.startswith("encoder.") else k
        if not k.startswith(("initial_conv.", "stem.", "stem_orig.", "downsample_layers.", "stages.")):
            continue   # proj, mask_token, decoder_dict, pred_dict, norm, head
        for old, new in STEM_NAMES.items():
            if k.startswith(old + "."):
                k = new + k[len(old):]
                break
        enc[k] = v
    try:
        dims = [enc[f"stages.{i}.0.dwconv.weight"].shape[0] for i in range(4)]
        depths = [len({k.split(".")[2] for k in enc if k.startswith(f"stages.{i}.")}) for i in range(4)]
        in_chans = enc["stem.0.weight"].shape[1]
    except KeyError as e:
        raise MMEarthError(f"{where}: not an MMEarth-train ConvNeXt V2 state dict (no {e.args[0]})") from None
    variant = next((name for name, (d, w) in VARIANTS.items() if d == depths and w == dims), None)
    if variant is None:
        raise MMEarthError(f"{where}: depths {depths} and widths {dims} match no ConvNeXt V2 variant")
    mmearth_stem = "stem.3.weight" in enc
    k = enc["stem.3.weight"].shape[-1] if mmearth_stem else enc["stem.0.weight"].shape[-1]
    encoder = ConvNeXtV2Encoder(in_chans, variant, 8 * k, mmearth_stem=mmearth_stem)
    try:
        missing, unexpected = encoder.load_state_dict(enc, strict=False)
    except RuntimeError as e:
        raise MMEarthError(f"{where}: state dict does not fit ConvNeXt V2 {variant} ({str(e).splitlines()[-1].strip()})"
                           ) from None
    if missing or unexpected:
        raise MMEarthError(f"{where}: state dict does not fit ConvNeXt V2 {variant}: missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]}")
    return encoder


def _targets(state: dict) -> tuple[str, ...]:
    return tuple(t for t in ALL_TARGETS if f"log_vars.{t}" in state)
