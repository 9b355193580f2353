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

from dare.models.spec import DiffusionSpec
from dare.sampling.base import SAMPLERS, Policy, Sampler
from dare.sampling.config import SamplingConfig
from dare.sampling.engine import DecodeResult, DecodeState, FullAttentionRunner, PromptBatch, decode_blocks
from dare.sampling.ops import (
    factor_transfer,
    gumbel_argmax,
    linear_step_count,
    threshold_transfer,
    token_probability,
    topk_transfer,
    uniform,
)


def parallel_transfer(conf: torch.Tensor, eligible: torch.Tensor, config: SamplingConfig) -> torch.Tensor:
    """Fast-dLLM's threshold rule or the factor rule, whichever the config sets."""
    if config.threshold is not None:
        return threshold_transfer(conf, eligible, config.threshold)
    return factor_transfer(conf, eligible, config.factor)


class LLaDAPolicy(Policy):
    def __init__(self, config: SamplingConfig) -> None:
        self.config = config

    def plan(self, remaining: torch.Tensor, step: int, num_steps: int) -> torch.Tensor | None:
        if self.config.parallel:
            return None
        return linear_step_count(remaining, step, num_steps)

    def propose(self, logits: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        x0 = gumbel_argmax(logits, self.config.temperature, generator)  # [N, L]
        if self.config.remasking == "random":
            conf = uniform(tuple(x0.shape), generator, x0.device)
        else:  # low_confidence: probability of x0 under the un-noised logits
            conf = token_probability(logits, x0)
        return x0, conf

    def select(
        self,
        conf: torch.Tensor,
        eligible: torch.Tensor,
        k: torch.Tensor | None,
        step: int,
        num_steps: int,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        if self.config.parallel:
            return parallel_transfer(conf, eligible, self.config)
        return topk_transfer(conf, eligible, k)


class MaskedDiffusionSampler(Sampler):
    """Shared `run` for full-attention samplers decoded by the block engine."""

    def policy(self, config: SamplingConfig) -> Policy:
        raise NotImplementedError

    def run(
        self,
        model: torch.nn.Module,
        spec: DiffusionSpec,
        batch: PromptBatch,
        config: SamplingConfig,
        generator: torch.Generator | None,
    ) -> DecodeResult:
        end_ids = config.end_token_ids(spec)
        state = DecodeState(batch, config.gen_length, spec, end_ids)
        runner = FullAttentionRunner(model, spec, state, config.cache, config.cfg_scale)
        decode_blocks(
            state, runner, self.policy(config), spec=spec, block_length=config.block_length, steps=config.steps,
            cfg_scale=config.cfg_scale, suppress_ids=end_ids if config.logits_eos_inf else (),
            confidence_end_inf=config.confidence_eos_eot_inf, generator=generator,
        )  # fmt: skip
        return state.result(runner.nfe)


@SAMPLERS.register("llada")
class LLaDASampler(MaskedDiffusionSampler):
    name = "llada"
    attention = "full"
    remasking_choices = ("low_confidence", "random")
    cache_choices = ("none", "prefix", "dual")
    options = frozenset({"remasking", "cfg_scale", "cache", "threshold", "factor", "confidence_eos_eot_inf"})

    @classmethod
    def check_config(cls, config: SamplingConfig) -> None:
        if config.parallel and config.remasking == "random":
            rule = "threshold" if config.threshold is not None else "factor"
            raise ValueError(f"{rule}: parallel decoding compares confidences, but remasking='random' has none")

    def policy(self, config: SamplingConfig) -> Policy:
        return LLaDAPolicy(config)


__all__ = ["LLaDAPolicy", "LLaDASampler", "MaskedDiffusionSampler", "parallel_transfer"]
