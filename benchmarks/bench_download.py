"""Release download throughput vs a single sequential stream, and MMEarthDataset on a sharded release vs one file.

    python benchmarks/bench_download.py [--tiles 400] [--tiles-per-shard 50] [--latency 0.02] [--mbps 4]

1. A synthetic v001 dataset is sharded (``--split-modalities``) and served by the tests' loopback Range server with
   ``--latency`` seconds before every answer and each connection capped at ``--mbps`` MB/s (a far-away server).
   - baseline: what ``curl -o`` does, one request per file, one after the other over one connection;
   - ours: ``mmearth-data download --manifest`` with ``--connections 8`` (pieces of all files in parallel, then the
     sha256 of every file and the VDS).
   Both fetch the same bytes in the same process; the goal is >= 4x.
2. Samples/s of ``MMEarthDataset`` over the original single file and over the downloaded release (through its
   VDS file, whose rows are read from the shards' raw chunks): the goal is within 10 %.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from mmearth_data import MMEarthDataset  # noqa: E402
from mmearth_data.releases import download_release  # noqa: E402
from mmearth_data.sample_data import write_sample_dataset  # noqa: E402
from mmearth_data.shards import read_manifest, shard  # noqa: E402
from servers.http_range import RangeServer  # noqa: E402

from bench_loader import rate  # noqa: E402  (this folder is on sys.path when run as a script)
from results_table import write_results  # noqa: E402


def sequential(url_base: str, names: list[str], dest: Path) -> int:
    """One GET per file, in order, each written as it arrives: ``curl -o``."""
    import urllib.request

    n = 0
    for name in names:
        out = dest / name
        out.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(f"{url_base}/{name}") as resp, open(out, "wb") as fh:
            while block := resp.read(1 << 20):
                fh.write(block)
                n += len(block)
    return n


def samples_per_s(ds: MMEarthDataset, seconds: float) -> float:
    return rate(ds.__getitem__, range(len(ds)), seconds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiles", type=int, default=400)
    ap.add_argument("--tile-px", type=int, default=64)
    ap.add_argument("--tiles-per-shard", type=int, default=50)
    ap.add_argument("--latency", type=float, default=0.02, help="seconds before every answer")
    ap.add_argument("--mbps", type=float, default=4.0, help="per-connection cap, MB/s")
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=5.0, help="per loader measurement")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_sample_dataset(tmp / "single", args.tiles, tile_px=args.tile_px, seed=0, stem="data_bench_v001")
        manifest = shard(tmp / "single", tmp / "www" / "rel", tiles_per_shard=args.tiles_per_shard,
                         split_modalities=True)
        names = [f.name for f in read_manifest(tmp / "www" / "rel" / "manifest.json").files]
        total = sum(f.bytes for f in manifest.files)
        print(f"release: {len(manifest.shards)} shards + 3 side files, {total / 1e6:.1f} MB; server: "
              f"{args.latency * 1e3:.0f} ms per request, {args.mbps:g} MB/s per connection")
        with RangeServer(tmp / "www") as server:
            server.latency_s, server.bandwidth_bps = args.latency, args.mbps * 1e6
            t0 = time.perf_counter()
            got = sequential(f"{server.url}/rel", names, tmp / "curl")
            base_s = time.perf_counter() - t0
            assert got == total
            t0 = time.perf_counter()
            report = download_release(f"{server.url}/rel/manifest.json", tmp / "ours",
                                      connections=args.connections, log=lambda s: None)
            ours_s = time.perf_counter() - t0
        print(f"baseline, one sequential stream (curl -o) : {total / base_s / 1e6:7.2f} MB/s ({base_s:.1f} s)")
        print(f"ours, {args.connections} connections + sha256 + VDS      : {total / ours_s / 1e6:7.2f} MB/s "
              f"({ours_s:.1f} s); {report.line()}")

        single = MMEarthDataset(tmp / "single", split="all")
        vds = MMEarthDataset(tmp / "ours", split="all")
        a, b = samples_per_s(single, args.seconds), samples_per_s(vds, args.seconds)
        a2 = samples_per_s(single, args.seconds)   # again, so drift shows up in both
        a = (a + a2) / 2
        print(f"MMEarthDataset, single file             : {a:8.1f} samples/s")
        print(f"MMEarthDataset, sharded release via VDS : {b:8.1f} samples/s ({b / a:.2f}x the single file; "
              "goal >= 0.90x)")
        print(f"download: {base_s / ours_s:.1f}x the single sequential stream with {args.connections} connections "
              "(goal >= 4x)")
        write_results(
            "bench_download", f"Release download: {len(manifest.shards)} shards + side files, {total / 1e6:.1f} MB",
            ("arm", "rate", "ratio", "goal"),
            [("baseline: one sequential stream (`curl -o`)", f"{total / base_s / 1e6:.2f} MB/s", "1.00x", ""),
             (f"ours: `download`, {args.connections} connections + sha256 + VDS", f"{total / ours_s / 1e6:.2f} MB/s",
              f"{base_s / ours_s:.1f}x", ">= 4x"),
             ("`MMEarthDataset`, single file", f"{a:.1f} samples/s", "1.00x", ""),
             ("`MMEarthDataset`, sharded release via its VDS", f"{b:.1f} samples/s", f"{b / a:.2f}x", ">= 0.90x")],
            [f"Loopback server: {args.latency * 1e3:.0f} ms per request, {args.mbps:g} MB/s per connection."])


if __name__ == "__main__":
    main()
