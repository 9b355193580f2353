"""Differentiable rewards for reward backpropagation (DRAKES): `fn(token_probs [B, L, V]) -> [B]`.

A differentiable reward reads the response as token probabilities (one row per position, a
straight-through one-hot in DRAKES: its value is the hard sample, its gradient the relaxed one) and
returns one score per row. It may also take the left-padded prompt as keyword arguments
`prompt_ids [B, P]` and `prompt_mask [B, P]` (declared in its signature; passed only then).

A recipe names one reward (the stage key `reward`):

    reward: task_match                                                 # a built-in (shorthand) ...
    reward: {name: linear, args: {scores: {12: 1.0, 13: 0.5}}}         # ... with args ...
    reward: {name: reward_model, args: {path: runs/rm_sort}}           # ... a classifier ...
    reward: {path: my_rewards.py:brevity, args: {eos_id: 1}}           # ... or a user plug-in

Built-ins: `task_match` (the task-aligned reward of a built-in task: the expected fraction of
correct answer tokens, the target computed from the prompt; `task_match.py`), `linear` (sum / mean over positions of per-token scores, for tests and toy objectives),
`reward_model` (any transformers sequence-classification model on the policy's vocabulary, fed
soft embeddings `probs @ E`; `dare.rewards.differentiable.reward_model.train_reward_model` trains
one on a built-in task's labelled samples). Every call is checked: a result that is not a float
tensor of shape `[B]` with finite values raises `RewardOutputError` naming the reward.

The built-ins live in the one reward registry (`dare.rewards.base.REWARDS`) with kind
`differentiable`: add one with `@register_reward(name, kind="differentiable")` on its factory. A
text reward's name here (or a differentiable one's in an RL stage's `rewards`) is refused naming
the reward and both kinds.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from dare.rewards.base import builtin_reward, load_plugin, register_reward

DifferentiableRewardFn = Callable[..., torch.Tensor]
"""fn(token_probs [B, L, V], [prompt_ids [B, P], prompt_mask [B, P]]) -> [B]."""

# the kind of reward this package holds: its built-ins are factory(**args) -> DifferentiableRewardFn,
# registered in the one reward registry (`dare.rewards.base.REWARDS`) with this kind
KIND = "differentiable"
CONTEXT_KEYS = ("prompt_ids", "prompt_mask")


class RewardOutputError(ValueError):
    """A differentiable reward returned something other than finite scores of shape [B]."""


def check_reward_output(value: Any, batch_size: int, label: str) -> torch.Tensor:
    """`value` as a `[B]` tensor, or a `RewardOutputError` saying what was wrong."""
    if not isinstance(value, torch.Tensor):
        raise RewardOutputError(
            f"differentiable reward {label!r} returned {type(value).__name__}; expected a tensor of shape [B] = [{batch_size}]"
        )
    if tuple(value.shape) != (batch_size,):
        raise RewardOutputError(
            f"differentiable reward {label!r} returned shape {tuple(value.shape)}; expected [B] = [{batch_size}] "
            "(one score per row: reduce over positions and vocabulary)"
        )
    if not value.is_floating_point():
        raise RewardOutputError(
            f"differentiable reward {label!r} returned dtype {value.dtype}; expected a float tensor"
        )
    bad = ~torch.isfinite(value.detach())
    if bool(bad.any()):
        rows = bad.nonzero().flatten().tolist()
        raise RewardOutputError(
            f"differentiable reward {label!r} returned non-finite values at rows {rows[:8]} "
            f"(e.g. {value.detach()[rows[0]].item()}); rewards must be finite"
        )
    return value


@dataclass
class DifferentiableRewardSpec:
    """One differentiable reward of a recipe: exactly one of `name` (built-in) or `path` (plug-in)."""

    # a built-in: linear, reward_model
    name: str | None = None
    # a user plug-in: path/to/file.py:function, called as function(token_probs, **args)
    path: str | None = None
    # keyword arguments (the factory's for a built-in, the function's for a plug-in)
    args: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | str | DifferentiableRewardSpec) -> DifferentiableRewardSpec:
        if isinstance(raw, cls):
            return raw
        if isinstance(raw, str):  # shorthand: `reward: task_match` = {name: task_match}
            raw = {"name": raw}
        if not isinstance(raw, Mapping):
            raise ValueError(f"a differentiable reward is a mapping {{name|path, args}}, got {raw!r}")
        unknown = sorted(set(raw) - {"name", "path", "args"})
        if unknown:
            raise ValueError(f"unknown differentiable-reward keys {unknown}; known: name, path, args")
        spec = cls(name=raw.get("name"), path=raw.get("path"), args=dict(raw.get("args") or {}))
        if (spec.name is None) == (spec.path is None):
            raise ValueError("a differentiable reward needs exactly one of name (built-in) or path (file.py:function)")
        return spec

    @property
    def label(self) -> str:
        return self.name or self.path.rpartition(":")[2]


class DifferentiableReward:
    """A reward function plus its checks: call it with `token_probs [B, L, V]` (and optionally the
    prompt); returns validated scores `[B]`."""

    def __init__(self, fn: DifferentiableRewardFn, label: str, args: Mapping[str, Any] | None = None) -> None:
        self.fn, self.label, self.args = fn, label, dict(args or {})
        try:
            params = inspect.signature(fn).parameters
        except (TypeError, ValueError):
            params = {}
        var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        self.context_keys = tuple(k for k in CONTEXT_KEYS if var_kw or k in params)

    def __call__(
        self, token_probs: torch.Tensor, prompt_ids: torch.Tensor | None = None, prompt_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        if token_probs.dim() != 3:
            raise ValueError(f"token_probs must be [B, L, V], got shape {tuple(token_probs.shape)}")
        context = {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask}
        kwargs = {k: context[k] for k in self.context_keys if context[k] is not None}
        return check_reward_output(self.fn(token_probs, **self.args, **kwargs), token_probs.shape[0], self.label)


def _check_args(factory: Callable[..., Any], args: Mapping[str, Any], label: str, skip: int = 0) -> None:
    """Raise TypeError when `args` do not bind to `factory` (the first `skip` positional parameters are supplied later)."""
    sig = inspect.signature(factory)
    params = list(sig.parameters.values())[skip:]
    try:
        sig.replace(parameters=params).bind(**args)
    except TypeError as e:
        raise TypeError(f"differentiable reward {label!r}: bad args {dict(args)}: {e}") from None


def check_spec(raw: Mapping[str, Any] | str | DifferentiableRewardSpec) -> DifferentiableRewardSpec:
    """Validate a reward spec without building it (names, plug-in file and function, argument names)."""
    spec = DifferentiableRewardSpec.from_dict(raw)
    if spec.name is not None:
        _check_args(builtin_reward(spec.name, KIND), spec.args, spec.label)
    else:
        _check_args(load_plugin(spec.path), spec.args, spec.label, skip=1)
    return spec


def with_defaults(raw: Mapping[str, Any] | str | DifferentiableRewardSpec, **defaults: Any) -> DifferentiableRewardSpec:
    """The spec with `defaults` added to the args of a built-in whose factory takes them and whose
    args leave them unset (None defaults are skipped); e.g. the DRAKES trainer passes
    `task=<data.train's built-in task>` for `task_match`."""
    spec = DifferentiableRewardSpec.from_dict(raw)
    if spec.name is None:
        return spec
    params = inspect.signature(builtin_reward(spec.name, KIND)).parameters
    args = dict(spec.args)
    for key, value in defaults.items():
        if value is not None and key in params and args.get(key) is None:
            args[key] = value
    return DifferentiableRewardSpec(name=spec.name, args=args)


def build_differentiable_reward(
    raw: Mapping[str, Any] | str | DifferentiableRewardSpec, vocab_size: int | None = None
) -> DifferentiableReward:
    """The reward a spec names, ready to call. `vocab_size` (the policy's) is passed to a built-in
    factory that takes it when the spec does not set it."""
    spec = check_spec(raw)
    if spec.name is not None:
        factory = builtin_reward(spec.name, KIND)
        args = dict(spec.args)
        if vocab_size is not None and "vocab_size" in inspect.signature(factory).parameters:
            args.setdefault("vocab_size", vocab_size)
        return DifferentiableReward(factory(**args), spec.label)
    return DifferentiableReward(load_plugin(spec.path), spec.label, spec.args)


# ---------------------------------------------------------------------------------------------
# Built-in: linear
# ---------------------------------------------------------------------------------------------


class LinearReward:
    """r(x) = agg_i sum_v probs[i, v] * w[i, v]: per-token scores, per position `[L, V]` or shared `[V]`.

    With one-hot rows it is the score of the tokens; with probabilities, its expectation under
    independent positions. `reduce` = "sum" or "mean" over positions.
    """

    def __init__(self, weights: torch.Tensor, reduce: str = "mean") -> None:
        if weights.dim() not in (1, 2):
            raise ValueError(f"linear reward weights must be [V] or [L, V], got shape {tuple(weights.shape)}")
        if reduce not in ("sum", "mean"):
            raise ValueError(f"linear reward reduce must be 'sum' or 'mean', got {reduce!r}")
        self.weights, self.reduce = weights.float(), reduce

    def __call__(self, token_probs: torch.Tensor) -> torch.Tensor:
        w = self.weights.to(token_probs.device, token_probs.dtype)
        V = token_probs.shape[-1]
        if w.shape[-1] != V or (w.dim() == 2 and w.shape[0] != token_probs.shape[1]):
            raise ValueError(
                f"linear reward weights {tuple(w.shape)} do not fit token_probs {tuple(token_probs.shape)}"
            )
        per_pos = (token_probs * w).sum(-1)  # [B, L, V] -> [B, L]
        return per_pos.sum(-1) if self.reduce == "sum" else per_pos.mean(-1)


@register_reward("linear", kind=KIND)
def linear(
    scores: Mapping[int, float] | None = None,
    vocab_size: int | None = None,
    weights: Any = None,
    reduce: str = "mean",
) -> LinearReward:
    """Per-token scores from `scores` {token_id: score} (others 0; needs `vocab_size`) or a full
    `weights` table ([V] or [L, V] nested lists / tensor)."""
    if (scores is None) == (weights is None):
        raise ValueError("linear reward: give exactly one of scores {token_id: score} (with vocab_size) or weights")
    if weights is None:
        if vocab_size is None:
            raise ValueError("linear reward: scores needs vocab_size (the policy's vocabulary size)")
        w = torch.zeros(vocab_size)
        for tok, value in scores.items():
            if not 0 <= int(tok) < vocab_size:
                raise ValueError(f"linear reward: token id {tok} is outside the vocabulary [0, {vocab_size})")
            w[int(tok)] = float(value)
    else:
        w = torch.as_tensor(weights, dtype=torch.float32)
    return LinearReward(w, reduce)


from dare.rewards.differentiable import reward_model, task_match  # noqa: E402,F401  (register the built-ins)

__all__ = [
    "CONTEXT_KEYS",
    "KIND",
    "DifferentiableReward",
    "DifferentiableRewardFn",
    "DifferentiableRewardSpec",
    "LinearReward",
    "RewardOutputError",
    "build_differentiable_reward",
    "check_reward_output",
    "check_spec",
    "linear",
    "with_defaults",
]
