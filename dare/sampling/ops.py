"""Pure tensor building blocks of the samplers: float64 sampling, token-selection rules and the
per-step schedules.

Precision: every categorical / Gumbel draw and every softmax used for a confidence runs in
float64. Gumbel noise drawn in float32 (or bf16) lives on a coarse grid: `u` never comes closer
to 1 than 2^-24, which caps the Gumbel noise near 16.6 and rounds values near 1 to exactly 1, so
low-probability tokens are under-sampled (lower effective temperature, flattering generative
perplexity; Zheng et al., arXiv 2409.02908, and the d1 `add_gumbel_noise(dtype=bf16)` pitfall).

Shapes: N rows (prompts x generations), L positions of the current block, V vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from dare.registry import Registry

# A finite stand-in for -inf in rank keys: a confidence of -inf (e.g. EOS suppressed by
# `confidence_eos_eot_inf`) must still outrank a position that is not eligible at all.
_LOWEST_FINITE = -1e300


def uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """float64 U[0, 1) noise drawn with `generator` (on the generator's device, then moved).
    Per-row generators (`dare.sampling.backend.RowGenerators`) draw row i's noise from row i's own
    generator, so a request's noise does not depend on what it is batched with."""
    if hasattr(generator, "row_uniform"):
        return generator.row_uniform(shape, device)
    gen_device = generator.device if generator is not None else device
    u = torch.rand(shape, dtype=torch.float64, generator=generator, device=gen_device)
    return u.to(device)


def gumbel_argmax_from_uniform(logits: torch.Tensor, u: torch.Tensor, temperature: float) -> torch.Tensor:
    """argmax(logits / T + Gumbel(u)) over the last dim, in the dtype of the inputs.

    Equivalent to LLaDA's `argmax(exp(logits) / (-log u)^T)` (take the log and divide by T) but
    without the overflow of `exp`. Callers pass float64 tensors; the float32 version exists only to
    show, in tests, what float32 noise changes.
    """
    gumbel = -torch.log(-torch.log(u))
    return (logits / temperature + gumbel).argmax(-1)


def gumbel_argmax(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """Sample from softmax(logits / T) by Gumbel-max with float64 noise; T = 0 is argmax.
    logits `[..., V]` -> ids `[...]`."""
    if temperature == 0:
        return logits.argmax(-1)
    u = uniform(tuple(logits.shape), generator, logits.device)
    return gumbel_argmax_from_uniform(logits.double(), u, temperature)


def filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set logits outside the top-k / nucleus (top-p) to -inf (Dream's and SDAR's filters).
    The most likely token always survives. logits `[..., V]` float64."""
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token once the mass strictly before it already exceeds top_p (keeps the first)
        drop_sorted = (probs.cumsum(-1) - probs) > top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, -math.inf)
    return logits


def sample_tokens(
    logits: torch.Tensor, temperature: float, top_k: int, top_p: float, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dream / SDAR token sampling: temperature, top-k, top-p, then a categorical draw (argmax at
    T = 0). logits `[..., V]` float64 -> (ids `[...]`, probs `[..., V]` of the filtered, tempered
    distribution, which Dream's and SDAR's confidences are read from)."""
    if temperature > 0:
        logits = logits / temperature
    logits = filter_top_k_top_p(logits, top_k, top_p)
    probs = logits.softmax(-1)
    ids = gumbel_argmax(logits, 1.0, generator) if temperature > 0 else probs.argmax(-1)
    return ids, probs


def token_probability(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """softmax(logits)[ids] in float64: logits `[..., V]`, ids `[...]` -> `[...]`."""
    return logits.double().log_softmax(-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1).exp()


# ---------------------------------------------------------------------------------------------
# Which positions to unmask this step
# ---------------------------------------------------------------------------------------------


def _ranks(conf: torch.Tensor, eligible: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank of every position by confidence, eligible ones first (0 = most confident; ties go to
    the left-most position). Returns (rank `[N, L]`, sorted keys `[N, L]`)."""
    key = torch.where(eligible, torch.nan_to_num(conf.double(), nan=_LOWEST_FINITE, neginf=_LOWEST_FINITE), -math.inf)
    sorted_key, order = key.sort(dim=-1, descending=True, stable=True)
    positions = torch.arange(key.shape[-1], device=key.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(-1, order, positions)
    return rank, sorted_key


def topk_transfer(conf: torch.Tensor, eligible: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The `k[n]` most confident eligible positions of every row. conf `[N, L]`, k `[N]` -> bool `[N, L]`."""
    rank, _ = _ranks(conf, eligible)
    return eligible & (rank < k[:, None])


def threshold_transfer(conf: torch.Tensor, eligible: torch.Tensor, threshold: float) -> torch.Tensor:
    """Fast-dLLM parallel decoding: every eligible position with conf >= threshold, and always the
    most confident one (so each step makes progress)."""
    rank, _ = _ranks(conf, eligible)
    return eligible & ((conf >= threshold) | (rank == 0))


def factor_transfer(conf: torch.Tensor, eligible: torch.Tensor, factor: float) -> torch.Tensor:
    """Factor rule: sort confidences descending and accept rank r (1-based) while
    c_r >= 1 - factor / (r + 1); rank 1 always. Thresholds rise with r while sorted confidences
    fall, so the accepted set is a prefix of the ranking."""
    rank, sorted_key = _ranks(conf, eligible)
    r = torch.arange(1, conf.shape[-1] + 1, device=conf.device, dtype=torch.float64)
    ok = sorted_key >= 1.0 - factor / (r + 1.0)  # [N, L] over ranks
    ok[:, 0] = True
    n_accept = ok.long().cumprod(-1).sum(-1)  # length of the accepted prefix, [N]
    return eligible & (rank < n_accept[:, None])


def parallel_transfer(
    conf: torch.Tensor, eligible: torch.Tensor, threshold: float | None, factor: float | None
) -> torch.Tensor:
    """Fast-dLLM's parallel decoding: the threshold rule when `threshold` is set, else the factor rule."""
    if threshold is not None:
        return threshold_transfer(conf, eligible, threshold)
    return factor_transfer(conf, eligible, factor)


def sample_positions(
    conf: torch.Tensor,
    eligible: torch.Tensor,
    k: torch.Tensor,
    temperature: float,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Draw `k[n]` eligible positions without replacement from softmax(conf / temperature)
    (Dream's `alg_temp`), by Gumbel-top-k in float64."""
    u = uniform(tuple(conf.shape), generator, conf.device)
    key = conf.double() / temperature - torch.log(-torch.log(u))
    return topk_transfer(key, eligible, k)


# ---------------------------------------------------------------------------------------------
# Schedules: how many tokens a step unmasks
# ---------------------------------------------------------------------------------------------


def split_evenly(total: int, parts: int) -> list[int]:
    """`total` split into `parts` counts, the remainder going to the earliest parts
    (LLaDA's `get_num_transfer_tokens`; also how `steps` are split over blocks)."""
    base, rem = divmod(total, parts)
    return [base + (i < rem) for i in range(parts)]


def linear_step_count(remaining: torch.Tensor, step: int, num_steps: int) -> torch.Tensor:
    """Tokens to unmask now so that `remaining` masks `[N]` are spread evenly over the steps left.

    ceil(remaining / steps_left) reproduces `split_evenly(n, num_steps)` exactly when applied step
    by step (remainder first), and still finishes on time when a step was taken by something else
    (a forced first token, a row that stopped early).
    """
    left = max(num_steps - step, 1)
    return torch.div(remaining + left - 1, left, rounding_mode="floor")


def ascending_step_count(remaining: torch.Tensor, step: int, num_steps: int) -> torch.Tensor:
    """ASS (ascending step size, CJ-GRPO, arXiv 2509.23924): step i unmasks 2^i tokens and the
    last step everything left, so a block of B tokens takes floor(log2 B) steps (B = 8: 1, 2, 5;
    B = 16: 1, 2, 4, 9). Capped by `remaining` `[N]` (a row that ran short of masks takes the rest)."""
    if step >= num_steps - 1:
        return remaining.clone()
    return torch.clamp(remaining, max=2**step)


def ascending_steps(block_length: int) -> int:
    """The steps ASS takes for a block: floor(log2(block_length))."""
    return block_length.bit_length() - 1


def linear_progress(step: int, num_steps: int) -> float:
    """EOSER's position in a block of evenly sized steps: step / (num_steps - 1), in [0, 1]."""
    return step / (num_steps - 1) if num_steps > 1 else 1.0


def ascending_progress(step: int, num_steps: int) -> float:
    """EOSER's position in an ASS block: the share of a 2^S-token block unmasked after step i,
    (2^(i+1) - 1) / 2^S (the official `ass_sampling`; it never reaches 1)."""
    return (2 ** (step + 1) - 1) / 2**num_steps if num_steps > 1 else 1.0


def end_confidence_factor(gamma: tuple[float, float], progress: float) -> float:
    """EOSER's factor on an end token's confidence: gamma_min + (gamma_max - gamma_min) * progress,
    so early steps (progress 0) reject EOS most and the last ones least."""
    low, high = gamma
    return low + (high - low) * progress


@dataclass(frozen=True)
class StepSchedule:
    """How many tokens each step of a fixed-count block unmasks (`SamplingConfig.schedule`).

    count(remaining [N], step, num_steps) -> [N]; progress(step, num_steps) -> EOSER's
    interpolation point in [0, 1]; steps_per_block(block_length) -> the step count the schedule
    needs per block, or None when any count >= 1 works."""

    count: Callable[[torch.Tensor, int, int], torch.Tensor]
    progress: Callable[[int, int], float]
    steps_per_block: Callable[[int], int | None]


STEP_SCHEDULES: Registry[StepSchedule] = Registry("step schedule")
STEP_SCHEDULES.register("linear", StepSchedule(linear_step_count, linear_progress, lambda block_length: None))
STEP_SCHEDULES.register("ascending", StepSchedule(ascending_step_count, ascending_progress, ascending_steps))


def dream_timesteps(num_steps: int, eps: float) -> list[float]:
    """Dream's time grid linspace(1, eps, steps + 1), in float64."""
    return torch.linspace(1.0, eps, num_steps + 1, dtype=torch.float64).tolist()


def dream_step_count(remaining: torch.Tensor, step: int, num_steps: int, eps: float) -> torch.Tensor:
    """Dream's count int(n_mask * (1 - s/t)) at step i (t = ts[i], s = ts[i+1]); everything left at
    the last step. Per row (upstream averages the mask count over the batch, which would make a
    row's result depend on its batch-mates)."""
    if step >= num_steps - 1:
        return remaining.clone()
    ts = dream_timesteps(num_steps, eps)
    t, s = ts[step], ts[step + 1]
    return torch.floor(remaining.double() * (1.0 - s / t)).long()


def planned_counts(rule: str, total: int, num_steps: int, eps: float = 1e-3, first_step: int = 0) -> list[int]:
    """The schedule a fixed-count rule follows for one block that starts with `total` masks:
    one count per step from `first_step` (zero counts included). `rule` is "dream" or a
    `STEP_SCHEDULES` name ("linear", "ascending")."""
    if rule == "dream":
        count = lambda remaining, step, num_steps: dream_step_count(remaining, step, num_steps, eps)  # noqa: E731
    elif rule in STEP_SCHEDULES:
        count = STEP_SCHEDULES.get(rule).count
    else:
        raise ValueError(f"rule must be 'dream' or one of {STEP_SCHEDULES.names()}, got {rule!r}")
    counts, remaining = [], torch.tensor([total])
    for step in range(first_step, num_steps):
        k = torch.minimum(count(remaining, step, num_steps), remaining)
        counts.append(int(k))
        remaining = remaining - k
    return counts


__all__ = [
    "STEP_SCHEDULES",
    "StepSchedule",
    "ascending_progress",
    "ascending_step_count",
    "ascending_steps",
    "dream_step_count",
    "dream_timesteps",
    "end_confidence_factor",
    "factor_transfer",
    "filter_top_k_top_p",
    "gumbel_argmax",
    "gumbel_argmax_from_uniform",
    "linear_progress",
    "linear_step_count",
    "parallel_transfer",
    "planned_counts",
    "sample_positions",
    "sample_tokens",
    "split_evenly",
    "threshold_transfer",
    "token_probability",
    "topk_transfer",
    "uniform",
]
