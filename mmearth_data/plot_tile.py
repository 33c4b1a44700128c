"""One tile of a v001 dataset as a picture: every pixel modality side by side, image-level values as text.

matplotlib is imported inside the function (it is a build extra): the consume side stays importable without it.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .catalog import biome_table, ecoregion_table, load_spec
from .errors import MMEarthError
from .io_utils import atomic_write_bytes
from .reader import open_dataset

DW_COLOURS = ["#419bdf", "#397d49", "#88b053", "#7a87c6", "#e49635", "#dfc35a", "#c4281b", "#a59b8f", "#b39fe1"]
ESA_COLOURS = ["#006400", "#ffbb22", "#ffff4c", "#f096ff", "#fa0000", "#b4b4b4", "#f0f0f0", "#0064c8", "#0096a0",
               "#00cf75", "#fae6a0"]


def _stretch(rgb: np.ndarray) -> np.ndarray:
    valid = rgb[np.isfinite(rgb) & (rgb > 0)]
    if valid.size == 0:
        return np.zeros(rgb.shape[1:] + (3,))
    lo, hi = np.percentile(valid, [2, 98])
    return np.clip((np.moveaxis(rgb, 0, -1) - lo) / max(hi - lo, 1e-6), 0, 1)


def plot_tile(path: str | Path, index: int, out: str | Path, dpi: int = 120) -> Path:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.patches import Patch

    files = open_dataset(path)
    spec = load_spec()
    with files.h5() as f:
        n = f["sentinel2"].shape[0]
        if not 0 <= index < n:
            raise MMEarthError(f"--index {index}: the dataset has tiles 0..{n - 1}")
        tile = {name: f[name][index] for name in spec.datasets if name in f}
        tile_id = f["metadata"][index][0].decode()
        synthetic = bool(f.attrs.get("synthetic", False))
    info = files.tile_info.get(tile_id, {})

    def masked(name: str, band: int) -> np.ndarray:
        arr = tile[name][band].astype(np.float32)
        miss = spec.datasets[name].missing_mask(tile[name][band:band + 1])
        return np.where(miss[0], np.nan, arr) if miss is not None else arr

    panels = [
        ("Sentinel-2 RGB (B4, B3, B2)", _stretch(np.stack([masked("sentinel2", i) for i in (3, 2, 1)])), {}),
        ("Sentinel-1 asc VV (dB)", masked("sentinel1", 0), {"cmap": "gray"}),
        ("Sentinel-1 desc VV (dB)", masked("sentinel1", 4), {"cmap": "gray"}),
        ("elevation (m)", masked("aster", 0), {"cmap": "terrain"}),
        ("slope (degrees)", masked("aster", 1), {"cmap": "magma"}),
        ("canopy height (m)", masked("canopy_height_eth", 0), {"cmap": "Greens"}),
    ]
    fig, axes = plt.subplots(3, 3, figsize=(12, 12))
    for ax, (title, img, kw) in zip(axes.flat, panels):
        shown = ax.imshow(img, **kw)
        if img.ndim == 2 and np.isfinite(img).any():
            fig.colorbar(shown, ax=ax, fraction=0.046)
        ax.set_title(title, fontsize=9)
    for ax, name, colours in ((axes.flat[6], "dynamic_world", DW_COLOURS), (axes.flat[7], "esa_worldcover", ESA_COLOURS)):
        ds = spec.datasets[name]
        classes = ds.class_lut()[tile[name][0].astype(np.int64)].astype(np.float32)
        classes[classes < 0] = np.nan
        cmap = ListedColormap(colours)
        ax.imshow(classes, cmap=cmap, norm=BoundaryNorm(np.arange(len(colours) + 1) - 0.5, len(colours)),
                  interpolation="nearest")
        present = sorted({int(c) for c in np.unique(classes[np.isfinite(classes)])})
        ax.legend(handles=[Patch(color=colours[c], label=ds.classes[c][1]) for c in present], fontsize=7,
                  loc="lower left", framealpha=0.8)
        ax.set_title(name.replace("_", " "), fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    biome = int(np.argmax(tile["biome"]))
    eco = int(np.argmax(tile["eco_region"]))
    lat = math.degrees(math.atan2(tile["lat"][0], tile["lat"][1]))
    lon = math.degrees(math.atan2(tile["lon"][0], tile["lon"][1]))
    month = round(math.degrees(math.atan2(tile["month"][0], tile["month"][1])) / 30) % 12 or 12
    era5 = tile["era5"]
    text = [f"tile {tile_id}" + ("  (SYNTHETIC)" if synthetic else ""),
            f"S2 {info.get('S2_DATE', '?')} {info.get('S2_type', '?')}  {info.get('CRS', '')}",
            f"lat {lat:.3f}  lon {lon:.3f}  month {month}",
            f"biome {biome}: {biome_table()[biome]['name'][:40]}",
            f"ecoregion {eco}: {ecoregion_table()[eco]['name'][:40]}",
            "ERA5 (K, m):",
            f" prev  {era5[0]:.1f} {era5[1]:.1f} {era5[2]:.1f} {era5[3]:.4f}",
            f" month {era5[4]:.1f} {era5[5]:.1f} {era5[6]:.1f} {era5[7]:.4f}",
            f" year  {era5[8]:.1f} {era5[9]:.1f} {era5[10]:.1f} {era5[11]:.4f}"]
    axes.flat[8].axis("off")
    axes.flat[8].text(0, 1, "\n".join(text), va="top", family="monospace", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    out = Path(out)
    atomic_write_bytes(out, buf.getvalue())
    return out
