"""Fixtures for the sampling tests: tiny float32 models built once per session."""

from __future__ import annotations

import pytest
import torch
from sampling_helpers import PROMPTS, sharp_tiny

from dare.algorithms.didi_discriminator import DiffusionDiscriminator
from dare.sampling.guided import Guidance, GuidedModel


@pytest.fixture(scope="session")
def models() -> dict[str, torch.nn.Module]:
    out = {family: sharp_tiny(family) for family in ("llada", "dream", "sdar")}
    # "guided" (rgas): the llada model steered by a discriminator built from another tiny llada
    disc = DiffusionDiscriminator(sharp_tiny("llada", seed=2), unfrozen_blocks=1)
    out["guided"] = GuidedModel(out["llada"], disc, Guidance(num_candidates=3))
    return out


@pytest.fixture
def prompts() -> list[list[int]]:
    return [list(p) for p in PROMPTS]
