"""``pipelines.scheduling``: the dispatch loop export and pack share, the worker count a quota is divided by, and
the watchdog that ends a worker process with the run that started it."""
from __future__ import annotations

import operator
import os
import subprocess
import sys
import textwrap
import time

import pytest

from mmearth_data.errors import MMEarthError
from pipelines.scheduling import dispatch, worker_processes


@pytest.mark.parametrize("scheduler", ["threads", "sync", "processes"])
def test_dispatch_runs_every_task_and_reports_each_result(scheduler):
    seen = []
    args = [(i, 10 * i) for i in range(5)]
    results = dispatch(operator.add, args, scheduler, 2, on_result=seen.append)
    assert results == [11 * i for i in range(5)]                 # local schedulers keep the tasks' order
    assert sorted(seen) == results


def test_processes_run_tasks_outside_this_process():
    pids = dispatch(os.getpid, [()] * 4, "processes", 2)
    assert os.getpid() not in pids and 1 <= len(set(pids)) <= 2


def test_dispatch_on_an_unknown_scheduler_is_one_line():
    with pytest.raises(MMEarthError, match=r"--scheduler 'bogus': use auto, threads, processes, local-cluster or tcp://"):
        dispatch(operator.add, [(1, 2)], "bogus", 1)


def test_worker_processes_divides_by_the_processes_that_run_at_once():
    assert worker_processes("threads", 8, 100) == 1 and worker_processes("sync", 8, 100) == 1
    assert worker_processes("processes", 4, 100) == 4 and worker_processes("local-cluster", 8, 3) == 3
    assert worker_processes("processes", 4, 0) == 1


WATCHED = textwrap.dedent("""
    import os, sys, threading, time
    from pipelines.scheduling import watch_parent
    watch_parent(os.getpid())                      # its own process: nothing to watch
    assert not [t for t in threading.enumerate() if t.name == "mmearth-watch-parent"]
    watch_parent(int(sys.argv[1]), 0.05)
    watch_parent(int(sys.argv[1]), 0.05)           # started once per parent
    assert len([t for t in threading.enumerate() if t.name == "mmearth-watch-parent"]) == 1
    print("watching", flush=True)
    time.sleep(60)
""")


def test_a_worker_exits_when_the_run_that_started_it_is_gone():
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    worker = subprocess.Popen([sys.executable, "-c", WATCHED, str(parent.pid)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert worker.stdout.readline().strip() == "watching", worker.stderr.read()
        time.sleep(0.3)
        assert worker.poll() is None                   # alive while its parent is
        parent.kill()
        parent.wait()                                  # reaped: its pid is gone
        assert worker.wait(timeout=10) == 70
    finally:
        for p in (parent, worker):
            if p.poll() is None:
                p.kill()
                p.wait()
