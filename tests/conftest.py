import os

import pytest
import torch

# Tests never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

FAMILIES = ("llada", "dream", "sdar")


@pytest.fixture(autouse=True)
def _deterministic_one_thread():
    """Fixed global seed; one intra-op thread: tiny models gain nothing from threads, and on a
    shared 2-core machine an OpenMP thread waiting for a busy core makes ops ~100x slower."""
    torch.manual_seed(0)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True, scope="module")
def _ray_down_after_module():
    """A test module that runs a Pipeline in-process leaves Ray initialised; shut it down so the
    next module (on the same pytest-xdist worker) can start its own."""
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()
