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


# Test modules (or xdist groups) that take minutes, longest first. `make test` runs pytest-xdist with
# --dist loadgroup, which hands whole modules / groups to the workers in collection order: starting
# the long ones first lets the three workers finish together instead of one running a long module
# at the end alone.
LONG_FIRST = (
    "algorithms/test_didi_learning.py",
    "trainer/test_rl_stage.py",
    "trainer/test_real_recipes.py",
    "trainer/test_run_resume_export.py",
    "rewards/test_reward_judge_vllm.py",
    "trainer/test_fsdp2.py",
    "algorithms/test_didi.py",
    "faults/test_training.py",
    "evals/test_opencompass_e2e.py",
    "trainer/test_preference_stage.py",
    "algorithms/test_drakes.py",
    "trainer/test_ref_sync.py",
)


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        path = item.nodeid.split("::")[0]
        return next((i for i, name in enumerate(LONG_FIRST) if path.endswith(name)), len(LONG_FIRST))

    items.sort(key=rank)  # stable: the rest keep their order
