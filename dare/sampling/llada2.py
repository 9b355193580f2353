"""LLaDA2's block decoding (`LLaDA2MoeModelLM.generate` of inclusionAI/LLaDA2.0-mini; also 2.1-mini
with its token editing off) for block-causal models.

Per block (block length: the model's `block_size`, 32 for LLaDA2), up to steps_per_block
iterations over the block: every masked position gets its argmax (T = 0) or a
temperature / top-k / top-p draw, with conf = p(token); the step's count k comes from the fixed
schedule split_evenly(block_length, steps_per_block) (remainder first, the release's
`_get_num_transfer_tokens`); every masked position with conf > `threshold` (default 0.95, the
release's) is committed when there are at least k of them, else the k most confident. A row stops
once it holds an EOS with nothing masked before it; the response is cut after its first EOS (the
release stops after the block holding the first EOS and returns up to it: the same tokens).

It runs on the block KV cache of `BlockCausalRunner` (the release recomputes the whole window
every step, `cache="none"` here; block attention makes both give the same logits).

Differences from the released `generate`, by design:
- temperature 0 is argmax (as in 2.1; 2.0's code still draws from softmax(logits) at T = 0);
- the mask token is never proposed (its logit is -inf, as in every dare sampler);
- blocks are aligned to the response start, so prompts of any length batch together; the release
  aligns blocks to absolute positions and decodes the prompt's last partial block together with
  the first response tokens. They coincide when the prompt length is a multiple of block_length;
- `steps` counts all blocks (steps_per_block = steps / num_blocks; the release's `steps` is per
  block), and is at most gen_length (no zero-token steps);
- LLaDA2.1's editing (rewriting decoded tokens above `editing_threshold`) and `max_post_steps`
  are not implemented.
"""

from __future__ import annotations

import torch

from dare.sampling.base import SAMPLERS, Policy
from dare.sampling.config import SamplingConfig
from dare.sampling.ops import split_evenly
from dare.sampling.sdar import SDARPolicy, SDARSampler

RELEASED_THRESHOLD = 0.95  # `generate(threshold=0.95)` of both LLaDA2 releases


class LLaDA2Policy(SDARPolicy):
    """SDAR's dynamic-threshold rule with the release's fixed per-step schedule."""

    def plan(self, remaining: torch.Tensor, step: int, num_steps: int) -> torch.Tensor | None:
        schedule = split_evenly(self.config.block_length, num_steps)
        k = schedule[step] if step < num_steps else 1  # the schedule sums to the block: a safety net
        return torch.full_like(remaining, k)


@SAMPLERS.register("llada2")
class LLaDA2Sampler(SDARSampler):
    name = "llada2"
    remasking_choices = ("low_confidence_dynamic",)
    options = frozenset({"top_p", "top_k", "cache", "threshold", "confidence_eos_eot_inf", "remasking"})

    @classmethod
    def check_config(cls, config: SamplingConfig) -> None:
        if config.threshold is None:  # resolved here so the stored config says what ran
            object.__setattr__(config, "threshold", RELEASED_THRESHOLD)
        if config.steps is not None and config.steps > config.gen_length:
            raise ValueError(
                f"steps={config.steps}: llada2 takes at most gen_length={config.gen_length} steps "
                "(at most one step per token)"
            )

    def policy(self, config: SamplingConfig, generator: torch.Generator | None) -> Policy:
        return LLaDA2Policy(config, generator)


__all__ = ["RELEASED_THRESHOLD", "LLaDA2Policy", "LLaDA2Sampler"]
