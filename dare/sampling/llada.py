"""LLaDA low-confidence remasking with semi-autoregressive blocks (ML-GSAI/LLaDA `generate.py`;
Nie et al., arXiv 2502.09992), plus Fast-dLLM's caches and parallel decoding (NVlabs/Fast-dLLM
`llada/generate.py`; Wu et al., arXiv 2505.22618).

Each step of a block:
  x0   = Gumbel-argmax(logits / T) with float64 noise (argmax at T = 0);
  conf = softmax(logits)[x0] in float64 ("low_confidence", un-noised logits) or U[0, 1) ("random");
  commit the k most confident masked positions of the current block, k from the block's
  `schedule` (`ops.STEP_SCHEDULES`: "linear", the even split of its masks over its steps,
  remainder first; "ascending", CJ-GRPO's ASS, 2^i at step i and the rest at the last) — or, with
  `threshold` / `factor`, every position the parallel rule accepts (at least one), looping until
  the block is done.
Guidance (cfg_scale), `logits_eos_inf`, `confidence_eos_eot_inf` and EOSER's `eos_gamma` factor
(`end_confidence_factor`) are applied by the engine.

CJ-GRPO's samplers (arXiv 2509.23924; official yjyddq/EOSER-ASS-RL `eval/generate.py`
`eoser_generate` / `ass_generate` / `eoser_ass_generate`): with one block (block_length =
gen_length, the official `block_num` 1) `schedule: ascending` and `eos_gamma` give the official
tokens. With several blocks each block runs its own schedule and EOSER ramp; the official
multi-block ASS layout (unequal blocks of 2^(p+1) - 1, 2^(p+1), ..., 2^(S-1) + 1 tokens) is not
built.

MDPO's Running Confidence Remasking (`remasking: rcr`; He et al., arXiv 2508.13148, official
autonomousvision/mdpo `src/mdlm_generation_utils.py` `diffusion_generate(rcr=True)`): a decoded
token is not final. Every position keeps a running confidence, the probability its current token
had when it was drawn (softmax(logits / T)[x0], tempered as the official loop does; plain
softmax at T = 0); each step draws every masked position of the response up to the block's end,
then keeps the decoded + k positions with the highest running confidence (k: the schedule's count
for the step) and sends the rest back to mask, so a token committed early with a low confidence
is redrawn once enough better ones exist. The number of tokens held after each step follows the
schedule, as with low_confidence. The ranking covers earlier blocks too (the official ranks every
decoded token of the sequence), so with several blocks a token of a finished block can go back
to mask. Differences from the official loop, by design: the schedule is dare's (`linear`: the
even split, remainder first; the official uses MaskGIT's linear schedule, ceil(M (t+1) / S)
tokens held after step t: the same counts when the steps divide the block), no top-p / top-k
(the official default top_p 0.95 renormalises the confidence over the nucleus), and the prompt
and later blocks never enter the ranking (the official gives them confidence 1.0, so on exact
ties at 1.0 it could remask a prompt token).
"""

from __future__ import annotations

import torch

from dare.sampling.base import ENGINE_OPTIONS, SAMPLERS, STEP_RECORDING, Policy, Sampler
from dare.sampling.config import SamplingConfig
from dare.sampling.ops import (
    STEP_SCHEDULES,
    end_confidence_factor,
    gumbel_argmax,
    parallel_transfer,
    token_probability,
    topk_transfer,
    uniform,
)


class LLaDAPolicy(Policy):
    """low_confidence and random remasking: commit the k most confident (or random) masked
    positions of the block."""

    def plan(self, remaining: torch.Tensor, step: int, num_steps: int) -> torch.Tensor | None:
        if self.config.parallel:
            return None
        return STEP_SCHEDULES.get(self.config.schedule).count(remaining, step, num_steps)

    def end_confidence_factor(self, step: int, num_steps: int) -> float | None:
        if self.config.eos_gamma is None:
            return None
        progress = STEP_SCHEDULES.get(self.config.schedule).progress(step, num_steps)
        return end_confidence_factor(self.config.eos_gamma, progress)

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


class RunningConfidencePolicy(LLaDAPolicy):
    """MDPO's RCR (module docstring): the schedule's counts and top-k rule of `LLaDAPolicy`, applied
    by the engine to decoded tokens and proposals together (`remasks`)."""

    remasks = True

    def propose(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        T = self.config.temperature
        x0 = gumbel_argmax(logits, T, self.generator)  # [N, W]
        # the running confidence: the probability of x0 under the distribution it was drawn from
        return x0, token_probability(logits / T if T > 0 else logits, x0)


# remasking strategy -> policy; the first is the default
REMASKING_POLICIES: dict[str, type[LLaDAPolicy]] = {
    "low_confidence": LLaDAPolicy,
    "random": LLaDAPolicy,
    "rcr": RunningConfidencePolicy,
}


@SAMPLERS.register("llada")
class LLaDASampler(Sampler):
    name = "llada"
    attention = "full"
    remasking_choices = tuple(REMASKING_POLICIES)
    cache_choices = ("none", "prefix", "dual")
    options = (
        frozenset(
            {
                "remasking",
                "cfg_scale",
                "cache",
                "threshold",
                "factor",
                "confidence_eos_eot_inf",
                "schedule",
                "eos_gamma",
            }
        )
        | ENGINE_OPTIONS
        | STEP_RECORDING
    )

    @classmethod
    def check_config(cls, config: SamplingConfig) -> None:
        if config.parallel and config.remasking == "random":
            rule = "threshold" if config.threshold is not None else "factor"
            raise ValueError(f"{rule}: parallel decoding compares confidences, but remasking='random' has none")
        cls._check_schedule(config)
        cls._check_eos_gamma(config)
        cls._check_remasks(config)

    @staticmethod
    def _check_remasks(config: SamplingConfig) -> None:
        if not REMASKING_POLICIES[config.remasking].remasks:
            return
        if config.parallel:
            rule = "threshold" if config.threshold is not None else "factor"
            raise ValueError(
                f"{rule}: remasking={config.remasking!r} holds the schedule's count of tokens after each step; "
                "a parallel rule has no count"
            )
        if config.cache != "none":
            raise ValueError(
                f"cache={config.cache!r}: remasking={config.remasking!r} may send any decoded token back to mask, "
                "so no K/V can be kept across steps; use cache: none"
            )

    @staticmethod
    def _check_schedule(config: SamplingConfig) -> None:
        if config.schedule not in STEP_SCHEDULES:
            raise ValueError(f"schedule: {STEP_SCHEDULES.unknown_message(config.schedule)}")
        if config.parallel and config.schedule != "linear":  # the default: a parallel rule replaces it
            rule = "threshold" if config.threshold is not None else "factor"
            raise ValueError(f"{rule}: schedule={config.schedule!r} fixes the tokens per step; choose one")
        need = STEP_SCHEDULES.get(config.schedule).steps_per_block
        block = config.block_length or config.gen_length
        if config.gen_length % block:  # reported by the block check
            return
        per_block = need(block)
        if per_block is None:
            return
        if per_block < 1:
            raise ValueError(f"block_length={block}: schedule={config.schedule!r} needs blocks of at least 2 tokens")
        want = per_block * (config.gen_length // block)
        if config.steps != want:
            raise ValueError(
                f"steps={config.steps}: schedule={config.schedule!r} takes {per_block} step(s) per block of "
                f"block_length={block} (step i unmasks 2^i tokens, the last step the rest) x "
                f"{config.gen_length // block} block(s); set steps={want}"
            )

    @staticmethod
    def _check_eos_gamma(config: SamplingConfig) -> None:
        if config.eos_gamma is None:
            return
        if config.remasking == "random":
            raise ValueError("eos_gamma: EOSER scales eos confidences, but remasking='random' has none")
        if config.parallel:
            raise ValueError(
                "eos_gamma: EOSER ramps over the block's fixed steps; threshold / factor decode a data-dependent "
                "number of steps"
            )
        if config.confidence_eos_eot_inf:
            raise ValueError("eos_gamma and confidence_eos_eot_inf both hold back end tokens; choose one")

    def policy(self, config: SamplingConfig, generator: torch.Generator | None) -> Policy:
        return REMASKING_POLICIES[config.remasking](config, generator)


__all__ = ["REMASKING_POLICIES", "LLaDAPolicy", "LLaDASampler", "RunningConfidencePolicy"]
