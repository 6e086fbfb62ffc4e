"""Progress bars on stderr: the one place that builds them (rich).

Every command that takes more than a few seconds shows one of these kinds:

- ``count``: "<label> [bar] 3/10 0:00:12 eta 0:00:40" (files, planes, pairs, steps);
- ``percent``: the same with a percentage, for fractional progress (``cvdm evaluate``);
- ``download``: bytes, transfer speed and time left (model downloads).

``extra`` columns are appended (e.g. the training loss terms). Bars go to stderr only
(stdout carries data such as ``--json`` lines) and are off when stderr is not a terminal,
so logs and pipes get no control characters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from cvdm_cli.cli.common import stderr

BarKind = Literal["count", "percent", "download"]


def progress_bar(
    kind: BarKind = "count",
    *,
    disable: bool = False,
    transient: bool = True,
    extra: Sequence[ProgressColumn] = (),
) -> Progress:
    """A rich Progress of ``kind`` on stderr (use as a context manager, add tasks to it).

    disable: no bar (``--quiet``, dry runs); also off when stderr is not a terminal.
    transient: remove the bar when done (False keeps the last state on screen).
    """
    label = TextColumn("[bold]{task.description}")
    if kind == "download":
        columns: list[ProgressColumn] = [
            label, BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn()
        ]  # fmt: skip
    else:
        done = MofNCompleteColumn() if kind == "count" else TaskProgressColumn()
        columns = [
            label, BarColumn(), done, TimeElapsedColumn(), TextColumn("eta"),
            TimeRemainingColumn(),
        ]  # fmt: skip
    return Progress(
        *columns,
        *extra,
        console=stderr,
        transient=transient,
        redirect_stdout=False,  # stdout is for data (--json) only
        redirect_stderr=False,
        disable=disable or not stderr.is_terminal,
    )
