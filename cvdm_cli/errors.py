"""Errors raised by the cvdm library.

Every expected failure is a subclass of :class:`CvdmError`. Each carries the thing it is
about (``path``: a file, a model name, ...), what went wrong (``message``) and what the
user can do (``hint``). :func:`describe` turns any exception into that one line
(``<path>: <message> — <hint>``); the CLI prints it as ``error: ...`` with an exit code
from one table in ``cvdm_cli.cli.common``; the library itself never prints.

Only the standard library is imported here.
"""

from __future__ import annotations

from os import PathLike


class CvdmError(Exception):
    """Base class of all expected cvdm failures.

    Args:
        message: what went wrong, one sentence, no trailing full stop.
        path: the file, folder, model name or option the error is about (optional).
        hint: what the user should do about it (optional).
    """

    def __init__(
        self, message: str, *, path: str | PathLike[str] | None = None, hint: str | None = None
    ) -> None:
        self.message = message
        self.path = None if path is None else str(path)
        self.hint = hint
        super().__init__(self.one_line())

    def one_line(self) -> str:
        """``<path>: <message> — <hint>``, without the parts that are absent."""
        text = self.message
        if self.path:
            text = f"{self.path}: {text}"
        if self.hint:
            text = f"{text} — {self.hint}"
        return text


# --- configuration and usage ---------------------------------------------------------


class ConfigError(CvdmError):
    """An invalid option value, preset name or configuration."""


class UnknownPresetError(ConfigError):
    """``ModelConfig.preset(name)`` with a name that is not a preset."""


# --- weights and models --------------------------------------------------------------


class WeightsError(CvdmError):
    """A weights file that cannot be used."""


class UnsafeWeightsFormatError(WeightsError):
    """A weights path in a pickle-based format (.pt, .pth, .ckpt, .h5, .pkl, ...)."""


class InvalidWeightsError(WeightsError):
    """A .safetensors file that is corrupt or lacks cvdm metadata."""


class RegistryError(CvdmError):
    """weights.toml is malformed (names the model and the field)."""


class UnknownModelError(CvdmError):
    """A model name / file that the registry or the hub does not know."""


class ChecksumMismatchError(CvdmError):
    """A downloaded or cached weights file whose sha256 differs from the registry."""


class OfflineError(CvdmError):
    """The model is not cached and the hub cannot be reached (or offline mode is on)."""


# --- input and output files ----------------------------------------------------------


class InputError(CvdmError):
    """Base class for problems with an input file."""


class InputNotFoundError(InputError):
    """An input path that does not exist."""


class NotATiffError(InputError):
    """A file that is not a readable TIFF (empty, truncated, another format)."""


class UnsupportedLayoutError(InputError):
    """A TIFF whose layout cvdm cannot process (RGB, complex, no Y/X axis, ...)."""


class InvalidPixelsError(InputError):
    """NaN or Inf pixels in a plane (names the plane)."""


class OutputError(CvdmError):
    """Base class for problems writing an output file."""


class OutputExistsError(OutputError):
    """The output exists and overwriting was not asked for."""


class OutputNotWritableError(OutputError):
    """The output folder cannot be written (permissions, read-only file system)."""


class DiskFullError(OutputError):
    """The disk filled up while writing."""


# --- training data and devices -------------------------------------------------------


class DataError(CvdmError):
    """Training or evaluation data that cannot be used (unpaired, wrong shapes, ...)."""


class DeviceError(CvdmError):
    """A requested device that does not exist or is unusable."""


class DeviceOutOfMemoryError(DeviceError):
    """The device ran out of memory even at the smallest batch and tile."""


class MissingExtraError(CvdmError):
    """An optional dependency (extra) is needed for this feature and is not installed."""


# --- exceptions -> text --------------------------------------------------------------


def is_expected(exc: BaseException) -> bool:
    """True for failures the one line of :func:`describe` fully explains (a CvdmError, an
    OSError, running out of memory); anything else is a bug whose traceback is kept."""
    return isinstance(exc, (CvdmError, OSError, MemoryError))


def describe(exc: BaseException) -> str:
    """One line describing ``exc`` for a user, no traceback: ``<path>: <message> — <hint>``
    for a CvdmError, ``<file>: <strerror>`` for an OSError, and a line asking for a
    ``--debug`` rerun and a report for anything unexpected."""
    if isinstance(exc, CvdmError):
        return exc.one_line()
    if isinstance(exc, MemoryError):
        return "out of memory — use a smaller --tile or --batch-size"
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror}"
    return f"unexpected {type(exc).__name__}: {exc} — rerun with --debug and report it"
