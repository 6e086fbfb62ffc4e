"""Held-out test sets from generators that are never used for training or model selection.

Quality means transfer: a model scored on the simulator it was trained on has only shown
that it learned that simulator. This module builds test pairs (``lr/``, ``hr/``,
``params.json``, the layout ``cvdm evaluate`` reads) from other generators:

``g1``: a third-party pipeline end to end, microsim 0.0.12 (Lambert et al.): its own
``MatsLines`` sample (straight filaments) in a slab 320-480 nm thick, its ``Widefield``
modality (vectorial PSF, emission 525 nm) and its ``CameraCMOS`` detector at a given
exposure. Only the HR target is made here: the ground truth summed over the slab and
blurred with a Gaussian of half the widefield FWHM (0.51 lambda / NA), at 2x the LR
sampling and aligned with its pixel grid. Pair i of a set draws its slab thickness and
line density from (seed, i) and cycles through the given exposures, so one set spans dim
to bright. ``params.json`` marks the set ``"heldout": true``; training refuses such a
folder (:func:`cvdm_cli.io.pairs.refuse_heldout`).

``g3``: acquisition conditions our simulator does not draw, on top of G1: pair i is G1's
pair i of the same seed (the same sample, optics and exposure) with one condition, cycled
over the pairs (``G3_CONDITIONS``):

- ``haze``: thick-sample haze: a second MatsLines sample out of focus, its projection
  blurred by a geometric defocus disc of radius 1-2.5 µm, adding 0.5-3x the in-focus
  signal's mean (the LR only; the target is the in-focus slab);
- ``uneven``: uneven illumination: a Gaussian beam off the field's centre that falls to
  30-70 % at the farthest corner multiplies the emission (the LR and the HR target);
- ``camera``: sCMOS column offsets (5 ADU rms), a 1000 ADU offset and 0.05 % hot pixels
  (200-5000 ADU).

A defocused or aberrated input is not in G3 yet: microsim's ``Widefield`` images the truth
grid only, whose z range is the slab itself, so its focus cannot leave the slab; focusing
on a face of the slab was tried and is no defocus (MatsLines piles its lines up at one
face, so that plane is the sharpest; research/log.md).

microsim facts this relies on (0.0.12; checked when this was written, see
research/log.md): ``ObjectiveLens(numerical_aperture=)`` is silently ignored, so the NA is
passed as ``na=`` and checked; microsim's even-sized PSF shifts its image by +0.5 truth
pixel, so the HR target is shifted the same way; ``MatsLines`` fills z planes 1..NZ-2 only,
so the slab is 10 planes of a 12-plane grid; its on-disk caches are off
(``Settings(cache=False)``, ``MICROSIM_CACHE=0``); it re-seeds numpy's global random state.
Only this module and :mod:`cvdm_cli.training.simulation` import microsim.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cvdm_cli._version import __version__
from cvdm_cli.errors import ConfigError, MissingExtraError, OutputExistsError
from cvdm_cli.io.atomic import write_text_atomic
from cvdm_cli.io.pairs import PARAMS_FILE
from cvdm_cli.io.tiff import write_plane_tiff

GENERATORS = ("g1", "g3")
G1_NAME = "g1-microsim-matslines-widefield-cmos"
G3_NAME = "g3-g1-with-conditions"
G3_CONDITIONS = ("haze", "uneven", "camera")

EM_NM = 525.0  # emission (a narrow line: microsim's PSF wavelength is exactly this)
EX_NM = 488
OVERSAMPLE = 4  # truth pixels per LR pixel along each axis (one HR pixel = 2 truth pixels)
NZ = 12  # truth planes (even: microsim's PSF stack is then odd in z, centred)
Z_FILLED = 10  # MatsLines fills planes 1..NZ-2
POWER_W_CM2 = 10.0  # illumination irradiance
CONCENTRATION = 10.0  # fluorophores per drawn line voxel
CAMERA_OFFSET = 100  # ADU; the camera gives 1 ADU per electron
THICKNESS_NM = (320.0, 480.0)  # slab thickness, uniform
DENSITY = (0.08, 0.24)  # MatsLines density, uniform: int(4 * size * density) lines


@dataclass(frozen=True)
class G1Optics:
    """One optics setting of G1: NA, LR pixel at the sample (nm), exposures (ms) cycled
    over the pairs, LR side (pixels; HR is twice that)."""

    na: float = 1.4
    lr_pixel_nm: float = 62.5
    exposures_ms: tuple[float, ...] = (10.0, 50.0, 300.0)
    size: int = 128

    def __post_init__(self) -> None:
        if not 0.1 < self.na < 1.7:
            raise ConfigError(f"NA {self.na} is not a microscope objective's", path="--na")
        if not 20 <= self.lr_pixel_nm <= 400:
            raise ConfigError(f"pixel {self.lr_pixel_nm} nm is out of range", path="--pixel-nm")
        if not self.exposures_ms or min(self.exposures_ms) <= 0:
            raise ConfigError("exposures must be > 0 ms", path="--exposure-ms", hint="10,50,300")
        if self.size < 16 or self.size % 8:
            raise ConfigError(f"size {self.size} must be a multiple of 8, >= 16", path="--size")


def widefield_fwhm_nm(na: float, emission_nm: float = EM_NM) -> float:
    """FWHM of the in-focus widefield PSF, 0.51 lambda / NA (nm)."""
    return 0.51 * emission_nm / na


def _microsim() -> Any:
    """microsim's schema module, or MissingExtraError (the ``simulate`` extra)."""
    os.environ.setdefault("MICROSIM_CACHE", "0")  # its PSF disk cache (read at import)
    os.environ.setdefault("MICROSIM_BACKEND", "numpy")
    try:
        from microsim import schema
    except ImportError as exc:
        raise MissingExtraError(
            f"the g1 generator needs microsim, which is not importable ({exc})",
            hint='install the simulation extra: pip install "cvdm-cli[simulate]"',
        ) from None
    logging.getLogger("microsim").setLevel(logging.WARNING)  # it logs every step
    return schema


def _simulation(seed: int, optics: G1Optics, thickness_nm: float, density: float) -> Any:
    ms = _microsim()
    from microsim.schema.sample.fluorophore import Fluorophore

    w = np.arange(400.0, 651.0, 1.0)

    def line(center: float, width: float) -> Any:
        return ms.Spectrum(wavelength=w, intensity=np.exp(-0.5 * ((w - center) / width) ** 2))

    # a custom spectrum: a fluorophore name would be looked up on fpbase (the network)
    fluor = Fluorophore(
        name="green525",
        excitation_spectrum=line(EX_NM, 15.0),
        emission_spectrum=line(EM_NM, 2.0),
        extinction_coefficient=56_000,
        quantum_yield=0.6,
    )
    channel = ms.OpticalConfig(
        name="GFP488",
        lights=[ms.LightSource.laser(EX_NM)],
        power=POWER_W_CM2,
        # the camera's QE is applied only when the channel has an emission filter
        filters=[ms.Bandpass(bandcenter=EM_NM, bandwidth=50, placement="EM")],
    )
    full_well = 30_000
    camera = ms.CameraCMOS(
        qe=0.8, read_noise=1.5, dark_current=0.5, full_well=full_well, bit_depth=16,
        offset=CAMERA_OFFSET, gain=full_well / 65535,  # exactly 1 ADU per electron
    )  # fmt: skip
    dx_um = optics.lr_pixel_nm / OVERSAMPLE / 1000.0
    n = optics.size * OVERSAMPLE
    sim = ms.Simulation(
        truth_space=ms.ShapeScaleSpace(
            shape=(NZ, n, n), scale=(thickness_nm / Z_FILLED / 1000.0, dx_um, dx_um)
        ),
        output_space=ms.DownscaledSpace(downscale=(1, OVERSAMPLE, OVERSAMPLE)),
        sample=ms.Sample(
            labels=[
                ms.FluorophoreDistribution(
                    # max_r < 0: no ellipsoid mask (it would cut the thin slab's faces)
                    distribution=ms.MatsLines(density=density, length=10, azimuth=10, max_r=-1),
                    fluorophore=fluor,
                    concentration=CONCENTRATION,
                )
            ]
        ),
        modality=ms.Widefield(),
        objective_lens=ms.ObjectiveLens(na=optics.na),  # numerical_aperture= is ignored
        channels=[channel],
        detector=camera,
        settings=ms.Settings(
            cache=False, random_seed=int(seed), np_backend="numpy", float_dtype="float32"
        ),
    )
    if abs(sim.objective_lens.numerical_aperture - optics.na) > 1e-9:  # pragma: no cover
        raise RuntimeError(f"microsim did not take NA {optics.na}")
    return sim


def _blur_shift(img: np.ndarray, sigma_px: float, shift_px: float, pad: int = 32) -> np.ndarray:
    """Gaussian blur (sigma in pixels) and a sub-pixel shift of both axes, by FFT on a
    zero-padded image (the sample is dark outside its field)."""
    p = np.pad(img.astype(np.float64), pad)
    ky = np.fft.fftfreq(p.shape[0])[:, None]
    kx = np.fft.rfftfreq(p.shape[1])[None, :]
    transfer = np.exp(-2 * (np.pi * sigma_px) ** 2 * (kx**2 + ky**2))
    transfer = transfer * np.exp(-2j * np.pi * shift_px * (kx + ky))
    return np.fft.irfft2(np.fft.rfft2(p) * transfer, s=p.shape)[pad:-pad, pad:-pad]


def _bin(a: np.ndarray, k: int) -> np.ndarray:
    h, w = a.shape
    return a.reshape(h // k, k, w // k, k).sum(axis=(1, 3))


def _g1_draw(seed: int, index: int, optics: G1Optics) -> tuple[float, float, float, int]:
    """G1 pair ``index``'s (slab thickness nm, line density, exposure ms, microsim seed)."""
    rng = np.random.default_rng([int(seed), int(index), 0x61])
    thickness = float(rng.uniform(*THICKNESS_NM))
    density = float(rng.uniform(*DENSITY))
    exposure = float(optics.exposures_ms[index % len(optics.exposures_ms)])
    return thickness, density, exposure, int(rng.integers(0, 2**31 - 1))


def g1_pair(seed: int, index: int, optics: G1Optics) -> tuple[np.ndarray, np.ndarray, dict]:
    """Pair ``index`` of a G1 set of ``seed``: (LR (size, size) uint16 ADU, HR (2 size,
    2 size) float32 blurred fluorophores per HR pixel, parameters). Deterministic."""
    return _render(seed, index, optics, None)


def g3_pair(seed: int, index: int, optics: G1Optics) -> tuple[np.ndarray, np.ndarray, dict]:
    """Pair ``index`` of a G3 set: G1's pair ``index`` of ``seed`` under condition
    ``G3_CONDITIONS[index % 3]`` (module docstring); same shapes as :func:`g1_pair`."""
    return _render(seed, index, optics, G3_CONDITIONS[index % len(G3_CONDITIONS)])


def _disc_blur(img: np.ndarray, radius_px: float) -> np.ndarray:
    """Convolution with a uniform disc (geometric defocus), circular, by FFT; keeps the sum."""
    h, w = img.shape
    yy = np.minimum(np.arange(h), h - np.arange(h))[:, None]
    xx = np.minimum(np.arange(w), w - np.arange(w))[None, :]
    disc = (yy**2 + xx**2 <= radius_px**2).astype(np.float64)
    disc /= disc.sum()
    return np.fft.irfft2(np.fft.rfft2(img) * np.fft.rfft2(disc), s=img.shape)


def _beam(n: int, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, float]]:
    """(n, n) Gaussian illumination, 1 at its centre (off the field's centre by up to a
    quarter field), falling to 30-70 % at the farthest field corner."""
    cy, cx = (0.5 + rng.uniform(-0.25, 0.25, 2)) * n
    corner = float(rng.uniform(0.3, 0.7))
    far2 = max((y - cy) ** 2 + (x - cx) ** 2 for y in (0, n) for x in (0, n))
    sigma2 = far2 / (-2.0 * np.log(corner))
    yy, xx = np.mgrid[0:n, 0:n] + 0.5
    profile = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2.0 * sigma2))
    return profile, {"beam_corner": corner, "beam_center_y": cy / n, "beam_center_x": cx / n}


def _render(
    seed: int, index: int, optics: G1Optics, condition: str | None
) -> tuple[np.ndarray, np.ndarray, dict]:
    """G1 pair ``index`` of ``seed``, under ``condition`` (None for G1 itself)."""
    from microsim.psf import cached_psf

    thickness, density, exposure, sim_seed = _g1_draw(seed, index, optics)
    cond_rng = np.random.default_rng([int(seed), int(index), 0x63])
    extra: dict[str, Any] = {}
    sim = _simulation(sim_seed, optics, thickness, density)
    truth = sim.ground_truth()  # (f, z, y, x) fluorophores per truth voxel
    optical = sim.optical_image()  # (c, z, y, x) photons/s
    truth_nm = optics.lr_pixel_nm / OVERSAMPLE
    n_truth = optics.size * OVERSAMPLE
    mid = NZ // 2  # the slab's mid-plane (z = 5.5) lies between planes 5 and 6
    focal = optical.isel(z=slice(mid - 1, mid + 1)).coarsen(z=2).mean()
    profile = None
    if condition == "uneven":
        profile, beam = _beam(n_truth, cond_rng)
        focal = focal * profile
        extra.update(beam)
    if condition == "haze":
        haze_sim = _simulation(int(cond_rng.integers(0, 2**31 - 1)), optics, thickness, density)
        layer = np.asarray(haze_sim.ground_truth().isel(f=0).sum("z").values, np.float64)
        radius_nm = float(cond_rng.uniform(1000.0, 2500.0))
        ratio = float(cond_rng.uniform(0.5, 3.0))
        blurred = _disc_blur(layer, radius_nm / truth_nm)
        level = float(np.asarray(focal.values).mean())
        focal = focal + blurred * (ratio * level / max(float(blurred.mean()), 1e-12))
        extra.update(haze_radius_nm=radius_nm, haze_to_signal=ratio)
    lr = np.asarray(sim.digital_image(focal, exposure_ms=exposure).isel(c=0, z=0).values)
    offset = CAMERA_OFFSET
    if condition == "camera":
        lr = lr.astype(np.float64) + 900.0 + cond_rng.normal(0.0, 5.0, (1, lr.shape[1]))
        hot = cond_rng.random(lr.shape) < 5e-4
        lr += np.where(hot, np.exp(cond_rng.uniform(np.log(200), np.log(5000), lr.shape)), 0.0)
        lr = np.clip(np.rint(lr), 0, 65535)
        offset = CAMERA_OFFSET + 900
        extra.update(column_offset_rms_adu=5.0, hot_pixels=int(hot.sum()))
    lr = lr.astype(np.uint16)
    cached_psf.cache_clear()  # one PSF per slab spacing; its cache holds 64 of ~13 MB

    projection = np.asarray(truth.isel(f=0).sum("z").values, dtype=np.float64)
    if profile is not None:
        projection = projection * profile
    hr_fwhm = 0.5 * widefield_fwhm_nm(optics.na)
    sigma = hr_fwhm / (2 * np.sqrt(2 * np.log(2))) / truth_nm
    # +0.5 truth pixel: microsim's even-sized PSF shifts the widefield image by that much
    hr = _bin(_blur_shift(projection, sigma, 0.5), OVERSAMPLE // 2).astype(np.float32)
    name = G1_NAME if condition is None else G3_NAME
    params = {
        "generator": name,
        "simulator": name,
        "index": int(index),
        "na": optics.na,
        "emission_nm": EM_NM,
        "lr_pixel_nm": optics.lr_pixel_nm,
        "hr_pixel_nm": optics.lr_pixel_nm / 2,
        "exposure_ms": exposure,
        "slab_thickness_nm": thickness,
        "matslines_density": density,
        "widefield_fwhm_nm": widefield_fwhm_nm(optics.na),
        "hr_fwhm_nm": hr_fwhm,
        "camera_offset_adu": offset,
        "lr_shape": list(lr.shape),
        "hr_shape": list(hr.shape),
    }
    if condition is not None:
        params["condition"] = condition
        params.update(extra)
    return lr, hr, params


_PAIRS = {"g1": (G1_NAME, g1_pair), "g3": (G3_NAME, g3_pair)}


def write_heldout_set(
    out: str | os.PathLike[str],
    n: int,
    *,
    generator: str = "g1",
    seed: int = 0,
    optics: G1Optics | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int | None], None] | None = None,
) -> Path:
    """Write ``n`` pairs of ``generator`` to ``out``: ``lr/pair_<i>.tif`` (uint16, LR
    pixel size), ``hr/pair_<i>.tif`` (float32, half of it) and ``params.json`` (per-pair
    parameters and ``"heldout": true``). Every file is written atomically."""
    if generator not in GENERATORS:
        raise ConfigError(
            f"unknown generator {generator!r}", path="--generator", hint=", ".join(GENERATORS)
        )
    if n < 1:
        raise ConfigError(f"must be >= 1, got {n}", path="--n")
    optics = optics or G1Optics()
    root = Path(out)
    if (root / PARAMS_FILE).exists() and not overwrite:
        raise OutputExistsError(
            "already holds a dataset", path=root, hint="pass --overwrite or another folder"
        )
    _microsim()  # fail before any file is written
    (root / "lr").mkdir(parents=True, exist_ok=True)
    (root / "hr").mkdir(exist_ok=True)
    pairs: dict[str, dict[str, Any]] = {}
    width = max(5, len(str(n - 1)))
    name, make_pair = _PAIRS[generator]
    for i in range(n):
        lr, hr, params = make_pair(seed, i, optics)
        stem = f"pair_{i:0{width}d}"
        write_plane_tiff(root / "lr" / f"{stem}.tif", lr, pixel_nm=optics.lr_pixel_nm)
        write_plane_tiff(root / "hr" / f"{stem}.tif", hr, pixel_nm=optics.lr_pixel_nm / 2)
        pairs[stem] = params
        if progress is not None:
            progress(i + 1, n)
    record = {
        "heldout": True,
        "generator": {
            "name": name,
            "tool": f"cvdm {__version__}",
            "microsim": _microsim_version(),
            "seed": seed,
            "n": n,
            "optics": asdict(optics),
            "note": "held out: never train or select a model on this set",
        },
        "pairs": pairs,
    }
    write_text_atomic(root / PARAMS_FILE, json.dumps(record, indent=1))
    return root


def _microsim_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("microsim")
    except metadata.PackageNotFoundError:  # pragma: no cover - checked by _microsim
        return None


__all__ = [
    "G1_NAME",
    "G3_CONDITIONS",
    "G3_NAME",
    "GENERATORS",
    "G1Optics",
    "g1_pair",
    "g3_pair",
    "widefield_fwhm_nm",
    "write_heldout_set",
]
