"""SDAR block decoding (JetAstra/SDAR `generate.py` `block_diffusion_generate`; Cheng et al.,
arXiv 2510.06303) for block-causal models.

The prompt is prefilled into the KV cache; each block of the response then runs up to
steps_per_block denoising iterations over the block alone (reading the cache, not storing), and
one more forward commits the finished block's K/V. Each iteration samples every masked position
(temperature / top-k / top-p, argmax at T = 0) with conf = p(sampled token) and commits k
positions, k from the even split of the block over its steps:
  low_confidence_static:  the k most confident;
  low_confidence_dynamic: every position with conf > threshold if there are at least k of them,
                          else the k most confident;
  sequential:             the k left-most masks.
`cache="none"` recomputes [prompt | blocks so far] at every step; it must give the same tokens.
"""

from __future__ import annotations

import torch

from dare.models.spec import DiffusionSpec
from dare.sampling.base import ENGINE_OPTIONS, SAMPLERS, STEP_RECORDING, Policy, Sampler
from dare.sampling.config import SamplingConfig
from dare.sampling.engine import BlockCausalRunner, DecodeState, Runner
from dare.sampling.ops import linear_step_count, sample_tokens, topk_transfer


class SDARPolicy(Policy):
    def plan(self, remaining: torch.Tensor, step: int, num_steps: int) -> torch.Tensor | None:
        return linear_step_count(remaining, step, num_steps)

    def propose(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        x0, probs = sample_tokens(logits, c.temperature, c.top_k, c.top_p, self.generator)
        return x0, probs.gather(-1, x0.unsqueeze(-1)).squeeze(-1)

    def select(
        self, conf: torch.Tensor, eligible: torch.Tensor, k: torch.Tensor | None, step: int, num_steps: int
    ) -> torch.Tensor:
        strategy = self.config.remasking
        if strategy == "sequential":
            left_first = -torch.arange(conf.shape[-1], device=conf.device, dtype=torch.float64).expand_as(conf)
            return topk_transfer(left_first, eligible, k)
        top = topk_transfer(conf, eligible, k)
        if strategy == "low_confidence_static":
            return top
        above = eligible & (conf > self.config.threshold)
        enough = above.sum(-1) >= k  # [N]
        return torch.where(enough[:, None], above, top)


@SAMPLERS.register("sdar")
class SDARSampler(Sampler):
    name = "sdar"
    attention = "block"
    remasking_choices = ("low_confidence_static", "low_confidence_dynamic", "sequential")
    cache_choices = ("block", "none")
    options = (
        frozenset({"remasking", "top_p", "top_k", "cache", "threshold", "confidence_eos_eot_inf"})
        | ENGINE_OPTIONS
        | STEP_RECORDING
    )

    @classmethod
    def check_config(cls, config: SamplingConfig) -> None:
        dynamic = config.remasking == "low_confidence_dynamic"
        if dynamic and config.threshold is None:
            raise ValueError("threshold: remasking='low_confidence_dynamic' needs a confidence threshold (e.g. 0.9)")
        if not dynamic and config.threshold is not None:
            raise ValueError(
                f"threshold={config.threshold} is only read by remasking='low_confidence_dynamic' "
                f"(got remasking={config.remasking!r})"
            )

    @classmethod
    def default_block_length(cls, config: SamplingConfig, spec: DiffusionSpec) -> int:
        return spec.block_size

    def policy(self, config: SamplingConfig, generator: torch.Generator | None) -> Policy:
        return SDARPolicy(config, generator)

    def runner(self, model: torch.nn.Module, state: DecodeState, config: SamplingConfig) -> Runner:
        return BlockCausalRunner(model, state.spec, state, config.cache)


__all__ = ["SDARPolicy", "SDARSampler"]
