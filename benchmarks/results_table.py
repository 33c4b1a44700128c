"""A benchmark's printed comparison, also written as a Markdown table: ``benchmarks/results/<name>.md``.

The docs' performance page includes every file there, so the numbers a reader sees are the last run's, with the
command and the machine that produced them (never a figure copied by hand).
"""
from __future__ import annotations

import datetime as dt
import os
import platform
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> str:
    """The machine in a few words: what a reader needs to compare numbers (a load average above the CPU count
    means other work shared them)."""
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return (f"{os.cpu_count()} CPUs ({platform.machine()}, {platform.system()}), "
            f"Python {platform.python_version()}{load}")


def command() -> str:
    """The command line that ran this benchmark, as a user would type it from the repository root."""
    return shlex.join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])


def _cell(value: object) -> str:
    text = f"{value:.2f}" if isinstance(value, float) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(title: str, header: Sequence[str], rows: Sequence[Sequence[object]], notes: Sequence[str] = ()) -> str:
    """The table as Markdown: a heading, how it was run, the rows, then notes (one paragraph each)."""
    if any(len(r) != len(header) for r in rows):
        raise ValueError(f"{title}: every row needs {len(header)} cells ({', '.join(header)})")
    lines = [f"### {title}", "",
             f"`{command()}` on {machine()}, {dt.datetime.now(dt.timezone.utc):%Y-%m-%d}.", "",
             "| " + " | ".join(map(_cell, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(_cell, r)) + " |" for r in rows]
    for note in notes:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def write_results(name: str, title: str, header: Sequence[str], rows: Sequence[Sequence[object]],
                  notes: Sequence[str] = ()) -> Path:
    """Write ``benchmarks/results/<name>.md`` atomically (a temporary file renamed over it); returns its path.

    Args:
        name: file stem, e.g. ``bench_loader``.
        title: the table's heading.
        header: column names.
        rows: one sequence of cells per row (floats are shown with two decimals).
        notes: sentences after the table (targets, what a number means).
    """
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.md"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(markdown(title, header, rows, notes), encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    print(f"wrote {path.relative_to(RESULTS.parent.parent)}")
    return path
