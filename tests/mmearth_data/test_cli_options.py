"""One option name, one meaning, in every command of ``mmearth-data``."""
from __future__ import annotations

import click
import pytest

from mmearth_data.cli import cli

# What each parallelism option counts, as the first words of its help say.
MEANING = {
    "--workers": "Partitions",           # export, build, pack: partitions run at once
    "--threads": None,                   # threads inside one process (help says "threads")
    "--loader-workers": "DataLoader",    # pretrain: torch DataLoader worker processes
}


def _commands(group: click.Group, prefix: str = ""):
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        if cmd is None or cmd.hidden:
            continue
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}", cmd


def _visible(cmd: click.Command):
    for p in cmd.params:
        if isinstance(p, click.Option) and not p.hidden:
            yield p


def test_each_parallelism_option_means_one_thing_in_every_command():
    seen: dict[str, list[str]] = {}
    for path, cmd in _commands(cli):
        for opt in _visible(cmd):
            for name in opt.opts:
                if "worker" in name or "thread" in name:
                    assert name in MEANING, f"{path}: {name} is a new parallelism option; give it one meaning here"
                    want = MEANING[name]
                    text = opt.help or ""
                    if want is None:
                        assert "thread" in text.lower(), f"{path} {name}: {text!r}"
                    else:
                        assert text.startswith(want), f"{path} {name}: {text!r} (everywhere else: {want} ...)"
                    seen.setdefault(name, []).append(path)
    assert sorted(seen["--workers"]) == ["build", "export", "pack"]
    assert "sample" in seen["--threads"] and seen["--loader-workers"] == ["pretrain"]


@pytest.mark.parametrize("command, old, new, dest", [
    ("sample", "--workers", "--threads", "threads"),
    ("pretrain", "--workers", "--loader-workers", "loader_workers"),
])
def test_the_earlier_names_still_parse_but_are_not_shown(command, old, new, dest):
    cmd = cli.get_command(click.Context(cli), command)
    required = {"sample": ["--size", "10", "--out", "x.parquet"], "pretrain": ["--data", "d", "--out", "o"]}[command]
    assert cmd.make_context(command, [*required, old, "3"]).params[dest] == 3
    assert cmd.make_context(command, [*required, new, "3"]).params[dest] == 3
    assert cmd.make_context(command, required).params[dest] is not None   # the hidden alias keeps the default
    shown = cmd.get_help(click.Context(cmd))
    assert new in shown and f"{old} " not in shown.replace(new, "")


@pytest.mark.parametrize("earlier, now", [(["generate-sample"], ["demo-dataset"]),
                                          (["plot", "sample"], ["plot", "tile"])])
def test_an_earlier_command_name_runs_the_same_command_unlisted(earlier, now):
    def resolve(path):
        group = cli
        for name in path[:-1]:
            group = group.get_command(click.Context(group), name)
        return group, group.get_command(click.Context(group), path[-1])

    group, old = resolve(earlier)
    _, new = resolve(now)
    assert old.hidden and old.callback is new.callback and old.params == new.params
    assert earlier[-1] not in group.get_help(click.Context(group)).split("Commands:")[1]


def test_every_shown_option_says_what_it_does():
    missing = [f"{path} {opt.opts[0]}" for path, cmd in _commands(cli) for opt in _visible(cmd) if not opt.help]
    assert missing == []


def test_sample_resume_accepts_a_file_written_when_threads_were_called_workers(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import json
    from dataclasses import asdict

    import pyarrow.parquet as pq

    from mmearth_data.cli.make import _same_sample
    from sampling import SamplerConfig
    from sampling.output import META_KEY

    config = SamplerConfig(size=10, seed=4, threads=2)
    settings = {k: v for k, v in asdict(config).items() if k != "threads"}
    for name, stored in [("old", settings | {"workers": None}), ("new", settings | {"threads": None}),
                         ("other", settings | {"seed": 5, "threads": None})]:
        meta = {META_KEY: json.dumps({"settings": stored, "ecoregions": {"sha256": "e" * 64}})}
        pq.write_table(pa.table({"x": [1]}).replace_schema_metadata(meta), tmp_path / f"{name}.parquet")
    assert _same_sample(tmp_path / "old.parquet", config, "e" * 64)
    assert _same_sample(tmp_path / "new.parquet", config, "e" * 64)
    assert not _same_sample(tmp_path / "other.parquet", config, "e" * 64)
    assert not _same_sample(tmp_path / "new.parquet", config, "f" * 64)


@pytest.mark.parametrize("args, says", [
    (["sample", "--size", "0", "--out", "x.parquet"], "mmearth-data sample: Invalid value for '--size'"),
    (["validate", "--max-tiles", "0", "x"], "mmearth-data validate: Invalid value for '--max-tiles'"),
    (["plot", "tile"], "mmearth-data plot tile: Missing argument 'DATASET'"),
    (["nosuch"], "mmearth-data: No such command 'nosuch'"),
    (["build", "--size", "8", "--out", "b", "--retry-failed"], "mmearth-data build: --retry-failed: only with --resume"),
    (["export", "l.csv", "--out", "e", "--retry-failed"], "mmearth-data export: --retry-failed: only with --resume"),
    (["verify", "v", "--fix", "--connections", "0"], "mmearth-data verify: Invalid value for '--connections'"),
    (["probe", "--data", "d", "--checkpoint", "c", "--input-size", "0"], "mmearth-data probe: Invalid value for"),
])
def test_a_usage_error_is_one_line_naming_the_command(args, says):
    from cli_runner import run_cli

    proc = run_cli(*args)   # (refused before anything is written)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: {says}"), proc.stderr
    assert "--help" in lines[0]


@pytest.mark.parametrize("args, says", [
    (["sample", "--size", "40", "--out", "DIR"], "DIR is a directory; give the Parquet file to write"),
    (["sample", "--size", "40", "--out", "RECORD"], "RECORD exists and is not a Parquet file; it is left as it is"),
    (["index", "DATA", "--out", "RECORD/x.parquet"], "RECORD is not a directory"),
    (["embed", "--data", "DATA", "--checkpoint", "c.pt", "--out", "H5"], "H5 exists and is not a NumPy .npy file"),
    (["plot", "tile", "DATA", "-o", "DIR/t.png"], "DIR/t.png is a directory; give the PNG file to write"),
    (["plot", "tile", "DATA", "-o", "DIR/t.jpg"], "DIR/t.jpg: writes a PNG file; name it t.png"),
    (["probe", "--data", "DATA", "--checkpoint", "c.pt", "--report", "DIR"], "DIR is a directory"),
    (["demo-dataset", "--out", "RECORD"], "RECORD exists and is not a directory"),
    (["pretrain", "--data", "DATA", "--out", "RECORD"], "RECORD exists and is not a directory"),
])
def test_an_output_path_that_cannot_be_written_is_refused_before_any_work(sample_copy, tmp_path, args, says):
    """A directory where a file goes, a file where a directory goes, or an existing file of another kind (a build
    record, the dataset itself): one line before any work, and the file is left as it was (sample wrote over a
    build.yaml, embed over the dataset's .h5; the others ended in a traceback, probe's after the whole probe)."""
    from cli_runner import run_cli

    (tmp_path / "DIR" / "t.png").mkdir(parents=True)
    record = tmp_path / "build.yaml"
    record.write_text("mmearth_build: {}\n")
    h5 = next(sample_copy.glob("*.h5"))
    names = {"DIR": tmp_path / "DIR", "RECORD": record, "DATA": sample_copy, "H5": h5}
    before = {p: p.read_bytes() for p in (record, h5)}

    def fill(a: str) -> str:
        for k, v in names.items():
            a = a.replace(k, str(v)) if a.startswith(k) else a
        return a

    proc = run_cli(*map(fill, args))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and fill(says) in lines[0], proc.stderr[-2000:]
    assert {p: p.read_bytes() for p in before} == before


def test_sample_resume_refuses_a_sample_of_other_settings(tmp_path):
    """As build and export, --resume never replaces a result of other settings (it rewrote a size-10 sample as a
    size-11 one); without --resume the sample is replaced."""
    from cli_runner import run_cli

    out = tmp_path / "s.parquet"
    assert run_cli("sample", "--size", "10", "--out", out).returncode == 0
    first = out.read_bytes()
    proc = run_cli("sample", "--size", "11", "--out", out, "--resume")
    assert proc.returncode == 2 and "a sample of other settings or ecoregions; --resume keeps only" in proc.stderr
    assert out.read_bytes() == first
    assert "already complete" in run_cli("sample", "--size", "10", "--out", out, "--resume").stdout
    assert run_cli("sample", "--size", "11", "--out", out).returncode == 0 and out.read_bytes() != first
