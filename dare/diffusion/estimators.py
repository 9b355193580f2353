"""Per-token log-probability estimators of diffusion LMs for policy-gradient RL.

A masked diffusion LM has no tractable log pi(o | q). GRPO-style training of a dLLM replaces the
per-token log-probability of an AR model with a Monte-Carlo estimate computed from one or a few
*views* of the completion, each view a copy of the sequence with some completion tokens replaced
by [MASK]:

    logp_hat_i = sum_k w_{k,i} log p_theta(o_i | view_k),        view_k = (q_tilde, o with M_k masked)

Estimators (registry `ESTIMATORS`):

- `d1` (diffu-GRPO; Zhao et al. 2025, "d1: Scaling Reasoning in Diffusion LLMs via RL",
  arXiv 2504.12216; dllm-reasoning/d1 `diffu_grpo_trainer.py`): one view, the whole completion
  masked and every prompt token masked independently with probability `p_mask_prompt`;
  w = 1.  logp_hat_i = log p_theta(o_i | q_tilde, all-[MASK] completion).
- `coupled` (coupled-GRPO; Gong et al. 2025, "DiffuCoder", arXiv 2506.20639;
  apple/ml-diffucoder `coupled_grpo.py`): t ~ U(t_min, t_max), R ~ U(0, 1) per position,
  M1 = completion & (R < t), M2 = completion & ~M1 (complementary, so every token is masked in
  exactly one of the two partial views), plus the full-mask view M0 = completion:

      logp_hat_i = 1/2 [ logp^(0)_i + 1[i in M1] logp^(1)_i / t + 1[i in M2] logp^(2)_i / (1 - t) ]

  (weights 1, 1/t, 1/(1-t)). The three views run as one forward (concatenated along the batch).
  This is no longer a normalised log-probability; it is what goes into exp(.) of the PPO ratio.

The interface (DESIGN.md "Estimator"): `plan = est.sample(batch, generator)` draws the noise once;
`est.logp(model, batch, plan)` returns `[B, L]` estimates, zero outside `response_mask`. The same
plan is reused for the old, reference and current policy of one inner iteration, so their ratio
and KL compare the same views (d1's fixed mask seeds; algorithms.md §9.2). A plan holds only
batch-first tensors, so it can be stored in the batch and split into micro-batches with it.

The RL batch: `input_ids [B, L]` = left-padded prompt + completion; `attention_mask [B, L]`, 0 on
left padding; `response_mask [B, L]` bool, True on the completion up to and including its first
EOS. The *completion region* is every real position from a row's first response token on, so it
includes the EOS padding after the first EOS: as in d1 and DiffuCoder, all of it is masked (a
clean EOS tail would tell the model the answer's length), but only `response_mask` tokens get
estimates.

Attention kinds (chosen from `DiffusionSpec.attention` through `VIEW_FORWARDS`, never from the
family name):

- "full" (LLaDA, Dream): one forward of the views; Dream's logits re-aligned by `aligned_logits`.
- "block" (SDAR): the `[x_t ; x_0]` layout of block diffusion (BD3-LM, arXiv 2503.09573) with
  `block_diffusion_attention_mask`: the noisy half is the view, the clean half the context
  (prompt as in the view, clean completion). A completion token of block k sees its own (noisy)
  block and the clean blocks before k, never a later block nor another noisy block, i.e. the
  estimate is of log p(o_i | q_tilde, o_{<k}, view of block k), the factorisation SDAR decodes
  with. Blocks are response-aligned (`response_aligned_positions`), as in the sampler.

Randomness comes only from the `torch.Generator` passed to `sample`; successive calls draw fresh
masks (a fixed seed per step is a known bug of a public implementation).

Shapes: B batch, L length, K views, V vocabulary, N = B*K view rows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from dare.diffusion.noise import bernoulli_mask, complementary_masks, response_aligned_positions, uniform01
from dare.diffusion.sft import block_diffusion_attention_mask
from dare.models.spec import DiffusionSpec, aligned_logits, model_spec
from dare.registry import Registry

# ---------------------------------------------------------------------------------------------
# The batch and the plan
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RLBatchMasks:
    """The masks an estimator derives from an RL batch, all `[B, L]` bool.

    Attributes:
        valid: real tokens (`attention_mask`).
        response: tokens that get estimates (`response_mask`).
        completion: the generated region, from each row's first response token on (real tokens only).
        prompt: real tokens before the completion.
    """

    valid: torch.Tensor
    response: torch.Tensor
    completion: torch.Tensor
    prompt: torch.Tensor


def rl_batch_masks(batch: Mapping[str, torch.Tensor]) -> RLBatchMasks:
    """Check an RL batch's shapes and derive its masks (see `RLBatchMasks`)."""
    ids = batch["input_ids"]
    if ids.dim() != 2:
        raise ValueError(f"input_ids must be [B, L], got shape {tuple(ids.shape)}")
    for key in ("attention_mask", "response_mask"):
        if batch[key].shape != ids.shape:
            raise ValueError(f"{key} shape {tuple(batch[key].shape)} != input_ids shape {tuple(ids.shape)}")
    valid = batch["attention_mask"].bool()
    response = batch["response_mask"].bool()
    if bool((response & ~valid).any()):  # a CPU-GPU sync point, once per call
        raise ValueError("response_mask marks positions that attention_mask hides (padding)")
    L = ids.shape[1]
    # argmax returns the first maximal index: the first response column of each row
    start = torch.where(
        response.any(-1), response.int().argmax(-1), torch.full_like(response[:, 0], L, dtype=torch.long)
    )
    completion = valid & (torch.arange(L, device=ids.device)[None, :] >= start[:, None])  # [B, L]
    return RLBatchMasks(valid=valid, response=response, completion=completion, prompt=valid & ~completion)


@dataclass(frozen=True)
class NoisePlan:
    """One draw of an estimator's noise; reused for old, reference and current policy.

    Every field is batch-first, so a plan can be stored in the batch (`as_tensors`) and split
    into micro-batches along with it.

    Attributes:
        prompt_mask: `[B, L]` bool, prompt tokens replaced by [MASK] in every view (the corrupted
            context q_tilde; d1's `p_mask_prompt`).
        view_masks: `[B, K, L]` bool, completion tokens replaced by [MASK] in view k.
        weights: `[B, K, L]` float32, weight w_{k,i} of log p(o_i | view k); zero outside
            `response_mask` (so estimates are zero there).
        t: `[B]` float32, the row's noise level (1 for a fully masked completion).
    """

    prompt_mask: torch.Tensor
    view_masks: torch.Tensor
    weights: torch.Tensor
    t: torch.Tensor

    @property
    def num_views(self) -> int:
        return self.view_masks.shape[1]

    def as_tensors(self, prefix: str = "plan.") -> dict[str, torch.Tensor]:
        """The fields as a flat dict (e.g. to add to a `DataProto` batch)."""
        return {prefix + f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor], prefix: str = "plan.") -> NoisePlan:
        """Inverse of `as_tensors`; `tensors` may be a whole batch with other keys."""
        return cls(**{f.name: tensors[prefix + f.name] for f in fields(cls)})

    @classmethod
    def cat(cls, plans: list[NoisePlan]) -> NoisePlan:
        """Concatenate plans along the batch (e.g. rows drawn with their own generators)."""
        return cls(**{f.name: torch.cat([getattr(p, f.name) for p in plans]) for f in fields(cls)})

    def to(self, device: torch.device | str) -> NoisePlan:
        return NoisePlan(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


# ---------------------------------------------------------------------------------------------
# Forward of the views, per attention kind
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ViewInputs:
    """What a view forward reads, `N` views of length `L`.

    Attributes:
        view_ids: `[N, L]` the noisy input (masked positions hold the mask id).
        context_ids: `[N, L]` the clean sequence (block attention's context half).
        valid: `[N, L]` bool, False on left padding.
        prompt_len: `[N]` prompt tokens of each row.
    """

    view_ids: torch.Tensor
    context_ids: torch.Tensor
    valid: torch.Tensor
    prompt_len: torch.Tensor


ViewForward = Callable[[nn.Module, ViewInputs, DiffusionSpec], torch.Tensor]
"""(model, views, spec) -> logits [N, L, V], aligned so `logits[:, i]` predicts token i."""

VIEW_FORWARDS: Registry[ViewForward] = Registry("estimator view forward")


@VIEW_FORWARDS.register("full")
def full_attention_view_logits(model: nn.Module, v: ViewInputs, spec: DiffusionSpec) -> torch.Tensor:
    """Bidirectional models (LLaDA, Dream): the view is the whole input; `context_ids` and
    `prompt_len` are unused (the view already carries the masked prompt)."""
    logits = model(v.view_ids, attention_mask=v.valid).logits  # [N, L, V]
    return aligned_logits(logits, spec)  # Dream: logits[:, i-1] -> logits[:, i]


@VIEW_FORWARDS.register("block")
def block_attention_view_logits(model: nn.Module, v: ViewInputs, spec: DiffusionSpec) -> torch.Tensor:
    """Block-causal models (SDAR): one forward over `[view ; context]` `[N, 2L]` under the
    block-diffusion mask; logits of the noisy (view) half.

    Noisy block k attends to itself and to the clean context blocks < k (M_BD, M_OBC of
    `block_diffusion_attention_mask`), so the response tokens of block k are predicted from the
    prompt, the clean earlier response blocks and the view of block k only.
    """
    if spec.block_size is None:
        raise ValueError(f"block attention needs spec.block_size; got spec {spec}")
    if spec.shift_logits:
        raise ValueError("block-attention estimators with shift_logits=True are not supported (no family needs it)")
    L = v.view_ids.shape[1]
    pos = response_aligned_positions(v.valid, v.prompt_len, spec.block_size)  # [N, L]
    both = torch.cat([v.view_ids, v.context_ids], dim=1)  # [N, 2L] = [x_t ; x_0]
    both_pos = torch.cat([pos, pos], dim=1)  # [N, 2L]
    mask4d = block_diffusion_attention_mask(pos, v.valid, spec.block_size)  # [N, 1, 2L, 2L]
    return model(both, attention_mask=mask4d, position_ids=both_pos).logits[:, :L]  # [N, 2L, V] -> [N, L, V]


def view_logp(
    model: nn.Module,
    batch: Mapping[str, torch.Tensor],
    plan: NoisePlan,
    spec: DiffusionSpec | None = None,
    entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """log p_theta(x0_i | view k) for every view, `[B, K, L]` float32.

    Computed (log-softmax in fp32) only where `plan.weights != 0`, zero elsewhere. All K views go
    through one forward, concatenated along the batch (row b, view k at row b*K + k). With
    `entropy`, also the (detached) entropy of each of those predictive distributions, `[B, K, L]`.
    """
    spec = spec or model_spec(model)
    ids = batch["input_ids"]  # [B, L]
    m = rl_batch_masks(batch)
    B, K, L = plan.view_masks.shape
    if plan.prompt_mask.shape != ids.shape or plan.weights.shape != plan.view_masks.shape or ids.shape != (B, L):
        raise ValueError(
            f"plan does not fit the batch: input_ids {tuple(ids.shape)}, prompt_mask {tuple(plan.prompt_mask.shape)}, "
            f"view_masks {tuple(plan.view_masks.shape)}, weights {tuple(plan.weights.shape)}"
        )
    mask_id = torch.full_like(ids, spec.mask_token_id)
    context = torch.where(plan.prompt_mask, mask_id, ids)  # [B, L], q_tilde + clean completion
    views = torch.where(plan.view_masks, mask_id[:, None], context[:, None])  # [B, K, L]
    prompt_len = m.prompt.sum(-1)  # [B]

    def rep(x: torch.Tensor) -> torch.Tensor:  # [B, ...] -> [B*K, ...]
        return x.repeat_interleave(K, dim=0)

    flat = ViewInputs(views.reshape(B * K, L), rep(context), rep(m.valid), rep(prompt_len))
    logits = VIEW_FORWARDS.get(spec.attention)(model, flat, spec)  # [B*K, L, V]
    need = (plan.weights != 0).reshape(B * K, L)  # [B*K, L]
    rows, cols = need.nonzero(as_tuple=True)  # M needed (row, position) pairs
    lp = F.log_softmax(logits[rows, cols].float(), dim=-1)  # [M, V], fp32 on the needed rows only
    target = rep(ids)[rows, cols]  # [M]
    out = torch.zeros(B * K, L, dtype=torch.float32, device=logits.device)
    out[rows, cols] = lp.gather(-1, target[:, None]).squeeze(-1)  # [M]
    if not entropy:
        return out.reshape(B, K, L)
    ent = torch.zeros_like(out)
    with torch.no_grad():
        ent[rows, cols] = -(lp.exp() * lp).sum(-1)  # [M], H of p(. | view) in nats
    return out.reshape(B, K, L), ent.reshape(B, K, L)


# ---------------------------------------------------------------------------------------------
# Estimators
# ---------------------------------------------------------------------------------------------


class LogpEstimator:
    """Base class: subclasses set `name`, `Args` and implement `sample`.

    `logp` is shared: sum_k plan.weights[:, k] * log p(x0 | view k), `[B, L]`.

    Several estimates: an estimator may compute more than one per-token quantity from the same
    plan (e.g. SPG's lower and upper bounds of log pi). It then lists their names in `estimates`
    and overrides `logp_named`; `logp` stays its primary estimate. The algorithm decides which
    it uses (SPG: the lower bound where A > 0, the upper one elsewhere) and asks for them by name
    (`require_estimates` at construction, so a mismatch fails before any forward pass).
    """

    name: ClassVar[str]
    # the names `logp_named` returns
    estimates: ClassVar[tuple[str, ...]] = ("logp",)

    @dataclass(frozen=True)
    class Args:
        pass

    def __init__(self, args: object | None = None) -> None:
        self.args = args if args is not None else self.Args()

    def sample(self, batch: Mapping[str, torch.Tensor], generator: torch.Generator) -> NoisePlan:
        raise NotImplementedError

    def sample_rows(self, batch: Mapping[str, torch.Tensor], generators: list[torch.Generator]) -> NoisePlan:
        """One generator per row (a row's noise then does not depend on how the batch is split)."""
        B = batch["input_ids"].shape[0]
        if len(generators) != B:
            raise ValueError(f"sample_rows needs one generator per row: {len(generators)} for {B} rows")
        keys = ("input_ids", "attention_mask", "response_mask")
        return NoisePlan.cat([self.sample({k: batch[k][b : b + 1] for k in keys}, g) for b, g in enumerate(generators)])

    def logp(
        self, model: nn.Module, batch: Mapping[str, torch.Tensor], plan: NoisePlan, spec: DiffusionSpec | None = None
    ) -> torch.Tensor:
        """Per-token estimates `[B, L]` float32, zero outside `response_mask`.

        Differentiable w.r.t. the model; call under `torch.no_grad()` for old / reference values.
        `spec` defaults to the model's own.
        """
        per_view = view_logp(model, batch, plan, spec)  # [B, K, L]
        return (plan.weights * per_view).sum(1)  # [B, K, L] -> [B, L]

    def logp_named(
        self, model: nn.Module, batch: Mapping[str, torch.Tensor], plan: NoisePlan, spec: DiffusionSpec | None = None
    ) -> dict[str, torch.Tensor]:
        """Every estimate of `estimates`, by name, `[B, L]` each (zero outside `response_mask`).
        Default: `{"logp": self.logp(...)}`, the same numbers."""
        return {"logp": self.logp(model, batch, plan, spec)}

    @classmethod
    def require_estimates(cls, names: tuple[str, ...] | list[str]) -> None:
        """Raise ValueError naming the estimator and what it has when it lacks one of `names`."""
        missing = [n for n in names if n not in cls.estimates]
        if missing:
            raise ValueError(f"estimator {cls.name!r} computes {list(cls.estimates)}, not {missing}")

    def logp_and_entropy(
        self, model: nn.Module, batch: Mapping[str, torch.Tensor], plan: NoisePlan, spec: DiffusionSpec | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`logp` plus the policy's predictive entropy per token `[B, L]` (detached): the mean over
        the views that score the token of H(p_theta(. | view)). A falling entropy is the usual
        sign of RL collapsing the policy."""
        per_view, ent = view_logp(model, batch, plan, spec, entropy=True)  # [B, K, L] each
        used = (plan.weights != 0).float()  # [B, K, L]
        mean_ent = (ent * used).sum(1) / used.sum(1).clamp(min=1)  # [B, L]
        return (plan.weights * per_view).sum(1), mean_ent


ESTIMATORS: Registry[type[LogpEstimator]] = Registry("log-prob estimator")


def register_estimator(cls: type[LogpEstimator]) -> type[LogpEstimator]:
    """Class decorator: register under `cls.name`."""
    ESTIMATORS.register(cls.name, cls)
    return cls


def build_estimator(name: str, **args: object) -> LogpEstimator:
    """`ESTIMATORS.get(name)` built with its `Args(**args)`; unknown names list the known ones."""
    cls = ESTIMATORS.get(name)
    return cls(cls.Args(**args))


def _prompt_mask(m: RLBatchMasks, p_mask_prompt: float, generator: torch.Generator) -> torch.Tensor:
    p = torch.full((m.prompt.shape[0],), p_mask_prompt, device=m.prompt.device)  # [B]
    return bernoulli_mask(m.prompt, p, generator)  # [B, L]


@register_estimator
class D1Estimator(LogpEstimator):
    """d1 / diffu-GRPO one-step estimator (arXiv 2504.12216; dllm-reasoning/d1 `forward_process`,
    `_get_per_token_logps`).

    One view: every completion token masked, every prompt token masked independently with
    probability `p_mask_prompt`:

        logp_hat_i = log p_theta(o_i | q_tilde, [MASK]^{|o|})

    No time sampling and no 1/t weight (t = 1 in the plan). On block models, block k is fully
    masked and sees the clean earlier blocks.
    """

    name = "d1"

    @dataclass(frozen=True)
    class Args:
        p_mask_prompt: float = 0.15  # d1 train.yaml (config default 0.3)

        def __post_init__(self) -> None:
            if not 0.0 <= self.p_mask_prompt < 1.0:
                raise ValueError(f"p_mask_prompt must be in [0, 1), got {self.p_mask_prompt}")

    def sample(self, batch: Mapping[str, torch.Tensor], generator: torch.Generator) -> NoisePlan:
        m = rl_batch_masks(batch)
        B = m.valid.shape[0]
        return NoisePlan(
            prompt_mask=_prompt_mask(m, self.args.p_mask_prompt, generator),
            view_masks=m.completion[:, None],  # [B, 1, L]
            weights=m.response[:, None].float(),  # [B, 1, L]
            t=torch.ones(B, device=m.valid.device),
        )


@register_estimator
class CoupledEstimator(LogpEstimator):
    """Coupled-GRPO estimator (DiffuCoder, arXiv 2506.20639; apple/ml-diffucoder `coupled_grpo.py`).

    t ~ U(t_min, t_max) per sequence (DiffuCoder draws one t per forward call for the whole
    batch: `shared_t=True`), R ~ U(0, 1) per position, M1 = completion & (R < t), M2 = its
    complement in the completion, M0 = the whole completion:

        logp_hat_i = 1/2 [ logp^(0)_i + 1[i in M1] logp^(1)_i / t + 1[i in M2] logp^(2)_i / (1 - t) ]

    Every completion token is predicted once from a partially masked context, the two partial
    views are antithetic, and the full-mask (d1) term is averaged in. The prompt is masked with
    `p_mask_prompt` (0 in DiffuCoder's recipe), identically in all three views.
    """

    name = "coupled"

    @dataclass(frozen=True)
    class Args:
        t_min: float = 0.2
        t_max: float = 0.8
        p_mask_prompt: float = 0.0
        shared_t: bool = False  # one t for the whole batch (DiffuCoder) instead of one per row

        def __post_init__(self) -> None:
            if not 0.0 < self.t_min <= self.t_max < 1.0:
                raise ValueError(f"need 0 < t_min <= t_max < 1, got t_min={self.t_min}, t_max={self.t_max}")
            if not 0.0 <= self.p_mask_prompt < 1.0:
                raise ValueError(f"p_mask_prompt must be in [0, 1), got {self.p_mask_prompt}")

    def sample(self, batch: Mapping[str, torch.Tensor], generator: torch.Generator) -> NoisePlan:
        m = rl_batch_masks(batch)
        B, device = m.valid.shape[0], m.valid.device
        a = self.args
        prompt_mask = _prompt_mask(m, a.p_mask_prompt, generator)
        u = uniform01((1,) if a.shared_t else (B,), generator, device)
        t = (a.t_min + (a.t_max - a.t_min) * u).expand(B).contiguous()  # [B]
        m1, m2 = complementary_masks(m.completion, t, generator)  # [B, L] each, disjoint, union = completion
        resp = m.response.float()
        weights = 0.5 * torch.stack(
            [resp, resp * m1 / t[:, None], resp * m2 / (1.0 - t[:, None])], dim=1
        )  # [B, 3, L], weights 1, 1/t, 1/(1-t), halved
        return NoisePlan(
            prompt_mask=prompt_mask,
            view_masks=torch.stack([m.completion, m1, m2], dim=1),  # [B, 3, L]
            weights=weights,
            t=t,
        )


__all__ = [
    "ESTIMATORS",
    "VIEW_FORWARDS",
    "ViewInputs",
    "CoupledEstimator",
    "D1Estimator",
    "LogpEstimator",
    "NoisePlan",
    "RLBatchMasks",
    "ViewForward",
    "block_attention_view_logits",
    "build_estimator",
    "full_attention_view_logits",
    "register_estimator",
    "rl_batch_masks",
    "view_logp",
]
