"""BGPO: Boundary-Guided Policy Optimization (Lin et al., arXiv 2510.11683; official code
THU-KEG/BGPO, not read; the details below follow the third-party yjyddq/DARE
`verl/trainer/ppo/dllm_core_algos.py::compute_policy_loss_bgpo` and
`verl/workers/actor/llada_dp_actor_bgpo.py`, unverified against the official code).

The ELBO-ratio objective of a diffusion LM, A * exp(ELBO_theta - ELBO_old) per sequence, needs
all n_mc Monte-Carlo ELBO samples in one graph (the exp does not split over samples), so its
memory grows with n_mc. BGPO optimises a lower bound that is *linear* in the samples, so each
sample's term is backpropagated and freed on its own (constant memory in n_mc):

    Delta_j = l_j - l_j^old,   l_j = ELBO sample j / n                     (per-token normalised)
    r_j     = 1 + Delta_j       if A > 0     (tangent of exp at 0: 1 + x <= e^x)
    r_j     = exp(Delta_j)      if A <= 0    (Jensen: mean_j e^{Delta_j} >= e^{mean Delta})
    J_BGPO  = (1/n_mc) sum_j clip-objective(r_j, A)                        (PPO clip, dual clip c)

Both branches make the unclipped surrogate (1/n_mc) sum_j A r_j a lower bound of
A exp(mean_j Delta_j), with equal value and gradient on-policy (Delta = 0): the "boundary"
the paper's name refers to (`tests/algorithms/test_bgpo.py` checks both). The loss per
sequence is aggregated with the response length as weight (token-mean over a response that
carries the sequence value, as DARE). DARE computes r_j = exp(log(1 + Delta_j)), which is NaN
when Delta_j <= -1; dare uses 1 + Delta_j directly (the clip bounds it from below anyway).

Shapes: B batch, J Monte-Carlo ELBO samples.
"""

from __future__ import annotations

import torch


def bgpo_ratio(elbo: torch.Tensor, old_elbo: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """Per-sample surrogate ratios `[B, J]`: 1 + Delta where A > 0, exp(Delta) elsewhere.

    Args:
        elbo: `[B, J]` per-token-normalised ELBO samples under the current policy.
        old_elbo: `[B, J]` the same samples (same masks) under the rollout policy.
        advantages: `[B]` sequence advantages.
    """
    delta = elbo - old_elbo  # [B, J]
    return torch.where(advantages[:, None] > 0, 1.0 + delta, torch.exp(delta.clamp(max=20.0)))


def clipped_objective_loss(
    ratio: torch.Tensor, advantages: torch.Tensor, clip_low: float, clip_high: float, clip_ratio_c: float | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's per-element loss max(-A r, -A clip(r, 1 - low, 1 + high)), with the dual clip
    min(., -c A) for A < 0 (Ye et al., arXiv 1912.09729); `ratio` `[B, J]`, `advantages` `[B]`.

    Returns (loss `[B, J]`, clipped `[B, J]` bool, dual-clipped `[B, J]` bool)."""
    adv = advantages[:, None].to(ratio.dtype)  # [B, 1]
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(unclipped, clipped)  # [B, J]
    dual = torch.zeros_like(loss, dtype=torch.bool)
    if clip_ratio_c is not None:
        dual = (adv < 0) & (loss > -adv * clip_ratio_c)
        loss = torch.where(dual, -adv * clip_ratio_c, loss)
    return loss, clipped > unclipped, dual


def bgpo_loss(
    elbo: torch.Tensor,
    old_elbo: torch.Tensor,
    advantages: torch.Tensor,
    lengths: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    clip_ratio_c: float | None = 3.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """BGPO loss: mean over samples j of sum_b n_b l_bj / sum_b n_b, with l the clipped
    per-sample loss of `bgpo_ratio` (DARE: verl's clip 0.2, dual clip c = 3).

    The loss is a sum of per-sample terms, so calling it on one column of `elbo` at a time
    (divided by J) and backpropagating each gives the same gradient with one sample's graph.

    Args:
        elbo, old_elbo: `[B, J]` per-token-normalised ELBO samples (current / rollout policy).
        advantages: `[B]`.
        lengths: `[B]` response lengths n_b (the aggregation weights).
    """
    if clip_ratio_c is not None and clip_ratio_c <= 1.0:
        raise ValueError(f"clip_ratio_c (dual clip) must be > 1, got {clip_ratio_c}")
    ratio = bgpo_ratio(elbo, old_elbo, advantages)  # [B, J]
    per, clipped, dual = clipped_objective_loss(ratio, advantages, clip_low, clip_high, clip_ratio_c)
    w = lengths.to(per.dtype)[:, None] / lengths.sum().clamp(min=1)  # [B, 1]
    loss = (per * w).sum() / per.shape[1]
    with torch.no_grad():
        metrics = {
            "actor/pg_loss": float(loss),
            "actor/pg_clipfrac": float((clipped.float() * w).sum() / per.shape[1]),
            "actor/pg_clipfrac_lower": float((dual.float() * w).sum() / per.shape[1]),
            "actor/ppo_ratio_mean": float(ratio.mean()),
            "actor/ppo_kl": float((old_elbo - elbo).mean()),
        }
    return loss, metrics


__all__ = ["bgpo_loss", "bgpo_ratio", "clipped_objective_loss"]
