"""`RolloutSpec`: the typed rollout settings of every online-RL algorithm's `Args`.

An RL algorithm's `Args` dataclass inherits `RolloutSpec`, so its recipe keys sit flat in the stage
next to the algorithm's own (`num_generations: 8`, `sampling: {...}`, `rewards: [...]`), and the
RL stage trainer reads only these fields: it never looks at which algorithm runs.

Everything is checked when the recipe loads (`dare run --dry-run`), before Ray starts:

- `sampling`: SamplingConfig fields, built and resolved against the model's `DiffusionSpec`
  (`dare.config.schema` checks every `sampling` / `*_sampling` argument), so a typo fails as
  `stages[i].sampling.temprature: not a sampling setting (did you mean 'temperature'?)`;
- `rewards`: typed `RewardSpec`s, each loaded with its `args` checked against the function's
  signature: `stages[i].rewards[j].nme: unknown key`, `stages[i].rewards[j]: unknown reward 'x'`;
- `rollout_backend`: a name of the rollout-backend registry (`dare.sampling.backend`);
- `advantage`: a name of the advantage registry (`dare.diffusion.rl_losses.ADVANTAGES`); an
  unknown one lists the known names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dare.diffusion.rl_losses import ADVANTAGES
from dare.errors import RecipeError, check_fields
from dare.rewards.spec import RewardSpec
from dare.sampling.backend import ROLLOUT_BACKENDS


@dataclass
class DynamicSampling:
    """DAPO's dynamic sampling: a group whose G rewards are all equal has zero advantage and teaches
    nothing; it is dropped and fresh prompts are rolled out until the batch has `batch_size`
    informative groups or `max_rounds` rollout rounds were spent (then dropped groups fill the rest)."""

    enabled: bool = False
    # rollout rounds per step at most, the step's own batch included (bounds the oversampling)
    max_rounds: int = 4


@dataclass
class RolloutSpec:
    # completions sampled per prompt (a group); stage.batch_size counts prompts
    num_generations: int = 8
    # inner policy updates per rollout batch (the trainer draws one noise seed per row and update)
    mu: int = 1
    # rollout SamplingConfig fields (gen_length comes from data.gen_length)
    sampling: dict[str, Any] = field(default_factory=lambda: {"temperature": 1.0})
    # reward functions [{name: countdown, weight: 1.0}, {path: my.py:fn, weight: 0.5, args: {...}}];
    # empty = the built-in task's verifier
    rewards: list[RewardSpec] = field(default_factory=list)
    reward_timeout_s: float = 10.0
    reward_workers: int = 2
    # group advantage estimator: a registered name (grpo, grpo_mean, rloo, ...)
    advantage: str = "grpo_mean"
    # grpo only: divide by the group's std (the estimator declares which arguments it reads)
    norm_adv_by_std: bool = True
    # who samples the rollouts: a registered backend (dare.sampling.backend.ROLLOUT_BACKENDS):
    # "dare" (dare's exact sampler) or "sglang" (SGLang, block-diffusion families, its own environment)
    rollout_backend: str = "dare"
    # replace zero-variance groups by fresh prompts (DAPO): {enabled: true, max_rounds: 4}
    dynamic_sampling: DynamicSampling = field(default_factory=DynamicSampling)

    def validate(self, key: str, file: Any) -> None:
        """Range checks, the advantage name and unique reward labels; raise `RecipeError` naming the key.
        (Each reward spec validated itself when it was built; sampling is checked against the model
        in `dare.config.schema`, which knows it.)"""
        checks = {
            "num_generations": (self.num_generations >= 2, ">= 2 (a group)"),
            "mu": (self.mu >= 1, ">= 1"),
            "reward_timeout_s": (self.reward_timeout_s > 0, "> 0"),
            "reward_workers": (self.reward_workers >= 1, ">= 1"),
        }
        check_fields(self, checks, key, file)
        check_fields(
            self.dynamic_sampling, {"max_rounds": (self.dynamic_sampling.max_rounds >= 1, ">= 1")},
            f"{key}.dynamic_sampling", file,
        )  # fmt: skip
        if self.rollout_backend not in ROLLOUT_BACKENDS:
            raise RecipeError(file, f"{key}.rollout_backend", ROLLOUT_BACKENDS.unknown_message(self.rollout_backend))
        if self.advantage not in ADVANTAGES:
            raise RecipeError(file, f"{key}.advantage", ADVANTAGES.unknown_message(self.advantage))
        seen: dict[str, int] = {}
        for j, spec in enumerate(self.rewards):
            if spec.key in seen:
                raise RecipeError(
                    file,
                    f"{key}.rewards[{j}].label",
                    f"rewards[{seen[spec.key]}] is also labelled {spec.key!r}; give one a distinct label",
                )
            seen[spec.key] = j

    def rollout_sampling(self, gen_length: int) -> dict[str, Any]:
        """The SamplingConfig fields of one rollout call: the stage's `sampling` with the data's
        `gen_length`; the trainer repeats each prompt num_generations times itself."""
        return {**self.sampling, "gen_length": gen_length, "num_generations": 1}


__all__ = ["DynamicSampling", "RolloutSpec"]
