"""Rebuild catalogs/labels/{biomes,ecoregions}.csv from the MMEarth label JSONs and the RESOLVE attribute table.

MMEarth's class indices (biome 0..13, eco_region 0..845) are not RESOLVE's BIOME_NUM / ECO_ID; this joins
them by name so every later stage can map between the two. Usage:

    python scripts/make_label_tables.py ../shared/fixtures/ecoregions catalogs/labels
"""
from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path


def build_tables(src: Path) -> tuple[str, str]:
    """Return (biomes_csv, ecoregions_csv) text built from the fixture directory ``src``."""
    biome_index = json.loads((src / "mmearth_stats/biome_labels.json").read_text())
    eco_index = json.loads((src / "mmearth_stats/eco_labels.json").read_text())
    with open(src / "resolve_ecoregions2017_attributes.csv", newline="", encoding="utf-8") as fh:
        resolve = [r for r in csv.DictReader(fh) if r["BIOME_NAME"] != "N/A"]

    by_name = {}
    for row in resolve:
        if row["ECO_NAME"] in by_name:
            raise ValueError(f"ecoregion name {row['ECO_NAME']!r} is not unique in RESOLVE")
        by_name[row["ECO_NAME"]] = row
    missing = sorted(set(eco_index) - set(by_name))
    if missing or len(eco_index) != 846 or len(biome_index) != 14:
        raise ValueError(f"label JSONs do not match RESOLVE: missing {missing[:5]}")

    biome_num = {}
    for row in resolve:
        num = int(float(row["BIOME_NUM"]))
        if biome_num.setdefault(row["BIOME_NAME"], num) != num:
            raise ValueError(f"biome {row['BIOME_NAME']!r} has two BIOME_NUMs")

    counts: dict[str, int] = {}
    eco_out = io.StringIO()
    w = csv.writer(eco_out, lineterminator="\n")
    w.writerow(["index", "eco_id", "name", "biome_index", "biome_num", "realm", "eco_biome_code"])
    for name, idx in sorted(eco_index.items(), key=lambda kv: kv[1]):
        row = by_name[name]
        counts[row["BIOME_NAME"]] = counts.get(row["BIOME_NAME"], 0) + 1
        w.writerow([idx, int(row["ECO_ID"]), name, biome_index[row["BIOME_NAME"]],
                    biome_num[row["BIOME_NAME"]], row["REALM"], row["ECO_BIOME_"]])

    biome_out = io.StringIO()
    w = csv.writer(biome_out, lineterminator="\n")
    w.writerow(["index", "biome_num", "name", "n_ecoregions"])
    for name, idx in sorted(biome_index.items(), key=lambda kv: kv[1]):
        w.writerow([idx, biome_num[name], name, counts[name]])
    return biome_out.getvalue(), eco_out.getvalue()


def main(argv: list[str]) -> None:
    src, dst = Path(argv[1]), Path(argv[2])
    biomes, ecos = build_tables(src)
    (dst / "biomes.csv").write_text(biomes, encoding="utf-8")
    (dst / "ecoregions.csv").write_text(ecos, encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv)
