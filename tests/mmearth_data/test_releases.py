"""Sharded releases (shard, manifest, VDS), their download and verification, against a loopback HTTP server."""
from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from mmearth_data import MMEarthDataset, MMEarthError
from mmearth_data.download import Fetcher, Job
from mmearth_data.releases import download_release, verify
from mmearth_data.sample_data import write_sample_dataset
from mmearth_data.shards import shard

from cli_runner import run_cli


def cli(args: list) -> tuple[int, str]:
    proc = run_cli(*args)
    return proc.returncode, proc.stdout + proc.stderr
from servers.http_range import RangeServer

STEM = "data_rel_v001"


@pytest.fixture(scope="module")
def dataset(synthetic_dataset) -> Path:
    return synthetic_dataset(30, 32, 3, STEM)


@pytest.fixture(scope="module")
def release(sharded_release) -> Path:
    return sharded_release(STEM)


@pytest.fixture
def served(release):
    with RangeServer(release.parent) as server:
        yield server, f"{server.url}/{release.name}/manifest.json"


def same_samples(a: MMEarthDataset, b: MMEarthDataset) -> None:
    assert len(a) == len(b) and len(a) > 0
    for i in range(len(a)):
        x, y = a[i], b[i]
        assert x.keys() == y.keys()
        for k in x:
            if k == "id":
                assert x[k] == y[k]
            else:
                assert torch.equal(torch.nan_to_num(x[k], 7e7), torch.nan_to_num(y[k], 7e7)), (i, k)


def test_shard_layout_manifest_and_resume(dataset, release, tmp_path):
    m = json.loads((release / "manifest.json").read_text())
    assert m["n_tiles"] == 30 and set(m["groups"]) == {"sentinel2", "sentinel1", "rest"}
    shards = [f for f in m["files"] if f["kind"] == "shard"]
    assert len(shards) == 3 * 4 and {tuple(f["rows"]) for f in shards} == {(0, 8), (8, 16), (16, 24), (24, 30)}
    for f in m["files"]:   # declared bytes and sha256 are the files'
        data = (release / f["name"]).read_bytes()
        assert len(data) == f["bytes"] and hashlib.sha256(data).hexdigest() == f["sha256"]
    with h5py.File(dataset / f"{STEM}.h5") as src, h5py.File(release / shards[1]["name"]) as s:
        assert s["sentinel2"].shape[0] == 8 and s["sentinel2"].chunks == src["sentinel2"].chunks
        assert s["sentinel2"].compression == src["sentinel2"].compression and dict(s["sentinel2"].attrs).keys() \
            == dict(src["sentinel2"].attrs).keys()
        # the very same compressed chunk bytes as the source
        assert s["sentinel2"].id.read_direct_chunk((0, 0, 0, 0)) == src["sentinel2"].id.read_direct_chunk((8, 0, 0, 0))
        assert "sentinel1" not in s and "metadata" in s
    # a rerun after losing two shards writes only those two, to the same bytes
    again = tmp_path / "again"
    shutil.copytree(release, again)
    lost = [again / shards[0]["name"], again / shards[5]["name"]]
    for p in lost:
        p.unlink()
    mtimes = {p: p.stat().st_mtime_ns for p in (again / "shards").iterdir()}
    (again / "manifest.json").unlink()
    shard(dataset, again, tiles_per_shard=8, split_modalities=True)
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())
    assert (again / "manifest.json").read_bytes() == (release / "manifest.json").read_bytes()
    for p in lost:
        assert p.read_bytes() == (release / p.relative_to(again)).read_bytes()


def test_shard_killed_then_rerun_gives_the_same_release(dataset, release, tmp_path):
    out = tmp_path / "killed"
    def cmd(to: Path) -> list[str]:
        return [sys.executable, "-m", "mmearth_data.cli", "shard", str(dataset), "--out", str(to),
                "--tiles-per-shard", "1", "--split-modalities"]

    proc = subprocess.Popen(cmd(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list((out / "shards").glob("*.h5"))) < 20:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists()
    subprocess.run(cmd(out), check=True, capture_output=True)
    ref = tmp_path / "ref"
    subprocess.run(cmd(ref), check=True, capture_output=True)
    assert (out / "manifest.json").read_bytes() == (ref / "manifest.json").read_bytes()
    assert not [p for p in out.rglob("*.partial")]


def test_readers_get_identical_samples_from_file_vds_and_shard_directory(dataset, release):
    single = MMEarthDataset(dataset, split="all")
    same_samples(single, MMEarthDataset(release, split="all"))
    same_samples(single, MMEarthDataset(release / f"{STEM}.h5", split="all"))
    same_samples(MMEarthDataset(dataset, split="train"), MMEarthDataset(release, split="train"))
    ds = MMEarthDataset(release, split="all")
    ds[0]
    reader = ds._readers["sentinel2"]
    assert type(reader).__name__ == "VirtualTileReader" and all(r.fast for r in reader._readers.values())


def test_third_party_readers_open_the_release_unchanged(dataset, release, tmp_path, monkeypatch):
    """torchgeo's MMEarth and MMEarth-train's MMEarthDataset: ``h5py.File(<dir>/<stem>.h5)`` (MMEarth-train
    globs ``data_*.h5``), ``f[modality][idx]``, ``f["metadata"][idx]``, and the JSON side files by stem; run from
    another working directory."""
    monkeypatch.chdir(tmp_path)
    found = sorted(release.glob("data_*.h5"))
    assert [p.name for p in found] == [f"{STEM}.h5"]
    tile_info = json.loads(sorted(release.glob("data_*_tile_info.json"))[0].read_text())
    splits = json.loads(sorted(release.glob("data_*_splits.json"))[0].read_text())
    with h5py.File(dataset / f"{STEM}.h5", "r") as a, h5py.File(found[0], "r") as b:
        assert sorted(a) == sorted(b)
        for idx in splits["train"][:10]:
            meta = b["metadata"][idx]
            assert meta.tolist() == a["metadata"][idx].tolist()
            assert bytes(meta[0]).decode() in tile_info
            for k in a:
                x, y = a[k][idx], b[k][idx]
                assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), k
            assert dict(a["sentinel2"].attrs)["bands"].tolist() == dict(b["sentinel2"].attrs)["bands"].tolist()


def test_download_fetches_selected_modalities_only_and_the_partial_release_loads(served, release, dataset, tmp_path):
    server, url = served
    out = tmp_path / "dl"
    download_release(url, out, modalities=["sentinel2", "biome"], shards="1-2", connections=4, log=lambda s: None)
    paths = {r["path"] for r in server.requests if r["path"].endswith(".h5")}
    assert paths and all(("-sentinel1-" not in p) and ("-00001" in p or "-00002" in p) for p in paths), paths
    got = sorted(p.name for p in (out / "shards").iterdir())
    assert got == [f"{STEM}-rest-00001.h5", f"{STEM}-rest-00002.h5", f"{STEM}-sentinel2-00001.h5",
                   f"{STEM}-sentinel2-00002.h5"]
    part = MMEarthDataset(out, split="all", modalities=["sentinel2", "biome"])
    full = MMEarthDataset(dataset, split="all", modalities=["sentinel2", "biome"])
    assert [part[i]["id"] for i in range(len(part))] == [full[i]["id"] for i in range(8, 24)]
    assert torch.equal(part[0]["sentinel2"].nan_to_num(5e5), full[8]["sentinel2"].nan_to_num(5e5))
    with pytest.raises(MMEarthError, match="sentinel1"):
        MMEarthDataset(out, split="all", modalities=["sentinel1"])
    assert verify(out, log=lambda s: None).ok


def test_download_survives_faults_and_retry_after(served, release, tmp_path):
    server, url = served
    server.faults = [None, ("status", 503), ("status", 429), ("truncate", 3000), ("status", 500), ("corrupt",)]
    t0 = time.monotonic()
    out = tmp_path / "dl"
    report = download_release(url, out, connections=1, backoff=0.01, log=lambda s: None)
    assert time.monotonic() - t0 < 30
    assert report.refetched and sum(report.retries.values()) >= 4, report.line()
    assert verify(out, log=lambda s: None).ok
    for f in json.loads((release / "manifest.json").read_text())["files"]:
        assert (out / f["name"]).read_bytes() == (release / f["name"]).read_bytes()


def test_sigkilled_download_resumes_without_fetching_written_bytes_again(served, release, tmp_path):
    """Killed mid-transfer: finished files are not fetched again, nor the journalled bytes of unfinished ones."""
    server, url = served
    server.bandwidth_bps = 300_000
    out = tmp_path / "dl"
    code = ("import mmearth_data.download as d; d.BLOCK = 16 << 10; from mmearth_data.releases import "
            f"download_release; download_release({url!r}, {str(out)!r}, connections=2, log=lambda s: None)")
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    from mmearth_data.download import RECORD

    def progress() -> bool:   # a file finished and another one journalled part-way: the moment to kill
        done = any((out / "shards").glob("*.h5")) if (out / "shards").is_dir() else False
        return done and any(j.stat().st_size >= 2 * RECORD.size for j in out.rglob("*.journal"))

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not progress():
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = sum(p.stat().st_size for p in (out / "shards").glob("*.h5"))
    journalled = {}
    for j in out.rglob("*.journal"):
        raw = j.read_bytes()
        ends = [RECORD.unpack_from(raw, i)[1] for i in range(RECORD.size, len(raw) // RECORD.size * RECORD.size,
                                                              RECORD.size)]
        journalled[j.name[1:-len(".partial.journal")]] = max(ends, default=0)
    assert finished > 0 and sum(journalled.values()) > 0, (finished, journalled)
    server.requests.clear()
    server.bandwidth_bps = 0
    download_release(url, out, connections=2, log=lambda s: None)
    for r in server.requests:   # unfinished files resume after their journalled bytes
        name = r["path"].rsplit("/", 1)[1]
        if name in journalled and r["range"]:
            assert int(r["range"].split("=")[1].split("-")[0]) >= journalled[name], (name, r["range"])
    total = sum(f["bytes"] for f in json.loads((release / "manifest.json").read_text())["files"]
                if f["name"].endswith(".h5"))
    assert server.bytes_sent(".h5") == total - finished - sum(journalled.values())
    assert verify(out, log=lambda s: None).ok


def test_verify_finds_corruption_and_fix_fetches_it_again(served, release, tmp_path):
    _, url = served
    out = tmp_path / "dl"
    download_release(url, out, connections=4, log=lambda s: None)
    bad = out / "shards" / f"{STEM}-sentinel1-00002.h5"
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 1
    bad.write_bytes(bytes(data))
    (out / "shards" / f"{STEM}-rest-00000.h5").unlink()
    rc, output = cli(["verify", str(out)])
    assert rc == 1 and "1 missing" in output and "1 corrupt" in output and "sentinel1-00002" in output
    rc, output = cli(["verify", str(out), "--fix"])
    assert rc == 0, output
    assert bad.read_bytes() == (release / "shards" / bad.name).read_bytes()


def test_verify_fix_waits_its_turn_while_another_run_holds_the_directory(served, tmp_path):
    """``verify --fix`` deletes bad files and rewrites download.json, which a download running in the same
    directory keeps rewriting: it takes the directory's lock (a live holder makes it one line, nothing deleted)."""
    _, url = served
    out = tmp_path / "dl"
    download_release(url, out, connections=4, log=lambda s: None)
    missing = out / "shards" / f"{STEM}-rest-00000.h5"
    missing.unlink()
    bad = out / "shards" / f"{STEM}-rest-00001.h5"
    bad.write_bytes(bad.read_bytes()[:-1] + b"x")
    record, present = (out / "download.json").read_bytes(), sorted((out / "shards").iterdir())
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from mmearth_data.locking import output_lock\n"
                               "with output_lock(sys.argv[1], 'download'):\n    print('held', flush=True); "
                               "time.sleep(60)", str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        rc, output = cli(["verify", str(out), "--fix"])
        assert rc == 2 and "in use by mmearth-data download" in output, output
        assert (out / "download.json").read_bytes() == record and sorted((out / "shards").iterdir()) == present
    finally:
        holder.kill()
        holder.wait()
    rc, output = cli(["verify", str(out), "--fix"])
    assert rc == 0 and missing.is_file() and verify(out, log=lambda s: None).ok, output


@pytest.mark.parametrize("mutate, expect", [
    (lambda f: f.__setitem__("name", "/etc/evil.h5"), "absolute path"),
    (lambda f: f.__setitem__("name", "shards/../../evil.h5"), "leaves the release"),
    (lambda f: f.__setitem__("name", "..\\evil.h5"), "absolute path"),
    (lambda f: f.__setitem__("name", "data_rel_v001_splits.json"), "appears twice"),
    (lambda f: f.__setitem__("name", "manifest.json"), "reserved"),
    (lambda f: f.__setitem__("bytes", -5), "bytes must be"),
])
def test_malicious_manifests_are_refused_before_anything_is_written(served, release, tmp_path, mutate, expect):
    server, _ = served
    doc = json.loads((release / "manifest.json").read_text())
    mutate(doc["files"][0])
    (release.parent / "evil.json").write_text(json.dumps(doc))
    out = tmp_path / "dl"
    rc, output = cli(["download", "--manifest", f"{server.url}/evil.json", "--out", str(out)])
    assert rc == 2 and expect in output and output.count("\n") == 1, output
    assert not out.exists() and not (tmp_path / "evil.h5").exists()


def test_links_file_urls_sizes_and_redirects_are_refused(served, release, tmp_path):
    server, url = served
    doc = json.loads((release / "manifest.json").read_text())
    (release.parent / "local.json").write_text(json.dumps({**doc, "base_url": f"file://{release}"}))
    rc, output = cli(["download", "--manifest", f"{server.url}/local.json", "--out", str(tmp_path / "a")])
    assert rc == 2 and "never points at local files" in output
    # a link inside --out that would lead elsewhere
    out = tmp_path / "b"
    (out).mkdir()
    (tmp_path / "elsewhere").mkdir()
    (out / "shards").symlink_to(tmp_path / "elsewhere")
    rc, output = cli(["download", "--manifest", url, "--out", str(out)])
    assert rc == 2 and "symbolic link" in output and not list((tmp_path / "elsewhere").iterdir())
    # a declared size that is not the server's
    doc2 = json.loads(json.dumps(doc))
    doc2["files"][0]["bytes"] -= 10
    (release.parent / "size.json").write_text(json.dumps({**doc2, "base_url": f"{server.url}/{release.name}"}))
    rc, output = cli(["download", "--manifest", f"{server.url}/size.json", "--out", str(tmp_path / "c")])
    assert rc == 2 and "refusing" in output
    assert not (tmp_path / "c" / doc["files"][0]["name"]).exists()
    # a redirect to another host
    server.faults = [("redirect", "http://localhost:9/manifest.json")]
    rc, output = cli(["download", "--manifest", url, "--out", str(tmp_path / "d")])
    assert rc == 2 and "another host" in output and "--allow-redirects" in output


def test_variant_through_a_mirror_records_checksums_and_validates(tmp_path):
    root = tmp_path / "www" / "mirror"
    write_sample_dataset(root, 12, tile_px=32, seed=5, stem="data_100k_v001")
    with RangeServer(tmp_path / "www") as server:
        out = tmp_path / "variant"
        rc, output = cli(["download", "--variant", "MMEarth100k", "--mirror", f"{server.url}/mirror",
                      "--out", str(out)])
        assert rc == 0, output
        assert "validate --layout-only: ok" in output and "no checksums are published" in output
        rec = json.loads((out / "download.json").read_text())
        for name in rec["selected"]:
            assert rec["sha256"][name] == hashlib.sha256((root / name).read_bytes()).hexdigest()
        assert len(MMEarthDataset(out, split="all")) == 12
        assert verify(out, log=lambda s: None).ok
        with open(out / "data_100k_v001.h5", "r+b") as fh:
            fh.seek(4000)
            fh.write(b"\0\1\2\3")
        assert not verify(out, log=lambda s: None).ok
        assert verify(out, fix=True, log=lambda s: None).ok


def test_not_enough_space_is_refused_before_writing(served, tmp_path, monkeypatch):
    _, url = served
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10, 10, 5))
    with pytest.raises(MMEarthError, match=r"needs \S+ MB free for this download, has 0.0 MB"):
        download_release(url, tmp_path / "x", log=lambda s: None)
    assert not list((tmp_path / "x").glob("shards/*"))


def test_fetcher_pieces_one_large_file_over_many_connections(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    data = np.random.default_rng(0).integers(0, 255, 3_000_000, dtype=np.uint8).tobytes()
    (root / "big.bin").write_bytes(data)
    with RangeServer(root) as server:
        job = Job(f"{server.url}/big.bin", tmp_path / "big.bin", len(data), hashlib.sha256(data).hexdigest())
        Fetcher(4, piece=500_000).fetch([job])
        ranges = {r["range"] for r in server.requests}
    assert (tmp_path / "big.bin").read_bytes() == data and len(ranges) == 6


def test_a_variant_without_mirror_is_one_line_and_writes_nothing(tmp_path):
    """No download URL ships with the package (the authors' share links are capability URLs): ``--mirror`` names it."""
    out = tmp_path / "variant"
    rc, output = cli(["download", "--variant", "MMEarth100k", "--out", str(out)])
    assert rc != 0 and "--mirror URL" in output and len(output.strip().splitlines()) == 1, output
    assert not out.exists()


def test_the_release_vds_file_is_the_same_bytes_whenever_it_is_written(release, tmp_path):
    """HDF5 stamps each object with its modification time unless told not to; the virtual datasets of a release's
    ``<stem>.h5`` were stamped, so every shard or download rerun wrote other bytes from the same shards."""
    from mmearth_data.manifest import read_manifest
    from mmearth_data.shards import write_vds

    copy = shutil.copytree(release, tmp_path / "rel")
    vds = copy / f"{STEM}.h5"
    first = hashlib.sha256(vds.read_bytes()).hexdigest()
    time.sleep(1.1)   # the stamps have one-second resolution
    write_vds(copy, read_manifest(copy / "manifest.json"))
    assert hashlib.sha256(vds.read_bytes()).hexdigest() == first
    with h5py.File(vds) as f:
        assert all(h5py.h5o.get_info(f[name].id).mtime == 0 for name in f)


# ---- new-user review: validate on releases, shard on bad input ------------------------------------------------
def test_validate_judges_a_release_by_its_shards_storage(release):
    """The VDS has no chunks (a virtual layout): its shards' chunking counts, not a warning per dataset."""
    from mmearth_data import validate

    report = validate(release, max_tiles=None)
    assert report.ok, report.format_text()
    assert not [f for f in report.warnings if "tile per chunk" in f.message], report.format_text()
    assert report.tiles_checked == 30


def test_validate_reports_a_shard_not_stored_one_tile_per_chunk(dataset, tmp_path):
    from mmearth_data import validate

    rel = tmp_path / "rel"
    shard(dataset, rel, tiles_per_shard=8)
    bad = rel / "shards" / f"{STEM}-00001.h5"
    with h5py.File(bad, "a") as f:   # aster rewritten contiguous in one shard
        data, attrs = f["aster"][...], dict(f["aster"].attrs)
        del f["aster"]
        f.create_dataset("aster", data=data).attrs.update(attrs)
    report = validate(rel, layout_only=True)
    warned = [str(f) for f in report.warnings if "tile per chunk" in f.message]
    assert len(warned) == 1 and "aster" in warned[0] and f"{STEM}-00001.h5" in warned[0], report.format_text()


def test_validate_accepts_a_documented_partial_download_and_checks_its_rows(served, release, tmp_path):
    from mmearth_data import validate

    _, url = served
    out = tmp_path / "dl"
    download_release(url, out, shards="1", connections=2, log=lambda s: None)
    rc, output = cli(["validate", str(out)])
    assert rc == 0, output
    assert "partial download: 8 of 30 tiles present" in output and "tile per chunk" not in output, output
    report = validate(out, max_tiles=None)
    assert report.ok and report.tiles_checked == 8, report.format_text()
    assert [f.message for f in report.warnings if "partial download" in f.message] and \
        len([f for f in report.warnings if "partial download" in f.message]) == 1
    # the pixels of the rows present are read: a bad code in the shard is found
    with h5py.File(out / "shards" / f"{STEM}-rest-00001.h5", "a") as f:
        f["dynamic_world"][3, 0, 0, 0] = 200
    report = validate(out, max_tiles=None)
    assert "dynamic_world: 1 of 8 checked tiles hold codes" in "\n".join(map(str, report.errors)), \
        report.format_text()


def test_validate_still_refuses_rows_the_download_record_claims_but_no_shard_holds(served, release, tmp_path):
    from mmearth_data import validate

    _, url = served
    out = tmp_path / "dl"
    download_release(url, out, shards="1", connections=2, log=lambda s: None)
    rec = json.loads((out / "download.json").read_text())   # the record claims shard 2 too; its file is not there
    rec["selected"] += [n.replace("-00001", "-00002") for n in rec["selected"] if "-00001" in n]
    (out / "download.json").write_text(json.dumps(rec))
    report = validate(out, layout_only=True)
    assert not report.ok and "partial download:" not in report.format_text(), report.format_text()
    assert "shards hold only 8" in report.format_text()


def test_shard_refuses_a_release_as_input_before_writing(release, tmp_path):
    out = tmp_path / "rel2"
    rc, output = cli(["shard", str(release), "--out", str(out), "--tiles-per-shard", "8"])
    assert rc != 0 and len(output.strip().splitlines()) == 1, output
    assert "is a release" in output and "the dataset it was cut from" in output, output
    assert not out.exists()


def test_shard_names_a_broken_side_file_of_its_input_and_writes_nothing(dataset, tmp_path):
    src = shutil.copytree(dataset, tmp_path / "v")
    (src / f"{STEM}_tile_info.json").write_text("{broken")
    out = tmp_path / "R"
    rc, output = cli(["shard", str(src), "--out", str(out), "--tiles-per-shard", "8"])
    assert rc != 0 and len(output.strip().splitlines()) == 1, output
    assert f"{src / f'{STEM}_tile_info.json'}: not valid JSON" in output, output
    assert not out.exists()
