"""Fault injection on the sharded (fsdp2) actor's start: with 2 workers only rank 0 loads the
checkpoint, rank 1 builds the module tree from its config.json alone and waits for rank 0's
weights. A checkpoint whose config is valid but whose weights do not match it must make every rank
raise (rank 0 naming the file), never leave rank 1 waiting for a broadcast that does not come."""

import pytest
import ray
from safetensors.torch import load_file, save_file

from dare.config import ResourcesSpec
from dare.data.tasks import builtin_tokenizer
from dare.models import tiny
from dare.models.checkpoint import save_policy
from dare.trainer.runtime import release, worker_group
from dare.workers.actor import ActorWorker

pytestmark = pytest.mark.xdist_group("faults_sharded_init")

MODEL = {"family": "llada", "preset": "tiny", "tokenizer": "builtin", "dtype": "float32", "overrides": {}}


def test_checkpoint_rank0_cannot_load_fails_every_rank_without_a_hang(tmp_path):
    builtin_tokenizer().save_pretrained(tmp_path / "tok")
    save_policy(tiny("llada", seed=0), tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "model.safetensors"
    tensors = load_file(weights)
    dropped = sorted(tensors)[0]
    del tensors[dropped]  # config.json still valid: only rank 0, which reads the weights, can tell
    save_file(tensors, weights, metadata={"format": "pt"})

    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="ERROR")
    try:
        resources = ResourcesSpec(num_workers=2, num_threads=1)
        group = worker_group(ActorWorker, resources, name="bad_sharded_init", strategy="fsdp2")
        refs = group.execute_all_async("init_model", MODEL, str(tmp_path / "tok"), 0, str(tmp_path / "ckpt"), None)
        errors = []
        for ref in refs:  # a rank left waiting would time out here instead of raising
            with pytest.raises(ray.exceptions.RayTaskError) as raised:
                ray.get(ref, timeout=180)
            errors.append(str(raised.value))
        assert "weights do not match config.json" in errors[0] and dropped in errors[0]
        assert "another rank failed to build the policy" in errors[1]
        release(group)
    finally:
        ray.shutdown()
