import sys

import numpy as np

from mmearth_data import biome_table, ecoregion_table, load_spec
from mmearth_data.catalog import catalog_dir

from conftest import FIXTURES, REPO


def test_spec_matches_v001_table():
    spec = load_spec()
    assert spec.format_version == "v001"
    expected = {
        "sentinel2": ("uint16", 13, "pixel"), "sentinel2_cloudmask": ("uint16", 1, "pixel"),
        "sentinel2_cloudprod": ("uint16", 1, "pixel"), "sentinel2_scl": ("uint8", 1, "pixel"),
        "sentinel1": ("float32", 8, "pixel"), "aster": ("int16", 2, "pixel"), "era5": ("float32", 12, "image"),
        "dynamic_world": ("uint8", 1, "pixel"), "canopy_height_eth": ("int8", 2, "pixel"),
        "esa_worldcover": ("uint8", 1, "pixel"), "lat": ("float32", 2, "image"), "lon": ("float32", 2, "image"),
        "month": ("float32", 2, "image"), "biome": ("uint8", 14, "image"), "eco_region": ("uint16", 846, "image"),
    }
    assert {k: (str(d.dtype), d.channels, d.level) for k, d in spec.datasets.items()} == expected
    assert spec.datasets["sentinel2"].bands == ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8A", "B8", "B9", "B10",
                                                "B11", "B12")
    assert spec.datasets["sentinel1"].bands[:5] == ("asc_VV", "asc_VH", "asc_HH", "asc_HV", "desc_VV")
    assert spec.metadata_dtype == np.dtype([("tile_id", "S100"), ("S2_type", "S10")])
    assert spec.datasets["sentinel2"].stats_keys == ("sentinel2_l1c", "sentinel2_l2a")
    assert spec.datasets["biome"].task == "classification" and spec.datasets["dynamic_world"].task == "segmentation"


def test_every_nodata_is_representable_in_its_dtype():
    for ds in load_spec().datasets.values():
        for v in ds.missing_values:
            if ds.dtype.kind in "ui":
                info = np.iinfo(ds.dtype)
                assert float(v).is_integer() and info.min <= v <= info.max, (ds.name, v)
    spec = load_spec().datasets
    assert spec["aster"].nodata == -32768 and spec["canopy_height_eth"].nodata == -1
    assert set(spec["esa_worldcover"].missing_values) == {255, 0}


def test_class_maps():
    spec = load_spec().datasets
    dw = spec["dynamic_world"].class_lut()
    assert dw[0] == -1 and list(dw[1:10]) == list(range(9)) and dw[10] == -1
    esa = spec["esa_worldcover"].class_lut()
    codes = [10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100]
    assert [int(esa[c]) for c in codes] == list(range(11))
    assert esa[0] == esa[255] == esa[15] == -1


def test_label_tables():
    biomes, ecos = biome_table(), ecoregion_table()
    assert [b["index"] for b in biomes] == list(range(14))
    assert [e["index"] for e in ecos] == list(range(846))
    assert len({e["eco_id"] for e in ecos}) == 846 and 0 not in {e["eco_id"] for e in ecos}  # no Rock and Ice
    assert sum(b["n_ecoregions"] for b in biomes) == 846
    by_num = {b["biome_num"]: b for b in biomes}
    assert by_num[14]["name"] == "Mangroves" and by_num[14]["index"] == 9
    assert by_num[11]["name"] == "Tundra" and by_num[11]["index"] == 0
    sahara = next(e for e in ecos if e["eco_id"] == 842)
    assert sahara["name"] == "South Sahara desert" and sahara["biome_num"] == 13
    assert all(biomes[e["biome_index"]]["biome_num"] == e["biome_num"] for e in ecos)


def test_label_tables_rebuild_identically_from_sources():
    sys.path.insert(0, str(REPO / "scripts"))
    from make_label_tables import build_tables

    biomes, ecos = build_tables(FIXTURES / "ecoregions")
    assert (catalog_dir() / "labels" / "biomes.csv").read_text(encoding="utf-8") == biomes
    assert (catalog_dir() / "labels" / "ecoregions.csv").read_text(encoding="utf-8") == ecos


def test_catalog_attribution_present():
    notice = (catalog_dir() / "NOTICE.md").read_text()
    assert "CC-BY 4.0" in notice and "Dinerstein" in notice
