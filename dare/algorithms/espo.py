"""ESPO: ELBO-based Sequence-level Policy Optimization (arXiv 2512.03759; official ESPO code not
read; details from the third-party yjyddq/DARE `verl/trainer/ppo/dllm_core_algos.py`
(`compute_policy_loss_espo`, `compute_espo_kl`, `compute_espo_sequence_elbo`,
`_forward_process_espo`) and `recipe/llada/run_espo_llada_8b_instruct.sh`, unverified against
the paper's own code; the paper's equation numbers are unverified too: its text was not
available here).

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

Registered: the estimator `espo`, the policy loss `espo` (verl's per-token signature; it sums
the per-token estimates to sequence ELBOs and applies PPO's clip to the sequence ratio, mean over
sequences, as DARE's port) and the algorithm `espo` (LLaDA, Dream, SDAR).

Shapes: B batch, K views (2 per sample with variance reduction), L length.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from dare.algorithms.base import register_algorithm
from dare.algorithms.grpo import GRPO, PLAN_PREFIX, GRPOArgs
from dare.diffusion.elbo import elbo_groups
from dare.diffusion.estimators import LogpEstimator, NoisePlan, register_estimator
from dare.diffusion.noise import mask_exact_count, uniform01
from dare.diffusion.rl_losses import PPOClipConfig, ppo_clip_loss
from dare.diffusion.rl_registry import POLICY_LOSSES, register_policy_loss
from dare.errors import check_fields

ESPO = "espo"


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


@register_policy_loss(ESPO, config=PPOClipConfig.from_args)
def espo_policy_loss(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    config: PPOClipConfig | Any | None = None,
    rollout_is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """ESPO's sequence-level clipped objective, the mean over sequences.

    rho_i = exp((sum_l log_prob_il - sum_l old_log_prob_il) / n_i), clipped as PPO's ratio with
    the sequence advantage A_i (the response's mean of `advantages`).

    Args:
        old_log_prob, log_prob: `[B, L]` per-token ELBO terms (row sums = sequence ELBOs) of the
            rollout / current policy under one plan.
        advantages, response_mask: `[B, L]`.
        loss_agg_mode: unused (one term per sequence, averaged, as DARE's port).
        config: `PPOClipConfig` (clip range; a dual clip is refused by the algorithm's Args).
    """
    mask = response_mask.to(log_prob.dtype)
    n = mask.sum(-1, keepdim=True).clamp(min=1)  # [B, 1]
    seq, old = (log_prob * mask).sum(-1, keepdim=True) / n, (old_log_prob * mask).sum(-1, keepdim=True) / n
    adv = (advantages.to(log_prob.dtype) * mask).sum(-1, keepdim=True) / n  # [B, 1]
    w = None if rollout_is_weights is None else (rollout_is_weights * mask).sum(-1, keepdim=True) / n
    # one "token" per sequence: token-mean over [B, 1] is the mean over sequences
    return ppo_clip_loss(old, seq, adv, torch.ones_like(adv, dtype=torch.bool), "token-mean", config, w)


def espo_kl(elbo: torch.Tensor, ref_elbo: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """k2 KL surrogate to the reference, mean_i (ELBO_i - ELBO_ref_i)^2 / (2 n_i), a scalar."""
    return (0.5 * (elbo - ref_elbo).square() / lengths.to(elbo.dtype).clamp(min=1)).mean()


@register_algorithm
class ESPOAlgorithm(GRPO):
    """ELBO-based sequence-level policy optimisation (see the module docstring)."""

    name = "espo"
    estimator_name = "espo"

    @dataclass
    class Args(GRPOArgs):
        # DARE recipe/llada/run_espo_llada_8b_instruct.sh: rloo advantage, clip 0.2, mc_num 2,
        # num_iterations 8 (mu), k2 KL to the reference with beta 0.001 (math)
        advantage: str = "rloo"
        policy_loss: str = ESPO
        clip_eps: float = 0.2
        # Monte-Carlo ELBO draws per sequence and inner update
        mc_num: int = 2
        # average each draw with its complementary view (ESPO's reduce_var)
        reduce_var: bool = True
        # the plan never masks the prompt
        p_mask_prompt: float = 0.0

        def validate(self, key: str, file: Any) -> None:
            super().validate(key, file)
            checks = {
                "mc_num": (self.mc_num >= 1, ">= 1"),
                "clip_ratio_c": (self.clip_ratio_c is None, "null: espo has no dual clip"),
                "p_mask_prompt": (self.p_mask_prompt == 0, "0: espo's ELBO views never mask the prompt"),
            }
            check_fields(self, checks, key, file)

    def estimator_args(self) -> dict[str, Any]:
        block = self.spec.block_size if self.spec.attention == "block" else None
        return {"num_samples": self.args.mc_num, "reduce_var": self.args.reduce_var, "block_size": block}

    def compute_loss(self, model, batch):
        plan = NoisePlan.from_tensors(batch, PLAN_PREFIX)
        logp = self.estimator.logp(model, batch, plan, self.spec)  # [B, L], row sums = ELBO
        old = batch.get("old_log_prob", logp.detach())
        mask = batch["response_mask"]
        loss, metrics = POLICY_LOSSES.get(self.args.policy_loss).fn(
            old, logp, batch["advantages"], mask, self.args.loss_agg_mode, self.loss_config, None
        )
        lengths = mask.sum(-1)
        if "ref_log_prob" in batch:
            kl = espo_kl(logp.sum(-1), batch["ref_log_prob"].sum(-1), lengths)
            metrics["actor/kl"] = float(kl.detach())
            if self.args.beta > 0:
                loss = loss + self.args.beta * kl
        metrics["actor/elbo_mean"] = float((logp.detach().sum(-1) / lengths.clamp(min=1)).mean())
        metrics["actor/loss"] = float(loss.detach())
        return loss, metrics


__all__ = ["ESPO", "ESPOAlgorithm", "EspoEstimator", "espo_kl", "espo_policy_loss", "espo_weights"]
