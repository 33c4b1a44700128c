"""The ``mmearth-data`` group: commands listed in workflow order, options shown in sections, shared option types.
Nothing here imports the build extras (the consume side installs without them)."""
from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

import click

from .. import __version__
from ..errors import MMEarthError, exception_chain
from ..io_utils import nearest_existing
from ..sizes import parse_size

#: what the core install provides (pyproject's dependencies): a module missing beyond these belongs to an extra
CORE_MODULES = {"numpy", "h5py", "click", "tqdm", "yaml", "deflate", "urllib3", "mmearth_data", "sampling", "pipelines"}
TRAIN_MODULES = {"torch"}


def missing_extra(exc: ModuleNotFoundError) -> str | None:
    """The extra that provides the module ``exc`` misses (``train`` for torch, else ``build``: geopandas, rasterio,
    affine and the rest a core install lacks); None for a core module (a broken install keeps its traceback)."""
    top = (exc.name or "").split(".")[0]
    if not top or top in CORE_MODULES:
        return None
    return "train" if top in TRAIN_MODULES else "build"

# sample -> export -> pack -> build (all three) -> validate -> releases -> training -> the rest
WORKFLOW = ("sample", "export", "check", "status", "pack", "build", "validate", "index", "shard", "download",
            "verify", "pretrain", "probe", "embed", "demo-dataset", "plot", "ecoregions")


class WorkflowGroup(click.Group):
    """Lists its commands in the order a user meets them, not alphabetically."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = list(self.commands)
        return sorted(names, key=lambda n: (WORKFLOW.index(n) if n in WORKFLOW else len(WORKFLOW), n))


class SectionedCommand(click.Command):
    """``--help`` with the options under headings (``section`` set on each option by the shared decorators;
    the command's own options come first, under "Data")."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: dict[str, list] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                sections.setdefault(getattr(param, "section", "Data"), []).append(record)
        for name, records in sections.items():
            with formatter.section(name):
                formatter.write_dl(records)


def in_section(name: str, options: list):
    """A decorator applying ``options`` (click.option decorators) with their help under heading ``name``."""
    def apply(fn):
        for option in reversed(options):
            fn = option(fn)
            fn.__click_params__[-1].section = name
        return fn
    return apply


@click.group(cls=WorkflowGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mmearth-data")
def cli() -> None:
    """Build, fetch and load MMEarth-style multi-modal Earth-observation data (v001 HDF5 layout).

    Workflow: sample -> export -> pack (build runs all three, to exactly the size asked) -> validate;
    shard/download/verify for releases; pretrain/probe/embed for MP-MAE."""


class SizeType(click.ParamType):
    name = "count"

    def convert(self, value, param, ctx):
        try:
            return parse_size(value, f"--{param.name.replace('_', '-')}" if param else "size")
        except MMEarthError as e:
            self.fail(str(e), param, ctx)


class OutputFile(click.ParamType):
    """A file a command writes, checked when parsed (before any work): not a directory, in a directory that exists
    or can be made, and never replacing a file of another kind (``magic``: how ours begin), so a slip of ``--out``
    cannot overwrite a dataset or a build record with a result."""

    name = "path"

    def __init__(self, kind: str, magic: bytes, suffix: str | None = None):
        self.kind, self.magic, self.suffix = kind, magic, suffix

    def convert(self, value, param, ctx) -> Path:
        path = Path(value)
        if self.suffix is not None and path.suffix.lower() != self.suffix:   # a PNG named .jpg misleads viewers
            self.fail(f"{path}: writes a {self.kind} file; name it {path.stem}{self.suffix}", param, ctx)
        if path.is_dir():
            self.fail(f"{path} is a directory; give the {self.kind} file to write", param, ctx)
        parent = nearest_existing(path.parent)
        if not parent.is_dir():
            self.fail(f"{path}: {parent} is not a directory", param, ctx)
        if not os.access(parent, os.W_OK | os.X_OK):
            self.fail(f"{path}: cannot write in {parent}", param, ctx)
        if path.exists():
            try:
                with open(path, "rb") as fh:
                    head = fh.read(len(self.magic))
            except OSError as e:
                self.fail(f"{path}: cannot be read ({e.strerror})", param, ctx)
            if head != self.magic:
                self.fail(f"{path} exists and is not a {self.kind} file; it is left as it is (remove it or choose "
                          "another path)", param, ctx)
        return path


class OutputDir(click.ParamType):
    """A directory a command writes into (made when missing): refused at once when the path is a file."""

    name = "dir"

    def convert(self, value, param, ctx) -> Path:
        path = Path(value)
        if path.exists() and not path.is_dir():
            self.fail(f"{path} exists and is not a directory", param, ctx)
        parent = nearest_existing(path.parent)
        if not parent.is_dir():
            self.fail(f"{path}: {parent} is not a directory", param, ctx)
        return path


def resumable(fn, *args, resume_flag: bool = False, **kwargs):
    """``fn(*args, **kwargs)``, a long run (shard, download, verify; export, build, pretrain with ``resume_flag``:
    they continue with ``--resume``): after one Ctrl-C (a download's transfers stop at once, their journals
    intact) say how to go on, and exit 130.

    Python raises a Ctrl-C wherever the main thread is; one that lands in a finalizer or a weakref callback is
    swallowed there (and printed as "Exception ignored"): it is noted instead, and the run still ends with 130."""
    interrupted = False
    default_hook = sys.unraisablehook

    def note(unraisable) -> None:
        nonlocal interrupted
        if issubclass(unraisable.exc_type, KeyboardInterrupt):
            interrupted = True
        else:
            default_hook(unraisable)

    sys.unraisablehook = note
    default_sigint = signal.signal(signal.SIGINT, _interrupt_outside_h5py)
    try:
        result = fn(*args, **kwargs)
    except BaseException as e:   # a Ctrl-C inside a C callback comes out as the cause of a SystemError
        if not _interrupt_in(e):
            raise
        interrupted = True
    finally:
        signal.signal(signal.SIGINT, default_sigint)
        sys.unraisablehook = default_hook
    if interrupted:
        click.echo("interrupted: run the same command " + ("with --resume to continue" if resume_flag else
                                                            "to resume"), err=True)
        sys.exit(130)
    return result


def _interrupt_outside_h5py(signum, frame) -> None:
    """SIGINT as KeyboardInterrupt, but never inside h5py's Python callbacks (attribute iteration): raised there it
    leaves h5py's lock taken, the run ends in a SystemError or hangs at the next h5py call. There it is raised
    again 10 ms later, once the callback has returned."""
    while frame is not None:
        if str(frame.f_globals.get("__name__", "")).startswith("h5py"):
            threading.Timer(0.01, signal.raise_signal, (signal.SIGINT,)).start()
            return
        frame = frame.f_back
    raise KeyboardInterrupt


def _interrupt_in(exc: BaseException | None) -> bool:
    """Whether ``exc`` is a KeyboardInterrupt or came from one."""
    return any(isinstance(e, KeyboardInterrupt) for e in exception_chain(exc))


def comma_list(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def keep_earlier_name(group: click.Group, command: click.Command, earlier: str) -> None:
    """Also answer to a command's earlier name, unlisted, so scripts written against it keep working."""
    path = command.name if group is cli else f"{group.name} {command.name}"
    group.add_command(click.Command(earlier, callback=command.callback, params=command.params, hidden=True,
                                    help=f"The earlier name of `{path}`."))
