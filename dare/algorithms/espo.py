"""ESPO: ELBO-based Sequence-level Policy Optimization (arXiv 2512.03759; official ESPO code not
read; details from the third-party yjyddq/DARE `verl/trainer/ppo/dllm_core_algos.py`
(`compute_policy_loss_espo`, `compute_espo_kl`, `compute_espo_sequence_elbo`,
`_forward_process_espo`) and `recipe/llada/run_espo_llada_8b_instruct.sh`, unverified against
the paper's own code).

A diffusion LM has no per-token likelihood to form token ratios from, so ESPO treats the whole
sequence as one action and uses its ELBO as the sequence log-likelihood:

    rho_i = exp( (ELBO_theta(y_i) - ELBO_old(y_i)) / n_i )                 (length-normalised ratio)
    L_pg  = mean_i max(-A_i rho_i, -A_i clip(rho_i, 1 - eps_low, 1 + eps_high))
    L_kl  = mean_i k2(ELBO_theta(y_i) - ELBO_ref(y_i)) / n_i,   k2(x) = x^2 / 2
    L     = L_pg + beta * L_kl

(the KL estimator is applied to the raw sequence ELBO difference, then divided by the length,
as DARE's port of the official code). Advantages: leave-one-out (`rloo`).

The ELBO estimate (`EspoEstimator`, registered as estimator "espo"): per Monte-Carlo sample,
k ~ U{0..n} tokens of the n response tokens are masked (a uniform subset M, p = k / (n + 1)), and
with variance reduction the complementary view masks the other n - k:

    ELBO_hat = 1/2 [ sum_{i in M} log p(y^i | y_{~M}) (n+1)/k  +  sum_{i notin M} log p(y^i | y_M) (n+1)/(n-k) ]

Both halves are unbiased for the masked-diffusion ELBO (each token's context has a uniform number
of other masked tokens, as in the l ~ U{1..n} form); `tests/algorithms/test_espo.py` checks this
by enumeration. Under block attention the draw is per block (the per-block ELBOs sum).

Shapes: B batch, K views (2 per sample with variance reduction), L length.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from dare.diffusion.elbo import elbo_groups
from dare.diffusion.estimators import LogpEstimator, NoisePlan, register_estimator
from dare.diffusion.noise import mask_exact_count, uniform01


def espo_weights(mask: torch.Tensor, eligible: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ESPO's importance weights of one draw, `[B, L]` float64 each: (n+1)/k on the k masked tokens,
    (n+1)/(n-k) on the complement's tokens (n eligible tokens per row; 0 elsewhere).

    The weights are of the two halves separately; their average is ESPO's variance-reduced
    estimate."""
    mask = mask & eligible
    n = eligible.sum(-1, keepdim=True).double()  # [B, 1]
    k = mask.sum(-1, keepdim=True).double()  # [B, 1]
    w_masked = torch.where(mask, (n + 1) / k.clamp(min=1), torch.zeros_like(n))  # [B, L]
    w_comp = torch.where(eligible & ~mask, (n + 1) / (n - k).clamp(min=1), torch.zeros_like(n))  # [B, L]
    return w_masked, w_comp


@register_estimator
class EspoEstimator(LogpEstimator):
    """ESPO's ELBO plan: `num_samples` draws of k ~ U{0..n} per row (per block under block
    attention), each a masked view and, with `reduce_var`, its complement; `logp(...).sum(-1)`
    is the average over draws of the sequence ELBO estimate. The prompt is never masked."""

    name = "espo"

    @dataclass(frozen=True)
    class Args:
        num_samples: int = 2  # mc_num (DARE recipe default 2)
        reduce_var: bool = True  # average with the complementary view
        block_size: int | None = None  # set for block-attention models (per-block draws)

        def __post_init__(self) -> None:
            if self.num_samples < 1:
                raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")

    def sample(self, batch: Mapping[str, torch.Tensor], generator: torch.Generator) -> NoisePlan:
        ids = batch["input_ids"]
        B, L = ids.shape
        J, halves = self.args.num_samples, 2 if self.args.reduce_var else 1
        groups = elbo_groups(batch, self.args.block_size)  # [B, L]
        masks = torch.zeros(B, J, halves, L, dtype=torch.bool, device=ids.device)
        weights = torch.zeros(B, J, halves, L, dtype=torch.float32, device=ids.device)
        ratio = torch.zeros(B, dtype=torch.float32, device=ids.device)
        num_groups = int(groups.max().item()) + 1 if bool((groups >= 0).any()) else 0
        for g in range(num_groups):
            eligible = groups == g  # [B, L]
            n = eligible.sum(-1)  # [B]
            for j in range(J):
                u = uniform01((B,), generator, ids.device).double()  # [B]
                k = (u * (n + 1).double()).floor().long()  # [B], uniform on 0..n
                m = mask_exact_count(eligible, k, generator)  # [B, L]
                w_m, w_c = espo_weights(m, eligible)
                masks[:, j, 0] |= m
                weights[:, j, 0] += (w_m / (halves * J)).float()
                if halves == 2:
                    masks[:, j, 1] |= eligible & ~m
                    weights[:, j, 1] += (w_c / (halves * J)).float()
                ratio += k.float() / (n + 1).clamp(min=1).float() / (J * num_groups)
        return NoisePlan(
            prompt_mask=torch.zeros_like(ids, dtype=torch.bool),
            view_masks=masks.reshape(B, J * halves, L),  # [B, J, H, L] -> [B, K, L]
            weights=weights.reshape(B, J * halves, L),
            t=ratio,
        )


def espo_policy_loss(
    elbo: torch.Tensor,
    old_elbo: torch.Tensor,
    advantages: torch.Tensor,
    lengths: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
) -> tuple[torch.Tensor, dict[str, float]]:
    """ESPO's sequence-level clipped objective, averaged over sequences.

    Args:
        elbo, old_elbo: `[B]` sequence ELBO estimates (current / rollout policy, same plan).
        advantages: `[B]` sequence advantages.
        lengths: `[B]` response lengths n_i (the ratio's normaliser).
    """
    log_ratio = (elbo - old_elbo) / lengths.to(elbo.dtype).clamp(min=1)  # [B]
    ratio = torch.exp(log_ratio.clamp(max=20.0))
    adv = advantages.to(elbo.dtype)
    unclipped, clipped = -adv * ratio, -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(unclipped, clipped).mean()
    with torch.no_grad():
        low = (ratio < 1.0 - clip_low) & (adv < 0)
        high = (ratio > 1.0 + clip_high) & (adv > 0)
        metrics = {
            "actor/pg_loss": float(loss),
            "actor/pg_clipfrac": float((low | high).float().mean()),
            "actor/pg_clipfrac_lower": float(low.float().mean()),
            "actor/ppo_kl": float((-log_ratio).mean()),
            "actor/ppo_ratio_mean": float(ratio.mean()),
        }
    return loss, metrics


def espo_kl(elbo: torch.Tensor, ref_elbo: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """k2 KL surrogate to the reference, mean_i (ELBO_i - ELBO_ref_i)^2 / (2 n_i), a scalar."""
    return (0.5 * (elbo - ref_elbo).square() / lengths.to(elbo.dtype).clamp(min=1)).mean()


__all__ = ["EspoEstimator", "espo_kl", "espo_policy_loss", "espo_weights"]
