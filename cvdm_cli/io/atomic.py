"""Atomic file writes: a file appears under its final name complete, or not at all.

Every writer of cvdm (weights, checkpoints, simulated pairs and their params.json, reports,
the registry's sha256, the hub's verified-markers, output TIFFs) writes into a hidden
temporary sibling ``.<name>.partial-<pid>`` (:func:`partial_path`) and renames it onto the
final name only once it is complete. ``os.replace`` is atomic within one file system, and
the sibling is in the same folder, so a reader sees the old file or the new one, never a
torn one. The pid keeps concurrent writers of the same name (two processes) apart; the
leading dot hides leftovers from folder listings (a SIGKILL can leave one, never the final
name). :class:`cvdm_cli.io.tiff.OutputTiff` writes plane by plane into the same name.

Errors are not translated here: an ``OSError`` (read-only folder, disk full) reaches the
caller as raised, after the temporary file is removed, so each caller keeps its own
messages.

Only the standard library is imported here.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "PARTIAL_INFIX",
    "atomic_path",
    "fsync_path",
    "partial_path",
    "remove_quietly",
    "write_bytes_atomic",
    "write_text_atomic",
]

PARTIAL_INFIX = ".partial-"  # ".<name>.partial-<pid>": what a leftover looks like


def partial_path(final: str | os.PathLike[str]) -> Path:
    """The hidden temporary sibling of ``final`` for this process: ``.<name>.partial-<pid>``."""
    final = Path(final)
    return final.with_name(f".{final.name}{PARTIAL_INFIX}{os.getpid()}")


def fsync_path(path: str | os.PathLike[str]) -> None:
    """Flush a written file's data to the disk (so that a power cut after the rename cannot
    leave the final name pointing at unwritten blocks)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_quietly(path: str | os.PathLike[str]) -> None:
    """Delete ``path`` if it exists (a temporary file that may not have been created)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str], *, fsync: bool = True) -> Iterator[Path]:
    """Yield the temporary name to write ``final`` under; rename it onto ``final`` on success.

    The body writes the whole file to the yielded path (by any library that takes a path).
    A clean exit flushes it (``fsync``) and replaces ``final`` (an existing file is
    overwritten: callers that must not clobber check first). An exception, including
    KeyboardInterrupt, deletes the temporary file and propagates unchanged; ``final`` is
    then untouched.

    Example::

        with atomic_path(out / "model.safetensors") as tmp:
            save_file(tensors, str(tmp))
    """
    final = Path(final)
    tmp = partial_path(final)
    try:
        yield tmp
        if fsync:
            fsync_path(tmp)
        os.replace(tmp, final)
    except BaseException:
        remove_quietly(tmp)
        raise


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes, *, fsync: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`); returns ``path``."""
    path = Path(path)
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_bytes(data)
    return path


def write_text_atomic(
    path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8", fsync: bool = True
) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_path`); returns ``path``."""
    path = Path(path)
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_text(text, encoding=encoding)
    return path
