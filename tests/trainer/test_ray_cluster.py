"""`resources.ray_address`: a run joins an existing Ray cluster (started here with Ray's own
test-cluster utility, as `ray start --head` would) instead of starting its own, with a 2-worker
FSDP2-sharded actor placed on it."""

import json
import subprocess
import sys

import pytest
import yaml
from ray.cluster_utils import Cluster

RECIPE = {
    "model": {"family": "llada", "preset": "tiny", "tokenizer": "builtin"},
    "data": {"train": "builtin:sort", "num_train": 128, "num_eval": 32, "gen_length": 10},
    "eval": {"num_prompts": 32, "batch_size": 32, "before_first_stage": False,
             "sampling": {"algorithm": "llada", "steps": 10, "block_length": 10}},
    "resources": {"num_workers": 2, "num_threads": 1, "strategy": "fsdp2"},
    "stages": [{"name": "sft", "kind": "sft", "algorithm": "sft", "steps": 30, "batch_size": 16, "lr": 1e-3,
                "log_every": 10}],
}  # fmt: skip


@pytest.mark.slow
def test_run_on_an_existing_cluster_with_fsdp2(tmp_path):
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 4})
    try:
        recipe = json.loads(json.dumps(RECIPE))
        recipe["resources"]["ray_address"] = cluster.address
        path = tmp_path / "recipe.yaml"
        path.write_text(yaml.safe_dump(recipe))
        out = tmp_path / "run"
        proc = subprocess.run(
            [sys.executable, "-m", "dare.cli", "run", str(path), f"output_dir={out}"],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert f"connected to the Ray cluster at {cluster.address}" in proc.stdout
        rows = [json.loads(x) for x in (out / "stage-1-sft" / "metrics.jsonl").read_text().splitlines()]
        assert len(rows) == 30 and rows[-1]["actor/sft_loss"] < rows[0]["actor/sft_loss"]
        assert (out / "stage-1-sft" / "checkpoint" / "model.safetensors").is_file()
        assert "1" in json.loads((out / "run_state.json").read_text())["eval"]
    finally:
        cluster.shutdown()
