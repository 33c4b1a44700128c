"""``<stem>_tiles.parquet`` (issue 28): written by build/pack and shard, by ``mmearth-data index`` for any v001
dataset (local or at a URL); loads in geopandas; ``MMEarthDataset(tiles=...)`` selects by it."""
from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest

from cli_runner import run_cli
from mmearth_data.dataset import MMEarthDataset
from mmearth_data.errors import MMEarthError
from servers.http_range import RangeServer


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("b") / "b"
    proc = run_cli("build", "--size", "10", "--out", out, "--tile-px", "64", "--splits", "0.6,0.2,0.2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def sample(synthetic_dataset) -> Path:
    return synthetic_dataset(40, 64, 0, "d_v001")


@pytest.mark.e2e
@pytest.mark.slow
def test_build_writes_a_geoparquet_index_of_its_tiles(built):
    (h5,) = built.glob("*.h5")
    index = gpd.read_parquet(h5.with_name(f"{h5.stem}_tiles.parquet"))
    info = json.loads(h5.with_name(f"{h5.stem}_tile_info.json").read_text())
    splits = json.loads(h5.with_name(f"{h5.stem}_splits.json").read_text())
    assert index.crs.to_epsg() == 4326 or "CRS84" in index.crs.to_string()
    assert list(index["row"]) == list(range(len(info))) and set(index["tile_id"]) == set(info)
    for _, r in index.iterrows():
        t = info[r.tile_id]
        assert (r.lon, r.lat, r.biome, r.eco_region, r.s2_date, r.s2_level, r.crs) == \
            (t["lon"], t["lat"], t["biome"], t["eco_region"], t["S2_DATE"], t["S2_type"], t["CRS"])
        assert r.s2_id == t["source_ids"]["sentinel2"][0] and json.loads(r.source_ids) == t["source_ids"]
        assert r.row in splits[r.split]
        side = gpd.GeoSeries([r.geometry], crs=4326).to_crs(t["CRS"]).iloc[0]
        assert abs(side.area - 640.0 ** 2) < 1.0 and side.contains(
            gpd.GeoSeries.from_xy([t["lon"]], [t["lat"]], crs=4326).to_crs(t["CRS"]).iloc[0])
    import pyarrow.parquet as pq

    boxes = pq.read_table(h5.with_name(f"{h5.stem}_tiles.parquet"), columns=["bbox"]).column("bbox").to_pylist()
    for b, geom in zip(boxes, index.geometry):   # the GeoParquet 1.1 covering column (geopandas reads it itself)
        assert (b["xmin"], b["ymin"], b["xmax"], b["ymax"]) == pytest.approx(geom.bounds)


def test_shard_indexes_which_shard_holds_each_tile_and_lists_it(sample, tmp_path):
    rel = tmp_path / "rel"
    assert run_cli("shard", sample, "--out", rel, "--tiles-per-shard", "16").returncode == 0
    manifest = json.loads((rel / "manifest.json").read_text())
    listed = {f["name"]: f for f in manifest["files"]}
    assert "d_v001_tiles.parquet" in listed and listed["d_v001_tiles.parquet"]["kind"] == "side"
    index = gpd.read_parquet(rel / "d_v001_tiles.parquet")
    assert list(index["shard"][:16].unique()) == ["shards/d_v001-00000.h5"]
    assert index["shard"].iloc[-1] == "shards/d_v001-00002.h5"
    proc = run_cli("download", "--manifest", rel / "manifest.json", "--out", tmp_path / "got")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "got" / "d_v001_tiles.parquet").read_bytes() == (rel / "d_v001_tiles.parquet").read_bytes()
    assert run_cli("verify", tmp_path / "got").returncode == 0


def test_index_command_for_a_url_equals_the_local_one(sample, tmp_path):
    local = run_cli("index", sample)
    assert local.returncode == 0, local.stderr
    with RangeServer(sample) as srv:
        remote = run_cli("index", f"{srv.url}/d_v001.h5", "--out", tmp_path / "r.parquet")
        assert remote.returncode == 0, remote.stderr
        assert run_cli("index", f"{srv.url}/d_v001.h5").returncode == 2   # a URL needs --out
    assert (tmp_path / "r.parquet").read_bytes() == (sample / "d_v001_tiles.parquet").read_bytes()


@pytest.mark.parametrize("with_parquet", [True, False])
def test_the_dataset_selects_tiles_by_the_index(sample, tmp_path, with_parquet):
    import shutil

    root = tmp_path / "ds"
    shutil.copytree(sample, root)
    if with_parquet:
        assert run_cli("index", root).returncode == 0
    info = json.loads((root / "d_v001_tile_info.json").read_text())
    everything = MMEarthDataset(root, split="all", modalities=["biome"])
    ids = [everything[i]["id"] for i in range(len(everything))]
    lon = np.array([info[t]["lon"] for t in ids])
    lat = np.array([info[t]["lat"] for t in ids])
    west, south, east, north = -60.0, -40.0, 60.0, 40.0
    want = {t for t, x, y in zip(ids, lon, lat) if west <= x <= east and south <= y <= north}
    got = MMEarthDataset(root, split="all", modalities=["biome"], tiles={"bbox": (west, south, east, north)})
    assert {got[i]["id"] for i in range(len(got))} == want
    forest = [t for t in ids if "forest" in _biome_name(info[t]["biome"]).lower()]
    got = MMEarthDataset(root, split="all", modalities=["biome"], tiles={"biomes": ["forest"]})
    assert sorted(got[i]["id"] for i in range(len(got))) == sorted(forest) and forest
    dated = [t for t in ids if "2019-01-01" <= info[t]["S2_DATE"] <= "2019-12-31"]
    got = MMEarthDataset(root, split="all", modalities=["biome"], tiles={"start": "2019-01-01", "end": "2019-12-31"})
    assert sorted(got[i]["id"] for i in range(len(got))) == sorted(dated)
    got = MMEarthDataset(root, split="train", modalities=["biome"], tiles=ids[:5])
    assert sorted(got[i]["id"] for i in range(len(got))) == sorted(ids[:5])
    with pytest.raises(MMEarthError, match="1 id.* not in d_v001.h5"):
        MMEarthDataset(root, split="all", tiles=["no-such-tile"])
    with pytest.raises(MMEarthError, match="unknown filter key"):
        MMEarthDataset(root, split="all", tiles={"biome": [1]})


def _biome_name(index: int) -> str:
    from mmearth_data.catalog import biome_table

    return next(b["name"] for b in biome_table() if b["index"] == index)


def test_download_fetches_only_the_shards_holding_the_tiles_asked_for(sample, tmp_path):
    rel = tmp_path / "rel"
    assert run_cli("shard", sample, "--out", rel, "--tiles-per-shard", "4").returncode == 0
    info = json.loads((sample / "d_v001_tile_info.json").read_text())
    index = gpd.read_parquet(rel / "d_v001_tiles.parquet")
    some = index.iloc[[1, 17]]   # a box around two tiles (and whatever else lies in it)
    west, south = some.lon.min() - 0.01, some.lat.min() - 0.01
    east, north = some.lon.max() + 0.01, some.lat.max() + 0.01
    inside = index[(index.lon >= west) & (index.lon <= east) & (index.lat >= south) & (index.lat <= north)]
    want = sorted({f"shards/d_v001-{r // 4:05d}.h5" for r in inside["row"]})
    assert 2 <= len(want) < 10
    proc = run_cli("download", "--manifest", rel / "manifest.json", "--out", tmp_path / "got",
                   "--bbox", f"{west},{south},{east},{north}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = sorted(str(p.relative_to(tmp_path / "got")) for p in (tmp_path / "got" / "shards").glob("*.h5"))
    assert got == want
    ds = MMEarthDataset(tmp_path / "got", split="all", tiles={"bbox": (west, south, east, north)})
    assert sorted(ds[i]["id"] for i in range(len(ds))) == sorted(inside["tile_id"]) and info
    proc = run_cli("download", "--manifest", rel / "manifest.json", "--out", tmp_path / "none", "--bbox", "1,2,3")
    assert proc.returncode == 2 and "--bbox" in proc.stderr
