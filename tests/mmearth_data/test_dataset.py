import pickle

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mmearth_data import MMEarthDataset, MMEarthError, V001Writer, load_spec, open_dataset
from mmearth_data.dataset import MPMAE_MODALITIES

from conftest import TORCHGEO_REF
from test_writer import make_batch

SPEC = load_spec()


@pytest.fixture(scope="module")
def nodata_dir(tmp_path_factory):
    """Two tiles (one L1C, one L2A) with known no-data pixels in every modality."""
    d = tmp_path_factory.mktemp("nodata")
    arrays, info = make_batch(2, px=8, seed=5)
    info = [(info[0][0], {**info[0][1], "S2_type": "l1c"}), (info[1][0], {**info[1][1], "S2_type": "l2a"})]
    a = {k: v.copy() for k, v in arrays.items()}
    a["sentinel2"][:, :, 0, 0] = 0
    a["sentinel2"][:, :, 1, 1] = 1000
    a["sentinel1"][:, 2, 0, 0] = -np.inf
    a["sentinel1"][:, 0, 1, 1] = -10.0
    a["aster"][:, 0, 0, 0] = -32768
    a["canopy_height_eth"][:, 0, 0, 0] = -1
    a["dynamic_world"][:, 0, 0, :3] = [0, 1, 9]
    a["esa_worldcover"][:, 0, 0, :4] = [0, 255, 10, 100]
    a["era5"][:, 3] = np.nan
    with V001Writer(d, "data_nd_v001", tile_px=8) as w:
        w.append(a, info)
    return d


def test_sample_structure(sample_dir):
    ds = MMEarthDataset(sample_dir)
    assert len(ds) == 40 and ds.modalities == list(MPMAE_MODALITIES)
    s = ds[0]
    assert set(s) == set(MPMAE_MODALITIES) | {"id"}
    assert s["sentinel2"].shape == (13, 32, 32) and s["sentinel2"].dtype == torch.float32
    assert s["sentinel1"].shape == (8, 32, 32) and s["aster"].shape == (2, 32, 32)
    assert s["dynamic_world"].dtype == torch.int64 and s["dynamic_world"].shape == (1, 32, 32)
    assert s["biome"].dtype == torch.int64 and s["biome"].ndim == 0 and 0 <= int(s["biome"]) < 14
    assert 0 <= int(s["eco_region"]) < 846
    assert s["lat"].shape == (2,) and s["era5"].shape == (12,)
    row = int(open_dataset(sample_dir).splits["train"][0])
    with h5py.File(open_dataset(sample_dir).h5_path) as f:
        assert s["id"] == f["metadata"][row]["tile_id"].decode()
        assert int(s["biome"]) == int(np.argmax(f["biome"][row]))


def test_nodata_becomes_nan_or_minus_one_before_normalization(nodata_dir):
    ds = MMEarthDataset(nodata_dir, split="all")
    for i in range(2):
        s = ds[i]
        assert torch.isnan(s["sentinel2"][:, 0, 0]).all()
        assert torch.isnan(s["sentinel1"][2, 0, 0]) and torch.isnan(s["aster"][0, 0, 0])
        assert torch.isnan(s["canopy_height_eth"][0, 0, 0])
        assert s["dynamic_world"][0, 0, :3].tolist() == [-1, 0, 8]
        assert s["esa_worldcover"][0, 0, :4].tolist() == [-1, -1, 0, 10]
        assert torch.isnan(s["era5"][3]) and not torch.isnan(s["era5"][0])


def test_zscore_uses_stats_of_the_tiles_s2_type(nodata_dir):
    stats = open_dataset(nodata_dir).band_stats
    ds = MMEarthDataset(nodata_dir, split="all")
    for i, s2 in enumerate(["l1c", "l2a"]):
        s = ds[i]
        st = stats[f"sentinel2_{s2}"]
        expect = (1000 - np.float32(st["mean"][3])) / np.float32(st["std"][3])
        assert float(s["sentinel2"][3, 1, 1]) == pytest.approx(expect, rel=1e-5)
        st1 = stats["sentinel1"]
        assert float(s["sentinel1"][0, 1, 1]) == pytest.approx((-10 - st1["mean"][0]) / st1["std"][0], rel=1e-5)
    raw = MMEarthDataset(nodata_dir, split="all", normalize=False)[1]
    assert float(raw["sentinel2"][3, 1, 1]) == 1000.0 and torch.isnan(raw["sentinel2"][3, 0, 0])


def test_band_selection_and_crop(sample_dir):
    ds = MMEarthDataset(sample_dir, modalities={"sentinel2": ["B4", "B3", "B2"], "biome": None}, crop=16,
                        normalize=False)
    full = MMEarthDataset(sample_dir, modalities=["sentinel2"], normalize=False)
    s, f = ds[3], full[3]
    assert set(s) == {"sentinel2", "biome", "id"} and s["sentinel2"].shape == (3, 16, 16)
    torch.testing.assert_close(s["sentinel2"], f["sentinel2"][[3, 2, 1], 8:24, 8:24], equal_nan=True)


def test_fast_chunk_path_matches_h5py(sample_dir):
    ds = MMEarthDataset(sample_dir, split="all", modalities=list(SPEC.datasets))
    with h5py.File(ds.files.h5_path) as f:
        for row in (0, 17, 39):
            tile_id, s2_type, raw = ds.read_raw(row)
            for m, a in raw.items():
                assert ds._readers[m].fast
                np.testing.assert_array_equal(a, f[m][row])


def test_torchgeo_reference_loads():
    ds = MMEarthDataset(TORCHGEO_REF)
    assert len(ds) == 10
    s = ds[0]
    assert s["sentinel2"].shape == (13, 64, 64) and s["month"].dtype == torch.float32
    assert not ds._readers["sentinel2"].fast  # contiguous file: plain h5py fallback
    assert s["id"] == "0" or isinstance(s["id"], str)


def test_dataloader_two_workers_matches_single_process(sample_dir):
    ds = MMEarthDataset(sample_dir, modalities=["sentinel2", "dynamic_world", "biome"])
    ds[0]  # open the file in the parent first: workers must not inherit the handle
    loader = DataLoader(ds, batch_size=8, num_workers=2, shuffle=False)
    ids, s2 = [], []
    for batch in loader:
        ids += batch["id"]
        s2.append(batch["sentinel2"])
    assert ids == [ds[i]["id"] for i in range(len(ds))]
    torch.testing.assert_close(torch.cat(s2)[5], ds[5]["sentinel2"], equal_nan=True)


def test_pickles_without_the_open_file(sample_dir):
    ds = MMEarthDataset(sample_dir)
    ds[0]
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._h5 is None
    torch.testing.assert_close(clone[1]["sentinel1"], ds[1]["sentinel1"], equal_nan=True)


def test_single_thread_equals_threaded(sample_dir):
    a = MMEarthDataset(sample_dir, decode_threads=1)[2]
    b = MMEarthDataset(sample_dir, decode_threads=2)[2]
    for k in a:
        if k != "id":
            torch.testing.assert_close(a[k], b[k], equal_nan=True)


@pytest.mark.parametrize("kwargs,match", [
    ({"split": "validation"}, "split 'validation' not in"),
    ({"modalities": ["sentinel3"]}, "modality 'sentinel3' is not part of the v001 layout"),
    ({"modalities": {"sentinel2": ["B13"]}}, "unknown band"),
    ({"crop": 64}, "crop=64"),
    ({"modalities": ["biome"], "crop": 0}, "crop=0"),
])
def test_bad_arguments(sample_dir, kwargs, match):
    with pytest.raises(MMEarthError, match=match):
        MMEarthDataset(sample_dir, **kwargs)


def test_crop_without_a_pixel_modality_has_nothing_to_crop(sample_dir):
    """``probe`` opens its label dataset (``biome``, its default task) with the encoder's crop: that failed with
    "must be between 1 and the tile size (None px)"."""
    labels = MMEarthDataset(sample_dir, split="all", modalities=["biome"], crop=16)
    assert labels[0]["biome"].ndim == 0 and len(labels) == 40


def test_empty_val_split_has_no_items(sample_dir):
    assert len(MMEarthDataset(sample_dir, split="val")) == 0


@pytest.mark.parametrize("kw", [{}, {"crop": 32}, {"normalize": False},
                                {"modalities": {"sentinel2": ["B4", "B8"], "dynamic_world": None, "biome": None}}])
def test_stored_dtypes_and_the_batch_transform_equal_the_per_sample_path(tmp_path, kw):
    """Issue 28: workers pass stored dtypes (uint16, int16, int8, uint8) and ``batch_transform`` converts the
    collated batch; the result is bit for bit the per-sample float32 path, through DataLoader workers too."""
    import torch
    from torch.utils.data import DataLoader, default_collate

    from mmearth_data.sample_data import write_sample_dataset

    write_sample_dataset(tmp_path, 24, tile_px=64, stem="d_v001")
    plain = MMEarthDataset(tmp_path, split="all", **kw)
    stored = MMEarthDataset(tmp_path, split="all", stored_dtypes=True, **kw)
    assert stored.deferred and all(stored[0][m].dtype != torch.float32 or m == "sentinel1" for m in stored.deferred)
    norm = stored.batch_transform()
    want = default_collate([plain[i] for i in range(len(plain))])
    got = norm(next(iter(DataLoader(stored, batch_size=len(stored), num_workers=2))))
    assert set(got) == set(want) | {"s2_type"}
    for k, v in want.items():
        if k == "id":
            assert got[k] == v
        else:
            torch.testing.assert_close(got[k], v, rtol=0, atol=0, equal_nan=True)
