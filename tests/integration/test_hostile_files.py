"""Hostile and malformed dataset files and checkpoints (issue 27, items 7, 10, 11: the format side).

Each file is a few KB: a header that declares billions of rows, statistics full of NaN, a wrong dtype, JSON nested
too deeply, a checkpoint that is empty or carries a pickle payload. ``validate``, ``MMEarthDataset`` and the model
commands answer each with one line naming the file and what is wrong, never a traceback, and never allocate for
rows a file only declares: memory tests run in a subprocess under ``RLIMIT_AS``, so a regression shows as a
MemoryError there instead of a swapping machine.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from mmearth_data import MMEarthDataset, MMEarthError, validate
from mmearth_data.shards import shard

from cli_runner import run_cli
from conftest import copy_of

STEM = "data_hostile_v001"
MEMORY_LIMIT = 3 << 30   # bytes of address space: torch and h5py load in it; a per-row allocation does not fit


@pytest.fixture(scope="module")
def small(synthetic_dataset) -> Path:
    """12 tiles of 16 px; tests copy it before corrupting it."""
    return synthetic_dataset(12, 16, 2, STEM)


@pytest.fixture
def copy(small, tmp_path) -> Path:
    return copy_of(small, tmp_path / "ds")


def h5(d: Path) -> Path:
    return d / f"{STEM}.h5"


def side(d: Path, kind: str) -> Path:
    return d / f"{STEM}_{kind}.json"


def edit_json(d: Path, kind: str, fn) -> None:
    path = next(d.glob(f"*_{kind}.json"))
    obj = json.loads(path.read_text())
    fn(obj)
    path.write_text(json.dumps(obj))


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    """stderr of a refused command: exit 1 or 2, one line, no traceback."""
    err = proc.stderr.strip()
    assert proc.returncode in (1, 2), (proc.returncode, proc.stdout, err)
    assert "Traceback" not in err and "\n" not in err, err
    return err


def limited(code: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter whose address space is capped at :data:`MEMORY_LIMIT`."""
    prelude = f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({MEMORY_LIMIT}, {MEMORY_LIMIT}))\n"
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=cwd, timeout=300, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})


def loader_refusal(path: Path, cwd: Path, read_first: bool = False, **kwargs) -> str:
    """What ``MMEarthDataset(path, split="all", **kwargs)`` (and, with ``read_first``, its first sample) says, run
    under :data:`MEMORY_LIMIT`: it must refuse with an MMEarthError, never run out of memory."""
    proc = limited(f"""
        from mmearth_data import MMEarthDataset, MMEarthError
        try:
            ds = MMEarthDataset({str(path)!r}, split="all", **{kwargs!r})
            if {read_first!r}:
                ds[0]
        except MMEarthError as e:
            print("refused:", e)
        """, cwd)
    assert proc.returncode == 0 and "MemoryError" not in proc.stderr, proc.stderr
    assert proc.stdout.startswith("refused:"), proc.stdout
    return proc.stdout


def limited_cli(args: list, cwd: Path) -> subprocess.CompletedProcess:
    return limited(f"""
        import runpy, sys
        sys.argv = ["mmearth-data", *{[str(a) for a in args]!r}]
        runpy.run_module("mmearth_data.cli", run_name="__main__")
        """, cwd)


# ---- item 7: declared sizes the file does not back ------------------------------------------------------------
@pytest.fixture
def sparse(small, tmp_path) -> Path:
    """Every dataset declares 2e9 rows; nothing is written (a few KB on disk)."""
    d = tmp_path / "sparse"
    shutil.copytree(small, d)
    with h5py.File(h5(small)) as src, h5py.File(h5(d), "w") as f:
        for name, s in src.items():
            f.create_dataset(name, shape=(2_000_000_000, *s.shape[1:]), dtype=s.dtype, chunks=(1, *s.shape[1:]),
                             compression="gzip")
    assert h5(d).stat().st_size < 100_000
    return d


def forge_vds(rel: Path, n: int, stretch: bool = False) -> None:
    """Rewrite a release's VDS to declare ``n`` rows (a lying manifest's n_tiles); ``stretch``: each mapping
    claims every row from its start to ``n`` of a shard that holds a few."""
    path = rel / f"{STEM}.h5"
    with h5py.File(path) as old:
        file_attrs = dict(old.attrs)
        parts = {name: (d.dtype, d.shape[1:], dict(d.attrs),
                        [(m.vspace.get_select_bounds()[0][0], m.vspace.get_select_bounds()[1][0] + 1, m.file_name,
                          m.dset_name) for m in d.virtual_sources()]) for name, d in old.items()}
    with h5py.File(path, "w", libver=("earliest", "v110")) as f:
        for name, (dtype, tail, attrs, spans) in parts.items():
            layout = h5py.VirtualLayout(shape=(n, *tail), dtype=dtype)
            for a, b, file_name, dset_name in spans:
                b = n if stretch else b
                layout[a:b] = h5py.VirtualSource(file_name, dset_name, shape=(b - a, *tail))
            f.create_virtual_dataset(name, layout).attrs.update(attrs)
        f.attrs.update(file_attrs)


@pytest.fixture
def huge_release(small, tmp_path) -> Path:
    """A release whose manifest said 10**12 tiles over three honest 4-tile shards: its VDS declares 10**12 rows."""
    rel = tmp_path / "rel"
    shard(small, rel, tiles_per_shard=4)
    forge_vds(rel, 10**12)
    return rel


def test_validate_refuses_rows_a_sparse_file_only_declares(sparse, tmp_path):
    proc = limited_cli(["validate", "--layout-only", sparse], tmp_path)
    assert proc.returncode == 1 and "MemoryError" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert "metadata: declares 2000000000 rows, but its file stores only 0" in proc.stdout, proc.stdout


def test_loader_refuses_rows_a_sparse_file_only_declares(sparse, tmp_path):
    assert "declares 2000000000 rows, but its file stores only 0" in loader_refusal(sparse, tmp_path)


@pytest.fixture
def huge_tiles(copy) -> Path:
    """sentinel2 declared as tiles of 32768 x 32768 px in chunks of 1024 x 1024, two chunks stored: a file of a
    few KB whose every read would allocate 28 GB."""
    import zlib

    px = 32768
    with h5py.File(h5(copy), "a") as f:
        attrs = dict(f["sentinel2"].attrs)
        n = f["sentinel2"].shape[0]
        del f["sentinel2"]
        d = f.create_dataset("sentinel2", shape=(n, 13, px, px), dtype="u2", chunks=(1, 1, 1024, 1024),
                             compression="gzip")
        d.attrs.update(attrs)
        blob = zlib.compress(np.full((1024, 1024), 500, "u2").tobytes())
        for i in range(n):
            d.id.write_direct_chunk((i, 0, 0, 0), blob)
    return copy


def test_a_tile_size_no_dataset_has_is_refused_before_any_read(huge_tiles, tmp_path):
    said = loader_refusal(huge_tiles, tmp_path, read_first=True, modalities=["sentinel2"])
    assert "sentinel2: tiles of 32768 px, larger than any dataset holds" in said
    proc = limited_cli(["validate", huge_tiles], tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "tiles of 32768 px" in proc.stdout, proc.stdout


def test_validate_and_loader_on_a_release_declaring_10_12_tiles(huge_release, tmp_path):
    proc = limited_cli(["validate", huge_release], tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "metadata: declares 1000000000000 rows, but its shards hold only 12" in proc.stdout, proc.stdout
    # the loader reads what the shards hold, as after a partial download, and allocates for nothing else
    proc = limited(f"""
        from mmearth_data import MMEarthDataset
        for split in ("all", "train"):
            ds = MMEarthDataset({str(huge_release)!r}, split=split)
            print(split, len(ds), ds[len(ds) - 1]["id"])
        """, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[0].startswith("all 12 ") and proc.stdout.split("\n")[1].startswith("train 12 ")


def test_a_release_mapping_more_rows_than_its_shard_holds_is_one_line(small, tmp_path):
    rel = tmp_path / "rel"
    shard(small, rel, tiles_per_shard=12)
    forge_vds(rel, 10**12, stretch=True)
    said = loader_refusal(rel, tmp_path)
    assert "holds 12 rows, but" in said and "maps rows 0..999999999999" in said
    report = validate(rel, layout_only=True)
    assert any("holds 12 rows, but" in str(f) for f in report.errors), report.format_text()


def test_many_more_rows_than_tile_info_records_are_not_read(copy):
    edit_json(copy, "tile_info", lambda d: [d.pop(k) for k in list(d)[1:]])
    report = validate(copy, layout_only=True)
    assert f"metadata: 12 rows, but {STEM}_tile_info.json holds only 1 records" in report.format_text()


# ---- item 10: wrong data accepted silently -------------------------------------------------------------------
def nan_stats(d: Path) -> None:
    def fill(stats):
        for entry in stats.values():
            for k in entry:
                entry[k] = [float("nan")] * len(entry[k])
    edit_json(d, "band_stats", fill)


def test_band_stats_full_of_nan_fail_validate_and_the_loader(copy):
    nan_stats(copy)
    proc = run_cli("validate", copy)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert re.search(f"{STEM}_band_stats.json: sentinel2_l(1c|2a): mean/std of band B1 are not numbers, but "
                     "sentinel2 holds valid values there", proc.stdout), proc.stdout
    ds = MMEarthDataset(copy, modalities=["sentinel2"])
    with pytest.raises(MMEarthError, match=r"_band_stats\.json: sentinel2_l[12][ac]: mean/std of band B1 are not"):
        ds[0]
    assert not torch.isnan(MMEarthDataset(copy, modalities=["sentinel2"], normalize=False)[0]["sentinel2"]).all()


def test_nan_statistics_of_a_band_without_data_stay_valid(copy):
    """B10 of L2A tiles is all no-data: its NaN statistics are right, and so is every NaN it loads as."""
    assert validate(copy, max_tiles=None).ok
    stats = json.loads(side(copy, "band_stats").read_text())
    assert np.isnan(stats["sentinel2_l2a"]["mean"][10])
    ds = MMEarthDataset(copy, split="all", modalities=["sentinel2"])
    for i in range(len(ds)):
        ds[i]


def test_loader_on_int8_sentinel2_gives_validates_error(copy):
    with h5py.File(h5(copy), "r+") as f:
        a = f["sentinel2"][()]
        del f["sentinel2"]
        f.create_dataset("sentinel2", data=a.astype("i1"), chunks=(1, *a.shape[1:]), compression="gzip")
    said = [str(e) for e in validate(copy, layout_only=True).errors]
    assert "ERROR   sentinel2: dtype int8, expected uint16" in said
    with pytest.raises(MMEarthError) as e:
        MMEarthDataset(copy)
    assert str(e.value) == f"{h5(copy)}: sentinel2: dtype int8, expected uint16"


# ---- item 11: tracebacks where one line belongs --------------------------------------------------------------
def test_validate_on_deeply_nested_tile_info_and_huge_split_rows(copy):
    side(copy, "tile_info").write_text("[" * 100_000 + "]" * 100_000)
    edit_json(copy, "splits", lambda s: s["train"].append(10**30))
    proc = run_cli("validate", copy)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "not valid JSON (nested too deeply)" in proc.stdout
    assert "'train' holds rows outside 0..11: 1000000000000000000000000000000" in proc.stdout
    with pytest.raises(MMEarthError, match=r"_splits\.json: 'train' holds rows outside 0\.\.11"):
        MMEarthDataset(copy)


def _group(f):
    del f["sentinel2"]
    f.create_group("sentinel2")


def _plain_metadata(f):
    del f["metadata"]
    f.create_dataset("metadata", data=np.arange(12))


def _short_era5(f):
    a = f["era5"][:11]
    del f["era5"]
    f.create_dataset("era5", data=a)


def _channels(f):
    a = f["aster"][()]
    del f["aster"]
    f.create_dataset("aster", data=a[:, :1])


def _nodata_attr(f):
    f["aster"].attrs["nodata"] = [1, 2, 3]


def _external(f):
    del f["era5"]
    f.create_dataset("era5", shape=(12, 12), dtype="f4", external=[("/etc/hostname", 0, 12 * 12 * 4)])


def _corrupt_chunk(f):
    d = f["sentinel2"]
    mask, data = d.id.read_direct_chunk((3, 0, 0, 0))
    d.id.write_direct_chunk((3, 0, 0, 0), b"\x78\x9c" + bytes(len(data)), mask)


@pytest.mark.parametrize("mutate,expect", [
    (lambda f: f.__delitem__("metadata"), "has no dataset 'metadata'"),
    (_plain_metadata, "metadata: compound fields () of shape (12,), expected (N,) of (tile_id, S2_type)"),
    (_group, "sentinel2: is a group, expected a dataset"),
    (_short_era5, "era5 has 11 rows, metadata has 12"),
    (_channels, "aster: shape (12, 1, 16, 16), expected (N, 2, H, W)"),
    (_nodata_attr, "aster: attribute nodata [1, 2, 3]: expected one number"),
    (_external, "era5: keeps its values in external files"),   # a forged file would read any local file
])
def test_loader_on_malformed_h5_is_one_line(copy, mutate, expect):
    with h5py.File(h5(copy), "r+") as f:
        mutate(f)
    with pytest.raises(MMEarthError) as e:
        MMEarthDataset(copy, split="all")
    assert str(e.value).startswith(str(h5(copy))) and expect in str(e.value)


def test_loader_on_a_corrupt_chunk_is_one_line(copy):
    with h5py.File(h5(copy), "r+") as f:
        _corrupt_chunk(f)
    ds = MMEarthDataset(copy, split="all", modalities=["sentinel2"])
    with pytest.raises(MMEarthError, match=r"\.h5: a chunk of /sentinel2 does not decode"):
        ds[3]


@pytest.mark.parametrize("kind,mutate,expect", [
    ("band_stats", lambda d: d["aster"].__setitem__("mean", "0"), "aster.mean: length str, expected a list of 2"),
    ("band_stats", lambda d: d["era5"].pop("std"), "era5.std: missing, expected a list of 12"),
    ("band_stats", lambda d: d.__setitem__("lat", [0, 1]), "'lat' must be an object with mean/std/min/max"),
    ("splits", lambda d: d.__setitem__("train", 3), "'train' must be a list of integer row indices"),
    ("splits", lambda d: d.__setitem__("train", [True, 1.5]), "'train' must be a list of integer row indices"),
])
def test_loader_on_malformed_side_files_is_one_line(copy, kind, mutate, expect):
    edit_json(copy, kind, mutate)
    with pytest.raises(MMEarthError) as e:
        MMEarthDataset(copy)
    assert str(e.value).startswith(str(side(copy, kind))) and expect in str(e.value)
    assert expect in "\n".join(str(f) for f in validate(copy, layout_only=True).errors)


def test_a_side_file_that_is_not_an_object_is_one_line(copy):
    side(copy, "splits").write_text("[1, 2]")
    with pytest.raises(MMEarthError, match=r"_splits\.json: holds a JSON list; v001 expects an object"):
        MMEarthDataset(copy)


def _text_flag(d: Path) -> None:
    with h5py.File(h5(d), "r+") as f:
        f.attrs["unlabelled_tiles"] = "many"


@pytest.mark.parametrize("mutate,expect", [
    (_text_flag,
     "ERROR   layout: file attribute unlabelled_tiles 'many': expected a count"),
    (lambda d: edit_json(d, "tile_info", lambda info: info.__setitem__("3", 5)),
     "ERROR   data_hostile_v001_tile_info.json: 1 record(s) are not objects, e.g. ['3']"),
])
def test_validate_on_odd_attributes_and_records_is_an_error_not_a_traceback(copy, mutate, expect):
    mutate(copy)
    proc = run_cli("validate", copy)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert expect in proc.stdout, proc.stdout


@pytest.fixture(scope="module")
def data64(synthetic_dataset) -> Path:
    return synthetic_dataset(4, 64, 1, "data_pt_v001")


class _Payload:
    """Unpickling this would run a shell command; weights_only must refuse it before anything runs."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.slow
def test_pretrain_resume_with_a_bad_checkpoint_is_one_line(data64, tmp_path):
    args = ["pretrain", "--data", data64, "--input-size", "56", "--batch-size", "2", "--resume", "--out"]
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "checkpoint.pt").write_bytes(b"")
    proc = run_cli(*args, empty)
    err = one_line_error(proc)
    assert "aborted" not in err and proc.returncode != 130
    assert "checkpoint.pt: not a PyTorch checkpoint (an empty file)" in err

    evil, marker = tmp_path / "evil", tmp_path / "pwned"
    evil.mkdir()
    torch.save({"model": _Payload(marker)}, evil / "checkpoint.pt")
    err = one_line_error(run_cli(*args, evil))
    assert "refused: it refers to posix.system" in err and "weights_only" not in err
    assert not marker.exists()

    stranger = tmp_path / "stranger"
    stranger.mkdir()
    torch.save({"model": {"w": torch.zeros(3)}, "optimizer": {}, "epoch": 0, "step": 1}, stranger / "checkpoint.pt")
    err = one_line_error(run_cli(*args, stranger))
    assert "its weights do not fit this run's model" in err


def test_pretrain_with_workers_on_nan_statistics_is_one_line(data64, tmp_path):
    d = tmp_path / "d"
    shutil.copytree(data64, d)
    edit_json(d, "band_stats", lambda st: st["sentinel2_l2a"].__setitem__("mean", [float("nan")] * 13))
    edit_json(d, "band_stats", lambda st: st["sentinel2_l1c"].__setitem__("mean", [float("nan")] * 13))
    err = one_line_error(run_cli("pretrain", "--data", d, "--input-size", "56", "--batch-size", "2",
                                 "--loader-workers", "1", "--out", tmp_path / "run"))
    assert re.fullmatch(r"error: \S+_band_stats\.json: sentinel2_l(1c|2a): mean/std of band B1 are not numbers, .*",
                        err), err


def test_embed_and_probe_refuse_a_payload_without_torchs_advice(data64, tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"model": _Payload(marker)}, tmp_path / "evil.pt")
    for args in (["embed", "--data", data64, "--checkpoint", tmp_path / "evil.pt", "--out", tmp_path / "e.npy"],
                 ["probe", "--data", data64, "--checkpoint", tmp_path / "evil.pt"]):
        err = one_line_error(run_cli(*args))
        assert "evil.pt: refused: it refers to posix.system" in err and "weights_only" not in err, err
    assert not marker.exists() and not (tmp_path / "e.npy").exists()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((tmp_path / "evil.pt").read_bytes()[:200])
    err = one_line_error(run_cli("embed", "--data", data64, "--checkpoint", truncated, "--out", tmp_path / "e.npy"))
    assert "truncated.pt: not a readable PyTorch checkpoint" in err


@pytest.mark.parametrize("args, says", [
    ([], "--input-size 112: larger than the 64 px tiles of"),   # the default crop on MMEarth64 tiles
    (["--input-size", "56", "--base-lr", "-1"], "--base-lr -1.0: must be above 0"),
])
def test_pretrain_arguments_the_data_cannot_take_are_one_line(data64, tmp_path, args, says):
    err = one_line_error(run_cli("pretrain", "--data", data64, "--out", tmp_path / "run", *args))
    assert err.startswith(f"error: {says}"), err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
