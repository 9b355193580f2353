"""GRPO for diffusion LMs: d1 (diffu-GRPO) and coupled-GRPO.

Per RL step the trainer samples `num_generations` completions per prompt, scores them, and turns
the scores into group advantages A (verl's estimators). The actor then takes `mu` inner updates;
for inner iteration k the estimator's noise plan is drawn once (per-row seeds) and reused for the
old, reference and current policy:

    r_i = exp(logp_theta(o_i) - logp_old(o_i))                 per response token i
    L   = agg_i [ -min(r_i A, clip(r_i, 1-eps_low, 1+eps_high) A) ] + beta * agg_i KL_k3(theta || ref)

with logp the estimator's per-token value (dare.diffusion.estimators) and agg the token mean over
the batch's response tokens. With mu = 1 the old policy is the current one (ratio exactly 1).

Reference re-sync (`ref_sync_every: N`, `ref_sync_alpha: a`): after every N-th optimizer update
of the stage the frozen reference becomes a * policy + (1 - a) * reference (TRL's
`sync_ref_model` / `ref_model_sync_steps` / `ref_model_mixup_alpha`, the TR-DPO update, which d1
and DiffuCoder configure). N counts optimizer updates, as TRL's global steps do (a trainer step
takes mu of them); the reference log-probs of a step are computed before its updates, so a sync
takes effect from the next step, as in TRL where they are computed at generation time. With LoRA
the reference is the base model with the adapter off, which a sync cannot move: such recipes are
refused (TRL 0.16 with PEFT has no reference model to sync and its callback silently does nothing).

- `d1` (Zhao et al., arXiv 2504.12216; dllm-reasoning/d1): one-step estimator (completion fully
  masked, prompt masked with p_mask_prompt), advantage r - mean_group(r), eps 0.5, beta 0.04.
- `coupled_grpo` (Gong et al., DiffuCoder, arXiv 2506.20639; apple/ml-diffucoder): the coupled
  complementary-mask estimator with t ~ U(t_min, t_max), leave-one-out (rloo) advantage, eps 0.5,
  beta 0.01 (DiffuCoder's recipe; dare's default beta is 0 for speed on CPU, set it in a recipe).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from dare.algorithms.base import Algorithm, register_algorithm, row_generators
from dare.algorithms.rollout import RolloutSpec
from dare.diffusion.estimators import NoisePlan, build_estimator
from dare.diffusion.rl_losses import DARE_PPO_CLIP, rl_loss
from dare.diffusion.rl_registry import POLICY_LOSSES
from dare.errors import RecipeError, check_fields
from dare.models.spec import ReferenceFn

PLAN_PREFIX = "plan."


@dataclass
class GRPOArgs(RolloutSpec):
    # KL coefficient to the reference policy (0 = no reference forward)
    beta: float = 0.0
    clip_eps: float = 0.5
    # asymmetric clipping (DAPO-style); null = clip_eps
    clip_eps_high: float | None = None
    # dual clip for negative advantages; null = off
    clip_ratio_c: float | None = None
    loss_agg_mode: Literal["token-mean", "seq-mean-token-mean"] = "token-mean"
    # a registered policy loss (dare.diffusion.rl_registry.POLICY_LOSSES); its config is built
    # from these Args (PPO clip reads clip_eps, clip_eps_high, clip_ratio_c)
    policy_loss: str = DARE_PPO_CLIP
    p_mask_prompt: float = 0.15
    # move the frozen reference toward the policy after every N-th optimizer update (mu per
    # step); 0 = never (the reference stays the stage's starting policy)
    ref_sync_every: int = 0
    # ref = alpha * policy + (1 - alpha) * ref at a sync (1 = copy; TRL's default mixup is 0.6)
    ref_sync_alpha: float = 1.0

    def validate(self, key: str, file: Any) -> None:
        super().validate(key, file)
        checks = {
            "beta": (self.beta >= 0, ">= 0"),
            "clip_eps": (0 < self.clip_eps < 1, "in (0, 1)"),
            "clip_eps_high": (self.clip_eps_high is None or self.clip_eps_high > 0, "> 0 or null"),
            "clip_ratio_c": (self.clip_ratio_c is None or self.clip_ratio_c > 1, "> 1 or null (dual clip)"),
            "p_mask_prompt": (0 <= self.p_mask_prompt < 1, "in [0, 1)"),
            "ref_sync_every": (self.ref_sync_every >= 0, ">= 0"),
            "ref_sync_alpha": (0 < self.ref_sync_alpha <= 1, "in (0, 1]"),
        }
        check_fields(self, checks, key, file)
        if self.policy_loss not in POLICY_LOSSES:
            raise RecipeError(file, f"{key}.policy_loss", POLICY_LOSSES.unknown_message(self.policy_loss))
        try:
            POLICY_LOSSES.get(self.policy_loss).config(self)
        except (AttributeError, ValueError) as e:
            raise RecipeError(
                file, f"{key}.policy_loss", f"{self.policy_loss!r} does not fit these arguments: {e}"
            ) from None
        if self.ref_sync_every and self.beta == 0:
            raise RecipeError(
                file, f"{key}.ref_sync_every", "syncs the reference policy, but beta is 0 (no reference); set beta > 0"
            )


class GRPO(Algorithm):
    """Shared implementation; subclasses fix the estimator and the defaults."""

    kind = "rl"
    required_batch_keys = ("input_ids", "attention_mask", "response_mask", "advantages", "noise_seed")
    estimator_name: str

    def __init__(self, args: Any, spec) -> None:
        super().__init__(args, spec)
        self.estimator = build_estimator(self.estimator_name, **self.estimator_args())
        self.loss_config = POLICY_LOSSES.get(args.policy_loss).config(args)

    def estimator_args(self) -> dict[str, Any]:
        return {"p_mask_prompt": self.args.p_mask_prompt}

    @property
    def updates_per_step(self) -> int:
        return self.args.mu

    @property
    def needs_reference(self) -> bool:
        return self.args.beta > 0

    @property
    def reference_sync(self) -> tuple[int, float]:
        return self.args.ref_sync_every, self.args.ref_sync_alpha

    @classmethod
    def check_recipe(cls, recipe: Any, stage: Any, key: str, file: Any) -> None:
        if stage.args.ref_sync_every and recipe.model.lora is not None:
            raise RecipeError(
                file,
                f"{key}.ref_sync_every",
                "cannot sync the reference with model.lora: the reference is the base model with the adapter "
                "disabled, which training never changes (TRL with PEFT does not sync either); set "
                "ref_sync_every: 0 or train without LoRA (the reference is then a frozen copy that can be synced)",
            )

    def prepare(
        self, model: torch.nn.Module, reference: ReferenceFn | None, batch: dict[str, torch.Tensor]
    ) -> list[dict[str, torch.Tensor]]:
        """One batch per inner iteration: its noise plan (from the rows' seeds) and, under that
        plan, the old-policy (before any update, when mu > 1) and reference log-probs."""
        out = []
        for k in range(self.args.mu):
            plan = self.estimator.sample_rows(batch, row_generators(batch["noise_seed"][:, k]))
            plan = plan.to(batch["input_ids"].device)
            it = {**batch, **plan.as_tensors(PLAN_PREFIX)}
            with torch.no_grad():
                if self.args.mu > 1:
                    it["old_log_prob"] = self.estimator.logp(model, batch, plan, self.spec)
                if self.needs_reference:
                    with reference() as ref:
                        it["ref_log_prob"] = self.estimator.logp(ref, batch, plan, self.spec)
            out.append(it)
        return out

    def compute_loss(self, model, batch):
        plan = NoisePlan.from_tensors(batch, PLAN_PREFIX)
        logp, entropy = self.estimator.logp_and_entropy(model, batch, plan, self.spec)  # [B, L] each
        old = batch.get("old_log_prob", logp.detach())
        loss, metrics = rl_loss(
            old, logp, batch["advantages"], batch["response_mask"],
            ref_log_prob=batch.get("ref_log_prob"), beta=self.args.beta, loss_name=self.args.policy_loss,
            config=self.loss_config, loss_agg_mode=self.args.loss_agg_mode,
        )  # fmt: skip
        resp = batch["response_mask"].float()
        metrics["actor/entropy"] = float((entropy * resp).sum() / resp.sum().clamp(min=1))
        return loss, metrics


@register_algorithm
class D1(GRPO):
    name = "d1"
    estimator_name = "d1"

    @dataclass
    class Args(GRPOArgs):
        pass


@register_algorithm
class CoupledGRPO(GRPO):
    name = "coupled_grpo"
    estimator_name = "coupled"

    @dataclass
    class Args(GRPOArgs):
        advantage: str = "rloo"
        p_mask_prompt: float = 0.0
        # t ~ U(t_min, t_max); views mask R < t and its complement
        t_min: float = 0.2
        t_max: float = 0.8

        def validate(self, key: str, file: Any) -> None:
            super().validate(key, file)
            if not 0 < self.t_min <= self.t_max < 1:
                raise RecipeError(file, f"{key}.t_min", f"need 0 < t_min <= t_max < 1, got {self.t_min}, {self.t_max}")

    def estimator_args(self) -> dict[str, Any]:
        return {"p_mask_prompt": self.args.p_mask_prompt, "t_min": self.args.t_min, "t_max": self.args.t_max}


__all__ = ["D1", "GRPO", "CoupledGRPO", "GRPOArgs"]
