"""``MMEarthDataset(URL)`` streams a v001 dataset (issue 28) from the loopback Range server and a real
S3-compatible server (moto): samples bit-identical to the local file's, faults survived with nothing wrong
returned, a bounded chunk cache that serves the second epoch without a request, DataLoader workers."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from cli_runner import run_cli
from mmearth_data.dataset import MMEarthDataset
from mmearth_data.errors import MMEarthError
from servers.http_range import RangeServer


@pytest.fixture(scope="module")
def local(synthetic_dataset) -> Path:
    return synthetic_dataset(24, 64, 0, "data_v001")


@pytest.fixture
def served(local):
    with RangeServer(local) as srv:
        yield srv, f"{srv.url}/data_v001.h5"


def same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if k == "id":
            assert a[k] == b[k]
        else:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, equal_nan=True)


def chunk_requests(srv) -> int:
    return sum(1 for r in srv.requests if r["range"] and r["path"].endswith(".h5"))


@pytest.mark.parametrize("kw", [{"split": "all"}, {"split": "train", "crop": 32, "modalities": ["sentinel2", "era5"]},
                                {"split": "all", "normalize": False}])
def test_streamed_samples_equal_local_ones(local, served, kw):
    srv, url = served
    remote, plain = MMEarthDataset(url, **kw), MMEarthDataset(local, **kw)
    assert len(remote) == len(plain) > 0
    for i in range(len(plain)):
        same(remote[i], plain[i])
    # one ranged request per modality and sample at most (metadata included), the chunk index read once
    per_sample = len(remote.modalities) + 1
    assert chunk_requests(srv) <= len(plain) * per_sample + 40


def test_faults_are_survived_and_a_dead_url_is_one_line(local, served):
    srv, url = served
    ds, plain = MMEarthDataset(url, split="all"), MMEarthDataset(local, split="all")
    ds.files.client.backoff_s = 0.01
    same(ds[0], plain[0])   # the index is built before the faults
    srv.faults += [("status", 503), ("truncate", 10), ("status", 429), ("corrupt",), ("no-range",)][:3]
    for i in range(1, 6):
        same(ds[i], plain[i])
    assert not srv.faults
    srv.always_fail.add("data_v001.h5")
    with pytest.raises(MMEarthError, match=r"row \d+: http://127\.0\.0\.1:\d+/data_v001\.h5: reading bytes .* "
                                           r"failed 6 times \(last: HTTP 503\)"):
        ds[7]


def test_a_server_that_ignores_ranges_is_one_line(served):
    srv, url = served
    srv.faults.append(("no-range",))
    with pytest.raises(MMEarthError, match="does not answer byte ranges"):
        MMEarthDataset(url, split="all")[0]


def test_a_server_without_validators_is_cached_for_one_run_only(local, served, tmp_path):
    """A server that sends neither ETag nor Last-Modified cannot say its file is unchanged: a file replaced by one
    of the same size was served from the old chunks after a restart. Its chunks are cached for the run (the second
    epoch makes no request), and a restart reads the file again."""
    srv, url = served
    srv.validators = False
    _, n, second, _ = epochs_then_restart(srv, url, tmp_path / "cache")
    assert second == n
    assert chunk_requests(srv) >= 2 * n - 4   # read again (at most the header's few requests fewer)


def epochs_then_restart(srv, url: str, cache: Path) -> tuple[list, int, int, int]:
    """Two epochs of a streamed dataset, then one of a new one over the same cache (a restart), each sample equal
    to the first epoch's: (first epoch's samples, chunk requests after the first epoch, after the second, all
    requests before the restart)."""
    ds = MMEarthDataset(url, split="all", cache_dir=cache, cache_size=1 << 30)
    first = [ds[i] for i in range(len(ds))]
    n = chunk_requests(srv)
    for i in range(len(ds)):
        same(ds[i], first[i])
    second, before = chunk_requests(srv), len(srv.requests)
    again = MMEarthDataset(url, split="all", cache_dir=cache, cache_size=1 << 30)   # a restart
    for i in range(len(again)):
        same(again[i], first[i])
    return first, n, second, before


def test_the_cache_serves_the_second_epoch_and_stays_bounded(local, served, tmp_path):
    srv, url = served
    first, n, second, before = epochs_then_restart(srv, url, tmp_path / "cache")
    assert second == n                                   # second epoch: no request
    assert chunk_requests(srv) - n <= 4                   # the file's header only: index and chunks from disk
    assert len(srv.requests) - before <= 6
    small = tmp_path / "small"
    bound = 40_000
    tiny = MMEarthDataset(url, split="all", cache_dir=small, cache_size=bound)
    for i in range(len(tiny)):
        same(tiny[i], first[i])
        assert tiny.files.source.cache.bytes_held() <= bound
    assert tiny.files.source.cache.bytes_held() > bound // 4   # used, not empty


def test_a_changed_file_is_noticed(local, tmp_path):
    work = tmp_path / "ds"
    shutil.copytree(local, work)
    cache = tmp_path / "cache"
    with RangeServer(work) as srv:
        url = f"{srv.url}/data_v001.h5"
        before = MMEarthDataset(url, split="all", cache_dir=cache)[3]
        assert run_cli("demo-dataset", "--out", work, "--tiles", "24", "--tile-px", "64", "--stem", "data_v001",
                       "--seed", "7", "--overwrite").returncode == 0
        after = MMEarthDataset(url, split="all", cache_dir=cache)[3]
        same(after, MMEarthDataset(work, split="all")[3])
        assert not torch.equal(before["sentinel2"].nan_to_num(), after["sentinel2"].nan_to_num())


def test_dataloader_workers_stream(local, served, tmp_path):
    srv, url = served
    ds = MMEarthDataset(url, split="all", cache_dir=tmp_path / "c", modalities=["sentinel2", "biome"])
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, shuffle=False)
    got = [b for b in loader]
    plain = MMEarthDataset(local, split="all", modalities=["sentinel2", "biome"])
    want = torch.stack([plain[i]["sentinel2"] for i in range(len(plain))])
    torch.testing.assert_close(torch.cat([b["sentinel2"] for b in got]), want, rtol=0, atol=0, equal_nan=True)


def test_a_signed_url_reads_its_side_files_and_never_shows_the_signature(served):
    import secrets

    srv, url = served
    sig = secrets.token_hex(8)   # made at run time: no credential-shaped literal in the tree
    srv.authorize = lambda q: f"sig={sig}" in q
    ds = MMEarthDataset(f"{url}?sig={sig}&se=2030", split="train")
    assert len(ds) and ds[0]["id"]
    assert all(f"sig={sig}" in r["path"] for r in srv.requests)
    srv.always_fail.add("data_v001.h5")
    with pytest.raises(MMEarthError) as e:
        ds.files.client.backoff_s = 0.01
        ds[1]
    assert sig not in str(e.value) and "?<redacted>" in str(e.value)


def test_public_s3(local, monkeypatch):
    from servers.s3 import PublicS3

    with PublicS3() as s3:
        for p in local.iterdir():
            s3.put(f"s3://mmearth-test/v001/{p.name}", p.read_bytes())
        monkeypatch.setenv("AWS_S3_ENDPOINT", s3.endpoint)
        monkeypatch.setenv("AWS_HTTPS", "NO")
        remote = MMEarthDataset("s3://mmearth-test/v001/data_v001.h5", split="all")
        plain = MMEarthDataset(local, split="all")
        for i in (0, 5, len(plain) - 1):
            same(remote[i], plain[i])


def test_public_gcs(local, monkeypatch):
    """``gs://`` through a GCS emulator reached as Google's clients reach one (``STORAGE_EMULATOR_HOST``)."""
    from servers.gcs import PublicGCS

    with PublicGCS() as gcs:
        for p in local.iterdir():
            gcs.put(f"gs://mmearth-test/v001/{p.name}", p.read_bytes())
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.host)
        remote = MMEarthDataset("gs://mmearth-test/v001/data_v001.h5", split="all")
        plain = MMEarthDataset(local, split="all")
        for i in (0, 5, len(plain) - 1):
            same(remote[i], plain[i])
    monkeypatch.delenv("STORAGE_EMULATOR_HOST")
    from mmearth_data.remote import http_url

    assert http_url("gs://b/k 1.h5") == "https://storage.googleapis.com/b/k%201.h5"


def test_a_url_that_is_not_an_h5_is_one_line():
    with pytest.raises(MMEarthError, match="give the URL of the dataset's .h5 file"):
        MMEarthDataset("https://example.invalid/data/", split="all")


@pytest.fixture(scope="module")
def release(local, tmp_path_factory) -> Path:
    rel = tmp_path_factory.mktemp("rel") / "rel"
    proc = run_cli("shard", local, "--out", rel, "--tiles-per-shard", "10", "--split-modalities")
    assert proc.returncode == 0, proc.stderr
    return rel


def test_a_release_streams_from_its_manifest(local, release):
    """Our release (manifest.json, shards, the chunk index with CRC32s): the same samples as the single file; a
    chunk damaged on the way is fetched again, twice damaged is one line."""
    with RangeServer(release) as srv:
        url = f"{srv.url}/manifest.json"
        remote, plain = MMEarthDataset(url, split="all"), MMEarthDataset(local, split="all")
        assert len(remote) == len(plain)
        for i in range(len(plain)):
            same(remote[i], plain[i])
        assert not any(r["path"].endswith(".h5") and not r["range"] for r in srv.requests)   # no whole shard
        assert not any(r["path"] == "/data_v001.h5" for r in srv.requests)                  # nor the VDS file
        train = MMEarthDataset(url, split="train", modalities=["sentinel2"])
        srv.faults.append(("corrupt",))
        got = train[1]
        same(got, MMEarthDataset(local, split="train", modalities=["sentinel2"])[1])
        srv.faults += [("corrupt",)] * 4   # sentinel2 and metadata, each twice
        with pytest.raises(MMEarthError, match="do not match their CRC32 in the release's chunk index"):
            train[2]


def test_a_release_whose_chunk_index_was_tampered_with_is_one_line(release, tmp_path):
    work = tmp_path / "rel"
    shutil.copytree(release, work)
    index = work / "data_v001_chunks.npz"
    index.write_bytes(index.read_bytes()[:-10] + b"0123456789")
    with RangeServer(work) as srv:
        with pytest.raises(MMEarthError, match="does not match the manifest's sha256"):
            MMEarthDataset(f"{srv.url}/manifest.json", split="all")


def test_redirects_are_followed(local, served):
    srv, url = served
    plain = MMEarthDataset(local, split="all")
    ds = MMEarthDataset(url, split="all")
    srv.faults.append(("redirect", url))   # a CDN or S3's region redirect, to the same object
    same(ds[2], plain[2])
    assert not srv.faults


def test_a_damaged_chunk_of_a_plain_file_is_never_served_from_the_cache(local, served, tmp_path):
    srv, url = served
    ds = MMEarthDataset(url, split="all", modalities=["sentinel2"], cache_dir=tmp_path / "c")
    ds[0]
    srv.faults.append(("corrupt",))   # the next chunk arrives damaged (no CRC32 for a plain file)
    with pytest.raises(MMEarthError, match="does not decode"):
        ds[1]
    same(ds[1], MMEarthDataset(local, split="all", modalities=["sentinel2"])[1])   # fetched again, not cached


def test_a_hostile_remote_header_sizes_nothing(tmp_path):
    """A 2 KB .h5 whose datasets declare a billion rows: one line, nothing allocated by the declaration."""
    import h5py

    with h5py.File(tmp_path / "x_v001.h5", "w") as f:
        f.create_dataset("sentinel2", shape=(10 ** 9, 13, 64, 64), dtype="uint16", chunks=(1, 13, 64, 64),
                         compression="gzip")
        f.create_dataset("metadata", shape=(10 ** 9,), dtype=[("tile_id", "S100"), ("S2_type", "S10")],
                         chunks=(1,))
    for kind in ("tile_info", "band_stats", "splits"):
        (tmp_path / f"x_v001_{kind}.json").write_text('{"train": [0]}' if kind == "splits" else "{}")
    with RangeServer(tmp_path) as srv:
        with pytest.raises(MMEarthError, match="declares 1000000000 rows"):
            MMEarthDataset(f"{srv.url}/x_v001.h5", split="all", modalities=["sentinel2"])


def test_a_release_at_s3_streams_and_selects_tiles_by_its_index(local, release, monkeypatch):
    from servers.s3 import PublicS3

    with PublicS3() as s3:
        for p in release.rglob("*"):
            if p.is_file() and not p.name.startswith("."):
                s3.put(f"s3://mmearth-rel/r/{p.relative_to(release).as_posix()}", p.read_bytes())
        monkeypatch.setenv("AWS_S3_ENDPOINT", s3.endpoint)
        monkeypatch.setenv("AWS_HTTPS", "NO")
        plain = MMEarthDataset(local, split="all")
        ids = [plain[i]["id"] for i in (3, 11, 19)]
        remote = MMEarthDataset("s3://mmearth-rel/r/manifest.json", split="all", tiles=ids)
        assert sorted(remote[i]["id"] for i in range(len(remote))) == sorted(ids)
        same(remote[0], plain[3])


def test_file_urls_are_not_read_as_objects():
    from mmearth_data.remote import http_url

    for url in ("file:///etc/hostname", "/etc/hostname", "s3:///key"):
        with pytest.raises(MMEarthError, match="not an http"):
            http_url(url)


def test_prefetch_warms_the_cache_ahead_of_the_sampler(local, served, tmp_path):
    """The sampler's next tiles are fetched into the chunk cache in the background; the samples read are the same."""
    import time

    srv, url = served
    ds = MMEarthDataset(url, split="all", cache_dir=tmp_path / "c", modalities=["sentinel2", "aster"])
    srv.latency_s = 0.02
    order = list(range(len(ds)))[::-1]
    it = iter(ds.prefetch(order, ahead=6, threads=3))
    first = next(it)
    deadline = time.monotonic() + 10
    cache = ds.files.source.cache
    while time.monotonic() < deadline and cache.bytes_held() == 0:
        time.sleep(0.05)
    time.sleep(1.0)   # 6 tiles x 3 requests at 20 ms, 3 at a time: long done
    ds._open()        # the reader's own start (it reads the file's header once)
    before = chunk_requests(srv)
    for i in order[1:4]:   # warmed ahead while the consumer held the first index: from the cache, no request
        ds[i]
    assert chunk_requests(srv) == before
    assert [first, *list(it)] == order
    plain = MMEarthDataset(local, split="all", modalities=["sentinel2", "aster"])
    for i in order[:5]:
        same(ds[i], plain[i])
    with pytest.raises(MMEarthError, match="only for a streamed dataset with a chunk cache"):
        plain.prefetch(order)


def test_a_batch_of_chunks_is_one_write_and_the_bound_holds_across_processes(tmp_path):
    """``put_many`` keeps a batch in one transaction; the running total it keeps equals the sum of sizes, the
    bound holds even when one batch alone is over it, and a cache made before the total was kept upgrades."""
    import sqlite3

    from mmearth_data.streaming import ChunkCache

    cache = ChunkCache(tmp_path / "c", 10_000)
    cache.put_many([(f"{k:064x}", bytes([k]) * 3000) for k in range(2)])
    cache.put_many([(f"{k:064x}", bytes([k]) * 3000) for k in range(2, 6)])   # 12 kB in one batch: over alone
    assert cache.bytes_held() <= 10_000
    db = sqlite3.connect(tmp_path / "c" / "chunks.sqlite")
    held, total = db.execute("SELECT (SELECT bytes FROM held), (SELECT SUM(size) FROM chunks)").fetchone()
    assert held == total == cache.bytes_held() == 9000
    assert [cache.get(f"{k:064x}") is not None for k in range(6)] == [False, False, False, True, True, True]
    cache.delete(f"{5:064x}")
    assert db.execute("SELECT bytes FROM held").fetchone()[0] == 6000
    db.execute("DROP TABLE held")
    db.commit()
    again = ChunkCache(tmp_path / "c", 10_000)   # an older cache: the total is summed once
    again.put(f"{9:064x}", b"x" * 5000)
    assert again.bytes_held() <= 10_000
    held, total = db.execute("SELECT (SELECT bytes FROM held), (SELECT SUM(size) FROM chunks)").fetchone()
    assert held == total == again.bytes_held()


def test_a_chunk_evicted_by_another_worker_while_it_is_written_leaves_no_file_behind(tmp_path, monkeypatch):
    """Two DataLoader workers share the cache (two connections). Worker A is held at the instant it renames its
    chunk file into place while worker B writes a batch that evicts A's chunk. A's rename used to come after its
    commit, so B deleted the row of a file not there yet and A's file then stayed, held by no row and never
    evicted: the bound broke for good. Now the rename is inside A's write, and B's eviction waits for it."""
    import os
    import sqlite3
    import threading

    from mmearth_data.streaming import ChunkCache

    a, b = ChunkCache(tmp_path / "c", 1000), ChunkCache(tmp_path / "c", 1000)
    renaming, b_done = threading.Event(), threading.Event()
    rename = os.replace

    def held_rename(src, dst):
        if threading.current_thread().name == "worker-a":
            renaming.set()
            b_done.wait(2)   # B gets its chance to evict here (with the fix it waits for A's write instead)
        return rename(src, dst)

    monkeypatch.setattr(os, "replace", held_rename)
    worker = threading.Thread(target=a.put_many, args=([("aa" + "0" * 62, b"x" * 600)],), name="worker-a")
    worker.start()
    assert renaming.wait(10)
    b.put_many([("bb" + "1" * 62, b"y" * 600)])   # 1200 bytes over a 1000-byte bound: the older chunk goes
    b_done.set()
    worker.join(10)
    db = sqlite3.connect(tmp_path / "c" / "chunks.sqlite")
    rows = dict(db.execute("SELECT key, size FROM chunks"))
    files = {p.name: p.stat().st_size for p in (tmp_path / "c").glob("??/*")}
    assert files == rows and sum(files.values()) <= 1000, (files, rows)


def test_a_dataloader_batch_is_fetched_at_once(local, served, tmp_path):
    """A streamed DataLoader batch is one round of requests: neighbouring rows of one modality merge into one
    ranged request, so a batch of 8 in order costs one request per modality, not 8."""
    srv, url = served
    ds = MMEarthDataset(url, split="all")
    ds[0]
    before = chunk_requests(srv)
    batch = ds.__getitems__(list(range(8, 16)))
    per_modality = chunk_requests(srv) - before
    assert per_modality <= len(ds.modalities) + 1
    reference = MMEarthDataset(local, split="all")
    for i, sample in zip(range(8, 16), batch):
        same(sample, reference[i])
    loader = torch.utils.data.DataLoader(ds, batch_size=6, num_workers=2, shuffle=True,
                                         generator=torch.Generator().manual_seed(1))
    ids = [i for b in loader for i in b["id"]]
    assert sorted(ids) == sorted(reference[i]["id"] for i in range(len(reference)))
