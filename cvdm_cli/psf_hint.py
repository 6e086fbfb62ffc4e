"""The PSF hint: the input deconvolved with a known PSF, a second condition channel.

A model trained with ``--psf-hint`` (``ModelConfig.psf_hint``) reads two input-grid
channels: the normalised widefield plane and its Richardson-Lucy deconvolution with the
PSF the user knows (a measured bead image, or one computed from the optics). Without a
PSF the second channel is a copy of the first, the blind mode such a model is also trained
in, so it still works on data with no PSF. The hint gives the network what
Richardson-Lucy has and it otherwise lacks: the blur of this image, defocus included.

Shapes: planes (h, w) on the input grid, normalised (:mod:`cvdm_cli.normalize`); PSFs
(k, k), odd k, centred, summing to 1, sampled at the input pixel size.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from cvdm_cli import baselines

__all__ = ["compute_hint", "input_grid_psf", "read_psf", "simulation_hint_psfs"]


def input_grid_psf(psf_out: ArrayLike, scale: int) -> NDArray[np.float64]:
    """A PSF on the output grid (pixel / scale), already integrated over one input pixel
    (``baselines.psf_from_params``), resampled at the input pixel pitch.

    Every ``scale``-th sample through the centre sample is kept (the centre stays the
    centre), then the result is renormalised: (k, k) -> (k', k'), k' odd.
    """
    p = baselines.normalize_psf(psf_out)
    if scale <= 1:
        return p
    rows, cols = (_through_centre(n, scale) for n in p.shape)
    return baselines.normalize_psf(p[np.ix_(rows, cols)])


def _through_centre(n: int, step: int) -> NDArray[np.int64]:
    """Indices c - j*step .. c + j*step of an axis of length n, c = n // 2."""
    c = n // 2
    reach = c // step
    return c + step * np.arange(-reach, reach + 1)


def read_psf(path: str | Path) -> NDArray[np.float64]:
    """A PSF TIFF as a normalised 2D PSF (a 3D stack gives its brightest plane).

    Raises InputNotFoundError for a missing file and ConfigError (naming the file) for one
    that is not a usable PSF (no positive values, more than 3 dimensions).
    """
    from cvdm_cli.errors import ConfigError, InputNotFoundError
    from cvdm_cli.tiff import open_tiff

    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError("PSF file not found", path=path)
    with open_tiff(path) as tif:
        planes = [np.asarray(p, dtype=np.float64) for p in tif.iter_planes()]
    try:
        return baselines.normalize_psf(np.stack(planes) if len(planes) > 1 else planes[0])
    except ValueError as exc:
        raise ConfigError(
            f"not a usable PSF: {exc}", path=path, hint="give a bead image or a computed PSF"
        ) from None


def compute_hint(plane: ArrayLike, psf: ArrayLike, iterations: int) -> NDArray[np.float32]:
    """Richardson-Lucy deconvolution of one normalised input plane: (h, w) -> (h, w).

    Same units as ``plane`` (``baselines.richardson_lucy`` shifts to a minimum of 0 for
    the iterations and back), so blind mode (the plane itself) and hint agree in scale.
    """
    x = np.asarray(plane, dtype=np.float64)
    if x.ndim != 2:
        msg = f"a PSF hint needs a 2D plane, got shape {x.shape}"
        raise ValueError(msg)
    return baselines.richardson_lucy(x, psf, iterations).astype(np.float32)


def simulation_hint_psfs(
    params: Mapping[str, Mapping[str, Any]], scale: int
) -> Callable[[str, Path], list[NDArray[np.float64]]]:
    """Input-grid PSFs for the hints of simulated pairs, from their ``params.json`` entries.

    Two per pair: the simulation's own PSF (its optics and defocus: what a measured PSF of
    that exact focus would give) and the same optics in focus (what a microscopist computes
    from NA, wavelength and pixel size), so a hint model learns to use a PSF that is close
    but not exact. Without microsim: one, the in-focus Gaussian approximation
    (0.21 lambda / NA). Pairs without a params entry get none (blind).
    """
    from cvdm_cli.errors import MissingExtraError

    try:
        from cvdm_cli import simulation

        simulation.widefield_psf_2d  # noqa: B018 - the optional dependency is importable
    except (ImportError, MissingExtraError):  # pragma: no cover - microsim is an extra
        simulation = None

    def psfs(stem: str, lr_path: Path) -> list[NDArray[np.float64]]:
        entry = params.get(stem)
        if not entry or "lr_pixel_nm" not in entry or "na" not in entry:
            return []
        pixel = float(entry["lr_pixel_nm"])
        gaussian = [
            input_grid_psf(baselines.psf_from_params(entry, pixel / scale, scale=scale)[0], scale)
        ]
        if simulation is None or entry.get("simulator") == "gaussian2d-toy":
            return gaussian
        sim = simulation.SimulationParams.from_dict(dict(entry))
        try:  # integrated over the camera pixels, centred, odd-sized
            return [
                simulation.widefield_psf_2d(sim, pixel, defocus_nm=defocus)
                for defocus in (sim.defocus_nm, 0.0)
            ]
        except MissingExtraError:  # pragma: no cover - microsim present but unusable
            return gaussian

    return psfs
