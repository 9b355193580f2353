"""The stratified ELBO of a masked diffusion LM: a Monte-Carlo lower bound on log p(y | x).

For a response y of n tokens (`response_mask`), LLaDA's likelihood estimator
(ML-GSAI/LLaDA `get_log_likelihood.py`; LLaDA 1.5 / VRPO, arXiv 2505.19223) draws a mask count
l ~ U{1..n}, masks l response positions uniformly at random and weights the masked tokens'
log-probs by n / l:

    B(y | x) = E_l E_{M, |M|=l} [ (n / l) sum_{i in M} log p_theta(y_i | x, y with M masked) ] <= log p(y | x)

With K samples ("n_t timesteps, one mask each", the allocation VRPO shows optimal for a fixed
budget) the counts are stratified (`stratified_mask_counts`): they cover 1..n evenly, which lowers
the variance without biasing the estimate.

Block attention (SDAR): the sequence factorises over response-aligned blocks, each a diffusion
of its own given the clean earlier blocks, so the bound is a sum of per-block ELBOs. The counts,
masks and n_k / l_k weights are then drawn per block; the "block" view forward already shows
every noisy block only the clean blocks before it.

The estimator is an ordinary `LogpEstimator` (name `elbo`): `plan = est.sample(batch, g)` draws
the masks once, `est.logp(model, batch, plan)` returns the per-token terms `[B, L]` whose row sum
is the ELBO. Sharing one plan between policy and reference is VRPO's antithetic sampling: the
noise cancels in B_theta - B_ref when the weights are equal.

Shapes: B batch, K samples, L length.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from dare.diffusion.estimators import LogpEstimator, NoisePlan, register_estimator, rl_batch_masks, view_logp
from dare.diffusion.noise import mask_exact_count, response_aligned_positions, stratified_mask_counts
from dare.models.spec import DiffusionSpec, model_spec


def elbo_groups(batch: Mapping[str, torch.Tensor], block_size: int | None) -> torch.Tensor:
    """`[B, L]` long: the ELBO group of each response token (its block, or 0), -1 elsewhere."""
    m = rl_batch_masks(batch)
    if block_size is None:
        return torch.where(m.response, 0, -1)
    prompt_len = m.prompt.sum(-1)  # [B]
    pos = response_aligned_positions(m.valid, prompt_len, block_size)  # [B, L]
    return torch.where(m.response, pos // block_size, -1)


@register_estimator
class ElboEstimator(LogpEstimator):
    """Stratified ELBO with `num_samples` masks per sequence (per block under block attention).

    `plan.weights[b, k, i] = n_g / (l_g K)` on masked response position i of group g in sample k,
    so `logp(...).sum(-1)` is the K-sample average of the ELBO estimate. `plan.t` holds the mean
    mask ratio l / n of the row (a diagnostic)."""

    name = "elbo"

    @dataclass(frozen=True)
    class Args:
        num_samples: int = 1  # n_t: masks (timesteps) per sequence
        block_size: int | None = None  # set for block-attention models (per-block ELBO)

        def __post_init__(self) -> None:
            if self.num_samples < 1:
                raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")
            if self.block_size is not None and self.block_size < 1:
                raise ValueError(f"block_size must be >= 1 or None, got {self.block_size}")

    @classmethod
    def for_spec(cls, spec: DiffusionSpec, num_samples: int) -> ElboEstimator:
        """The estimator matching a model's attention kind."""
        return cls(cls.Args(num_samples, spec.block_size if spec.attention == "block" else None))

    def sample(self, batch: Mapping[str, torch.Tensor], generator: torch.Generator) -> NoisePlan:
        ids = batch["input_ids"]
        B, L = ids.shape
        K = self.args.num_samples
        groups = elbo_groups(batch, self.args.block_size)  # [B, L]
        masks = torch.zeros(B, K, L, dtype=torch.bool, device=ids.device)
        weights = torch.zeros(B, K, L, dtype=torch.float32, device=ids.device)
        ratio = torch.zeros(B, K, dtype=torch.float32, device=ids.device)
        num_groups = int(groups.max().item()) + 1 if bool((groups >= 0).any()) else 0
        for g in range(num_groups):
            eligible = groups == g  # [B, L]
            n = eligible.sum(-1)  # [B]
            counts = stratified_mask_counts(n, K, generator)  # [B, K], in 1..n (0 where n == 0)
            for k in range(K):
                mk = mask_exact_count(eligible, counts[:, k], generator)  # [B, L]
                w = n.float() / counts[:, k].clamp(min=1).float() / K  # [B]
                masks[:, k] |= mk
                weights[:, k] += mk.float() * w[:, None]
                ratio[:, k] += counts[:, k].float()
        n_resp = (groups >= 0).sum(-1).clamp(min=1).float()  # [B]
        return NoisePlan(
            prompt_mask=torch.zeros_like(ids, dtype=torch.bool),
            view_masks=masks,
            weights=weights,
            t=(ratio / n_resp[:, None]).mean(-1),
        )


def elbo_samples(
    model: nn.Module,
    batch: Mapping[str, torch.Tensor],
    plan: NoisePlan,
    spec: DiffusionSpec | None = None,
) -> torch.Tensor:
    """The K single-sample ELBO estimates of each row under an `ElboEstimator` plan, `[B, K]`
    float32 (differentiable); their mean over K is `est.logp(model, batch, plan).sum(-1)`.

    Sample k is `(n / l_k) sum_{i in M_k} log p(y_i | view k)` (summed over blocks under block
    attention). Algorithms that need the spread of the estimate across samples (VRPO's score
    variance) use this instead of `logp`; evaluating two models under one plan gives
    sample-by-sample differences with the shared noise cancelled (VRPO's antithetic sampling)."""
    K = plan.num_views
    per_view = view_logp(model, batch, plan, spec)  # [B, K, L]
    return (plan.weights * per_view).sum(-1) * K  # [B, K, L] -> [B, K]; weights carry 1/K


def sequence_elbo(
    model: nn.Module,
    batch: Mapping[str, torch.Tensor],
    num_samples: int,
    generator: torch.Generator,
    spec: DiffusionSpec | None = None,
) -> torch.Tensor:
    """ELBO of each row's response given the rest of the row, `[B]` float32 (differentiable;
    wrap in `torch.no_grad()` for evaluation)."""

    spec = spec or model_spec(model)
    est = ElboEstimator.for_spec(spec, num_samples)
    plan = est.sample(batch, generator)
    return est.logp(model, batch, plan, spec).sum(-1)


__all__ = ["ElboEstimator", "elbo_groups", "elbo_samples", "sequence_elbo"]
