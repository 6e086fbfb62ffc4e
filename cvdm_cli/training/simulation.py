"""Physically based widefield / SIM training pairs (the one door to ``microsim``).

Image formation of one pair (lengths in nm unless stated):

1. Ground truth: a fluorophore density on a fine 3D grid (:mod:`cvdm_cli.training.structures`):
   lateral pitch ``lr_pixel_nm / 4`` (half the HR pixel), 7 planes over a 600 nm slab
   (``SLAB_Z_NM``), plus a margin of >= 1.2 µm around the field so that no light wraps
   around in the FFT convolution.
2. Widefield (LR) image: every plane ``z_k`` of the slab is convolved with the 3D PSF
   ``h(x, y; z_k)`` for an emitter at depth ``depth_um + z_k`` imaged with the stage at
   the best focus of the slab centre plus ``defocus_nm``, and the planes are summed
   (out-of-focus light included). The PSF is the vectorial Gibson-Lanni model of
   ``microsim.psf.vectorial_psf`` (NA, immersion index ``ni``, specimen index ``ns``,
   emission wavelength; the refractive-index mismatch ``ns != ni`` at depth
   ``depth_um`` produces spherical aberration and a focal shift). Each plane of the PSF
   is normalised to sum 1 (a widefield objective collects the same energy whatever the
   defocus). When ``na > ns`` the supercritical angles cannot reach the objective from an
   emitter deeper than a wavelength, so the effective NA is ``min(na, 0.999 * ns)``.
3. Camera: the fine image is integrated over 4x4 blocks (the camera pixels). It is scaled
   so that the 99.9th percentile of the noise-free signal equals ``photons`` (detected
   photons per pixel on the brightest structures, QE included), ``background`` photons are
   added, then shot noise (Poisson), read noise (Gaussian, ``read_noise_e`` e- rms), gain
   (ADU per electron), offset, rounding and clipping to uint16: an sCMOS model whose
   variance in ADU is ``gain**2 * (mean_e + read_noise_e**2) + 1/12``.
4. HR target (linear SIM): the same ground truth imaged with the widefield PSF of an ideal
   (index-matched, aberration-free) system scaled by 1/2 in all three dimensions,
   ``h_SIM(r, z) = h_WF(2 r, 2 z)`` (normalised), i.e. half the lateral FWHM of the
   in-focus widefield PSF, at the nominal focus (no defocus), integrated over 2x2 fine
   pixels (HR pixel = ``lr_pixel_nm / 2``), scaled so the 99.9th percentile is
   ``hr_photons`` (10^4: ~1 % shot noise), Poisson noise, no read noise, float32.
   ``hr_target="gaussian"`` instead defines the target as an all-in-focus image at twice
   the widefield resolution: the slab's projection over z (every plane sharp, no axial
   blur) convolved with a 2D Gaussian whose FWHM is half the diffraction-limited widefield
   FWHM, ``0.5 * 0.51 lambda / NA`` (``HR_GAUSSIAN_FWHM_PER_LAMBDA_NA``); pixel integration,
   scaling and noise as above.
5. Thick-sample haze and camera defects (``--recipe broad`` draws them; zero otherwise):
   ``haze`` photons per pixel on average of out-of-focus light from structures outside the
   slab (a smooth field of 3-30 Gaussian blobs of ``haze_sigma_nm``, LR only: the target is
   the slab); per-pixel offset (``offset_fpn_adu`` rms) and gain (``gain_fpn``, relative
   rms) fixed-pattern noise; a fraction ``hot_pixel_fraction`` of hot pixels with
   ``hot_pixel_e`` mean dark electrons (Poisson). Their random maps come from a third
   stream of the pair's seed, so datasets without them are unchanged.

microsim is used for the PSF only: its full ``Simulation`` pipeline (``Settings(cache=False)``,
explicit ``exposure_ms`` and ``CameraCMOS``) renders the same physics as a whole 3D stack
through xarray: measured 3.9 s for the LR image alone of a 256 px pair, against ~0.6 s for
the whole pair (LR + HR) with the plane-wise numpy FFT convolution used here (one PSF stack
per optics draw, cached for repeated optics).

The toy simulator (``simple=True``), kept for the comparison of issue 8: the z-projected
ground truth on the HR grid blurred by a 2D Gaussian PSF (sigma = 0.21 lambda / NA),
2x2 binning, scaled to ``photons``, Poisson noise only (no background, read noise or
offset), uint16; the HR target is computed exactly as above.

Reproducibility: a pair is a pure function of its :class:`SimulationParams` (including
``seed``); :func:`simulate_dataset` seeds pair ``i`` from ``SeedSequence(seed,
spawn_key=(i,))``, so a pair does not depend on ``n`` or on the number of workers.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from cvdm_cli._version import __version__
from cvdm_cli.errors import ConfigError, MissingExtraError, OutputExistsError
from cvdm_cli.io.atomic import write_text_atomic
from cvdm_cli.io.tiff import write_plane_tiff
from cvdm_cli.training import structures

SLAB_Z_NM: tuple[float, ...] = (-300.0, -200.0, -100.0, 0.0, 100.0, 200.0, 300.0)
SIMULATOR_NAME = "widefield3d-microsim"  # params.json "simulator" of our physical simulator
MARGIN_NM = 1200.0  # field margin against FFT wrap-around of out-of-focus light
PSF_WINDOW = 257  # fine pixels per side of the computed PSF (odd; 3.5-7 µm)
PERCENTILE = 99.9  # "brightest structure" = this percentile of the noise-free image
BIOSR_PIXEL_NM = 62.6  # best knowledge: BioSR widefield pixel (SIM GT at 31.3 nm)
SIMPLE_SIGMA_PER_LAMBDA_NA = 0.21  # Gaussian approximation of the Airy disc
HR_TARGETS = ("sim", "gaussian")  # HR target definitions (module docstring, item 4)
HR_GAUSSIAN_FWHM_PER_LAMBDA_NA = 0.5 * 0.51  # half the widefield FWHM 0.51 lambda / NA
RECIPES = ("v2", "broad")  # parameter draws: v2's (the default) or the broadened one

EXTRA_HINT = 'install the simulation extra: pip install "cvdm-cli[simulate]"'
_CLI_NAMES = {"lr_pixel_nm": "--pixel-nm", "read_noise_e": "--read-noise", "offset_adu": "--offset"}


def _option(name: str) -> str:
    """The ``cvdm simulate`` option that sets field ``name`` (for error messages)."""
    return _CLI_NAMES.get(name, "--" + name.replace("_", "-"))


@dataclass(frozen=True)
class SimulationParams:
    """Everything that determines one simulated pair (lengths in nm unless stated).

    ``size`` is the HR (target) size in pixels; the LR image is ``size // 2`` pixels.
    ``gain`` is in ADU per electron; ``photons`` and ``background`` are detected photons
    per LR pixel; ``depth_um`` is the depth of the slab centre below the coverslip (drives
    spherical aberration when ``ns != ni``); ``defocus_nm`` moves the focus away from the
    best focus of the slab centre.
    """

    structure: str = "mixed"
    size: int = 256
    seed: int = 0
    na: float = 1.49
    ni: float = 1.515
    ns: float = 1.515
    emission_nm: float = 525.0
    lr_pixel_nm: float = BIOSR_PIXEL_NM
    depth_um: float = 1.0
    defocus_nm: float = 0.0
    photons: float = 500.0
    background: float = 20.0
    read_noise_e: float = 1.5
    gain: float = 2.0
    offset_adu: float = 100.0
    hr_photons: float = 10000.0
    hr_target: str = "sim"
    haze: float = 0.0
    haze_sigma_nm: float = 1500.0
    offset_fpn_adu: float = 0.0
    gain_fpn: float = 0.0
    hot_pixel_fraction: float = 0.0
    hot_pixel_e: float = 0.0

    def __post_init__(self) -> None:
        checks = (
            (
                "structure",
                _is_structure(self.structure),
                ", ".join(structures.STRUCTURES) + " or kinds joined by '+'",
            ),
            ("hr_target", self.hr_target in HR_TARGETS, " or ".join(HR_TARGETS)),
            ("size", self.size >= 16 and self.size % 2 == 0, "an even number >= 16"),
            ("ni", 1.0 <= self.ni <= 2.0, "1.0-2.0"),
            ("ns", 1.0 <= self.ns <= 2.0, "1.0-2.0"),
            ("na", 0.1 <= self.na < self.ni, f"0.1 up to below ni = {self.ni}"),
            ("emission_nm", 300.0 <= self.emission_nm <= 1000.0, "300-1000"),
            ("lr_pixel_nm", 20.0 <= self.lr_pixel_nm <= 400.0, "20-400"),
            ("depth_um", 0.35 <= self.depth_um <= 100.0, "0.35-100 (below the slab)"),
            ("defocus_nm", abs(self.defocus_nm) <= 3000.0, "-3000 to 3000"),
            ("photons", 0.0 < self.photons <= 30000.0, "> 0 and <= 30000"),
            ("background", 0.0 <= self.background <= 30000.0, "0-30000"),
            ("read_noise_e", 0.0 <= self.read_noise_e <= 100.0, "0-100"),
            ("gain", 0.01 <= self.gain <= 100.0, "0.01-100"),
            ("offset_adu", 0.0 <= self.offset_adu <= 10000.0, "0-10000"),
            ("hr_photons", 0.0 < self.hr_photons <= 1e7, "> 0 and <= 1e7"),
            ("haze", 0.0 <= self.haze <= 30000.0, "0-30000"),
            ("haze_sigma_nm", 100.0 <= self.haze_sigma_nm <= 20000.0, "100-20000"),
            ("offset_fpn_adu", 0.0 <= self.offset_fpn_adu <= 1000.0, "0-1000"),
            ("gain_fpn", 0.0 <= self.gain_fpn <= 0.5, "0-0.5"),
            ("hot_pixel_fraction", 0.0 <= self.hot_pixel_fraction <= 0.1, "0-0.1"),
            ("hot_pixel_e", 0.0 <= self.hot_pixel_e <= 60000.0, "0-60000"),
        )
        for name, ok, allowed in checks:
            if not ok:
                msg = f"{name} = {getattr(self, name)!r} is out of range"
                raise ConfigError(msg, path=_option(name), hint=f"use {allowed}")

    @property
    def hr_pixel_nm(self) -> float:
        return self.lr_pixel_nm / 2.0

    @property
    def fine_pixel_nm(self) -> float:
        return self.lr_pixel_nm / 4.0

    @property
    def lr_size(self) -> int:
        return self.size // 2

    @property
    def na_effective(self) -> float:
        """NA that reaches the objective from deep in the specimen: min(na, 0.999 ns)."""
        return min(self.na, 0.999 * self.ns)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of the fields plus the derived pixel sizes and NA."""
        d = dataclasses.asdict(self)
        d["hr_pixel_nm"] = self.hr_pixel_nm
        d["na_effective"] = self.na_effective
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SimulationParams:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


FIELDS = tuple(f.name for f in dataclasses.fields(SimulationParams))
_TEXT_FIELDS = ("structure", "hr_target")


def _is_structure(name: str) -> bool:
    try:
        structures.parse_structure(name)
    except ConfigError:
        return False
    return True


# --- parameter draws (domain randomisation) ------------------------------------------


def _loguniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


PHOTONS_RANGE = (20.0, 2000.0)  # the default log-uniform range of the drawn signal
BROAD_PHOTONS_RANGE = (10.0, 5000.0)  # the broad recipe's default range


def check_photons_range(photons_range: tuple[float, float]) -> tuple[float, float]:
    """(low, high) of the drawn photons as floats; ConfigError unless 0 < low <= high <= 30000."""
    low, high = (float(v) for v in photons_range)
    if not (0.0 < low <= high <= 30000.0):
        msg = f"photons range {low:g}:{high:g} is not 0 < low <= high <= 30000"
        raise ConfigError(msg, path="--photons-range", hint="e.g. --photons-range 10:2000")
    return low, high


def draw_params(
    rng: np.random.Generator,
    structure: str = "mixed",
    *,
    size: int = 256,
    photons_range: tuple[float, float] | None = None,
    recipe: str = "v2",
    **fixed: Any,
) -> SimulationParams:
    """Draw one pair's optics, camera and signal; ``fixed`` pins any field by name.

    Half of the draws resemble BioSR (NA 1.3-1.49 oil, widefield pixel 58-68 nm around
    62.6 nm, GFP-like emission ~525 nm), half span the whole randomised range (NA 1.2-1.5,
    emission 500-680 nm, pixel 55-110 nm). Every draw: specimen index 1.33-1.52, slab
    depth 0.4-4 µm, defocus N(0, 150 nm) clipped to ±400 nm, photons 20-2000
    (log-uniform; ``photons_range`` changes the bounds, same draw), background 1-50 % of
    the photons (log-uniform), read noise 0.8-2 e-, gain 0.5-2.5 ADU/e-, offset 100 ADU.
    The draw order is fixed, so pinning a field does not change the others (the
    background stays a drawn fraction of the photons, and a drawn NA stays below a pinned
    immersion index).

    ``recipe="broad"`` draws the same fields in the same order (photons from 10-5000 by
    default), then: background 1-100 % of the photons; thick-sample haze in half of the
    pairs (mean 5-200 % of the photons, blobs of sigma 0.7-3 µm, both log-uniform); camera
    offset 50-500 ADU, offset fixed-pattern noise 0-3 ADU rms, gain fixed-pattern noise
    0-2 % rms; hot pixels in half of the pairs (fraction 1e-5 to 2e-3 with 20-2000 mean
    dark electrons, log-uniform).
    """
    unknown = sorted(set(fixed) - set(FIELDS))
    if unknown:
        msg = f"unknown simulation parameter(s) {', '.join(unknown)}"
        raise ConfigError(msg, hint=f"use {', '.join(FIELDS)}")
    if recipe not in RECIPES:
        msg = f"unknown recipe {recipe!r}"
        raise ConfigError(msg, path="--recipe", hint=f"use {' or '.join(RECIPES)}")
    broad = recipe == "broad"
    if photons_range is None:
        photons_range = BROAD_PHOTONS_RANGE if broad else PHOTONS_RANGE
    biosr = rng.random() < 0.5
    if biosr:
        na = rng.uniform(1.3, 1.49)
        pixel = rng.uniform(58.0, 68.0)
        emission = float(np.clip(rng.normal(525.0, 15.0), 500.0, 680.0))
    else:
        na = rng.uniform(1.2, 1.5)
        pixel = rng.uniform(55.0, 110.0)
        emission = rng.uniform(500.0, 680.0)
    photons = _loguniform(rng, *check_photons_range(photons_range))
    drawn: dict[str, Any] = {
        "structure": structure,
        "size": int(size),
        "seed": int(rng.integers(0, 2**63 - 1)),
        "na": na,
        "ni": 1.515,
        "ns": rng.uniform(1.33, 1.52),
        "emission_nm": emission,
        "lr_pixel_nm": pixel,
        "depth_um": rng.uniform(0.4, 4.0),
        "defocus_nm": float(np.clip(rng.normal(0.0, 150.0), -400.0, 400.0)),
        "photons": photons,
        "background": _loguniform(rng, 0.01, 0.5),  # x photons, below
        "read_noise_e": rng.uniform(0.8, 2.0),
        "gain": rng.uniform(0.5, 2.5),
        "offset_adu": 100.0,
        "hr_photons": 10000.0,
    }
    if broad:  # drawn after v2's fields, so those stay the same draws
        drawn["background"] = _loguniform(rng, 0.01, 1.0)
        hazy = rng.random() < 0.5
        haze, haze_sigma = _loguniform(rng, 0.05, 2.0), _loguniform(rng, 700.0, 3000.0)
        drawn["haze"] = haze if hazy else 0.0  # x photons, below
        drawn["haze_sigma_nm"] = haze_sigma
        drawn["offset_adu"] = rng.uniform(50.0, 500.0)
        drawn["offset_fpn_adu"] = rng.uniform(0.0, 3.0)
        drawn["gain_fpn"] = rng.uniform(0.0, 0.02)
        hot = rng.random() < 0.5
        hot_fraction, hot_e = _loguniform(rng, 1e-5, 2e-3), _loguniform(rng, 20.0, 2000.0)
        drawn["hot_pixel_fraction"] = hot_fraction if hot else 0.0
        drawn["hot_pixel_e"] = hot_e if hot else 0.0
    fixed = {k: v for k, v in fixed.items() if v is not None}
    level = _num("photons", fixed.get("photons", photons))
    drawn["background"] *= level
    if "haze" in drawn:
        drawn["haze"] *= level
    drawn.update(fixed)
    if "na" not in fixed:  # e.g. a fixed water immersion (ni 1.333): keep NA below ni
        drawn["na"] = min(drawn["na"], 0.98 * _num("ni", drawn["ni"]))
    return SimulationParams(
        **{k: (v if k in _TEXT_FIELDS else _num(k, v)) for k, v in drawn.items()}
    )


def _num(name: str, value: Any) -> float | int:
    if name in ("size", "seed"):
        return int(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        msg = f"{name} = {value!r} is not a number"
        raise ConfigError(msg, path=_option(name)) from None


# --- PSFs (microsim) ------------------------------------------------------------------


def _microsim() -> tuple[Any, Any]:
    """(vectorial_psf, ObjectiveLens) from microsim, or MissingExtraError."""
    try:
        from microsim.psf import vectorial_psf
        from microsim.schema.lens import ObjectiveLens
    except ImportError as exc:
        msg = f"the simulator needs microsim, which is not importable ({exc})"
        raise MissingExtraError(msg, path="microsim", hint=EXTRA_HINT) from None
    return vectorial_psf, ObjectiveLens


def _objective(na: float, ni: float, ns: float) -> Any:
    _, objective_lens = _microsim()
    # NB: microsim's field is aliased "na"; "numerical_aperture=" is silently ignored.
    return objective_lens(
        na=na, immersion_medium_ri=ni, immersion_medium_ri_spec=ni, specimen_ri=ns
    )


def _psf_planes(
    na: float,
    ni: float,
    ns: float,
    wl_nm: float,
    dxy_nm: float,
    n: int,
    stage_um: tuple[float, ...],
    depth_um: tuple[float, ...],
) -> np.ndarray:
    """microsim vectorial PSF, one plane per (stage position, emitter depth): (k, n, n)."""
    import warnings

    vectorial_psf, _ = _microsim()
    obj = _objective(na, ni, ns)
    planes = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # 0/0 at r = 0 inside microsim
        for zv, d in zip(stage_um, depth_um, strict=True):
            p = vectorial_psf(
                (zv,),
                nx=n,
                dxy=dxy_nm / 1000.0,
                wvl=wl_nm / 1000.0,
                objective=obj,
                pos=(0.0, 0.0, d * 1e-6),
                normalize=False,  # microsim: pos in metres
            )
            planes.append(np.asarray(p[0], dtype=np.float64))
    return np.stack(planes)


@lru_cache(maxsize=256)
def best_focus_um(na: float, ni: float, ns: float, wl_nm: float, depth_um: float) -> float:
    """Stage position (µm, microsim convention) of peak on-axis intensity for an emitter
    at ``depth_um``: the focus a user finds by eye (includes the mismatch focal shift)."""
    vectorial_psf, _ = _microsim()
    obj = _objective(na, ni, ns)
    import warnings

    center, half = depth_um, 0.5 * depth_um * abs(1.0 - ns / ni) + 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for _ in range(3):  # coarse-to-fine scan: 41 positions, then +-2 steps, twice
            zs = np.linspace(center - half, center + half, 41)
            peak = vectorial_psf(
                tuple(zs),
                nx=3,
                dxy=0.005,
                wvl=wl_nm / 1000.0,
                objective=obj,
                pos=(0.0, 0.0, depth_um * 1e-6),
                normalize=False,
            )[:, 1, 1]
            center, half = float(zs[int(np.argmax(peak))]), 2.0 * (zs[1] - zs[0])
    return center


@lru_cache(maxsize=8)
def _lr_psf_stack(
    na: float,
    ni: float,
    ns: float,
    wl_nm: float,
    dxy_nm: float,
    n: int,
    depth_um: float,
    defocus_nm: float,
    z_nm: tuple[float, ...],
) -> np.ndarray:
    """Widefield PSF for each slab plane z_k, each plane summing to 1: (nz, n, n)."""
    stage = best_focus_um(na, ni, ns, wl_nm, depth_um) + defocus_nm / 1000.0
    psf = _psf_planes(
        na, ni, ns, wl_nm, dxy_nm, n, (stage,) * len(z_nm), tuple(depth_um + z / 1000 for z in z_nm)
    )
    return psf / psf.sum(axis=(1, 2), keepdims=True)


@lru_cache(maxsize=8)
def _hr_psf_stack(
    na: float, ni: float, wl_nm: float, dxy_nm: float, n: int, z_nm: tuple[float, ...]
) -> np.ndarray:
    """SIM PSF h(2r, 2z) of the ideal matched system for each slab plane: (nz, n, n)."""
    depth = 2.0  # any depth: matched indices give a depth-invariant PSF
    psf = _psf_planes(
        na,
        ni,
        ni,
        wl_nm,
        2.0 * dxy_nm,
        n,
        tuple(depth + 2.0 * z / 1000 for z in z_nm),
        (depth,) * len(z_nm),
    )
    return psf / psf.sum(axis=(1, 2), keepdims=True)


def widefield_psf_2d(
    params: SimulationParams,
    pixel_nm: float | None = None,
    *,
    defocus_nm: float = 0.0,
    radius_nm: float = 1500.0,
) -> np.ndarray:
    """In-focus widefield PSF of ``params`` (NA, indices, depth, wavelength) on camera
    pixels of ``pixel_nm`` (default the LR pixel), integrated over each pixel, centred in an
    odd-sized square array, float64 summing to 1. For Richardson-Lucy."""
    pixel = float(pixel_nm or params.lr_pixel_nm)
    c = max(2, math.ceil(radius_nm / pixel))
    n = 4 * (2 * c + 1)  # even fine grid whose centre is the centre of coarse pixel c
    stage = (
        best_focus_um(
            params.na_effective, params.ni, params.ns, params.emission_nm, params.depth_um
        )
        + defocus_nm / 1000.0
    )
    fine = _psf_planes(
        params.na_effective,
        params.ni,
        params.ns,
        params.emission_nm,
        pixel / 4.0,
        n,
        (stage,),
        (params.depth_um,),
    )[0]
    psf = _bin(fine, 4)
    return psf / psf.sum()


def sim_psf_2d(params: SimulationParams, pixel_nm: float | None = None) -> np.ndarray:
    """The HR target's in-focus PSF (widefield scaled by 1/2) on ``pixel_nm`` pixels (default
    the HR pixel), pixel-integrated, odd-sized, summing to 1."""
    pixel = float(pixel_nm or params.hr_pixel_nm)
    c = max(2, math.ceil(800.0 / pixel))
    n = 4 * (2 * c + 1)
    fine = _hr_psf_stack(
        params.na_effective, params.ni, params.emission_nm, pixel / 4.0, n, (0.0,)
    )[0]
    psf = _bin(fine, 4)
    return psf / psf.sum()


# --- rendering -----------------------------------------------------------------------


def _bin(img: np.ndarray, f: int) -> np.ndarray:
    """Sum over f x f blocks of the last two axes (camera pixel integration)."""
    *lead, h, w = img.shape
    return img.reshape(*lead, h // f, f, w // f, f).sum(axis=(-3, -1))


def _fast_len(n: int) -> int:
    from scipy.fft import next_fast_len

    return int(next_fast_len(n, real=True))


def fine_grid(params: SimulationParams) -> tuple[structures.Grid, int]:
    """The padded fine grid of a pair and the margin (fine pixels) cropped after imaging."""
    inner = 2 * params.size
    k = math.ceil(MARGIN_NM / params.fine_pixel_nm / 4)  # margin = 4k fine px (whole LR px)
    while _fast_len(inner + 8 * k) != inner + 8 * k:
        k += 1
    total = inner + 8 * k
    grid = structures.Grid(total, total, params.fine_pixel_nm, SLAB_Z_NM)
    return grid, (total - inner) // 2


def _convolve_planes(
    density: np.ndarray, psf: np.ndarray, spectra: dict[int, np.ndarray] | None = None
) -> np.ndarray:
    """sum_k density[k] (*) psf[k], circular, via rfft2; PSF centred at index n // 2.

    ``spectra`` memoises rfft2(density[k]) so that LR and HR share the object's FFTs."""
    spectra = {} if spectra is None else spectra
    nz, ny, nx = density.shape
    n = psf.shape[-1]
    if n > min(ny, nx):  # crop the PSF window to the field
        m = min(ny, nx) - (1 - min(ny, nx) % 2)
        s = (n - m) // 2
        psf = psf[:, s : s + m, s : s + m]
        psf = psf / psf.sum(axis=(1, 2), keepdims=True)
        n = m
    acc = np.zeros((ny, nx // 2 + 1), dtype=np.complex128)
    kernel = np.zeros((ny, nx))
    for k in range(nz):
        if not density[k].any():
            continue
        kernel[:] = 0.0
        kernel[:n, :n] = psf[k]
        otf = np.fft.rfft2(np.roll(kernel, (-(n // 2), -(n // 2)), axis=(0, 1)))
        if k not in spectra:
            spectra[k] = np.fft.rfft2(density[k])
        acc += spectra[k] * otf
    return np.fft.irfft2(acc, s=(ny, nx))


def _scale_to(signal: np.ndarray, level: float) -> np.ndarray:
    ref = float(np.percentile(signal, PERCENTILE))
    if ref <= 0.0:
        ref = float(signal.max())
    return signal * (level / ref) if ref > 0.0 else signal


def hr_expected(
    params: SimulationParams,
    density: np.ndarray,
    *,
    _spectra: dict[int, np.ndarray] | None = None,
) -> np.ndarray:
    """Noise-free HR image (size x size, float64) scaled to ``hr_photons`` at the 99.9th
    percentile (``params.hr_target``: the SIM image or the all-in-focus Gaussian one)."""
    _, margin = fine_grid(params)
    inner = 2 * params.size
    if params.hr_target == "gaussian":
        img = _gaussian_projection(params, density, _spectra)
        img = np.clip(img[margin : margin + inner, margin : margin + inner], 0.0, None)
        return _scale_to(_bin(img, 2), params.hr_photons)
    psf = _hr_psf_stack(
        params.na_effective,
        params.ni,
        params.emission_nm,
        params.fine_pixel_nm,
        PSF_WINDOW,
        SLAB_Z_NM,
    )
    img = _convolve_planes(density, psf, _spectra)
    img = np.clip(img[margin : margin + inner, margin : margin + inner], 0.0, None)
    return _scale_to(_bin(img, 2), params.hr_photons)


def _gaussian_projection(
    params: SimulationParams,
    density: np.ndarray,
    spectra: dict[int, np.ndarray] | None = None,
) -> np.ndarray:
    """sum_k density[k] (*) G_sigma on the fine grid, circular; FWHM of G =
    ``HR_GAUSSIAN_FWHM_PER_LAMBDA_NA * emission / NA_eff`` (sigma = FWHM / 2.3548)."""
    spectra = {} if spectra is None else spectra
    nz, ny, nx = density.shape
    total = np.zeros((ny, nx // 2 + 1), dtype=np.complex128)
    for k in range(nz):
        if not density[k].any():
            continue
        if k not in spectra:
            spectra[k] = np.fft.rfft2(density[k])
        total += spectra[k]
    fwhm = HR_GAUSSIAN_FWHM_PER_LAMBDA_NA * params.emission_nm / params.na_effective
    sigma = fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0))) / params.fine_pixel_nm
    fy = np.fft.fftfreq(ny)[:, None]
    fx = np.fft.rfftfreq(nx)[None, :]
    otf = np.exp(-2.0 * (np.pi * sigma) ** 2 * (fy**2 + fx**2))  # FT of a unit Gaussian
    return np.fft.irfft2(total * otf, s=(ny, nx))


def haze_photons(params: SimulationParams, rng: np.random.Generator) -> np.ndarray:
    """Out-of-focus light of structures outside the slab: 3-30 Gaussian blobs (sigma
    ``haze_sigma_nm`` x 0.5-2, random weights) over the LR field, mean ``haze`` photons per
    pixel: (size/2, size/2) float64."""
    n = params.lr_size
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
    field = np.zeros((n, n))
    for _ in range(int(rng.integers(3, 31))):
        cy, cx = rng.uniform(-0.25 * n, 1.25 * n, 2)
        sigma = params.haze_sigma_nm * rng.uniform(0.5, 2.0) / params.lr_pixel_nm
        field += rng.uniform(0.2, 1.0) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    mean = float(field.mean())
    return field * (params.haze / mean) if mean > 0.0 else field


def lr_expected_photons(
    params: SimulationParams,
    density: np.ndarray,
    *,
    simple: bool = False,
    _spectra: dict[int, np.ndarray] | None = None,
) -> np.ndarray:
    """Noise-free detected photons per LR pixel (signal only, no background): (size/2)^2."""
    _, margin = fine_grid(params)
    inner = 2 * params.size
    if simple:
        # toy model: z-projection, HR grid, 2D Gaussian PSF, 2x binning
        proj = _bin(density.sum(axis=0), 2)  # margin is a multiple of 4 fine pixels
        m = margin // 2
        sigma = SIMPLE_SIGMA_PER_LAMBDA_NA * params.emission_nm / params.na / params.hr_pixel_nm
        fy = np.fft.fftfreq(proj.shape[0])[:, None]
        fx = np.fft.rfftfreq(proj.shape[1])[None, :]
        otf = np.exp(-2.0 * (np.pi * sigma) ** 2 * (fy**2 + fx**2))  # FT of a unit Gaussian
        img = np.fft.irfft2(np.fft.rfft2(proj) * otf, s=proj.shape)
        img = np.clip(img[m : m + params.size, m : m + params.size], 0.0, None)
        return _scale_to(_bin(img, 2), params.photons)
    psf = _lr_psf_stack(
        params.na_effective,
        params.ni,
        params.ns,
        params.emission_nm,
        params.fine_pixel_nm,
        PSF_WINDOW,
        params.depth_um,
        params.defocus_nm,
        SLAB_Z_NM,
    )
    img = _convolve_planes(density, psf, _spectra)
    img = np.clip(img[margin : margin + inner, margin : margin + inner], 0.0, None)
    return _scale_to(_bin(img, 4), params.photons)


def has_defects(params: SimulationParams) -> bool:
    """Whether the pair has haze or camera fixed-pattern defects (a third noise stream)."""
    return any((params.haze, params.offset_fpn_adu, params.gain_fpn, params.hot_pixel_fraction))


def camera(
    params: SimulationParams,
    photons: np.ndarray,
    rng: np.random.Generator,
    defects_rng: np.random.Generator | None = None,
) -> np.ndarray:
    """sCMOS: Poisson(photons + background [+ hot-pixel dark e-]) + N(0, read) e-,
    x gain (x (1 + gain FPN)) + offset (+ offset FPN), uint16.

    The defect maps (offset and gain FPN, hot pixels) are drawn from ``defects_rng``."""
    mean_e = photons + params.background
    gain: float | np.ndarray = params.gain
    offset: float | np.ndarray = params.offset_adu
    if defects_rng is not None:
        shape = photons.shape
        if params.offset_fpn_adu:
            offset = offset + defects_rng.normal(0.0, params.offset_fpn_adu, shape)
        if params.gain_fpn:
            gain = gain * np.clip(1.0 + defects_rng.normal(0.0, params.gain_fpn, shape), 0.5, 1.5)
        if params.hot_pixel_fraction and params.hot_pixel_e:
            hot = defects_rng.random(shape) < params.hot_pixel_fraction
            dark = params.hot_pixel_e * defects_rng.lognormal(0.0, 0.5, shape)
            mean_e = mean_e + np.where(hot, dark, 0.0)
    electrons = rng.poisson(mean_e).astype(np.float64)
    electrons += (
        rng.normal(0.0, params.read_noise_e, electrons.shape) if params.read_noise_e else 0.0
    )
    adu = np.rint(electrons * gain + offset)
    return np.clip(adu, 0, 65535).astype(np.uint16)


def render_pair(
    params: SimulationParams,
    density: np.ndarray,
    *,
    simple: bool = False,
    noise: bool = True,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Image a given ground truth (``fine_grid(params)[0].shape``) into (LR, HR).

    With ``noise=False`` returns the expected values as float64: LR in ADU
    (``gain * (signal + background) + offset``; the toy model: photons) and HR in photons.
    """
    spectra: dict[int, np.ndarray] = {}
    lr_ph = lr_expected_photons(params, density, simple=simple, _spectra=spectra)
    hr = hr_expected(params, density, _spectra=spectra)
    if rng is None:
        rng = np.random.default_rng(np.random.SeedSequence(params.seed, spawn_key=(1,)))
    # a third stream (haze and defect maps): the first two are those of spawn(2)
    r_lr, r_hr, r_defects = rng.spawn(3)
    defects = has_defects(params) and not simple
    if defects and params.haze:
        lr_ph = lr_ph + haze_photons(params, r_defects)
    if not noise:
        if simple:
            return lr_ph, hr
        return params.gain * (lr_ph + params.background) + params.offset_adu, hr
    if simple:
        lr = np.clip(r_lr.poisson(lr_ph), 0, 65535).astype(np.uint16)
    else:
        lr = camera(params, lr_ph, r_lr, r_defects if defects else None)
    hr_noisy = r_hr.poisson(hr).astype(np.float32)
    return lr, hr_noisy


def simulate_pair(
    params: SimulationParams, *, simple: bool = False
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """One pair: LR uint16 (size/2, size/2), HR float32 (size, size), metadata dict."""
    grid, _ = fine_grid(params)
    ss = np.random.SeedSequence(params.seed)
    struct_rng, noise_rng = (np.random.default_rng(s) for s in ss.spawn(2))
    density = structures.generate(params.structure, grid, struct_rng)
    lr, hr = render_pair(params, density, simple=simple, rng=noise_rng)
    meta = params.to_dict()
    meta.update(
        simulator="gaussian2d-toy" if simple else SIMULATOR_NAME,
        lr_shape=list(lr.shape),
        hr_shape=list(hr.shape),
        slab_z_nm=list(SLAB_Z_NM),
    )
    if not simple:
        meta["focus_stage_um"] = (
            best_focus_um(
                params.na_effective, params.ni, params.ns, params.emission_nm, params.depth_um
            )
            + params.defocus_nm / 1000.0
        )
    return lr, hr, meta


# --- datasets --------------------------------------------------------------------------


def _microsim_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("microsim")
    except PackageNotFoundError:
        return None


def pair_seed_sequence(seed: int, index: int) -> np.random.SeedSequence:
    """The seed sequence of pair ``index`` of a dataset made with ``seed``."""
    return np.random.SeedSequence(seed, spawn_key=(index,))


def _make_pair(
    job: tuple[str, int, str, int, int, bool, dict[str, Any]],
) -> tuple[str, dict[str, Any]]:
    outdir, seed, structure, size, index, simple, fixed = job
    params = draw_params(
        np.random.default_rng(pair_seed_sequence(seed, index)), structure, size=size, **fixed
    )
    lr, hr, meta = simulate_pair(params, simple=simple)
    stem = f"pair_{index:05d}"
    write_plane_tiff(Path(outdir) / "lr" / f"{stem}.tif", lr, pixel_nm=params.lr_pixel_nm)
    write_plane_tiff(Path(outdir) / "hr" / f"{stem}.tif", hr, pixel_nm=params.hr_pixel_nm)
    return stem, meta


def check_dataset_options(
    outdir: str | os.PathLike[str],
    n: int,
    *,
    structure: str = "mixed",
    seed: int = 0,
    size: int = 256,
    overwrite: bool = False,
    **fixed: Any,
) -> None:
    """Raise ConfigError / OutputExistsError / MissingExtraError before any work is done."""
    if n < 1:
        raise ConfigError(f"--n must be at least 1, got {n}", path="--n")
    structures.parse_structure(structure)  # ConfigError naming --structure
    fixed = {k: v for k, v in fixed.items() if v is not None}
    draw_params(np.random.default_rng(pair_seed_sequence(seed, 0)), structure, size=size, **fixed)
    params_json = Path(outdir) / "params.json"
    if params_json.exists() and not overwrite:
        raise OutputExistsError(
            "a dataset already exists here",
            path=params_json,
            hint="choose another folder or pass --overwrite",
        )
    _microsim()  # both simulators need it (the HR target uses microsim's PSF)


def simulate_dataset(
    outdir: str | os.PathLike[str],
    n: int,
    *,
    structure: str = "mixed",
    seed: int = 0,
    size: int = 256,
    simple: bool = False,
    progress: Callable[[int, int], None] | None = None,
    workers: int = 1,
    overwrite: bool = False,
    command: str | None = None,
    **fixed: Any,
) -> dict[str, Any]:
    """Write ``n`` pairs: ``outdir/lr/pair_00000.tif`` (uint16, LR pixel size),
    ``outdir/hr/pair_00000.tif`` (float32, half the pixel size) and ``outdir/params.json``
    (``{"generator": {...}, "pairs": {stem: meta}}``). Returns the params.json content.

    ``fixed`` pins simulation parameters and may name ``recipe`` and ``photons_range`` (see
    :func:`draw_params`); ``progress(done, n)`` is
    called after every pair; ``workers > 1`` uses processes (same files either way).
    """
    fixed = {k: v for k, v in fixed.items() if v is not None}
    check_dataset_options(
        outdir, n, structure=structure, seed=seed, size=size, overwrite=overwrite, **fixed
    )
    out = Path(outdir)
    (out / "lr").mkdir(parents=True, exist_ok=True)
    (out / "hr").mkdir(parents=True, exist_ok=True)
    jobs = [(str(out), seed, structure, size, i, simple, fixed) for i in range(n)]
    pairs: dict[str, Any] = {}
    if workers <= 1:
        for i, job in enumerate(jobs):
            stem, meta = _make_pair(job)
            pairs[stem] = meta
            if progress:
                progress(i + 1, n)
    else:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=workers) as pool:
            for i, (stem, meta) in enumerate(pool.map(_make_pair, jobs)):
                pairs[stem] = meta
                if progress:
                    progress(i + 1, n)
    doc = {
        "generator": {
            "tool": "cvdm simulate",
            "version": __version__,
            "microsim": _microsim_version(),
            "simulator": "gaussian2d-toy" if simple else SIMULATOR_NAME,
            "command": command,
            "n": n,
            "structure": structure,
            "seed": seed,
            "size": size,
            "simple": simple,
            "fixed": fixed,
        },
        "pairs": pairs,
    }
    # written last: its presence marks a complete dataset (`cvdm train --simulate` reuses it)
    write_text_atomic(out / "params.json", json.dumps(doc, indent=1, sort_keys=False) + "\n")
    return doc
