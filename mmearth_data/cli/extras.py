"""The RESOLVE ecoregions and the plots."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from .base import OutputDir, OutputFile, cli, keep_earlier_name


@cli.group()
def ecoregions() -> None:
    """The RESOLVE Ecoregions 2017 polygons the sampler draws from."""


@ecoregions.command("download")
@click.option("--cache", type=OutputDir(),
              help="Cache directory (default $MMEARTH_DATA_CACHE or ~/.cache/mmearth-data).")
@click.option("--url", help="Override the download URL in catalogs/sources/ecoregions.yaml (e.g. a mirror).")
def ecoregions_download(cache: Path | None, url: str | None) -> None:
    """Fetch the full-resolution release (resumable; SHA-256 recorded beside the file)."""
    from sampling.ecoregions import download_ecoregions

    path, sha = download_ecoregions(cache, url, progress=sys.stderr.isatty())
    click.echo(f"{path}\nsha256 {sha}\nuse it with: mmearth-data sample --ecoregions {path} ...")


@cli.group()
def plot() -> None:
    """Pictures of locations and tiles."""


@plot.command("locations")
@click.argument("path", metavar="LOCATIONS", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=OutputFile("PNG", b"\x89PNG", ".png"), required=True, help="Output PNG.")
@click.option("--dpi", type=click.IntRange(min=30), default=150, show_default=True, help="Resolution of the PNG.")
def plot_locations_cmd(path: Path, out: Path, dpi: int) -> None:
    """World map of a locations file, points coloured by biome, counts in the legend."""
    from sampling.plot import plot_locations

    click.echo(f"wrote {plot_locations(path, out, dpi=dpi)}")


@plot.command("tile")
@click.argument("path", metavar="DATASET", type=click.Path(path_type=Path))
@click.option("--index", type=click.IntRange(min=0), default=0, show_default=True, help="Row of the tile.")
@click.option("-o", "--out", type=OutputFile("PNG", b"\x89PNG", ".png"), required=True, help="Output PNG.")
@click.option("--dpi", type=click.IntRange(min=30), default=120, show_default=True, help="Resolution of the PNG.")
def plot_sample_cmd(path: Path, index: int, out: Path, dpi: int) -> None:
    """One tile across all pixel modalities (S2 RGB, S1, elevation/slope, canopy, DW and WorldCover with legends)
    and its image-level values as text."""
    from ..plot_tile import plot_tile

    click.echo(f"wrote {plot_tile(path, index, out, dpi=dpi)}")


keep_earlier_name(plot, plot_sample_cmd, "sample")
