"""World map of sampled locations coloured by biome, with per-biome counts in the legend."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from mmearth_data.catalog import biome_table
from mmearth_data.errors import MMEarthError
from mmearth_data.io_utils import atomic_path

from .ecoregions import load_ecoregions

# 14 distinguishable colours (tab20 subset), fixed per MMEarth biome index
BIOME_COLOURS = ["#9edae5", "#2ca02c", "#bcbd22", "#e7ba52", "#dbdb8d", "#17becf", "#1f77b4", "#98df8a",
                 "#c49c94", "#d62728", "#9467bd", "#ff7f0e", "#8c564b", "#393b79"]


def read_locations(path: str | Path):
    path = Path(path)
    if not path.is_file():
        raise MMEarthError(f"{path}: no such file")
    try:
        table = pq.read_table(path, columns=None)
    except Exception as e:
        raise MMEarthError(f"{path}: not a Parquet file ({e})") from None
    missing = [c for c in ("lon", "lat", "biome") if c not in table.column_names]
    if missing:
        raise MMEarthError(f"{path}: missing column(s) {missing}; expected a locations file from `mmearth-data sample`")
    return {c: table[c].to_numpy() for c in ("lon", "lat", "biome")}


def plot_locations(path: str | Path, out: str | Path, *, dpi: int = 150, outlines: bool = True) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loc = read_locations(path)
    names = {b["index"]: b["name"] for b in biome_table()}
    fig, ax = plt.subplots(figsize=(16, 8.5))
    if outlines:
        load_ecoregions().frame.boundary.plot(ax=ax, color="#cccccc", linewidth=0.2, zorder=1)
    size = float(np.clip(20000 / max(len(loc["lon"]), 1), 0.02, 8))
    handles = []
    for b in range(len(names)):
        sel = loc["biome"] == b
        n = int(sel.sum())
        ax.scatter(loc["lon"][sel], loc["lat"][sel], s=size, c=BIOME_COLOURS[b], linewidths=0, rasterized=True,
                   zorder=2)
        handles.append(plt.Line2D([], [], marker="o", ls="", color=BIOME_COLOURS[b], label=f"{names[b]} ({n:,})"))
    ax.set(xlim=(-180, 180), ylim=(-90, 90), xlabel="longitude", ylabel="latitude", aspect="equal")
    ax.set_title(f"{len(loc['lon']):,} locations from {Path(path).name}")
    ax.legend(handles=handles, loc="lower left", fontsize=7, markerscale=1.5, framealpha=0.9)
    fig.tight_layout()
    out = Path(out)
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    return out
