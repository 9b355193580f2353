"""Preference optimisation of masked diffusion LMs: DPO and VRPO with ELBO likelihoods.

A diffusion LM has no tractable log pi(y | x), so DPO (Rafailov et al. 2023, arXiv 2305.18290)
runs on ELBO estimates B_hat (`dare.diffusion.elbo`: n_t stratified mask counts, one mask each):

    s   = (B_theta(y_w) - B_ref(y_w)) - (B_theta(y_l) - B_ref(y_l))      the preference score
    L   = -mean_batch log sigmoid(beta * s)

LLaDA 1.5 (Zhu et al. 2025, "VRPO", arXiv 2505.19223; ml-gsai.github.io/LLaDA-1.5-Demo) shows
that the bias and variance of this loss and of its gradient are bounded by Var(s_hat), and
reduces it with (1) a larger budget n_t, (2) the optimal allocation n_t timesteps x 1 mask each,
(3) antithetic sampling: the policy and the reference are evaluated on the *same* timesteps and
masked sequences, for each of y_w and y_l, so the shared noise cancels in B_theta - B_ref (with
equal weights, s_hat = 0 exactly). Items 2 and 3 cost nothing.

- `vrpo`: shared noise between policy and reference, `num_samples` = n_t (default 4, the
  `mc_num` of the reference VRPO realisation yjyddq/DARE; the paper's budget is unverified).
- `dpo`: the same loss with independent noise for policy and reference and n_t = 1, i.e. the
  naive ELBO-DPO baseline of the paper; the two differ only in the estimator's variance.

Noise plans come from per-row generators seeded by the batch's `noise_seed` (chosen plan, then
rejected plan, then, for `dpo`, the policy's own plans), so a row's noise does not depend on how
the batch is split across workers. The reference is the actor's frozen copy of the policy at the
start of the stage, or the policy with its LoRA adapter disabled.

Metrics (`actor/`): `pref_loss`; `reward_chosen` / `reward_rejected` = beta (B_theta - B_ref) of
y_w / y_l and `reward_margin` = beta s (DPO's implicit rewards); `reward_accuracy` = share of
pairs with s > 0; `elbo_accuracy` = share with B_theta(y_w) > B_theta(y_l); `score_var` (n_t >= 2)
= the sample variance of the n_t single-sample scores s_k of a row divided by n_t, averaged over
rows: the estimated variance of the row's score estimate (an over-estimate under stratified
counts, which make the samples negatively correlated). See docs/preference.md.

The batch (`dare.trainer.preference`, from `collate_preference`): `chosen_input_ids`,
`chosen_attention_mask`, `chosen_response_mask` and the same with `rejected_`, all `[B, L]` with
the same prompt layout, plus `noise_seed [B]`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F

from dare.algorithms.base import Algorithm, register_algorithm, row_generators
from dare.diffusion.elbo import ElboEstimator, elbo_samples
from dare.diffusion.estimators import NoisePlan
from dare.errors import RecipeError
from dare.models.spec import DiffusionSpec, ReferenceFn, model_spec

SIDES = ("chosen", "rejected")
SEQUENCE_KEYS = ("input_ids", "attention_mask", "response_mask")


def side_batch(batch: Mapping[str, torch.Tensor], side: str) -> dict[str, torch.Tensor]:
    """The `input_ids` / `attention_mask` / `response_mask` of one side ("chosen" / "rejected")."""
    return {k: batch[f"{side}_{k}"] for k in SEQUENCE_KEYS}


def pair_batch(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Chosen rows then rejected rows, `[2B, L]`: one forward for both sides."""
    c, r = side_batch(batch, "chosen"), side_batch(batch, "rejected")
    if c["input_ids"].shape != r["input_ids"].shape:
        raise ValueError(
            f"chosen and rejected must share one layout (collate_preference): "
            f"{tuple(c['input_ids'].shape)} vs {tuple(r['input_ids'].shape)}"
        )
    return {k: torch.cat([c[k], r[k]]) for k in SEQUENCE_KEYS}


def sample_pair_plans(
    estimator: ElboEstimator,
    batch: Mapping[str, torch.Tensor],
    generators: Sequence[torch.Generator],
    pair_noise: str = "independent",
) -> dict[str, NoisePlan]:
    """One plan per side, each row's from its own generator: chosen drawn before rejected
    ("independent"), or one plan for both sides ("shared"; the sides share one layout)."""
    chosen = estimator.sample_rows(side_batch(batch, "chosen"), list(generators))
    if pair_noise == "shared":
        return {"chosen": chosen, "rejected": chosen}
    return {"chosen": chosen, "rejected": estimator.sample_rows(side_batch(batch, "rejected"), list(generators))}


def pair_elbo_samples(
    model: torch.nn.Module,
    batch: Mapping[str, torch.Tensor],
    plans: Mapping[str, NoisePlan],
    spec: DiffusionSpec | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Single-sample ELBOs of the chosen and rejected responses, `([B, K], [B, K])`, in one forward."""
    plan = NoisePlan.cat([plans["chosen"], plans["rejected"]])  # [2B, K, L]
    both = elbo_samples(model, pair_batch(batch), plan, spec)  # [2B, K]
    B = batch["chosen_input_ids"].shape[0]
    return both[:B], both[B:]


@dataclass
class PreferenceArgs:
    # DPO temperature: loss = -log sigmoid(beta * preference score)
    beta: float = 0.1
    # n_t: ELBO samples (timesteps, one mask each) per sequence and per model
    num_samples: int = 1
    # noise of y_w vs y_l: independent draws (LLaDA 1.5), or the same timesteps and masked
    # positions for both (common random numbers: lower-variance gradients when the two responses
    # share most tokens, e.g. the built-in pref-<task> pairs; unbiased either way)
    pair_noise: Literal["independent", "shared"] = "independent"
    # weight of an NLL term on the chosen response, -B_theta(y_w) / |y_w| (RPO, Pang et al. 2024,
    # arXiv 2404.19733): keeps the likelihood of y_w from falling; 0 = plain DPO / VRPO
    sft_weight: float = 0.0

    def validate(self, key: str, file: Any) -> None:
        if self.beta <= 0:
            raise RecipeError(file, f"{key}.beta", f"must be > 0, got {self.beta}")
        if self.num_samples < 1:
            raise RecipeError(file, f"{key}.num_samples", f"must be >= 1, got {self.num_samples}")
        if self.sft_weight < 0:
            raise RecipeError(file, f"{key}.sft_weight", f"must be >= 0, got {self.sft_weight}")


class PreferenceOptimization(Algorithm):
    """ELBO-DPO; subclasses fix whether the reference shares the policy's noise."""

    kind = "preference"
    required_batch_keys = tuple(f"{s}_{k}" for s in SIDES for k in SEQUENCE_KEYS) + ("noise_seed",)
    shared_noise: ClassVar[bool]
    PLAN_PREFIX: ClassVar[str] = "plan."

    def __init__(self, args: Any, spec: DiffusionSpec) -> None:
        super().__init__(args, spec)
        self.estimator = ElboEstimator.for_spec(spec, args.num_samples)

    @property
    def needs_reference(self) -> bool:
        return True

    def prepare(
        self, model: torch.nn.Module, reference: ReferenceFn, batch: dict[str, torch.Tensor]
    ) -> list[dict[str, torch.Tensor]]:
        """Draw the reference's plans and the policy's (the same ones under `shared_noise`),
        and store the reference's single-sample ELBOs `ref_elbo_chosen` / `ref_elbo_rejected` `[B, K]`."""
        if reference is None:
            raise ValueError(f"{self.name} needs a reference model (needs_reference is True)")
        device = batch["chosen_input_ids"].device
        generators = row_generators(batch["noise_seed"])

        def draw() -> dict[str, NoisePlan]:
            plans = sample_pair_plans(self.estimator, batch, generators, self.args.pair_noise)
            return {side: p.to(device) for side, p in plans.items()}

        ref_plans = draw()
        plans = ref_plans if self.shared_noise else draw()  # dpo: the generators continued, independent
        with torch.no_grad(), reference() as ref:
            ref_w, ref_l = pair_elbo_samples(ref, batch, ref_plans, self.spec)
        out = {**batch, "ref_elbo_chosen": ref_w, "ref_elbo_rejected": ref_l}
        for side in SIDES:
            out.update(plans[side].as_tensors(f"{side}_{self.PLAN_PREFIX}"))
        return [out]

    def policy_elbos(
        self, model: torch.nn.Module, batch: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The policy's single-sample ELBOs of y_w and y_l `([B, K], [B, K])` under the plans
        `prepare` stored (differentiable)."""
        plans = {side: NoisePlan.from_tensors(batch, f"{side}_{self.PLAN_PREFIX}") for side in SIDES}
        return pair_elbo_samples(model, batch, plans, self.spec)

    def compute_loss(self, model, batch):
        pol_w, pol_l = self.policy_elbos(model, batch)  # [B, K] each
        delta_w = pol_w - batch["ref_elbo_chosen"]  # [B, K]
        delta_l = pol_l - batch["ref_elbo_rejected"]  # [B, K]
        scores = delta_w - delta_l  # [B, K], single-sample preference scores s_k
        score = scores.mean(-1)  # [B], the n_t-sample estimate
        beta = self.args.beta
        loss = -F.logsigmoid(beta * score).mean()
        if self.args.sft_weight > 0:
            n_w = batch["chosen_response_mask"].sum(-1).clamp(min=1)  # [B] response tokens
            nll = -(pol_w.mean(-1) / n_w).mean()
            loss = loss + self.args.sft_weight * nll
        with torch.no_grad():
            metrics = {
                "actor/pref_loss": float(-F.logsigmoid(beta * score.detach()).mean()),
                "actor/reward_chosen": float(beta * delta_w.mean()),
                "actor/reward_rejected": float(beta * delta_l.mean()),
                "actor/reward_margin": float(beta * score.mean()),
                "actor/reward_accuracy": float((score > 0).float().mean()),
                "actor/elbo_accuracy": float((pol_w.mean(-1) > pol_l.mean(-1)).float().mean()),
                "actor/elbo_chosen": float(pol_w.mean()),
                "actor/elbo_rejected": float(pol_l.mean()),
            }
            if self.args.sft_weight > 0:
                metrics["actor/chosen_nll"] = float(nll.detach())
            if scores.shape[1] > 1:
                metrics["actor/score_var"] = float((scores.var(-1) / scores.shape[1]).mean())
        return loss, metrics


@register_algorithm
class VRPO(PreferenceOptimization):
    """VRPO (LLaDA 1.5): shared timesteps and masks for policy and reference, n_t samples."""

    name = "vrpo"
    shared_noise = True

    @dataclass
    class Args(PreferenceArgs):
        num_samples: int = 4


@register_algorithm
class DPO(PreferenceOptimization):
    """ELBO-DPO with independent noise for policy and reference (n_t = 1 by default)."""

    name = "dpo"
    shared_noise = False

    @dataclass
    class Args(PreferenceArgs):
        pass


def preference_accuracy(
    model: torch.nn.Module,
    rows: Sequence[Mapping[str, Any]],
    tokenizer: Any,
    gen_length: int,
    reference: torch.nn.Module | None = None,
    num_samples: int = 16,
    seed: int = 0,
    batch_size: int = 64,
) -> float:
    """Share of preference rows (`prompt`, `chosen`, `rejected`) that `model` ranks correctly
    (0.5 = chance): B(y_w) > B(y_l), or with a `reference` DPO's implicit reward
    B(y_w) - B_ref(y_w) > B(y_l) - B_ref(y_l). Ties count one half, so a policy equal to its
    reference scores exactly 0.5.

    Every ELBO of a row is estimated under one plan (`num_samples` masks, shared by both sides
    and both models, like VRPO's antithetic sampling), so the comparison is not blurred by
    independent mask noise."""
    from dare.data.formatting import collate_preference

    spec = model_spec(model)
    est = ElboEstimator.for_spec(spec, num_samples)
    wins = 0.0
    was_training = model.training
    model.eval()
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        b = collate_preference(chunk, tokenizer, gen_length=gen_length, truncate=True)
        gens = [torch.Generator().manual_seed(seed * 1_000_003 + start + i) for i in range(len(chunk))]
        plans = sample_pair_plans(est, b, gens, "shared")
        with torch.no_grad():
            chosen, rejected = (x.mean(-1) for x in pair_elbo_samples(model, b, plans, spec))  # [B] each
            if reference is not None:
                ref_w, ref_l = (x.mean(-1) for x in pair_elbo_samples(reference, b, plans, spec))
                chosen, rejected = chosen - ref_w, rejected - ref_l
        wins += float((chosen > rejected).sum()) + 0.5 * float((chosen == rejected).sum())
    model.train(was_training)
    return wins / len(rows)


__all__ = [
    "DPO",
    "VRPO",
    "PreferenceArgs",
    "PreferenceOptimization",
    "pair_batch",
    "pair_elbo_samples",
    "preference_accuracy",
    "sample_pair_plans",
    "side_batch",
]
