"""How the fast sampler's steps are split into passes (restarts from t_max).

The learned schedule does not reach zero signal: gamma(t_max, x) is about 0.04 for the
trained models, so during training z_T still holds sqrt(0.04) = 0.2 of the residual r,
while a sampler that starts from N(0, 1) offers none. Each pass after the first restarts
from the previous pass's residual noised back with the training marginal,
z_T = sqrt(g_T) r + sqrt(1 - g_T) eps (:func:`cvdm_cli.sampling.steps.run_passes`;
docs/sampling.md). A plan is the list of steps per pass; it always adds up to --steps, so
passes cost no extra denoiser calls. Torch-free, so the CLI can parse it without torch.

Default (no ``--passes``): passes of DEFAULT_PASS_STEPS = 2 steps (10 x 2 for the default 20
steps), chosen on validation pairs of two held-out sets and checked on their scored pairs
(docs/sampling.md, "Passes"); ``--passes 1`` is the paper's single pass.
"""

from __future__ import annotations

from collections.abc import Sequence

from cvdm_cli.errors import ConfigError

PassesSpec = int | str | Sequence[int] | None
DEFAULT_PASS_STEPS = 2  # steps per pass without --passes (docs/sampling.md, "Passes")
HINT = (
    "e.g. --passes 3 (near-equal passes) or --passes 2,2,16 (steps per pass, adding up to --steps)"
)


def split_steps(steps: int, passes: int) -> list[int]:
    """``steps`` calls in ``passes`` near-equal passes, the longer ones first: 20, 3 -> 7, 7, 6."""
    base, extra = divmod(steps, passes)
    return [base + (i < extra) for i in range(passes)]


def default_passes(steps: int) -> int:
    """How many passes ``steps`` calls make without --passes: one per DEFAULT_PASS_STEPS
    steps (20 -> 10, 5 -> 2 as 3 + 2, 3 -> 1)."""
    return max(1, steps // DEFAULT_PASS_STEPS)


def _parse(passes: int | str | Sequence[int]) -> int | list[int]:
    if isinstance(passes, int):
        return passes
    if isinstance(passes, str):
        try:
            parts = [int(p) for p in passes.split(",")]
        except ValueError:
            raise ConfigError(
                f"--passes must be a count or a comma-separated list of steps, got {passes!r}",
                path="--passes", hint=HINT,
            ) from None  # fmt: skip
        return parts[0] if len(parts) == 1 else parts
    return [int(p) for p in passes]


def resolve_passes(sampler: str, steps: int, passes: PassesSpec) -> list[int]:
    """The plan (steps of each pass) for ``sampler`` with ``steps`` calls in all.

    passes: None (the default: passes of DEFAULT_PASS_STEPS steps, :func:`default_passes`),
    1 (one pass: the sampler as the paper runs it), a count n (``steps`` split into n
    near-equal passes, longer ones first), or the steps of each pass ("2,2,16" or a list)
    adding up to ``steps``. The reference sampler walks its schedule once.
    """
    if passes is None:
        return [steps] if sampler != "fast" else split_steps(steps, default_passes(steps))
    value = _parse(passes)
    if sampler != "fast":
        if value not in (1, [steps]):
            raise ConfigError(
                f"--passes {passes} needs the fast sampler", path="--passes",
                hint="drop --passes, or use --sampler fast",
            )  # fmt: skip
        return [steps]
    if isinstance(value, int):
        if not 1 <= value <= steps:
            raise ConfigError(
                f"--passes must be between 1 and --steps ({steps}), got {value}",
                path="--passes", hint=HINT,
            )  # fmt: skip
        return split_steps(steps, value)
    if min(value) < 1 or sum(value) != steps:
        raise ConfigError(
            f"--passes {','.join(map(str, value))}: each pass needs >= 1 step and together "
            f"they must add up to --steps ({steps})",
            path="--passes", hint=HINT,
        )  # fmt: skip
    return list(value)
