"""Helpers shared by the sampling tests (a uniquely named module: test folders have no
__init__.py, so `conftest` would be ambiguous across folders)."""

from __future__ import annotations

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
