"""Small synthetic v001 datasets for demos, tests and benchmarks (labelled synthetic in the HDF5 attributes).

Values are plausible, not real: smooth terrain with slope derived from it, land cover following terrain,
per-class Sentinel-2 spectra and Sentinel-1 backscatter, canopy height on forest, climate from latitude and
month, with the no-data patterns of the real data (B10 empty on L2A, missing S1 orbits and polarisations).
The real synthetic *source* for the pipeline lives in ``pipelines``; this only exercises the format.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .catalog import ecoregion_table, load_spec
from .writer import V001Writer

# Dynamic World class (0..8) -> a typical S2 spectrum (B1..B12, reflectance x 1e4), ESA WorldCover code, S1 VV/VH dB
S2_SPECTRA = np.array([
    [900, 800, 700, 500, 400, 350, 330, 300, 280, 100, 10, 150, 100],         # water
    [400, 350, 500, 300, 700, 2200, 2800, 3000, 2900, 900, 15, 1500, 700],    # trees
    [500, 450, 700, 600, 1100, 2400, 2800, 3000, 2900, 900, 15, 2300, 1400],  # grass
    [600, 500, 650, 500, 800, 1500, 1800, 1900, 1850, 600, 12, 1200, 700],    # flooded vegetation
    [550, 500, 750, 700, 1200, 2300, 2700, 2900, 2800, 900, 15, 2500, 1600],  # crops
    [600, 550, 800, 900, 1300, 1900, 2200, 2400, 2300, 800, 15, 2700, 1900],  # shrub and scrub
    [1100, 1100, 1200, 1300, 1400, 1500, 1600, 1700, 1650, 600, 20, 2000, 1800],  # built
    [1300, 1400, 1700, 2100, 2300, 2500, 2600, 2700, 2650, 900, 25, 3500, 3000],  # bare
    [5000, 5200, 5000, 4800, 4600, 4300, 4100, 3900, 3800, 1500, 60, 600, 500],   # snow and ice
], dtype=np.float32)
ESA_CODES = np.array([80, 10, 30, 90, 40, 20, 50, 60, 70], dtype=np.uint8)
S1_BACKSCATTER = np.array([[-22, -28], [-7, -13], [-10, -17], [-9, -16], [-9, -15], [-9, -16], [-2, -9], [-13, -22], [-12, -20]],
               dtype=np.float32)


def _smooth(rng: np.random.Generator, px: int, coarse: int = 6) -> np.ndarray:
    """A smooth random field in [0, 1] (bilinear upsampling of a coarse random grid)."""
    g = rng.random((coarse, coarse))
    x = np.linspace(0, coarse - 1, px)
    i0 = np.clip(np.floor(x).astype(int), 0, coarse - 2)
    t = x - i0
    rows = g[i0] * (1 - t)[:, None] + g[i0 + 1] * t[:, None]
    return (rows[:, i0] * (1 - t) + rows[:, i0 + 1] * t).astype(np.float32)


def synthetic_tile(rng: np.random.Generator, tile_id: str, px: int) -> tuple[dict[str, np.ndarray], dict]:
    """One synthetic tile: arrays for every v001 dataset plus its tile_info record."""
    ecos = ecoregion_table()
    eco = ecos[int(rng.integers(len(ecos)))]
    lat = math.degrees(math.asin(rng.uniform(-0.9, 0.95)))
    lon = float(rng.uniform(-180, 180))
    year, month = int(rng.integers(2017, 2021)), int(rng.integers(1, 13))
    s2_type = "l2a" if rng.random() < 0.6 else "l1c"

    elev = 50 + 2500 * _smooth(rng, px) ** 2
    gy, gx = np.gradient(elev, 10.0)
    slope = np.degrees(np.arctan(np.hypot(gx, gy)))
    cover = np.clip((_smooth(rng, px) * 9).astype(int), 0, 8)
    cover[elev < 80] = 0  # low ground floods
    noise = rng.normal(0, 1, (13, px, px)).astype(np.float32)
    s2 = S2_SPECTRA[cover].transpose(2, 0, 1) * (1 + 0.05 * noise) + 30 * noise
    cloud = _smooth(rng, px, 4) > 0.85
    s2[:, cloud] = 6000 + 300 * noise[0, cloud]
    s2 = np.clip(s2, 1, 20000).astype(np.uint16)
    if s2_type == "l2a":
        s2[10] = 0
    qa60 = np.where(cloud, 1024, 0).astype(np.uint16)
    cldprb = np.where(cloud, 90, 2).astype(np.uint16) if s2_type == "l2a" else np.full((px, px), 65535, np.uint16)
    scl = np.where(cloud, 9, np.where(cover == 0, 6, 4)).astype(np.uint8) if s2_type == "l2a" else np.full((px, px), 255, np.uint8)

    s1 = np.full((8, px, px), -np.inf, dtype=np.float32)
    for base, present in ((0, rng.random() < 0.9), (4, rng.random() < 0.7)):
        if present:
            s1[base:base + 2] = S1_BACKSCATTER[cover].transpose(2, 0, 1) + rng.normal(0, 1.5, (2, px, px)).astype(np.float32)

    trees = cover == 1
    height = np.where(trees, 8 + 25 * _smooth(rng, px), 0)
    chm = np.stack([height, np.where(trees, 2 + height / 8, 0)]).astype(np.int8)
    chm[:, :2, :] = -1  # a strip without canopy data
    dw = (cover + 1).astype(np.uint8)
    dw[-3:, :] = 0
    esa = ESA_CODES[cover]

    t_mean = 300 - 0.45 * abs(lat) - 12 * math.cos(2 * math.pi * (month - 7) / 12) * math.copysign(1, lat)
    era5 = np.array([t_mean - 1.5, t_mean - 8, t_mean + 7, 0.08, t_mean, t_mean - 7, t_mean + 8, 0.07,
                     t_mean - 2, t_mean - 25, t_mean + 20, 0.9], dtype=np.float32)
    biome = np.zeros(14, np.uint8)
    biome[eco["biome_index"]] = 1
    eco1h = np.zeros(846, np.uint16)
    eco1h[eco["index"]] = 1
    rad = np.radians
    arrays = {
        "sentinel2": s2, "sentinel2_cloudmask": qa60[None], "sentinel2_cloudprod": cldprb[None],
        "sentinel2_scl": scl[None], "sentinel1": s1,
        "aster": np.stack([elev, slope]).astype(np.int16), "era5": era5, "dynamic_world": dw[None],
        "canopy_height_eth": chm, "esa_worldcover": esa[None],
        "lat": np.array([math.sin(rad(lat)), math.cos(rad(lat))], np.float32),
        "lon": np.array([math.sin(rad(lon)), math.cos(rad(lon))], np.float32),
        "month": np.array([math.sin(2 * math.pi * month / 12), math.cos(2 * math.pi * month / 12)], np.float32),
        "biome": biome, "eco_region": eco1h,
    }
    zone = int((lon + 180) // 6) % 60 + 1
    info = {
        "S2_DATE": f"{year}-{month:02d}-{int(rng.integers(1, 29)):02d}", "S2_type": s2_type,
        "CRS": f"EPSG:{32600 + zone if lat >= 0 else 32700 + zone}", "lat": lat, "lon": lon,
        "biome": eco["biome_index"], "eco_region": eco["index"], "NO_DATA": False,
        "BANDS": {"sentinel2": list(load_spec().datasets["sentinel2"].bands)},
    }
    return arrays, info


def default_stem(n_tiles: int, tile_px: int) -> str:
    return f"synthetic_{n_tiles}_v001" + ("_64" if tile_px == 64 else "")


def write_sample_dataset(directory: str | Path, n_tiles: int = 64, *, tile_px: int = 128, seed: int = 0,
                         stem: str | None = None, batch: int = 32, overwrite: bool = False,
                         progress: bool = False, **writer_kwargs) -> Path:
    """Write ``n_tiles`` synthetic tiles as a v001 dataset; returns the ``.h5`` path."""
    stem = stem or default_stem(n_tiles, tile_px)
    rng = np.random.default_rng(seed)
    names = list(load_spec().datasets)
    attrs = {"synthetic": True, "synthetic_note": "generated by mmearth_data.sample_data; values are not real"}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n_tiles, desc="generate", unit="tile")
    with V001Writer(directory, stem, tile_px=tile_px, attrs=attrs, overwrite=overwrite, **writer_kwargs) as w:
        for start in range(0, n_tiles, batch):
            tiles = [synthetic_tile(rng, str(i), tile_px) for i in range(start, min(start + batch, n_tiles))]
            w.append({k: np.stack([t[0][k] for t in tiles]) for k in names},
                     [(str(start + j), t[1]) for j, t in enumerate(tiles)])
            if bar is not None:
                bar.update(len(tiles))
    if bar is not None:
        bar.close()
    return w.h5_path


__all__ = ["synthetic_tile", "write_sample_dataset"]
