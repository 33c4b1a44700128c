"""The ``mmearth-data`` command. Build-side commands import their heavy dependencies inside the command."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from . import __version__
from .errors import MMEarthError
from .sizes import parse_size


BUILD_MODULES = {"geopandas", "shapely", "pyproj", "scipy", "pyarrow", "rasterio", "matplotlib", "dask", "distributed",
                 "pystac_client", "planetary_computer", "ee", "pyogrio"}


class SizeType(click.ParamType):
    name = "count"

    def convert(self, value, param, ctx):
        try:
            return parse_size(value, f"--{param.name.replace('_', '-')}" if param else "size")
        except MMEarthError as e:
            self.fail(str(e), param, ctx)


BACKEND_CHOICES = ["synthetic", "local", "stac", "planetary-computer", "earth-search", "gee"]


def source_options(fn):
    """Where the pixels come from: the same options on export and build."""
    options = [
        click.option("--backend", type=click.Choice(BACKEND_CHOICES), default="synthetic", show_default=True,
                     help="synthetic: generated sources (offline, labelled synthetic); local: a static STAC catalog "
                          "of COGs; stac: any STAC API (--stac-url, --stac-preset); planetary-computer, "
                          "earth-search: those APIs with their source maps (catalogs/sources/); gee: Google Earth Engine, "
                          "the assets MMEarth used (--gee-project; at most two requests per tile)."),
        click.option("--catalog", help="--backend local: static STAC catalog (catalog.json, its directory, or an "
                                       "http(s) URL)."),
        click.option("--allow-outside-catalog", is_flag=True,
                     help="--backend local: let the catalog's links and assets point at local files outside its "
                          "directory (refused by default; a remote catalog may never point at local files)."),
        click.option("--stac-url", help="STAC API root (--backend stac; overrides a preset's URL, e.g. a mirror)."),
        click.option("--stac-preset", help="Source map of the endpoint: catalogs/sources/NAME.yaml (collection ids, "
                                           "asset keys, conversions), e.g. planetary-computer, earth-search, "
                                           "earth-search-c1."),
        click.option("--sas-token-url", help="Planetary Computer SAS token endpoint (default: the preset's)."),
        click.option("--modality-backend", "modality_backends", multiple=True, metavar="MOD=BACKEND[:ARG]",
                     help="Take one modality from another backend, e.g. canopy_height_eth=local:/data/eth/catalog.json "
                          "or dynamic_world=gee (repeatable)."),
        click.option("--gee-project", help="Earth Engine: the Cloud project registered for Earth Engine."),
        click.option("--gee-key-file", type=click.Path(dir_okay=False),
                     help="Earth Engine: a service-account JSON key (default: application-default credentials, "
                          "then `earthengine authenticate`)."),
        click.option("--gee-url", help="Earth Engine: another API endpoint (e.g. a local stand-in)."),
        click.option("--gee-high-volume", is_flag=True, help="Earth Engine: use the high-volume endpoint."),
        click.option("--gee-concurrency", type=click.IntRange(min=1), default=40, show_default=True,
                     help="Earth Engine: requests in flight for the whole run (the project's quota, 40 by default; "
                          "divided among its processes; halved on quota errors, recovered additively)."),
        click.option("--gee-timeout", "gee_timeout_s", type=click.FloatRange(min=1), default=330.0,
                     show_default=True,   # pipelines.backends.gee.session.READ_TIMEOUT_S (not imported here)
                     help="Earth Engine: seconds to wait for an answer before retrying (Earth Engine ends an "
                          "interactive computation after 300 s)."),
        click.option("--no-preflight", is_flag=True,
                     help="Earth Engine or a STAC API: skip the check that runs first (credentials, assets, tokens, a "
                          "few tiles exported and judged; see `mmearth-data check`)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def given_options(fn):
    """How given locations (build/export --locations: CSV, GeoParquet, GeoJSON) are labelled and timed."""
    options = [
        click.option("--label-max-km", type=click.FloatRange(min=0), default=10.0, show_default=True,
                     help="A point in no ecoregion polygon (coast, small island) takes the nearest within this "
                          "distance; the distance goes into tile_info."),
        click.option("--allow-unlabelled", is_flag=True,
                     help="Keep points with no ecoregion within --label-max-km (or only in Rock and Ice): all-zero "
                          "biome/eco_region rows, flagged in tile_info (default: refuse them, one line each)."),
        click.option("--dedupe", is_flag=True, help="Drop the second of two points closer than a tile side "
                                                    "(default: keep both and flag them)."),
        click.option("--s2-window", "s2_window", type=click.IntRange(min=0), default=30, show_default=True,
                     help="Rows with a date: the Sentinel-2 scene nearest to it within +- this many days."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def echo_missing(choice) -> None:
    """Modalities the backend has no source for, once at start, with the remedy."""
    from pipelines.sources import format_plan

    plan = choice.plan()
    lines = [line for mod, line in zip(plan, format_plan(plan)) if "missing" in plan[mod]]
    if lines:
        click.echo(f"{len(lines)} modalities have no source on {choice.backend}:", err=True)
        for line in lines:
            click.echo(line, err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mmearth-data")
def cli() -> None:
    """Build, fetch and load MMEarth-style multi-modal Earth-observation data (v001 HDF5 layout)."""


@cli.command()
@click.argument("path", type=click.Path(path_type=Path))
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
    from .validate import validate as run

    report = run(path, layout_only=layout_only, max_tiles=None if full else max_tiles,
                 progress=not as_json and sys.stderr.isatty())
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.format_text())
    sys.exit(0 if report.ok else 1)


@cli.command("generate-sample")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output directory.")
@click.option("--tiles", type=SizeType(), default="256", show_default=True, help="Number of tiles (e.g. 256, 1k).")
@click.option("--tile-px", type=click.Choice(["128", "64"]), default="128", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--stem", help="File stem (default synthetic_<tiles>_v001).")
@click.option("--overwrite", is_flag=True, help="Replace an existing dataset with the same stem.")
def generate_sample(out: Path, tiles: int, tile_px: str, seed: int, stem: str | None, overwrite: bool) -> None:
    """Write a small SYNTHETIC v001 dataset (plausible, not real values) to try the format and the loader."""
    from .sample_data import write_sample_dataset

    h5 = write_sample_dataset(out, tiles, tile_px=int(tile_px), seed=seed, stem=stem, overwrite=overwrite,
                              progress=sys.stderr.isatty())
    click.echo(f"wrote {tiles} synthetic tiles to {h5} ({h5.stat().st_size / 1e6:.1f} MB)")


@cli.command("sample")
@click.option("--size", type=SizeType(), required=True, help="Tiles wanted, e.g. 1k, 100k, 1.5M.")
@click.option("--mode", type=click.Choice(["area", "ecoregion-in-biome", "ecoregion"]), default="area",
              show_default=True, help="area: N/14 per biome split by ecoregion area (MMEarth); "
              "ecoregion-in-biome: N/14 per biome, equal per ecoregion; ecoregion: N/846 each.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output GeoParquet (EPSG:4326 points).")
@click.option("--oversample", type=click.FloatRange(min=1.0), default=1.0, show_default=True,
              help="Multiply --size to absorb tiles dropped later (e.g. no cloud-free Sentinel-2 scene).")
@click.option("--tile-size", type=click.FloatRange(min=10.0, max=100_000.0), default=1280.0, show_default=True,
              help="Tile side in metres (UTM); tiles never overlap.")
@click.option("--ecoregions", "ecoregions_path", type=click.Path(path_type=Path),
              help="RESOLVE-style polygons (shp, gpkg, parquet, zip) with ECO_ID and BIOME_NUM. "
                   "Default: the bundled simplified RESOLVE Ecoregions 2017.")
@click.option("--max-coverage", type=float, default=0.3, show_default=True,
              help="Largest share of an ecoregion's area covered by tiles before its quota moves elsewhere.")
@click.option("--spill", type=click.Choice(["global", "none"]), default="global", show_default=True,
              help="Where a biome's unplaceable shortfall goes: other biomes in proportion, or nowhere.")
@click.option("--workers", type=click.IntRange(min=1), default=min(4, os.cpu_count() or 1), show_default=True,
              help="Threads drawing and projecting points; the output is identical for any value.")
@click.option("--report", "report_path", type=click.Path(path_type=Path),
              help="Report JSON (default: <out>.report.json).")
@click.option("--resume", is_flag=True, help="Keep --out if a finished run with the same settings wrote it (the "
              "output is written atomically and is deterministic, so a killed run is simply run again).")
def sample_cmd(size, mode, seed, out, oversample, tile_size, ecoregions_path, max_coverage, spill, workers,
               report_path, resume) -> None:
    """Draw biome-stratified, equal-area, non-overlapping tile locations from RESOLVE Ecoregions 2017."""
    import math

    from tqdm import tqdm

    from sampling import SamplerConfig, format_report, load_ecoregions, sample, write_locations, write_report

    n = int(math.ceil(size * oversample))
    config = SamplerConfig(size=n, mode=mode, seed=seed, tile_size_m=tile_size, max_coverage=max_coverage,
                           spill=spill, workers=workers)
    config.check()
    eco = load_ecoregions(ecoregions_path)
    report_path = report_path or out.with_name(out.name + ".report.json")
    if resume and report_path.is_file() and _same_sample(out, config, eco.sha256):
        click.echo(f"{out}: already complete with these settings (nothing to do)")
        return
    with tqdm(total=n, desc="sample", unit="tile", disable=not sys.stderr.isatty()) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        result = sample(eco, config, progress=progress)
    rep = write_report(result, report_path)   # the report first: a finished locations file implies its report
    write_locations(result, out)
    click.echo(format_report(rep))
    click.echo(f"wrote {len(result.tiles)} locations to {out}; report: {report_path}")


def _same_sample(out: Path, config, eco_sha256: str) -> bool:
    """Whether ``out`` is a finished sampler output of exactly these settings and ecoregions."""
    from dataclasses import asdict

    import pyarrow.parquet as pq

    from sampling.output import META_KEY

    try:
        meta = json.loads((pq.read_schema(out).metadata or {}).get(META_KEY, b"{}"))
    except Exception:  # noqa: BLE001 - missing or unreadable: sample again
        return False
    return meta.get("settings") == asdict(config) | {"workers": None} and meta.get("ecoregions", {}).get(
        "sha256") == eco_sha256


@cli.command("export")
@click.argument("locations", type=click.Path(path_type=Path))
@source_options
@given_options
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Export directory (staging + ledgers).")
@click.option("--tile-px", type=int, default=128, show_default=True,
              help="Tile side in 10 m pixels: a multiple of 8 from 32 to 1024.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the per-tile Sentinel-2 choice.")
@click.option("--limit", type=SizeType(), help="Export only the first N locations.")
@click.option("--partition-size", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Tiles per partition: the unit of Dask tasks, staging files, retry and resume.")
@click.option("--resume", is_flag=True, help="Continue an export in --out: committed tiles are never redone.")
@click.option("--scheduler", default="auto", show_default=True,
              help="auto (processes for synthetic, threads for local) | threads | processes | local-cluster "
                   "(dask.distributed) | tcp://HOST:PORT (an existing cluster whose workers see --out).")
@click.option("--workers", type=click.IntRange(min=1), default=min(2, os.cpu_count() or 1), show_default=True,
              help="Partitions run at once (threads/processes/local-cluster).")
@click.option("--threads", type=click.IntRange(min=1), help="I/O threads inside a partition (default per backend).")
@click.option("--attempts", type=click.IntRange(min=1), default=5, show_default=True,
              help="Tries per read on transient faults (HTTP 5xx/429, timeouts, truncated bodies).")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=1), default=20.0, show_default=True,
              help="HTTP timeout in seconds.")
@click.option("--keep-sources", is_flag=True, help="--backend synthetic: keep the generated COGs and STAC items.")
@click.option("--retry-failed", is_flag=True, help="With --resume: also redo tiles and modalities that failed "
              "permanently or with an internal error (e.g. after fixing their cause).")
def export_cmd(locations, backend, catalog, allow_outside_catalog, stac_url, stac_preset, sas_token_url, modality_backends, gee_project,
               gee_key_file, gee_url, gee_high_volume, gee_concurrency, gee_timeout_s, no_preflight, label_max_km,
               allow_unlabelled, dedupe, s2_window, out, tile_px, seed, limit, partition_size, resume, scheduler,
               workers, threads, attempts, timeout_s, keep_sources, retry_failed) -> None:
    """Fetch every modality for each location onto its tile grid; stage per partition with a resumable ledger.

    LOCATIONS is the sampler's GeoParquet, or your own places: CSV with lon, lat columns, GeoParquet or GeoJSON
    points (any CRS), with optional tile_id and date (or start and end) columns."""
    import tempfile

    from dataclasses import replace

    from mmearth_data.io_utils import atomic_write_bytes
    from pipelines.export import ExportConfig, check_out_dir, check_tile_px, given_locations, run_export
    from pipelines.status import format_summary
    from sampling.given import GivenOptions

    check_tile_px(tile_px)
    with tempfile.TemporaryDirectory(prefix="mmearth-locations-") as tmp:   # nothing in --out before the checks
        checked = given_locations(locations, tmp, GivenOptions(label_max_km, allow_unlabelled, dedupe, tile_px),
                                  echo=click.echo)
        cfg = ExportConfig(locations=str(checked), out=str(out), backend=backend, catalog=catalog,
                           allow_outside_catalog=allow_outside_catalog,
                           stac_url=stac_url, stac_preset=stac_preset, modality_backends=tuple(modality_backends),
                           sas_token_url=sas_token_url, gee_project=gee_project, gee_key_file=gee_key_file,
                           gee_url=gee_url, gee_high_volume=gee_high_volume, gee_concurrency=gee_concurrency,
                           gee_timeout_s=gee_timeout_s, tile_px=tile_px, seed=seed, partition_size=partition_size,
                           limit=limit, threads=threads, attempts=attempts, timeout_s=timeout_s,
                           keep_sources=keep_sources, s2_window_days=s2_window, preflight=not no_preflight)
        cfg.choice().check()
        echo_missing(cfg.choice())
        if cfg.preflight and cfg.choice().remote:
            from pipelines.preflight import preflight

            preflight(cfg, echo=click.echo)   # before anything is written
        elif Path(checked) != Path(locations):
            cfg.choice().probe(cfg.policy(), crawl_policy=cfg.policy())   # catalogs checked before the converted locations land in --out
        if Path(checked) != Path(locations):   # converted from the user's file: kept beside the export
            check_out_dir(Path(out))
            Path(out).mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(Path(out) / "locations.parquet", Path(checked).read_bytes())
            checked = Path(out) / "locations.parquet"
    cfg = replace(cfg, locations=str(checked), preflight=False)
    summary = run_export(cfg, resume=resume, scheduler=scheduler, workers=workers, progress=sys.stderr.isatty(),
                         retry_failed=retry_failed, echo=click.echo)
    click.echo(format_summary(summary))
    if summary["by_status"].get("retry"):
        click.echo("some tiles hit transient faults until their tries ran out: run the same command with --resume")


@cli.command("check")
@click.option("--locations", type=click.Path(path_type=Path),
              help="Export the sample tiles at these places (the sampler's GeoParquet, or CSV/GeoParquet/GeoJSON "
                   "points); default: a few fixed places where every modality exists, all of which must then be "
                   "present.")
@click.option("--tiles", type=click.IntRange(1, 50), default=3, show_default=True, help="Sample tiles to export.")
@click.option("--tile-px", type=int, default=128, show_default=True, help="Tile side in 10 m pixels.")
@source_options
def check_cmd(locations, tiles, tile_px, backend, catalog, allow_outside_catalog, stac_url, stac_preset, sas_token_url, modality_backends,
              gee_project, gee_key_file, gee_url, gee_high_volume, gee_concurrency, gee_timeout_s,
              no_preflight) -> None:
    """Check a setup against the real services before a long run. Earth Engine: credentials and project, every
    asset's type (one getAsset each); a STAC API: it answers item search, how it is asked, a token for each
    collection Planetary Computer signs (or that it needs an account); then a few tiles exported into a temporary
    directory and judged (each modality present, values plausible). Writes nothing; exits non-zero with one line
    on the first problem.

    The same check runs before every export and build on Earth Engine or a STAC API (--no-preflight skips it)."""
    import tempfile

    from pipelines.export import ExportConfig, check_tile_px, given_locations
    from pipelines.preflight import places, preflight
    from sampling.given import GivenOptions

    if no_preflight:
        raise MMEarthError("check: --no-preflight would leave nothing to check")
    check_tile_px(tile_px)
    with tempfile.TemporaryDirectory(prefix="mmearth-check-") as tmp:
        where = given_locations(locations, tmp, GivenOptions(tile_px=tile_px), echo=click.echo) if locations \
            else places(tmp, tile_px)
        cfg = ExportConfig(locations=str(where), out=str(Path(tmp) / "export"), backend=backend, catalog=catalog,
                           allow_outside_catalog=allow_outside_catalog,
                           stac_url=stac_url, stac_preset=stac_preset, modality_backends=tuple(modality_backends),
                           sas_token_url=sas_token_url, gee_project=gee_project, gee_key_file=gee_key_file,
                           gee_url=gee_url, gee_high_volume=gee_high_volume, gee_concurrency=gee_concurrency,
                           gee_timeout_s=gee_timeout_s, tile_px=tile_px,
                           synthetic_dir=str(Path(tmp) / "synthetic"))
        cfg.choice().check()
        if not cfg.choice().remote:
            raise MMEarthError("check: it checks the services a run reads (Earth Engine, a STAC API); --backend "
                               f"{backend} reads none: name one with --backend or --modality-backend")
        preflight(cfg, sample=tiles, echo=click.echo, expect_all=locations is None, skippable=False)


@cli.command("pack")
@click.argument("export_dir", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output directory of the v001 dataset.")
@click.option("--name", required=True, help="File stem, e.g. data_100k_v001.")
@click.option("--tile-px", type=int, help="Pack the centre crop of this side (a multiple of 8, at most the staged "
              "size; default: the staged size); 64 on 128 px tiles is MMEarth64.")
@click.option("--splits", "splits_text", default="1,0,0", show_default=True,
              help="train,val,test fractions; 1,0,0 is v001's all-train layout. Spatial blocks, stratified by biome.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the splits.")
@click.option("--level", type=click.IntRange(1, 9), default=1, show_default=True,
              help="Deflate level (libdeflate); level 1 + shuffle is smaller than v001's zlib 4.")
@click.option("--scheduler", default="auto", show_default=True,
              help="auto | threads | processes | local-cluster | tcp://HOST:PORT (workers must see EXPORT_DIR, --out).")
@click.option("--workers", type=click.IntRange(min=1), default=min(2, os.cpu_count() or 1), show_default=True)
@click.option("--subset", type=SizeType(), help="Pack a biome-stratified, seeded subset of N finished tiles "
              "(how MMEarth100k relates to the 1.2M corpus).")
@click.option("--overwrite", is_flag=True, help="Replace an existing dataset with the same name.")
def pack_cmd(export_dir, out, name, tile_px, splits_text, seed, level, scheduler, workers, subset, overwrite) -> None:
    """Pack an export's staged tiles into an MMEarth v001 dataset (HDF5 + tile_info, band_stats, splits)."""
    from pipelines.pack import PackConfig, pack
    from pipelines.splits import parse_fractions

    cfg = PackConfig(export_dir=str(export_dir), out=str(out), name=name, tile_px=tile_px, level=level,
                     fractions=parse_fractions(splits_text), seed=seed, overwrite=overwrite, subset=subset)
    h5 = pack(cfg, scheduler=scheduler, workers=workers, progress=sys.stderr.isatty())
    click.echo(f"wrote {h5} ({h5.stat().st_size / 1e6:.1f} MB)")


@cli.command("build")
@click.option("--size", "size_text", help="Tiles wanted, e.g. 1k, 100k, 1.2M (sampled by biome).")
@click.option("--locations", type=click.Path(path_type=Path),
              help="Build at these places instead of sampling: CSV with lon, lat columns, GeoParquet or GeoJSON "
                   "points (any CRS); optional tile_id, and date (or start and end) columns.")
@source_options
@given_options
@click.option("--require-all", is_flag=True, help="--locations: a place without a usable Sentinel-2 scene is an "
              "error (default: reported per row, the others are built).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Build directory.")
@click.option("--tile-px", type=int, default=128, show_default=True,
              help="128 or 64 (MMEarth64) when sampling; with --locations any multiple of 8 from 32 to 1024.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--mode", type=click.Choice(["area", "ecoregion-in-biome", "ecoregion"]), default="area",
              show_default=True, help="Sampling strata (see mmearth-data sample --help).")
@click.option("--oversample", type=click.FloatRange(min=1.0), default=1.0, show_default=True,
              help="Sample more locations to absorb tiles without a usable Sentinel-2 scene (~20 %).")
@click.option("--splits", "splits_text", default="1,0,0", show_default=True, help="train,val,test fractions.")
@click.option("--partition-size", type=click.IntRange(min=1),
              help="Tiles per export partition (default: about 16 partitions, at most 1000 tiles each); the bytes "
                   "of the dataset do not depend on it.")
@click.option("--scheduler", default="auto", show_default=True,
              help="auto | threads | processes | local-cluster | tcp://HOST:PORT")
@click.option("--workers", type=click.IntRange(min=1), default=min(2, os.cpu_count() or 1), show_default=True)
@click.option("--resume", is_flag=True, help="Continue a build in --out (finished stages and tiles are kept).")
@click.option("--retry-failed", is_flag=True, help="With --resume: redo tiles that failed (permanently or with an "
              "internal error).")
@click.option("--max-failed", default="1%", show_default=True,
              help="Exit non-zero when more tiles than this failed (a count, or a percentage of --size).")
@click.option("--dry-run", is_flag=True, help="Print the tile count, requests, estimated bytes and, per modality, the "
              "collection it will read (or that it has no source there); do nothing.")
def build_cmd(size_text, locations, backend, catalog, allow_outside_catalog, stac_url, stac_preset, sas_token_url, modality_backends,
              gee_project, gee_key_file, gee_url, gee_high_volume, gee_concurrency, gee_timeout_s, no_preflight,
              label_max_km,
              allow_unlabelled, dedupe, s2_window, require_all, out, tile_px, seed, mode, oversample, splits_text,
              partition_size, scheduler, workers, resume, retry_failed, max_failed, dry_run) -> None:
    """Sample, export and pack an MMEarth v001 dataset of exactly --size tiles in one resumable command.

    Tiles dropped after sampling (no usable Sentinel-2 scene, a failure) are replaced by new locations from the
    same ecoregion in further export rounds; build_report.json lists target, sampled, dropped, replaced and final
    per biome and ecoregion.

    With --locations, the tiles are built at the given places (in their order, with their ids and dates) instead:
    nothing is sampled or replaced, and a place without a usable scene is reported per row."""
    from pipelines.build import BuildConfig, check_backend, format_plan, plan, run_build, size_label
    from pipelines.splits import parse_fractions

    if bool(size_text) == bool(locations):
        raise MMEarthError("build: pass --size N (sample by biome) or --locations FILE (build at given places)")
    cfg = BuildConfig(size=parse_size(size_text, "--size") if size_text else 0,
                      size_label=size_label(size_text) if size_text else "", out=str(out),
                      backend=backend, catalog=catalog, allow_outside_catalog=allow_outside_catalog,
                      stac_url=stac_url, stac_preset=stac_preset,
                      modality_backends=tuple(modality_backends), sas_token_url=sas_token_url,
                      gee_project=gee_project, gee_key_file=gee_key_file, gee_url=gee_url,
                      gee_high_volume=gee_high_volume, gee_concurrency=gee_concurrency,
                      gee_timeout_s=gee_timeout_s, tile_px=tile_px, seed=seed, mode=mode,
                      oversample=oversample, splits=parse_fractions(splits_text), partition_size=partition_size,
                      max_failed=max_failed, retry_failed=retry_failed,
                      locations=str(locations) if locations else None, label_max_km=label_max_km,
                      allow_unlabelled=allow_unlabelled, dedupe=dedupe, s2_window_days=s2_window,
                      require_all=require_all, preflight=not no_preflight)
    check_backend(cfg)
    if dry_run:
        if cfg.locations:
            from dataclasses import replace

            from pipelines.build import _read_given

            cfg = replace(cfg, size=_read_given(cfg).table.num_rows)
        click.echo(format_plan(plan(cfg)))
        return
    echo_missing(cfg.choice())
    report = run_build(cfg, resume=resume, scheduler=scheduler, workers=workers, progress=sys.stderr.isatty(),
                       echo=click.echo)
    if report["failed"] > report["max_failed"]:
        click.echo(f"error: {report['failed']} tiles failed, more than --max-failed {max_failed} "
                   f"({report['max_failed']:g} tiles); they were replaced, see mmearth-data status {out}/work/export",
                   err=True)
        for reason, n in sorted(report["failed_by_reason"].items(), key=lambda kv: -kv[1]):
            click.echo(f"  {n:>7} tiles {reason}", err=True)
        sys.exit(1)


@cli.command("pretrain")
@click.option("--data", type=click.Path(path_type=Path), required=True, help="A v001 dataset directory.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Run directory (checkpoint, losses).")
@click.option("--model", type=click.Choice(["atto", "femto", "pico", "nano", "tiny"]), default="atto", show_default=True)
@click.option("--input-size", type=click.Choice(["112", "56"]), default="112", show_default=True,
              help="Crop size: 112 with 16 px patches (128 px data) or 56 with 8 px patches (64 px data).")
@click.option("--epochs", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--accum", type=click.IntRange(min=1), default=1, show_default=True, help="Gradient accumulation steps.")
@click.option("--base-lr", type=float, default=1.5e-4, show_default=True, help="lr = base-lr x effective batch / 256.")
@click.option("--warmup-epochs", type=click.FloatRange(min=0), help="Linear warmup (default: 20 % of --epochs, the "
              "paper's 40 of 200).")
@click.option("--loss", "loss_aggr", type=click.Choice(["uncertainty", "unweighted"]), default="uncertainty",
              show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True, help="DataLoader workers.")
@click.option("--max-steps", type=click.IntRange(min=1), help="Stop after this many optimizer steps.")
@click.option("--targets", "targets_text", help="Comma-separated target modalities (default: all 12), e.g. "
              "sentinel2,dynamic_world,biome.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue from --out/checkpoint.pt.")
def pretrain_cmd(data, out, model, input_size, epochs, batch_size, accum, base_lr, warmup_epochs, loss_aggr, workers,
                 max_steps, targets_text, seed, resume) -> None:
    """Pretrain MP-MAE (dense ConvNeXt V2, all MMEarth pretext tasks) on CPU or GPU."""
    from .models.mpmae import ALL_TARGETS
    from .models.pretrain import PretrainConfig, pretrain

    targets = tuple(t.strip() for t in targets_text.split(",") if t.strip()) if targets_text else ALL_TARGETS
    unknown = [t for t in targets if t not in ALL_TARGETS]
    if unknown:
        raise MMEarthError(f"--targets: unknown modalities {unknown}; choose from {', '.join(ALL_TARGETS)}")

    cfg = PretrainConfig(data=str(data), out=str(out), model=model, input_size=int(input_size), epochs=epochs,
                         batch_size=batch_size, accum=accum, base_lr=base_lr, warmup_epochs=warmup_epochs,
                         loss_aggr=loss_aggr, workers=workers, seed=seed, max_steps=max_steps, targets=targets)
    result = pretrain(cfg, resume=resume, progress=sys.stderr.isatty(), log=click.echo)
    click.echo(f"{result['steps']} steps; checkpoint {result['checkpoint']}; losses in {out / 'losses.csv'}")


@cli.command("probe")
@click.option("--data", type=click.Path(path_type=Path), required=True, help="A v001 dataset directory.")
@click.option("--checkpoint", type=click.Path(path_type=Path), required=True,
              help="An mmearth-data pretrain checkpoint, or an official MMEarth-train one (its state dict layout).")
@click.option("--task", type=click.Choice(["biome", "eco_region", "dynamic_world_majority", "esa_majority"]),
              default="biome", show_default=True, help="The class target: a one-hot label, or a map's majority class.")
@click.option("--few-shot", "few_shot", help="Train shares for a label-efficiency curve, e.g. 1%,5%,100%.")
@click.option("--input-size", type=int, help="Crop for the encoder (default: the checkpoint's).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the random-init baseline, subsets, "
              "the hold-out and the classifier.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Also write the scores here.")
def probe_cmd(data, checkpoint, task, few_shot, input_size, seed, json_out) -> None:
    """Linear probe of a frozen encoder against the same probe on a randomly initialised one.

    Embeds every tile (global average pool of the last stage), fits a linear classifier on the train split and
    reports accuracy and macro-F1 on val/test (or a seeded spatial hold-out). The last line reads
    `probe <task>: pretrained <acc> random-init <acc> ratio <r>`."""
    from dataclasses import asdict

    import torch

    from .io_utils import atomic_write_json
    from .models.pretrain import load_encoder_and_size
    from .models.probe import parse_fractions, probe, random_encoder_like

    torch.manual_seed(seed)
    encoder, size = load_encoder_and_size(checkpoint)
    report = probe(str(data), encoder, random_encoder_like(encoder, seed), input_size or size, task,
                   parse_fractions(few_shot), seed, log=click.echo)
    for line in report.lines():
        click.echo(line)
    if json_out:
        atomic_write_json(json_out, asdict(report), indent=1)


@cli.command("embed")
@click.option("--data", type=click.Path(path_type=Path), required=True)
@click.option("--checkpoint", type=click.Path(path_type=Path), required=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output .npy (tiles x channels).")
def embed_cmd(data, checkpoint, out) -> None:
    """Pooled encoder embeddings of every tile of a dataset."""
    import io

    import numpy as np

    from .io_utils import atomic_write_bytes
    from .models.pretrain import embed

    emb = embed(str(data), str(checkpoint)).numpy()
    buf = io.BytesIO()
    np.save(buf, emb)
    atomic_write_bytes(out, buf.getvalue())
    click.echo(f"wrote {out} {emb.shape}")


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
    from .shards import shard

    m = _resumable(shard, dataset, out, tiles_per_shard=tiles_per_shard, split_modalities=split_modalities,
                   progress=sys.stderr.isatty(), log=click.echo)
    total = sum(f.bytes for f in m.files)
    click.echo(f"{out}: {len(m.shards)} shard(s) in {len(m.groups)} group(s) ({', '.join(m.groups)}), "
               f"{m.n_tiles} tiles, {total / 1e6:.1f} MB; manifest {out / 'manifest.json'}")


@cli.command("index")
@click.argument("dataset")
@click.option("--out", type=click.Path(path_type=Path),
              help="Where to write the index (default: <stem>_tiles.parquet beside a local dataset; required for "
                   "a URL).")
def index_cmd(dataset: str, out: Path | None) -> None:
    """Write <stem>_tiles.parquet, a GeoParquet index of a v001 dataset: one row per tile with its footprint,
    location, biome, ecoregion, split, Sentinel-2 date, id and level, source ids and shard.

    DATASET is a directory or .h5 file, or the URL of a .h5 (https://, s3://, gs://: only its side files and
    tile ids are read). Made from the side files alone, so it works for the official MMEarth files too; build,
    pack and shard write it themselves. Loads in geopandas, DuckDB and QGIS as is."""
    from .remote import is_remote
    from .reader import open_dataset
    from .tile_index import write_index

    if is_remote(dataset) and out is None:
        raise MMEarthError(f"index {dataset}: a URL needs --out (a local .parquet path)")
    files = open_dataset(dataset if is_remote(dataset) else Path(dataset))
    path = write_index(files, out)
    click.echo(f"{path}: {len(files.tile_info)} tile records indexed")


def _tile_filter(bbox, biomes, eco_regions, start, end, split):
    """download's tile options as a TileFilter, or None when none is given."""
    if not any((bbox, biomes, eco_regions, start, end, split)):
        return None
    from .tile_index import TileFilter

    box = None
    if bbox:
        try:
            box = tuple(float(v) for v in bbox.split(","))
        except ValueError:
            box = ()
        if len(box) != 4:
            raise MMEarthError(f"--bbox {bbox!r}: give WEST,SOUTH,EAST,NORTH in degrees, e.g. -20,-35,52,38")
    try:
        ecos = [int(v) for v in _comma_list(eco_regions)] if eco_regions else None
    except ValueError:
        raise MMEarthError(f"--eco-regions {eco_regions!r}: give ecoregion indices, e.g. 12,407") from None
    return TileFilter(bbox=box, biomes=_comma_list(biomes), eco_regions=ecos, start=start, end=end, split=split)


def _comma_list(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


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
@click.option("--connections", type=int, default=8, show_default=True, help="Parallel ranged requests.")
@click.option("--allow-redirects", is_flag=True, help="Follow redirects to other hosts.")
def download_cmd(manifest, variant, out, modalities, shards, bbox, biomes, eco_regions, start, end, split_name,
                 mirror, connections, allow_redirects) -> None:
    """Fetch a sharded release (--manifest) or an official MMEarth release (--variant), resumably.

    Parallel ranged GETs; an interrupted download resumes where it stopped; every file is checked against its
    SHA-256 before it gets its final name; a partial selection still opens with MMEarthDataset.
    """
    from .releases import download_release, download_variant

    if bool(manifest) == bool(variant):
        raise MMEarthError("download: pass exactly one of --manifest URL_OR_PATH or --variant NAME")
    progress = sys.stderr.isatty()
    if variant and (modalities or shards or _tile_filter(bbox, biomes, eco_regions, start, end, split_name)):
        raise MMEarthError("--modalities/--shards/--bbox/--biomes/--eco-regions/--start/--end/--split: the official "
                           "releases are single files; use them with --manifest")
    if manifest and mirror:
        raise MMEarthError("--mirror: only for --variant (a manifest names its own base_url)")
    if variant:
        report = _resumable(download_variant, variant, out, mirror=mirror, connections=connections,
                            allow_redirects=allow_redirects, progress=progress, log=click.echo)
    else:
        report = _resumable(download_release, manifest, out, modalities=_comma_list(modalities), shards=shards,
                            connections=connections, allow_redirects=allow_redirects, progress=progress,
                            log=click.echo, tiles=_tile_filter(bbox, biomes, eco_regions, start, end, split_name))
    click.echo(report.line())


def _resumable(fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, a shard, download or verify run: after one Ctrl-C (a download's transfers stop at
    once, their journals intact) say how to go on, and exit 130."""
    try:
        return fn(*args, **kwargs)
    except KeyboardInterrupt:
        click.echo("interrupted: run the same command to resume", err=True)
        sys.exit(130)


@cli.command("verify")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--fix", is_flag=True, help="Fetch missing or corrupt files again from where they came from.")
@click.option("--connections", type=int, default=8, show_default=True, help="Parallel ranged requests for --fix.")
def verify_cmd(out: Path, fix: bool, connections: int) -> None:
    """Check every file of a release or download against its manifest or recorded SHA-256.

    Exits 0 when everything is present and intact, 1 when not.
    """
    from .releases import verify

    result = _resumable(verify, out, fix=fix, connections=connections, progress=sys.stderr.isatty(), log=click.echo)
    click.echo(result.line())
    sys.exit(0 if result.ok else 1)


@cli.command("status")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def status_cmd(out: Path, as_json: bool) -> None:
    """Progress of an export directory and its failures grouped by modality and reason."""
    from pipelines.status import format_summary, summarize

    s = summarize(out)
    click.echo(json.dumps(s, indent=2) if as_json else format_summary(s))


@cli.group()
def ecoregions() -> None:
    """The RESOLVE Ecoregions 2017 polygons the sampler draws from."""


@ecoregions.command("download")
@click.option("--cache", type=click.Path(path_type=Path),
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
@click.argument("path", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Output PNG.")
@click.option("--dpi", type=click.IntRange(min=30), default=150, show_default=True)
def plot_locations_cmd(path: Path, out: Path, dpi: int) -> None:
    """World map of a locations file, points coloured by biome, counts in the legend."""
    from sampling.plot import plot_locations

    click.echo(f"wrote {plot_locations(path, out, dpi=dpi)}")


@plot.command("sample")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--index", type=click.IntRange(min=0), default=0, show_default=True, help="Row of the tile.")
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Output PNG.")
@click.option("--dpi", type=click.IntRange(min=30), default=120, show_default=True)
def plot_sample_cmd(path: Path, index: int, out: Path, dpi: int) -> None:
    """One tile across all pixel modalities (S2 RGB, S1, elevation/slope, canopy, DW and WorldCover with legends)
    and its image-level values as text."""
    from .plot_tile import plot_tile

    click.echo(f"wrote {plot_tile(path, index, out, dpi=dpi)}")


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2; bugs keep their traceback."""
    try:
        cli.main(standalone_mode=False)
    except MMEarthError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in BUILD_MODULES:
            raise
        click.echo(f"error: this command needs {e.name!r}, part of the build extras: "
                   "pip install 'mmearth-data[build]'", err=True)
        sys.exit(2)
    except click.exceptions.Abort as e:
        if isinstance(e.__context__, EOFError):   # click turns a stray EOFError into Abort: not a Ctrl-C
            click.echo(f"error: a file ended before its end ({e.__context__ or 'EOFError'})", err=True)
            sys.exit(1)
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except Exception as e:  # noqa: BLE001 - only a full disk is answered here; anything else keeps its traceback
        where = _disk_full(e)
        if where is None:
            raise
        click.echo(f"error: no space left on the device writing {where}: free space, then run the same command "
                   "again (with --resume where it has one) to continue; finished work is kept", err=True)
        sys.exit(1)


def _disk_full(exc: BaseException) -> str | None:
    """What a full disk (or quota) stopped writing, if that is what ``exc`` (or an exception it came from) is:
    ENOSPC/EDQUOT, or HDF5's and SQLite's texts for them. Else None."""
    import errno

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = str(exc)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return str(exc.filename or "the output")
        if "No space left on device" in text or "database or disk is full" in text or "Disk quota exceeded" in text:
            return getattr(exc, "filename", None) or "the output"
        exc = exc.__cause__ or exc.__context__
    return None


if __name__ == "__main__":
    main()
