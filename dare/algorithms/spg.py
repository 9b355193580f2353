"""SPG: Sandwiched Policy Gradient (Wang et al., arXiv 2510.09541; facebookresearch/SPG
`spg/spg_trainer.py`; settings from yjyddq/DARE `verl/workers/actor/llada_dp_actor_spg.py`,
`verl/trainer/ppo/dllm_core_algos.py::compute_policy_loss_spg`).

The policy-gradient objective sum_i A_i log pi(y_i) needs log pi, which a masked diffusion LM
cannot compute. SPG replaces it by a bound chosen by the advantage's sign, so the surrogate is a
lower bound of the true objective ("sandwiched"):

    J = sum_i A_i * ( ELBO(y_i)  if A_i > 0  else  EUBO(y_i) )

(unverified: the paper's equation numbers; its text past the abstract was not available here, the
formulas follow algorithms.md §7 and the DARE port)

Both bounds are written per token (divided by the response length n, as SPG's code does) from
the same K masked views z_k of the response, each view masking a set M_k (|M_k| = l_k), with
empirical masked fraction t_k = l_k / n:

    lower = sum_k pi_k (1/l_k) sum_{i in M_k} log p(y^i | z_k)                    (ELBO / n)
    upper = mean_{i masked in some view} (1/beta) log sum_k pi_k 1[i in M_k] p(y^i | z_k)^beta / t_k
                                                                                  (EUBO / n, Renyi form)
    mix   = omega * upper + (1 - omega) * lower                                   (SPG's "mix", omega 0.5)

with pi_k the views' weights (1/K for a Monte-Carlo average). Loss (`spg_loss`):
L = -sum_i n_i A_i s_i / sum_i n_i, with s_i = lower if A_i > 0 else the upper (or mix) value,
A = r - mean_group(r) (`grpo_mean`), no ratio, no clipping, no KL (SPG refuses a KL term: the
reference estimate would depend on the advantage's sign).

What the bounds guarantee (`tests/algorithms/test_spg.py`, exact enumeration on a table model;
docs/algorithms/spg.md): n * lower (in expectation over the views, l ~ U{1..n}) is the masked
diffusion ELBO, <= log p(y) by Jensen over decoding orders. n * upper in expectation is, token by
token, the beta-norm of p(y^i | context) over the uniform-order context, and Hoelder's
inequality makes it >= log p(y) for every beta >= n. For beta < n (SPG uses 1.5 with n = 256)
it is a surrogate, not a guaranteed bound: the enumeration finds sequences where it falls below
log p(y). The paper's own statement of the bound's range of beta is unverified here.

Registered: the estimators `spg_block` (SPG's block-random masking: per view one random block of
the completion partially masked, earlier blocks clean, later blocks masked, the prompt masked with
probability `p_mask_prompt`; the default) and `spg_bounds` (the stratified ELBO plan,
`dare.diffusion.elbo.ElboEstimator`, per block under block attention, no prompt masking), both
with named estimates "lower" and "upper" from one forward of the K = `num_t` views; the policy
loss `spg`; the algorithm `spg` (LLaDA, Dream, SDAR; `views:` picks the estimator). With `mu` > 1
each inner update draws fresh views of the same rollouts (SPG's mu = 4); there is no old policy
to compare with.

Shapes: B batch, K views, L length.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from verl.trainer.ppo.core_algos import agg_loss

from dare.algorithms.base import register_algorithm, row_generators
from dare.algorithms.grpo import GRPO, PLAN_PREFIX, GRPOArgs
from dare.diffusion.elbo import ElboEstimator
from dare.diffusion.estimators import (
    ESTIMATORS,
    NoisePlan,
    build_estimator,
    register_estimator,
    rl_batch_masks,
    view_logp,
)
from dare.diffusion.noise import bernoulli_mask, mask_exact_count, uniform01
from dare.diffusion.rl_registry import POLICY_LOSSES, register_policy_loss
from dare.errors import RecipeError, check_fields
from dare.models.spec import DiffusionSpec

SPG_LOSS = "spg"


def _view_weights(view_probs: torch.Tensor | None, B: int, K: int, like: torch.Tensor) -> torch.Tensor:
    """`[B, K]` weights of the views: given, or 1/K (a Monte-Carlo average)."""
    if view_probs is None:
        return torch.full((B, K), 1.0 / K, dtype=like.dtype, device=like.device)
    return view_probs.to(like.dtype).expand(B, K)


def spg_lower_bound(
    logp: torch.Tensor, view_masks: torch.Tensor, response_mask: torch.Tensor, view_probs: torch.Tensor | None = None
) -> torch.Tensor:
    """SPG's per-token ELBO, `[B]`: sum_k pi_k * mean_{i in M_k} log p(y^i | z_k).

    Args:
        logp: `[B, K, L]` log p(y^i | view k) (any value where not masked).
        view_masks: `[B, K, L]` bool, the positions masked in view k.
        response_mask: `[B, L]` bool, the response tokens.
        view_probs: `[B, K]` (or `[K]`) weights of the views; None: 1/K each.
    """
    B, K, _ = logp.shape
    m = (view_masks & response_mask[:, None]).to(logp.dtype)  # [B, K, L]
    per_view = (logp * m).sum(-1) / m.sum(-1).clamp(min=1)  # [B, K], mean over the view's masked tokens
    return (_view_weights(view_probs, B, K, logp) * per_view).sum(-1)  # [B, K] -> [B]


def spg_upper_bound(
    logp: torch.Tensor,
    view_masks: torch.Tensor,
    response_mask: torch.Tensor,
    beta: float,
    view_probs: torch.Tensor | None = None,
) -> torch.Tensor:
    """SPG's per-token EUBO (Renyi form), `[B]`:
    mean_i (1/beta) log sum_k pi_k 1[i in M_k] p(y^i | z_k)^beta / t_k, with t_k = |M_k| / n.

    Tokens masked in no view carry no estimate and are left out of the mean (as SPG's code).
    The power is taken in log space (logsumexp), so small probabilities do not underflow.
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    B, K, L = logp.shape
    resp = response_mask[:, None]  # [B, 1, L]
    m = view_masks & resp  # [B, K, L]
    n = response_mask.sum(-1).to(logp.dtype)  # [B]
    t = m.sum(-1).to(logp.dtype) / n.clamp(min=1)[:, None]  # [B, K], empirical masked fraction
    log_w = (_view_weights(view_probs, B, K, logp) / t.clamp(min=1e-12)).log()  # [B, K], log(pi_k / t_k)
    terms = torch.where(m, beta * logp + log_w[..., None], torch.full_like(logp, -torch.inf))  # [B, K, L]
    per_token = torch.logsumexp(terms, dim=1) / beta  # [B, K, L] -> [B, L], -inf where never masked
    seen = m.any(1)  # [B, L]
    per_token = torch.where(seen, per_token, torch.zeros_like(per_token))
    return per_token.sum(-1) / seen.sum(-1).clamp(min=1).to(logp.dtype)  # [B]


def spg_sandwich(lower: torch.Tensor, upper: torch.Tensor, advantages: torch.Tensor, mix: float = 0.5) -> torch.Tensor:
    """The log-likelihood surrogate of each sequence, `[B]`: the lower bound where A > 0, else
    mix * upper + (1 - mix) * lower (mix = 1: the pure upper bound, SPG's "eubo"; 0: "elbo")."""
    if not 0.0 <= mix <= 1.0:
        raise ValueError(f"mix must be in [0, 1], got {mix}")
    return torch.where(advantages > 0, lower, mix * upper + (1.0 - mix) * lower)


@register_policy_loss(SPG_LOSS)
def spg_loss(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    config: Any = None,
    rollout_is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """SPG's loss, agg(-A * s) over response tokens: with the sequence surrogate s_i on every
    token of response i, "token-mean" is -sum_i n_i A_i s_i / sum_i n_i (SPG's length weighting).
    No ratio: `old_log_prob` and `config` are unused (verl's policy-loss signature).

    Args:
        log_prob: `[B, L]` surrogates (`spg_sandwich` of the bounds), differentiable.
        advantages, response_mask: `[B, L]`.
    """
    per_token = -advantages.to(log_prob.dtype) * log_prob  # [B, L]
    if rollout_is_weights is not None:
        per_token = per_token * rollout_is_weights
    mask = response_mask.to(log_prob.dtype)
    loss = agg_loss(per_token, mask, loss_agg_mode)
    with torch.no_grad():
        n = mask.sum().clamp(min=1)
        metrics = {
            "actor/pg_loss": float(loss),
            "actor/spg_pos_frac": float(((advantages > 0) * mask).sum() / n),
            "actor/spg_surrogate_mean": float((log_prob * mask).sum() / n),
        }
    return loss, metrics


@register_estimator
class SPGBoundsEstimator(ElboEstimator):
    """SPG's two estimates from one draw of the stratified ELBO plan: `lower` (ELBO / n) and
    `upper` (EUBO / n with power `eubo_beta`), each the row's value on every response token
    `[B, L]` (so a row's token-mean is the per-token bound, its sum the sequence bound). `logp`
    is the lower bound."""

    name = "spg_bounds"
    estimates = ("lower", "upper")

    @dataclass(frozen=True)
    class Args(ElboEstimator.Args):
        eubo_beta: float = 1.5

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.eubo_beta <= 0:
                raise ValueError(f"eubo_beta must be > 0, got {self.eubo_beta}")

    def logp_named(
        self,
        model: nn.Module,
        batch: Mapping[str, torch.Tensor],
        plan: NoisePlan,
        spec: DiffusionSpec | None = None,
    ) -> dict[str, torch.Tensor]:
        resp = batch["response_mask"].bool()
        logp = view_logp(model, batch, plan, spec)  # [B, K, L], one forward for both bounds
        lower = spg_lower_bound(logp, plan.view_masks, resp)  # [B]
        upper = spg_upper_bound(logp, plan.view_masks, resp, self.args.eubo_beta)  # [B]
        return {"lower": lower[:, None] * resp, "upper": upper[:, None] * resp}  # [B] -> [B, L]

    def logp(self, model, batch, plan, spec=None) -> torch.Tensor:
        return self.logp_named(model, batch, plan, spec)["lower"]


@register_estimator
class SPGBlockEstimator(SPGBoundsEstimator):
    """SPG's block-random views (`_forward_process_spg` of the DARE port; algorithms.md §7): per
    view, a block k of the completion (blocks of `block_length` from its first token) is drawn
    uniformly among those holding response tokens; earlier blocks stay clean, later blocks and the
    EOS tail after the response are masked, and block k gets m of its n_k response tokens masked, m ~ U{max(1, floor(min_t n_k)) .. max(that, floor(max_t n_k))}. Prompt
    tokens are masked with probability `p_mask_prompt`. The bounds are `SPGBoundsEstimator`'s
    (t_k = the view's masked fraction of the response).

    Unlike the port, the prompt mask is drawn once per row and shared by its views (a plan holds
    one prompt mask per row)."""

    name = "spg_block"

    @dataclass(frozen=True)
    class Args:
        num_samples: int = 2  # views (SPG's num_t)
        eubo_beta: float = 1.5
        block_length: int = 32
        min_t: float = 0.0
        max_t: float = 1.0
        p_mask_prompt: float = 0.15

        def __post_init__(self) -> None:
            if self.num_samples < 1 or self.block_length < 1:
                raise ValueError(
                    f"num_samples and block_length must be >= 1, got {self.num_samples}, {self.block_length}"
                )
            if not 0.0 <= self.min_t <= self.max_t <= 1.0:
                raise ValueError(f"need 0 <= min_t <= max_t <= 1, got min_t={self.min_t}, max_t={self.max_t}")
            if not 0.0 <= self.p_mask_prompt < 1.0:
                raise ValueError(f"p_mask_prompt must be in [0, 1), got {self.p_mask_prompt}")
            if self.eubo_beta <= 0:
                raise ValueError(f"eubo_beta must be > 0, got {self.eubo_beta}")

    def sample(self, batch: Mapping[str, torch.Tensor], generator: torch.Generator) -> NoisePlan:
        a, m = self.args, rl_batch_masks(batch)
        B, L = m.valid.shape
        device = m.valid.device
        # block of every completion position, counted from the row's first completion token
        block = torch.where(m.completion, (m.completion.cumsum(-1) - 1) // a.block_length, -1)  # [B, L]
        # blocks holding response tokens; the EOS tail after the response is always masked (SPG)
        num_blocks = torch.where(m.response, block, -1).max(-1).values + 1  # [B]
        tail = m.completion & ~m.response  # [B, L]
        views = torch.zeros(B, a.num_samples, L, dtype=torch.bool, device=device)
        for k in range(a.num_samples):
            u = uniform01((B,), generator, device).double()
            kb = (u * num_blocks.double()).floor().long().clamp(min=0)  # [B], uniform block index
            in_kb = (block == kb[:, None]) & m.response  # [B, L]
            n_k = in_kb.sum(-1).double()  # [B]
            lo = (n_k * a.min_t).floor().clamp(min=1)
            hi = torch.maximum((n_k * a.max_t).floor(), lo)
            count = lo + (uniform01((B,), generator, device).double() * (hi - lo + 1)).floor()  # [B], U{lo..hi}
            views[:, k] = (block > kb[:, None]) | tail | mask_exact_count(in_kb, count.long(), generator)
        p = torch.full((B,), a.p_mask_prompt, device=device)
        resp = m.response[:, None]  # [B, 1, L]
        return NoisePlan(
            prompt_mask=bernoulli_mask(m.prompt, p, generator),
            view_masks=views,
            weights=(views & resp).float(),  # nonzero where a bound needs log p
            t=((views & resp).sum(-1).float() / resp.sum(-1).clamp(min=1).float()).mean(-1),
        )


@register_algorithm
class SPG(GRPO):
    """Sandwiched policy gradient (see the module docstring): ELBO for A > 0, the EUBO mix for
    A <= 0, length-weighted -A * bound (policy loss `spg`), no ratio, no KL."""

    name = "spg"

    @property
    def estimator_name(self) -> str:
        return self.args.views

    @dataclass
    class Args(GRPOArgs):
        # SPG: A = r - mean (no std), G = 6, mu = 4 (docs/algorithms/spg.md)
        advantage: str = "grpo_mean"
        policy_loss: str = SPG_LOSS
        num_generations: int = 6
        # masked views per sequence and inner update (SPG's num_t)
        num_t: int = 2
        # the Renyi power of the upper bound (SPG: 1.5 gsm8k / math, 2.0 countdown, 1.0 sudoku)
        eubo_beta: float = 1.5
        # weight omega of the upper bound for A <= 0: omega * EUBO + (1 - omega) * ELBO
        # (SPG "mix" 0.5; 1.0 = pure EUBO, 0.0 = ELBO for every sample)
        mix: float = 0.5
        # the views: "spg_block" (SPG's block-random masking) or "spg_bounds" (the stratified
        # ELBO plan over the whole response, no prompt masking); a registered estimator with
        # estimates "lower" and "upper"
        views: str = "spg_block"
        # spg_block: block size, range of the masked fraction of the drawn block, prompt masking
        block_length: int = 32
        min_t: float = 0.0
        max_t: float = 1.0
        p_mask_prompt: float = 0.15

        def validate(self, key: str, file: Any) -> None:
            super().validate(key, file)
            checks = {
                "num_t": (self.num_t >= 1, ">= 1"),
                "eubo_beta": (self.eubo_beta > 0, "> 0"),
                "mix": (0 <= self.mix <= 1, "in [0, 1]"),
                "beta": (
                    self.beta == 0,
                    "0: SPG has no KL term (its reference estimate would depend on the sign of A)",
                ),
                "views": (self.views in ESTIMATORS, f"a registered estimator ({', '.join(ESTIMATORS.names())})"),
            }
            check_fields(self, checks, key, file)
            try:  # the estimator's own checks (ranges, the bounds it computes), at recipe load
                build_estimator(self.views, **SPG.views_args(self)).require_estimates(("lower", "upper"))
            except (ValueError, TypeError) as e:
                raise RecipeError(file, f"{key}.views", str(e)) from None

    def __init__(self, args: Any, spec: DiffusionSpec) -> None:
        super().__init__(args, spec)
        self.estimator.require_estimates(("lower", "upper"))

    # estimator field <- SPG Args field
    VIEW_FIELDS = {"num_samples": "num_t", "eubo_beta": "eubo_beta", "block_length": "block_length",
                   "min_t": "min_t", "max_t": "max_t", "p_mask_prompt": "p_mask_prompt"}  # fmt: skip

    @staticmethod
    def views_args(args: Any, block_size: int | None = None) -> dict[str, Any]:
        """The `views` estimator's arguments from SPG's Args (those its Args declares, plus the
        model's block size where it takes one); a setting it cannot use (p_mask_prompt > 0, or
        another field off SPG's default) raises ValueError."""
        names = {f.name for f in dataclasses.fields(ESTIMATORS.get(args.views).Args)}
        # a setting the estimator does not take must be neutral: no prompt masking, else SPG's default
        neutral = {**{a: getattr(SPG.Args, a) for a in SPG.VIEW_FIELDS.values()}, "p_mask_prompt": 0.0}
        unused = [a for f, a in SPG.VIEW_FIELDS.items() if f not in names and getattr(args, a) != neutral[a]]
        if unused:
            raise ValueError(f"views {args.views!r} does not use {unused}")
        out = {f: getattr(args, a) for f, a in SPG.VIEW_FIELDS.items() if f in names}
        return {**out, "block_size": block_size} if "block_size" in names else out

    def estimator_args(self) -> dict[str, Any]:
        return self.views_args(self.args, self.spec.block_size if self.spec.attention == "block" else None)

    def prepare(self, model, reference, batch):
        """One batch per inner update, each with fresh views (from the rows' seeds); nothing is
        evaluated before the updates (no ratio, no reference)."""
        out = []
        for k in range(self.args.mu):
            plan = self.estimator.sample_rows(batch, row_generators(batch["noise_seed"][:, k]))
            out.append({**batch, **plan.to(batch["input_ids"].device).as_tensors(PLAN_PREFIX)})
        return out

    def compute_loss(self, model, batch):
        plan = NoisePlan.from_tensors(batch, PLAN_PREFIX)
        bounds = self.estimator.logp_named(model, batch, plan, self.spec)  # "lower", "upper": [B, L]
        adv = batch["advantages"].float()  # [B, L]
        surrogate = spg_sandwich(bounds["lower"], bounds["upper"], adv, self.args.mix)  # [B, L]
        loss, metrics = POLICY_LOSSES.get(self.args.policy_loss).fn(
            surrogate.detach(), surrogate, adv, batch["response_mask"], self.args.loss_agg_mode, self.loss_config, None
        )
        resp = batch["response_mask"].float()
        for k in ("lower", "upper"):
            metrics[f"actor/spg_{k}_mean"] = float((bounds[k].detach() * resp).sum() / resp.sum().clamp(min=1))
        metrics["actor/loss"] = float(loss.detach())
        return loss, metrics


__all__ = ["SPG", "SPG_LOSS", "SPGBoundsEstimator", "spg_loss", "spg_lower_bound", "spg_sandwich", "spg_upper_bound"]
