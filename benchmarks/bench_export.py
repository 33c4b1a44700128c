"""Export tiles/s of the local or stac backend against loopback servers with injected latency, vs the ideal bound.

    python benchmarks/bench_export.py [--tiles 192] [--tile-px 128] [--latency 0.05] [--workers 2] [--threads 8]
    python benchmarks/bench_export.py --backend stac [--tiles 64] [--latency 0.05]

``--backend stac``: a real stac-fastapi-pgstac API (PostgreSQL + PostGIS, as in the tests) behind a proxy that adds
``--latency`` to every API request, loaded with real Planetary Computer items whose COGs are served by the Range
server with the same latency; PC signing against a local token endpoint. Reported: tiles/s against the bound,
searches and reads per tile, and the same tile windows read with odc-stac's ``odc.stac.load`` (one call per
collection per tile, same items, same grid, 8 threads) as the peer baseline. Goal: >= 80 % of the bound and
>= 2x odc-stac per tile.

A synthetic static catalog (COGs + STAC items) is written once, served by the tests' Range server (in its own process), which sleeps
``--latency`` seconds before every response. The bound for the chosen concurrency is what a client would reach if
every request cost exactly the latency and nothing else did:

    bound tiles/s = concurrency / (requests per tile x latency),   concurrency = workers x threads

with requests per tile counted by the server during the timed export (catalog loading excluded). Target: ours
reaches >= 80 % of the bound.
"""
from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from pipelines.backends.synthetic import write_synthetic_catalog  # noqa: E402
from pipelines.export import ExportConfig, run_export  # noqa: E402
from results_table import write_results  # noqa: E402  (this folder is on sys.path when run as a script)
from servers.http_range import RangeServer  # noqa: E402
from stac_factory import synthetic_locations, write_locations_parquet  # noqa: E402


def serve(root: Path, latency: float, port_queue, stop_event, counter) -> None:
    """The Range server in its own process: its Python work must not compete with the client for the GIL."""
    with RangeServer(root) as server:
        server.latency_s = latency
        port_queue.put(server.url)
        while not stop_event.wait(0.05):
            counter.value = len(server.requests)
        counter.value = len(server.requests)


class ServerProcess:
    def __init__(self, root: Path, latency: float):
        ctx = multiprocessing.get_context("spawn")
        self.urls, self.stop, self.count = ctx.Queue(), ctx.Event(), ctx.Value("q", 0)
        self.proc = ctx.Process(target=serve, args=(root, latency, self.urls, self.stop, self.count), daemon=True)

    def __enter__(self) -> "ServerProcess":
        self.proc.start()
        self.url = self.urls.get(timeout=60)
        return self

    def requests(self) -> int:
        time.sleep(0.1)  # the child publishes its count every 50 ms
        return int(self.count.value)

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.proc.join(10)


def bench_stac(args) -> None:
    import os
    import numpy as np
    import pystac

    from pipelines.grid import TileGrid
    from pipelines.staging import PartitionStore
    from servers.pgstac import PgStacServer, unavailable
    from servers.proxy import FaultProxy
    from servers.sas import TokenServer
    from stac_world import AREA, EPSG, World, tile_ids_drawing, write_locations

    why = unavailable()
    if why:
        sys.exit(f"the stac benchmark needs a local pgstac: {why}")
    with tempfile.TemporaryDirectory(prefix="mmearth-bench-") as tmp:
        tmp = Path(tmp)
        import shutil

        os.chmod(tmp, 0o755)
        (tmp / "cogs").mkdir()
        pg = PgStacServer(tmp / "pg").start()
        try:
            with ServerProcess(tmp / "cogs", args.latency) as cogs, TokenServer(lifetime_s=3600) as tokens, \
                    FaultProxy(pg.url) as api:
                world = World(tmp / "cogs", cogs.url).build()
                pg.load(world.items)
                api.latency_s = args.latency
                ids = tile_ids_drawing(2020, None, args.tiles, prefix="b")
                side = int(np.ceil(np.sqrt(args.tiles)))
                step = (AREA[2] - AREA[0] - 0.02) / side
                rows = [(tid, AREA[0] + 0.01 + step * (k % side), AREA[1] + 0.01 + step * (k // side))
                        for k, tid in enumerate(ids)]
                locations = write_locations(tmp / "locations.parquet", rows)
                cfg = ExportConfig.of(locations=str(locations), out=str(tmp / "out"), backend="planetary-computer",
                                   stac_url=api.url, sas_token_url=tokens.url, tile_px=args.tile_px,
                                   partition_size=-(-args.tiles // args.workers), threads=args.threads)
                cfg.source.spec.open(cfg)                      # opens the client (untimed)
                before_reads, before_api = cogs.requests(), len(api.requests)
                t0, cpu0 = time.perf_counter(), time.process_time()
                summary = run_export(cfg, workers=args.workers)
                elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
                reads, searches = cogs.requests() - before_reads, len(api.requests) - before_api
                tiles = summary["final"]
                # the peer: odc.stac.load of the same items onto the same grids
                import odc.stac
                from odc.geo.geobox import GeoBox

                by_id = {it["id"]: it for it in world.items}
                signer = cfg.source.spec.open(cfg).signer
                jobs = []
                for part in sorted((tmp / "out" / "staging").glob("part-*.sqlite")):
                    with PartitionStore(part, readonly=True) as st:
                        for tid in st.tile_states():
                            info = st.tile_info(tid) or {}
                            if "S2_type" not in info:
                                continue
                            ids_by_mod = info["source_ids"]
                            jobs.append((info["lon"], info["lat"], ids_by_mod))
                t1 = time.perf_counter()
                for lon, lat, ids_by_mod in jobs:
                    grid = TileGrid.centred(lon, lat, EPSG, args.tile_px, align=(499980.0, 9200020.0))
                    gbox = GeoBox((grid.height, grid.width), grid.transform, f"EPSG:{EPSG}")
                    for mod, bands in (("sentinel2", [*("B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B11 B12".split()),
                                                      "SCL"]), ("sentinel1", ["vv", "vh"]), ("aster", ["data"]),
                                       ("esa_worldcover", ["map"])):
                        items = [pystac.Item.from_dict(by_id[i]) for i in ids_by_mod.get(mod, [])]
                        if items:
                            odc.stac.load(items, bands=bands, geobox=gbox, pool=args.threads, groupby="id",
                                          patch_url=lambda h, c=items[0].collection_id: signer.sign(c, h))
                odc_elapsed = time.perf_counter() - t1
        finally:
            pg.stop()
            shutil.rmtree(tmp / "pg", ignore_errors=True)
    concurrency = args.workers * args.threads
    per_tile = (reads + searches) / tiles
    ours, bound = tiles / elapsed, concurrency / (per_tile * args.latency)
    peer = len(jobs) / odc_elapsed
    print(f"stac: tiles {tiles} ({summary['by_status']}), latency {args.latency * 1000:.0f} ms on the API and the COGs, "
          f"concurrency {concurrency}")
    print(f"searches per tile {searches / tiles:.2f} (API requests, pages included), reads per tile {reads / tiles:.1f}, "
          f"SAS token requests {len(tokens.requests)}")
    print(f"bound (concurrency / (requests per tile x latency)): {bound:.2f} tiles/s")
    print(f"ours: {ours:.2f} tiles/s ({elapsed:.1f} s; client CPU {1000 * cpu / tiles:.0f} ms per tile, "
          f"{cpu / elapsed:.2f} cores of {os.cpu_count()})")
    print(f"ratio ours/bound: {ours / bound:.2f}  (target >= 0.80)")
    print(f"odc.stac.load, same items and grids ({len(jobs)} tiles): {peer:.2f} tiles/s ({odc_elapsed:.1f} s)")
    print(f"ratio ours/odc-stac: {ours / peer:.2f}  (target >= 2)")
    write_results("bench_export_stac", f"Export from a STAC API (pgstac): {tiles} tiles, {args.latency * 1000:.0f} ms "
                  f"latency, concurrency {concurrency}", ("arm", "tiles/s", "ratio", "goal"),
                  [("bound: concurrency / (requests per tile x latency)", f"{bound:.2f}", "", ""),
                   (f"odc-stac `odc.stac.load`, same items and grids ({len(jobs)} tiles)", f"{peer:.2f}", "", ""),
                   ("ours: `export --backend planetary-computer`", f"{ours:.2f}",
                    f"{ours / bound:.2f} of the bound, {ours / peer:.2f}x odc-stac", ">= 0.80 of the bound, >= 2x")],
                  [f"Per tile: {searches / tiles:.2f} searches (API requests, pages included), {reads / tiles:.1f} "
                   f"reads, client CPU {1000 * cpu / tiles:.0f} ms; {len(tokens.requests)} SAS token requests."])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", choices=["local", "stac"], default="local")
    ap.add_argument("--tiles", type=int, default=192)
    ap.add_argument("--tile-px", type=int, default=128)
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--workers", type=int, default=2, help="partitions exported at once")
    ap.add_argument("--threads", type=int, default=8, help="I/O threads per partition")
    ap.add_argument("--dir", type=Path, help="keep the catalog here (default: a temporary directory)")
    args = ap.parse_args()
    if args.backend == "stac":
        return bench_stac(args)

    with tempfile.TemporaryDirectory() as tmp:
        work = args.dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        locations = write_locations_parquet(work / "locations.parquet", args.tiles, seed=11)
        catalog = work / "catalog"
        if not (catalog / "catalog.json").exists():
            t0 = time.perf_counter()
            write_synthetic_catalog(catalog, synthetic_locations(locations), seed=0, tile_px=args.tile_px, workers=2)
            print(f"synthetic catalog for {args.tiles} locations: {time.perf_counter() - t0:.1f} s")
        with ServerProcess(catalog, args.latency) as server:
            url = f"{server.url}/catalog.json"
            cfg = ExportConfig.of(locations=str(locations), out=str(work / f"out-{time.time_ns()}"), backend="local",
                               catalog=url, tile_px=args.tile_px, partition_size=-(-args.tiles // args.workers),
                               threads=args.threads)
            t0 = time.perf_counter()
            cfg.source.spec.open(cfg)  # loads the catalog once per process (untimed); the export's tasks reuse it
            before = server.requests()
            print(f"catalog loaded over HTTP: {time.perf_counter() - t0:.1f} s, {before} requests")
            t0, cpu0 = time.perf_counter(), time.process_time()
            summary = run_export(cfg, workers=args.workers)
            elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            requests = server.requests() - before
    tiles = summary["final"]
    concurrency = args.workers * args.threads
    per_tile = requests / tiles
    ours = tiles / elapsed
    bound = concurrency / (per_tile * args.latency)
    print(f"tiles {tiles} ({summary['by_status']}), {requests} requests = {per_tile:.1f} per tile, "
          f"latency {args.latency * 1000:.0f} ms, concurrency {concurrency} ({args.workers} x {args.threads})")
    print(f"bound (concurrency / (requests per tile x latency)): {bound:.2f} tiles/s")
    print(f"ours: {ours:.2f} tiles/s ({elapsed:.1f} s; client CPU {1000 * cpu / tiles:.0f} ms per tile)")
    print(f"ratio ours/bound: {ours / bound:.2f}  (target >= 0.80)")
    write_results("bench_export", f"Export from a static STAC catalog over HTTP: {tiles} tiles, "
                  f"{args.latency * 1000:.0f} ms latency, concurrency {concurrency} ({args.workers} x {args.threads})",
                  ("arm", "tiles/s", "ratio", "goal"),
                  [("bound: concurrency / (requests per tile x latency)", f"{bound:.2f}", "", ""),
                   ("ours: `export --backend local`", f"{ours:.2f}", f"{ours / bound:.2f} of the bound", ">= 0.80")],
                  [f"{per_tile:.1f} requests per tile; client CPU {1000 * cpu / tiles:.0f} ms per tile."])


if __name__ == "__main__":
    main()
