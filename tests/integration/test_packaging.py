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


BUILD_EXTRAS = ("geopandas", "scipy", "shapely", "pyproj", "affine", "rasterio", "pyarrow", "dask", "distributed",
                "pystac_client", "planetary_computer", "ee", "matplotlib", "pyogrio")


@pytest.mark.parametrize("blocked, args, extra", [
    (BUILD_EXTRAS, ["sample", "--size", "10", "--out", "x.parquet"], "build"),
    (BUILD_EXTRAS, ["export", "LOCS", "--out", "e"], "build"),   # it met affine first (not in the list it had)
    (BUILD_EXTRAS, ["check", "--backend", "local", "--catalog", "c"], "build"),
    (("torch",), ["pretrain", "--data", "DATA", "--out", "run"], "train"),
])
def test_a_command_without_its_extras_says_what_to_install(tmp_path, sample_dir, blocked, args, extra):
    """Every module of the build extras (and torch) hidden, as a core install lacks them: one line naming the
    extra to install, no traceback."""
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\n"
        "class _Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {set(blocked)!r}:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, _Block())\n")
    import os

    locs = tmp_path / "locs.csv"
    locs.write_text("lon,lat\n10,50\n")
    args = [str(locs) if a == "LOCS" else str(sample_dir) if a == "DATA" else a for a in args]
    env = {**os.environ, "PYTHONPATH": str(blocker)}
    out = subprocess.run([sys.executable, "-m", "mmearth_data.cli", *args], capture_output=True, text=True, env=env,
                         cwd=tmp_path)
    assert out.returncode == 2 and f"pip install 'mmearth-data[{extra}]'" in out.stderr, out.stderr[-3000:]
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
