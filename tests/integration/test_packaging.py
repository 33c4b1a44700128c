import json
import subprocess
import sys
import zipfile

import pytest

from conftest import REPO

BUILD_SIDE = ("rasterio", "osgeo", "ee", "geopandas", "pyogrio", "fiona", "shapely", "pystac_client", "dask")


def test_consume_side_imports_no_build_dependencies(sample_dir):
    code = (
        "import sys, json, mmearth_data\n"
        "from mmearth_data import MMEarthDataset, validate, open_dataset\n"
        f"ds = MMEarthDataset({str(sample_dir)!r}); ds[0]; validate({str(sample_dir)!r})\n"
        f"print(json.dumps([m for m in {BUILD_SIDE!r} if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_import_without_torch_keeps_dataset_lazy():
    code = "import sys, mmearth_data; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_wheel_ships_catalogs_and_works_when_installed(tmp_path):
    pytest.importorskip("hatchling")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation",
                            "-w", str(tmp_path / "dist"), "-q"], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    wheel = next((tmp_path / "dist").glob("mmearth_data-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for expected in ("mmearth_data/catalogs/modalities.yaml", "mmearth_data/catalogs/labels/ecoregions.csv",
                     "mmearth_data/catalogs/NOTICE.md", "sampling/__init__.py", "pipelines/__init__.py"):
        assert expected in names
    target = tmp_path / "site"
    inst = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                           str(wheel)], capture_output=True, text=True)
    assert inst.returncode == 0, inst.stderr
    code = ("import mmearth_data, mmearth_data.catalog as c; "
            "print(mmearth_data.__file__); print(c.catalog_dir()); print(len(mmearth_data.ecoregion_table()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env={"PYTHONPATH": str(target), "PATH": ""}, check=True)
    mod, cat, n = out.stdout.split()
    assert mod.startswith(str(target)) and cat == str(target / "mmearth_data" / "catalogs") and n == "846"


def test_build_command_without_build_extras_says_what_to_install(tmp_path):
    # hide geopandas & co. the way a base install lacks them
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\n"
        "class _Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'geopandas', 'scipy', 'shapely', 'pyproj'}:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, _Block())\n")
    import os

    env = {**os.environ, "PYTHONPATH": str(blocker)}
    out = subprocess.run([sys.executable, "-m", "mmearth_data.cli", "sample", "--size", "10", "--out",
                          str(tmp_path / "x.parquet")], capture_output=True, text=True, env=env)
    assert out.returncode == 2 and "pip install 'mmearth-data[build]'" in out.stderr
    assert "Traceback" not in out.stderr
