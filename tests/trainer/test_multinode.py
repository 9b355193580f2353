"""Multi-node placement (`resources.nodes`): on a local 2-node Ray cluster (Ray's own test-cluster
utility: a head and a second node process, each with its own CPUs), a 2-worker actor puts one rank
on each node, even though one node alone could hold both workers, and its gloo-wired data-parallel
gradient and update equal the 1-worker full-batch ones; with `resources.reference: separate` each
reference rank lands on its actor rank's node (and a node without room for it is a clear error).
The cluster is torn down whatever happens."""

import dataclasses

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
from dare.trainer import runtime
from dare.trainer.pipeline import reference_group
from dare.trainer.runtime import release, worker_group, worker_nodes
from dare.trainer.stream import BatchStream
from dare.workers.actor import ActorWorker
from dare.workers.reference import ReferenceWorker

MODEL = {"family": "llada", "preset": "tiny", "tokenizer": "builtin", "dtype": "float32", "overrides": {}}


def test_two_nodes_one_rank_each_gradient_equals_one_worker(tmp_path, monkeypatch):
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
        grads, checks, nodes, refs = {}, {}, {}, {}
        for n in (1, 2):
            res = ResourcesSpec(num_workers=n, nodes=n, num_threads=1, ray_address=cluster.address)
            wg = worker_group(ActorWorker, res, name=f"mn{n}")
            wg.init_model(MODEL, str(tmp_path / "tok"), 0, None, None)
            wg.init_stage(stage_to_dict(stage), stage.args, 1)
            grads[n] = wg.compute_grad(batch).batch["grad"][0]
            wg.update_actor(batch)
            checks[n] = wg.state_checksum()
            nodes[n] = worker_nodes(wg)  # each worker reports its own node (Ray's state API needs the dashboard)
            if n == 2:
                refs[2] = _reference_placement(wg, res, nodes[2], monkeypatch)
            release(wg)
        alive = {nd["NodeID"] for nd in ray.nodes() if nd["Alive"]}
        assert len(alive) == 2 and set(nodes[2]) == alive  # rank 0 and rank 1 on different nodes
        assert refs[2] == nodes[2]  # reference rank i on actor rank i's node
        assert grads[1].abs().sum() > 0
        torch.testing.assert_close(grads[2], grads[1], rtol=1e-5, atol=1e-7)
        assert checks[2][0] == checks[2][1]  # replicas identical after the step
        assert abs(checks[2][0] - checks[1][0]) < 1e-6 * abs(checks[1][0])
    finally:
        ray.shutdown()
        cluster.shutdown()


def _reference_placement(actor, res: ResourcesSpec, actor_nodes: list[str], monkeypatch) -> list[str]:
    """The pipeline's separate reference group beside a 2-node actor: its ranks' nodes. Then, with
    both nodes full, a second one fails naming the node; and ranks follow given nodes, not Ray's
    choice (the reverse order lands reversed)."""
    ref_res = dataclasses.replace(res, reference="separate")
    ref = reference_group(actor, ref_res)
    placed = worker_nodes(ref)
    with monkeypatch.context() as m, pytest.raises(
        RuntimeError, match=rf"reference rank i on actor rank i's node: ref_full ranks 0\.\.0 go on "
        rf"node {actor_nodes[0]}, .* no room for 1 more worker",
    ):  # fmt: skip
        m.setattr(runtime, "RAY_CONNECT_TIMEOUT_S", 1.0)  # the wait for room, shortened
        reference_group(actor, ref_res, name="ref_full")
    release(ref)  # (its CPUs come back a moment later: the next group waits the full timeout for them)
    rev = worker_group(ReferenceWorker, ref_res, name="ref_rev", on_nodes=actor_nodes[::-1])
    assert worker_nodes(rev) == actor_nodes[::-1]
    release(rev)
    return placed


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


def test_given_nodes_must_be_node_by_node():
    from dare.trainer.runtime import _node_runs

    assert _node_runs(["a", "a", "b", "b"]) == ["a", "b"] and _node_runs(["b", "a"]) == ["b", "a"]
    for bad in (["a", "a", "a", "b"], ["a", "b", "a", "b"]):  # uneven; a node twice
        with pytest.raises(ValueError, match="ranks must be node by node, the same number on each node"):
            _node_runs(bad)
