"""Dynamic sampling (DAPO) in the RL trainer: groups whose rewards are all equal are dropped and
replaced by fresh prompts' groups until the batch is full, within `max_rounds` rollout rounds;
the counts go to the metrics, and the assembled batch is a pure function of the seed. No Ray: the
worker group is a stand-in running dare's rollout backend and recording what update_actor gets."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import torch
from verl import DataProto

from dare.config import build_recipe
from dare.data import load_dataset_spec
from dare.data.tasks import builtin_tokenizer
from dare.sampling.backend import DareSamplerBackend
from dare.trainer.rl import RLTrainer
from dare.trainer.stage import StageContext
from dare.workers.builder import build_policy
from dare.workers.generation import generate_batch

G, B = 4, 3
SAMPLING = {"algorithm": "llada", "steps": 6, "block_length": 6, "temperature": 1.0}


def recipe(**dynamic) -> dict:
    return {
        "model": {"family": "llada", "preset": "tiny", "tokenizer": "builtin"},
        "data": {"train": "builtin:sort", "gen_length": 6},
        "eval": {"enabled": False, "sampling": SAMPLING},
        "stages": [{"kind": "rl", "algorithm": "d1", "steps": 1, "batch_size": B, "num_generations": G,
                    "sampling": SAMPLING, "dynamic_sampling": dynamic}],
    }  # fmt: skip


@dataclass
class StandInWorkers:
    model: torch.nn.Module
    world_size: int = 1
    calls: int = 0
    updated: list[DataProto] = field(default_factory=list)

    def generate(self, data: DataProto) -> DataProto:
        self.calls += 1
        return generate_batch(DareSamplerBackend(self.model), data, 0)

    def update_actor(self, data: DataProto) -> DataProto:
        self.updated.append(data)
        return DataProto(meta_info={"metrics": {"actor/pg_loss": [0.0]}})


class HalfConstantScorer:
    """Reward 1 for every completion of a prompt whose text hashes even (zero variance: nothing to
    learn); for the others a value from the completion's text (groups of G = 4 differ)."""

    def __init__(self) -> None:
        self.groups: list[str] = []

    @staticmethod
    def constant(prompt: str) -> bool:
        return zlib.crc32(prompt.encode()) % 2 == 0

    def score(self, rows, texts):
        self.groups += [r["prompt"] for r in rows[::G]]
        return [
            1.0 if self.constant(r["prompt"]) else (zlib.crc32(t.encode()) % 97) / 97 for r, t in zip(rows, texts)
        ], {"reward/errors": 0.0}

    def close(self) -> None:
        pass


def run_step(tmp_path, **dynamic):
    built = build_recipe(recipe(**dynamic))
    tokenizer = builtin_tokenizer()
    model = build_policy(built.to_dict()["model"], tokenizer, seed=0).eval()
    rows = load_dataset_spec("builtin:sort", split="train", n=16, seed=0, kind="rl")
    workers = StandInWorkers(model)
    ctx = StageContext(built, 0, built.stages[0], tmp_path, workers, tokenizer, rows, None, 0)
    trainer = RLTrainer(ctx)
    trainer.scorer = HalfConstantScorer()
    metrics = trainer.step(0)
    return metrics, workers, trainer.scorer, trainer.stream.rows_at(0)


def test_zero_variance_groups_are_replaced_until_the_batch_is_full(tmp_path):
    metrics, workers, scorer, first_rows = run_step(tmp_path, enabled=True, max_rounds=6)
    constant_first = sum(HalfConstantScorer.constant(r["prompt"]) for r in first_rows)
    assert constant_first > 0, "the test needs a constant-reward prompt in the step's own batch"
    (batch,) = workers.updated
    adv = batch.batch["advantages"]  # [B*G, P+L]; a zero-variance group would have all-zero advantages
    assert adv.shape[0] == B * G
    assert all(bool(adv[g * G : (g + 1) * G].abs().sum() > 0) for g in range(B))
    sampled = len(scorer.groups)
    dropped = sum(HalfConstantScorer.constant(p) for p in scorer.groups)
    assert metrics["dynamic/groups_kept"] == B and metrics["dynamic/groups_filled"] == 0
    assert metrics["dynamic/groups_sampled"] == sampled and metrics["dynamic/groups_dropped"] == dropped
    assert metrics["dynamic/rounds"] == workers.calls > 1
    assert sampled <= 6 * B  # bounded oversampling: at most one batch of prompts per round
    assert metrics["reward/mean"] < 1.0 and "reward/errors" in metrics


def test_the_assembled_batch_is_a_function_of_the_seed(tmp_path):
    _, a, _, _ = run_step(tmp_path / "a", enabled=True, max_rounds=6)
    _, b, _, _ = run_step(tmp_path / "b", enabled=True, max_rounds=6)
    for key in ("input_ids", "attention_mask", "response_mask", "advantages", "decode_step"):
        assert torch.equal(a.updated[0].batch[key], b.updated[0].batch[key]), key


def test_one_round_keeps_the_steps_prompts_and_counts_the_filled_groups(tmp_path):
    metrics, workers, scorer, first_rows = run_step(tmp_path, enabled=True, max_rounds=1)
    constant_first = sum(HalfConstantScorer.constant(r["prompt"]) for r in first_rows)
    assert workers.calls == 1 and metrics["dynamic/rounds"] == 1
    assert metrics["dynamic/groups_filled"] == constant_first == metrics["dynamic/groups_dropped"]
    assert metrics["dynamic/groups_kept"] == B - constant_first
    off, workers_off, _, _ = run_step(tmp_path / "off")  # disabled: the same batch, no dynamic/* metrics
    assert torch.equal(workers.updated[0].batch["input_ids"], workers_off.updated[0].batch["input_ids"])
    assert not any(k.startswith("dynamic/") for k in off)
