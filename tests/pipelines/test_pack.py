"""Pack: v001 output that validates and loads, exact statistics, honest splits, byte-identical and rerunnable."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from mmearth_data import MMEarthDataset, open_dataset, validate
from mmearth_data.catalog import load_spec
from pipelines.export import ExportConfig, run_export
from pipelines.pack import PackConfig, pack
from pipelines.splits import spatial_splits
from stac_factory import write_locations_parquet


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("packsrc")
    loc = write_locations_parquet(root / "loc.parquet", 40, seed=9)
    run_export(ExportConfig.of(locations=str(loc), out=str(root / "export"), backend="synthetic", tile_px=32,
                            partition_size=10), workers=2)
    return root / "export"


def digest_dir(d) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir()) if p.is_file()}


def test_packed_dataset_validates_loads_and_has_exact_stats(export_dir, tmp_path):
    h5 = pack(PackConfig(str(export_dir), str(tmp_path), "data_40_v001", tile_px=32, fractions=(0.8, 0.1, 0.1)),
              workers=2)
    report = validate(tmp_path)
    assert report.ok, report.format_text()
    files = open_dataset(tmp_path)
    spec = load_spec()
    with h5py.File(h5) as f:
        n = f["sentinel2"].shape[0]
        assert f.attrs["synthetic"] and f.attrs["backend"] == "synthetic" and len(f.attrs["config_hash"]) == 16
        types = np.array([t.decode() for t in f["metadata"]["S2_type"]])
        for name, ds in spec.datasets.items():
            if not ds.stats_keys:
                continue
            arr = f[name][:]
            for s2 in (spec.s2_types if ds.stats_split_by else [None]):
                part = arr if s2 is None else arr[types == s2]
                if not len(part):
                    continue
                entry = files.band_stats[ds.stats_key(s2)]
                miss = ds.missing_mask(part)
                for b in range(ds.channels):
                    v = part[:, b][~miss[:, b]].astype(np.float64) if miss is not None else part[:, b].astype(np.float64)
                    if not v.size:
                        continue
                    assert entry["mean"][b] == pytest.approx(v.mean(), rel=1e-9, abs=1e-9)
                    assert entry["std"][b] == pytest.approx(v.std(), rel=1e-7, abs=1e-9)
                    assert entry["min"][b] == v.min() and entry["max"][b] == v.max()
    assert n == len(files.tile_info) and n > 20
    ds = MMEarthDataset(tmp_path, split="train")
    sample = ds[0]
    assert sample["sentinel2"].shape == (13, 32, 32)
    assert set(sum(files.splits.values(), [])) == set(range(n))


def test_tile_px_64_is_the_centre_of_the_128_tiles(export_dir, tmp_path):
    full = pack(PackConfig(str(export_dir), str(tmp_path / "a"), "full", tile_px=32), workers=1)
    centre = pack(PackConfig(str(export_dir), str(tmp_path / "b"), "centre", tile_px=16), workers=1)
    with h5py.File(full) as f, h5py.File(centre) as g:
        assert np.array_equal(f["sentinel2"][:, :, 8:24, 8:24], g["sentinel2"][:])
        assert np.array_equal(f["era5"][:], g["era5"][:])


def test_byte_identical_for_one_worker_and_a_local_cluster(export_dir, tmp_path):
    pack(PackConfig(str(export_dir), str(tmp_path / "one"), "d", tile_px=32), scheduler="threads", workers=1)
    pack(PackConfig(str(export_dir), str(tmp_path / "two"), "d", tile_px=32), scheduler="local-cluster", workers=2)
    assert digest_dir(tmp_path / "one") == digest_dir(tmp_path / "two")


def test_sigkill_during_pack_then_rerun_is_identical(export_dir, tmp_path):
    code = ("import sys; from pipelines.pack import PackConfig, pack; "
            f"pack(PackConfig({str(export_dir)!r}, sys.argv[1], 'd', tile_px=32), scheduler='threads', workers=1)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "killed")], env=env, start_new_session=True)
    work = tmp_path / "killed" / ".d.pack-work"
    deadline = time.time() + 60
    while not list(work.glob("*.index.json")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "d.h5").exists()                   # nothing complete-looking
    pack(PackConfig(str(export_dir), str(tmp_path / "killed"), "d", tile_px=32), workers=1)
    pack(PackConfig(str(export_dir), str(tmp_path / "straight"), "d", tile_px=32), workers=1)
    assert digest_dir(tmp_path / "killed") == digest_dir(tmp_path / "straight")
    assert not work.exists()


def test_a_kill_right_after_the_h5_is_renamed_leaves_no_index_or_card_of_the_dataset_it_replaced(export_dir,
                                                                                                     tmp_path):
    """``pack --overwrite`` publishes the .h5 and then derives ``<stem>_tiles.parquet`` and the card from it. A
    SIGKILL at the instant after the rename (the child kills itself there) used to leave the previous pack's index
    beside the new file: ``tiles=`` then selected rows by another dataset's ids. Now nothing derived from the old
    dataset is left, the loader selects from the side files, and the rerun ends with the bytes of a straight run."""
    out = tmp_path / "ds"
    pack(PackConfig(str(export_dir), str(out), "d", tile_px=32), scheduler="threads", workers=1)
    assert (out / "d_tiles.parquet").is_file() and (out / "README.md").is_file()
    code = ("import os, signal, sys; from pipelines.pack import PackConfig, pack; rename = os.replace\n"
            "def replace(src, dst):\n"
            "    rename(src, dst)\n"
            "    if str(dst) == sys.argv[1] + '/d.h5': os.kill(os.getpid(), signal.SIGKILL)\n"
            "os.replace = replace\n"
            f"pack(PackConfig({str(export_dir)!r}, sys.argv[1], 'd', tile_px=32, subset=5, overwrite=True), "
            "scheduler='threads', workers=1)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", code, str(out)], env=env, timeout=300)
    assert proc.returncode == -signal.SIGKILL
    with h5py.File(out / "d.h5") as f:
        ids = [t.decode() for t in f["metadata"]["tile_id"]]
    assert len(ids) == 5
    assert not (out / "d_tiles.parquet").exists() and not (out / "README.md").exists()
    ds = MMEarthDataset(out, split="all", modalities=["sentinel2"], tiles=[ids[-1]], normalize=False)
    assert [ds[i]["id"] for i in range(len(ds))] == [ids[-1]]
    pack(PackConfig(str(export_dir), str(out), "d", tile_px=32, subset=5, overwrite=True), workers=1)
    pack(PackConfig(str(export_dir), str(tmp_path / "straight"), "d", tile_px=32, subset=5), workers=1)
    assert digest_dir(out) == digest_dir(tmp_path / "straight")


def test_splits_are_seeded_disjoint_stratified_and_spatially_blocked():
    rng = np.random.default_rng(0)
    lon, lat = rng.uniform(-20, 20, 3000), rng.uniform(-10, 10, 3000)
    biome = (lon > 0).astype(int) + 2 * (lat > 0)
    a = spatial_splits(lon, lat, biome, (0.8, 0.1, 0.1), seed=1)
    assert a == spatial_splits(lon, lat, biome, (0.8, 0.1, 0.1), seed=1)
    assert a != spatial_splits(lon, lat, biome, (0.8, 0.1, 0.1), seed=2)
    rows = [set(v) for v in a.values()]
    assert sum(map(len, rows)) == 3000 and len(set.union(*rows)) == 3000
    for name, share in (("train", 0.8), ("val", 0.1), ("test", 0.1)):
        assert abs(len(a[name]) / 3000 - share) < 0.03
        for b in range(4):                                        # every biome in every split, in proportion
            in_b = np.flatnonzero(biome == b)
            assert abs(np.isin(in_b, a[name]).mean() - share) < 0.08
    block = lambda i: (int(np.floor(lon[i])), int(np.floor(lat[i])))  # noqa: E731
    train_blocks = {block(i) for i in a["train"]}
    assert not any(block(i) in train_blocks for i in a["val"] + a["test"])
    assert spatial_splits(lon, lat, biome, (1, 0, 0), seed=3)["val"] == []


def test_pack_cli_errors_are_one_line(export_dir, tmp_path):
    def cli(*a):
        return subprocess.run([sys.executable, "-m", "mmearth_data.cli", *map(str, a)], capture_output=True, text=True)

    out = cli("pack", tmp_path, "--out", tmp_path / "o", "--name", "d")
    assert out.returncode == 2 and "not an export directory" in out.stderr
    out = cli("pack", export_dir, "--out", tmp_path / "o", "--name", "d", "--splits", "0.5,0.2")
    assert out.returncode == 2 and "three fractions" in out.stderr
    assert json.loads((export_dir / "export.json").read_text())["tiles"] == 40


def test_plot_sample_draws_one_tile(export_dir, tmp_path):
    pack(PackConfig(str(export_dir), str(tmp_path), "d", tile_px=32), workers=1)
    out = subprocess.run([sys.executable, "-m", "mmearth_data.cli", "plot", "sample", str(tmp_path), "--index", "1",
                          "-o", str(tmp_path / "tile.png")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "tile.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = subprocess.run([sys.executable, "-m", "mmearth_data.cli", "plot", "sample", str(tmp_path), "--index", "999",
                          "-o", str(tmp_path / "x.png")], capture_output=True, text=True)
    assert bad.returncode == 2 and "--index 999" in bad.stderr


def test_subset_is_biome_stratified_and_seeded(export_dir, tmp_path):
    full = pack(PackConfig(str(export_dir), str(tmp_path / "full"), "d", tile_px=32), workers=1)
    sub = pack(PackConfig(str(export_dir), str(tmp_path / "sub"), "d", tile_px=32, subset=12), workers=1)
    pack(PackConfig(str(export_dir), str(tmp_path / "again"), "d", tile_px=32, subset=12), workers=1)
    assert digest_dir(tmp_path / "sub") == digest_dir(tmp_path / "again")
    full_info = open_dataset(full).tile_info
    sub_info = open_dataset(sub).tile_info
    assert len(sub_info) == 12 and set(sub_info) <= set(full_info)
    from collections import Counter

    have, want = Counter(v["biome"] for v in sub_info.values()), Counter(v["biome"] for v in full_info.values())
    for b, n in want.items():
        assert abs(have.get(b, 0) - 12 * n / len(full_info)) < 1        # proportional, up to rounding
    assert validate(tmp_path / "sub").ok
    with pytest.raises(Exception, match="only"):
        pack(PackConfig(str(export_dir), str(tmp_path / "big"), "d", tile_px=32, subset=10_000), workers=1)


def test_a_round_that_contributes_no_tile_leaves_the_bytes_unchanged(tmp_path):
    """The file records the hash of the exports whose tiles it holds: a replacement round whose tiles are all left
    out (e.g. drawn for a tile that succeeded on retry) must not change a byte."""
    from pipelines.export import ExportConfig, run_export
    from pipelines.pack import PackConfig, done_tile_ids, pack
    from stac_factory import write_locations_parquet

    import pyarrow as pa
    import pyarrow.parquet as pq

    exports = []
    for j, seed in enumerate((3, 4)):
        locs = write_locations_parquet(tmp_path / f"l{j}.parquet", 6, seed=seed)
        table = pq.read_table(locs)   # the replacement round's own tile ids
        ids = pa.array([f"r{j}-{t}" for t in table.column("tile_id").to_pylist()])
        pq.write_table(table.set_column(table.column_names.index("tile_id"), "tile_id", ids), locs)
        out = tmp_path / f"e{j}"
        run_export(ExportConfig.of(locations=str(locs), out=str(out), tile_px=32, partition_size=3,
                                synthetic_dir=str(tmp_path / "syn")))
        exports.append(out)
    keep = frozenset(t for p in sorted((exports[0] / "staging").glob("*.sqlite")) for t in done_tile_ids(p))
    assert keep
    one = pack(PackConfig(export_dir=str(exports[0]), out=str(tmp_path / "one"), name="d", tile_px=32,
                          keep_ids=keep))
    two = pack(PackConfig(export_dir=str(exports[0]), out=str(tmp_path / "two"), name="d", tile_px=32,
                          keep_ids=keep, more_exports=(str(exports[1]),)))
    assert one.read_bytes() == two.read_bytes()


def test_pack_refuses_an_export_a_live_run_holds_and_says_what_is_not_exported(export_dir, tmp_path):
    """Packing an export while its run is going packs a moment of staging files that change under it: refused in
    one line naming the holder. A killed, unfinished export may be packed (a first look), with a note of the
    tiles not exported yet (before: exit 0 and silence either way)."""
    from cli_runner import run_cli

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from mmearth_data.locking import output_lock\n"
                               "with output_lock(sys.argv[1], 'export'):\n    print('held', flush=True); "
                               "time.sleep(60)", str(export_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = run_cli("pack", export_dir, "--out", tmp_path / "d", "--name", "d")
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert lines[0].startswith(f"error: {export_dir}: in use by mmearth-data export (pid {holder.pid}, run ")
        assert lines[0].endswith("); pack it once that run has finished")
        assert not (tmp_path / "d").exists()
    finally:
        holder.kill()
        holder.wait()
    partial = tmp_path / "partial"
    shutil.copytree(export_dir, partial)
    for part in sorted((partial / "staging").glob("part-*.sqlite"))[2:]:   # two of four partitions never ran
        part.unlink()
    proc = run_cli("pack", partial, "--out", tmp_path / "p", "--name", "p")
    assert proc.returncode == 0, proc.stderr
    assert "note: 20 of 40 tiles of" in proc.stdout and "--resume" in proc.stdout, proc.stdout
