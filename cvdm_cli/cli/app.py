"""The ``cvdm`` command: a typer app that mounts one module per command group.

Importing this module must not import torch: ``cvdm --help`` stays fast. Command modules
import the heavy layers inside their command functions.
"""

from __future__ import annotations

import importlib

import typer

from cvdm_cli._version import __version__
from cvdm_cli.cli.common import set_debug

app = typer.Typer(
    name="cvdm",
    help="Super-resolution with per-pixel uncertainty for fluorescence microscopy (CVDM).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

# Each module defines ``register(app: typer.Typer) -> None``.
COMMAND_MODULES = (
    "cvdm_cli.cli.enhance_cmd",
    "cvdm_cli.cli.models_cmd",
    "cvdm_cli.cli.info_cmd",
    "cvdm_cli.cli.simulate_cmd",
    "cvdm_cli.cli.heldout_cmd",
    "cvdm_cli.cli.train_cmd",
    "cvdm_cli.cli.care_cmd",
    "cvdm_cli.cli.evaluate_cmd",
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"cvdm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version."
    ),
    debug: bool = typer.Option(
        False, "--debug", help="Show tracebacks (same as CVDM_DEBUG=1).", envvar=None
    ),
) -> None:
    """cvdm: sharper images and an uncertainty map from widefield TIFFs."""
    set_debug(debug)


def _register_all() -> None:
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a command group not built yet
            if exc.name != name:
                raise
            continue
        module.register(app)


_register_all()


def main() -> None:
    """Console-script entry point."""
    app()
