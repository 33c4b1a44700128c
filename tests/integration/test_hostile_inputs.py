"""Hostile and careless inputs on the build side (issue 27): what a catalog may point at, tile ids, names, sizes,
memory, numbers and secrets. Each test failed on the code before; the CLI runs as a user runs it."""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cli_runner import run_cli
from servers.http_range import RangeServer

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
ROOT = Path(__file__).resolve().parents[2]
SIG = secrets.token_hex(8)   # a signature made at run time: no credential-shaped literal in the tree


def one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """The run failed with exit 1 or 2 and one line on stderr (no traceback) holding every needle."""
    err = proc.stderr.strip()
    assert proc.returncode in (1, 2), (proc.returncode, proc.stdout[-2000:], err[-2000:])
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, (n, err)
    return err


def tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")} if path.exists() else set()


# -- catalogs --------------------------------------------------------------------------------------------------
def write_catalog(root: Path, asset_href: str, child_href: str = "./col/collection.json") -> Path:
    (root / "col").mkdir(parents=True, exist_ok=True)
    (root / "catalog.json").write_text(json.dumps(
        {"type": "Catalog", "id": "c", "stac_version": "1.0.0", "description": "",
         "links": [{"rel": "child", "href": child_href}]}))
    (root / "col" / "collection.json").write_text(json.dumps(
        {"type": "Collection", "id": "sentinel-2-l2a", "stac_version": "1.0.0", "description": "", "license": "x",
         "extent": {}, "links": [{"rel": "item", "href": "./item.json"}]}))
    (root / "col" / "item.json").write_text(json.dumps(
        {"type": "Feature", "stac_version": "1.0.0", "id": "i1", "collection": "sentinel-2-l2a",
         "geometry": {"type": "Polygon", "coordinates": [[[12, 41], [13, 41], [13, 43], [12, 43], [12, 41]]]},
         "bbox": [12, 41, 13, 43], "properties": {"datetime": "2020-06-01T00:00:00Z", "eo:cloud_cover": 1},
         "assets": {"B04": {"href": asset_href, "roles": ["data"]}}, "links": []}))
    return root / "catalog.json"


def catalog(root, **kw):
    from pipelines.backends.local import StaticCatalog

    return StaticCatalog([str(root)], **kw)


def test_a_local_catalog_stays_inside_its_directory(tmp_path):
    from mmearth_data.errors import MMEarthError

    outside = tmp_path / "secret.tif"
    outside.write_bytes(b"x")
    for href in ("../../secret.tif", str(outside), outside.as_uri(), "/etc/hostname"):
        root = write_catalog(tmp_path / f"c{abs(hash(href))}", href)
        with pytest.raises(MMEarthError, match="outside the catalog's directory"):
            catalog(root)
        assert catalog(root, allow_outside=True).items["sentinel-2-l2a"][0].band("B04").href.endswith(
            href.rsplit("/", 1)[-1])
    link = tmp_path / "linked"
    root = write_catalog(link, "./inside.tif")
    (link / "col" / "inside.tif").symlink_to(outside)   # a link inside pointing out is outside
    with pytest.raises(MMEarthError, match="outside"):
        catalog(root)
    zero = write_catalog(tmp_path / "zero", "./a.tif", child_href="file:///dev/zero")
    with pytest.raises(MMEarthError, match="outside"):
        catalog(zero)
    with pytest.raises(MMEarthError, match="not a regular file"):
        catalog(zero, allow_outside=True)   # never read until memory runs out


def test_no_href_is_a_gdal_vsi_path(tmp_path):
    from mmearth_data.errors import MMEarthError

    with RangeServer(tmp_path / "srv") as srv:
        (tmp_path / "srv").mkdir(exist_ok=True)
        for href in (f"file:///vsicurl/{srv.url}/x.tif", "/vsizip//tmp/a.zip/b.tif", "/vsicurl/http://h/x.tif"):
            root = write_catalog(tmp_path / f"v{abs(hash(href))}", href)
            with pytest.raises(MMEarthError, match="GDAL /vsi path"):
                catalog(root, allow_outside=True)
        assert not srv.requests   # GDAL never asked that host


def test_a_remote_catalog_never_reaches_the_local_disk(tmp_path):
    from mmearth_data.errors import MMEarthError

    srv_root = tmp_path / "srv"
    local = write_catalog(tmp_path / "local", "./a.tif")
    cases = {"asset": write_catalog(srv_root / "a", (tmp_path / "local" / "col" / "a.tif").as_uri()),
             "link": write_catalog(srv_root / "b", "./a.tif", child_href=local.parent.joinpath("col/collection.json")
                                   .as_uri())}
    with RangeServer(srv_root) as srv:
        for what, root in cases.items():
            url = f"{srv.url}/{root.parent.name}/catalog.json"
            with pytest.raises(MMEarthError, match=f"{what} file:.* refused: a remote catalog may only point at"):
                catalog(url, allow_outside=True)
        # and on the command line: one line, nothing written
        out = tmp_path / "out"
        csv = tmp_path / "locs.csv"
        csv.write_text("lon,lat\n12.5,42.0\n")
        proc = run_cli("export", csv, "--backend", "local", "--catalog", f"{srv.url}/a/catalog.json", "--out", out)
        one_line_error(proc, "refused: a remote catalog may only point at")
        assert not out.exists()


def test_a_signed_catalog_url_keeps_its_query_for_its_siblings_and_never_shows_it(tmp_path):
    """``https://host/container/catalog.json?sig=...``: relative links and assets need the same signature (the
    query joined wrongly before: ``catalog.json?sig=.../col/...``); errors never print it."""
    from mmearth_data.errors import MMEarthError
    from pipelines.backends.local import StaticCatalog

    write_catalog(tmp_path / "srv" / "c", "./a.tif")
    with RangeServer(tmp_path / "srv") as srv:
        cat = StaticCatalog([f"{srv.url}/c?sig={SIG}&se=2030"])
        href = cat.items["sentinel-2-l2a"][0].band("B04").href
        assert href == f"{srv.url}/c/col/a.tif?sig={SIG}&se=2030"
        assert any(f"/c/col/item.json?sig={SIG}" in r["path"] for r in srv.requests)
        (tmp_path / "srv" / "c" / "col" / "item.json").write_text("{broken")
        with pytest.raises(MMEarthError) as e:
            StaticCatalog([f"{srv.url}/c?sig={SIG}"])
        assert SIG not in str(e.value) and "not valid JSON" in str(e.value)


def test_a_link_without_href_is_one_line(tmp_path):
    from mmearth_data.errors import MMEarthError

    root = write_catalog(tmp_path / "c", "./a.tif")
    doc = json.loads(root.read_text())
    doc["links"].append({"rel": "child"})
    root.write_text(json.dumps(doc))
    with pytest.raises(MMEarthError, match="a child link has no href"):
        catalog(root)


# -- locations -------------------------------------------------------------------------------------------------
def test_tile_ids_are_plain_names(tmp_path):
    bad = ["../../x", "a/b", "/etc/x", ".hidden", "c\\d"]
    csv = tmp_path / "locs.csv"
    csv.write_text("tile_id,lon,lat\n" + "".join(f"{t},{12 + k * 0.1},42\n" for k, t in enumerate(bad + ["fine"])))
    proc = run_cli("export", csv, "--out", tmp_path / "out")
    assert proc.returncode in (1, 2) and "Traceback" not in proc.stderr
    for k, t in enumerate(bad):
        assert f"row {k + 1}: tile_id {t!r}" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()
    # a file shaped like the sampler's output is checked too (it is not converted)
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.export import REQUIRED_COLUMNS, read_locations

    cols = {"tile_id": ["ok", "../../x"], "lon": [12.0, 12.1], "lat": [42.0, 42.0], "biome": [1, 1],
            "eco_region": [27, 27], "utm_epsg": [32633, 32633]}
    pq.write_table(pa.table({c: cols[c] for c in REQUIRED_COLUMNS}), tmp_path / "s.parquet")
    from mmearth_data.errors import MMEarthError

    with pytest.raises(MMEarthError, match=r"row 2: tile_id '../../x' is not a plain name"):
        read_locations(tmp_path / "s.parquet")


PAIRS = """
import resource, sys, numpy as np
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
from sampling.given import dedupe_rows, overlapping_pairs
n = int(sys.argv[1])
lon, lat = np.full(n, 12.5), np.full(n, 42.0)
lon[n // 2:] += np.random.default_rng(0).uniform(0, 1e-5, n - n // 2)   # and a crowd of distinct places within 1 m
pairs, dropped = overlapping_pairs(lon, lat, 1280.0), dedupe_rows(lon, lat, 1280.0)
print(len(pairs), len(dropped))
"""


def test_overlaps_of_a_crowded_file_fit_in_memory():
    """100k rows on (nearly) one spot: before, every pair was built (quadratic; 3,000 rows took 1.3 GB and 32 s);
    now each row lists its nearest 8 and --dedupe keeps exactly one, in O(n log n), under a 2 GiB limit."""
    proc = subprocess.run([sys.executable, "-c", PAIRS, "100000"], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    pairs, dropped = map(int, proc.stdout.split())
    assert dropped == 99_999 and 100_000 <= pairs <= 8 * 100_000


def test_dedupe_and_flags_keep_their_meaning():
    from sampling.given import dedupe_rows, overlapping_pairs

    # a line of places 300 m apart on a 480 m tile: 1 drops 2, 3 is kept (2 was dropped), 4 dropped by 3
    lat = np.full(4, 42.0)
    lon = 12.5 + np.arange(4) * 300.0 / (111_320 * np.cos(np.radians(42.0)))
    assert sorted(dedupe_rows(lon, lat, 480.0)) == [1, 3]
    assert [(i, j) for i, j, _ in overlapping_pairs(lon, lat, 480.0)] == [(0, 1), (1, 2), (2, 3)]
    same = dedupe_rows(np.array([1.0, 5.0, 1.0]), np.array([1.0, 5.0, 1.0]), 480.0)
    assert same == {2: (0, 0.0)}


def test_each_row_lists_a_few_overlaps(tmp_path):
    """30 rows on one spot: each row's ``overlaps`` names at most 8 others (the first row would name 29 and, in a
    file of 100k, 99,999), and a note says the list is cut."""
    from sampling import load_ecoregions
    from sampling.given import GivenOptions, OVERLAPS_LISTED, read_given

    csv = tmp_path / "same.csv"
    csv.write_text("lon,lat\n" + "12.5,42.0\n" * 30)
    given = read_given(csv, load_ecoregions(None), GivenOptions(tile_px=48))
    listed = [o.split(",") for o in given.table.column("overlaps").to_pylist()]
    assert max(map(len, listed)) == OVERLAPS_LISTED and min(map(len, listed)) == OVERLAPS_LISTED
    assert any("more rows overlap it than are listed" in n for n in given.notes)


# -- sizes and numbers -----------------------------------------------------------------------------------------
def test_sizes_beyond_what_the_sampler_holds_are_one_line(tmp_path):
    one_line_error(run_cli("build", "--size", "100M", "--out", tmp_path / "b"), "--size 100M", "hold at most")
    one_line_error(run_cli("build", "--size", "100000000000000000000", "--out", tmp_path / "b", "--dry-run"),
                   "hold at most")
    one_line_error(run_cli("sample", "--size", "100M", "--out", tmp_path / "s.parquet"), "hold at most")
    assert not (tmp_path / "b").exists() and not (tmp_path / "s.parquet").exists()


def test_memory_is_checked_before_sampling(tmp_path):
    from mmearth_data.errors import MMEarthError
    from sampling import load_ecoregions
    from sampling import sampler

    eco = load_ecoregions(None)
    real = sampler.available_memory
    try:
        sampler.available_memory = lambda: 1_000_000_000   # a 1 GB machine
        with pytest.raises(MMEarthError, match=r"sampling needs about 1\.2 GB of memory and this machine has 1\.0 GB"):
            sampler.check_size(eco, 2_000_000)
        sampler.check_size(eco, 1_000_000)
    finally:
        sampler.available_memory = real


@pytest.mark.parametrize("args,needle", [
    (["--splits", "0,nan,1"], "--splits"), (["--splits", "1.5,-0.5,0"], "--splits"),
    (["--max-failed", "-1"], "--max-failed"), (["--max-failed", "200%"], "--max-failed"),
    (["--max-failed", "nan%"], "--max-failed")])
def test_numbers_out_of_range_are_refused(tmp_path, args, needle):
    proc = run_cli("build", "--size", "10", "--out", tmp_path / "b", "--dry-run", *args)
    one_line_error(proc, needle)


def test_pack_name_is_a_plain_stem_checked_before_anything_is_written(tmp_path):
    out = tmp_path / "deep" / "out"
    out.mkdir(parents=True)
    before = tree(tmp_path)
    for name in ("./../../x", "../x", "a/b", ".hidden", ""):
        proc = run_cli("pack", tmp_path / "no-export", "--out", out, "--name", name)
        one_line_error(proc, "--name")
        assert tree(tmp_path) == before, name


# -- secrets ---------------------------------------------------------------------------------------------------
def test_secrets_in_urls_reach_no_record(tmp_path):
    """A STAC or catalog URL with a token in its query: export.json, build.yaml and every file of the output are
    free of it (before: export.json and build.yaml held it as given)."""
    write_catalog(tmp_path / "srv" / "c", "./a.tif")
    with RangeServer(tmp_path / "srv") as srv:
        url = f"{srv.url}/c/catalog.json?token={SIG}"
        csv = tmp_path / "locs.csv"
        csv.write_text("lon,lat\n12.5,42.0\n")
        proc = run_cli("build", "--locations", csv, "--backend", "local", "--catalog", url, "--out", tmp_path / "b",
                       "--tile-px", "32", "--max-failed", "100%")
        assert SIG not in proc.stdout + proc.stderr
        assert (tmp_path / "b" / "build.yaml").exists(), proc.stderr[-2000:]
        assert any(f"token={SIG}" in r["path"] for r in srv.requests)   # it was used where it was needed
    for p in (tmp_path / "b").rglob("*"):
        if p.is_file():
            assert SIG.encode() not in p.read_bytes(), p


# -- damaged records and full disks ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("small")
    locs = root / "locs.parquet"
    assert run_cli("sample", "--size", "12", "--out", locs).returncode == 0
    out = root / "out"
    proc = run_cli("export", locs, "--out", out, "--tile-px", "32", "--partition-size", "6")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return locs, out


@pytest.mark.slow
@pytest.mark.e2e
def test_a_damaged_export_json_or_staging_file_is_one_line(small_export, tmp_path):
    import shutil

    locs, out = small_export
    for damage, needle in ((b"{not json", "export.json: damaged"), (b"[1, 2]", "export.json: damaged")):
        bad = tmp_path / f"json{len(damage)}"
        shutil.copytree(out, bad)
        (bad / "export.json").write_bytes(damage)
        for args in (["status", bad], ["export", locs, "--out", bad, "--tile-px", "32", "--partition-size", "6", "--resume"],
                     ["pack", bad, "--out", tmp_path / "packed", "--name", "d"]):
            one_line_error(run_cli(*args), needle)
    bad = tmp_path / "sqlite"
    shutil.copytree(out, bad)
    part = sorted((bad / "staging").glob("part-*.sqlite"))[0]
    part.write_bytes(b"garbage" * 1000)
    for args in (["status", bad], ["export", locs, "--out", bad, "--tile-px", "32", "--partition-size", "6", "--resume"],
                 ["pack", bad, "--out", tmp_path / "packed", "--name", "d"]):
        one_line_error(run_cli(*args), f"{part.name}: damaged staging database", "--resume")


def test_a_full_staging_database_names_itself_and_keeps_what_was_committed(tmp_path):
    """SQLite's SQLITE_FULL, as a full disk gives it (here from a page limit): one line naming the file and
    --resume; the tiles committed before are still there."""
    from mmearth_data.errors import MMEarthError
    from pipelines.staging import LedgerRow, PartitionStore

    arrays = {"sentinel2": np.random.default_rng(0).integers(0, 9999, (13, 64, 64)).astype(np.uint16)}
    with PartitionStore(tmp_path / "part-00000.sqlite") as st:
        st.commit_tile("t0", 0, "done", {"S2_type": "l2a"}, [LedgerRow("sentinel2", "ok", 1)], arrays)
        pages = st.db.execute("PRAGMA page_count").fetchone()[0]
        st.db.execute(f"PRAGMA max_page_count = {pages + 2}")
        with pytest.raises(MMEarthError, match=r"part-00000\.sqlite: cannot write .*full.*--resume"):
            for k in range(1, 20):
                st.commit_tile(f"t{k}", k, "done", {"S2_type": "l2a"}, [LedgerRow("sentinel2", "ok", 1)], arrays)
    with PartitionStore(tmp_path / "part-00000.sqlite", readonly=True) as st:
        assert "t0" in st.tile_states()


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.parametrize("where, size", [(".", "3M"), ("synthetic/tiles", "64k")])
def test_a_full_disk_is_one_line_fails_no_tile_and_resume_finishes_the_same(small_export, tmp_path, where, size):
    """A real full file system: the whole export's (a 3 MB tmpfs; the synthetic ERA5 alone is ~30 MB), or only the
    one under the synthetic backend's per-tile sources (64 KB; the shared ERA5 and the staging files have room),
    which used to fail every tile as internal with exit 0. Either way: this machine's fault, not the tiles': one
    line naming what it was writing and how to go on, exit 1, no tile failed or given no-data; with space again,
    --resume ends with the same ledger as a run that never ran out."""
    from stac_factory import ledger_digest

    locs, reference = small_export
    out = tmp_path / "out"
    disk = (out / where).resolve() if where != "." else out
    if not _mount_tmpfs(disk, size):
        pytest.skip("mounting a tmpfs needs root (CAP_SYS_ADMIN) here")
    try:
        proc = run_cli("export", locs, "--out", out, "--tile-px", "32", "--partition-size", "6")
        assert proc.returncode == 1, proc.stderr[-2000:]
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("error: no space left on the device writing ") and "--resume" in last, last
        assert "Traceback" not in proc.stderr
        status = run_cli("status", out)
        assert " 0 failed" in status.stdout and "(0 done" in status.stdout, status.stdout
        subprocess.run(["mount", "-o", "remount,size=300M", str(disk)], check=True)
        proc = run_cli("export", locs, "--out", out, "--tile-px", "32", "--partition-size", "6", "--resume")
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert ledger_digest(out) == ledger_digest(reference)
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


@pytest.mark.parametrize("content", [b"foo: [", b"hello", b"", b"\xff\xfe", b"PAR1\x00\x01"])
def test_a_damaged_build_yaml_is_one_line_and_left_as_it_is(tmp_path, content):
    """A build record damaged, emptied or overwritten (e.g. a sample written over it): --resume said one line
    only for a record of other settings; a YAML error, a non-mapping or bytes that are not text gave a traceback."""
    out = tmp_path / "b"
    out.mkdir()
    (out / "build.yaml").write_bytes(content)
    proc = run_cli("build", "--size", "8", "--out", out, "--resume", timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert lines[0].startswith(f"error: {out / 'build.yaml'}: not a") and "another --out" in lines[0], lines[0]
    assert (out / "build.yaml").read_bytes() == content and sorted(p.name for p in out.iterdir()) == ["build.yaml"]


def test_demo_dataset_refuses_a_directory_holding_another_dataset_and_a_disk_too_small(sample_copy, tmp_path):
    """demo-dataset added a second .h5 beside a dataset (validate then failed on the directory), and started a
    write its disk could not hold (2 M tiles: 8.5 GB written of ~940 GB before it was stopped)."""
    proc = run_cli("demo-dataset", "--out", sample_copy, "--tiles", "4")
    assert proc.returncode == 2 and "holds another dataset (data_test_v001.h5)" in proc.stderr, proc.stderr
    assert sorted(p.name for p in sample_copy.glob("*.h5")) == ["data_test_v001.h5"]
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "256k"):
        pytest.skip("mounting a tmpfs needs root (CAP_SYS_ADMIN) here")
    try:
        proc = run_cli("demo-dataset", "--out", disk / "d", "--tiles", "1000")
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and "needs 0.5 GB free for 1000 tiles" in lines[0], lines
        assert not (disk / "d").exists()
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
