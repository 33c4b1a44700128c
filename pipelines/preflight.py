"""Before a long run on real services, check the real thing: what our stand-ins prove, a service may still refuse.

``preflight`` runs before anything of an export or build on Earth Engine or a STAC API is written
(``--no-preflight`` skips it), and alone as ``mmearth-data check``:

1. Earth Engine: the ``ee`` client starts with the credentials and project (a project not registered, or
   credentials that cannot be refreshed, are one line with the remedy), and every asset the run reads is asked
   for once (``getAsset``): it exists, this project may read it, and its type (Image or ImageCollection) is the
   ``kind`` the source map says;
2. STAC: the API answers item search (the export's own probe, which also asks Planetary Computer's token endpoint
   for each collection it will sign and names those that need an account), and how it is asked is shown (CQL2
   ``filter`` or ``query``, sorted by id or not);
3. a handful of tiles exported into a temporary directory (the run's first locations, or, alone, a few fixed places
   where every modality exists) and judged: no request refused, each modality present where a scene was found,
   and its values plausible (reflectance, backscatter in dB, elevation and slope, canopy height, temperature); an
   Earth Search DEM read this way proves the anonymous read of its public S3 bucket.

Nothing it does is kept: the temporary directory is removed and the run starts from nothing.
"""
from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from mmearth_data.catalog import load_spec
from mmearth_data.errors import MMEarthError, one_line

SAMPLE_TILES = 3
PLACES = "preflight_places.csv"   # in catalogs/: a few places where every modality exists
# dataset -> (band indexes, lowest and highest plausible median of their valid pixels): what real data of
# anywhere on land holds; masked pixels served as 0, or values in other units, fall outside
PLAUSIBLE: dict[str, tuple[tuple[int, ...], float, float]] = {
    "sentinel2": ((1, 2, 3), 1.0, 12000.0),                  # B2, B3, B4: reflectance x 10000
    "sentinel1": ((0, 1, 2, 3, 4, 5, 6, 7), -40.0, 15.0),    # sigma0, dB
    "aster": ((0,), -450.0, 8900.0),                         # elevation, m
    "canopy_height_eth": ((0,), 0.0, 80.0),                  # m
    "era5": ((0, 4, 8), 180.0, 340.0),                       # 2 m temperatures, K
}
MIN_VALID = 0.5   # share of a tile's pixels with data, for the image modalities present
NEVER_FLAT = {"sentinel2": (1, 2, 3), "sentinel1": tuple(range(8))}   # sensor noise: never one value over a tile


@dataclass
class Report:
    """What the preflight found: ``lines`` to show, ``problems`` that stop the run."""

    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def raise_for_problems(self, skippable: bool = True) -> None:
        if self.problems:
            raise MMEarthError(f"preflight: {one_line(self.problems[0], 400)}"
                               + (f" (and {len(self.problems) - 1} more problem(s), listed above)"
                                  if len(self.problems) > 1 else "")
                               + ("; fix it, or skip the check with --no-preflight" if skippable else ""))


def preflight(cfg, sample: int = SAMPLE_TILES, locations: str | None = None, echo: Callable[[str], None] = print,
              expect_all: bool = False, skippable: bool = True, probed: bool = False) -> Report:
    """Check the services the export ``cfg`` (an ExportConfig) reads; ``locations``: where the sample tiles
    are (default: the run's own first ``sample`` locations); ``expect_all``: the places are the fixed ones, where
    every modality exists (then each must be present, on most of each tile). Raises :class:`MMEarthError` on the
    first problem, after echoing them all. ``probed``: the caller's input checks already probed every catalog and
    API (``SourceChoice.probe``), which is not done again."""
    from .sources import routes_for, stac_backend

    report = Report()
    t0 = time.monotonic()
    choice = cfg.source
    if not probed:
        choice.probe(cfg.policy())   # every catalog and API answers (one line naming the one that does not)
    routes = {k: b for k, (b, _) in routes_for(choice, cfg.timeout_s, cfg.policy()).items()
              if b.capabilities.compiles}   # the sources Earth Engine serves in this run
    if routes:
        executor = next(iter(routes.values()))
        report.lines.append(f"Earth Engine: the client started with project {cfg.source.gee.project}")
        lines, problems = executor.check_assets(list(routes))
        report.lines += lines
        report.problems += problems
    if choice.stac:
        api = stac_backend(choice.preset, cfg.source.stac_url, cfg.source.sas_token_url, cfg.timeout_s, cfg.policy())
        report.lines.append(f"STAC API {api.url}: item search, cloud cover filtered with "
                            f"{'the query extension' if api.filter_lang == 'query' else 'CQL2'}, "
                            f"{'sorted by id' if api.sortable else 'not sortable (pages unsorted)'}")
    if not report.problems:
        _sample(cfg, sample, locations, report, expect_all, choice.served_remotely())
    report.lines.append(f"preflight {'passed' if not report.problems else 'FAILED'} in "
                        f"{time.monotonic() - t0:.0f} s")
    for line in report.lines:
        echo(line)
    for p in report.problems:
        echo(f"  problem: {p}")
    report.raise_for_problems(skippable)
    return report


def places(directory: str | Path, tile_px: int = 128) -> Path:
    """The fixed places (catalogs/preflight_places.csv: farmland and forest where every modality exists, in
    MMEarth's years), labelled as given locations, as ``directory/places.parquet``."""
    from sampling import load_ecoregions
    from sampling.given import GivenOptions, read_given, write_given

    from mmearth_data.catalog import catalog_dir

    return write_given(read_given(catalog_dir() / PLACES, load_ecoregions(None), GivenOptions(tile_px=tile_px)),
                       Path(directory) / "places.parquet")


def _sample(cfg, sample: int, locations: str | None, report: Report, expect_all: bool, modalities: set[str]) -> None:
    """Export ``sample`` tiles into a temporary directory and judge them."""
    import pyarrow.parquet as pq

    from .export import run_export
    from .staging import PartitionStore

    with tempfile.TemporaryDirectory(prefix="mmearth-preflight-") as tmp:
        where = Path(tmp) / "locations.parquet"
        pq.write_table(pq.read_table(locations or cfg.locations).slice(0, sample), where)
        out = Path(tmp) / "export"
        run_export(replace(cfg, locations=str(where), out=str(out), limit=None, partition_size=max(1, sample),
                           preflight=False, synthetic_dir=None))
        rows, arrays = {}, {}
        for p in sorted((out / "staging").glob("part-*.sqlite")):
            with PartitionStore(p, readonly=True) as st:
                for r in st.ledger():
                    rows[(r["tile_id"], r["modality"])] = r
                for tile_id in st.tile_states():
                    arrays[tile_id] = st.arrays(tile_id)
        judge(rows, arrays, modalities, report, expect_all)


def judge(rows: dict, arrays: dict[str, dict[str, np.ndarray]], modalities: set[str], report: Report,
          expect_all: bool) -> None:
    """Problems of the sample tiles' ledger rows and arrays (see :data:`PLAUSIBLE`). ``modalities``: those a service
    serves; ``expect_all``: fixed places where each exists. A scene must be found there only when a service serves
    Sentinel-2 (a local catalog may not reach the fixed places)."""
    spec = load_spec()
    tiles = sorted({t for t, _ in rows})
    with_s2 = [t for t in tiles if rows.get((t, "sentinel2"), {}).get("status") == "ok"]
    report.lines.append(f"sample: {len(tiles)} tile(s) exported, {len(with_s2)} with a Sentinel-2 scene")
    if not with_s2:
        (report.problems if expect_all and "sentinel2" in modalities else report.lines).append(
            f"none of the {len(tiles)} sample tiles has a Sentinel-2 scene: the other modalities could not be checked")
    for (t, m), r in sorted(rows.items()):
        if r["status"] in ("failed", "retry"):
            report.problems.append(f"tile {t} {m}: {r['status']} ({r['error_class']}: "
                                   f"{one_line(r['message'] or '', 200)})")
    for m in sorted(modalities):
        present = [t for t in with_s2 if rows.get((t, m), {}).get("status") == "ok"]
        missing = [t for t in with_s2 if rows.get((t, m), {}).get("status") == "nodata"
                   and rows[(t, m)].get("error_class") != "no_source"]   # no source (an account): said at start
        report.lines.append(f"  {m:<18} present on {len(present)}/{len(with_s2)}")
        if expect_all and missing:
            report.problems.append(f"{m} is missing on sample tile(s) {', '.join(missing)} where it exists "
                                   f"({rows[(missing[0], m)]['message'] or 'no data'})")
        for t in present:
            for name, a in arrays[t].items():
                if name.startswith(m):
                    problem = implausible(spec.datasets[name], name, a, expect_all)
                    if problem:
                        report.problems.append(f"tile {t} {name}: {problem}")


def implausible(ds, name: str, a: np.ndarray, mostly_valid: bool = False) -> str | None:
    """Why a tile's array of dataset ``name`` does not look like real data (None: it does); ``mostly_valid``: at
    least :data:`MIN_VALID` of an image's pixels must hold data (the fixed places: inland, where every modality
    exists; elsewhere a coast or a partial scene is real)."""
    missing = ds.missing_mask(a)
    valid = ~missing if missing is not None else np.ones(a.shape, bool)
    if mostly_valid and name in ("sentinel2", "aster", "canopy_height_eth", "dynamic_world",
                                 "esa_worldcover") and a.ndim == 3:
        share = float(valid[0].mean())
        if share < MIN_VALID:
            return f"only {share:.0%} of its pixels hold data"
    for b in NEVER_FLAT.get(name, ()):   # a flat canopy, land cover or sea-level DEM is real; flat spectra are not
        if b < a.shape[0] and np.count_nonzero(valid[b]) > 1 and np.ptp(a[b][valid[b]]) == 0:
            return f"every pixel of band {b} is {a[b][valid[b]].flat[0]} (masked pixels served as a value?)"
    bands, lo, hi = PLAUSIBLE.get(name, ((), 0, 0))
    for b in bands:
        if b >= a.shape[0] or not np.any(valid[b]):
            continue
        median = float(np.median(np.asarray(a[b])[np.asarray(valid[b])]))
        if not lo <= median <= hi:
            return f"band {b} has a median of {median:g}, outside the plausible {lo:g}..{hi:g}"
    return None
