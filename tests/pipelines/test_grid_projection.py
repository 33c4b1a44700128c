"""Projections (pipelines.grid.project) run on the calling thread, or, once the process opted in, on one thread per
process: same numbers as pyproj's own, from any thread, and in a forked child too."""
from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from pyproj import Transformer

from pipelines.grid import project, project_on_one_thread


@pytest.fixture
def one_thread():
    project_on_one_thread()
    yield
    project_on_one_thread(False)


def _direct(src: int, dst: int, xs, ys):
    return Transformer.from_crs(src, dst, always_xy=True).transform(xs, ys)


def test_projections_from_many_threads_equal_pyproj_and_share_one_thread(one_thread):
    rng = np.random.default_rng(0)
    jobs = [(4326, 32600 + z, rng.uniform(-180, 180, 5), rng.uniform(0, 80, 5)) for z in range(1, 30)]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda j: project(*j), jobs))
    for (src, dst, xs, ys), (x, y) in zip(jobs, got):
        ex, ey = _direct(src, dst, xs, ys)
        assert np.array_equal(x, ex) and np.array_equal(y, ey)
    assert project(32633, 4326, 500000.0, 5000000.0) == _direct(32633, 4326, 500000.0, 5000000.0)
    assert sum(t.name.startswith("pyproj") for t in threading.enumerate()) == 1


def _child(out) -> None:
    out.put(project(4326, 32633, 15.0, 45.0))


def test_a_forked_child_projects_on_a_thread_of_its_own(one_thread):
    project(4326, 32633, 15.0, 45.0)   # the parent's thread exists: the child inherits the pool, not the thread
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=_child, args=(out,))
    child.start()
    try:
        assert out.get(timeout=60) == _direct(4326, 32633, 15.0, 45.0)
    finally:
        child.join(10)
        if child.is_alive():
            child.kill()


def test_projections_stay_on_the_calling_thread_unless_the_process_opted_in():
    """Library code starts no thread of its own: only an entry point's opt-in (session.tune_process) routes
    projections through the projection thread (counted in a fresh process: the opt-in is per process)."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import threading\n"
            "from pipelines.grid import project, project_on_one_thread\n"
            "def threads():\n"
            "    return sum(t.name.startswith('pyproj') for t in threading.enumerate())\n"
            "project(4326, 32633, 15.0, 45.0)\n"
            "before = threads()\n"
            "project_on_one_thread()\n"
            "project(4326, 32633, 15.0, 45.0)\n"
            "print(before, threads())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2]).stdout.split()
    assert out == ["0", "1"]
