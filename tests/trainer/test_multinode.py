"""Multi-node placement (`resources.nodes`): on a local 2-node Ray cluster (Ray's own test-cluster
utility: a head and a second node process, each with its own CPUs), a 2-worker actor puts one rank
on each node, even though one node alone could hold both workers, and its gloo-wired data-parallel
gradient and update equal the 1-worker full-batch ones. The cluster is torn down whatever happens."""

import pytest
import ray
import torch
from ray.cluster_utils import Cluster
from verl import DataProto

from dare.config import ResourcesSpec, build_recipe
from dare.config.loader import RecipeError
from dare.config.schema import build_stage, stage_to_dict
from dare.data.formatting import collate_sft
from dare.data.tasks import builtin_tokenizer, get_task
from dare.trainer.runtime import release, worker_group
from dare.trainer.stream import BatchStream
from dare.workers.actor import ActorWorker

MODEL = {"family": "llada", "preset": "tiny", "tokenizer": "builtin", "dtype": "float32", "overrides": {}}


def test_two_nodes_one_rank_each_gradient_equals_one_worker(tmp_path):
    tok = builtin_tokenizer()
    tok.save_pretrained(tmp_path / "tok")
    rows = get_task("sort").generate("train", 8, seed=0)
    b = collate_sft(rows, tok, gen_length=10)
    tensors = {k: b[k] for k in ("input_ids", "attention_mask", "response_mask")}
    batch = DataProto.from_dict(
        tensors={**tensors, "noise_seed": BatchStream(rows, 8, seed=0, stage_index=0).noise_seeds(0)}
    )
    stage = build_stage({"kind": "sft", "algorithm": "sft", "steps": 1, "batch_size": 8, "lr": 1e-3}, "s", None)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})  # 2 CPUs: room for both ranks
    try:
        cluster.add_node(num_cpus=2)
        ray.init(address=cluster.address, logging_level="ERROR")
        cluster.wait_for_nodes()
        grads, checks, nodes = {}, {}, {}
        for n in (1, 2):
            res = ResourcesSpec(num_workers=n, nodes=n, num_threads=1, ray_address=cluster.address)
            wg = worker_group(ActorWorker, res, name=f"mn{n}")
            wg.init_model(MODEL, str(tmp_path / "tok"), 0, None, None)
            wg.init_stage(stage_to_dict(stage), stage.args, 1)
            grads[n] = wg.compute_grad(batch).batch["grad"][0]
            wg.update_actor(batch)
            checks[n] = wg.state_checksum()
            # each worker reports its own node (Ray's state API would need the dashboard, which CI lacks)
            node_of = lambda _worker: ray.get_runtime_context().get_node_id()  # noqa: E731 (a lambda travels by value)
            nodes[n] = ray.get([w.__ray_call__.remote(node_of) for w in wg.workers])
            release(wg)
        alive = {nd["NodeID"] for nd in ray.nodes() if nd["Alive"]}
        assert len(alive) == 2 and set(nodes[2]) == alive  # rank 0 and rank 1 on different nodes
        assert grads[1].abs().sum() > 0
        torch.testing.assert_close(grads[2], grads[1], rtol=1e-5, atol=1e-7)
        assert checks[2][0] == checks[2][1]  # replicas identical after the step
        assert abs(checks[2][0] - checks[1][0]) < 1e-6 * abs(checks[1][0])
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_nodes_refused_without_a_cluster_or_an_even_split():
    recipe = {
        "model": {"family": "llada", "preset": "tiny", "tokenizer": "builtin"},
        "resources": {"num_workers": 2, "nodes": 2},
        "stages": [{"kind": "sft", "algorithm": "sft", "steps": 2, "batch_size": 4}],
    }
    with pytest.raises(RecipeError, match=r"resources\.nodes.*ray_address"):
        build_recipe(recipe)
    recipe["resources"].update(nodes=3, ray_address="auto")
    with pytest.raises(RecipeError, match=r"resources\.nodes.*divisor of num_workers"):
        build_recipe(recipe)
