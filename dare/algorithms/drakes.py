"""DRAKES: reward backpropagation through the whole (truncated) reverse trajectory.

Wang et al., "Fine-Tuning Discrete Diffusion Models via Reward Optimization with Applications to
DNA and Protein Design" (arXiv 2410.13643); official code ChenyuWang-Monica/DRAKES
`drakes_dna/finetune_reward_bp.py`, `drakes_protein/fmif/finetune_reward_bp.py`.

Per prompt, the relaxed sampler (`dare.sampling.relaxed`) draws a response x_0 with Gumbel-softmax
relaxed steps (temperature `tau`) over the last `truncate_steps` reverse steps and a
straight-through final sample; the loss is

    L = -mean_b r(x_0^b) + alpha_k * mean_b sum_{relaxed steps t->s} sum_{i masked in x_t} r_ts KL(p_theta^i || p_ref^i)

with r the differentiable reward (`dare.rewards.differentiable`: `fn(token_probs [B, L, V]) -> [B]`),
r_ts = (t - s) / t the step's reveal probability (the exact KL of the transition kernels, the
"clean exact alternative" of the official per-step KL), and alpha_k = alpha * min(1, (k + 1) /
alpha_warmup_steps) at trainer step k (the official `alpha_schedule_warmup`; 0 = no warm-up).
The reference is the stage's starting policy (frozen copy) or, with LoRA, the model with its
adapter disabled; it is evaluated at every relaxed step on the same soft states.

The logged reward (`reward/mean`) is the reward of the hard sample: the straight-through input's
value is exactly one-hot(x_0), so the reward's value is r(hard x_0).

Defaults follow the official protein recipe where they transfer (tau 0.5, truncate_steps 25 of
~50 steps scale to dare's 16-step default; alpha 3e-4 for a reward of order 1); dare's stage keys
set lr / grad_accum / grad_clip (official: Adam, clip 1.0, accumulation 4-8).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from dare.algorithms.base import Algorithm, register_algorithm, row_generators
from dare.errors import RecipeError
from dare.models.spec import ReferenceFn
from dare.sampling.relaxed import RelaxedConfig, relaxed_sample


def relaxed_config(args: Any, gen_length: int) -> RelaxedConfig:
    """The relaxed sampler's settings from DRAKES's arguments."""
    return RelaxedConfig(
        steps=args.sampling_steps, gen_length=gen_length, block_length=args.block_length,
        tau=args.tau, truncate_steps=args.truncate_steps, straight_through=args.straight_through,
    )  # fmt: skip


@register_algorithm
class DRAKES(Algorithm):
    name = "drakes"
    supports_sharding = False  # the relaxed sampler reads the embedding matrix outside forward
    # ... of the reference too, and backpropagates through its forward: it stays with the actor
    separate_reference = False
    kind = "rl"
    trainer = "drakes"
    attention = ("full", "block")
    required_batch_keys = ("input_ids", "attention_mask", "noise_seed", "train_step")

    @dataclass
    class Args:
        # the differentiable reward: a built-in name (task_match), {name: task_match | linear | reward_model,
        # args: {...}} or {path: file.py:fn, args: {...}}
        reward: dict[str, Any] | str = field(default_factory=dict)
        # Gumbel-softmax temperature of the relaxed steps
        tau: float = 0.5
        # reverse steps of the relaxed sampler (over all blocks)
        sampling_steps: int = 16
        # the last truncate_steps steps are relaxed and backpropagated; earlier ones are hard, no_grad
        truncate_steps: int = 8
        # response positions; null = data.gen_length
        gen_length: int | None = None
        # semi-AR blocks (full attention); null = one block (block attention: the model's block_size)
        block_length: int | None = None
        # straight-through relaxed states: the model reads the exact (hard) sample at every step, the
        # gradient is the Gumbel-softmax one (false = the official soft states)
        straight_through: bool = False
        # KL weight to the reference policy (0 = no reference forwards)
        alpha: float = 3e-4
        # alpha grows linearly over this many trainer steps (0 = constant)
        alpha_warmup_steps: int = 0

        def validate(self, key: str, file: Any) -> None:
            checks = {
                "tau": self.tau > 0,
                "sampling_steps": self.sampling_steps >= 1,
                "truncate_steps": 1 <= self.truncate_steps <= self.sampling_steps,
                "alpha": self.alpha >= 0,
                "alpha_warmup_steps": self.alpha_warmup_steps >= 0,
                "gen_length": self.gen_length is None or self.gen_length >= 1,
                "block_length": self.block_length is None or self.block_length >= 1,
            }
            for name, ok in checks.items():
                if not ok:
                    extra = f" (need 1 <= truncate_steps <= sampling_steps={self.sampling_steps})" * (
                        name == "truncate_steps"
                    )
                    raise RecipeError(file, f"{key}.{name}", f"invalid value {getattr(self, name)!r}{extra}")
            if not self.reward:
                raise RecipeError(
                    file,
                    f"{key}.reward",
                    "is required: task_match, {name: task_match|linear|reward_model, args: {...}} or {path: file.py:fn}",
                )
            from dare.rewards.differentiable import check_spec

            try:
                check_spec(self.reward)
            except (ValueError, TypeError, KeyError) as e:
                raise RecipeError(file, f"{key}.reward", str(e).strip("\"'")) from None

    def __init__(self, args: Any, spec) -> None:
        super().__init__(args, spec)
        if args.gen_length is None:
            raise ValueError("drakes: gen_length is not set (the stage trainer fills it from data.gen_length)")
        self.config = relaxed_config(args, args.gen_length)
        self.config.validate(spec)
        self._reward = None
        self._reference: ReferenceFn | None = None

    @classmethod
    def check_fit(cls, args: Any, spec, gen_length: int) -> None:
        relaxed_config(args, args.gen_length or gen_length).validate(spec)

    @property
    def needs_reference(self) -> bool:
        return self.args.alpha > 0

    def reward_fn(self, vocab_size: int):
        """The differentiable reward, built on first use (in the actor's process)."""
        if self._reward is None:
            from dare.rewards.differentiable import build_differentiable_reward

            self._reward = build_differentiable_reward(self.args.reward, vocab_size=vocab_size)
        return self._reward

    def alpha_at(self, step: int) -> float:
        a = self.args
        return a.alpha * min(1.0, (step + 1) / a.alpha_warmup_steps) if a.alpha_warmup_steps else a.alpha

    def prepare(
        self, model: torch.nn.Module, reference: ReferenceFn | None, batch: dict[str, torch.Tensor]
    ) -> list[dict[str, torch.Tensor]]:
        """Nothing to precompute: the reference is needed along the trajectory sampled inside
        `compute_loss`, so its context-manager factory is kept for it."""
        self._reference = reference
        return [batch]

    def compute_loss(self, model, batch):
        vocab = model.config.vocab_size
        reward = self.reward_fn(vocab)
        alpha = self.alpha_at(int(batch["train_step"][0]))
        reference = self._reference if self.needs_reference else None
        if reference is None and self.needs_reference:
            raise RuntimeError("drakes: alpha > 0 needs the reference policy; call prepare() first")
        ids, mask = batch["input_ids"], batch["attention_mask"]
        sample = relaxed_sample(
            model, ids, mask, self.spec, self.config, row_generators(batch["noise_seed"]), reference=reference,
            vocab_size=vocab,
        )  # fmt: skip
        r = reward(sample.probs, prompt_ids=ids, prompt_mask=mask)  # [B]; value = r(hard sample)
        kl = sample.kl  # [B]
        loss = -r.mean() + alpha * kl.mean()
        metrics = {
            "reward/mean": float(r.detach().mean()),
            "reward/std": float(r.detach().std()) if r.numel() > 1 else 0.0,
            "actor/kl": float(kl.detach().mean()),
            "actor/alpha": alpha,
            "actor/loss": float(loss.detach()),
        }
        return loss, metrics


__all__ = ["DRAKES"]
