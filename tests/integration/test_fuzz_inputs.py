"""Every file the CLI reads, fed malformed bytes (issue 27): exit code 1 or 2, one line on stderr, no traceback,
nothing written outside --out. The files are made here, from a few seeded blobs, for each kind of input."""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from cli_runner import run_cli

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _blobs() -> dict[str, bytes]:
    rng = random.Random(27)
    return {
        "empty": b"",
        "garbage": bytes(rng.getrandbits(8) for _ in range(4096)),
        "truncated-json": b'{"type": "Catalog", "stac_version": "1.0.0", "links": [{"rel": "child", "href": "./a',
        "json-array": b"[1, 2, 3]",
        "deep-json": b"[" * 200_000 + b"]" * 200_000,
        "huge-numbers": json.dumps({"type": "Catalog", "n_tiles": 10 ** 30, "tile_px": -1e308,
                                    "links": [{"rel": "child", "href": 12}], "lon": "nan"}).encode(),
        "utf16-csv": "lon,lat\n12.5,42\n".encode("utf-16"),
        "nul-text": b"lon,lat\n12.5\x00,42\n\x00\x00",
    }


BLOBS = _blobs()


def _h5_head(tmp: Path) -> bytes:
    """The first 2 KB of a valid v001 file: a truncated HDF5."""
    assert run_cli("demo-dataset", "--out", tmp / "ok", "--tiles", "4", "--tile-px", "64").returncode == 0
    return next((tmp / "ok").glob("*.h5")).read_bytes()[:2048]


def _snapshot(root: Path, out: Path) -> dict[str, int]:
    return {str(p): p.stat().st_size for p in root.rglob("*") if out not in p.parents and p != out}


def _check(proc, label: str, named: str) -> None:
    """Exit 1 or 2, no traceback; stderr is one ``error:`` line, or one line per bad row of a locations file (each
    naming it); ``validate`` reports on stdout (its output is the report) and ends with its verdict."""
    err = proc.stderr.strip()
    assert proc.returncode in (1, 2), (label, proc.returncode, err[-1500:])
    assert "Traceback" not in err + proc.stdout, (label, err[-3000:])
    lines = [line for line in err.splitlines() if line.strip()]
    if label.startswith(("dataset.h5/", "tile_info/")) and not lines:
        assert proc.stdout.strip().splitlines()[-1].startswith("FAILED:"), (label, proc.stdout[-800:])
        return
    assert lines and lines[0].startswith("error: "), (label, err[-1500:])
    assert len(lines) == 1 or (label.startswith("locations") and all(named in line for line in lines)), \
        (label, err[-1500:])


def _cases(tmp: Path):
    """(label, files to write {relative path: bytes}, CLI args; OUT stands for --out)."""
    blobs = dict(BLOBS, **{"truncated-hdf5": _h5_head(tmp)})
    for name, blob in blobs.items():
        yield f"locations.csv/{name}", {"in/locs.csv": blob}, ["export", "in/locs.csv", "--out", "OUT"]
        yield f"locations.parquet/{name}", {"in/locs.parquet": blob}, ["export", "in/locs.parquet", "--out", "OUT"]
        yield f"locations.geojson/{name}", {"in/locs.geojson": blob}, \
            ["build", "--locations", "in/locs.geojson", "--out", "OUT", "--dry-run"]
        yield f"catalog/{name}", {"in/cat/catalog.json": blob, "in/one.csv": b"lon,lat\n12.5,42.0\n"}, \
            ["export", "in/one.csv", "--backend", "local", "--catalog", "in/cat", "--out", "OUT"]
        yield f"manifest/{name}", {"in/manifest.json": blob}, ["download", "--manifest", "in/manifest.json",
                                                             "--out", "OUT"]
        yield f"download-record/{name}", {"OUT/download.json": blob, "OUT/manifest.json": blob}, ["verify", "OUT"]
        yield f"dataset.h5/{name}", {"in/ds/data_v001.h5": blob}, ["validate", "in/ds"]
        yield f"tile_info/{name}", {"in/ds/data_v001_tile_info.json": blob}, ["validate", "in/ds"]
        yield f"checkpoint/{name}", {"OUT/checkpoint.pt": blob}, \
            ["pretrain", "--data", "in/ok", "--out", "OUT", "--resume", "--max-steps", "1"]
        yield f"export.json/{name}", {"in/exp/export.json": blob}, ["status", "in/exp"]


@pytest.mark.slow
def test_malformed_files_are_one_line_and_touch_nothing_outside_out(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    prepared = []
    for k, (label, files, args) in enumerate(_cases(tmp_path)):
        case = tmp_path / f"case{k:03d}"
        case.mkdir()
        out = case / "out"
        if any(a == "in/ok" for a in args):
            shutil.copytree(tmp_path / "ok", case / "in" / "ok")
        if label.startswith(("tile_info/",)):   # a valid dataset whose one sidecar is broken
            shutil.copytree(tmp_path / "ok", case / "in" / "ds")
            h5 = next((case / "in" / "ds").glob("*.h5"))
            files = {f"in/ds/{h5.stem}_tile_info.json": next(iter(files.values()))}
        for rel, blob in files.items():
            p = case / rel.replace("OUT", "out")
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(blob)
        argv = [str(out) if a == "OUT" else str(case / a) if a.startswith("in/") else a for a in args]
        prepared.append((label, case, out, argv, _snapshot(case, out)))

    def run(entry) -> str | None:   # each case in its own directory: they run side by side
        label, case, out, argv, before = entry
        proc = run_cli(*argv, timeout=300)
        try:
            _check(proc, label, str(case / "in"))
            assert _snapshot(case, out) == before, (label, "wrote outside --out")
        except AssertionError:
            return (f"{label}: rc {proc.returncode}: " + " | ".join(proc.stderr.strip().splitlines()[-2:])[:300]
                    + (" || stdout: " + proc.stdout.strip()[-200:] if not proc.stderr.strip() else ""))
        return None

    with ThreadPoolExecutor(3) as pool:
        failures = [f for f in pool.map(run, prepared) if f]
    assert not failures, f"{len(failures)} of {len(prepared)} cases:\n" + "\n".join(failures)
