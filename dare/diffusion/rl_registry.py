"""The registries of RL policy losses and advantage estimators: one table each, as data.

A registry entry carries what a caller needs to use it without knowing its name:

- `PolicyLoss`: the loss function (verl's `PolicyLossFn` signature: `(old_log_prob, log_prob,
  advantages, response_mask, loss_agg_mode, config, rollout_is_weights) -> (loss, metrics)`) and
  `config`, which builds the function's `config` argument from an algorithm's `Args` (it reads the
  fields it needs by name), so an algorithm calls any registered loss the same way.
- `Advantage`: verl's estimator function (`(token_level_rewards, response_mask, index, **kw) ->
  (advantages, returns)`) and `args`, the stage settings it reads and the keyword each becomes
  (grpo: `norm_adv_by_std` -> `norm_adv_by_std_in_grpo`), so the RL trainer passes them without
  branching on the estimator's name.

A loss is written once as `fn(inputs: PolicyLossInputs, config)` and `verl_policy_loss` gives it
verl's signature, so the seven-argument parameter list stands in one place.

`register_policy_loss` / `register_advantage` write dare's table and verl's under the same name
(verl's actor and `compute_advantage` can then select them too); there is no second table to keep
in sync. A name bound to a different function, in either table, raises.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from verl.trainer.ppo import core_algos

from dare.registry import Registry

PolicyLossFn = Callable[..., tuple[torch.Tensor, dict[str, float]]]
AdvantageFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class PolicyLossInputs:
    """verl's policy-loss arguments but `config`, as one value.

    Attributes:
        old_log_prob, log_prob: `[B, L]` estimates under the rollout / current policy (same plan).
        advantages: `[B, L]` (or `[B, 1]`, broadcast).
        response_mask: `[B, L]` tokens in the loss.
        loss_agg_mode: verl's aggregation ("token-mean", "seq-mean-token-mean").
        rollout_is_weights: optional `[B, L]` importance weights of the per-token loss.
    """

    old_log_prob: torch.Tensor
    log_prob: torch.Tensor
    advantages: torch.Tensor
    response_mask: torch.Tensor
    loss_agg_mode: str = "token-mean"
    rollout_is_weights: torch.Tensor | None = None

    def apply(self, fn: PolicyLossFn, config: Any = None, **changes: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """`fn` (verl's signature) on these inputs, with `changes` (field values) replaced."""
        x = replace(self, **changes) if changes else self
        return fn(
            x.old_log_prob, x.log_prob, x.advantages, x.response_mask, x.loss_agg_mode, config, x.rollout_is_weights
        )


def verl_policy_loss(
    fn: Callable[[PolicyLossInputs, Any], tuple[torch.Tensor, dict[str, float]]],
) -> PolicyLossFn:
    """Decorator: `fn(inputs, config)` as a function of verl's `PolicyLossFn` signature (the one
    `register_policy_loss` expects and verl's actor calls, by keyword), with `fn`'s name and docstring."""

    def loss(
        old_log_prob: torch.Tensor,
        log_prob: torch.Tensor,
        advantages: torch.Tensor,
        response_mask: torch.Tensor,
        loss_agg_mode: str = "token-mean",
        config: Any = None,
        rollout_is_weights: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        inputs = PolicyLossInputs(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, rollout_is_weights)
        return fn(inputs, config)

    for attr in ("__module__", "__name__", "__qualname__", "__doc__"):
        setattr(loss, attr, getattr(fn, attr))
    return loss


def _no_config(args: Any) -> None:
    return None


@dataclass(frozen=True)
class PolicyLoss:
    """A registered policy loss: its function and the builder of its `config` from an algorithm's Args."""

    fn: PolicyLossFn
    config: Callable[[Any], Any] = _no_config


@dataclass(frozen=True)
class Advantage:
    """A registered advantage estimator: verl's function and the settings it reads, as
    `(settings field, estimator keyword)` pairs."""

    fn: AdvantageFn
    args: tuple[tuple[str, str], ...] = ()

    def kwargs(self, settings: Any) -> dict[str, Any]:
        """The estimator's keyword arguments from a stage's settings (e.g. a `RolloutSpec`)."""
        return {keyword: getattr(settings, name) for name, keyword in self.args}


POLICY_LOSSES: Registry[PolicyLoss] = Registry("policy loss")
ADVANTAGES: Registry[Advantage] = Registry("advantage estimator")


def _register(table: Registry[Any], verl_table: dict[str, Any], name: str, entry: Any, what: str) -> None:
    """Bind `name` in dare's table and verl's; the same entry again is a no-op, another one raises
    (checked in both tables before either is written: verl's policy-loss registry would silently
    overwrite)."""
    known = verl_table.get(name)
    if known is not None and known is not entry.fn:
        raise ValueError(f"verl's {what} registry already binds {name!r} to {known!r}")
    if name not in table or table.get(name) != entry:
        table.register(name, entry)
    verl_table[name] = entry.fn


def register_policy_loss(
    name: str, config: Callable[[Any], Any] = _no_config
) -> Callable[[PolicyLossFn], PolicyLossFn]:
    """Decorator: register a policy loss under `name` in dare's `POLICY_LOSSES` and verl's registry.

    Args:
        name: the recipe's `policy_loss` value (and verl's `loss_mode`).
        config: builds the loss's `config` argument from an algorithm's Args (default: None).
    """

    def add(fn: PolicyLossFn) -> PolicyLossFn:
        _register(POLICY_LOSSES, core_algos.POLICY_LOSS_REGISTRY, name, PolicyLoss(fn, config), "policy-loss")
        return fn

    return add


def register_advantage(name: str, args: tuple[tuple[str, str], ...] = ()) -> Callable[[AdvantageFn], AdvantageFn]:
    """Decorator: register an advantage estimator under `name` in dare's `ADVANTAGES` and verl's
    registry. `args`: the `(settings field, keyword)` pairs it reads."""

    def add(fn: AdvantageFn) -> AdvantageFn:
        entry = Advantage(fn, tuple(args))
        _register(ADVANTAGES, core_algos.ADV_ESTIMATOR_REGISTRY, name, entry, "advantage-estimator")
        return fn

    return add


__all__ = [
    "ADVANTAGES",
    "POLICY_LOSSES",
    "Advantage",
    "AdvantageFn",
    "PolicyLoss",
    "PolicyLossFn",
    "PolicyLossInputs",
    "register_advantage",
    "register_policy_loss",
    "verl_policy_loss",
]
