"""What the RL trainer puts in the batch `update_actor` gets.

The decoding trajectory: the decode steps the sampler records are the states it really decoded
from, and the trainer carries them (with the block index, confidence and step count) unchanged
into the batch, where an algorithm that declares `decode_step` in `required_batch_keys` reads it.
A declared critic: its values and the rows' scores join the batch, and the critic is updated on
the same batch. No Ray: the worker groups are stand-ins running the workers' own code
(`generate_batch`, `Critic`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from verl import DataProto

from dare.algorithms.base import CriticSpec
from dare.algorithms.grpo import D1
from dare.config import build_recipe
from dare.data import load_dataset_spec
from dare.data.tasks import builtin_tokenizer
from dare.sampling.backend import DareSamplerBackend
from dare.trainer.rl import RLTrainer
from dare.trainer.stage import StageContext
from dare.workers.builder import build_policy
from dare.workers.critic import Critic, ValueModel
from dare.workers.generation import TRAJECTORY_FILL, generate_batch

GEN, STEPS, BLOCK = 12, 6, 6  # two blocks of 6 tokens, 3 decoding iterations each
SAMPLING = {"algorithm": "llada", "steps": STEPS, "block_length": BLOCK, "temperature": 1.0}
RECIPE = {
    "model": {"family": "llada", "preset": "tiny", "tokenizer": "builtin"},
    "data": {"train": "builtin:sort", "gen_length": GEN},
    "eval": {"enabled": False, "sampling": {"algorithm": "llada", "steps": STEPS, "block_length": BLOCK}},
    "stages": [{"kind": "rl", "algorithm": "d1", "steps": 1, "batch_size": 3, "num_generations": 2,
                "sampling": SAMPLING}],
}  # fmt: skip


class ReplayingD1(D1):
    """d1 plus the trajectory: what an objective that replays the decoding declares (not registered)."""

    name = "test_replaying_d1"
    required_batch_keys = (*D1.required_batch_keys, "decode_step", "decode_block", "decode_num_steps")


@dataclass
class StandInWorkers:
    """A one-rank actor worker group: `generate` runs the workers' `generate_batch`; `update_actor`
    records its batch and runs the algorithm's batch check and loss, as the actor does."""

    model: torch.nn.Module
    world_size: int = 1
    generated: DataProto | None = None
    updated: DataProto | None = None

    def generate(self, data: DataProto) -> DataProto:
        self.generated = generate_batch(DareSamplerBackend(self.model), data, 0)
        return self.generated

    def update_actor(self, data: DataProto) -> DataProto:
        self.updated = data
        algo = ReplayingD1(STAGE.args, self.model.diffusion_spec())
        batch = dict(data.batch.items())
        algo.check_batch(batch)
        (update,) = algo.prepare(self.model, None, batch)
        loss, metrics = algo.compute_loss(self.model, update)
        assert torch.isfinite(loss)
        return DataProto(meta_info={"metrics": metrics})


RECIPE_OBJ = build_recipe(RECIPE)
STAGE = RECIPE_OBJ.stages[0]


def _model(tokenizer):
    return build_policy(RECIPE_OBJ.to_dict()["model"], tokenizer, seed=0).eval()


def one_rl_step(tmp_path, workers: StandInWorkers, critic=None) -> dict[str, float]:
    """The RL trainer's first step on 3 sort prompts x 2 completions, with stand-in worker groups."""
    rows = load_dataset_spec("builtin:sort", split="train", n=6, seed=0, kind="rl")
    ctx = StageContext(RECIPE_OBJ, 0, STAGE, tmp_path, workers, builtin_tokenizer(), rows, None, 0, critic=critic)
    trainer = RLTrainer(ctx)
    trainer.setup()
    try:
        return trainer.step(0)
    finally:
        trainer.close()


def test_decode_steps_are_the_states_the_sampler_decoded_from():
    """Every response token has a step in [0, steps); at the sampler's forward pass j, a response
    token is still masked exactly when its decode step is >= j (unmasked at s: masked before s)."""
    tokenizer = builtin_tokenizer()
    model = _model(tokenizer)
    mask_id = model.diffusion_spec().mask_token_id
    seen = []
    record = lambda module, args, kwargs: seen.append((args[0] if args else kwargs["input_ids"]).clone())  # noqa: E731
    hook = model.register_forward_pre_hook(record, with_kwargs=True)
    prompts = torch.tensor([[5, 6, 7, 8], [0, 9, 10, 11]])
    data = DataProto.from_dict(
        tensors={"input_ids": prompts, "attention_mask": (prompts != 0).long()},
        meta_info={"sampling": {**SAMPLING, "gen_length": GEN}, "seed": 3},
    )
    out = generate_batch(DareSamplerBackend(model), data, 0)
    hook.remove()
    step, resp = out.batch["decode_step"], out.batch["response_mask"].bool()  # [N, GEN]
    assert len(seen) == STEPS and resp.any()
    assert bool(((step[resp] >= 0) & (step[resp] < STEPS)).all()) and bool((step[~resp] == -1).all())
    for j, x in enumerate(seen):
        masked = x[:, -GEN:] == mask_id  # [N, GEN], the state forward pass j decoded from
        assert torch.equal(masked[resp], (step >= j)[resp]), f"forward pass {j}"
    # block index and step count: block b of a row decodes in iterations [3b, 3b + 3)
    block = out.batch["decode_block"]
    assert torch.equal(block[resp], (torch.arange(GEN) // BLOCK).expand_as(step)[resp])
    assert bool(((step // (STEPS // 2))[resp] == block[resp]).all())
    assert torch.equal(out.batch["decode_num_steps"], step.amax(-1) + 1)
    conf = out.batch["decode_confidence"]
    assert bool(((conf[resp] > 0) & (conf[resp] <= 1)).all()) and bool((conf[~resp] == 0).all())


def test_the_trajectory_is_carried_unchanged_from_the_rollout_to_update_actor(tmp_path):
    workers = StandInWorkers(_model(builtin_tokenizer()))
    metrics = one_rl_step(tmp_path, workers)
    gen, batch = workers.generated.batch, workers.updated.batch
    N, P = len(gen["responses"]), batch["input_ids"].shape[1] - GEN
    assert N == 3 * 2 and "actor/pg_loss" in metrics
    for key, fill in TRAJECTORY_FILL.items():  # [N, P+GEN]: the prompt columns filled, the response as sampled
        assert batch[key].shape == batch["input_ids"].shape
        assert torch.equal(batch[key][:, P:], gen[key]) and bool((batch[key][:, :P] == fill).all())
    assert torch.equal(batch["decode_num_steps"], gen["decode_num_steps"])
    assert torch.equal(batch["response_mask"][:, P:].long(), gen["response_mask"])
    assert torch.equal(batch["group_index"], torch.tensor([0, 0, 1, 1, 2, 2]))  # prompt-major groups


@dataclass
class StandInCritic:
    """A one-rank critic worker group around the workers' own `Critic`."""

    critic: Critic
    updated: DataProto | None = None

    def compute_values(self, data: DataProto) -> DataProto:
        return DataProto.from_dict(tensors={"values": self.critic.values(dict(data.batch.items()))})

    def update_critic(self, data: DataProto) -> DataProto:
        self.updated = data
        metrics = self.critic.update(dict(data.batch.items()), ValueFittingD1.critic_loss_of)
        return DataProto(meta_info={"metrics": metrics})


class ValueFittingD1(D1):
    """d1 with a critic that fits each row's score (what a value-baseline objective declares)."""

    name = "test_value_fitting_d1"

    @classmethod
    def critic_spec(cls, args):
        return CriticSpec(lr=1e-3)

    @staticmethod
    def critic_loss_of(values, batch):
        mask = batch["response_mask"].float()
        return ((values - batch["scores"][:, None]) ** 2 * mask).sum() / mask.sum(), {"critic/value_mean": 0.0}


def test_a_declared_critic_gets_the_batch_and_its_values_reach_update_actor(tmp_path):
    workers = StandInWorkers(_model(builtin_tokenizer()))
    critic = StandInCritic(Critic(ValueModel(_model(builtin_tokenizer())), ValueFittingD1.critic_spec(STAGE.args)))
    critic.critic.model.value_head.bias.data.fill_(0.25)  # a visible value
    metrics = one_rl_step(tmp_path, workers, critic)
    batch = workers.updated.batch
    assert batch["values"].shape == batch["input_ids"].shape and bool((batch["values"] != 0).all())
    assert batch["scores"].shape == (6,) and critic.updated is workers.updated  # the same batch
    assert metrics["critic/loss"] > 0 and "critic/value_mean" in metrics and "actor/pg_loss" in metrics
