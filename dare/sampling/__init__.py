"""Diffusion sampling: one entry point, `generate(model, prompts, SamplingConfig) -> Rollout`.

Algorithms are registered by name in `SAMPLERS` (one file each): "llada" (low-confidence
remasking, semi-AR blocks, CFG; MDPO's running-confidence remasking, `remasking: rcr`), "dream" (origin / maskgit_plus / topk_margin / entropy), both
with Fast-dLLM's prefix / dual caches and threshold / factor parallel decoding; "sdar"
(block-causal decoding with a block KV cache); "llada2" (LLaDA2's threshold block decoding, with
LLaDA2.1's token editing); "first_hitting" (exact one-token-per-event).
Samplers read only the model's `DiffusionSpec` and aligned logits, never its family name, and
draw every random number in float64 from the caller's `torch.Generator`.
"""

from dare.models.spec import model_spec
from dare.sampling import (  # noqa: F401  (register the algorithms)
    dream,
    few_step,
    first_hitting,
    guided,
    llada,
    llada2,
    sdar,
    sglang_backend,  # noqa: F401  (registers the SGLang rollout backend; sglang imports on use)
)
from dare.sampling.base import SAMPLERS, Policy, Sampler
from dare.sampling.config import SamplingConfig
from dare.sampling.generate import generate
from dare.sampling.rollout import Rollout

__all__ = ["SAMPLERS", "Policy", "Rollout", "Sampler", "SamplingConfig", "generate", "model_spec"]
