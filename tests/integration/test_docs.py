"""The documentation cannot rot: the site builds with ``--strict`` (a broken link or anchor, a page missing from the
nav, an included file or a documented object that moved all fail), every ``python`` block in ``docs/`` runs or says
why it cannot (``<!-- not-run: reason -->`` on the line before it), every ``mmearth-data`` command line in the
docs and the README names real commands and options, and the benchmarks' result tables are what the docs include."""
from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

from conftest import REPO

DOCS = REPO / "docs"
BENCHMARKS = REPO / "benchmarks"
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)
NOT_RUN = re.compile(r"<!--\s*not-run:(?P<reason>.*?)-->", re.S)
SHELL = {"bash", "console", "sh", "shell", "text", ""}
INLINE_COMMAND = re.compile(r"`(mmearth-data [^`]+)`")


@dataclass
class Block:
    path: Path
    line: int
    lang: str
    body: str
    not_run: str | None   # the reason given, or None for a block that runs

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file, with the not-run reason written just before each."""
    text = path.read_text(encoding="utf-8")
    out = []
    for m in FENCE.finditer(text):
        head = text[:m.start()].rstrip()
        marker = NOT_RUN.fullmatch(head[head.rfind("<!--"):]) if head.endswith("-->") else None
        reason = marker.group("reason").strip() if marker else None
        out.append(Block(path, text.count("\n", 0, m.start()) + 1, m.group("info").strip().split(" ")[0],
                         textwrap.dedent(m.group("body")), reason))
    return out


def pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def test_the_site_builds_strictly(tmp_path):
    """``mkdocs build --strict``: what CI would publish, with every warning an error."""
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, "pip install -e '.[docs]' if mkdocs is missing\n" + (proc.stdout + proc.stderr)[-6000:]
    assert (tmp_path / "site" / "reference" / "cli" / "index.html").read_text().count("mmearth-data build") > 0
    performance = (tmp_path / "site" / "development" / "performance" / "index.html").read_text()
    tables = list((BENCHMARKS / "results").glob("*.md"))
    assert tables and performance.count("<table>") >= len(tables)   # every benchmark table is on the page


def test_not_run_blocks_give_a_reason():
    found = [b for p in pages() for b in blocks(p) if b.not_run is not None]
    assert found, "no block is marked not-run: the marker or its parser changed"
    assert all(b.not_run for b in found), [b.where for b in found if not b.not_run]


RUNNABLE = {p.relative_to(DOCS).as_posix(): p for p in pages()
            if any(b.lang == "python" and b.not_run is None for b in blocks(p))}


@pytest.mark.parametrize("page", sorted(RUNNABLE))
def test_python_blocks_run(page, tmp_path):
    """A page's runnable python blocks, in order, in one namespace, in a fresh interpreter inside an empty directory
    (each page makes the sample data it uses); a failure names the page and the block's line."""
    code = [(b.where, b.body) for b in blocks(RUNNABLE[page]) if b.lang == "python" and b.not_run is None]
    script = tmp_path / "page.py"
    script.write_text("ns = {'__name__': '__main__'}\n" + "".join(
        f"exec(compile({body!r}, {where!r}, 'exec'), ns)\n" for where, body in code))
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run([sys.executable, str(script)], cwd=work, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{page}:\n{proc.stderr[-4000:]}"


def _commands(text: str) -> list[str]:
    """``mmearth-data ...`` invocations in a shell block: continuation lines joined, prompts and chains split."""
    joined = re.sub(r"\\\n\s*", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip().removeprefix("$ ")
        out += [part.strip() for part in re.split(r"&&|;", line) if part.strip().startswith("mmearth-data ")]
    return out


def command_lines() -> list[tuple[str, str]]:
    """(where, command) for every mmearth-data command in the docs' shell blocks, their inline code and the README."""
    found = []
    for path in [*pages(), REPO / "README.md"]:
        for b in blocks(path):
            if b.lang in SHELL:
                found += [(b.where, c) for c in _commands(b.body)]
        for m in INLINE_COMMAND.finditer(path.read_text(encoding="utf-8")):
            found.append((f"{path.relative_to(REPO)} (inline)", m.group(1)))
    return found


def option_problems(command: str) -> list[str]:
    """What in ``command`` the CLI does not have: an unknown subcommand, or an option its command lacks."""
    from mmearth_data.cli import cli

    tokens = [t.strip("[]") for t in shlex.split(command, comments=True)[1:]]
    cmd, path = cli, ["mmearth-data"]
    problems = []
    while isinstance(cmd, click.Group) and tokens and not tokens[0].startswith("-"):
        name = tokens.pop(0)
        if re.fullmatch(r"[A-Z_]+|\.\.\.|<.*>", name):   # a placeholder: `mmearth-data COMMAND --help`
            return []
        if name not in cmd.commands:
            return [f"{' '.join(path)} has no command {name!r}"]
        cmd, path = cmd.commands[name], [*path, name]
    known = {"--help", "-h"} | {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
    for t in tokens:
        if t.startswith("-") and t not in ("-", "--") and not re.fullmatch(r"-\d.*", t):
            if t.split("=", 1)[0] not in known:
                problems.append(f"{' '.join(path)} has no option {t.split('=', 1)[0]}")
    return problems


def test_documented_commands_exist():
    lines = command_lines()
    assert len(lines) > 30, "too few mmearth-data commands found: the parser lost them"
    problems = [f"{where}: {c!r}: {p}" for where, c in lines for p in option_problems(c)]
    assert not problems, "\n".join(problems)


def test_option_check_finds_what_is_wrong():
    assert option_problems("mmearth-data build --size 1k --backend synthetic --out x") == []
    assert option_problems("mmearth-data build --sizes 1k") == ["mmearth-data build has no option --sizes"]
    assert option_problems("mmearth-data plot tile x --index 0 -o a.png") == []
    assert option_problems("mmearth-data plot nothing") == ["mmearth-data plot has no command 'nothing'"]
    assert option_problems("mmearth-data COMMAND --help") == []


def _results_table():
    spec = importlib.util.spec_from_file_location("results_table", BENCHMARKS / "results_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_tables_are_written_atomically(tmp_path, monkeypatch):
    rt = _results_table()
    monkeypatch.setattr(rt, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(sys, "argv", ["benchmarks/bench_x.py", "--tiles", "3"])
    path = rt.write_results("bench_x", "X", ("arm", "rate"), [("base", 1.0), ("ours | fast", 2.5)], ["a note"])
    text = path.read_text()
    assert text.startswith("### X\n") and "`python benchmarks/bench_x.py --tiles 3`" in text
    assert "| ours \\| fast | 2.50 |" in text and text.endswith("a note\n")
    assert [p.name for p in path.parent.iterdir()] == ["bench_x.md"]   # no temporary left behind
    with pytest.raises(ValueError, match="every row needs 2 cells"):
        rt.write_results("bench_x", "X", ("arm", "rate"), [("only one",)])
    assert path.read_text() == text   # a failed write leaves the last table as it was


def test_every_benchmark_has_its_table():
    """Each benchmark writes a table, each table belongs to a benchmark, and the performance page shows them all
    (``docs/hooks/benchmark_results.py`` puts every table where the page says)."""
    written = set()
    for bench in sorted(BENCHMARKS.glob("bench_*.py")):
        names = re.findall(r'write_results\(\s*"(\w+)"', bench.read_text())
        assert names, f"{bench.name} writes no results table"
        written |= set(names)
    on_disk = {p.stem for p in (BENCHMARKS / "results").glob("*.md")}
    assert written <= on_disk, f"run these benchmarks to write their tables: {sorted(written - on_disk)}"
    assert on_disk <= written, f"tables no benchmark writes: {sorted(on_disk - written)}"
    assert "<!-- benchmark-results -->" in (DOCS / "development" / "performance.md").read_text()


def test_installation_page_shows_the_readme_commands():
    """The two fresh-machine commands are written twice (README, installation page); CI runs the README's."""
    readme = [b.body.strip() for b in blocks(REPO / "README.md") if b.lang == "bash"]
    page = [b.body.strip() for b in blocks(DOCS / "installation.md") if b.lang == "bash"]
    assert page == readme and len(readme) == 2
