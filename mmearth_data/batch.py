"""``Normalize``: the per-sample conversions of :class:`MMEarthDataset` applied to a whole batch, on its device.

With ``MMEarthDataset(stored_dtypes=True)`` the DataLoader workers only read, inflate and crop: pixel modalities
travel in their stored dtypes (Sentinel-2's uint16 is half of float32; a land-cover map's uint8 an eighth of
int64) and the float conversion, no-data to NaN, z-scoring (statistics chosen per tile by its Sentinel-2 type) and
class lookup run once per batch, on the GPU in training. The result equals, bit for bit, what the dataset returns
per sample without the option.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .catalog import S2_TYPES


class Normalize(nn.Module):
    """Maps a collated batch of ``stored_dtypes`` samples (with ``"s2_type"``: 0 l1c, 1 l2a, 2 another) to model
    inputs."""

    def __init__(self, dataset) -> None:
        super().__init__()
        self.names = list(dataset.deferred)
        self.kinds: dict[str, str] = {}
        self.missing: dict[str, list] = {}
        for m in self.names:
            t = dataset.transforms[m]
            self.kinds[m] = t.kind
            self.missing[m] = t.ds.missing_values_in(dataset.stored_dtype[m], t.nodata)
            if t.kind == "segmentation":
                self.register_buffer(f"lut_{m}", torch.from_numpy(t.lut))
            elif t.stats:   # rows: l1c, l2a, then another type; a missing entry falls back as the dataset's does
                first = next(iter(t.stats.values()))
                means = [t.stats.get(s, first)[0] for s in (*S2_TYPES, "other")]
                stds = [t.stats.get(s, first)[1] for s in (*S2_TYPES, "other")]
                self.register_buffer(f"mean_{m}", torch.from_numpy(np.stack(means)))
                self.register_buffer(f"std_{m}", torch.from_numpy(np.stack(stds)))

    def forward(self, batch: dict) -> dict:
        out = dict(batch)
        if not self.names:   # nothing was deferred
            return out
        s2 = batch["s2_type"].long()
        for m in self.names:
            raw = batch[m]
            if self.kinds[m] == "segmentation":
                out[m] = getattr(self, f"lut_{m}")[raw.long()]
                continue
            x = raw.float() if raw.dtype != torch.float32 else raw.clone()   # integers up to 2**24 exactly
            missing = ~torch.isfinite(x) if raw.is_floating_point() else None
            for v in self.missing[m]:   # compared as float32, as NumPy compares them (CUDA lacks uint16 ops)
                hit = x == v
                missing = hit if missing is None else missing | hit
            if missing is not None:
                x = x.masked_fill(missing, float("nan"))
            if hasattr(self, f"mean_{m}"):
                x = (x - getattr(self, f"mean_{m}")[s2]) / getattr(self, f"std_{m}")[s2]
            out[m] = x
        return out
