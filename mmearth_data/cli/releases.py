"""The release commands: shard, download, verify."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from ..errors import MMEarthError
from .base import SizeType, cli, comma_list, resumable


@cli.command("shard")
@click.argument("dataset", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Release directory to write.")
@click.option("--tiles-per-shard", type=SizeType(), default="10k", show_default=True, help="Rows per shard.")
@click.option("--split-modalities", is_flag=True,
              help="Also split by modality group (sentinel2*, sentinel1, the rest), so users fetch only what they use.")
def shard_cmd(dataset: Path, out: Path, tiles_per_shard: int, split_modalities: bool) -> None:
    """Cut a v001 dataset into HDF5 shards of the same layout, with manifest.json and a virtual-dataset file.

    The release directory opens like any v001 dataset (MMEarthDataset, torchgeo, MMEarth-train) through its
    <stem>.h5 virtual dataset. A rerun after an interruption writes only the missing shards.
    """
    from ..shards import shard

    m = resumable(shard, dataset, out, tiles_per_shard=tiles_per_shard, split_modalities=split_modalities,
                   progress=sys.stderr.isatty(), log=click.echo)
    total = sum(f.bytes for f in m.files)
    click.echo(f"{out}: {len(m.shards)} shard(s) in {len(m.groups)} group(s) ({', '.join(m.groups)}), "
               f"{m.n_tiles} tiles, {total / 1e6:.1f} MB; manifest {out / 'manifest.json'}")


def tile_filter(bbox, biomes, eco_regions, start, end, split):
    """download's tile options as a TileFilter, or None when none is given."""
    if not any((bbox, biomes, eco_regions, start, end, split)):
        return None
    from ..tile_index import TileFilter

    box = None
    if bbox:
        try:
            box = tuple(float(v) for v in bbox.split(","))
        except ValueError:
            box = ()
        if len(box) != 4:
            raise MMEarthError(f"--bbox {bbox!r}: give WEST,SOUTH,EAST,NORTH in degrees, e.g. -20,-35,52,38")
    try:
        ecos = [int(v) for v in comma_list(eco_regions)] if eco_regions else None
    except ValueError:
        raise MMEarthError(f"--eco-regions {eco_regions!r}: give ecoregion indices, e.g. 12,407") from None
    return TileFilter(bbox=box, biomes=comma_list(biomes), eco_regions=ecos, start=start, end=end, split=split)


@cli.command("download")
@click.option("--manifest", help="URL or path of a sharded release's manifest.json.")
@click.option("--variant", help="An official MMEarth v001 release: MMEarth, MMEarth64 or MMEarth100k.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Directory to download into.")
@click.option("--modalities", help="Only the shards holding these datasets, e.g. sentinel2,biome (--manifest).")
@click.option("--shards", help="Only these shard indices, e.g. 0-9 or 0,4,10-12 (--manifest).")
@click.option("--mirror", help="Base URL (or directory) to fetch a --variant's files from: its share link from the "
              "MMEarth-data README, or a copy of the four files (required with --variant).")
@click.option("--bbox", help="Only the shards holding tiles whose centre is in WEST,SOUTH,EAST,NORTH (lon/lat; "
              "--manifest; from the release's tile index).")
@click.option("--biomes", help="... of these biomes: class indices or names, e.g. forest,desert.")
@click.option("--eco-regions", help="... of these ecoregion indices (0..845), comma-separated.")
@click.option("--start", help="... whose Sentinel-2 scene is from this day on (YYYY-MM-DD).")
@click.option("--end", help="... up to this day (YYYY-MM-DD).")
@click.option("--split", "split_name", type=click.Choice(["train", "val", "test"]), help="... of this split.")
@click.option("--connections", type=click.IntRange(min=1), default=8, show_default=True, help="Parallel ranged requests.")
@click.option("--allow-redirects", is_flag=True, help="Follow redirects to other hosts.")
def download_cmd(manifest, variant, out, modalities, shards, bbox, biomes, eco_regions, start, end, split_name,
                 mirror, connections, allow_redirects) -> None:
    """Fetch a sharded release (--manifest) or an official MMEarth release (--variant), resumably.

    Parallel ranged GETs; an interrupted download resumes where it stopped; every file is checked against its
    SHA-256 before it gets its final name; a partial selection still opens with MMEarthDataset.
    """
    from ..releases import download_release, download_variant

    if bool(manifest) == bool(variant):
        raise MMEarthError("download: pass exactly one of --manifest URL_OR_PATH or --variant NAME")
    progress = sys.stderr.isatty()
    if variant and (modalities or shards or tile_filter(bbox, biomes, eco_regions, start, end, split_name)):
        raise MMEarthError("--modalities/--shards/--bbox/--biomes/--eco-regions/--start/--end/--split: the official "
                           "releases are single files; use them with --manifest")
    if manifest and mirror:
        raise MMEarthError("--mirror: only for --variant (a manifest names its own base_url)")
    if variant:
        report = resumable(download_variant, variant, out, mirror=mirror, connections=connections,
                            allow_redirects=allow_redirects, progress=progress, log=click.echo)
    else:
        report = resumable(download_release, manifest, out, modalities=comma_list(modalities), shards=shards,
                            connections=connections, allow_redirects=allow_redirects, progress=progress,
                            log=click.echo, tiles=tile_filter(bbox, biomes, eco_regions, start, end, split_name))
    click.echo(report.line())


@cli.command("verify")
@click.argument("out", metavar="RELEASE_DIR", type=click.Path(path_type=Path))
@click.option("--fix", is_flag=True, help="Fetch missing or corrupt files again from where they came from.")
@click.option("--connections", type=click.IntRange(min=1), default=8, show_default=True, help="Parallel ranged requests for --fix.")
def verify_cmd(out: Path, fix: bool, connections: int) -> None:
    """Check every file of a release or download against its manifest or recorded SHA-256.

    Exits 0 when everything is present and intact, 1 when not.
    """
    from ..releases import verify

    result = resumable(verify, out, fix=fix, connections=connections, progress=sys.stderr.isatty(), log=click.echo)
    click.echo(result.line())
    sys.exit(0 if result.ok else 1)
