"""The text of a dataset card (:mod:`mmearth_data.card`): its facts as Hugging Face front matter and Markdown."""
from __future__ import annotations

import yaml

TASKS = ["image-feature-extraction", "image-classification", "image-segmentation"]
TAGS = ["earth-observation", "remote-sensing", "satellite-imagery", "multimodal", "geospatial", "sentinel-2",
        "sentinel-1", "mmearth"]
OPEN = {"CC0-1.0": "cc0-1.0", "CC-BY-4.0": "cc-by-4.0"}   # source licences that are Hugging Face licence ids
#: why a tile or a modality is missing: the build's and the export ledger's reason codes
REASONS = {"no_s2": "no usable Sentinel-2 scene", "no_coverage": "no scene covers the tile",
           "no_source": "no source on the backend", "missing_asset": "an asset was missing",
           "corrupt": "a source file did not decode", "gcps_only": "the scene is not georeferenced",
           "transient": "the service kept failing", "error": "an internal error", "pending": "not exported"}
CITATION = """\
@misc{nedungadi2024mmearth,
      title={MMEarth: Exploring Multi-Modal Pretext Tasks For Geospatial Representation Learning},
      author={Vishal Nedungadi and Ankit Kariryaa and Stefan Oehmcke and Serge Belongie and Christian Igel and Nico Lang},
      year={2024},
      eprint={2405.02771},
      archivePrefix={arXiv},
      primaryClass={cs.CV}
}"""


def size_category(n: int) -> str:
    """The Hugging Face size category of ``n`` rows (``n<1K``, ``1K<n<10K``, ... ``n>1T``)."""
    bounds = ["1K", "10K", "100K", "1M", "10M", "100M", "1B", "10B", "100B", "1T"]
    k = max(0, len(str(max(int(n), 1))) - 4)   # 10**(k+3) <= n < 10**(k+4)
    if n < 1000:
        return "n<1K"
    return f"{bounds[k]}<n<{bounds[k + 1]}" if k + 1 < len(bounds) else "n>1T"


def licence_of(facts: dict) -> dict:
    """The front matter's licence: a Hugging Face id when every source's licence is one (CC0 adds no term to
    CC-BY), ``unknown`` when a source's is not recorded, else ``other`` (the card lists them)."""
    found = {r.get("licence") for r in facts["sources"].values() if not r.get("read", "").startswith("nothing")}
    if None in found or not found:
        return {"license": "unknown"}
    if found <= set(OPEN):
        return {"license": OPEN["CC-BY-4.0" if "CC-BY-4.0" in found else "CC0-1.0"]}
    return {"license": "other", "license_name": "mmearth-source-licences"}


def front_matter(facts: dict, key: str) -> str:
    synthetic = " (synthetic)" if facts["synthetic"] else ""
    doc = {**licence_of(facts), "pretty_name": f"MMEarth {facts['format']}: {facts['stem']}{synthetic}",
           "size_categories": [size_category(facts["tiles"])], "task_categories": TASKS,
           "tags": TAGS + (["synthetic"] if facts["synthetic"] else []), key: facts}
    return "---\n" + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=110) + "---\n"


def _cell(v) -> str:
    return str("" if v is None else v).replace("|", "\\|").replace("\n", " ")


def table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
        ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]


def _why(counts: dict) -> str:
    return ", ".join(f"{n} {REASONS.get(str(k).split(':')[-1], k)} ({k})" for k, n in counts.items())


def missing_lines(facts: dict) -> list[str]:
    """What is missing and why: tiles the build could not make, modalities without a source, per-tile gaps."""
    out = []
    rep = facts.get("report")
    if rep and "rows" in rep:
        out.append(f"- {rep['without_tile']} of {rep['requested']} given places have no tile (first "
                   f"{len(rep['rows'])}, as `build_report.json` lists them all):")
        out += [f"  - row {r['row']} (`{r['tile_id']}`): {r['why']}" for r in rep["rows"]]
    elif rep:
        dropped = sum(rep["dropped"].values())
        if dropped:
            out.append(f"- {dropped} of {rep['exported']} exported locations were dropped ({_why(rep['dropped'])}) "
                       "and replaced by new locations from the same ecoregions (`build_report.json`, per biome and "
                       "ecoregion).")
        if rep["failed"]:
            out.append(f"- Failed tiles, by reason: {_why(rep['failed'])}.")
        if rep["final"] is not None and rep["requested"] is not None and rep["final"] < rep["requested"]:
            out.append(f"- {rep['requested'] - rep['final']} of the {rep['requested']} requested tiles could not be "
                       "replaced (an ecoregion ran out of room, or the replacement rounds ran out).")
    for mod, r in facts["sources"].items():
        if r.get("read", "").startswith("nothing"):
            out.append(f"- `{mod}`: {r['read'][len('nothing: '):]}; the dataset is all no-data.")
    for mod, counts in facts.get("gaps", {}).items():
        out.append(f"- `{mod}` is no-data in {sum(counts.values())} tile(s): {_why(counts)} (tile_info `missing`).")
    return out or ["Nothing: every requested tile was built and every modality had a source."]


def render(facts: dict, key: str, rebuild: str | None) -> bytes:
    """The card's bytes: a function of ``facts`` alone."""
    stem, n, px = facts["stem"], facts["tiles"], facts["tile_px"]
    lines = [front_matter(facts, key), f"# {stem}", "",
             f"An MMEarth {facts['format']} dataset of {n:,} tiles of {px} x {px} pixels at 10 m, each holding the "
             "same place in up to 12 aligned modalities (Sentinel-2, Sentinel-1, elevation, canopy height, land "
             "cover, climate, biome and ecoregion labels, location and month), in the HDF5 layout of MMEarth "
             "(Nedungadi et al., ECCV 2024). It loads in `mmearth_data.MMEarthDataset`, torchgeo's `MMEarth` and "
             "MMEarth-train.", ""]
    if facts["synthetic"]:
        lines += ["> **Synthetic data.** Every pixel was generated by mmearth-data's synthetic backend: plausible "
                  "values, not observations. Use it to test pipelines, never to train or evaluate a model.", ""]
    lines += ["## Files", ""] + table(["file", "holds"], [
        [f"`{stem}.h5`", "one dataset per modality, row i the same tile in each, one tile per chunk"],
        [f"`{stem}_tile_info.json`", "per tile: location, Sentinel-2 date and level, CRS, biome, ecoregion, the "
                                     "source scenes' ids, what is missing"],
        [f"`{stem}_band_stats.json`", "per modality and band: mean, std, min, max (for normalisation)"],
        [f"`{stem}_splits.json`", "row indices of train, val and test: " +
         ", ".join(f"{k} {v:,}" for k, v in facts["splits"].items())]] +
        ([[f"`{stem}_tiles.parquet`", "GeoParquet index of the tiles (footprints, biome, date, split)"]]
         if facts["tile_index"] else [])) + [""]
    lines += ["## How it was built", "", f"- Backend: `{facts['backend']}`; produced by {facts['producer']}."]
    if "build" in facts:
        lines.append(f"- Build hash `{facts.get('build_config_hash')}` (`build.yaml`, and the HDF5 attribute "
                     "`build_config_hash`). Settings that define the data:")
        lines += [f"  - `{k}`: {v}" for k, v in facts["build"].items() if v is not None and k != "size"]
    lines += [f"- Dataset identity `{facts['identity']}` (rows, layout, attributes and side files; a release's "
              "`manifest.json` names it too).", "", "### Sources and licences", ""]
    lines += table(["modality", "read from", "licence"],
                   [[f"`{m}`", r.get("read"), r.get("licence") or "not recorded"] for m, r in facts["sources"].items()])
    sentinel = any("Copernicus Sentinel" in str(r.get("licence")) for r in facts["sources"].values())
    lines += ["", "Attribution: " + ("contains modified Copernicus Sentinel data; " if sentinel else "") +
              "biome and ecoregion labels from RESOLVE Ecoregions 2017 (Dinerstein et al. 2017, CC-BY-4.0).", ""]
    lines += ["## Tiles per biome", ""] + table(["biome", "name", "tiles"], [
        [b["biome"], b["name"], f"{b['tiles']:,}"] for b in facts["biomes"]]) + [""]
    lines += ["## What is missing and why", ""] + missing_lines(facts) + [""]
    if rebuild:
        lines += ["## Rebuild", "", "```sh", rebuild, "```", "",
                  "Run settings (`--workers`, `--scheduler`, `--partition-size`, credentials such as "
                  "`--gee-project`) do not change the bytes. `mmearth-data validate DIR` checks the result, and "
                  "this card against it." + (" `PLACES` is the file of given places (its sha256 is "
                                             f"`{facts['build']['locations_sha256']}`)." if "locations_sha256"
                                             in facts["build"] else "") +
                  (" `CATALOG` is the local STAC catalog it read." if "CATALOG" in rebuild else ""), ""]
    lines += ["## Load", "", "```python", "from mmearth_data import MMEarthDataset", "",
              'ds = MMEarthDataset("path/to/this/directory", split="train")   # or its .h5 file',
              "sample = ds[0]   # a dict of arrays per modality, normalised with the band statistics", "```", ""]
    if "release" in facts:
        rel = facts["release"]
        lines += ["## Release", "",
                  f"{sum(rel['shards'].values())} shard(s) of at most {rel['tiles_per_shard']:,} tiles in "
                  f"`shards/` (groups: {', '.join(rel['shards'])}), `manifest.json` (sizes and sha256 of every file, "
                  f"this card included) and `{stem}.h5`, a virtual dataset over the shards that loads like the "
                  "file it was cut from.", "", "```sh",
                  "mmearth-data download --manifest https://HOST/PATH/manifest.json --out DIR   # --modalities, "
                  "--bbox, --biomes ...: part of it", "mmearth-data verify DIR", "```", "",
                  'Or stream it without a download: `MMEarthDataset("https://HOST/PATH/manifest.json")`.', ""]
    lines += ["## Citation", "", "```bibtex", CITATION, "```", ""]
    return "\n".join(lines).encode("utf-8")
