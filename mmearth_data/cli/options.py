"""Options shared by the build-side commands, each declared once: ``export``, ``build`` and ``check`` take the same
source options (turned into one :class:`pipelines.sources.SourceChoice`), and ``export`` and ``build`` the same run
options and options for given places. Defaults come from :mod:`pipelines.defaults` (plain constants)."""
from __future__ import annotations

import functools
import os

import click

from pipelines import defaults
from pipelines.backends import registry

from .base import in_section

SOURCE_KEYS = ("backend", "catalog", "allow_outside_catalog", "stac_url", "stac_preset", "sas_token_url",
               "modality_backends", "gee_project", "gee_key_file", "gee_url", "gee_high_volume", "gee_concurrency",
               "gee_timeout_s")

_source = in_section("Source", [
    click.option("--backend", type=click.Choice(registry.names()), default="synthetic", show_default=True,
                 help=registry.describe()),
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
])
_gee = in_section("Earth Engine", [
    click.option("--gee-project", help="The Cloud project registered for Earth Engine."),
    click.option("--gee-key-file", type=click.Path(dir_okay=False),
                 help="A service-account JSON key (default: application-default credentials, then "
                      "`earthengine authenticate`)."),
    click.option("--gee-url", help="Another API endpoint (e.g. a local stand-in)."),
    click.option("--gee-high-volume", is_flag=True, help="Use the high-volume endpoint."),
    click.option("--gee-concurrency", type=click.IntRange(min=1), default=defaults.GEE_CONCURRENCY,
                 show_default=True, help="Requests in flight for the whole run (the project's quota; divided among "
                                         "its processes; halved on quota errors, recovered additively)."),
    click.option("--gee-timeout", "gee_timeout_s", type=click.FloatRange(min=1), default=defaults.GEE_READ_TIMEOUT_S,
                 show_default=True, help="Seconds to wait for an answer before retrying (Earth Engine ends an "
                                         "interactive computation after 300 s)."),
])


def source_options(fn):
    """The source options, handed to the command as one ``source`` (a SourceChoice)."""
    @functools.wraps(fn)
    def command(**kwargs):
        from pipelines.settings import unflat
        from pipelines.sources import SourceChoice

        given = {k: kwargs.pop(k) for k in SOURCE_KEYS}
        given["modality_backends"] = tuple(given["modality_backends"])
        return fn(source=unflat(SourceChoice, given), **kwargs)

    return _source(_gee(command))


run_options = in_section("Execution", [
    click.option("--scheduler", default="auto", show_default=True,
                 help="auto (processes for synthetic, threads otherwise) | threads | processes | local-cluster "
                      "(dask.distributed) | tcp://HOST:PORT (an existing cluster whose workers see --out)."),
    click.option("--workers", type=click.IntRange(min=1), default=min(2, os.cpu_count() or 1), show_default=True,
                 help="Partitions run at once (threads, processes or cluster workers); never changes the output."),
    click.option("--threads", type=click.IntRange(min=1), help="I/O threads inside a partition (default: the "
                                                               "backend's)."),
    click.option("--attempts", type=click.IntRange(min=1), default=defaults.ATTEMPTS, show_default=True,
                 help="Tries per read on transient faults (HTTP 5xx/429, timeouts, truncated bodies)."),
    click.option("--timeout", "timeout_s", type=click.FloatRange(min=1), default=defaults.TIMEOUT_S,
                 show_default=True, help="HTTP timeout in seconds."),
    click.option("--resume", is_flag=True, help="Continue in --out: finished stages and committed tiles are kept."),
    click.option("--retry-failed", is_flag=True, help="With --resume: also redo tiles and modalities that failed "
                 "permanently or with an internal error (e.g. after fixing their cause)."),
    click.option("--no-preflight", is_flag=True,
                 help="Earth Engine or a STAC API: skip the check that runs first (credentials, assets, tokens, a "
                      "few tiles exported and judged; see `mmearth-data check`)."),
])

given_options = in_section("Given places (--locations)", [
    click.option("--label-max-km", type=click.FloatRange(min=0), default=defaults.LABEL_MAX_KM, show_default=True,
                 help="A point in no ecoregion polygon (coast, small island) takes the nearest within this "
                      "distance; the distance goes into tile_info."),
    click.option("--allow-unlabelled", is_flag=True,
                 help="Keep points with no ecoregion within --label-max-km (or only in Rock and Ice): all-zero "
                      "biome/eco_region rows, flagged in tile_info (default: refuse them, one line each)."),
    click.option("--dedupe", is_flag=True, help="Drop the second of two points closer than a tile side "
                                                "(default: keep both and flag them)."),
    click.option("--s2-window", "s2_window", type=click.IntRange(min=0), default=defaults.S2_WINDOW_DAYS,
                 show_default=True, help="Rows with a date: the Sentinel-2 scene nearest to it within +- this many "
                                         "days."),
])


def check_retry_failed(resume: bool, retry_failed: bool) -> None:
    """--retry-failed redoes the failed tiles of an earlier run: alone it would be silently ignored."""
    if retry_failed and not resume:
        raise click.UsageError("--retry-failed: only with --resume (it redoes the failed tiles of an earlier run)")


def echo_missing(choice) -> None:
    """Modalities the backend has no source for, once at start, with the remedy."""
    from pipelines.sources import format_plan

    plan = choice.plan()
    lines = [line for mod, line in zip(plan, format_plan(plan)) if "missing" in plan[mod]]
    if lines:
        click.echo(f"{len(lines)} modalities have no source on {choice.backend}:", err=True)
        for line in lines:
            click.echo(line, err=True)
