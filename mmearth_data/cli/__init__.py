"""The ``mmearth-data`` command. Build-side commands import their heavy dependencies inside the command.

Commands by module: :mod:`.make` (sample, export, check, status, pack, build), :mod:`.data` (validate, index,
demo-dataset), :mod:`.releases` (shard, download, verify), :mod:`.train` (pretrain, probe, embed),
:mod:`.extras` (ecoregions, plot); :mod:`.options` holds the options they share, :mod:`.base` the group."""
from __future__ import annotations

import sys

import click

from ..errors import MMEarthError, disk_full
from . import data, extras, make, releases, train  # noqa: F401 - each registers its commands
from .base import cli, missing_extra

__all__ = ["cli", "main"]


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2; bugs keep their traceback."""
    try:
        cli.main(prog_name="mmearth-data", standalone_mode=False)
    except MMEarthError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except ModuleNotFoundError as e:
        extra = missing_extra(e)
        if extra is None:
            raise
        first = "pip install torch==2.13.0 (the CPU build; see the README), then " if extra == "train" else ""
        click.echo(f"error: this command needs {e.name!r}, part of the {extra} extras: "
                   f"{first}pip install 'mmearth-data[{extra}]'", err=True)
        sys.exit(2)
    except click.exceptions.Abort as e:
        if isinstance(e.__context__, EOFError):   # click turns a stray EOFError into Abort: not a Ctrl-C
            click.echo(f"error: a file ended before its end ({e.__context__ or 'EOFError'})", err=True)
            sys.exit(1)
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.UsageError as e:   # click prints usage, a hint and the error on four lines: one, as other errors
        where = e.ctx.command_path if e.ctx is not None else "mmearth-data"
        click.echo(f"error: {where}: {e.format_message()} (see {where} --help)", err=True)
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except Exception as e:  # noqa: BLE001 - a full disk or a refused path is answered here; a bug keeps its traceback
        where = disk_full(e)
        if where is None:
            if isinstance(e, OSError) and e.filename and e.strerror:   # a path the system refused: not a bug
                click.echo(f"error: {e.filename}: {e.strerror}", err=True)
                sys.exit(1)
            raise
        click.echo(f"error: no space left on the device writing {where}: free space, then run the same command "
                   "again (with --resume where it has one) to continue; finished work is kept", err=True)
        sys.exit(1)
