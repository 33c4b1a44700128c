"""The dataset card: ``README.md`` beside the data, in the Hugging Face dataset-card convention.

YAML front matter (license, size_categories, task_categories, tags, pretty_name, and ``mmearth_data``: the facts
the card states, machine-readable), then what the data is, how it was built (backend, sources and their licences,
settings and identity), tiles per biome, what is missing and why, how to rebuild and load it, and the citation.
A release can be published on the Hugging Face Hub, Source Cooperative or S3 with its card as is.

The bytes depend only on what defines the data: the dataset itself, the build's identity (``build.yaml``), its
report and the per-modality source plan of the export; never paths, times or worker counts. ``pack`` (so
``build``) and ``shard`` write it; ``validate`` checks that it agrees with the data. A card carries its facts
forward: where ``build.yaml`` or the source plan is not at hand (``shard`` of a release or of a moved dataset), those
of the card already beside the data are kept, if that card names the same data (its identity).
"""
from __future__ import annotations

import json
import re
import shlex
from collections import Counter
from pathlib import Path

import yaml

from .card_text import render
from .catalog import biome_table, catalog_dir
from .errors import MMEarthError
from .identity import dataset_identity, plain
from .io_utils import atomic_write_bytes, read_nofollow
from .writer import SIDE_FILES

CARD_NAME = "README.md"
KEY = "mmearth_data"                 # the front-matter block of facts
MAX_CARD = 4 << 20                   # a card is a few KB; a larger README.md is read no further
SYNTHETIC_LICENCE = "CC0-1.0"        # what the synthetic backend's STAC collections declare
REPORT_ROWS = 20                     # given places without a tile listed by row (the report lists them all)
#: build identity key -> ``mmearth-data build`` option (others: ``--key-with-dashes``)
FLAGS = {"size_label": "--size", "locations_sha256": "--locations", "modality_backends": "--modality-backend",
         "s2_window_days": "--s2-window"}
NOT_OPTIONS = ("size", "format")     # in the identity, not options of their own
ORDER = ("format", "stem", "tiles", "tile_px", "identity", "backend", "synthetic", "producer", "build_config_hash",
         "biomes", "splits", "gaps", "tile_index", "sources", "build", "report", "release")


def card_path(directory: str | Path) -> Path:
    return Path(directory) / CARD_NAME


def _ours(path: Path) -> bool:
    """Whether ``path`` is a card of ours (a damaged one included), not someone else's README.md."""
    try:
        return read_card(path) is not None
    except MMEarthError:
        return True   # our block, damaged


def drop_card(directory: str | Path) -> None:
    """Remove the card in ``directory`` if it is one of ours (a README.md of someone else's is left alone)."""
    path = card_path(directory)
    if _ours(path):
        path.unlink(missing_ok=True)


# -- reading -------------------------------------------------------------------------------------------------------
def read_card(path: str | Path) -> dict | None:
    """The facts of the card at ``path``, or None when there is none (no file, or a README.md of someone else's:
    a link, a large file, no front matter with an ``mmearth_data`` block).

    Raises:
        MMEarthError: the file opens a front matter with an ``mmearth_data`` block that does not parse, in one
            line naming the file.
    """
    path = Path(path)
    try:
        text = read_nofollow(path, MAX_CARD).decode("utf-8", "replace")
    except (FileNotFoundError, MMEarthError):   # none, or a link, not a file, larger than a card: not one of ours
        return None
    except OSError as e:
        raise MMEarthError(f"{path}: cannot be read ({e.strerror or e})") from None
    m = re.match(r"---\r?\n(.*?)\r?\n---\r?\n", text, re.S)
    if not m or not re.search(rf"^{KEY}:", m.group(1), re.M):
        return None
    try:
        doc = yaml.safe_load(m.group(1))
    except (yaml.YAMLError, RecursionError, ValueError) as e:
        raise MMEarthError(f"{path}: its front matter is not valid YAML ({str(e).splitlines()[0]})") from None
    facts = doc.get(KEY) if isinstance(doc, dict) else None
    if not isinstance(facts, dict):
        raise MMEarthError(f"{path}: {KEY} in its front matter is not a mapping")
    return facts


def card_problems(files) -> list[tuple[str, str]]:
    """(level, message) where the card beside ``files`` disagrees with the data: its tile count, identity and
    build hash. A dataset without a card (older data, foreign v001 files) has none."""
    path = card_path(files.directory)
    try:
        facts = read_card(path)
    except MMEarthError as e:
        return [("error", str(e).removeprefix(f"{path}: "))]
    if facts is None:
        return []
    if facts.get("stem") != files.stem:
        return [("warning", f"describes {facts.get('stem')!r}, not {files.stem!r}; not checked")]
    data = _counted(files)
    out = []
    for key, what in (("tiles", "tiles"), ("identity", "identity"), ("build_config_hash", "build hash")):
        have, said = data.get(key), facts.get(key)
        if said != have and not (key == "build_config_hash" and have is None and said is None):
            out.append(("error", f"says {what} {repr(said)[:80]}, the data has {have!r}: the card does not "
                                 "describe this data (written for other data, or edited)"))
    return out


def _counted(files) -> dict:
    """What validate compares: rows, identity (None while a side file is missing) and build hash."""
    side = {k: files.side_path(k) for k in SIDE_FILES}
    with files.h5() as f:
        n = int(f["metadata"].shape[0]) if "metadata" in f else None
        build = f.attrs.get("build_config_hash")
    return {"tiles": n, "build_config_hash": None if build is None else plain(build),
            "identity": dataset_identity(files.h5_path, side) if all(p.is_file() for p in side.values()) else None}


# -- the facts -----------------------------------------------------------------------------------------------------
def data_facts(files) -> dict:
    """What the data itself says: rows, tile size, identity, backend, biomes, splits, per-modality gaps."""
    with files.h5() as f:
        attrs = {k: plain(v) for k, v in f.attrs.items() if k != "release"}
        n = int(f["metadata"].shape[0])
        tile_px = attrs.get("tile_px") or (int(f["sentinel2"].shape[-1]) if "sentinel2" in f else None)
        described = {k: str(plain(f[k].attrs["source"])) for k in sorted(f) if "source" in f[k].attrs}
    info = files.tile_info
    names = {b["index"]: b["name"] for b in biome_table()}
    biomes = Counter(r.get("biome") if r.get("biome") in names else "unlabelled"
                     for r in info.values() if isinstance(r, dict))
    gaps: dict[str, Counter] = {}
    for r in info.values():
        for mod, why in ((r.get("missing") or {}) if isinstance(r, dict) else {}).items():
            gaps.setdefault(str(mod), Counter())[str(why)] += 1
    facts = {"format": attrs.get("mmearth_format", "v001"), "stem": files.stem, "tiles": n, "tile_px": tile_px,
             "identity": dataset_identity(files.h5_path, {k: files.side_path(k) for k in SIDE_FILES}),
             "backend": attrs.get("backend"), "synthetic": bool(attrs.get("synthetic", False)),
             "producer": attrs.get("producer")}
    if "build_config_hash" in attrs:
        facts["build_config_hash"] = attrs["build_config_hash"]
    facts["biomes"] = [{"biome": b, "name": names[b], "tiles": biomes[b]} for b in sorted(names) if biomes[b]]
    if biomes["unlabelled"]:
        facts["biomes"].append({"biome": None, "name": "unlabelled (--allow-unlabelled)",
                                "tiles": biomes["unlabelled"]})
    facts["splits"] = {k: len(v) for k, v in files.splits.items() if isinstance(v, list)}
    facts["gaps"] = {m: dict(sorted(c.items())) for m, c in sorted(gaps.items())}
    facts["tile_index"] = (files.directory / f"{files.stem}_tiles.parquet").is_file()
    facts["described"] = described
    return facts


def gather(files, sources: dict | None = None, release: dict | None = None, origin=None) -> dict:
    """Every fact of the card: the data's own; the source plan (``sources``: the export's per-modality plan);
    the build's (``build.yaml`` and ``build_report.json`` whose hash is the data's), else those of a card that
    names the same data; looked for beside ``origin`` (the dataset a release was cut from), then beside ``files``."""
    facts = data_facts(files)
    described = facts.pop("described")
    if sources is not None:
        facts["sources"] = source_rows(sources)
    for directory in dict.fromkeys([(origin or files).directory, files.directory]):
        _provenance(Path(directory), facts)
    facts.setdefault("sources", {k: {"read": v, "licence": None} for k, v in described.items()})
    if release is not None:
        facts["release"] = release
    return {k: facts[k] for k in ORDER if k in facts}   # one order, wherever each fact came from


def _provenance(directory: Path, facts: dict) -> None:
    """Fill in the build, its report and the sources from ``directory``, where they are this data's."""
    build_hash = facts.get("build_config_hash")
    if build_hash and "build" not in facts:
        doc = _load(directory / "build.yaml", yaml.safe_load)
        if doc.get("config_hash") == build_hash and isinstance(doc.get("mmearth_build"), dict):
            facts["build"] = public_build(doc["mmearth_build"])
    if build_hash and "report" not in facts:
        report = _load(directory / "build_report.json", json.loads)
        if report.get("config_hash") == build_hash:
            facts["report"] = report_summary(report)
    try:
        old = read_card(card_path(directory))
    except MMEarthError:
        old = None
    if old and old.get("identity") == facts["identity"]:
        for key in ("build", "report", "sources"):
            if key in old and key not in facts:
                facts[key] = old[key]


def _load(path: Path, parse) -> dict:
    try:
        doc = parse(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError, RecursionError):
        return {}
    return doc if isinstance(doc, dict) else {}


def public_build(identity: dict) -> dict:
    """The build's identity without local paths (a local catalog, a routed modality's catalog): a card names no
    path of the machine that built it."""
    def public(text: str) -> str:
        return text if re.match(r"^[a-z0-9+]+://", text) else "CATALOG"

    out = dict(identity)
    if out.get("catalog"):
        out["catalog"] = public(str(out["catalog"]))
    if out.get("modality_backends"):
        routes = []
        for r in out["modality_backends"]:
            head, sep, arg = str(r).partition(":")
            routes.append(head + (sep + public(arg) if sep else ""))
        out["modality_backends"] = routes
    return out


def report_summary(report: dict) -> dict:
    """What the card says of ``build_report.json``: counts, and the first given places without a tile."""
    if "missing" in report:   # build --locations
        rows = [{"row": r.get("row"), "tile_id": r.get("tile_id"), "why": str(r.get("reason", r.get("status")))[:160]}
                for r in report["missing"][:REPORT_ROWS] if isinstance(r, dict)]
        return {"requested": report.get("requested"), "final": report.get("final"),
                "without_tile": len(report["missing"]), "rows": rows}
    dropped: Counter = Counter()
    for b in report.get("biomes", []):
        dropped.update(b.get("dropped", {}))
    return {"requested": report.get("requested"), "final": report.get("final"), "exported": report.get("exported"),
            "dropped": dict(sorted(dropped.items())), "failed": report.get("failed_by_reason", {})}


def source_rows(plan: dict) -> dict:
    """Per modality: what was read, from which backend, under which licence (``licence`` of the source map's
    entry; the bundled RESOLVE labels' from ``catalogs/sources/ecoregions.yaml``)."""
    rows = {}
    for mod, p in plan.items():
        backend = str(p.get("backend", "")).split(":", 1)[0]
        collections = [str(c) for c in p.get("collections", [])]
        if "missing" in p:
            rows[mod] = {"backend": backend, "read": f"nothing: no source on {backend}", "licence": None}
        elif backend == "synthetic":
            rows[mod] = {"backend": backend, "read": "generated stand-in of " + ", ".join(collections),
                         "licence": SYNTHETIC_LICENCE}
        elif backend == "labels":
            rows[mod] = {"backend": backend, "read": ", ".join(collections),
                         "licence": _yaml_file(catalog_dir() / "sources" / "ecoregions.yaml").get("licence")}
        else:
            rows[mod] = {"backend": backend, "read": p.get("describe") or ", ".join(collections),
                         "licence": map_licence(str(p.get("map", "")), collections)}
    return rows


def map_licence(name: str, collections: list[str]) -> str | None:
    """The licences the source map ``name`` records for ``collections`` (joined), or None."""
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        return None
    entries = _yaml_file(catalog_dir() / "sources" / f"{name}.yaml").values()
    found = [e.get("licence") for e in entries if isinstance(e, dict) and e.get("collection") in collections]
    return "; ".join(dict.fromkeys(str(x) for x in found if x)) or None


def _yaml_file(path: Path) -> dict:
    return _load(path, yaml.safe_load)


def rebuild_command(build: dict) -> str:
    """``mmearth-data build`` with the options of the build's identity; run settings are left out."""
    args = ["mmearth-data", "build"]
    for key, value in build.items():
        if key in NOT_OPTIONS or value is None or value == "" or value is False or value == []:
            continue
        flag = FLAGS.get(key, "--" + key.replace("_", "-"))
        if key == "locations_sha256":
            args += [flag, "PLACES"]
        elif value is True:
            args.append(flag)
        elif key == "splits":
            args += [flag, ",".join(f"{float(v):g}" for v in value)]
        elif isinstance(value, list):
            for v in value:
                args += [flag, str(v)]
        else:
            args += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    return " ".join(shlex.quote(a) for a in args + ["--out", "DIR"])


# -- writing -------------------------------------------------------------------------------------------------------
def write_card(files, sources: dict | None = None, release: dict | None = None, origin=None) -> Path | None:
    """Write ``README.md`` beside the dataset ``files`` (atomically); a README.md that is not a card of ours is
    left alone.

    Args:
        files: the dataset (:func:`mmearth_data.open_dataset`).
        sources: the export's per-modality source plan (``export.json`` ``sources``), when at hand.
        release: a release's shards (``shard``): ``tiles_per_shard`` and ``shards`` (count per group).
        origin: the dataset a release was cut from: its build files and card are read too.

    Returns:
        The card's path, or None when a README.md of someone else's is there.
    """
    path = card_path(files.directory)
    if path.exists() and not _ours(path):
        return None
    facts = gather(files, sources, release, origin)
    atomic_write_bytes(path, render(facts, KEY, rebuild_command(facts["build"]) if "build" in facts else None))
    return path


__all__ = ["CARD_NAME", "card_path", "card_problems", "gather", "read_card", "rebuild_command", "write_card"]
