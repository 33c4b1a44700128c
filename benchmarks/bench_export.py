"""Export tiles/s of the local backend against a loopback HTTP server with injected latency, vs the ideal bound.

    python benchmarks/bench_export.py [--tiles 192] [--tile-px 128] [--latency 0.05] [--workers 2] [--threads 8]

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
from pipelines.export import ExportConfig, make_backend, run_export  # noqa: E402
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiles", type=int, default=192)
    ap.add_argument("--tile-px", type=int, default=128)
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--workers", type=int, default=2, help="partitions exported at once")
    ap.add_argument("--threads", type=int, default=8, help="I/O threads per partition")
    ap.add_argument("--dir", type=Path, help="keep the catalog here (default: a temporary directory)")
    args = ap.parse_args()

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
            cfg = ExportConfig(locations=str(locations), out=str(work / f"out-{time.time_ns()}"), backend="local",
                               catalog=url, tile_px=args.tile_px, partition_size=-(-args.tiles // args.workers),
                               threads=args.threads)
            t0 = time.perf_counter()
            make_backend(cfg)  # loads the catalog once per process (untimed); the export's tasks reuse it
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


if __name__ == "__main__":
    main()
