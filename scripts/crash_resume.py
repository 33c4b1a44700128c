"""Kill a small synthetic build with SIGKILL at seeded random instants, resume it after each kill, and check that
every output file ends byte-identical to an uninterrupted build and that no process of a killed run survives it.

    python scripts/crash_resume.py --kills 50            # the long run (reported when resolving issue 10)
    python scripts/crash_resume.py --kills 5 --size 60   # what the test suite runs

The instants are spread over every stage: one uninterrupted reference build is timed stage by stage (sample,
export with its synthetic source generation and cleanup, replacement rounds, pack), the kill instants are drawn
on that timeline (at least one per stage window, the rest uniform), and the build is killed and resumed in one
directory in order, so each resumed run is killed further along. A run that finishes before its kill counts as
such. Every killed run must leave no process of its process group alive 10 s later.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

STAGE_MARKS = ("[1/3] sample", "[2/3] export", "[3/3] pack")
STARTUP_S = 1.5   # a resumed run spends this long importing before it does anything


def build_command(out: Path, size: int, partition_size: int, extra: tuple[str, ...] = ()) -> list[str]:
    return [sys.executable, "-m", "mmearth_data.cli", "build", "--size", str(size), "--backend", "synthetic",
            "--out", str(out), "--partition-size", str(partition_size), "--splits", "0.8,0.1,0.1", "--resume",
            *extra]


def output_digests(out: Path) -> dict[str, str]:
    """SHA-256 of every result file: the dataset, its JSON files, build.yaml and the report, and the locations of
    every round (staging files are working state and hold timestamps)."""
    files = [p for p in out.iterdir() if p.is_file() and not p.name.startswith(".")]
    files += sorted((out / "work").glob("locations*.parquet")) if (out / "work").is_dir() else []
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(files)}


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_group_gone(pgid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not group_alive(pgid):
            return True
        time.sleep(0.1)
    return not group_alive(pgid)


def run_timed(cmd: list[str], env: dict) -> tuple[float, list[tuple[float, str]], str]:
    """Run to completion; returns the duration, (time, line) of the stage lines, and the output."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    marks, lines = [], []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(STAGE_MARKS):
            marks.append((time.monotonic() - t0, line.strip()))
    rc = proc.wait()
    if rc != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {rc}:\n{''.join(lines)[-3000:]}")
    return time.monotonic() - t0, marks, "".join(lines)


def kill_instants(rng: random.Random, kills: int, duration: float, marks: list[tuple[float, str]]) -> list[float]:
    """Sorted instants on the reference timeline: one in each stage window first, then uniform."""
    edges = [0.0] + [t for t, _ in marks] + [duration]
    windows = [(a, b) for a, b in zip(edges, edges[1:]) if b - a > 0.05]
    picks = [rng.uniform(*windows[i % len(windows)]) for i in range(min(kills, len(windows)))]
    picks += [rng.uniform(0.0, duration) for _ in range(kills - len(picks))]
    return sorted(picks)


@dataclass
class Result:
    kills: int = 0
    finished_before_kill: int = 0
    orphans: list[str] = field(default_factory=list)
    mismatched: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)
    reference_s: float = 0.0
    marks: list[tuple[float, str]] = field(default_factory=list)
    instants: list[float] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.orphans and not self.mismatched

    def summary(self) -> str:
        return (f"{self.kills} SIGKILLs at {', '.join(f'{t:.1f}' for t in self.instants)} s of a {self.reference_s:.1f} s "
                f"reference build ({self.finished_before_kill} runs finished before their kill); orphaned process "
                f"groups: {len(self.orphans)}; output files differing from the uninterrupted build: "
                f"{len(self.mismatched)}" + (f" {sorted(self.mismatched)}" if self.mismatched else "")
                + "".join(f"\n  {d}" for d in self.differences))


def crash_resume(work: Path, kills: int, size: int = 60, partition_size: int = 15, seed: int = 0,
                 log=print) -> Result:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("MMEARTH_DATA_CACHE", None)
    result = Result()
    out = work / "build"   # the same --out for both, so build.yaml (which records it) is comparable too
    result.reference_s, result.marks, _ = run_timed(build_command(out, size, partition_size), env)
    want = output_digests(out)
    out.rename(work / "reference")
    log(f"reference build: {result.reference_s:.1f} s; stages end at "
        + ", ".join(f"{t:.1f} s ({m.split(':')[0]})" for t, m in result.marks))
    result.instants = kill_instants(random.Random(seed), kills, result.reference_s, result.marks)
    previous = 0.0
    for k, instant in enumerate(result.instants):
        delay = max(0.05, instant - previous + (STARTUP_S if k else 0.0))
        previous = instant
        proc = subprocess.Popen(build_command(out, size, partition_size), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=env, start_new_session=True)
        try:
            proc.wait(timeout=delay)
            result.finished_before_kill += 1
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)   # the run itself, as a crash would: its workers must follow
            proc.wait()
        result.kills += 1
        if not wait_group_gone(proc.pid):
            result.orphans.append(f"kill {k + 1} at {instant:.1f} s")
            os.killpg(proc.pid, signal.SIGKILL)
        log(f"kill {k + 1}/{kills} at {instant:.1f} s (after {delay:.1f} s of the run)")
    _, _, text = run_timed(build_command(out, size, partition_size), env)
    got = output_digests(out)
    result.mismatched = {name: (want.get(name), got.get(name)) for name in sorted(set(want) | set(got))
                         if want.get(name) != got.get(name)}
    for name in result.mismatched:
        if name.endswith(".h5") and (work / "reference" / name).is_file() and (out / name).is_file():
            result.differences += [f"{name}: {d}" for d in h5_differences(work / "reference" / name, out / name)]
    log(result.summary())
    return result


def h5_differences(a: Path, b: Path, limit: int = 20) -> list[str]:
    """What differs between two HDF5 files whose bytes differ: attributes, dataset shapes and the rows whose
    values differ, or that only the internal layout does."""
    import h5py
    import numpy as np

    out: list[str] = []
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        def attrs(o) -> str:   # as text, so that NaN equals NaN
            return repr({k: np.asarray(v).tolist() for k, v in sorted(o.attrs.items())})

        if attrs(fa) != attrs(fb):
            out.append(f"file attributes: {attrs(fa)} != {attrs(fb)}")
        for name in sorted(set(fa) | set(fb)):
            if name not in fa or name not in fb:
                out.append(f"{name}: only in {'the reference' if name in fa else 'the resumed build'}")
                continue
            da, db = fa[name], fb[name]
            if attrs(da) != attrs(db):
                out.append(f"{name} attributes: {attrs(da)} != {attrs(db)}")
            if da.shape != db.shape or da.dtype != db.dtype:
                out.append(f"{name}: {da.dtype}{da.shape} != {db.dtype}{db.shape}")
                continue
            rows = [i for i in range(da.shape[0]) if not np.array_equal(da[i], db[i], equal_nan=da.dtype.kind == "f")]
            if rows:
                out.append(f"{name}: rows {rows[:10]} differ")
            elif da.id.get_storage_size() != db.id.get_storage_size():
                out.append(f"{name}: same values, stored size {da.id.get_storage_size()} != {db.id.get_storage_size()}")
    return (out or ["same attributes and values: only the internal layout differs"])[:limit]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=50)
    ap.add_argument("--size", type=int, default=60)
    ap.add_argument("--partition-size", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, help="Working directory (default: a new temporary one).")
    args = ap.parse_args()
    import tempfile

    work = args.work or Path(tempfile.mkdtemp(prefix="crash_resume_"))
    work.mkdir(parents=True, exist_ok=True)
    result = crash_resume(work, args.kills, args.size, args.partition_size, args.seed)
    sys.exit(0 if result.ok else 1)


if __name__ == "__main__":
    main()
