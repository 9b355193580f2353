import os

import pytest
import torch

# Tests never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

FAMILIES = ("llada", "dream", "sdar")


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
