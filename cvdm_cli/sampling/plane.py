"""Sampling one plane in tiles: ``independent`` or ``sync`` (MultiDiffusion).

Geometry comes from ``tiling.plan_tiles`` (output pixels; each tile's low-res window has a
margin, so the bicubic condition of a tile equals the whole plane's). Per plane:

1. condition x and lambda(x) are computed ONCE per tile (batched), then blended into
   plane maps with the tapered weights w_t / sum_t w_t;
2. ``independent``: each (tile, sample) runs its own trajectory with noise seeded by
   (seed, plane, tile position, sample); the finished tiles are blended per sample;
   ``sync``: every sample keeps ONE latent z of the padded plane. At each step the tiles
   of z are denoised (batched), the eps predictions blended into one plane eps, and the
   DDIM/DDPM update applied to the whole plane with ONE plane noise field (seeded by
   (seed, plane, sample)), so neighbouring tiles cannot disagree and the injected noise
   keeps unit variance (averaging independent per-tile noise would shrink it);
3. mean and variance over samples by Welford, in chunks of samples.

With ``tta`` sample k is drawn from view k % 8 of the plane (:mod:`cvdm_cli.sampling.views`): the
views of one shape share a tile plan, their per-tile maps are computed per view, as many
views at once as fill a batch with tiles, and each finished sample is mapped back before
step 3.

Noise depends on (seed, plane index, tile position, sample) only, never on the batch
size, tile order or device count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from cvdm_cli.core.devices import auto_batch_size, autocast_context
from cvdm_cli.core.model import CVDM
from cvdm_cli.core.progress import ProgressCallback
from cvdm_cli.core.tiling import TilePlan, plan_tiles, tile_seed, tile_weights, weight_sum
from cvdm_cli.errors import ConfigError
from cvdm_cli.sampling import views
from cvdm_cli.sampling.noise import NoiseSource, plane_noise, sample_view
from cvdm_cli.sampling.schedules import count_steps, make_schedules
from cvdm_cli.sampling.settings import CLIP, DEFAULT_SAMPLING, TILINGS, SamplerSettings
from cvdm_cli.sampling.steps import make_eps_fn, run_passes

SAMPLE_CHUNK = 8  # samples held as planes at once (memory ~ SAMPLE_CHUNK planes)


@dataclass
class PlaneReconstruction:
    """Outputs for one plane on the output grid (float32 numpy, normalised units).

    mean, var: (H, W); var is unbiased (ddof=1), zero for one sample.
    samples: (K, H, W) when asked for. difficulty: lambda(x), (H, W).
    """

    mean: np.ndarray
    var: np.ndarray
    difficulty: np.ndarray
    samples: np.ndarray | None = None


def plan_for(model: CVDM, lr_shape: tuple[int, int], tile: int | None, overlap: int) -> TilePlan:
    """A tile plan whose tiles fit the network (multiples of ``model.pad_multiple``).

    tile=None: one tile covering the whole plane (padded to the network multiple).
    """
    mult = model.pad_multiple
    scale = model.config.scale
    if tile is None:
        longest = scale * max(lr_shape)
        tile = -(-longest // mult) * mult
        overlap = 0
    if tile % mult:
        raise ConfigError(
            f"tile {tile} is not a multiple of {mult}",
            path="--tile",
            hint=f"use a multiple of {mult}, e.g. 256",
        )
    return plan_tiles(
        lr_shape,
        tile=tile,
        overlap=overlap,
        scale=scale,
        margin_lr=max(4, mult // scale),
        multiple=mult,
    )


class _PlaneTiles:
    """Per-tile conditions and lambda maps of one or more views of a plane (all of one
    shape, so they share ``plan``), plus blending helpers (torch).

    x, lam: (n_views * n_tiles, 1, th, tw); row ``slot * n_tiles + t`` is tile t of the
    view in slot ``slot`` (the order of ``planes``).
    """

    def __init__(self, model: CVDM, planes: list[np.ndarray], plan: TilePlan, batch: int) -> None:
        device = model.device
        self.plan = plan
        self.n_tiles = len(plan.tiles)
        windows = np.concatenate(
            [
                np.stack(
                    [plan.cut_lr(plan.pad_lr(np.asarray(p, np.float32)), t) for t in plan.tiles]
                )
                for p in planes
            ]
        )[:, None]
        xs, lams = [], []
        for start in range(0, len(windows), batch):
            win = torch.from_numpy(windows[start : start + batch]).to(device)
            up = model.condition(win)
            crops = [plan.tiles[(start + i) % self.n_tiles].crop_slices for i in range(len(up))]
            x = torch.stack([up[i, :, sy, sx] for i, (sy, sx) in enumerate(crops)])
            xs.append(x)
            lams.append(model.lam(x))  # once per tile and view, shared by samples and steps
        self.x = torch.cat(xs)
        self.lam = torch.cat(lams)
        self.w = torch.from_numpy(tile_weights(plan))[:, None].to(device)  # (n,1,th,tw)
        self.wsum = torch.from_numpy(weight_sum(plan))[None, None].to(device)

    def rows(self, slot: int) -> slice:
        """Rows of x / lam holding the tiles of the view in ``slot``."""
        return slice(slot * self.n_tiles, (slot + 1) * self.n_tiles)

    def blend(self, values: Tensor) -> Tensor:
        """(n_tiles, C, th, tw) -> (C, Hp, Wp) tapered weighted mean on the padded plane."""
        acc = torch.zeros((values.shape[1], *self.plan.padded_out_shape), device=values.device)
        for i, t in enumerate(self.plan.tiles):
            acc[:, t.out_slices[0], t.out_slices[1]] += values[i] * self.w[i]
        return acc / self.wsum[0]

    def crop(self, plane: Tensor) -> Tensor:
        (y0, y1, x0, x1) = self.plan.out_crop
        return plane[..., y0:y1, x0:x1]


class _Welford:
    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, None, None

    def add(self, y: Tensor) -> None:
        if self.mean is None:
            self.mean, self.m2 = torch.zeros_like(y), torch.zeros_like(y)
        self.n += 1
        delta = y - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (y - self.mean)

    def variance(self) -> Tensor:
        return self.m2 / max(self.n - 1, 1)


@torch.inference_mode()
def reconstruct_plane(
    model: CVDM,
    lowres: np.ndarray,
    settings: SamplerSettings = DEFAULT_SAMPLING,
    *,
    plane_index: int = 0,
    callback: ProgressCallback | None = None,
    return_samples: bool = False,
    clip: float | None = CLIP,
) -> PlaneReconstruction:
    """Sample one normalised plane (h, w) in tiles; outputs on the (scale*h, scale*w) grid.

    The one sampling driver: ``cvdm enhance``, ``cvdm uncertainty``, ``cvdm evaluate``,
    the public :func:`cvdm_cli.sampling.api.reconstruct` and the trainer's validation all
    come here, so the same settings, seed and plane index give the same draws everywhere.
    ``settings`` (:class:`~cvdm_cli.sampling.settings.SamplerSettings`): tile/overlap in
    output pixels (tile None: the whole plane at once), batch size in tile-samples per
    denoiser call (None: from the device), TTA (sample k from view k % 8 of the plane,
    mapped back; the noise of sample k does not depend on it), antithetic pairs, passes.
    Noise depends on (seed, plane_index, tile position, sample) only.
    ``callback(done, total)`` in tile-sample denoiser passes.
    """
    model.prepare_inference()
    lowres = np.asarray(lowres, dtype=np.float32)
    if lowres.ndim != 2:
        raise ConfigError(f"a plane must be 2D, got shape {lowres.shape}")
    samples = settings.samples
    # views of one shape share a tile plan: one group, or two for a non-square plane
    groups: dict[tuple[int, int], list[int]] = {}

    def view(k: int) -> int:
        return sample_view(k, settings.tta, settings.antithetic)

    for v in sorted({view(k) for k in range(samples)}):
        groups.setdefault(views.view_shape(lowres.shape, v), []).append(v)
    overlap = settings.overlap if settings.tile is not None else 0
    plans = {shape: plan_for(model, shape, settings.tile, overlap) for shape in groups}
    th, tw = plans[lowres.shape].tile_shape
    bs = settings.batch_size or auto_batch_size(th * tw, model.device)
    n_steps = count_steps(settings.sampler, settings.steps, model.config.timesteps)
    shape_of_sample = [views.view_shape(lowres.shape, view(k)) for k in range(samples)]
    passes_per_step = sum(len(plans[shape].tiles) for shape in shape_of_sample)
    progress = _Progress(callback, passes_per_step * n_steps)
    draw = _PlaneDraw(settings, plane_index, bs, clip)
    run = _sample_sync if settings.tiling == "sync" else _sample_independent

    stats = _Welford()
    kept: dict[int, Tensor] = {}
    difficulty = None
    for shape, shape_views in groups.items():
        plan = plans[shape]
        # views sampled together: enough for their (sample, tile) pairs to fill batches
        # with little remainder, few enough that their per-tile x and lambda maps (2
        # channels per tile, held at once) stay small next to a batch's activations
        per_set = max(1, (4 * bs) // len(plan.tiles))
        for v0 in range(0, len(shape_views), per_set):
            view_set = shape_views[v0 : v0 + per_set]
            tiles = _PlaneTiles(model, [views.forward(lowres, v) for v in view_set], plan, bs)
            if 0 in view_set:
                rows = tiles.rows(view_set.index(0))
                difficulty = tiles.crop(tiles.blend(tiles.lam[rows]))[0]
            ks_all = [k for k in range(samples) if view(k) in view_set]
            for c0 in range(0, len(ks_all), SAMPLE_CHUNK):
                ks = ks_all[c0 : c0 + SAMPLE_CHUNK]
                slots = [view_set.index(view(k)) for k in ks]
                planes = run(model, tiles, ks, slots, draw, progress)  # (len(ks), Hp, Wp)
                for k, slot, plane in zip(ks, slots, planes, strict=True):
                    y = views.inverse(tiles.crop(plane), view_set[slot])
                    stats.add(y)
                    if return_samples:
                        kept[k] = y.cpu()
    assert difficulty is not None  # view 0 (sample 0) is always drawn
    return PlaneReconstruction(
        mean=stats.mean.cpu().numpy().astype(np.float32),
        var=stats.variance().cpu().numpy().astype(np.float32),
        difficulty=difficulty.cpu().numpy().astype(np.float32),
        samples=torch.stack([kept[k] for k in range(samples)]).numpy() if return_samples else None,
    )


@dataclass(frozen=True)
class _PlaneDraw:
    """The settings of one plane's sampling plus what is fixed per plane: its index (part
    of every noise seed), the batch size in use and the x0 clip."""

    settings: SamplerSettings
    plane_index: int
    batch: int
    clip: float | None

    def noise(self, draws: list[tuple[int, int]]) -> NoiseSource:
        """Noise for (key, sample) draws: key -1 for a whole plane, a tile's key for a tile
        (:func:`cvdm_cli.sampling.noise.plane_noise`)."""
        s = self.settings
        return plane_noise(s.seed, self.plane_index, draws, antithetic=s.antithetic)


class _Progress:
    def __init__(self, callback: ProgressCallback | None, total: int) -> None:
        self.callback, self.total, self.done = callback, total, 0

    def add(self, n: int) -> None:
        self.done += n
        if self.callback is not None:
            self.callback(self.done, self.total)


def _per_sample(tiles: _PlaneTiles, values: Tensor, slots: list[int]) -> Tensor:
    """Blend the per-tile ``values`` (x or lam) of each sample's view: (K or 1, 1, Hp, Wp).

    One view: a single plane that broadcasts over the samples."""
    unique = sorted(set(slots))
    planes = {s: tiles.blend(values[tiles.rows(s)]) for s in unique}
    if len(unique) == 1:
        return planes[unique[0]][None]
    return torch.stack([planes[s] for s in slots])


def _sample_sync(
    model: CVDM,
    tiles: _PlaneTiles,
    ks: list[int],
    slots: list[int],
    draw: _PlaneDraw,
    progress: _Progress,
) -> Tensor:
    """MultiDiffusion: one latent per sample on the padded plane; returns (K, Hp, Wp).

    Sample ks[i] is drawn from the view in slot slots[i] of ``tiles``."""
    s = draw.settings
    device = model.device
    plan = tiles.plan
    lam_plane = _per_sample(tiles, tiles.lam, slots)  # (K or 1, 1, Hp, Wp)
    x_plane = _per_sample(tiles, tiles.x, slots)
    schedules = make_schedules(model, lam_plane, s.sampler, s.pass_plan)
    noise = draw.noise([(-1 & 0xFFFFFFFF, k) for k in ks])
    items = list(range(len(ks)))
    shape = (1, *plan.padded_out_shape)
    n_tiles = tiles.n_tiles
    pairs = [(k, t) for k in range(len(ks)) for t in range(n_tiles)]

    def eps_fn(z: Tensor, gamma: Tensor) -> Tensor:
        # Cut every (sample, tile), denoise in batches, blend back into one plane eps.
        acc = torch.zeros_like(z)
        for start in range(0, len(pairs), draw.batch):
            chunk = pairs[start : start + draw.batch]
            cuts = [plan.tiles[t].out_slices for _, t in chunk]
            z_b = torch.stack(
                [z[k, :, sy, sx] for (k, _), (sy, sx) in zip(chunk, cuts, strict=True)]
            )
            g_b = torch.stack(
                [gamma[min(k, gamma.shape[0] - 1), :, sy, sx]
                 for (k, _), (sy, sx) in zip(chunk, cuts, strict=True)]
            )  # fmt: skip
            rows = torch.tensor([slots[k] * n_tiles + t for k, t in chunk], device=device)
            with autocast_context(device, s.precision):
                eps_b = model.eps(z_b, tiles.x[rows], g_b).float()
            for row, (k, t) in enumerate(chunk):
                sy, sx = cuts[row]
                acc[k, :, sy, sx] += eps_b[row] * tiles.w[t]
            progress.add(len(chunk))
        return acc / tiles.wsum

    z = noise.draw(items, shape, device)
    r = run_passes(
        eps_fn,
        schedules,
        z,
        eta=s.eta_value,
        noise=lambda: noise.draw(items, shape, device),
        clip=draw.clip,
    )
    return (x_plane + r)[:, 0]


def _sample_independent(
    model: CVDM,
    tiles: _PlaneTiles,
    ks: list[int],
    slots: list[int],
    draw: _PlaneDraw,
    progress: _Progress,
) -> Tensor:
    """Each (tile, sample) on its own trajectory, blended per sample: (K, Hp, Wp).

    Sample ks[i] is drawn from the view in slot slots[i] of ``tiles``."""
    s = draw.settings
    device = model.device
    plan = tiles.plan
    items = [(k, t) for k in range(len(ks)) for t in range(tiles.n_tiles)]
    noise = draw.noise(
        [(tile_seed(s.seed, draw.plane_index, plan.tiles[t]), ks[k]) for k, t in items]
    )
    acc = torch.zeros((len(ks), *plan.padded_out_shape), device=device)
    shape = (1, *plan.tile_shape)
    for start in range(0, len(items), draw.batch):
        chunk = list(range(start, min(start + draw.batch, len(items))))
        rows = torch.tensor(
            [slots[items[j][0]] * tiles.n_tiles + items[j][1] for j in chunk], device=device
        )
        x_b, lam_b = tiles.x[rows], tiles.lam[rows]
        schedules = make_schedules(model, lam_b, s.sampler, s.pass_plan)
        z = noise.draw(chunk, shape, device)
        r = run_passes(
            make_eps_fn(model, x_b, s.precision),
            schedules,
            z,
            eta=s.eta_value,
            noise=lambda c=chunk: noise.draw(c, shape, device),
            clip=draw.clip,
            on_step=lambda n=len(chunk): progress.add(n),
        )
        y = x_b + r
        for row, j in enumerate(chunk):
            k, t = items[j]
            sl = plan.tiles[t].out_slices
            acc[k, sl[0], sl[1]] += (y[row] * tiles.w[t])[0]
    return acc / tiles.wsum[0]


def schedule_map_plane(
    model: CVDM,
    lowres: np.ndarray,
    *,
    tile: int | None = None,
    overlap: int = DEFAULT_SAMPLING.overlap,
    batch_size: int | None = None,
) -> np.ndarray:
    """lambda(x) of a plane on the output grid (tiled and blended), float32 (H, W)."""
    model.prepare_inference()
    with torch.inference_mode():
        plan = plan_for(model, np.asarray(lowres).shape, tile, overlap)
        bs = batch_size or auto_batch_size(plan.tile_shape[0] * plan.tile_shape[1], model.device)
        tiles = _PlaneTiles(model, [np.asarray(lowres, np.float32)], plan, bs)
        return tiles.crop(tiles.blend(tiles.lam))[0].cpu().numpy().astype(np.float32)


__all__ = ["TILINGS", "PlaneReconstruction", "plan_for", "reconstruct_plane", "schedule_map_plane"]
