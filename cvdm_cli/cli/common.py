"""What every command shares: the stderr console, the error table, exit codes, debug mode.

Errors: the library raises :class:`cvdm_cli.errors.CvdmError` subclasses; commands let them
propagate to :func:`run_guarded` (or call :func:`report_error` for per-file failures in a
batch), which prints one red line ``error: <path>: <what> — <what to do>`` and maps the
class to an exit code from :data:`EXIT_CODES`. Tracebacks only with ``--debug`` or
``CVDM_DEBUG=1``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

from rich.console import Console
from rich.markup import escape

from cvdm_cli import errors

# Exit codes (documented in docs/cli.md).
EXIT_OK = 0  # everything done or skipped
EXIT_FAILED = 1  # some files failed (batch went on)
EXIT_USAGE = 2  # usage or configuration error before any work
EXIT_INTERRUPTED = 130  # Ctrl-C

# Error class -> exit code when the error stops a command before/without batch work.
# The first matching entry wins (subclasses before their bases).
EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (errors.ConfigError, EXIT_USAGE),
    (errors.RegistryError, EXIT_USAGE),
    (errors.UnknownModelError, EXIT_USAGE),
    (errors.UnsafeWeightsFormatError, EXIT_USAGE),
    (errors.MissingExtraError, EXIT_USAGE),
    (errors.DeviceError, EXIT_USAGE),
    (errors.OfflineError, EXIT_USAGE),
    (errors.ChecksumMismatchError, EXIT_USAGE),
    (errors.InputNotFoundError, EXIT_USAGE),
    (errors.OutputExistsError, EXIT_USAGE),
    # `cvdm enhance -o DIR` with DIR not creatable/writable, before any file is processed
    # (during a batch the same error fails one file instead)
    (errors.OutputNotWritableError, EXIT_USAGE),
    (errors.CvdmError, EXIT_FAILED),
)

stderr = Console(stderr=True, highlight=False, soft_wrap=True)
stdout = Console(highlight=False, soft_wrap=True)

T = TypeVar("T")


def debug_enabled() -> bool:
    """True when tracebacks should be shown (``--debug`` sets CVDM_DEBUG=1)."""
    return os.environ.get("CVDM_DEBUG", "") not in ("", "0", "false", "no")


def exit_code_for(exc: BaseException) -> int:
    """The exit code for an error that ends a command."""
    for cls, code in EXIT_CODES:
        if isinstance(exc, cls):
            return code
    return EXIT_FAILED


def error_line(exc: BaseException) -> str:
    """One line describing ``exc`` for a user (no traceback): :func:`errors.describe`."""
    return errors.describe(exc)


def report_error(exc: BaseException) -> None:
    """Print ``error: ...`` in red on stderr (and the traceback in debug mode)."""
    if debug_enabled():
        stderr.print_exception(show_locals=False)
    stderr.print(f"[bold red]error:[/] {escape(error_line(exc))}")


def run_guarded(func: Callable[[], T]) -> T:
    """Run a command body; map expected errors and Ctrl-C to a message and exit code."""
    try:
        return func()
    except KeyboardInterrupt:
        stderr.print("[yellow]interrupted[/]")
        raise SystemExit(EXIT_INTERRUPTED) from None
    except errors.CvdmError as exc:
        report_error(exc)
        raise SystemExit(exit_code_for(exc)) from None
    except (OSError, MemoryError) as exc:
        report_error(exc)
        raise SystemExit(EXIT_FAILED) from None


def set_debug(debug: bool) -> None:
    """``--debug``: export CVDM_DEBUG so that subprocesses and helpers see it too."""
    if debug:
        os.environ["CVDM_DEBUG"] = "1"
