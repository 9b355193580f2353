"""LLaDA low-confidence remasking with semi-autoregressive blocks (ML-GSAI/LLaDA `generate.py`;
Nie et al., arXiv 2502.09992), plus Fast-dLLM's caches and parallel decoding (NVlabs/Fast-dLLM
`llada/generate.py`; Wu et al., arXiv 2505.22618).

Each step of a block:
  x0   = Gumbel-argmax(logits / T) with float64 noise (argmax at T = 0);
  conf = softmax(logits)[x0] in float64 ("low_confidence", un-noised logits) or U[0, 1) ("random");
  commit the k most confident masked positions of the current block, k from the even split of
  the block's masks over its steps (remainder first) — or, with `threshold` / `factor`, every
  position the parallel rule accepts (at least one), looping until the block is done.
Guidance (cfg_scale), `logits_eos_inf` and `confidence_eos_eot_inf` are applied by the engine.
"""

from __future__ import annotations

import torch

from dare.sampling.base import ENGINE_OPTIONS, SAMPLERS, STEP_RECORDING, Policy, Sampler
from dare.sampling.config import SamplingConfig
from dare.sampling.ops import (
    gumbel_argmax,
    linear_step_count,
    parallel_transfer,
    token_probability,
    topk_transfer,
    uniform,
)


class LLaDAPolicy(Policy):
    def plan(self, remaining: torch.Tensor, step: int, num_steps: int) -> torch.Tensor | None:
        if self.config.parallel:
            return None
        return linear_step_count(remaining, step, num_steps)

    def propose(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x0 = gumbel_argmax(logits, self.config.temperature, self.generator)  # [N, L]
        if self.config.remasking == "random":
            conf = uniform(tuple(x0.shape), self.generator, x0.device)
        else:  # low_confidence: probability of x0 under the un-noised logits
            conf = token_probability(logits, x0)
        return x0, conf

    def select(
        self, conf: torch.Tensor, eligible: torch.Tensor, k: torch.Tensor | None, step: int, num_steps: int
    ) -> torch.Tensor:
        if self.config.parallel:
            return parallel_transfer(conf, eligible, self.config.threshold, self.config.factor)
        return topk_transfer(conf, eligible, k)


@SAMPLERS.register("llada")
class LLaDASampler(Sampler):
    name = "llada"
    attention = "full"
    remasking_choices = ("low_confidence", "random")
    cache_choices = ("none", "prefix", "dual")
    options = (
        frozenset({"remasking", "cfg_scale", "cache", "threshold", "factor", "confidence_eos_eot_inf"})
        | ENGINE_OPTIONS
        | STEP_RECORDING
    )

    @classmethod
    def check_config(cls, config: SamplingConfig) -> None:
        if config.parallel and config.remasking == "random":
            rule = "threshold" if config.threshold is not None else "factor"
            raise ValueError(f"{rule}: parallel decoding compares confidences, but remasking='random' has none")

    def policy(self, config: SamplingConfig, generator: torch.Generator | None) -> Policy:
        return LLaDAPolicy(config, generator)


__all__ = ["LLaDAPolicy", "LLaDASampler"]
