"""The RL trainer's step-reward path, for an objective that declares `records_steps` (MDPO).

One trainer step with stand-in worker groups running the workers' own code (no Ray): the rollout
records every step, every step's x0-prediction text is scored with the stage's scorer (here a toy
reward, the text's length), and MDPO's step advantages and selected steps are computed on the
driver and reach `update_actor`, where the registered algorithm's loss runs on them. An objective
that does not declare it gets none of this."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from verl import DataProto

from dare.algorithms import ALGORITHMS
from dare.config import build_recipe
from dare.data import load_dataset_spec
from dare.data.tasks import builtin_tokenizer
from dare.sampling.backend import DareSamplerBackend
from dare.trainer.rl import RLTrainer, score_steps
from dare.trainer.stage import StageContext
from dare.workers.builder import build_policy
from dare.workers.generation import generate_batch

GEN, STEPS, K = 8, 4, 3


def recipe(algorithm: str, **args):
    return build_recipe({
        "model": {"family": "llada", "preset": "tiny", "tokenizer": "builtin"},
        "data": {"train": "builtin:sort", "gen_length": GEN},
        "eval": {"enabled": False, "sampling": {"algorithm": "llada", "steps": STEPS}},
        "stages": [{"kind": "rl", "algorithm": algorithm, "steps": 1, "batch_size": 3, "num_generations": 2,
                    "sampling": {"algorithm": "llada", "steps": STEPS, "temperature": 1.0}, **args}],
    })  # fmt: skip


class LengthScorer:
    """A toy reward: the length of the text (characters). Keeps what it was asked to score."""

    def __init__(self) -> None:
        self.calls: list[tuple[list, list[str]]] = []

    def score(self, rows, texts):
        self.calls.append((rows, texts))
        return [float(len(t)) for t in texts], {}

    def close(self) -> None:
        pass


@dataclass
class StandInWorkers:
    """A one-rank worker group: `generate` runs `generate_batch`; `update_actor` keeps the batch and
    runs the stage algorithm's batch check, `prepare` and loss."""

    model: torch.nn.Module
    stage: object
    world_size: int = 1
    updated: DataProto | None = None

    def generate(self, data: DataProto) -> DataProto:
        return generate_batch(DareSamplerBackend(self.model), data, 0)

    def update_actor(self, data: DataProto) -> DataProto:
        self.updated = data
        algo = ALGORITHMS.get(self.stage.algorithm)(self.stage.args, self.model.diffusion_spec())
        batch = dict(data.batch.items())
        algo.check_batch(batch)
        (update,) = algo.prepare(self.model, None, batch)
        loss, metrics = algo.compute_loss(self.model, update)
        assert torch.isfinite(loss)
        return DataProto(meta_info={"metrics": metrics})


def one_step(tmp_path, rec):
    tokenizer = builtin_tokenizer()
    model = build_policy(rec.to_dict()["model"], tokenizer, seed=0).eval()
    workers = StandInWorkers(model, rec.stages[0])
    rows = load_dataset_spec("builtin:sort", split="train", n=6, seed=0, kind="rl")
    ctx = StageContext(rec, 0, rec.stages[0], tmp_path, workers, tokenizer, rows, None, 0)
    trainer = RLTrainer(ctx)
    trainer.setup()
    trainer.scorer.close()
    trainer.scorer = LengthScorer()
    try:
        return trainer, workers, trainer.step(0)
    finally:
        trainer.close()


def hand_step_advantages(r: np.ndarray, G: int) -> np.ndarray:
    """a_t = r_t - r_{t-1} + 1 + mean_{s>t} r_s (the last step: + r_T), z-scored per step over each
    group of G rows (unbiased std + 1e-4), by loops."""
    N, S = r.shape
    a = np.zeros((N, S))
    for n in range(N):
        for t in range(S):
            prev = r[n, t - 1] if t > 0 else 0.0
            future = r[n, t + 1 :].mean() if t < S - 1 else r[n, -1]
            a[n, t] = r[n, t] - prev + 1 + future
    out = np.zeros_like(a)
    for g in range(N // G):
        block = a[g * G : (g + 1) * G]
        out[g * G : (g + 1) * G] = (block - block.mean(0)) / (block.std(0, ddof=1) + 1e-4)
    return out


def test_every_steps_prediction_is_scored_and_the_step_advantages_reach_the_actor(tmp_path):
    trainer, workers, metrics = one_step(tmp_path, recipe("mdpo", sample_train_steps=K))
    assert trainer.sampling["record_steps"] is True  # declared by the algorithm, added by the trainer
    batch = workers.updated.batch
    N, tok = 6, builtin_tokenizer()
    pred, text = batch["step_prediction"], batch["step_text_mask"]
    assert pred.shape == (N, STEPS, GEN) and batch["step_state"].shape == (N, STEPS, GEN)
    rewards = batch["step_rewards"]  # [N, S]: the toy reward of each step's x0-prediction text
    for n in range(N):
        for t in range(STEPS):
            assert rewards[n, t] == len(tok.decode(pred[n, t][text[n, t]].tolist(), skip_special_tokens=True))
    # the last step's prediction is the response: its reward is the completion's
    P = batch["input_ids"].shape[1] - GEN
    resp = batch["response_mask"][:, P:]
    final = [len(tok.decode(batch["input_ids"][n, P:][resp[n]].tolist(), skip_special_tokens=True)) for n in range(N)]
    assert rewards[:, -1].tolist() == final and len(set(rewards.flatten().tolist())) > 2
    want = hand_step_advantages(rewards.double().numpy(), G=2)
    assert np.allclose(batch["step_advantages"].numpy(), want, atol=1e-4)
    top = np.argsort(-np.abs(want).sum(0))[:K]
    assert batch["train_steps"].shape == (N, K) and bool((batch["train_steps"] == batch["train_steps"][0]).all())
    assert sorted(batch["train_steps"][0].tolist()) == sorted(top.tolist())
    # each (prompt, text) pair is scored once: the step call holds no repeat, and covers every step's text
    final_call, step_call = trainer.scorer.calls
    pairs = [(id(r), t) for r, t in zip(*step_call)]
    assert len(pairs) == len(set(pairs)) == metrics["rollout/step_texts_scored"] <= N * STEPS
    assert "actor/pg_loss" in metrics and metrics["mdpo/step_reward_last"] == pytest.approx(np.mean(final))


class CharTokenizer:
    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(ord("a") + i) for i in ids)


def test_a_text_is_scored_once_per_prompt_row():
    """Two completions of one prompt and one of another, 3 steps each: the repeated (prompt, text)
    pairs are scored once, and every step gets its text's reward."""
    pred = torch.tensor([[[0, 1], [0, 2], [0, 2]], [[0, 1], [3, 3], [0, 2]], [[0, 1], [0, 1], [0, 1]]])
    keep = torch.tensor([[True, True], [True, True], [True, False]])[None].expand(3, 3, 2)
    prompt_a, prompt_b = {"prompt": "a"}, {"prompt": "a"}  # equal contents, two prompt rows
    scorer = LengthScorer()
    rewards, scored = score_steps(
        scorer, [prompt_a, prompt_a, prompt_b], {"step_prediction": pred, "step_text_mask": keep}, CharTokenizer()
    )
    # texts: row 0 "ab" "ac" "a", row 1 "ab" "dd" "a", row 2 "ab" "ab" "a"
    assert scorer.calls[0][1] == ["ab", "ac", "a", "dd", "ab", "a"] and scored == 6
    assert rewards.tolist() == [[2, 2, 1], [2, 2, 1], [2, 2, 1]]


def test_an_objective_that_does_not_record_steps_gets_no_step_records(tmp_path):
    trainer, workers, _ = one_step(tmp_path, recipe("d1"))
    assert "record_steps" not in trainer.sampling
    assert not [k for k in workers.updated.batch.keys() if k.startswith("step_")]
