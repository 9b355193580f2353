"""Supervised fine-tuning of a diffusion LM on demonstrations.

- Masked diffusion (LLaDA, Dream; full attention): t ~ U(eps, 1) per sequence, answer tokens
  masked with p = (1-eps) t + eps (the prompt never), loss = 1/B sum_b 1/|y_b| sum_{masked} CE / p
  (ML-GSAI/LLaDA GUIDELINES.md). EOS padding is part of the answer, so the model learns to stop.
- Block diffusion (SDAR; block attention): the `[x_t ; x_0]` layout with the three-part block
  mask and one noise level per block (BD3-LM, arXiv 2503.09573; SDAR).

The objective is `dare.diffusion.sft.SFT_OBJECTIVES[spec.attention]`; this file adds only the
per-row noise seeds. `sft` picks the objective from the model's `DiffusionSpec.attention`;
`masked_sft` and `block_sft` name one explicitly (and are refused at recipe load for the other
attention kind). LoRA is a model setting (recipe `model.lora`), not a different algorithm.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from dare.algorithms.base import Algorithm, register_algorithm, row_generators
from dare.diffusion.noise import DEFAULT_EPS, MaskedNoise
from dare.diffusion.sft import SFT_OBJECTIVES, SftBatch, batch_nll
from dare.errors import RecipeError
from dare.models.spec import DiffusionSpec


def per_row_noise(
    draw: Callable[[SftBatch, DiffusionSpec, torch.Generator, float], MaskedNoise],
    batch: SftBatch,
    spec: DiffusionSpec,
    seeds: torch.Tensor,
    eps: float,
) -> MaskedNoise:
    """Draw each row's noise from its own seed `[B]` and stack them `[B, L]`."""
    parts = [draw(batch.rows(b, b + 1), spec, g, eps) for b, g in enumerate(row_generators(seeds))]
    return MaskedNoise(*(torch.cat([getattr(p, f) for p in parts]) for f in ("noisy_ids", "mask", "p_mask")))


@register_algorithm
class SFT(Algorithm):
    """Diffusion SFT; the objective follows the model's attention kind."""

    name = "sft"
    kind = "sft"
    required_batch_keys = ("input_ids", "attention_mask", "response_mask", "noise_seed")

    @dataclass
    class Args:
        # lower bound of the masking probability p = (1 - eps) t + eps
        eps: float = DEFAULT_EPS

        def validate(self, key, file) -> None:
            if not 0.0 <= self.eps < 1.0:
                raise RecipeError(file, f"{key}.eps", f"must be in [0, 1), got {self.eps}")

    def compute_loss(self, model, batch):
        sft_batch = SftBatch.check(batch["input_ids"], batch["response_mask"], batch["attention_mask"])
        draw = SFT_OBJECTIVES.get(self.spec.attention).noise
        noise = per_row_noise(draw, sft_batch, self.spec, batch["noise_seed"], self.args.eps)
        return batch_nll(model, sft_batch, noise, self.spec)


@register_algorithm
class MaskedSFT(SFT):
    name = "masked_sft"
    attention = ("full",)


@register_algorithm
class BlockSFT(SFT):
    name = "block_sft"
    attention = ("block",)


__all__ = ["SFT", "BlockSFT", "MaskedSFT", "per_row_noise"]
