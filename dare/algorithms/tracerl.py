"""TraceRL: trajectory-aware RL for diffusion LMs, with an optional diffusion value model.

Paper: "Revolutionizing Reinforcement Learning Framework for Diffusion Large Language Models"
(Wang et al.), arXiv 2509.06949; official code Gen-Verse/dLLM-RL @10b4fd1 (`train/rl_llada.py`
trajectory fragments and `collapse_k_unique`; `train/train_sdar_policy.py` policy loss;
`train/train_sdar_value.py` value targets and value loss; `configs/rl_sdar_with_value.yaml`).
Equation numbers of the paper are unverified here (its text was not available); the math below is
the official code's.

**Trajectory.** The rollout records the step k(i) that unmasked token i (`decode_step`). Shrink
merges every `shrink` consecutive distinct steps of a row into one (`shrink_steps`); token i is
then scored in the state that masks every position of its merged step and later ones, which is
the CJ-GRPO replay (`dare.algorithms.cj_grpo.replay_log_prob`) on the merged steps. Each
(row, merged step) pair is one *fragment* (one training row in the official code).

**Policy loss** (`tracerl_policy_loss`), per response token with r = exp(clamp(logp - logp_old, +-10)):

    l_i  = -min(r_i A_i, clip(r_i, 1 - eps, 1 + eps) A_i) + beta k3_i,
    k3_i = exp(-clamp(d_i, +-10)) - 1 + d_i,   d_i = logp_i - logp_old_i       (KL to the OLD policy)
    L    = sum_i l_i / (L_resp * F)

with L_resp the response width and F the batch's fragments (the official code sums each fragment
row's tokens / L_resp and averages over the fragment rows of an optimizer step). eps 0.2, beta 0.01.

**Advantages.** Without a value model, the group z-score of the sequence reward with the
population std, 0 when the group's std is 0 (`tracerl_advantage`, registered as "grpo_pop").
With a value model V (a diffusion LM with a scalar head reading the same fragments), the reward
sits on the tokens of a row's last step and the targets are step-level GAE mapped back to tokens
(`trace_value_targets`):

    r*_t = mean_{i in step t} r_i,   V*_t = mean_{i in step t} V_i
    R*_t = r*_t + gamma R*_{t+1},    A*_t = r*_t - V*_t + gamma V*_{t+1} + gamma lam A*_{t+1}
    R_i  = r_i + gamma R*_{t+1},     A_i  = r_i - V_i + gamma V*_{t+1} + gamma lam A*_{t+1}

(gamma = lam = 1: R_i is the reward and A_i = R_i - V_i). The value loss is PPO's clipped one,
0.5 max((V - R)^2, (V_old + clip(V - V_old, +-eps) - R)^2), normalised as the policy loss.

Wiring: the `tracerl` algorithm below; `use_value_model: true` declares the critic role (a copy
of the policy with a scalar head, `dare.workers.critic`): the RL trainer puts its `values` and the
rows' `scores` in the batch, `prepare` replaces the advantages with the GAE ones, and
`critic_loss` fits the value model. Deviations from dLLM-RL: dare's critic reads the clean
sequence (dLLM-RL's value model reads each token in its fragment's noisy state), and the GAE
advantages are used as they come (whether dLLM-RL normalises them further is unverified).

Shapes: B rows, T = P + L sequence (P prompt columns, L response), S merged steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dare.algorithms.base import CriticSpec, register_algorithm
from dare.algorithms.cj_grpo import CJGRPO, replay_log_prob, response_start
from dare.algorithms.grpo import GRPOArgs
from dare.diffusion.rl_losses import masked_mean
from dare.diffusion.rl_registry import register_advantage
from dare.errors import check_fields

_LOG_RATIO_CLAMP = 10.0  # dLLM-RL clamps the log-ratio (and the KL's) to +-10 "for stability"


def step_ranks(decode_step: torch.Tensor) -> torch.Tensor:
    """Rank of each token's step among its row's distinct steps (0 = the row's first), -1 where
    `decode_step` is -1. `[B, T]` -> `[B, T]`."""
    S = int(decode_step.max().clamp(min=0)) + 1
    present = torch.zeros(decode_step.shape[0], S + 1, dtype=torch.long, device=decode_step.device)
    present.scatter_(1, decode_step.clamp(min=-1) + 1, 1)  # column 0 collects the -1s
    rank = present[:, 1:].cumsum(-1) - 1  # [B, S]
    out = rank.gather(1, decode_step.clamp(min=0))
    return torch.where(decode_step >= 0, out, -1)


def shrink_steps(decode_step: torch.Tensor, shrink: int) -> torch.Tensor:
    """Merge every `shrink` consecutive distinct steps of a row into one step (dLLM-RL's
    `collapse_k_unique`), renumbered 0, 1, ...; -1 stays -1. `[B, T]` -> `[B, T]`."""
    if shrink < 1:
        raise ValueError(f"shrink must be >= 1, got {shrink}")
    ranks = step_ranks(decode_step)
    return torch.where(ranks >= 0, ranks // shrink, -1)


def fragment_count(decode_step: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Number of (row, step) pairs with at least one loss token: the official training rows."""
    steps = torch.where(response_mask.bool() & (decode_step >= 0), decode_step, -1)
    S = int(steps.max().clamp(min=0)) + 1
    present = torch.zeros(steps.shape[0], S + 1, dtype=torch.bool, device=steps.device)
    present.scatter_(1, steps + 1, True)
    return present[:, 1:].sum()


def tracerl_policy_loss(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    num_fragments: torch.Tensor | int,
    response_length: int,
    clip_eps: float = 0.2,
    beta: float = 0.01,
) -> tuple[torch.Tensor, dict[str, float]]:
    """TraceRL's clipped policy loss + beta * k3 KL to the old policy (module docstring).

    Args:
        old_log_prob, log_prob: `[B, T]` replayed log-probs (old policy / current, with grad).
        advantages: `[B, T]` (or `[B, 1]`).
        response_mask: `[B, T]` tokens in the loss.
        num_fragments: F, the (row, step) fragments of the batch.
        response_length: L_resp, the response width.

    Returns:
        (scalar loss, metrics `actor/pg_loss`, `actor/kl`, `actor/pg_clipfrac`, `actor/loss`).
    """
    mask = response_mask.bool()
    d = torch.where(mask, log_prob - old_log_prob, 0.0).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)  # [B, T]
    ratio = d.exp()
    adv = advantages.expand_as(ratio)
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv)  # [B, T]
    denom = float(response_length) * torch.as_tensor(num_fragments, dtype=ratio.dtype).clamp(min=1)
    pg_loss = -(surrogate * mask).sum() / denom
    kl = (torch.exp(-d) - 1.0 + d) * mask  # [B, T], d already clamped: exp(-clamp(d)) as dLLM-RL
    kl_loss = kl.sum() / denom
    loss = pg_loss + beta * kl_loss
    clipped = (ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv < ratio * adv).float()
    metrics = {
        "actor/pg_loss": pg_loss.detach().item(),
        "actor/kl": kl_loss.detach().item(),
        "actor/pg_clipfrac": masked_mean(clipped, mask).item(),
        "actor/ppo_ratio_mean": masked_mean(ratio.detach(), mask).item(),
        "actor/loss": loss.detach().item(),
    }
    return loss, metrics


@register_advantage("grpo_pop")
def tracerl_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray,
    config: Any = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """TraceRL's advantage: (r - mean_g r) / std_g r with the population std, 0 for a group whose
    std is 0 (dLLM-RL `reward/rl_reward.py`, per algorithms.md §7). verl's estimator signature:
    rewards `[B, L]` summed to a score per row, `index` `[B]` group ids -> (adv `[B, L]`, same)."""
    scores = token_level_rewards.sum(-1).float()  # [B]
    _, inverse = np.unique(np.asarray(index, dtype=str), return_inverse=True)
    g = torch.as_tensor(inverse.reshape(-1), device=scores.device)  # [B]
    n = int(g.max()) + 1 if g.numel() else 0
    count = torch.zeros(n, device=scores.device).index_add(0, g, torch.ones_like(scores))  # [G]
    mean = torch.zeros(n, device=scores.device).index_add(0, g, scores) / count  # [G]
    var = torch.zeros(n, device=scores.device).index_add(0, g, (scores - mean[g]) ** 2) / count  # [G]
    std = var.sqrt()[g]  # [B]
    adv = torch.where(std > 0, (scores - mean[g]) / std.clamp(min=1e-12), 0.0)
    adv = adv[:, None] * response_mask
    return adv, adv


def trace_value_targets(
    decode_step: torch.Tensor,
    response_mask: torch.Tensor,
    scores: torch.Tensor,
    values: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token returns and advantages from step-level GAE over each row's trajectory (module
    docstring). The reward sits on the tokens of the row's last step.

    Args:
        decode_step: `[B, T]` (merged) step of each token, -1 where none.
        response_mask: `[B, T]` tokens that take part (trainable).
        scores: `[B]` sequence rewards.
        values: `[B, T]` the old value model's per-token values V_i.
        gamma, lam: discount and GAE lambda (dLLM-RL: 1.0 and 1.0).

    Returns:
        (returns `[B, T]`, advantages `[B, T]`), 0 outside the trainable tokens.
    """
    live = response_mask.bool() & (decode_step >= 0)
    rank = torch.where(live, step_ranks(torch.where(live, decode_step, -1)), -1)  # [B, T]
    S = int(rank.max().clamp(min=0)) + 1
    at = (rank[..., None] == torch.arange(S, device=rank.device)).float()  # [B, T, S]
    count = at.sum(1).clamp(min=1)  # [B, S]
    last = rank.max(-1, keepdim=True).values  # [B, 1] each row's last step
    r_tok = torch.where(live & (rank == last), scores.float()[:, None], 0.0)  # [B, T]
    r_step = (at * r_tok[..., None]).sum(1) / count  # [B, S]
    v_step = (at * values.float()[..., None]).sum(1) / count  # [B, S]
    # backward recursions over the steps; index S is the terminal 0
    R = torch.zeros(r_step.shape[0], S + 1, device=r_step.device)
    A = torch.zeros_like(R)
    V = torch.cat([v_step, torch.zeros_like(v_step[:, :1])], 1)  # [B, S+1]
    for t in range(S - 1, -1, -1):
        R[:, t] = r_step[:, t] + gamma * R[:, t + 1]
        A[:, t] = r_step[:, t] - V[:, t] + gamma * V[:, t + 1] + gamma * lam * A[:, t + 1]
    nxt = (rank + 1).clamp(min=0)  # [B, T] the next step's index
    returns = r_tok + gamma * R.gather(1, nxt)
    adv = r_tok - values.float() + gamma * V.gather(1, nxt) + gamma * lam * A.gather(1, nxt)
    return returns * live, adv * live


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    response_mask: torch.Tensor,
    num_fragments: torch.Tensor | int,
    response_length: int,
    clip_eps: float = 0.2,
) -> torch.Tensor:
    """PPO's clipped value loss, 0.5 max((V - R)^2, (V_old + clip(V - V_old, +-eps) - R)^2),
    summed over the trainable tokens / (L_resp * F) as the policy loss. `[B, T]` -> scalar."""
    clipped = old_values + (values - old_values).clamp(-clip_eps, clip_eps)
    per_token = 0.5 * torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)
    denom = float(response_length) * torch.as_tensor(num_fragments, dtype=values.dtype).clamp(min=1)
    return (per_token * response_mask).sum() / denom


@register_algorithm
class TraceRL(CJGRPO):
    name = "tracerl"

    @dataclass
    class Args(GRPOArgs):
        advantage: str = "grpo_pop"
        clip_eps: float = 0.2
        # coefficient of the k3 KL to the OLD policy (not a reference: TraceRL keeps none)
        beta: float = 0.01
        # merge every `shrink` consecutive decoding steps of a row into one training fragment
        shrink: int = 1
        # train a value model (the critic role) and use its step-level GAE advantages instead of
        # the group z-score (dLLM-RL configs/*_with_value.yaml)
        use_value_model: bool = False
        # value model AdamW lr (dLLM-RL value_learning_rate 5e-6), weight decay 0, grad clip 1.0
        critic_lr: float = 5.0e-6
        # discount and GAE lambda of the value targets (dLLM-RL gam / lam: 1.0 / 1.0)
        gamma: float = 1.0
        lam: float = 1.0
        # clip range of the value loss (dLLM-RL reuses the policy's eps)
        value_clip_eps: float = 0.2

        def validate(self, key: str, file: Any) -> None:
            super().validate(key, file)
            checks = {
                "shrink": (self.shrink >= 1, ">= 1"),
                "critic_lr": (self.critic_lr > 0, "> 0"),
                "gamma": (0 < self.gamma <= 1, "in (0, 1]"),
                "lam": (0 <= self.lam <= 1, "in [0, 1]"),
                "value_clip_eps": (self.value_clip_eps > 0, "> 0"),
            }
            check_fields(self, checks, key, file)

    @property
    def needs_reference(self) -> bool:
        return False  # beta weighs the KL to the old policy

    @classmethod
    def critic_spec(cls, args: Any) -> CriticSpec | None:
        return CriticSpec(lr=args.critic_lr, weight_decay=0.0, grad_clip=1.0) if args.use_value_model else None

    def value_targets(self, batch: dict[str, torch.Tensor], values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(merged steps, loss mask, returns, advantages) of a batch under the critic's `values`."""
        steps = shrink_steps(batch["decode_step"], self.args.shrink)
        mask = batch["response_mask"].bool() & (steps >= 0)
        R, A = trace_value_targets(steps, mask, batch["scores"], values, self.args.gamma, self.args.lam)
        return steps, mask, R, A

    def prepare(self, model, reference, batch):
        """mu updates on the same (merged) trajectory; with a value model its GAE advantages
        replace the batch's; the old replay first when mu > 1."""
        it = {**batch, "decode_step": shrink_steps(batch["decode_step"], self.args.shrink)}
        if self.args.use_value_model:
            it["advantages"] = self.value_targets(batch, batch["values"])[3]
        if self.args.mu > 1:
            with torch.no_grad():
                it["old_log_prob"] = self.replay(model, it)
        return [it] * self.args.mu

    def compute_loss(self, model, batch):
        logp = replay_log_prob(model, self.spec, batch, temperature=1.0)  # [B, T]
        mask = batch["response_mask"].bool() & (batch["decode_step"] >= 0)
        L = batch["response_mask"].shape[1] - response_start(batch["response_mask"])
        return tracerl_policy_loss(
            batch.get("old_log_prob", logp.detach()), logp, batch["advantages"], mask,
            fragment_count(batch["decode_step"], mask), L, self.args.clip_eps, self.args.beta,
        )  # fmt: skip

    def critic_loss(
        self, values: torch.Tensor, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The clipped value loss toward the returns computed with the pre-update values."""
        old = batch["values"]
        steps, mask, R, _ = self.value_targets(batch, old)
        L = batch["response_mask"].shape[1] - response_start(batch["response_mask"])
        loss = value_loss(values, old, R, mask, fragment_count(steps, mask), L, self.args.value_clip_eps)
        return loss, {"critic/value_loss": loss.detach().item(), "critic/return_mean": masked_mean(R, mask).item()}


__all__ = [
    "TraceRL",
    "fragment_count",
    "shrink_steps",
    "step_ranks",
    "trace_value_targets",
    "tracerl_advantage",
    "tracerl_policy_loss",
    "value_loss",
]
