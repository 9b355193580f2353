"""BGPO: Boundary-Guided Policy Optimization (arXiv 2510.11683; official code
THU-KEG/BGPO, not read; the details below follow the third-party yjyddq/DARE
`verl/trainer/ppo/dllm_core_algos.py::compute_policy_loss_bgpo` and
`verl/workers/actor/llada_dp_actor_bgpo.py`, unverified against the official code; the paper's
equation numbers are unverified too: its text was not available here).

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
the paper's name refers to (`tests/algorithms/test_bgpo.py` checks both).

The registered policy loss `bgpo` has verl's per-token signature: for one sample j, `log_prob`
and `old_log_prob` `[B, L]` carry l_j and l_j^old on every response token (as DARE), the ratio is
formed by the sign of A and handed to PPO's clip (`ppo_clip_loss`, dual clip `clip_ratio_c`),
so the token-mean weights sequences by length. The algorithm `bgpo` (LLaDA, Dream, SDAR) draws
the J samples with the stratified ELBO plan (per block under block attention) and averages the
J per-sample losses. The actor trains through `loss_backward`: view j's forward, its loss / J
backpropagated at once and its graph freed before the next view, so activation memory does not
grow with J (the constant-memory per-sample backward); `compute_loss` is the same objective in
one graph over all J views (`tests/algorithms/test_bgpo.py`: equal gradients, saved-activation
bytes flat in J per sample and growing with J in one graph). DARE forms 1 + Delta as
exp(log(1 + Delta)), NaN for Delta <= -1; dare clamps 1 + Delta at 1e-6 before the log (the
gradient vanishes only there).

Shapes: B batch, J Monte-Carlo ELBO samples, L length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from dare.algorithms.base import register_algorithm
from dare.algorithms.grpo import GRPO, PLAN_PREFIX, ElboGRPOArgs, plan_batches
from dare.diffusion.elbo import elbo_samples
from dare.diffusion.estimators import NoisePlan
from dare.diffusion.rl_losses import PPOClipConfig, ppo_clip_loss
from dare.diffusion.rl_registry import POLICY_LOSSES, PolicyLossInputs, register_policy_loss, verl_policy_loss
from dare.errors import check_fields

BGPO = "bgpo"


def bgpo_ratio(elbo: torch.Tensor, old_elbo: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """Surrogate ratios, elementwise: 1 + Delta where A > 0, exp(Delta) elsewhere.

    Args:
        elbo: per-token-normalised ELBO samples under the current policy (`[B, J]` or `[B, L]`).
        old_elbo: the same samples (same masks) under the rollout policy.
        advantages: broadcastable to `elbo` (`[B, 1]` or `[B, L]`).
    """
    return torch.exp(bgpo_log_ratio(elbo, old_elbo, advantages))


def bgpo_log_ratio(elbo: torch.Tensor, old_elbo: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """log of `bgpo_ratio`: log(1 + Delta) where A > 0 (1 + Delta clamped at 1e-6), Delta elsewhere."""
    delta = elbo - old_elbo
    return torch.where(advantages > 0, torch.log((1.0 + delta).clamp(min=1e-6)), delta)


@register_policy_loss(BGPO, config=PPOClipConfig.from_args)
@verl_policy_loss
def bgpo_loss(x: PolicyLossInputs, config: PPOClipConfig | Any | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """BGPO's loss for one ELBO sample: PPO clip (+ dual clip) of `bgpo_ratio`.

    Args (fields of `x`, then `config`):
        old_log_prob, log_prob: `[B, L]`, the sample's per-token-normalised ELBO (rollout /
            current policy) on every response token.
        advantages: `[B, L]`; response_mask `[B, L]`; loss_agg_mode, config, rollout_is_weights:
            as `ppo_clip_loss` (DARE: verl's clip 0.2, dual clip c = 3, token-mean).
    """
    log_ratio = bgpo_log_ratio(x.log_prob, x.old_log_prob, x.advantages)  # [B, L]
    # PPO's ratio exp(log_prob - old_log_prob) is then exactly the BGPO ratio
    return x.apply(ppo_clip_loss, config, old_log_prob=torch.zeros_like(log_ratio), log_prob=log_ratio)


@register_algorithm
class BGPOAlgorithm(GRPO):
    """Boundary-guided policy optimisation (see the module docstring)."""

    name = "bgpo"
    estimator_name = "elbo"
    backward_per_sample = True  # `loss_backward`: one view's forward and backward at a time

    @dataclass
    class Args(ElboGRPOArgs):
        # DARE recipe/llada/run_bgpo_llada_8b_instruct.sh: verl's grpo advantage, clip 0.2, dual
        # clip 3.0, mc_num 16 (stratified mask counts), no KL (docs/algorithms/bgpo.md)
        advantage: str = "grpo"
        policy_loss: str = BGPO
        clip_ratio_c: float | None = 3.0
        mc_num: int = 16

        def validate(self, key: str, file: Any) -> None:
            super().validate(key, file)
            checks = {"beta": (self.beta == 0, "0: bgpo has no KL term (DARE's recipe runs without one)")}
            check_fields(self, checks, key, file)

    def estimator_args(self) -> dict[str, Any]:
        return {"num_samples": self.args.mc_num, "block_size": self.block_size}

    def _samples(self, model, batch) -> torch.Tensor:
        """Per-token-normalised ELBO samples `[B, J]` under the batch's plan, all J views in one
        forward (one graph)."""
        plan = NoisePlan.from_tensors(batch, PLAN_PREFIX)
        n = batch["response_mask"].sum(-1, keepdim=True).clamp(min=1).float()  # [B, 1]
        return elbo_samples(model, batch, plan, self.spec) / n  # [B, J]

    def _sample(self, model, batch, j: int) -> torch.Tensor:
        """Sample j of `_samples`, `[B, 1]`, from a forward of view j alone."""
        plan = NoisePlan.from_tensors(batch, PLAN_PREFIX)
        view = NoisePlan(plan.prompt_mask, plan.view_masks[:, j : j + 1], plan.weights[:, j : j + 1], plan.t)
        n = batch["response_mask"].sum(-1, keepdim=True).clamp(min=1).float()  # [B, 1]
        # the view's weights carry the plan's 1/J, which elbo_samples' factor (its K = 1) does not undo
        return elbo_samples(model, batch, view, self.spec) * plan.num_views / n  # [B, 1]

    def prepare(self, model, reference, batch):
        """One batch per inner update with its ELBO plan and, when mu > 1, the rollout policy's
        samples under that plan (`old_elbo_samples` `[B, J]`, one view's forward at a time)."""
        out = plan_batches(self.estimator, batch, self.args.mu)
        if self.args.mu > 1:
            with torch.no_grad():
                for it in out:
                    J = it[PLAN_PREFIX + "view_masks"].shape[1]
                    it["old_elbo_samples"] = torch.cat([self._sample(model, it, j) for j in range(J)], 1)
        return out

    def _sample_loss(self, elbo_j, old_j, batch) -> tuple[torch.Tensor, dict[str, float]]:
        """The registered policy loss of one sample: `elbo_j`, `old_j` `[B, 1]` on every response token."""
        mask = batch["response_mask"].bool()
        fn = POLICY_LOSSES.get(self.args.policy_loss).fn
        old_j, elbo_j = old_j.expand_as(mask), elbo_j.expand_as(mask)  # [B, 1] -> [B, L]
        return fn(old_j, elbo_j, batch["advantages"], mask, self.args.loss_agg_mode, self.loss_config, None)

    def compute_loss(self, model, batch):
        """The mean of the J per-sample losses in one graph (memory grows with J; the actor
        trains through `loss_backward`, which gives the same gradient sample by sample)."""
        elbo = self._samples(model, batch)  # [B, J]
        old = batch.get("old_elbo_samples", elbo.detach())
        J = elbo.shape[1]
        loss, metrics = 0.0, {}
        for j in range(J):  # the sum of the per-sample losses, each on its own sample
            lj, mj = self._sample_loss(elbo[:, j : j + 1], old[:, j : j + 1], batch)
            loss = loss + lj / J
            metrics = {k: metrics.get(k, 0.0) + v / J for k, v in mj.items()}
        metrics["actor/elbo_mean"] = float(elbo.detach().mean())
        metrics["actor/loss"] = float(loss.detach())
        return loss, metrics

    def loss_backward(self, model, batch, backward):
        """`compute_loss` sample by sample: view j's forward, its loss / J backpropagated at once
        (its graph freed before the next view's forward), so activation memory is one view's
        whatever J; the gradients sum to `compute_loss`'s (up to float rounding: a forward of B
        rows instead of B*J)."""
        J = batch[PLAN_PREFIX + "view_masks"].shape[1]
        old = batch.get("old_elbo_samples")  # [B, J] when mu > 1, else on-policy
        loss, metrics, elbo_sum = 0.0, {}, 0.0
        for j in range(J):
            elbo_j = self._sample(model, batch, j)  # [B, 1]
            lj, mj = self._sample_loss(elbo_j, old[:, j : j + 1] if old is not None else elbo_j.detach(), batch)
            backward(lj / J, 1.0 / J)
            loss = loss + lj.detach() / J
            metrics = {k: metrics.get(k, 0.0) + v / J for k, v in mj.items()}
            elbo_sum += float(elbo_j.detach().sum())
        metrics["actor/elbo_mean"] = elbo_sum / (J * batch["response_mask"].shape[0])
        metrics["actor/loss"] = float(loss)
        return loss, metrics


__all__ = ["BGPO", "BGPOAlgorithm", "bgpo_log_ratio", "bgpo_loss", "bgpo_ratio"]
