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


# The longest test module, an in-process learning test (no Ray), starts first: `make test` runs
# pytest-xdist with --dist loadgroup, which hands whole modules to the workers in collection order,
# so a long module collected last would run alone at the end. (Starting every long module first
# is slower: several Ray pipelines at once oversubscribe a 2-core machine.)
LONG_FIRST = ("algorithms/test_didi_learning.py",)


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        path = item.nodeid.split("::")[0]
        return next((i for i, name in enumerate(LONG_FIRST) if path.endswith(name)), len(LONG_FIRST))

    items.sort(key=rank)  # stable: the rest keep their order
