"""The official MMEarth v001 releases (MMEarth, MMEarth64, MMEarth100k) from a mirror: four files each, checked
by the SHA-256 computed on download (their authors publish none)."""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..catalog import catalog_dir
from ..download import Fetcher, Job, Report, disk_full_is_one_line, is_url
from ..errors import MMEarthError, redact
from ..locking import output_lock
from ..manifest import inside
from .record import RECORD, Record, keep_source, skip_verified
from .source import file_source


@dataclass
class Variant:
    name: str
    stem: str
    tile_px: int
    approx_gb: float
    files: list[str]
    sha256: dict[str, str] = field(default_factory=dict)


def variants() -> dict[str, Variant]:
    doc = yaml.safe_load((catalog_dir() / "releases.yaml").read_text())
    return {name: Variant(name, v["stem"], int(v["tile_px"]), float(v["approx_gb"]),
                          list(v["files"]), dict(v.get("sha256") or {})) for name, v in doc["variants"].items()}


def download_variant(name: str, out: str | os.PathLike, *, mirror: str | None = None, connections: int = 8,
                     allow_redirects: bool = False, progress: bool = False, log: Callable[[str], None] = print,
                     retries: int = 8, backoff: float = 1.0, timeout: float = 60.0, check_layout: bool = True
                     ) -> Report:
    """One of the published v001 directories (MMEarth, MMEarth64, MMEarth100k), from ``mirror`` (a URL or a
    directory)."""
    table = variants()
    if name not in table:
        raise MMEarthError(f"--variant {name!r}: choose one of {', '.join(table)}")
    v, out = table[name], Path(out)
    if not mirror:
        raise MMEarthError(f"--variant {name}: pass --mirror URL, the share link of {name} from the MMEarth-data "
                           "README (https://github.com/vishalned/MMEarth-data) or a copy of its four files; no "
                           "download URL ships with mmearth-data")
    if not is_url(mirror) and not Path(mirror).is_dir():
        raise MMEarthError(f"--mirror {mirror}: neither an http(s) URL nor a directory")
    fetcher = Fetcher(connections, retries=retries, backoff=backoff, timeout=timeout,
                      allow_redirects=allow_redirects, progress=progress)
    with output_lock(out, "download"), disk_full_is_one_line(out):
        old = Record.load(out)
        record = Record(out, {"kind": "variant", "variant": name, "source": keep_source(out, mirror),
                              "selected": list(v.files),
                              "published_sha256": bool(v.sha256), "sha256": old.doc.get("sha256", {}) if old else {}})
        jobs = [Job(file_source(mirror, f), inside(out, f), None, v.sha256.get(f), f) for f in v.files]
        todo = skip_verified(jobs, record)
        fetcher.sizes(todo)   # the authors publish no byte sizes: ask the server
        fetcher.check_space(todo, out)
        record.save()
        log(f"{name}: {len(v.files)} file(s) from {redact(mirror)}, {sum(j.size for j in todo) / 1e9:.2f} GB to "
            f"fetch (the release notes say about {v.approx_gb:g} GB)")
        report = fetcher.fetch(todo, on_done=lambda job, sha: record.verified(job.label, sha))
        report.files = len(jobs)
        if not v.sha256:
            log(f"no checksums are published for {name}: the SHA-256 computed on download is recorded in "
                f"{out / RECORD} and checked by mmearth-data verify {out}")
        if check_layout:
            from ..validate import validate

            rep = validate(out, layout_only=True)
            if not rep.ok:
                raise MMEarthError(f"{out}: downloaded, but validate --layout-only fails: "
                                   + "; ".join(str(e) for e in rep.errors[:3]))
            log(f"validate --layout-only: ok ({len(rep.warnings)} warning(s))")
    return report
