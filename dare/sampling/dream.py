"""Dream's sampling algorithms (Dream-org `diffusion_generate` / `_sample`; Ye et al.,
arXiv 2508.15487), on aligned logits, with semi-AR blocks and Fast-dLLM's caches and parallel
decoding (NVlabs/Fast-dLLM `dream/model/generation_utils_block.py`).

Per block, time grid ts = linspace(1, eps, steps_per_block + 1); at step i (t = ts[i],
s = ts[i+1]) tokens are drawn with temperature / top-p / top-k (argmax at T = 0), then:
  origin:       each masked position is revealed with probability 1 - s/t (all at the last step);
  maskgit_plus: conf = p(x0);  topk_margin: conf = p1 - p2;  entropy: conf = sum p log p;
  for the confidence rules, k = int(n_mask * (1 - s/t)) (all remaining at the last step) positions
  are taken by top-k, or drawn from softmax(conf / alg_temp) when alg_temp > 0.
With `threshold` / `factor` (maskgit_plus, topk_margin) the parallel rule replaces the count.
Under the prefix / dual cache the block's first token is decoded from the full forward at block
start (step 0), because a shifted model cannot predict a window's first token from the window.
"""

from __future__ import annotations

import torch

from dare.sampling.base import ENGINE_OPTIONS, SAMPLERS, STEP_RECORDING, Policy, Sampler
from dare.sampling.config import SamplingConfig
from dare.sampling.ops import (
    dream_step_count,
    dream_timesteps,
    parallel_transfer,
    sample_positions,
    sample_tokens,
    topk_transfer,
    uniform,
)


class DreamPolicy(Policy):
    def plan(self, remaining: torch.Tensor, step: int, num_steps: int) -> torch.Tensor | None:
        if self.config.parallel or self.config.remasking == "origin":
            return None
        return dream_step_count(remaining, step, num_steps, self.config.eps)

    def takes_all(self, step: int, num_steps: int) -> bool:
        return self.config.remasking == "origin" and not self.config.parallel and step >= num_steps - 1

    def propose(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        x0, probs = sample_tokens(logits, c.temperature, c.top_k, c.top_p, self.generator)  # [N, L], [N, L, V]
        if c.remasking == "maskgit_plus":
            conf = probs.gather(-1, x0.unsqueeze(-1)).squeeze(-1)
        elif c.remasking == "topk_margin":
            top2 = probs.topk(2, dim=-1).values
            conf = top2[..., 0] - top2[..., 1]
        elif c.remasking == "entropy":
            conf = torch.special.xlogy(probs, probs).sum(-1)  # negative entropy; 0 * log 0 = 0
        else:  # origin: positions are chosen at random, not by confidence
            conf = torch.zeros_like(x0, dtype=torch.float64)
        return x0, conf

    def select(
        self, conf: torch.Tensor, eligible: torch.Tensor, k: torch.Tensor | None, step: int, num_steps: int
    ) -> torch.Tensor:
        c = self.config
        if c.parallel:
            return parallel_transfer(conf, eligible, c.threshold, c.factor)
        if c.remasking == "origin":
            if step >= num_steps - 1:
                return eligible
            ts = dream_timesteps(num_steps, c.eps)
            p_reveal = 1.0 - ts[step + 1] / ts[step]
            return eligible & (uniform(tuple(eligible.shape), self.generator, eligible.device) < p_reveal)
        if c.alg_temp > 0:
            return sample_positions(conf, eligible, k, c.alg_temp, self.generator)
        return topk_transfer(conf, eligible, k)


@SAMPLERS.register("dream")
class DreamSampler(Sampler):
    name = "dream"
    attention = "full"
    remasking_choices = ("entropy", "maskgit_plus", "topk_margin", "origin")
    cache_choices = ("none", "prefix", "dual")
    options = frozenset(
        {"remasking", "top_p", "top_k", "alg_temp", "eps", "cfg_scale", "cache", "threshold", "factor",
         "confidence_eos_eot_inf"}
    ) | ENGINE_OPTIONS | STEP_RECORDING  # fmt: skip

    @classmethod
    def check_config(cls, config: SamplingConfig) -> None:
        if config.parallel and config.remasking in ("entropy", "origin"):
            rule = "threshold" if config.threshold is not None else "factor"
            raise ValueError(
                f"{rule}: parallel decoding needs confidences in [0, 1]; use remasking='maskgit_plus' or "
                f"'topk_margin', not {config.remasking!r}"
            )
        if config.alg_temp > 0 and (config.parallel or config.remasking == "origin"):
            raise ValueError(
                f"alg_temp={config.alg_temp}: only applies to the fixed-count confidence rules "
                "(not with origin, threshold or factor)"
            )

        if config.confidence_eos_eot_inf and config.remasking == "origin":
            raise ValueError(
                "confidence_eos_eot_inf: remasking='origin' reveals positions at random, without confidences"
            )

    def policy(self, config: SamplingConfig, generator: torch.Generator | None) -> Policy:
        return DreamPolicy(config, generator)


__all__ = ["DreamPolicy", "DreamSampler"]
