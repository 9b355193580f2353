"""Shared fixtures for the sampling tests: tiny float32 models (built once per session) and
prompts of different lengths, so that batching needs left padding."""

from __future__ import annotations

import pytest
import torch

from dare.models import tiny

# ids < 60 are ordinary tokens of the tiny vocabulary (mask 63, eos = pad 62)
PROMPTS = [[5, 9, 11], [7, 3, 21, 40, 8, 2, 33], [17]]


def sharp_tiny(family: str, seed: int = 1, scale: float = 20.0, **overrides) -> torch.nn.Module:
    """A tiny random model whose output head is scaled up: logits with std ~4 instead of ~0.2, so
    confidences spread over (0, 1) like a trained model's (threshold rules then accept several
    tokens) and near-ties between positions are rare."""
    model = tiny(family, seed=seed, **overrides).eval()
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(scale)
    return model


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine a second
    OpenMP thread that has to wait for a busy core makes every op ~100x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def models() -> dict[str, torch.nn.Module]:
    return {family: sharp_tiny(family) for family in ("llada", "dream", "sdar")}


@pytest.fixture
def prompts() -> list[list[int]]:
    return [list(p) for p in PROMPTS]
