"""Ground-truth fluorophore densities in 3D for the simulator (numpy and scipy only).

Every generator draws one sample into a :class:`Grid`, a fine 3D grid of shape
``(nz, ny, nx)``: lateral pitch ``pixel_nm`` (the simulator uses a quarter of the
widefield pixel, i.e. half the HR pixel) and axial planes at ``z_nm`` (nm, relative to the
slab centre). Values are fluorophores per voxel in arbitrary but consistent units: a thin
tube (filament, ER tubule) deposits about 1 unit per nm/``pixel_nm`` of length, a membrane
(vesicle shell, ER sheet) deposits a comparable amount per area, so that mixed samples are
balanced. Structures are thinner than one fine pixel (microtubules ~25 nm, membranes
~5 nm) and are therefore drawn as dense point clouds splatted with trilinear weights.

Structures:

- ``filaments``: worm-like chains (persistence length 2-30 µm) that wander smoothly in
  depth inside the slab (microtubules, actin bundles);
- ``vesicles``: hollow spherical shells, 50-300 nm diameter (clathrin-coated pits,
  vesicles; they look like rings or dots at widefield resolution);
- ``reticulum``: an ER-like network of curved tubules with three-way junctions (edges of
  a Voronoi tessellation, some removed), on a smoothly undulating surface, with a few
  flat sheets (filled cells);
- ``lines``: straight filaments crossing the field at random angles, from a few sparse
  ones to dense crossing meshes (actin stress fibres, aligned microtubule bundles), each
  tilted gently through the slab's depth and with its own brightness (1-4 bundled
  filaments). Not part of ``mixed``, so earlier ``mixed`` datasets stay reproducible;
- ``mixed``: a random combination of filaments, vesicles and reticulum;
- ``broad``: a random combination of all four kinds (filaments, vesicles, reticulum,
  lines);
- ``KIND+KIND[+...]``: a random combination of the named kinds, e.g.
  ``filaments+vesicles+lines`` (leave-one-structure-out training sets);
  ``filaments+vesicles+reticulum`` draws exactly what ``mixed`` draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import Voronoi

from cvdm_cli.errors import ConfigError

KINDS = ("filaments", "vesicles", "reticulum", "lines")  # the single generators
MIXES = {"mixed": ("filaments", "vesicles", "reticulum"), "broad": KINDS}
STRUCTURES = (*KINDS, *MIXES)


@dataclass(frozen=True)
class Grid:
    """A fine 3D sampling grid: ``shape = (nz, ny, nx)``; lateral pitch and plane depths in nm."""

    ny: int
    nx: int
    pixel_nm: float
    z_nm: tuple[float, ...]

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.z_nm), self.ny, self.nx)

    @property
    def area_um2(self) -> float:
        return self.ny * self.nx * (self.pixel_nm / 1000.0) ** 2

    @property
    def z_half_nm(self) -> float:
        """Half the slab thickness (nm): the deepest plane's distance from the centre."""
        return float(max(abs(z) for z in self.z_nm))


def splat(grid: Grid, z_nm: np.ndarray, y: np.ndarray, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Accumulate point weights into the grid with trilinear interpolation.

    ``y``, ``x`` are in fine pixels (pixel centres at integers), ``z_nm`` in nm; returns a
    float64 array of ``grid.shape``. Points outside the grid lose the weight that falls out.
    """
    nz, ny, nx = grid.shape
    zs = np.asarray(grid.z_nm, dtype=np.float64)
    if nz > 1:
        zc = np.interp(z_nm, zs, np.arange(nz, dtype=np.float64))  # clamps to the slab
    else:
        zc = np.zeros_like(z_nm, dtype=np.float64)
    z0, y0, x0 = np.floor(zc), np.floor(y), np.floor(x)
    fz, fy, fx = zc - z0, y - y0, x - x0
    z0, y0, x0 = z0.astype(np.int64), y0.astype(np.int64), x0.astype(np.int64)
    idx_parts, w_parts = [], []
    for dz, wz in ((0, 1.0 - fz), (1, fz)):
        for dy, wy in ((0, 1.0 - fy), (1, fy)):
            for dx, wx in ((0, 1.0 - fx), (1, fx)):
                zi, yi, xi = z0 + dz, y0 + dy, x0 + dx
                ok = (zi >= 0) & (zi < nz) & (yi >= 0) & (yi < ny) & (xi >= 0) & (xi < nx)
                idx_parts.append((zi[ok] * ny + yi[ok]) * nx + xi[ok])
                w_parts.append((w * wz * wy * wx)[ok])
    # one bincount over the 8 corners (8 full-grid bincounts cost 3x more)
    out = np.bincount(
        np.concatenate(idx_parts), weights=np.concatenate(w_parts), minlength=nz * ny * nx
    )
    return out.reshape(nz, ny, nx)


def _smooth_z(rng: np.random.Generator, s: np.ndarray, half_nm: float) -> np.ndarray:
    """A smooth depth profile z(s) in nm along arc length ``s`` (nm), inside ``±half_nm``."""
    z0 = rng.uniform(-0.7, 0.7) * half_nm
    amp = rng.uniform(0.0, 0.6) * half_nm
    period = rng.uniform(2000.0, 15000.0)
    z = z0 + amp * np.sin(2 * np.pi * s / period + rng.uniform(0, 2 * np.pi))
    return np.clip(z, -0.95 * half_nm, 0.95 * half_nm)


def _n_objects(rng: np.random.Generator, per_100um2: tuple[float, float], grid: Grid) -> int:
    return max(1, round(rng.uniform(*per_100um2) * grid.area_um2 / 100.0))


def filaments(grid: Grid, rng: np.random.Generator, density: float = 1.0) -> np.ndarray:
    """Worm-like chains: 2D tangent random walk (persistence length 2-30 µm) + smooth z."""
    step = 0.5  # fine pixels per point: dense enough for a continuous line
    pts_z, pts_y, pts_x, pts_w = [], [], [], []
    n = max(1, round(_n_objects(rng, (8.0, 30.0), grid) * density))
    for _ in range(n):
        length_nm = rng.uniform(3000.0, 20000.0)
        npts = max(2, int(length_nm / (grid.pixel_nm * step)))
        lp_nm = np.exp(rng.uniform(np.log(2000.0), np.log(30000.0)))
        ds_nm = grid.pixel_nm * step
        # WLC in 2D: angle increments ~ N(0, ds / Lp) (variance), eq. of the Kratky-Porod chain
        dtheta = rng.normal(0.0, np.sqrt(ds_nm / lp_nm), npts)
        theta = rng.uniform(0, 2 * np.pi) + np.cumsum(dtheta)
        y = rng.uniform(0, grid.ny) + np.cumsum(step * np.sin(theta))
        x = rng.uniform(0, grid.nx) + np.cumsum(step * np.cos(theta))
        s = np.arange(npts) * ds_nm
        pts_z.append(_smooth_z(rng, s, grid.z_half_nm))
        pts_y.append(y)
        pts_x.append(x)
        pts_w.append(np.full(npts, step * rng.uniform(0.5, 1.5)))  # ~1 unit per fine pixel
    return splat(grid, *(np.concatenate(p) for p in (pts_z, pts_y, pts_x, pts_w)))


def lines(grid: Grid, rng: np.random.Generator, density: float = 1.0) -> np.ndarray:
    """Straight filaments: 5-120 per 100 µm^2 (log-uniform, x ``density``), so a field
    ranges from a few lines to a dense crossing mesh; each runs across the field at a
    random angle (length 2 µm to the field's diagonal), at a depth that changes linearly
    along it within the slab, with 1-4 filaments' worth of dye."""
    step = 0.5  # fine pixels per point, as for filaments
    per_100 = float(np.exp(rng.uniform(np.log(5.0), np.log(120.0))))
    n = max(1, round(per_100 * grid.area_um2 / 100.0 * density))
    diagonal = float(np.hypot(grid.ny, grid.nx))
    pts_z, pts_y, pts_x, pts_w = [], [], [], []
    for _ in range(n):
        length = rng.uniform(min(2000.0 / grid.pixel_nm, diagonal), diagonal)  # fine pixels
        theta = rng.uniform(0, np.pi)
        cy, cx = rng.uniform(0, grid.ny), rng.uniform(0, grid.nx)
        t = np.arange(-length / 2, length / 2, step)
        y, x = cy + t * np.sin(theta), cx + t * np.cos(theta)
        inside = (y >= 0) & (y <= grid.ny - 1) & (x >= 0) & (x <= grid.nx - 1)
        if inside.sum() < 2:
            continue
        half = grid.z_half_nm
        z0, z1 = rng.uniform(-0.9, 0.9, 2) * half  # a straight line through the slab
        z = z0 + (z1 - z0) * (t - t[0]) / max(t[-1] - t[0], 1.0)
        bundle = float(rng.integers(1, 5))
        pts_z.append(z[inside])
        pts_y.append(y[inside])
        pts_x.append(x[inside])
        pts_w.append(np.full(int(inside.sum()), step * bundle * rng.uniform(0.7, 1.3)))
    if not pts_z:  # every line missed the field (tiny grids): one through the centre
        return lines(grid, rng, density=density)
    return splat(grid, *(np.concatenate(p) for p in (pts_z, pts_y, pts_x, pts_w)))


def vesicles(grid: Grid, rng: np.random.Generator, density: float = 1.0) -> np.ndarray:
    """Hollow spherical shells (diameter 50-300 nm, log-uniform) at random positions."""
    n = max(1, round(_n_objects(rng, (20.0, 120.0), grid) * density))
    diam = np.exp(rng.uniform(np.log(50.0), np.log(300.0), n))
    cy, cx = rng.uniform(0, grid.ny, n), rng.uniform(0, grid.nx, n)
    cz = rng.uniform(-0.8, 0.8, n) * grid.z_half_nm
    bright = rng.uniform(0.5, 1.5, n)
    # points per shell ~ area / (pixel/2)^2 so the surface is densely covered
    npts = np.maximum(32, (np.pi * diam**2 / (0.5 * grid.pixel_nm) ** 2).astype(np.int64))
    owner = np.repeat(np.arange(n), npts)
    v = rng.normal(size=(owner.size, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    r_nm = (diam / 2.0)[owner]
    z = cz[owner] + r_nm * v[:, 0]
    y = cy[owner] + r_nm * v[:, 1] / grid.pixel_nm
    x = cx[owner] + r_nm * v[:, 2] / grid.pixel_nm
    # a shell carries as many fluorophores as a tube of length area / 60 nm (a labelled
    # membrane is sparser than a labelled filament per nm^2): weight in tube-length units
    area_equiv = np.pi * diam**2 / (60.0 * grid.pixel_nm)
    w = (bright * area_equiv / npts)[owner]
    return splat(grid, z, y, x, w)


def reticulum(grid: Grid, rng: np.random.Generator, density: float = 1.0) -> np.ndarray:
    """ER-like network: curved Voronoi edges (tubules) + a few filled cells (sheets)."""
    cell_nm = rng.uniform(500.0, 1500.0)  # mean mesh size
    n_seeds = max(8, round(grid.area_um2 * 1e6 / cell_nm**2 * density))
    seeds = np.column_stack([rng.uniform(0, grid.ny, n_seeds), rng.uniform(0, grid.nx, n_seeds)])
    vor = Voronoi(seeds)
    verts = vor.vertices
    # surface height: a smooth random field z(y, x) inside the slab
    k = rng.normal(size=(3, 2)) * 2 * np.pi / (rng.uniform(4000.0, 12000.0) / grid.pixel_nm)
    ph, amp = rng.uniform(0, 2 * np.pi, 3), rng.uniform(0.0, 0.3, 3) * grid.z_half_nm
    z_mid = rng.uniform(-0.4, 0.4) * grid.z_half_nm

    def height(y: np.ndarray, x: np.ndarray) -> np.ndarray:
        z = z_mid + sum(
            a * np.sin(kk[0] * y + kk[1] * x + p) for a, kk, p in zip(amp, k, ph, strict=True)
        )
        return np.clip(z, -0.95 * grid.z_half_nm, 0.95 * grid.z_half_nm)

    keep = rng.uniform(0.65, 1.0)
    step = 0.5
    pts_y, pts_x, pts_w = [], [], []
    for a, b in vor.ridge_vertices:
        if a < 0 or b < 0 or rng.random() > keep:
            continue
        p, q = verts[a], verts[b]
        seg = np.hypot(*(q - p))
        if seg < 1.0 or seg > 4 * cell_nm / grid.pixel_nm:
            continue
        # quadratic Bezier with the control point pushed sideways: a gently curved tubule
        normal = np.array([-(q - p)[1], (q - p)[0]]) / seg
        ctrl = (p + q) / 2 + normal * rng.normal(0.0, 0.15) * seg
        t = np.linspace(0.0, 1.0, max(2, int(seg / step)))[:, None]
        c = (1 - t) ** 2 * p + 2 * (1 - t) * t * ctrl + t**2 * q
        pts_y.append(c[:, 0])
        pts_x.append(c[:, 1])
        pts_w.append(np.full(len(c), step * rng.uniform(0.6, 1.2)))
    if pts_y:
        y, x, w = (np.concatenate(p) for p in (pts_y, pts_x, pts_w))
        out = splat(grid, height(y, x), y, x, w)
    else:
        out = np.zeros(grid.shape)
    # sheets: fill a few bounded cells with a uniform membrane density
    n_sheets = rng.poisson(grid.area_um2 / 100.0 * rng.uniform(0.0, 3.0))
    regions = [r for r in (vor.regions[vor.point_region[i]] for i in range(n_seeds)) if r]
    regions = [r for r in regions if -1 not in r]
    if n_sheets and regions:
        from skimage.draw import polygon

        sheet = np.zeros((grid.ny, grid.nx))
        for i in rng.choice(len(regions), size=min(n_sheets, len(regions)), replace=False):
            poly = verts[regions[i]]
            rr, cc = polygon(poly[:, 0], poly[:, 1], shape=(grid.ny, grid.nx))
            sheet[rr, cc] = rng.uniform(0.05, 0.15)
        yy, xx = np.nonzero(sheet)
        if yy.size:
            out += splat(grid, height(yy.astype(float), xx.astype(float)), yy, xx, sheet[yy, xx])
    return out


def mix(grid: Grid, rng: np.random.Generator, kinds: tuple[str, ...]) -> np.ndarray:
    """A random mixture of ``kinds``: each present with probability 0.6 (at least one),
    each at a density of 0.3-0.8 of its own field's."""
    present = [k for k in kinds if rng.random() < 0.6]
    if not present:
        present = [str(rng.choice(list(kinds)))]
    out = np.zeros(grid.shape)
    for kind in present:
        out += _GENERATORS[kind](grid, rng, density=rng.uniform(0.3, 0.8))
    return out


def mixed(grid: Grid, rng: np.random.Generator) -> np.ndarray:
    """A random mixture of filaments, vesicles and reticulum (see :func:`mix`)."""
    return mix(grid, rng, MIXES["mixed"])


def parse_structure(structure: str) -> tuple[str, ...]:
    """The kinds a structure name draws: ``"lines"`` -> ("lines",), ``"mixed"`` -> its
    three, ``"vesicles+lines"`` -> both; ConfigError naming ``--structure`` otherwise."""
    if structure in MIXES:
        return MIXES[structure]
    kinds = tuple(structure.split("+"))
    unknown = [k for k in kinds if k not in KINDS]
    if not structure or unknown or len(set(kinds)) != len(kinds):
        msg = f"unknown structure {structure!r}"
        hint = f"use one of {', '.join(STRUCTURES)}, or kinds joined by '+' (e.g. vesicles+lines)"
        raise ConfigError(msg, path="--structure", hint=hint)
    return kinds


_GENERATORS = {
    "filaments": filaments,
    "vesicles": vesicles,
    "reticulum": reticulum,
    "lines": lines,
}


def generate(structure: str, grid: Grid, rng: np.random.Generator) -> np.ndarray:
    """Draw one ground truth of the named kind or mixture (:func:`parse_structure`):
    float32 array of ``grid.shape``."""
    kinds = parse_structure(structure)
    if len(kinds) == 1 and structure not in MIXES:
        out = _GENERATORS[kinds[0]](grid, rng)
    else:
        out = mix(grid, rng, kinds)
    return out.astype(np.float32)
