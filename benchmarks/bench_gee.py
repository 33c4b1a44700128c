"""Earth Engine requests per tile and tiles/s against the local stand-in, vs a re-enactment of the original's pattern.

    python benchmarks/bench_gee.py [--tiles 100] [--latency 0.1] [--concurrency 40]

The stand-in (tests/servers/earthengine.py, the unmodified ``ee`` client on loopback, in its own process and
answering repeated requests from memory, so its rendering on our 2 cores is not measured) serves a synthetic static
catalog and sleeps ``--latency`` before every answer. Both sides fetch the modalities the Earth Engine executor
serves today (Dynamic World, ESA WorldCover, ETH canopy height + SD, ERA5-Land) for the same tiles, grids and
dates, with ``--concurrency`` tiles in flight:

- ours: ``GeeExecutor.run`` (one merged computePixels + one value:compute per tile);
- the original (MMEarth-data's ``ee`` downloader): per tile, 15 sequential blocking ``getInfo()`` calls (centroid,
  sizes, band names, dates, projection), then one download of the merged image.

The last line reads ``gee: <r> requests per tile, <t> tiles/s, <x>x the original pattern``. Goal: >= 6x.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from pipelines.backends.local import LocalBackend  # noqa: E402
from pipelines.backends.synthetic import write_synthetic_catalog  # noqa: E402
from pipelines.export import ExportConfig, run_export  # noqa: E402
from pipelines.staging import PartitionStore  # noqa: E402
from servers.earthengine import EarthEngineStandIn, Evaluator  # noqa: E402
from stac_factory import synthetic_locations, write_locations_parquet  # noqa: E402
from test_gee_backend import ASSETS, GEE_MODS  # noqa: E402


def contexts(export_dir: Path, locations: Path):
    """The tiles with a Sentinel-2 scene, with the grid and date the export fixed for them."""
    import datetime as dt

    from pipelines.grid import TileGrid
    from pipelines.recipes.base import TileContext

    out = []
    for part in sorted((export_dir / "staging").glob("part-*.sqlite")):
        with PartitionStore(part, readonly=True) as st:
            for tid, state in st.tile_states().items():
                info = st.tile_info(tid) or {}
                if state != "done" or "S2_DATE" not in info:
                    continue
                epsg = int(info["CRS"].split(":")[1])
                ctx = TileContext(tid, info["lon"], info["lat"], epsg, 0, 0, 128, 0, None, {})
                ctx.grid = TileGrid.centred(info["lon"], info["lat"], epsg, 128)
                ctx.s2_date = dt.datetime.fromisoformat(info["S2_DATE"]).replace(tzinfo=dt.timezone.utc)
                out.append(ctx)
    return out


def original_pattern(executor, ctx) -> None:
    """MMEarth-data's downloader: a merged image, 15 blocking getInfo() round trips, then one download."""
    import ee

    region = executor._region(ctx)
    dw = ee.ImageCollection("GOOGLE/DYNAMICWORLD/V1").filterBounds(region)
    probes = [dw.size(), ee.Number(1), dw.size().gt(0), ee.Number(ctx.grid.width), ee.Number(ctx.grid.height)]
    for k in range(15):
        probes[k % len(probes)].getInfo()
    executor.fetch(ctx, [m for m in GEE_MODS if m != "era5"])


def serve(catalog: str, urls, latency, count, stop) -> None:
    """The stand-in in its own process, answering repeated requests from memory: Earth Engine computes on its own
    machines, so what is compared is the request pattern at the injected latency, not our 2 cores rendering."""
    with EarthEngineStandIn(Evaluator(LocalBackend(catalog), ASSETS)) as server:
        server.memo = {}
        urls.put(server.url)
        while not stop.wait(0.05):
            server.latency_s = latency.value
            count.value = len(server.requests)
        count.value = len(server.requests)


class StandInProcess:
    def __init__(self, catalog: str):
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self.urls, self.stop = ctx.Queue(), ctx.Event()
        self.latency, self.count = ctx.Value("d", 0.0), ctx.Value("q", 0)
        self.proc = ctx.Process(target=serve, args=(catalog, self.urls, self.latency, self.count, self.stop),
                                daemon=True)

    def __enter__(self) -> "StandInProcess":
        self.proc.start()
        self.url = self.urls.get(timeout=120)
        return self

    def requests(self) -> int:
        time.sleep(0.15)   # the child publishes every 50 ms
        return int(self.count.value)

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.proc.join(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiles", type=int, default=100)
    ap.add_argument("--latency", type=float, default=0.1)
    ap.add_argument("--concurrency", type=int, default=40)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        locations = write_locations_parquet(tmp / "locations.parquet", args.tiles, seed=21)
        catalog = write_synthetic_catalog(tmp / "catalog", synthetic_locations(locations), seed=0, tile_px=128)
        export_dir = tmp / "export"
        run_export(ExportConfig(locations=str(locations), out=str(export_dir), backend="local", catalog=str(catalog)))
        tiles = contexts(export_dir, locations)
        with StandInProcess(str(catalog)) as server:
            from pipelines.backends.gee.executor import GeeExecutor
            from pipelines.recipes.base import load_source_map

            executor = GeeExecutor(load_source_map("gee").sources, "p", url=server.url,
                                   concurrency=args.concurrency)
            with ThreadPoolExecutor(8) as pool:   # warm the stand-in's memory: both sides get the same answers
                list(pool.map(lambda c: executor.run(c, list(GEE_MODS)), tiles))
                list(pool.map(lambda c: original_pattern(executor, c), tiles))
            server.latency.value = args.latency
            time.sleep(0.1)
            results = {}
            for label, job in (("ours", lambda c: executor.run(c, list(GEE_MODS))),
                               ("original", lambda c: original_pattern(executor, c))):
                before = server.requests()
                t0 = time.perf_counter()
                with ThreadPoolExecutor(args.concurrency) as pool:
                    outcomes = list(pool.map(job, tiles))
                elapsed = time.perf_counter() - t0
                requests = server.requests() - before
                results[label] = (len(tiles) / elapsed, requests / len(tiles), elapsed)
                if label == "ours":
                    failed = [r for o in outcomes for r in o.values() if isinstance(r, BaseException)]
                    assert not failed, failed[:1]
    ours, orig = results["ours"], results["original"]
    print(f"{len(tiles)} tiles with a Sentinel-2 scene, latency {args.latency * 1000:.0f} ms per request, "
          f"concurrency {args.concurrency}")
    print(f"original pattern (15 getInfo + 1 download): {orig[1]:.1f} requests per tile, {orig[0]:.2f} tiles/s "
          f"({orig[2]:.1f} s)")
    print(f"ours (merged computePixels + ERA5 value:compute): {ours[1]:.1f} requests per tile, {ours[0]:.2f} tiles/s "
          f"({ours[2]:.1f} s)")
    print(f"gee: {ours[1]:.1f} requests per tile, {ours[0]:.2f} tiles/s, {ours[0] / orig[0]:.1f}x the original pattern")


if __name__ == "__main__":
    main()
