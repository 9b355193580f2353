"""Policy-gradient losses and group advantages for GRPO-style RL of diffusion LMs.

Pure tensor functions returning `(loss, metrics)` with metric keys namespaced `actor/` and
`reward/`. Log-probabilities come from `dare.diffusion.estimators` (per-token estimates `[B, L]`,
zero outside `response_mask`).

**Policy loss** (`dare_ppo_clip`, registered by `dare.diffusion.rl_registry.register_policy_loss`
in dare's `POLICY_LOSSES` and verl's registry; d1 arXiv 2504.12216 §3, DiffuCoder arXiv
2506.20639 §4): with r_i = exp(logp_i - logp_old_i),

    l_i = -min(r_i A_i, clip(r_i, 1 - eps_low, 1 + eps_high) A_i)                  (PPO clip)
    l_i = min(l_i, -c A_i)   for A_i < 0, if dual clip c = clip_ratio_c is set     (Ye et al. 2019, arXiv 1912.09729)

**KL** to the reference (k3 / "low-var" estimator, Schulman 2020 http://joschu.net/blog/kl-approx.html):

    kl_i = exp(ref_i - logp_i) - (ref_i - logp_i) - 1  >= 0,  = 0 iff ref_i == logp_i

and `rl_loss` = agg(l) + beta * agg(kl), aggregated over response tokens with verl's `agg_loss`
("token-mean": sum(l * mask) / sum(mask) over the micro-batch, as d1 and DiffuCoder;
"seq-mean-token-mean": per-sequence token mean, then the mean over sequences).

**Advantages** (`compute_advantages`): verl's `grpo` (z-score; `norm_adv_by_std_in_grpo=False`
gives Dr.GRPO's r - mean), verl's `rloo` (leave-one-out, DiffuCoder), and d1's `grpo_mean`
(A = r - mean_group(r), the std computed but unused; registered in verl's registry).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from verl.trainer.ppo.core_algos import agg_loss, get_adv_estimator_fn

from dare.diffusion.rl_registry import (
    ADVANTAGES,
    POLICY_LOSSES,
    Advantage,
    PolicyLossInputs,
    register_advantage,
    register_policy_loss,
    verl_policy_loss,
)

DARE_PPO_CLIP = "dare_ppo_clip"
LOSS_AGG_MODES = ("token-mean", "seq-mean-token-mean")
_LOG_RATIO_CLAMP = 20.0  # as verl: exp(20) ~ 5e8, far outside any clip range; avoids inf * 0 = NaN


# ---------------------------------------------------------------------------------------------
# PPO clip policy loss
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PPOClipConfig:
    """Arguments of `ppo_clip_loss`.

    Attributes:
        clip_eps: PPO clip range eps (d1 and DiffuCoder use 0.5).
        clip_eps_low / clip_eps_high: separate lower / upper ranges (None: `clip_eps`), i.e.
            r is clipped to [1 - clip_eps_low, 1 + clip_eps_high] (DAPO's clip-higher).
        clip_ratio_c: dual-clip bound c > 1 for negative advantages (None: off).
        global_batch_info: forwarded to verl's `agg_loss` (`dp_size`, `batch_num_tokens`,
            `global_batch_size`) when a micro-batch must be normalised by global counts.
    """

    clip_eps: float = 0.2
    clip_eps_low: float | None = None
    clip_eps_high: float | None = None
    clip_ratio_c: float | None = None
    global_batch_info: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        for name in ("clip_eps", "clip_eps_low", "clip_eps_high"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise ValueError(f"{name} must be >= 0, got {v}")
        if self.clip_ratio_c is not None and self.clip_ratio_c <= 1.0:
            raise ValueError(f"clip_ratio_c (dual clip) must be > 1, got {self.clip_ratio_c}")

    @property
    def low(self) -> float:
        return self.clip_eps if self.clip_eps_low is None else self.clip_eps_low

    @property
    def high(self) -> float:
        return self.clip_eps if self.clip_eps_high is None else self.clip_eps_high

    @classmethod
    def from_args(cls, args: Any) -> PPOClipConfig:
        """From an algorithm's Args with `clip_eps`, `clip_eps_high`, `clip_ratio_c` (GRPO's)."""
        return cls(clip_eps=args.clip_eps, clip_eps_high=args.clip_eps_high, clip_ratio_c=args.clip_ratio_c)


def _clip_config(config: Any) -> PPOClipConfig:
    """dare's `PPOClipConfig`, or verl's `ActorConfig` (`clip_ratio*`) when verl's actor selects
    `loss_mode=dare_ppo_clip`."""
    if config is None:
        return PPOClipConfig()
    if isinstance(config, PPOClipConfig):
        return config
    info = getattr(config, "global_batch_info", None) or {}
    return PPOClipConfig(
        clip_eps=config.clip_ratio,
        clip_eps_low=config.clip_ratio_low,
        clip_eps_high=config.clip_ratio_high,
        clip_ratio_c=config.clip_ratio_c,
        global_batch_info=tuple(info.items()),
    )


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum(x * mask) / max(sum(mask), 1) `[B, L]` -> scalar."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def _check_agg_mode(loss_agg_mode: str) -> None:
    if loss_agg_mode not in LOSS_AGG_MODES:
        raise ValueError(f"loss_agg_mode must be one of {LOSS_AGG_MODES}, got {loss_agg_mode!r}")


@register_policy_loss(DARE_PPO_CLIP, config=PPOClipConfig.from_args)
@verl_policy_loss
def ppo_clip_loss(
    x: PolicyLossInputs, config: PPOClipConfig | Any | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-token PPO clip (+ optional dual clip) loss, aggregated over response tokens.

        r = exp(logp - logp_old)
        l = max(-r A, -clip(r, 1 - eps_low, 1 + eps_high) A)
        l = min(l, -c A) where A < 0        (dual clip, `clip_ratio_c` = c)

    verl's `PolicyLossFn` signature (`verl_policy_loss`), registered as "dare_ppo_clip"
    (`get_policy_loss_fn`).

    Args (fields of `x`, then `config`):
        old_log_prob: `[B, L]` estimates under the policy that generated the rollout (same plan).
        log_prob: `[B, L]` estimates under the current policy (requires grad).
        advantages: `[B, L]` (or `[B, 1]`, broadcast).
        response_mask: `[B, L]` tokens in the loss.
        loss_agg_mode: "token-mean" | "seq-mean-token-mean".
        config: `PPOClipConfig` (or verl's `ActorConfig`); None: defaults.
        rollout_is_weights: optional `[B, L]` importance weights multiplying the per-token loss.

    Returns:
        (scalar loss, metrics `actor/pg_loss`, `actor/pg_clipfrac`, `actor/pg_clipfrac_lower`,
        `actor/ppo_kl`, `actor/ppo_ratio_mean`, `actor/ppo_ratio_min`, `actor/ppo_ratio_max`).
    """
    _check_agg_mode(x.loss_agg_mode)
    cfg = _clip_config(config)
    mask = x.response_mask.bool()
    advantages = x.advantages.expand_as(x.log_prob)
    log_ratio = (x.log_prob - x.old_log_prob).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)  # [B, L]
    ratio = torch.exp(log_ratio)  # [B, L]
    loss_unclipped = -advantages * ratio
    loss_clipped = -advantages * ratio.clamp(1.0 - cfg.low, 1.0 + cfg.high)
    pg_losses = torch.maximum(loss_unclipped, loss_clipped)  # [B, L]
    clipped = loss_clipped > loss_unclipped  # [B, L], the clip is active
    clipped_lower = torch.zeros_like(clipped)
    if cfg.clip_ratio_c is not None:
        loss_dual = -advantages * cfg.clip_ratio_c
        clipped_lower = (advantages < 0) & (pg_losses > loss_dual)
        pg_losses = torch.where(advantages < 0, torch.minimum(pg_losses, loss_dual), pg_losses)
    if x.rollout_is_weights is not None:
        pg_losses = pg_losses * x.rollout_is_weights
    pg_loss = agg_loss(pg_losses, mask.to(pg_losses.dtype), x.loss_agg_mode, **dict(cfg.global_batch_info))
    with torch.no_grad():
        r = ratio.detach()
        big = torch.finfo(r.dtype).max
        metrics = {
            "actor/pg_loss": pg_loss.detach().item(),
            "actor/pg_clipfrac": masked_mean(clipped.float(), mask).item(),
            "actor/pg_clipfrac_lower": masked_mean(clipped_lower.float(), mask).item(),
            "actor/ppo_kl": masked_mean(-log_ratio.detach(), mask).item(),
            "actor/ppo_ratio_mean": masked_mean(r, mask).item(),
            "actor/ppo_ratio_min": torch.where(mask, r, big).min().item() if mask.any() else 1.0,
            "actor/ppo_ratio_max": torch.where(mask, r, -big).max().item() if mask.any() else 1.0,
        }
    return pg_loss, metrics


# ---------------------------------------------------------------------------------------------
# KL to the reference and the full objective
# ---------------------------------------------------------------------------------------------


def k3_kl(log_prob: torch.Tensor, ref_log_prob: torch.Tensor) -> torch.Tensor:
    """k3 (low-variance) KL estimate per token: exp(ref - logp) - (ref - logp) - 1, `[B, L]`.

    >= 0 with equality iff ref == logp. Unlike verl's `kl_penalty(..., "low_var_kl")`, nothing is
    clamped (verl clamps ref - logp to +-20 and the result to <= 10, which zeros the gradient of
    large deviations); d1 and DiffuCoder use this unclamped form.
    """
    delta = ref_log_prob - log_prob
    return torch.exp(delta) - delta - 1.0


def kl_loss(
    log_prob: torch.Tensor,
    ref_log_prob: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    global_batch_info: dict[str, Any] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Aggregated k3 KL to the reference over response tokens; metrics `actor/kl`, `actor/kl_max`."""
    _check_agg_mode(loss_agg_mode)
    mask = response_mask.bool()
    kl = k3_kl(log_prob, ref_log_prob)  # [B, L]
    loss = agg_loss(kl, mask.to(kl.dtype), loss_agg_mode, **(global_batch_info or {}))
    kl_max = torch.where(mask, kl.detach(), torch.zeros_like(kl)).max().item() if mask.any() else 0.0
    return loss, {"actor/kl": loss.detach().item(), "actor/kl_max": kl_max}


def rl_loss(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    ref_log_prob: torch.Tensor | None = None,
    beta: float = 0.0,
    loss_name: str = DARE_PPO_CLIP,
    config: PPOClipConfig | Any | None = None,
    loss_agg_mode: str = "token-mean",
    rollout_is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """GRPO objective of d1 / coupled-GRPO: policy loss (looked up by `loss_name` in
    `POLICY_LOSSES`) + beta * k3 KL to the reference.

        L = agg_i l_i + beta * agg_i kl_i

    Args:
        old_log_prob, log_prob, advantages, response_mask: `[B, L]`, as `ppo_clip_loss`.
        ref_log_prob: `[B, L]` reference estimates under the same plan (needed when beta > 0).
        beta: KL coefficient (d1 0.04, DiffuCoder 0.01).
        loss_name: a registered policy-loss name ("dare_ppo_clip").
        config: passed to the policy loss.

    Returns:
        (scalar loss, metrics: the policy loss's, `actor/kl` when a reference is given, `actor/loss`).
    """
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if beta > 0 and ref_log_prob is None:
        raise ValueError(f"beta={beta} > 0 needs ref_log_prob")
    pg_loss, metrics = POLICY_LOSSES.get(loss_name).fn(  # an unknown name lists the known losses
        old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config, rollout_is_weights
    )
    loss = pg_loss
    if ref_log_prob is not None:
        info = dict(config.global_batch_info) if isinstance(config, PPOClipConfig) else None
        kl, kl_metrics = kl_loss(log_prob, ref_log_prob, response_mask, loss_agg_mode, info)
        metrics = {**metrics, **kl_metrics}
        if beta > 0:
            loss = loss + beta * kl
    metrics["actor/loss"] = loss.detach().item()
    return loss, metrics


# ---------------------------------------------------------------------------------------------
# Advantages
# ---------------------------------------------------------------------------------------------


def _group_ids(uid: Sequence[Any] | np.ndarray | torch.Tensor) -> np.ndarray:
    """uid as verl's `index`: a 1-D object array."""
    if isinstance(uid, torch.Tensor):
        uid = uid.tolist()
    return np.asarray(list(uid), dtype=object)


@register_advantage("grpo_mean")
def grpo_mean_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray,
    config: Any = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """d1's advantage (arXiv 2504.12216; d1 `diffu_grpo_trainer.py`): A_i = r_i - mean_{j in g(i)} r_j,
    with no std scaling (d1 computes the group std but does not use it). A group of one gets 0.

    verl's advantage-estimator signature: rewards `[B, L]` (summed to a score per row),
    `response_mask [B, L]`, `index` `[B]` group ids -> (advantages `[B, L]`, returns `[B, L]`).
    """
    scores = token_level_rewards.sum(-1).float()  # [B]
    _, inverse = np.unique(np.asarray(index, dtype=str), return_inverse=True)
    g = torch.as_tensor(inverse.reshape(-1), device=scores.device)  # [B] group index
    n = int(g.max()) + 1 if g.numel() else 0
    sums = torch.zeros(n, device=scores.device).index_add(0, g, scores)  # [G]
    counts = torch.zeros(n, device=scores.device).index_add(0, g, torch.ones_like(scores))  # [G]
    adv = (scores - (sums / counts)[g])[:, None] * response_mask  # [B] -> [B, L]
    return adv, adv


# verl's own estimators, under their verl names, with the stage settings each reads
ADVANTAGES.register("grpo", Advantage(get_adv_estimator_fn("grpo"), (("norm_adv_by_std", "norm_adv_by_std_in_grpo"),)))
ADVANTAGES.register("rloo", Advantage(get_adv_estimator_fn("rloo")))


def group_stats(scores: torch.Tensor, uid: Sequence[Any] | np.ndarray | torch.Tensor) -> dict[str, float]:
    """Per-prompt-group reward statistics.

    A group is *zero-variance* when all its scores are equal (incl. a group of one): its
    r - mean advantages are all 0, so it gives no policy-gradient signal.

    Returns `reward/score_mean`, `reward/score_std`, `reward/num_groups`, `reward/zero_std_groups`,
    `reward/zero_std_group_frac`, `reward/group_std_mean`.
    """
    scores = scores.detach().float().cpu()
    ids = _group_ids(uid)
    groups = [scores[torch.as_tensor(ids == u)] for u in dict.fromkeys(ids.tolist())]
    spreads = [float(s.max() - s.min()) for s in groups]
    stds = [float(s.std(unbiased=False)) for s in groups]
    zero = sum(1 for d in spreads if d == 0.0)
    return {
        "reward/score_mean": float(scores.mean()),
        "reward/score_std": float(scores.std(unbiased=False)),
        "reward/num_groups": float(len(groups)),
        "reward/zero_std_groups": float(zero),
        "reward/zero_std_group_frac": zero / max(len(groups), 1),
        "reward/group_std_mean": float(np.mean(stds)) if stds else 0.0,
    }


def compute_advantages(
    name: str,
    scores: torch.Tensor,
    uid: Sequence[Any] | np.ndarray | torch.Tensor,
    response_mask: torch.Tensor,
    **kwargs: Any,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Outcome advantages broadcast over the response, `[B]` -> `[B, L]`, plus group statistics.

    Args:
        name: "grpo" (verl; `norm_adv_by_std_in_grpo=False` for r - mean, `epsilon`), "rloo"
            (verl; A_i = G/(G-1) (r_i - mean_g r)), or "grpo_mean" (d1: r - mean).
        scores: `[B]` sequence rewards.
        uid: `[B]` prompt-group ids (rows with the same id are one group of G generations).
        response_mask: `[B, L]` tokens that carry the advantage.
        kwargs: passed to the verl estimator.

    Returns:
        (advantages `[B, L]` float32, zero outside `response_mask`; metrics of `group_stats`
        plus `actor/adv_mean`, `actor/adv_abs_mean`).
    """
    fn = ADVANTAGES.get(name).fn
    if scores.dim() != 1 or scores.shape[0] != response_mask.shape[0]:
        raise ValueError(f"scores must be [B] with B = {response_mask.shape[0]}, got {tuple(scores.shape)}")
    mask = response_mask.bool()
    # the score at each row's last response token, as verl's token_level_rewards
    last = (mask.long() * torch.arange(mask.shape[1], device=mask.device)).argmax(-1)  # [B]
    rewards = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    rewards[torch.arange(mask.shape[0], device=mask.device), last] = scores.float().to(mask.device)
    rewards = rewards * mask
    adv, _ = fn(token_level_rewards=rewards, response_mask=mask.float(), index=_group_ids(uid), **kwargs)
    adv = adv.float() * mask
    metrics = group_stats(scores, uid)
    per_row = adv.sum(-1) / mask.sum(-1).clamp(min=1)  # [B], the row's advantage
    metrics["actor/adv_mean"] = float(per_row.mean())
    metrics["actor/adv_abs_mean"] = float(per_row.abs().mean())
    return adv, metrics


__all__ = [
    "ADVANTAGES",
    "DARE_PPO_CLIP",
    "LOSS_AGG_MODES",
    "POLICY_LOSSES",
    "PPOClipConfig",
    "compute_advantages",
    "grpo_mean_advantage",
    "group_stats",
    "k3_kl",
    "kl_loss",
    "masked_mean",
    "ppo_clip_loss",
    "rl_loss",
]
