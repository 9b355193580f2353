"""CJ-GRPO: GRPO on the decoding trajectory itself (consistency-trajectory GRPO).

Paper: "Taming Masked Diffusion Language Models via Consistency Trajectory Reinforcement Learning
with Fewer Decoding Step", arXiv 2509.23924; official code yjyddq/EOSER-ASS-RL
`cj-grpo/cj_grpo_trainer_eoser_ass.py` (facts from dare's reference notes, algorithms.md §7, and the
third-party re-implementation yjyddq/DARE `verl/workers/actor/llada_dp_actor_cj_grpo.py`).

The rollout records, per response token i, the step k(i) at which the sampler unmasked it
(`decode_step`). The state x_k the sampler saw at step k masks every position with k(i) >= k, so
the policy's probability of step k's action is a product over the tokens u_k it unmasked, and
the optimised trajectory is exactly the sampled one (no one-step or ELBO surrogate):

    logp_i = log p_theta(o_i | x_{k(i)})                              (trajectory replay)
    r_i    = exp(logp_i - logp_old_i)
    L      = 1/K sum_k 1/|u_k| sum_{i in u_k} [ -min(r_i A_i, clip(r_i, 1-eps, 1+eps) A_i)
                                                 + beta KL_k3(theta || ref)_i ]

with |u_k| the tokens unmasked at step k over the whole batch and K the steps that unmasked any
(the per-step token mean, summed over steps and divided by their number, as DARE's actor does:
`loss / steps` per step of a shared schedule). Equation numbers of arXiv 2509.23924 are
unverified here (the paper text was not available); the loss is the one above. A = r - mean of
the group (d1's advantage), eps 0.5, beta 0.04, mu 12, temperature 1.0 (EOSER-ASS-RL
`cj-grpo/slurm_scripts/train.yaml` @0908838). As the official `_get_per_token_logps`, the replay
scores at temperature 1 (logits not divided by the sampling temperature) with the prompt clean.

Deviation: the official loss counts every completion position unmasked at a step, the EOS tail
after the first end id included; dare trains `response_mask` tokens only (the rollout keeps no
step for the tail), as its other GRPO objectives do.

The paper's samplers are options of the llada sampler (`dare.sampling.llada`): ASS
(`schedule: ascending`, K = log2(gen_length) steps, step i unmasking 2^i tokens) and EOSER
(`eos_gamma`, the EOS confidence scaled by a factor rising from 0.01 to 1); the rollout records the
model's unscaled probabilities, so the replay is unchanged. Any dare sampler's trajectory can be
replayed; the replay is exact for
tokens up to the first end id of a row whose later tokens were unmasked after them (the rollout
keeps no step for tokens after the first end id; they are shown as end ids in every state).

Families: all. The replay runs the attention kind's forward (`VIEW_FORWARDS`): LLaDA and Dream
score the whole state (Dream's shift handled by `aligned_logits`); SDAR scores the state as the
noisy half of `[x_t ; x_0]` under the block-diffusion mask, so a token sees its own block's state
and the clean blocks before it, as the block sampler did.

Shapes: B rows, T = P + L sequence (left-padded prompt of P columns, response of L), V vocab,
S steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from dare.algorithms.base import Algorithm, register_algorithm
from dare.algorithms.grpo import GRPO, GRPOArgs
from dare.diffusion.rl_losses import PPOClipConfig, k3_kl, ppo_clip_loss
from dare.diffusion.rl_registry import POLICY_LOSSES, PolicyLossFn
from dare.diffusion.trajectory import trajectory_token_logp
from dare.models.spec import DiffusionSpec, ReferenceFn


def step_mean_weights(decode_step: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """w_i = 1 / (K |u_{k(i)}|): the weights that turn sum_i w_i l_i into
    1/K sum_k mean_{i in u_k} l_i. `[B, T]` -> `[B, T]`, 0 outside the response and undecoded
    tokens (`decode_step < 0`); sums to 1 (0 when no token was decoded)."""
    in_loss = response_mask.bool() & (decode_step >= 0)  # [B, T]
    S = int(decode_step.max().clamp(min=0)) + 1
    at = (decode_step[..., None] == torch.arange(S, device=decode_step.device)) & in_loss[..., None]  # [B, T, S]
    per_step = at.sum((0, 1)).float()  # [S] tokens unmasked at each step, over the batch
    K = (per_step > 0).sum().clamp(min=1)
    return (at.float() / per_step.clamp(min=1)).sum(-1) / K  # [B, T]


def cj_grpo_loss(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    decode_step: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    config: PPOClipConfig | Any,
    ref_log_prob: torch.Tensor | None = None,
    beta: float = 0.0,
    loss_fn: PolicyLossFn = ppo_clip_loss,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The CJ-GRPO loss above from per-token trajectory log-probs.

    Args:
        old_log_prob, log_prob: `[B, T]` replayed log-probs (old policy / current, with grad).
        advantages: `[B, T]` (or `[B, 1]`).
        decode_step: `[B, T]` long, the step that unmasked each token, -1 where none did.
        response_mask: `[B, T]` tokens in the loss.
        config: the policy loss's config (PPO clip: the clip ranges).
        ref_log_prob: `[B, T]` reference log-probs (needed when beta > 0).
        beta: k3 KL coefficient.
        loss_fn: a registered policy loss (`POLICY_LOSSES[...].fn`) with token-mean aggregation
            that multiplies its per-token losses by `rollout_is_weights` (PPO clip does), through
            which the per-step weights enter.

    Returns:
        (scalar loss, metrics of `ppo_clip_loss` plus `actor/kl` when a reference is given and
        `actor/loss`, `actor/trajectory_steps`).
    """
    if beta > 0 and ref_log_prob is None:
        raise ValueError(f"beta={beta} > 0 needs ref_log_prob")
    w = step_mean_weights(decode_step, response_mask)  # [B, T]
    mask = w > 0
    # token-mean of (l * w * n) over the n loss tokens == sum_i w_i l_i
    n = mask.sum().clamp(min=1)
    loss, metrics = loss_fn(old_log_prob, log_prob, advantages, mask, "token-mean", config, w * n)
    if ref_log_prob is not None:
        kl = (k3_kl(log_prob, ref_log_prob) * w).sum()
        metrics["actor/kl"] = kl.detach().item()
        if beta > 0:
            loss = loss + beta * kl
    metrics["actor/loss"] = loss.detach().item()
    metrics["actor/trajectory_steps"] = float(torch.unique(decode_step[mask]).numel())
    return loss, metrics


def response_start(response_mask: torch.Tensor) -> int:
    """The first response column P of an RL batch (prompts are left-padded to one width)."""
    return int(response_mask.bool().any(0).long().argmax())


def replay_log_prob(
    model: torch.nn.Module, spec: DiffusionSpec, batch: dict[str, torch.Tensor], temperature: float
) -> torch.Tensor:
    """Trajectory replay of an RL batch: `[B, T]` log-probs, 0 on the prompt and undecoded tokens."""
    P = response_start(batch["response_mask"])
    ids, steps = batch["input_ids"], batch["decode_step"]
    S = int(steps.max().clamp(min=0)) + 1
    lp = trajectory_token_logp(
        model, spec, ids[:, :P], batch["attention_mask"][:, :P], ids[:, P:], steps[:, P:], S, temperature
    )  # [B, L]
    return torch.cat([lp.new_zeros(lp.shape[0], P), lp], 1)


@register_algorithm
class CJGRPO(GRPO):
    name = "cj_grpo"
    required_batch_keys = ("input_ids", "attention_mask", "response_mask", "advantages", "decode_step")

    @dataclass
    class Args(GRPOArgs):
        advantage: str = "grpo_mean"
        beta: float = 0.04
        clip_eps: float = 0.5

    def __init__(self, args: Any, spec: DiffusionSpec) -> None:
        Algorithm.__init__(self, args, spec)  # no noise estimator: the trajectory is the estimate
        self.policy_loss = POLICY_LOSSES.get(args.policy_loss)
        self.loss_config = self.policy_loss.config(args)

    def replay(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return replay_log_prob(model, self.spec, batch, temperature=1.0)

    def prepare(
        self, model: torch.nn.Module, reference: ReferenceFn | None, batch: dict[str, torch.Tensor]
    ) -> list[dict[str, torch.Tensor]]:
        """mu updates on the same trajectory; the old (mu > 1) and reference replays first."""
        return self.replayed_updates(model, reference, batch, self.replay)

    def compute_loss(self, model, batch):
        logp = self.replay(model, batch)  # [B, T]
        return cj_grpo_loss(
            batch.get("old_log_prob", logp.detach()), logp, batch["advantages"], batch["decode_step"],
            batch["response_mask"], config=self.loss_config, ref_log_prob=batch.get("ref_log_prob"),
            beta=self.args.beta, loss_fn=self.policy_loss.fn,
        )  # fmt: skip


__all__ = ["CJGRPO", "cj_grpo_loss", "replay_log_prob", "response_start", "step_mean_weights"]
