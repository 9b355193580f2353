"""Several rewards with weights: `RewardSpec` (one recipe entry) and `CombinedReward`.

In a recipe (the list sits wherever the RL algorithm's arguments take it, e.g. `rewards:`):

    rewards:
      - name: countdown                 # a built-in reward ...
        weight: 1.0
      - name: format
        weight: 0.1
        args: {tags: [think, answer]}
      - path: examples/custom_reward/my_reward.py:length_penalty   # ... or a user plug-in
        weight: 0.5
        args: {max_chars: 64}

The total reward is `sum(weight_i * score_i)`; each component is kept (by `label`, which defaults
to the name or the plug-in's function name) for metrics and logs.

`bounds: [low, high]` (default `[-1e4, 1e4]`) is the range a score must lie in: a score outside it
(e.g. a plug-in returning `1e300`, which becomes `inf` in float32 and NaN in the advantages) is a
reward error, scored like a raising reward (0, counted in `reward/errors`), as is a NaN or
infinite score.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dare.errors import RecipeError
from dare.rewards.base import (
    RewardFn,
    RewardLoadError,
    accepted_extra,
    call_batched_reward,
    call_reward,
    check_signature,
    is_batched,
    is_plugin_ref,
    resolve_reward,
)

# a score outside [low, high] is a reward error (float32 overflows at ~3.4e38)
DEFAULT_BOUNDS = (-1e4, 1e4)


@dataclass
class RewardSpec:
    """One reward of a recipe: exactly one of `name` (built-in) or `path` (plug-in)."""

    # a built-in reward: countdown, sudoku, addition, sort, task, math, gsm8k, multiple_choice,
    # exact_match, format, code, judge
    name: str | None = None
    # a user plug-in: path/to/file.py:function (relative to the working directory)
    path: str | None = None
    # multiplies this reward's score in the total
    weight: float = 1.0
    # keyword arguments of the reward function (checked against its signature at load time)
    args: dict[str, Any] = field(default_factory=dict)
    # the component's key in metrics (reward/<label>/mean); default: name or function name
    label: str | None = None
    # [low, high]: a score outside it is a reward error (scored 0, counted in reward/errors)
    bounds: list[float] = field(default_factory=lambda: list(DEFAULT_BOUNDS))

    @property
    def ref(self) -> str:
        """The reference `resolve_reward` takes (name or path:function)."""
        ref = self.name if self.name is not None else self.path
        if ref is None:
            raise RewardLoadError("a reward needs a name (built-in) or a path (file.py:function)")
        return ref

    @property
    def key(self) -> str:
        """The component label."""
        if self.label:
            return self.label
        return self.name if self.name is not None else self.ref.rpartition(":")[2]

    def load(self) -> RewardFn:
        """Resolve the function and check its signature against `args`.

        Raises:
            RewardLoadError: unknown name, bad plug-in file/function, or a signature that does
                not fit (the message names the file or the reward).
        """
        if (self.name is None) == (self.path is None):
            raise RewardLoadError("set exactly one of name (a built-in reward) or path (path/to/file.py:function)")
        if self.name is not None and is_plugin_ref(self.name):
            raise RewardLoadError(f"name {self.name!r} is a plug-in reference; write it as path: {self.name}")
        if self.path is not None and not is_plugin_ref(self.path):
            raise RewardLoadError(f"path {self.path!r} must look like path/to/file.py:function")
        fn = resolve_reward(self.ref)
        check_signature(fn, self.args, self.path.rpartition(":")[0] if self.path else f"reward {self.name!r}")
        return fn

    def validate(self, key: str = "", file: Any = None) -> None:
        """Recipe-time check (called by the config loader): weight, args, and that the reward
        loads with these args. Raises `RecipeError` naming `key`."""
        w = self.weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise RecipeError(file, f"{key}.weight" if key else "weight", f"must be a finite number, got {w!r}")
        problem = bounds_problem(self.bounds)
        if problem:
            raise RecipeError(file, f"{key}.bounds" if key else "bounds", problem)
        try:
            self.load()
        except RewardLoadError as e:
            raise RecipeError(file, key, str(e)) from None


def as_spec(item: RewardSpec | Mapping[str, Any] | str) -> RewardSpec:
    """A `RewardSpec` from a spec, a dict (`{name|path, weight, args, label}`) or a string (a
    built-in name or `file.py:function`, weight 1)."""
    if isinstance(item, RewardSpec):
        return item
    if isinstance(item, str):
        return RewardSpec(path=item) if is_plugin_ref(item) else RewardSpec(name=item)
    if isinstance(item, Mapping):
        known = {"name", "path", "weight", "args", "label", "bounds"}
        unknown = sorted(set(item) - known)
        if unknown:
            raise RewardLoadError(f"unknown reward spec key(s) {unknown}; known: {sorted(known)}")
        return RewardSpec(**dict(item))
    raise RewardLoadError(f"a reward spec must be a dict, a RewardSpec or a string, got {type(item).__name__}")


def bounds_problem(bounds: Any) -> str | None:
    """Why `bounds` is not `[low, high]` with finite low < high (None when it is)."""
    ok = (
        isinstance(bounds, (list, tuple))
        and len(bounds) == 2
        and all(isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) for b in bounds)
    )
    if not ok:
        return f"must be [low, high], two finite numbers, got {bounds!r}"
    if not bounds[0] < bounds[1]:
        return f"low must be < high, got {list(bounds)!r}"
    return None


def _check_weight(spec: RewardSpec) -> RewardSpec:
    w = spec.weight
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
        raise RewardLoadError(f"reward {spec.ref!r}: weight must be a finite number, got {w!r}")
    problem = bounds_problem(spec.bounds)
    if problem:
        raise RewardLoadError(f"reward {spec.ref!r}: bounds {problem}")
    return spec


def as_specs(items: Sequence[RewardSpec | Mapping[str, Any] | str]) -> list[RewardSpec]:
    """Specs from a list (see `as_spec`); labels must be unique.

    Raises:
        RewardLoadError: a bad entry, or two rewards with one label (give one a `label`).
    """
    if isinstance(items, (str, Mapping, RewardSpec)):
        items = [items]
    specs = [_check_weight(as_spec(s)) for s in items]
    if not specs:
        raise RewardLoadError("no rewards given")
    seen: set[str] = set()
    for s in specs:
        if s.key in seen:
            raise RewardLoadError(f"two rewards are labelled {s.key!r}; give one a distinct `label`")
        seen.add(s.key)
    return specs


@dataclass
class LoadedReward:
    """A spec with its resolved function (what the runner's workers hold)."""

    spec: RewardSpec
    fn: RewardFn
    batched: bool
    accepted: frozenset[str] | None

    @classmethod
    def from_spec(cls, spec: RewardSpec) -> LoadedReward:
        fn = spec.load()
        return cls(spec, fn, is_batched(fn), accepted_extra(fn))

    def bounded(self, value: tuple[float, dict[str, Any]]) -> tuple[float, dict[str, Any]]:
        """`value` if its score lies in the spec's bounds.

        Raises:
            ValueError: (a reward error) naming the reward, the score and the bounds.
        """
        low, high = self.spec.bounds
        if not low <= value[0] <= high:
            raise ValueError(
                f"reward {self.spec.key!r} returned {value[0]!r}, outside its bounds [{low:g}, {high:g}] "
                "(the spec's `bounds`)"
            )
        return value

    def one(
        self, prompt: str, response: str, ground_truth: Any = None, extra: Mapping[str, Any] | None = None
    ) -> tuple[float, dict[str, Any]]:
        """Score one sample (a batched reward is called with a batch of one)."""
        if self.batched:
            extras = [extra] if extra else None
            return self.bounded(
                call_batched_reward(
                    self.fn, self.spec.args, [prompt], [response], [ground_truth], extras, self.accepted
                )[0]
            )
        return self.bounded(call_reward(self.fn, self.spec.args, prompt, response, ground_truth, extra, self.accepted))

    def many(
        self,
        prompts: list[str],
        responses: list[str],
        ground_truths: list[Any],
        extras: list[Mapping[str, Any]] | None = None,
    ) -> list[tuple[float, dict[str, Any]]]:
        """Score a batch (a per-sample reward is called once per sample)."""
        if self.batched:
            out = call_batched_reward(self.fn, self.spec.args, prompts, responses, ground_truths, extras, self.accepted)
            return [self.bounded(v) for v in out]
        return [
            self.bounded(call_reward(self.fn, self.spec.args, p, r, g, extras[i] if extras else None, self.accepted))
            for i, (p, r, g) in enumerate(zip(prompts, responses, ground_truths))
        ]


class CombinedReward:
    """Weighted sum of several rewards, callable like a single reward.

    `combined(prompt, response, ground_truth, **extra)` returns
    `{"score": sum(w_i * s_i), "<label_i>": s_i, ...}`. Exceptions of a component propagate; the
    `RewardRunner` is the fault-tolerant (parallel, timed-out) way to run the same specs.
    """

    def __init__(self, specs: Sequence[RewardSpec | Mapping[str, Any] | str]) -> None:
        self.specs = as_specs(specs)
        self.rewards = [LoadedReward.from_spec(s) for s in self.specs]

    @property
    def labels(self) -> list[str]:
        return [s.key for s in self.specs]

    def __call__(self, prompt: str, response: str, ground_truth: Any = None, **extra: Any) -> dict[str, float]:
        out: dict[str, float] = {}
        total = 0.0
        for r in self.rewards:
            score, _ = r.one(prompt, response, ground_truth, extra)
            out[r.spec.key] = score
            total += r.spec.weight * score
        return {"score": total, **out}


__all__ = ["DEFAULT_BOUNDS", "CombinedReward", "LoadedReward", "RewardSpec", "as_spec", "as_specs", "bounds_problem"]
