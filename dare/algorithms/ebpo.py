"""EBPO: ELBO-based Block-level Policy Optimization (LLaDA2.1, arXiv 2602.08676).

A block-diffusion policy has no tractable log pi(o | q). EBPO replaces it by a *composite ELBO*:
for N diffusion timesteps t_n (weights w_n = 1/N) and every response block b, mask a subset of
block b and score the masked tokens given the clean earlier blocks (block-causal attention, so
all blocks of one timestep go through ONE forward, the "vectorized likelihood estimation"):

    ELBO_b(t)   = (|b| / m) * sum_{i in M_b} log p_theta(o_i | q, o_{<b}, o_b with M_b masked)
                  m = |M_b| = min(floor(t |b|) + 1, |b|),  M_b a uniform m-subset of block b
    L_theta(o)  = sum_n w_n sum_b ELBO_b(t_n)                                   (composite ELBO)

The ratio is taken ONCE per sequence, on the composite ELBO, and clipped as in PPO:

    rho   = exp(L_theta(o) - L_old(o))
    J     = mean_seq [ min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A) ]       (loss = -J)

(report Eq. 4-5 as cited by yjyddq/DARE `compute_policy_loss_ebpo`; unverified: the equation
numbers were not checked against the report's PDF, which is not in dare's sources.) A is the
sequence's group advantage (outcome reward, GRPO estimator). With mu = 1 the old policy is the
current one and rho = 1.

Matches yjyddq/DARE `verl/trainer/ppo/dllm_core_algos.py` (`_forward_process_ebpo`,
`compute_ebpo_composite_elbo`, `compute_policy_loss_ebpo`) and `ebpo_actor_mixin.py`:
- token term = log p / p_mask with p_mask = m / |b| (DARE's block losses are "NLL/p");
- the clip is applied in the log domain: for A >= 0, -A exp(min(log rho, log(1 + eps_high))),
  for A < 0, -A exp(max(log rho, log(1 - eps_low))), which equals PPO's max(-rho A, -clip(rho) A)
  without overflowing exp on the clipped side;
- the KL to the reference (off in DARE's recipes) is on the composite ELBOs, k2 = (L - L_ref)^2 / 2
  (DARE's default `kl_loss_type` for EBPO); per-token k3 would exp() a whole sequence's difference.
dare's choices (differences): the N timesteps of a block are stratified, t_{n,b} = (u_b + n/N) mod 1
with u_b ~ U[0, 1) per block (DARE stratifies one timestep's levels across blocks and rows); both
give every (n, b) cell a uniform marginal, so the estimate is unbiased either way. Blocks are
response-aligned, as dare's SDAR sampler and block estimators (DARE's default origin is the
compact prompt length). DARE backpropagates through N forwards one at a time via a proxy gradient
on L_theta; dare runs the N views in one forward (memory grows with N).

On a full-attention family (LLaDA, Dream) the response is one block and L_theta is the
l-stratified ELBO of LLaDA / VRPO, with the sequence-level clip. On SDAR (block attention) the
blocks are the model's `block_size`.

Shapes: B batch, N timesteps (views), L length.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from dare.algorithms.base import register_algorithm
from dare.algorithms.grpo import GRPO, PLAN_PREFIX, GRPOArgs
from dare.diffusion.estimators import LogpEstimator, NoisePlan, register_estimator, rl_batch_masks
from dare.diffusion.rl_losses import PPOClipConfig, masked_mean
from dare.diffusion.rl_registry import POLICY_LOSSES, register_policy_loss
from dare.errors import RecipeError

EBPO_LOSS = "ebpo_sequence_clip"

# ---------------------------------------------------------------------------------------------
# The composite ELBO
# ---------------------------------------------------------------------------------------------


def response_block_ids(completion: torch.Tensor, block_size: int | None) -> torch.Tensor:
    """Block index of every completion token, counted from the row's first completion token;
    -1 outside the completion. `block_size` None: the whole completion is block 0. `[B, L]` long."""
    if block_size is not None and block_size < 1:
        raise ValueError(f"block_size must be >= 1 or None, got {block_size}")
    k = completion.long().cumsum(-1) - 1  # [B, L], 0 at each row's first completion token
    ids = k // block_size if block_size is not None else torch.zeros_like(k)
    return torch.where(completion, ids, torch.full_like(ids, -1))


def block_stratified_masks(
    blocks: torch.Tensor, num_timesteps: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """EBPO's corruption of ONE row: for every timestep n and block b, m = min(floor(t |b|) + 1, |b|)
    uniformly chosen tokens of block b masked, t_{n,b} = (u_b + n/N) mod 1.

    Args:
        blocks: `[L]` block ids (-1 outside the completion), from `response_block_ids`.
        num_timesteps: N.
        generator: all draws.

    Returns:
        (masks `[N, L]` bool, inverse masking rates |b|/m on the masked tokens `[N, L]` float32 (0
        elsewhere), levels `[N, num_blocks]` float32).
    """
    L = blocks.shape[0]
    device = blocks.device
    nb = int(blocks.max().item()) + 1 if bool((blocks >= 0).any()) else 0
    masks = torch.zeros(num_timesteps, L, dtype=torch.bool, device=device)
    inv_rate = torch.zeros(num_timesteps, L, dtype=torch.float32, device=device)
    u = torch.rand(nb, generator=generator, device=generator.device).to(device)  # [nb]
    n = torch.arange(num_timesteps, device=device, dtype=torch.float32)  # [N]
    levels = (u[None, :] + n[:, None] / num_timesteps) % 1.0  # [N, nb]
    for b in range(nb):
        pos = (blocks == b).nonzero().squeeze(-1)  # [|b|]
        size = pos.numel()
        for i in range(num_timesteps):
            m = min(int(levels[i, b] * size) + 1, size)
            pick = pos[torch.randperm(size, generator=generator, device=generator.device)[:m].to(device)]
            masks[i, pick] = True
            inv_rate[i, pick] = size / m
    return masks, inv_rate, levels


@register_estimator
class EBPOEstimator(LogpEstimator):
    """N views, each masking part of every response block; `logp` sums to the composite ELBO.

    weights w_{n,i} = (|b| / m_{n,b}) / N on the masked response tokens, so
    `logp(...).sum(-1)` = sum_n (1/N) sum_b ELBO_b(t_n) = L_theta(o). The prompt stays clean.
    """

    name = "ebpo"

    @dataclass(frozen=True)
    class Args:
        num_timesteps: int = 16
        # None: one block (the whole completion; full-attention families)
        block_size: int | None = None

    def sample(self, batch: Mapping[str, torch.Tensor], generator: torch.Generator) -> NoisePlan:
        m = rl_batch_masks(batch)
        blocks = response_block_ids(m.completion, self.args.block_size)  # [B, L]
        N = self.args.num_timesteps
        views, weights, t = [], [], []
        for row in range(blocks.shape[0]):
            masks, inv_rate, levels = block_stratified_masks(blocks[row], N, generator)  # [N, L] each
            views.append(masks)
            weights.append(inv_rate * m.response[row][None, :] / N)  # [N, L]
            t.append(levels.mean() if levels.numel() else levels.new_ones(()))
        return NoisePlan(
            prompt_mask=torch.zeros_like(m.valid),
            view_masks=torch.stack(views),  # [B, N, L]
            weights=torch.stack(weights),  # [B, N, L]
            t=torch.stack(t).float(),  # [B], the mean noise level (a diagnostic)
        )


# ---------------------------------------------------------------------------------------------
# The sequence-level loss
# ---------------------------------------------------------------------------------------------


def sequence_advantages(advantages: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """`[B, L]` outcome advantages (constant over a response) -> `[B]`, the mean over the response."""
    mask = response_mask.to(advantages.dtype)
    return (advantages * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)


def ebpo_sequence_clip(
    old_elbo: torch.Tensor,
    elbo: torch.Tensor,
    advantages: torch.Tensor,
    config: PPOClipConfig,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO clip on the sequence ratio rho = exp(elbo - old_elbo), mean over sequences.

    Args:
        old_elbo: `[B]` composite ELBO under the rollout policy (same noise plan).
        elbo: `[B]` composite ELBO under the current policy (requires grad).
        advantages: `[B]` sequence advantages.
        config: eps_low / eps_high (dual clip is not part of EBPO and is refused).

    Returns:
        (scalar loss, metrics `actor/pg_loss`, `actor/pg_clipfrac`, `actor/pg_clipfrac_lower`,
        `actor/ppo_kl`, `actor/ebpo_log_ratio`).
    """
    if not old_elbo.shape == elbo.shape == advantages.shape or elbo.dim() != 1:
        raise ValueError(
            f"old_elbo, elbo and advantages must all be [B], got {tuple(old_elbo.shape)}, "
            f"{tuple(elbo.shape)}, {tuple(advantages.shape)}"
        )
    if config.clip_ratio_c is not None:
        raise ValueError("EBPO clips the sequence ratio once; clip_ratio_c (dual clip) is not supported")
    log_ratio = (elbo - old_elbo).float()  # [B]
    A = advantages.float()
    log_lo = torch.log1p(torch.tensor(-config.low))
    log_hi = torch.log1p(torch.tensor(config.high))
    # A >= 0: min(rho, 1 + eps_high); A < 0: max(rho, 1 - eps_low), taken on log rho (no overflow)
    eff = torch.where(A >= 0, torch.minimum(log_ratio, log_hi), torch.maximum(log_ratio, log_lo))  # [B]
    loss = (-A * torch.exp(eff)).mean()
    with torch.no_grad():
        lower = (log_ratio < log_lo) & (A < 0)
        upper = (log_ratio > log_hi) & (A > 0)
        metrics = {
            "actor/pg_loss": loss.item(),
            "actor/pg_clipfrac": (lower | upper).float().mean().item(),
            "actor/pg_clipfrac_lower": lower.float().mean().item(),
            "actor/ppo_kl": (-log_ratio).mean().item(),
            "actor/ebpo_log_ratio": log_ratio.mean().item(),
        }
    return loss, metrics


@register_policy_loss(EBPO_LOSS, config=PPOClipConfig.from_args)
def ebpo_policy_loss(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    config: PPOClipConfig | None = None,
    rollout_is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """EBPO's loss in verl's `PolicyLossFn` form: the per-token estimates `[B, L]` (the `ebpo`
    estimator's, whose sum over a row is the composite ELBO) are summed per sequence, the `[B, L]`
    outcome advantages averaged over the response, and `ebpo_sequence_clip` applied to the rows
    that have a response. `loss_agg_mode` is unused (one term per sequence, mean over sequences);
    importance weights are refused."""
    if rollout_is_weights is not None:
        raise ValueError(f"{EBPO_LOSS}: rollout importance weights are not supported")
    if config is not None and not isinstance(config, PPOClipConfig):
        raise TypeError(f"{EBPO_LOSS}: config must be a PPOClipConfig (from the algorithm's Args), got {type(config)}")
    mask = response_mask.bool()
    keep = mask.any(-1)  # [B], rows with a response (an empty one has no ELBO)
    elbo = (log_prob * mask).sum(-1)  # [B, L] -> [B]
    old = (old_log_prob * mask).sum(-1)  # [B]
    adv = sequence_advantages(advantages.expand_as(log_prob).float(), mask)  # [B]
    return ebpo_sequence_clip(old[keep], elbo[keep], adv[keep], config or PPOClipConfig())


def sequence_k2_kl(elbo: torch.Tensor, ref_elbo: torch.Tensor) -> torch.Tensor:
    """k2 = (elbo - ref)^2 / 2 per sequence `[B]` (>= 0, 0 iff equal)."""
    return 0.5 * (elbo - ref_elbo).square()


# ---------------------------------------------------------------------------------------------
# The algorithm
# ---------------------------------------------------------------------------------------------


@register_algorithm
class EBPO(GRPO):
    """EBPO as a GRPO variant: the `ebpo` estimator (block-stratified composite ELBO) and the
    registered `ebpo_sequence_clip` policy loss (one clipped ratio per sequence); the KL to the
    reference, when beta > 0, is k2 on the composite ELBOs. See the module docstring."""

    name = "ebpo"
    estimator_name = "ebpo"

    @dataclass
    class Args(GRPOArgs):
        advantage: str = "grpo"
        clip_eps: float = 0.2
        policy_loss: str = EBPO_LOSS
        # the prompt is never masked (GRPOArgs field, unused by EBPO)
        p_mask_prompt: float = 0.0
        # N diffusion timesteps per sequence (DARE recipes mc_num 16)
        num_timesteps: int = 16

        def validate(self, key: str, file: Any) -> None:
            super().validate(key, file)
            if self.num_timesteps < 1:
                raise RecipeError(file, f"{key}.num_timesteps", f"must be >= 1, got {self.num_timesteps}")
            if self.clip_ratio_c is not None:
                raise RecipeError(file, f"{key}.clip_ratio_c", "EBPO has no dual clip; set null")
            if self.p_mask_prompt != 0:
                raise RecipeError(file, f"{key}.p_mask_prompt", "EBPO never masks the prompt; set 0")

    def estimator_args(self) -> dict[str, Any]:
        block = self.spec.block_size if self.spec.attention == "block" else None
        return {"num_timesteps": self.args.num_timesteps, "block_size": block}

    def compute_loss(self, model, batch):
        plan = NoisePlan.from_tensors(batch, PLAN_PREFIX)
        tok, entropy = self.estimator.logp_and_entropy(model, batch, plan, self.spec)  # [B, L] each
        old = batch.get("old_log_prob", tok.detach())
        resp = batch["response_mask"].bool()
        loss, metrics = POLICY_LOSSES.get(self.args.policy_loss).fn(
            old, tok, batch["advantages"], resp, self.args.loss_agg_mode, self.loss_config, None
        )
        keep = resp.any(-1)
        elbo = tok.sum(-1)  # [B], the composite ELBO L_theta
        if "ref_log_prob" in batch:
            kl = sequence_k2_kl(elbo, batch["ref_log_prob"].sum(-1))[keep].mean()
            metrics["actor/kl"] = kl.item()
            loss = loss + self.args.beta * kl
        metrics["actor/ebpo_elbo"] = elbo.detach()[keep].mean().item()
        metrics["actor/entropy"] = masked_mean(entropy, resp).item()
        metrics["actor/loss"] = loss.item()
        return loss, metrics


__all__ = [
    "EBPO",
    "EBPOEstimator",
    "EBPO_LOSS",
    "block_stratified_masks",
    "ebpo_policy_loss",
    "ebpo_sequence_clip",
    "response_block_ids",
    "sequence_advantages",
    "sequence_k2_kl",
]
