"""Fixtures for the sampling tests: tiny float32 models built once per session."""

from __future__ import annotations

import pytest
import torch
from sampling_helpers import PROMPTS, sharp_tiny


@pytest.fixture(scope="session")
def models() -> dict[str, torch.nn.Module]:
    return {family: sharp_tiny(family) for family in ("llada", "dream", "sdar")}


@pytest.fixture
def prompts() -> list[list[int]]:
    return [list(p) for p in PROMPTS]
