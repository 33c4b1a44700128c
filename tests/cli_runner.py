"""``mmearth-data`` as a user runs it: a fresh interpreter, so the exit code and stderr are the real ones."""
from __future__ import annotations

import os
import subprocess
import sys


def run_cli(*args, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """``env``: variables set (over this process's environment) for that run."""
    return subprocess.run([sys.executable, "-m", "mmearth_data.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **env} if env else None)
