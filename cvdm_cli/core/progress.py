"""The progress callback every long library function takes (standard library only).

``callback(done, total)``: ``done`` units of work so far out of ``total`` (None when the
total is unknown, e.g. a download without a size). The unit is the caller's: denoiser
item-passes for the samplers, bytes for downloads, pairs for the simulator. The library
never prints; the CLI turns these calls into progress bars (cvdm_cli/cli/progress.py).
"""

from __future__ import annotations

from collections.abc import Callable

ProgressCallback = Callable[[int, "int | None"], None]

__all__ = ["ProgressCallback"]
