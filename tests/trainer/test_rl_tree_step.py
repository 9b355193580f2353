"""The RL trainer's step for an algorithm with its own rollout shape (d-TreeRPO's tree): the tree is
grown through the worker group's `generate` (the workers' `generate_batch` continuing partial
responses), its leaves scored by the stage's rewards, and the segment batch reaches `update_actor`.
No Ray: the worker group is a stand-in running the workers' own code."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from verl import DataProto

from dare.algorithms.dtreerpo import DTreeRPO
from dare.config import build_recipe
from dare.data import load_dataset_spec
from dare.data.formatting import collate_prompts
from dare.data.tasks import builtin_tokenizer
from dare.sampling.backend import DareSamplerBackend
from dare.trainer.rl import RLTrainer
from dare.trainer.stage import StageContext
from dare.trainer.stream import step_generator
from dare.workers.builder import build_policy
from dare.workers.generation import generate_batch

GEN, STEPS = 8, 4
SAMPLING = {"algorithm": "llada", "steps": STEPS, "block_length": 4, "temperature": 1.0}
RECIPE = build_recipe({
    "model": {"family": "llada", "preset": "tiny", "tokenizer": "builtin"},
    "data": {"train": "builtin:sort", "gen_length": GEN},
    "eval": {"enabled": False, "sampling": SAMPLING},
    "stages": [{"kind": "rl", "algorithm": "dtreerpo", "steps": 1, "batch_size": 2, "num_generations": 2,
                "branch_factor": 3, "contraction": 2, "mu": 2, "sampling": SAMPLING}],
})  # fmt: skip
STAGE = RECIPE.stages[0]


@dataclass
class StandInWorkers:
    model: torch.nn.Module
    world_size: int = 1
    calls: int = 0
    updated: DataProto | None = None

    def generate(self, data: DataProto) -> DataProto:
        self.calls += 1
        return generate_batch(DareSamplerBackend(self.model), data, 0)

    def update_actor(self, data: DataProto) -> DataProto:
        self.updated = data
        algo = DTreeRPO(STAGE.args, self.model.diffusion_spec())
        batch = dict(data.batch.items())
        algo.check_batch(batch)
        updates = algo.prepare(self.model, None, batch)
        assert len(updates) == 2  # mu
        loss, metrics = algo.compute_loss(self.model, updates[0])
        assert torch.isfinite(loss)
        return DataProto(meta_info={"metrics": metrics})


def test_the_trainer_grows_the_tree_through_the_workers_and_trains_on_its_segments(tmp_path):
    tokenizer = builtin_tokenizer()
    model = build_policy(RECIPE.to_dict()["model"], tokenizer, seed=0).eval()
    rows = load_dataset_spec("builtin:sort", split="train", n=4, seed=0, kind="rl")
    workers = StandInWorkers(model)
    ctx = StageContext(RECIPE, 0, STAGE, tmp_path, workers, tokenizer, rows, None, 0)
    trainer = RLTrainer(ctx)
    trainer.setup()
    try:
        metrics = trainer.step(0)
    finally:
        trainer.close()
    assert workers.calls == 2  # one generate call per tree level
    batch = workers.updated.batch
    # 2 prompts x (2 + 2 * 3) segments
    assert batch["input_ids"].shape[0] == 16 and batch["noise_seed"].shape == (16, 2)
    assert metrics["rollout/tree_nodes"] == 9.0 and "actor/pg_loss" in metrics and "reward/mean" in metrics
    # the same tree grown in process from the seeds the trainer draws
    spec = model.diffusion_spec()
    shape = DTreeRPO.rollout_shape(STAGE.args, spec, GEN)
    p = collate_prompts(trainer.stream.rows_at(0), tokenizer)
    seeds = torch.randint(0, 2**62, (2,), generator=step_generator(RECIPE.seed, 0, 0, 2))
    backend = DareSamplerBackend(model)

    def continue_fn(ids, mask, resp, s, first, n):
        return backend.continue_generate((ids, mask), resp, {**SAMPLING, "gen_length": GEN}, s.tolist(), first, n)

    local = shape.collect(p["input_ids"], p["attention_mask"], seeds, continue_fn, lambda i, r, m: ([0.0] * len(i), {}))
    assert torch.equal(local.batch["input_ids"], batch["input_ids"])
    assert torch.equal(local.batch["transition_mask"], batch["transition_mask"])
