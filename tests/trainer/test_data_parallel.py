"""Data parallelism: the 2-worker gradient (gloo all-reduce) equals the 1-worker full-batch
gradient, and an optimizer step keeps the replicas identical."""

import ray
import torch
from verl import DataProto

from dare.config import ResourcesSpec
from dare.config.schema import build_stage, stage_to_dict
from dare.data.formatting import collate_sft
from dare.data.tasks import builtin_tokenizer, get_task
from dare.trainer.runtime import worker_group
from dare.trainer.stream import BatchStream
from dare.workers.actor import ActorWorker


def sft_stage(**fields):
    raw = {"kind": "sft", "algorithm": "sft", "steps": 10, "batch_size": 8, "lr": 1e-3, **fields}
    return build_stage(raw, "stages[0]", None)


def test_two_worker_gradient_equals_one_worker_full_batch(tmp_path):
    tok = builtin_tokenizer()
    tok.save_pretrained(tmp_path / "tok")
    rows = get_task("sort").generate("train", 8, seed=0)
    b = collate_sft(rows, tok, gen_length=10)
    stream = BatchStream(rows, 8, seed=0, stage_index=0)
    batch = DataProto.from_dict(
        tensors={
            "input_ids": b["input_ids"],
            "attention_mask": b["attention_mask"],
            "response_mask": b["response_mask"],
            "noise_seed": stream.noise_seeds(0),
        }
    )
    model = {"family": "llada", "preset": "tiny", "tokenizer": "builtin", "dtype": "float32", "overrides": {}}
    stage = sft_stage(steps=1, batch_size=8)
    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="ERROR")
    try:
        grads, checks = {}, {}
        for n in (1, 2):
            wg = worker_group(ActorWorker, ResourcesSpec(num_workers=n, num_threads=1), name=f"dp{n}")
            wg.init_model(model, str(tmp_path / "tok"), 0, None, None)
            wg.init_stage(stage_to_dict(stage), stage.args, 1)
            grads[n] = wg.compute_grad(batch).batch["grad"][0]
            wg.update_actor(batch)
            checks[n] = wg.state_checksum()
        assert grads[1].abs().sum() > 0
        torch.testing.assert_close(grads[2], grads[1], rtol=1e-5, atol=1e-7)
        assert checks[2][0] == checks[2][1]  # replicas identical after the step
        assert abs(checks[2][0] - checks[1][0]) < 1e-6 * abs(checks[1][0])
    finally:
        ray.shutdown()
