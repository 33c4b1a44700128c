"""The synthetic backend: deterministic, labelled synthetic, and plausible (cover follows biome, S2 rules hold)."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import rasterio

from pipelines.backends.synthetic import L2A_FROM, Location, write_locations
from pipelines.backends.synthetic.world import World


def _write(root, locs):
    write_locations(root, locs, seed=0, tile_px=32, catalog_id="t")
    return {p.relative_to(root): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_and_everything_says_synthetic(tmp_path):
    locs = [Location("a_1", 12.5, 42.0, 2), Location("b_2", -60.0, -3.0, 1)]
    first, second = _write(tmp_path / "1", locs), _write(tmp_path / "2", locs)
    assert first == second and len(first) > 50
    for rel in first:
        path = tmp_path / "1" / rel
        if path.suffix == ".tif":
            with rasterio.open(path) as src:
                assert src.tags()["SYNTHETIC"] == "true"
        else:
            doc = json.loads(path.read_text())
            flag = doc.get("properties", doc).get("mmearth:synthetic")
            assert flag is True, rel


def test_sentinel2_products_follow_the_real_archive(tmp_path):
    _write(tmp_path, [Location(f"t_{i}", 10.0 + i, 45.0, 7) for i in range(6)])
    items = [json.loads(p.read_text()) for p in (tmp_path / "sentinel-2-l2a").glob("*.json") if p.name != "collection.json"]
    assert items and all(it["properties"]["datetime"][:10] >= str(L2A_FROM) for it in items)
    l1c = [json.loads(p.read_text()) for p in (tmp_path / "sentinel-2-l1c").glob("S2*.json")]
    covers = [it["properties"]["eo:cloud_cover"] for it in l1c]
    assert min(covers) < 10 < max(covers)                    # some scenes are usable, some too cloudy
    with rasterio.open(tmp_path / "sentinel-2-l1c" / l1c[0]["assets"]["r60m"]["href"][2:]) as src:
        qa = src.read(4)                                        # r60m: B01, B09, B10, QA60
        assert set(np.unique(qa)) <= {0, 1024}


def test_land_cover_follows_biome_and_terrain():
    lon, lat = np.meshgrid(np.linspace(20, 20.2, 200), np.linspace(10, 10.2, 200))
    desert = np.bincount(World(0, 3).cover(lon, lat).ravel(), minlength=9) / lon.size
    moist = np.bincount(World(0, 1).cover(lon, lat).ravel(), minlength=9) / lon.size
    assert desert[7] > 0.4 and moist[1] > 0.5                  # bare in deserts, trees in tropical moist forest
    w = World(0, 7)
    elev, cover = w.elevation(lon, lat), w.cover(lon, lat)
    assert elev[cover == 0].mean() < elev[cover == 5].mean()     # water sits lower than shrubland
    height, _ = w.canopy(lon, lat, cover)
    assert (height[cover != 1] == 0).all() and height[cover == 1].mean() > 5
