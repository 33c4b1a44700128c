"""The commands that read data: validate, index, demo-dataset (the consume side: no build extras)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..errors import MMEarthError
from .base import OutputDir, OutputFile, SizeType, cli, keep_earlier_name


@cli.command()
@click.argument("path", metavar="DATASET", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--layout-only", is_flag=True,
              help="Check names, dtypes, shapes, chunking, ids, splits and stats; skip value checks.")
@click.option("--max-tiles", type=SizeType(), default="1000", show_default=True,
              help="Tiles whose pixels are value-checked (seeded random subset; image-level data is read in full).")
@click.option("--full", is_flag=True, help="Value-check the pixels of every tile (slow on large files).")
def validate(path: Path, as_json: bool, layout_only: bool, max_tiles: int, full: bool) -> None:
    """Check a v001 dataset directory (or .h5) against the MMEarth spec.

    Exits 0 when there are no errors (warnings allowed), 1 when there are.
    """
    from ..validate import validate as run

    report = run(path, layout_only=layout_only, max_tiles=None if full else max_tiles,
                 progress=not as_json and sys.stderr.isatty())
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.format_text())
    sys.exit(0 if report.ok else 1)


@cli.command("index")
@click.argument("dataset")
@click.option("--out", type=OutputFile("Parquet", b"PAR1"),
              help="Where to write the index (default: <stem>_tiles.parquet beside a local dataset; required for "
                   "a URL).")
def index_cmd(dataset: str, out: Path | None) -> None:
    """Write <stem>_tiles.parquet, a GeoParquet index of a v001 dataset: one row per tile with its footprint,
    location, biome, ecoregion, split, Sentinel-2 date, id and level, source ids and shard.

    DATASET is a directory or .h5 file, or the URL of a .h5 (https://, s3://, gs://: only its side files and
    tile ids are read). Made from the side files alone, so it works for the official MMEarth files too; build,
    pack and shard write it themselves. Loads in geopandas, DuckDB and QGIS as is."""
    from ..remote import is_remote
    from ..reader import open_dataset
    from ..tile_index import write_index

    if is_remote(dataset) and out is None:
        raise MMEarthError(f"index {dataset}: a URL needs --out (a local .parquet path)")
    files = open_dataset(dataset if is_remote(dataset) else Path(dataset))
    path = write_index(files, out)
    click.echo(f"{path}: {len(files.tile_info)} tile records indexed")


@cli.command("demo-dataset")
@click.option("--out", type=OutputDir(), required=True, help="Output directory.")
@click.option("--tiles", type=SizeType(), default="256", show_default=True, help="Number of tiles (e.g. 256, 1k).")
@click.option("--tile-px", type=click.Choice(["128", "64"]), default="128", show_default=True,
              help="Tile side in pixels (64: the MMEarth64 layout).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the synthetic values.")
@click.option("--stem", help="File stem (default synthetic_<tiles>_v001).")
@click.option("--overwrite", is_flag=True, help="Replace an existing dataset with the same stem.")
def demo_dataset(out: Path, tiles: int, tile_px: str, seed: int, stem: str | None, overwrite: bool) -> None:
    """Write a small SYNTHETIC v001 dataset (plausible, not real values) to try the format and the loader."""
    import numpy as np

    from ..catalog import load_spec
    from ..io_utils import check_free_space
    from ..sample_data import default_stem, write_sample_dataset

    stem = stem or default_stem(tiles, int(tile_px))
    other = sorted(p.name for p in out.glob("*.h5") if p.stem != stem) if out.is_dir() else []
    if other:   # a directory holds one dataset: readers and validate would no longer know which
        raise MMEarthError(f"--out {out}: holds another dataset ({other[0]}); choose an empty directory")
    px = int(tile_px)
    raw = sum(d.channels * (px * px if d.is_pixel else 1) * np.dtype(d.dtype).itemsize
              for d in load_spec().datasets.values())
    # synthetic tiles compress to about 40 % of their raw bytes
    check_free_space(out, 0.4 * raw * tiles, f"{tiles} tiles", "free space or ask for fewer --tiles")

    h5 = write_sample_dataset(out, tiles, tile_px=int(tile_px), seed=seed, stem=stem, overwrite=overwrite,
                              progress=sys.stderr.isatty())
    click.echo(f"wrote {tiles} synthetic tiles to {h5} ({h5.stat().st_size / 1e6:.1f} MB)")


keep_earlier_name(cli, demo_dataset, "generate-sample")   # beside `sample` (locations) it read as a sampler
