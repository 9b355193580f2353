"""wd1: weighted likelihood, no ratio, for diffusion LMs (Tang et al., "wd1: Weighted Policy
Optimization for Reasoning in Diffusion Language Models", arXiv 2507.08838; official code
xiaohangt/wd1 `wd1/trainers/rev_grpo_trainer.py`, trainer_type `wll_d1_neg`).

Per group g (the G completions of one prompt), with A_i = r_i - mean_g(r) (`advantage:
grpo_mean`) and S_i = sum over o_i's tokens of d1's one-step estimate of log pi_theta (completion
fully masked, prompt masked with p_mask_prompt):

    w+_i = softmax_g(A)_i            w-_i = softmax_g(-A)_i
    L_g  = -sum_i w+_i S_i + sum_i w-_i S_i
    L    = mean over the groups of the micro-batch of L_g

Only the current policy appears: no old policy, no ratio, no clipping, no reference (the official
`wll_d1_neg` loss reads none of them). A completion above its group's average gets most of w+ and
its likelihood rises; one below gets most of w- and its likelihood falls. Each rollout serves `mu`
updates, each with a fresh d1 mask (the official `num_iterations` mask seeds).

The official softmax runs over one device's batch, which its recipe makes exactly one group (6);
here it runs over each group of the micro-batch (`group_index`), so a recipe must keep groups
whole in a micro-batch (checked at load).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from dare.algorithms.base import Algorithm, register_algorithm, row_generators
from dare.algorithms.rollout import RolloutSpec
from dare.diffusion.estimators import NoisePlan, build_estimator
from dare.diffusion.rl_registry import POLICY_LOSSES, register_policy_loss
from dare.errors import RecipeError
from dare.models.spec import ReferenceFn

PLAN_PREFIX = "plan."


@register_policy_loss("wd1")
def wd1_loss(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    config: Any = None,
    rollout_is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """wd1's loss of ONE group: -sum_i softmax(A)_i S_i + sum_i softmax(-A)_i S_i.

    verl's `PolicyLossFn` signature; `old_log_prob`, `loss_agg_mode`, `config` and
    `rollout_is_weights` are unused (no ratio; sequence sums as the official code).

    Args:
        log_prob: `[B, L]` per-token estimates of the current policy (zero outside the response).
        advantages: `[B, L]` (or `[B, 1]`): each row's advantage on its response tokens.
        response_mask: `[B, L]`.

    Returns:
        (scalar loss, `actor/pg_loss`, `actor/wd1_seq_logp_mean`, `actor/wd1_pos_weight_max`).
    """
    mask = response_mask.to(log_prob.dtype)
    seq_logp = (log_prob * mask).sum(-1)  # [B, L] -> [B], S_i
    adv = (advantages.expand_as(log_prob) * mask).sum(-1) / mask.sum(-1).clamp(min=1)  # [B], the row's A_i
    w_pos, w_neg = torch.softmax(adv, 0), torch.softmax(-adv, 0)  # [B] each, over the group
    loss = -(w_pos * seq_logp).sum() + (w_neg * seq_logp).sum()
    return loss, {
        "actor/pg_loss": loss.detach().item(),
        "actor/wd1_seq_logp_mean": seq_logp.detach().mean().item(),
        "actor/wd1_pos_weight_max": w_pos.max().item(),
    }


@dataclass
class WD1Args(RolloutSpec):
    # prompt tokens masked with this probability in d1's one-step estimate
    p_mask_prompt: float = 0.15
    # a registered policy loss applied per group (dare.diffusion.rl_registry.POLICY_LOSSES)
    policy_loss: str = "wd1"

    def validate(self, key: str, file: Any) -> None:
        super().validate(key, file)
        if not 0 <= self.p_mask_prompt < 1:
            raise RecipeError(file, f"{key}.p_mask_prompt", f"must be in [0, 1), got {self.p_mask_prompt!r}")
        if self.policy_loss not in POLICY_LOSSES:
            raise RecipeError(file, f"{key}.policy_loss", POLICY_LOSSES.unknown_message(self.policy_loss))


@register_algorithm
class WD1(Algorithm):
    name = "wd1"
    kind = "rl"
    required_batch_keys = ("input_ids", "attention_mask", "response_mask", "advantages", "noise_seed", "group_index")
    Args = WD1Args

    def __init__(self, args: WD1Args, spec) -> None:
        super().__init__(args, spec)
        self.estimator = build_estimator("d1", p_mask_prompt=args.p_mask_prompt)
        self.loss = POLICY_LOSSES.get(args.policy_loss)
        self.loss_config = self.loss.config(args)

    @property
    def updates_per_step(self) -> int:
        return self.args.mu

    @classmethod
    def check_recipe(cls, recipe: Any, stage: Any, key: str, file: Any) -> None:
        """Each micro-batch must hold whole groups: the softmax runs over a group."""
        parts = recipe.resources.num_workers * stage.grad_accum
        if stage.batch_size % parts:
            raise RecipeError(
                file,
                f"{key}.batch_size",
                f"wd1 weighs completions within their group, so a micro-batch must hold whole groups: batch_size "
                f"(prompts) must be a multiple of num_workers x grad_accum = {parts}, got {stage.batch_size}",
            )

    def prepare(
        self, model: torch.nn.Module, reference: ReferenceFn | None, batch: dict[str, torch.Tensor]
    ) -> list[dict[str, torch.Tensor]]:
        """One batch per inner update, each with its own d1 mask (from the rows' seeds)."""
        out = []
        for k in range(self.args.mu):
            plan = self.estimator.sample_rows(batch, row_generators(batch["noise_seed"][:, k]))
            out.append({**batch, **plan.to(batch["input_ids"].device).as_tensors(PLAN_PREFIX)})
        return out

    def compute_loss(self, model, batch):
        plan = NoisePlan.from_tensors(batch, PLAN_PREFIX)
        logp, entropy = self.estimator.logp_and_entropy(model, batch, plan, self.spec)  # [B, L] each
        adv, resp = batch["advantages"], batch["response_mask"]
        losses, sums = [], {}
        for g in batch["group_index"].unique():
            rows = batch["group_index"] == g  # [B]
            loss_g, m = self.loss.fn(
                logp[rows].detach(), logp[rows], adv[rows], resp[rows], "token-mean", self.loss_config
            )
            losses.append(loss_g)
            for k, v in m.items():
                sums[k] = sums.get(k, 0.0) + v
        loss = torch.stack(losses).mean()
        metrics = {k: v / len(losses) for k, v in sums.items()}
        r = resp.float()
        metrics["actor/entropy"] = float((entropy * r).sum() / r.sum().clamp(min=1))
        metrics["actor/loss"] = loss.detach().item()
        return loss, metrics


__all__ = ["WD1", "WD1Args", "wd1_loss"]
