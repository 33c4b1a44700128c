"""Samples/s of MMEarthDataset streamed from a URL against the same file read from local disk, in one run.

    python benchmarks/bench_stream.py [--tiles 1000] [--tile-px 128] [--latency-ms 20] [--loader-workers 8]

The file is served by the tests' loopback Range server (``tests/servers/http_range.py``) with ``--latency-ms``
added to every request (a cloud object store's first-byte latency). Rates through a DataLoader with
``--loader-workers`` workers: local disk; streamed, first epoch (cold cache: every chunk over the network);
streamed, second epoch (the chunk cache); and a shuffled first epoch (a DataLoader batch is fetched at once, so in
order the neighbouring rows of a batch merge into one request per modality; shuffled they cannot). Also: bytes
read over the network per sample against the chunks' stored size (1.0x means no byte was read twice or read for
nothing), and each worker's peak RSS.
Goals (issue 28): first epoch >= 50 % of the local rate, second epoch >= 95 %, bytes per sample <= 1.0x.
Against a stand-in this measures our overhead only; a real store adds its bandwidth limits.
"""
from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from mmearth_data import MMEarthDataset
from mmearth_data.sample_data import write_sample_dataset
from results_table import write_results


def cpu_per_sample(ds, n: int = 200) -> float:
    """CPU milliseconds this process spends per sample (one process, no workers)."""
    ds[0]
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    for i in range(1, n + 1):
        ds[i % len(ds)]
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return ((r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)) / n * 1000


SERVE = """
import sys
from pathlib import Path
sys.path.insert(0, "tests")
from servers.http_range import RangeServer
with RangeServer(Path(sys.argv[1])) as s:
    s.latency_s = float(sys.argv[2])
    print(s.url, flush=True)
    for line in sys.stdin:   # a name: answer "<requests> <body bytes sent>" for paths containing it
        hits = [r for r in s.requests if line.strip() in r["path"]]
        print(len(hits), sum(r.get("sent", 0) for r in hits), flush=True)
"""


class Served:
    """The Range server in its own process (its CPU is not the client's GIL's): ``url``, and ``counts(name)``
    (requests, body bytes sent) for the paths that contain ``name``."""

    def __init__(self, root: Path, latency_s: float):
        import subprocess

        self.proc = subprocess.Popen([sys.executable, "-c", SERVE, str(root), str(latency_s)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
        self.url = self.proc.stdout.readline().strip()

    def counts(self, name: str) -> tuple[int, int]:
        self.proc.stdin.write(name + "\n")
        self.proc.stdin.flush()
        requests, sent = self.proc.stdout.readline().split()
        return int(requests), int(sent)

    def __enter__(self) -> "Served":
        return self

    def __exit__(self, *exc) -> None:
        self.proc.kill()
        self.proc.wait()


def epoch(ds, workers: int, batch: int, shuffle: bool = False) -> tuple[float, int]:
    """(samples/s over one pass, the largest worker peak RSS in KB)."""
    loader = DataLoader(ds, batch_size=batch, num_workers=workers, shuffle=shuffle, persistent_workers=False,
                        generator=torch.Generator().manual_seed(0))
    t0, n = time.perf_counter(), 0
    for b in loader:
        n += len(b["id"])
    rate = n / (time.perf_counter() - t0)
    return rate, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss   # workers have exited: their peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiles", type=int, default=1000)
    ap.add_argument("--tile-px", type=int, default=128)
    ap.add_argument("--latency-ms", type=float, default=20.0)
    ap.add_argument("--loader-workers", type=int, default=8)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ds"
        write_sample_dataset(root, args.tiles, tile_px=args.tile_px, stem="bench_v001")
        h5 = root / "bench_v001.h5"
        local = MMEarthDataset(root, split="all")
        local_rate, local_rss = epoch(local, args.loader_workers, args.batch)
        local_shuffled, _ = epoch(local, args.loader_workers, args.batch, shuffle=True)
        with Served(root, args.latency_ms / 1000.0) as srv:
            url = f"{srv.url}/{h5.name}"
            remote = MMEarthDataset(url, split="all", cache_dir=Path(tmp) / "cache", cache_size=64 << 30)
            index_requests, _ = srv.counts(h5.name)
            cold, cold_rss = epoch(remote, args.loader_workers, args.batch)
            _, sent_cold = srv.counts(h5.name)
            warm, _ = epoch(remote, args.loader_workers, args.batch)
            stored = sum(int(t.sizes.sum()) for t in remote.files.source.tables(remote.files.h5(),
                                                                                [*remote.modalities, "metadata"])
                         .values() if t is not None)
            shuffled = MMEarthDataset(url, split="all", cache_dir=Path(tmp) / "cache2", cache_size=64 << 30)
            cold_shuffled, _ = epoch(shuffled, args.loader_workers, args.batch, shuffle=True)
        with Served(root, 0.0) as srv:
            ours = cpu_per_sample(MMEarthDataset(f"{srv.url}/{h5.name}", split="all")) - cpu_per_sample(local)
        n = len(local)
        print(f"{n} tiles of {args.tile_px} px, {h5.stat().st_size / 1e6:.0f} MB; DataLoader {args.loader_workers} workers, "
              f"batch {args.batch}; {args.latency_ms:g} ms per request; index: {index_requests} requests")
        print(f"local disk, in order    {local_rate:8.1f} samples/s   shuffled {local_shuffled:8.1f}")
        print(f"streamed, first epoch   {cold:8.1f} samples/s  ratio {cold / local_rate:.2f} (goal >= 0.50)")
        print(f"  shuffled (no ranges merge) {cold_shuffled:8.1f} samples/s  ratio "
              f"{cold_shuffled / local_shuffled:.2f}")
        print(f"streamed, second epoch  {warm:8.1f} samples/s  ratio {warm / local_rate:.2f} (goal >= 0.95)")
        print(f"network bytes per sample / stored chunk bytes: {sent_cold / max(stored, 1):.3f}x (limit 1.0x, "
              "the index walk included)")
        print(f"peak RSS of a worker: local {local_rss / 1024:.0f} MB, streamed {cold_rss / 1024:.0f} MB")
        per_request = ours / (len(remote.modalities) + 1)
        print(f"our CPU per streamed sample beyond a local read: {ours:.2f} ms ({per_request:.2f} ms per request), "
              f"against {args.latency_ms:g} ms of latency per request; the stand-in server (pure Python) runs on "
              "the same cores")
        write_results(
            "bench_stream", f"Streaming: {n} tiles of {args.tile_px} px, DataLoader {args.loader_workers} workers, batch "
            f"{args.batch}, {args.latency_ms:g} ms per request", ("read", "samples/s", "vs local", "goal"),
            [("local disk, in order", f"{local_rate:.1f}", "1.00", ""),
             ("local disk, shuffled", f"{local_shuffled:.1f}", "1.00", ""),
             ("streamed, first epoch, in order", f"{cold:.1f}", f"{cold / local_rate:.2f}", ">= 0.50"),
             ("streamed, first epoch, shuffled (no ranges merge)", f"{cold_shuffled:.1f}",
              f"{cold_shuffled / local_shuffled:.2f}", ""),
             ("streamed, second epoch (chunk cache)", f"{warm:.1f}", f"{warm / local_rate:.2f}", ">= 0.95")],
            [f"Network bytes per sample / stored chunk bytes: {sent_cold / max(stored, 1):.3f}x (limit 1.0x, the "
             f"index walk of {index_requests} requests included). Our CPU per streamed sample beyond a local read: "
             f"{ours:.2f} ms ({per_request:.2f} ms per request). Peak RSS of a worker: local {local_rss / 1024:.0f} "
             f"MB, streamed {cold_rss / 1024:.0f} MB."])


if __name__ == "__main__":
    main()
