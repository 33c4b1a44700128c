import json
import os
import signal
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from mmearth_data import MMEarthError, V001Writer, load_spec, open_dataset
from mmearth_data.chunks import filter_pipeline
from mmearth_data.sample_data import synthetic_tile

SPEC = load_spec()


def make_batch(n, px=16, seed=0, start=0):
    rng = np.random.default_rng(seed)
    tiles = [synthetic_tile(rng, str(start + i), px) for i in range(n)]
    arrays = {k: np.stack([t[0][k] for t in tiles]) for k in SPEC.datasets}
    return arrays, [(str(start + i), t[1]) for i, t in enumerate(tiles)]


def test_round_trip_layout_and_attributes(tmp_path):
    arrays, info = make_batch(6)
    with V001Writer(tmp_path, "data_t_v001", tile_px=16, attrs={"synthetic": True}) as w:
        w.append({k: v[:4] for k, v in arrays.items()}, info[:4])
        w.append({k: v[4:] for k, v in arrays.items()}, info[4:])
    files = open_dataset(tmp_path)
    assert files.h5_path.name == "data_t_v001.h5"
    with files.h5() as f:
        assert f.attrs["mmearth_format"] == "v001" and bool(f.attrs["synthetic"])
        for name, ds in SPEC.datasets.items():
            d = f[name]
            assert d.dtype == ds.dtype and d.shape == (6, *ds.tile_shape(16))
            assert d.chunks == (1, *ds.tile_shape(16)), "one tile per chunk"
            assert d.compression == "gzip" and d.shuffle
            assert filter_pipeline(d) == [2, 1]  # shuffle, then deflate: both built into every HDF5 reader
            np.testing.assert_array_equal(d[()], arrays[name])
            assert list(d.attrs["bands"]) == list(ds.bands)
        assert f["aster"].attrs["nodata"] == -32768 and f["canopy_height_eth"].attrs["nodata"] == -1
        meta = f["metadata"][()]
        assert meta.dtype == SPEC.metadata_dtype
        assert [m.decode() for m in meta["tile_id"]] == [t for t, _ in info]
        assert [m.decode() for m in meta["S2_type"]] == [r["S2_type"] for _, r in info]
    tile_info = json.loads(files.side_path("tile_info").read_text())
    assert list(tile_info) == [t for t, _ in info] and tile_info["0"]["S2_type"] == info[0][1]["S2_type"]
    splits = files.splits
    assert sorted(splits["train"]) == list(range(6)) and splits["val"] == [] and splits["test"] == []


def test_band_stats_are_exact(tmp_path):
    arrays, info = make_batch(9, seed=3)
    with V001Writer(tmp_path, "s", tile_px=16) as w:
        for i in range(0, 9, 4):
            w.append({k: v[i:i + 4] for k, v in arrays.items()}, info[i:i + 4])
    stats = open_dataset(tmp_path).band_stats
    types = np.array([r["S2_type"] for _, r in info])
    assert set(types) == {"l1c", "l2a"}
    assert set(stats) == {"sentinel2_l1c", "sentinel2_l2a", "sentinel2_cloudmask_l1c", "sentinel2_cloudmask_l2a",
                          "sentinel2_cloudprod_l1c", "sentinel2_cloudprod_l2a", "sentinel1", "aster", "era5",
                          "canopy_height_eth", "lat", "lon", "month"}
    for name, ds in SPEC.datasets.items():
        if not ds.stats_keys:
            continue
        groups = [(f"{name}_{t}", types == t) for t in ("l1c", "l2a")] if ds.stats_split_by else [(name, slice(None))]
        for key, rows in groups:
            a = arrays[name][rows]
            if a.shape[0] == 0:
                assert key not in stats
                continue
            miss = ds.missing_mask(a)
            for b in range(ds.channels):
                v = a[:, b][~miss[:, b]] if miss is not None else a[:, b].ravel()
                v = v.astype(np.float64)
                if v.size == 0:
                    assert np.isnan(stats[key]["mean"][b])
                    continue
                assert stats[key]["mean"][b] == pytest.approx(v.mean(), rel=1e-12, abs=1e-12)
                assert stats[key]["std"][b] == pytest.approx(v.std(), rel=1e-9, abs=1e-12)
                assert stats[key]["min"][b] == v.min() and stats[key]["max"][b] == v.max()


def test_bad_input_is_rejected_without_losing_written_tiles(tmp_path):
    arrays, info = make_batch(3)
    w = V001Writer(tmp_path, "s", tile_px=16)
    w.append({k: v[:2] for k, v in arrays.items()}, info[:2])
    bad = {k: v[2:] for k, v in arrays.items()}
    bad["sentinel2"] = bad["sentinel2"].astype(np.float32)
    with pytest.raises(MMEarthError, match="sentinel2: got dtype float32"):
        w.append(bad, info[2:])
    bad = {k: v[2:] for k, v in arrays.items()}
    bad["aster"] = bad["aster"][:, :1]
    with pytest.raises(MMEarthError, match="aster: got shape"):
        w.append(bad, info[2:])
    with pytest.raises(MMEarthError, match="written twice"):
        w.append({k: v[:1] for k, v in arrays.items()}, info[:1])
    with pytest.raises(MMEarthError, match="S2_type"):
        w.append({k: v[2:] for k, v in arrays.items()}, [("9", {"S2_type": "L2A"})])
    w.close()
    with open_dataset(tmp_path).h5() as f:
        assert f["sentinel2"].shape[0] == 2


def test_refuses_to_overwrite_and_replaces_when_asked(tmp_path):
    arrays, info = make_batch(2)
    with V001Writer(tmp_path, "s", tile_px=16) as w:
        w.append(arrays, info)
    with pytest.raises(MMEarthError, match="already exists"):
        V001Writer(tmp_path, "s", tile_px=16)
    with V001Writer(tmp_path, "s", tile_px=16, overwrite=True) as w:
        w.append({k: v[:1] for k, v in arrays.items()}, info[:1])
    assert len(open_dataset(tmp_path).tile_info) == 1


def test_exception_inside_with_block_leaves_nothing(tmp_path):
    arrays, info = make_batch(2)
    with pytest.raises(RuntimeError):
        with V001Writer(tmp_path, "s", tile_px=16) as w:
            w.append(arrays, info)
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_sigkill_mid_write_leaves_no_complete_looking_dataset(tmp_path):
    out = tmp_path / "ds"
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_writer import make_batch
        from mmearth_data import V001Writer
        w = V001Writer({str(out)!r}, "data_k_v001", tile_px=16)
        for i in range(3):
            a, info = make_batch(4, start=4 * i)
            w.append(a, info)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    names = sorted(p.name for p in out.iterdir())
    # no .h5 and no JSON side file: only hidden partials (the HDF5 and the tile_info streamed so far)
    assert names == [".data_k_v001.h5.partial", ".data_k_v001_tile_info.json.partial"], names
    with pytest.raises(MMEarthError, match="unfinished write"):
        open_dataset(out)
    cli = subprocess.run([sys.executable, "-m", "mmearth_data.cli", "validate", str(out)], capture_output=True,
                         text=True)
    assert cli.returncode == 2 and cli.stderr.count("\n") == 1 and "no .h5 file" in cli.stderr
    a, info = make_batch(2)
    with V001Writer(out, "data_k_v001", tile_px=16) as w:  # a rerun starts cleanly over the stale partial
        w.append(a, info)
    assert sorted(p.name for p in out.iterdir()) == ["data_k_v001.h5", "data_k_v001_band_stats.json",
                                                     "data_k_v001_splits.json", "data_k_v001_tile_info.json"]


def test_compression_options(tmp_path):
    arrays, info = make_batch(2)
    with V001Writer(tmp_path, "s", tile_px=16, compression_level=1, shuffle=False) as w:
        w.append(arrays, info)
    with h5py.File(tmp_path / "s.h5") as f:
        assert f["sentinel2"].compression_opts == 1 and not f["sentinel2"].shuffle
    with pytest.raises(MMEarthError, match="gzip levels"):
        V001Writer(tmp_path / "x", "s", compression_level=11)
