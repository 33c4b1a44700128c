"""The commands that make data: sample, export, check, status, pack and build (they need the build extras)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from pipelines import defaults

from ..errors import MMEarthError
from ..sizes import parse_size
from .base import OutputFile, SectionedCommand, SizeType, cli, resumable
from .options import check_retry_failed, echo_missing, given_options, run_options, source_options


@cli.command("sample")
@click.option("--size", type=SizeType(), required=True, help="Tiles wanted, e.g. 1k, 100k, 1.5M.")
@click.option("--mode", type=click.Choice(["area", "ecoregion-in-biome", "ecoregion"]), default="area",
              show_default=True, help="area: N/14 per biome split by ecoregion area (MMEarth); "
              "ecoregion-in-biome: N/14 per biome, equal per ecoregion; ecoregion: N/846 each.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the draw (one stream per ecoregion).")
@click.option("--out", type=OutputFile("Parquet", b"PAR1"), required=True, help="Output GeoParquet (EPSG:4326 points).")
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
@click.option("--threads", type=click.IntRange(min=1), default=min(4, os.cpu_count() or 1), show_default=True,
              help="Threads drawing and projecting points; never changes the output.")
@click.option("--workers", "threads", type=click.IntRange(min=1), hidden=True)   # the earlier name of --threads
@click.option("--report", "report_path", type=OutputFile("JSON", b"{"),
              help="Report JSON (default: <out>.report.json).")
@click.option("--resume", is_flag=True, help="Keep --out if a finished run with the same settings wrote it (the "
              "output is written atomically and is deterministic, so a killed run is simply run again).")
def sample_cmd(size, mode, seed, out, oversample, tile_size, ecoregions_path, max_coverage, spill, threads,
               report_path, resume) -> None:
    """Draw biome-stratified, equal-area, non-overlapping tile locations from RESOLVE Ecoregions 2017."""
    import math

    from tqdm import tqdm

    from sampling import SamplerConfig, format_report, load_ecoregions, sample, write_locations, write_report

    n = int(math.ceil(size * oversample))
    config = SamplerConfig(size=n, mode=mode, seed=seed, tile_size_m=tile_size, max_coverage=max_coverage,
                           spill=spill, threads=threads)
    config.check()
    eco = load_ecoregions(ecoregions_path)
    report_path = report_path or out.with_name(out.name + ".report.json")
    if resume and out.is_file():
        same = _same_sample(out, config, eco.sha256)
        if same and report_path.is_file():
            click.echo(f"{out}: already complete with these settings (nothing to do)")
            return
        if same is False:   # as build and export: --resume never replaces a result of other settings
            raise MMEarthError(f"{out}: a sample of other settings or ecoregions; --resume keeps only the same ones "
                               "(drop --resume to replace it)")
    with tqdm(total=n, desc="sample", unit="tile", disable=not sys.stderr.isatty()) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        result = sample(eco, config, progress=progress)
    rep = write_report(result, report_path)   # the report first: a finished locations file implies its report
    write_locations(result, out)
    click.echo(format_report(rep))
    click.echo(f"wrote {len(result.tiles)} locations to {out}; report: {report_path}")


def _same_sample(out: Path, config, eco_sha256: str) -> bool | None:
    """Whether ``out`` is a finished sampler output of exactly these settings and ecoregions (None: not a sampler
    output at all)."""
    from dataclasses import asdict

    import pyarrow.parquet as pq

    from sampling.output import META_KEY

    try:
        meta = json.loads((pq.read_schema(out).metadata or {}).get(META_KEY, b"{}"))
    except Exception:  # noqa: BLE001 - missing or unreadable: sample again
        return None
    if "settings" not in meta:
        return None
    same_settings = _without_run_settings(meta.get("settings")) == _without_run_settings(asdict(config))
    return same_settings and meta.get("ecoregions", {}).get("sha256") == eco_sha256


def _without_run_settings(settings: dict | None) -> dict | None:
    """A sample's settings less its thread count (``workers`` in files written before the rename), which never
    changes the sample."""
    return None if settings is None else {k: v for k, v in settings.items() if k not in ("threads", "workers")}


@cli.command("export", cls=SectionedCommand)
@click.argument("locations", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Export directory (staging + ledgers).")
@click.option("--tile-px", type=int, default=defaults.TILE_PX, show_default=True,
              help="Tile side in 10 m pixels: a multiple of 8 from 32 to 1024.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the per-tile Sentinel-2 choice.")
@click.option("--limit", type=SizeType(), help="Export only the first N locations.")
@click.option("--partition-size", type=click.IntRange(min=1), default=defaults.PARTITION_SIZE, show_default=True,
              help="Tiles per partition: the unit of Dask tasks, staging files, retry and resume.")
@click.option("--keep-sources", is_flag=True, help="--backend synthetic: keep the generated COGs and STAC items.")
@source_options
@given_options
@run_options
def export_cmd(locations, out, tile_px, seed, limit, partition_size, keep_sources, source, label_max_km,
               allow_unlabelled, dedupe, s2_window, scheduler, workers, threads, attempts, timeout_s, resume,
               retry_failed, no_preflight) -> None:
    """Fetch every modality for each location onto its tile grid; stage per partition with a resumable ledger.

    LOCATIONS is the sampler's GeoParquet, or your own places: CSV with lon, lat columns, GeoParquet or GeoJSON
    points (any CRS), with optional tile_id and date (or start and end) columns."""
    check_retry_failed(resume, retry_failed)
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
        cfg = ExportConfig(locations=str(checked), out=str(out), source=source, tile_px=tile_px, seed=seed,
                           partition_size=partition_size, limit=limit, threads=threads, attempts=attempts,
                           timeout_s=timeout_s, keep_sources=keep_sources, s2_window_days=s2_window,
                           preflight=not no_preflight, tune_process=True)
        source.check()
        echo_missing(source)
        if cfg.preflight and source.remote:
            from pipelines.preflight import preflight

            preflight(cfg, echo=click.echo)   # before anything is written
        elif Path(checked) != Path(locations):   # catalogs checked before the converted locations land in --out
            source.probe(cfg.policy(), crawl_policy=cfg.policy())
        if Path(checked) != Path(locations):   # converted from the user's file: kept beside the export
            check_out_dir(Path(out))
            Path(out).mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(Path(out) / "locations.parquet", Path(checked).read_bytes())
            checked = Path(out) / "locations.parquet"
    cfg = replace(cfg, locations=str(checked), preflight=False)
    summary = resumable(run_export, cfg, resume_flag=True, resume=resume, scheduler=scheduler, workers=workers,
                        progress=sys.stderr.isatty(), retry_failed=retry_failed, echo=click.echo)
    click.echo(format_summary(summary))
    if summary["by_status"].get("retry"):
        click.echo("some tiles hit transient faults until their tries ran out: run the same command with --resume")


@cli.command("check", cls=SectionedCommand)
@click.option("--locations", type=click.Path(path_type=Path),
              help="Export the sample tiles at these places (the sampler's GeoParquet, or CSV/GeoParquet/GeoJSON "
                   "points); default: a few fixed places where every modality exists, all of which must then be "
                   "present.")
@click.option("--tiles", type=click.IntRange(1, 50), default=3, show_default=True, help="Sample tiles to export.")
@click.option("--tile-px", type=int, default=defaults.TILE_PX, show_default=True,
              help="Tile side in 10 m pixels.")
@source_options
def check_cmd(locations, tiles, tile_px, source) -> None:
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

    check_tile_px(tile_px)
    with tempfile.TemporaryDirectory(prefix="mmearth-check-") as tmp:
        where = given_locations(locations, tmp, GivenOptions(tile_px=tile_px), echo=click.echo) if locations \
            else places(tmp, tile_px)
        cfg = ExportConfig(locations=str(where), out=str(Path(tmp) / "export"), source=source, tile_px=tile_px,
                           synthetic_dir=str(Path(tmp) / "synthetic"))
        source.check()
        if not source.remote:
            raise MMEarthError("check: it checks the services a run reads (Earth Engine, a STAC API); --backend "
                               f"{source.backend} reads none: name one with --backend or --modality-backend")
        preflight(cfg, sample=tiles, echo=click.echo, expect_all=locations is None, skippable=False)


@cli.command("status")
@click.argument("out", metavar="EXPORT_DIR", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def status_cmd(out: Path, as_json: bool) -> None:
    """Progress of an export directory and its failures grouped by modality and reason."""
    from pipelines.status import format_summary, summarize

    s = summarize(out)
    click.echo(json.dumps(s, indent=2) if as_json else format_summary(s))


@cli.command("pack")
@click.argument("export_dir", metavar="EXPORT_DIR", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output directory of the v001 dataset.")
@click.option("--name", required=True, help="File stem, e.g. data_100k_v001.")
@click.option("--tile-px", type=int, help="Pack the centre crop of this side (a multiple of 8, at most the staged "
              "size; default: the staged size); 64 on 128 px tiles is MMEarth64.")
@click.option("--splits", "splits_text", default="1,0,0", show_default=True,
              help="train,val,test fractions; 1,0,0 is v001's all-train layout. Spatial blocks, stratified by biome.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the splits (and --subset).")
@click.option("--level", type=click.IntRange(1, 9), default=1, show_default=True,
              help="Deflate level (libdeflate); level 1 + shuffle is smaller than v001's zlib 4.")
@click.option("--scheduler", default="auto", show_default=True,
              help="auto | threads | processes | local-cluster | tcp://HOST:PORT (workers must see EXPORT_DIR, --out).")
@click.option("--workers", type=click.IntRange(min=1), default=min(2, os.cpu_count() or 1), show_default=True,
              help="Partitions packed at once; never changes the output.")
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
    from pipelines.status import summarize

    left = summarize(export_dir)
    if left["pending"]:   # packing what is done is allowed (a first look); saying so is not optional
        click.echo(f"note: {left['pending']} of {left['tiles']} tiles of {export_dir} are not exported yet (packed "
                   f"{left['final']}): finish with `mmearth-data export ... --out {export_dir} --resume`, then pack "
                   "again with --overwrite")


@cli.command("build", cls=SectionedCommand)
@click.option("--size", "size_text", help="Tiles wanted, e.g. 1k, 100k, 1.2M (sampled by biome).")
@click.option("--locations", type=click.Path(path_type=Path),
              help="Build at these places instead of sampling: CSV with lon, lat columns, GeoParquet or GeoJSON "
                   "points (any CRS); optional tile_id, and date (or start and end) columns.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Build directory.")
@click.option("--tile-px", type=int, default=defaults.TILE_PX, show_default=True,
              help="128 or 64 (MMEarth64) when sampling; with --locations any multiple of 8 from 32 to 1024.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the sampling, the Sentinel-2 choice "
              "and the splits.")
@click.option("--mode", type=click.Choice(["area", "ecoregion-in-biome", "ecoregion"]), default="area",
              show_default=True, help="Sampling strata (see mmearth-data sample --help).")
@click.option("--oversample", type=click.FloatRange(min=1.0), default=1.0, show_default=True,
              help="Sample more locations to absorb tiles without a usable Sentinel-2 scene (~20 %).")
@click.option("--splits", "splits_text", default="1,0,0", show_default=True, help="train,val,test fractions.")
@click.option("--partition-size", type=click.IntRange(min=1),
              help="Tiles per export partition (default: about 16 partitions, at most 1000 tiles each); the bytes "
                   "of the dataset do not depend on it.")
@click.option("--max-failed", default="1%", show_default=True,
              help="Exit non-zero when more tiles than this failed (a count, or a percentage of --size).")
@click.option("--require-all", is_flag=True, help="--locations: a place without a usable Sentinel-2 scene is an "
              "error (default: reported per row, the others are built).")
@click.option("--dry-run", is_flag=True, help="Print the tile count, requests, estimated bytes and, per modality, the "
              "collection it will read (or that it has no source there); do nothing.")
@source_options
@given_options
@run_options
def build_cmd(size_text, locations, out, tile_px, seed, mode, oversample, splits_text, partition_size, max_failed,
              require_all, dry_run, source, label_max_km, allow_unlabelled, dedupe, s2_window, scheduler, workers,
              threads, attempts, timeout_s, resume, retry_failed, no_preflight) -> None:
    """Sample, export and pack an MMEarth v001 dataset of exactly --size tiles in one resumable command.

    Tiles dropped after sampling (no usable Sentinel-2 scene, a failure) are replaced by new locations from the
    same ecoregion in further export rounds; build_report.json lists target, sampled, dropped, replaced and final
    per biome and ecoregion.

    With --locations, the tiles are built at the given places (in their order, with their ids and dates) instead:
    nothing is sampled or replaced, and a place without a usable scene is reported per row."""
    check_retry_failed(resume, retry_failed)
    from pipelines.build import BuildConfig, check_backend, format_plan, plan, run_build, size_label
    from pipelines.splits import parse_fractions

    if bool(size_text) == bool(locations):
        raise MMEarthError("build: pass --size N (sample by biome) or --locations FILE (build at given places)")
    cfg = BuildConfig(size=parse_size(size_text, "--size") if size_text else 0,
                      size_label=size_label(size_text) if size_text else "", out=str(out), source=source,
                      tile_px=tile_px, seed=seed, mode=mode, oversample=oversample, splits=parse_fractions(splits_text),
                      partition_size=partition_size, max_failed=max_failed, retry_failed=retry_failed,
                      threads=threads, attempts=attempts, timeout_s=timeout_s,
                      locations=str(locations) if locations else None, label_max_km=label_max_km,
                      allow_unlabelled=allow_unlabelled, dedupe=dedupe, s2_window_days=s2_window,
                      require_all=require_all, preflight=not no_preflight, tune_process=True)
    check_backend(cfg)
    if dry_run:
        if cfg.locations:
            from dataclasses import replace

            from pipelines.build.run import _read_given

            cfg = replace(cfg, size=_read_given(cfg).table.num_rows)
        click.echo(format_plan(plan(cfg)))
        return
    echo_missing(cfg.source)
    report = resumable(run_build, cfg, resume_flag=True, resume=resume, scheduler=scheduler, workers=workers,
                       progress=sys.stderr.isatty(), echo=click.echo)
    if report["failed"] > report["max_failed"]:
        click.echo(f"error: {report['failed']} tiles failed, more than --max-failed {max_failed} "
                   f"({report['max_failed']:g} tiles); they were replaced, see mmearth-data status {out}/work/export",
                   err=True)
        for reason, n in sorted(report["failed_by_reason"].items(), key=lambda kv: -kv[1]):
            click.echo(f"  {n:>7} tiles {reason}", err=True)
        sys.exit(1)
