"""The online RL stage trainer (d1, coupled-GRPO and any algorithm of kind "rl").

Per step:
    prompts (deterministic rows of the step) -> each repeated num_generations times
    -> rollout through the stage's `RolloutBackend` (`rollout_backend`, default dare's sampler) on the
       rollout workers (colocated actor or synced copy), one seed per completion, its
       decoding trajectory kept in the batch (`decode_step`, `decode_block`, `decode_confidence`,
       `decode_num_steps`; `dare.workers.generation`) for objectives that replay it
    -> rewards (built-in verifier or the recipe's reward functions, in parallel, never crashing)
    -> an algorithm that declares `records_steps` (MDPO): its rollouts record every denoising step
       (`sampling.record_steps`) and every step's x0-prediction text is scored with the same rewards
       (`step_rewards` `[N, S]`)
    -> with `dynamic_sampling`, zero-variance groups replaced by fresh prompts' groups (DAPO)
    -> group advantages (verl estimators), then the algorithm's own driver-side tensors
       (`Algorithm.group_tensors`, e.g. MDPO's step advantages: they need whole groups)
    -> actor.update_actor: mu inner updates, each with one noise plan shared by old/ref/current
    -> sync the separate rollout's weights

An algorithm that declares its own `RolloutShape` (`Algorithm.rollout_shape`, d-TreeRPO's tree)
replaces the rollout, rewards and advantages above: `shaped_step` hands the shape the step's
prompts, a resumed-decoding function on the rollout workers and the scorer, and trains on its batch.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from verl import DataProto

from dare.algorithms import ALGORITHMS
from dare.algorithms.base import RolloutShape
from dare.algorithms.rollout import RolloutSpec
from dare.data.formatting import collate_prompts
from dare.diffusion.rl_losses import compute_advantages
from dare.diffusion.rl_registry import ADVANTAGES
from dare.rewards.spec import RewardSpec
from dare.sampling.engine import STEP_RECORD_KEYS
from dare.trainer.evaluate import row_scorer
from dare.trainer.loop import StageTrainer
from dare.trainer.metrics import rank_zero_metrics
from dare.trainer.runtime import dp_call
from dare.trainer.stage import STAGE_TRAINERS, StageContext
from dare.trainer.stream import step_generator
from dare.workers.builder import policy_spec
from dare.workers.generation import TRAJECTORY_FILL


class TaskVerifierScorer:
    """Rewards from each row's own scorer (`row_scorer`: its built-in task's verifier, its declared data
    source's, its ground truth's shape's, else exact match)."""

    def score(self, rows: list[dict[str, Any]], texts: list[str]) -> tuple[list[float], dict[str, float]]:
        return [row_scorer(row)(text) for row, text in zip(rows, texts)], {}

    def close(self) -> None:
        pass


class RewardFunctionScorer:
    """The recipe's reward functions (`dare.rewards`), run in worker processes with a timeout;
    a reward that raises or hangs scores 0 and is counted in `reward/errors` / `reward/timeouts`."""

    def __init__(self, specs: list[RewardSpec], num_workers: int, timeout_s: float) -> None:
        from dare.rewards.runner import RewardRunner

        self.runner = RewardRunner(specs, num_workers=num_workers, timeout_s=timeout_s)

    def score(self, rows: list[dict[str, Any]], texts: list[str]) -> tuple[list[float], dict[str, float]]:
        extras = [{k: v for k, v in row.items() if k not in ("prompt", "response", "ground_truth")} for row in rows]
        prompts = [row["prompt"] if isinstance(row["prompt"], str) else str(row["prompt"]) for row in rows]
        scores, metrics, _ = self.runner.score(prompts, texts, [row.get("ground_truth") for row in rows], extras)
        return scores, metrics

    def close(self) -> None:
        self.runner.close()


def build_scorer(args: RolloutSpec) -> TaskVerifierScorer | RewardFunctionScorer:
    """The built-in verifier when the recipe names no reward functions."""
    if not args.rewards:
        return TaskVerifierScorer()
    return RewardFunctionScorer(args.rewards, args.reward_workers, args.reward_timeout_s)


class RLTrainer(StageTrainer):
    def __init__(self, ctx: StageContext) -> None:
        super().__init__(ctx)
        if not isinstance(ctx.stage.args, RolloutSpec):
            raise TypeError(
                f"{ctx.stage.algorithm}: an rl stage's Args must inherit RolloutSpec (dare.algorithms.rollout)"
            )
        self.args: RolloutSpec = ctx.stage.args
        self.sampling = self.args.rollout_sampling(ctx.recipe.data.gen_length)
        self.algorithm = ALGORITHMS.get(ctx.stage.algorithm)
        if self.algorithm.records_steps:  # the objective trains on every denoising step
            self.sampling["record_steps"] = True
        self.scorer = None
        # the algorithm's own rollout shape (d-TreeRPO's tree), else None: G responses per prompt
        algo = ALGORITHMS.get(ctx.stage.algorithm)
        spec = policy_spec(ctx.recipe.to_dict()["model"], ctx.tokenizer)
        self.shape: RolloutShape | None = algo.rollout_shape(self.args, spec, ctx.recipe.data.gen_length)

    def setup(self) -> None:
        self.scorer = build_scorer(self.args)
        # a separate rollout is otherwise synced only by evaluation and after updates: without
        # eval, the first step would sample with the weights it was built with, not the policy's
        self.ctx.sync_rollout()

    def close(self) -> None:
        if self.scorer is not None:
            self.scorer.close()

    def rollout(self, step: int) -> tuple[DataProto, list[dict[str, Any]], dict[str, float], list[str]]:
        """Sample G completions for each prompt of the step; return the training batch (without
        advantages), the row of each completion, rollout metrics and the decoded completions."""
        ctx, G = self.ctx, self.args.num_generations
        rows = self.stream.rows_at(step)
        # one seed per completion, a pure function of (seed, stage, step, row): the tokens do not
        # depend on how many workers share the batch or what a row is batched with
        g = step_generator(ctx.recipe.seed, ctx.index, step, 2)
        return self.rollout_rows(rows, torch.randint(0, 2**62, (len(rows) * G,), generator=g))

    def rollout_rows(
        self, rows: list[dict[str, Any]], seeds: torch.Tensor
    ) -> tuple[DataProto, list[dict[str, Any]], dict[str, float], list[str]]:
        """`rollout` of given prompt rows; `seeds` `[len(rows) * G]`, one per completion."""
        ctx, G = self.ctx, self.args.num_generations
        p = collate_prompts(rows, ctx.tokenizer)
        prompts = DataProto.from_dict(
            tensors={"input_ids": p["input_ids"], "attention_mask": p["attention_mask"]},
            meta_info={"sampling": self.sampling, "rollout_backend": self.args.rollout_backend},
        ).repeat(G, interleave=True)  # prompt-major: rows i*G .. i*G+G-1 answer prompt i
        prompts.batch["rollout_seed"] = seeds
        sampler = ctx.sampler
        t0 = time.perf_counter()
        out = dp_call(sampler.generate, prompts, sampler.world_size)
        rollout_s = time.perf_counter() - t0
        responses, rmask = out.batch["responses"], out.batch["response_mask"].bool()
        N, P = prompts.batch["input_ids"].shape
        batch = {
            "input_ids": torch.cat([prompts.batch["input_ids"], responses], 1),  # [N, P+G]
            "attention_mask": torch.cat([prompts.batch["attention_mask"], torch.ones_like(responses)], 1),
            "response_mask": torch.cat([torch.zeros(N, P, dtype=torch.bool), rmask], 1),
            # the decoding trajectory, aligned with input_ids: [N, G] -> [N, P+G]
            **{k: F.pad(out.batch[k], (P, 0), value=fill) for k, fill in TRAJECTORY_FILL.items()},
            "decode_num_steps": out.batch["decode_num_steps"],  # [N]
            # per-step records (`record_steps`), response-aligned [N, S, L]
            **{k: out.batch[k] for k in STEP_RECORD_KEYS if k in out.batch.keys()},
        }
        texts = [ctx.tokenizer.decode(r[m].tolist(), skip_special_tokens=True) for r, m in zip(responses, rmask)]
        row_of = [rows[i // G] for i in range(N)]
        metrics = {
            "perf/rollout_s": rollout_s,
            "perf/rollout_tokens_per_s": float(rmask.sum()) / rollout_s,
            "rollout/response_length": float(rmask.sum(-1).float().mean()),
            "rollout/policy_version": float(out.batch["policy_version"].min()),
        }
        return DataProto.from_dict(tensors=batch), row_of, metrics, texts

    def scored_round(
        self, step: int, rows: list[dict[str, Any]] | None = None, seeds: torch.Tensor | None = None
    ) -> Round:
        """One rollout round and its rewards: the step's own rows, or `rows` with `seeds`."""
        data, row_of, metrics, texts = self.rollout(step) if rows is None else self.rollout_rows(rows, seeds)
        t0 = time.perf_counter()
        scores, reward_metrics = self.scorer.score(row_of, texts)
        metrics["perf/reward_s"] = time.perf_counter() - t0
        if self.algorithm.records_steps:
            t0 = time.perf_counter()
            data.batch["step_rewards"], scored = score_steps(self.scorer, row_of, data.batch, self.ctx.tokenizer)
            metrics["perf/step_reward_s"] = time.perf_counter() - t0
            metrics["rollout/step_texts_scored"] = float(scored)  # distinct (prompt, text) pairs of N x S
        return Round(data, row_of, scores, metrics, reward_metrics)

    def step(self, step: int) -> dict[str, float]:
        if self.shape is not None:
            return self.shaped_step(step)
        ctx, G = self.ctx, self.args.num_generations
        rnd = self.scored_round(step)
        if self.args.dynamic_sampling.enabled:
            rnd = informative_batch(self, step, rnd)
        data, scores, metrics = rnd.data, rnd.scores, rnd.metrics
        scores_t = torch.tensor(scores, dtype=torch.float32)
        uid = np.array([i // G for i in range(len(scores))], dtype=object)
        kwargs = ADVANTAGES.get(self.args.advantage).kwargs(self.args)  # the settings the estimator declares
        adv, adv_metrics = compute_advantages(self.args.advantage, scores_t, uid, data.batch["response_mask"], **kwargs)
        data.batch["advantages"] = adv
        data.batch["group_index"] = torch.arange(len(scores)) // G  # [N], the prompt each row answers
        extra, group_metrics = self.algorithm.group_tensors(self.args, data.batch, uid)
        for k, v in extra.items():
            data.batch[k] = v
        adv_metrics = {**adv_metrics, **group_metrics}
        data.batch["noise_seed"] = self.noise_seeds(step, len(scores))
        if ctx.critic is not None:  # the algorithm declared a critic: its values go with the batch
            data.batch["scores"] = scores_t
            data.batch["values"] = ctx.critic.compute_values(data).batch["values"]  # [N, P+G]
        metrics.update(self.update(data))
        metrics.update(rnd.reward_metrics)
        metrics.update(adv_metrics)
        return {**metrics, **reward_stats(scores_t)}

    def noise_seeds(self, step: int, n: int) -> torch.Tensor:
        """`[n, mu]`: each row's estimator noise seed for each of the step's updates."""
        g = step_generator(self.ctx.recipe.seed, self.ctx.index, step, 3)
        return torch.randint(0, 2**62, (n, self.args.mu), generator=g)

    def update(self, data: DataProto) -> dict[str, float]:
        """The actor's (and a critic's) update on the step's batch, then the weight sync to the
        rollout; returns their metrics."""
        ctx = self.ctx
        if ctx.rollout is not None:  # a separate rollout frees its device memory while the actor trains
            ctx.rollout.release_rollout()
        out = ctx.actor.update_actor(data)
        if ctx.rollout is not None:
            ctx.rollout.resume_rollout()
        ctx.sync_rollout()
        metrics = rank_zero_metrics(out.meta_info["metrics"])
        if ctx.critic is not None:
            metrics.update(rank_zero_metrics(ctx.critic.update_critic(data).meta_info["metrics"]))
        return metrics

    def continue_responses(
        self, ids: torch.Tensor, mask: torch.Tensor, responses: torch.Tensor, seeds: torch.Tensor, first: int, n: int
    ) -> torch.Tensor:
        """A `RolloutShape`'s `continue_fn`: the rollout workers continue `responses` `[R, L]` for the
        schedule's steps [first, first + n), one seed per row."""
        data = DataProto.from_dict(
            tensors={"input_ids": ids, "attention_mask": mask, "partial_response": responses, "rollout_seed": seeds},
            meta_info={
                "sampling": self.sampling, "rollout_backend": self.args.rollout_backend, "step_range": (first, first + n),
            },
        )  # fmt: skip
        sampler = self.ctx.sampler
        return dp_call(sampler.generate, data, sampler.world_size).batch["responses"]

    def score_responses(
        self, rows: list[dict[str, Any]], prompt_index: list[int], responses: torch.Tensor, rmask: torch.Tensor
    ) -> tuple[list[float], dict[str, float]]:
        """A `RolloutShape`'s `score_fn` over the step's `rows`: decode and score each response."""
        tok = self.ctx.tokenizer
        texts = [tok.decode(r[m].tolist(), skip_special_tokens=True) for r, m in zip(responses, rmask)]
        return self.scorer.score([rows[i] for i in prompt_index], texts)

    def shaped_step(self, step: int) -> dict[str, float]:
        """A step of an algorithm with its own `RolloutShape`: the shape rolls out through the
        rollout workers and builds the batch (advantages included); the actor updates on it."""
        ctx = self.ctx
        rows = self.stream.rows_at(step)
        p = collate_prompts(rows, ctx.tokenizer)
        seeds = torch.randint(0, 2**62, (len(rows),), generator=step_generator(ctx.recipe.seed, ctx.index, step, 2))
        t0 = time.perf_counter()
        shaped = self.shape.collect(
            p["input_ids"], p["attention_mask"], seeds, self.continue_responses,
            lambda idx, resp, m: self.score_responses(rows, idx, resp, m),
        )  # fmt: skip
        metrics = {"perf/rollout_s": time.perf_counter() - t0, **shaped.metrics}
        data = DataProto.from_dict(tensors=shaped.batch)
        n = len(data)
        data.batch["noise_seed"] = self.noise_seeds(step, n)
        # the stage's progress u in [0, 1) (schedules over training, e.g. d-TreeRPO's self-distillation)
        data.batch["train_progress"] = torch.full((n,), step / max(1, ctx.stage.steps), dtype=torch.float64)
        metrics.update(self.update(data))
        metrics.update(shaped.reward_metrics)
        return {**metrics, **reward_stats(shaped.scores)}


def reward_stats(scores: torch.Tensor) -> dict[str, float]:
    """`reward/mean` and `reward/std` of a step's scores `[N]`."""
    return {"reward/mean": float(scores.mean()), "reward/std": float(scores.std()) if len(scores) > 1 else 0.0}


def step_texts(batch: Any, tokenizer: Any) -> list[str]:
    """The text of every recorded step's x0-prediction, row-major (`[N, S]` flattened): its tokens
    up to its first end id (`step_text_mask`), decoded as the responses are."""
    pred, keep = batch["step_prediction"], batch["step_text_mask"].bool()  # [N, S, L]
    flat, flat_keep = pred.reshape(-1, pred.shape[-1]), keep.reshape(-1, keep.shape[-1])
    return [tokenizer.decode(p[k].tolist(), skip_special_tokens=True) for p, k in zip(flat, flat_keep)]


def score_steps(scorer: Any, row_of: list[dict[str, Any]], batch: Any, tokenizer: Any) -> tuple[torch.Tensor, int]:
    """Step rewards `[N, S]`: every step's x0-prediction text scored by the stage's reward functions
    (the scorer of the final responses, so a step is scored exactly as a completion would be), and
    the number of texts scored: a text is scored once per prompt row (consecutive steps often
    predict the same text, and the steps after a decode ended repeat its response)."""
    N, S = batch["step_prediction"].shape[:2]
    texts = step_texts(batch, tokenizer)
    rows = [row for row in row_of for _ in range(S)]
    index: dict[tuple[int, str], int] = {}  # (prompt row, text) -> its place among the scored
    scored_rows, scored_texts = [], []
    for row, text in zip(rows, texts):
        if (id(row), text) not in index:
            index[(id(row), text)] = len(scored_texts)
            scored_rows.append(row)
            scored_texts.append(text)
    scores, _ = scorer.score(scored_rows, scored_texts)
    out = torch.tensor([scores[index[(id(row), text)]] for row, text in zip(rows, texts)], dtype=torch.float32)
    return out.view(N, S), len(scored_texts)


@dataclass
class Round:
    """One rollout round of a step: the batch (without advantages), each completion's row, rewards and metrics."""

    data: DataProto
    row_of: list[dict[str, Any]]
    scores: list[float]
    metrics: dict[str, float]
    reward_metrics: dict[str, float]

    def informative(self, G: int) -> list[bool]:
        """Per group: do its G rewards differ (zero variance = zero advantage, nothing to learn)?"""
        s = torch.tensor(self.scores, dtype=torch.float64).view(-1, G)
        return ((s.amax(1) - s.amin(1)) > 0).tolist()


def informative_batch(trainer: RLTrainer, step: int, first: Round) -> Round:
    """Dynamic sampling (DAPO): keep the step's informative groups and roll out fresh prompts (drawn
    in a fixed order from the stage's seed and step) until `batch_size` groups are informative or
    `max_rounds` rounds ran; zero-variance groups fill what is still missing, in draw order.
    Returns the assembled batch as one `Round` (metrics over all rounds, `dynamic/*` counts added)."""
    ctx, G = trainer.ctx, trainer.args.num_generations
    B, max_rounds = ctx.stage.batch_size, trainer.args.dynamic_sampling.max_rounds
    rounds = [first]
    g = step_generator(ctx.recipe.seed, ctx.index, step, 5)
    kept = sum(first.informative(G))
    while kept < B and len(rounds) < max_rounds:
        seen = sum(len(r.scores) // G for r in rounds)
        # draw what the keep rate so far says will fill the batch, at most one batch per round
        n = B if kept == 0 else min(B, math.ceil((B - kept) * seen / kept))
        pool = trainer.stream.rows
        idx = torch.randperm(len(pool), generator=g)[:n].tolist()
        seeds = torch.randint(0, 2**62, (len(idx) * G,), generator=g)
        rounds.append(trainer.scored_round(step, [pool[i] for i in idx], seeds))
        kept += sum(rounds[-1].informative(G))
    groups = [(r, j, ok) for r, rnd in enumerate(rounds) for j, ok in enumerate(rnd.informative(G))]
    chosen = ([x for x in groups if x[2]] + [x for x in groups if not x[2]])[:B]
    chosen.sort(key=lambda x: (x[0], x[1]))  # draw order
    data = concat_groups([rounds[r].data for r, _, _ in chosen], [j for _, j, _ in chosen], G, ctx.tokenizer)
    row_of = [rounds[r].row_of[j * G + k] for r, j, _ in chosen for k in range(G)]
    scores = [rounds[r].scores[j * G + k] for r, j, _ in chosen for k in range(G)]
    metrics = {k: sum(r.metrics[k] for r in rounds) for k in ("perf/rollout_s", "perf/reward_s")}
    metrics["perf/rollout_tokens_per_s"] = sum(float(r.data.batch["response_mask"].sum()) for r in rounds) / max(
        metrics["perf/rollout_s"], 1e-9
    )
    for k in ("rollout/response_length", "rollout/policy_version"):
        metrics[k] = first.metrics[k]
    informative = sum(ok for _, _, ok in chosen)
    metrics.update({
        "dynamic/rounds": float(len(rounds)),
        "dynamic/groups_sampled": float(len(groups)),
        "dynamic/groups_kept": float(informative),
        "dynamic/groups_dropped": float(len(groups) - sum(ok for _, _, ok in groups)),
        "dynamic/groups_filled": float(len(chosen) - informative),  # zero-variance groups trained on anyway
        "dynamic/reward_mean_sampled": float(np.mean([s for r in rounds for s in r.scores])),
    })  # fmt: skip
    keys = sorted(set().union(*(r.reward_metrics for r in rounds)))
    reward_metrics = {k: float(np.mean([r.reward_metrics[k] for r in rounds if k in r.reward_metrics])) for k in keys}
    return Round(data, row_of, scores, metrics, reward_metrics)


def concat_groups(parts: list[DataProto], groups: list[int], G: int, tokenizer: Any) -> DataProto:
    """The rows of group `groups[i]` of `parts[i]`, concatenated; `[N, P+L]` tensors left-padded to the
    widest prompt (input_ids with the pad id, masks False, the trajectory with its fill)."""
    fills = {"input_ids": tokenizer.pad_token_id, "attention_mask": 0, "response_mask": False, **TRAJECTORY_FILL}
    width = max(p.batch["input_ids"].shape[1] for p in parts)
    out: dict[str, list[torch.Tensor]] = {}
    for part, j in zip(parts, groups):
        for k, v in part.batch.items():
            v = v[j * G : (j + 1) * G]
            if k in fills and v.shape[1] < width:
                v = F.pad(v, (width - v.shape[1], 0), value=fills[k])
            out.setdefault(k, []).append(v)
    return DataProto.from_dict(tensors={k: torch.cat(v) for k, v in out.items()})


STAGE_TRAINERS.register("rl", RLTrainer)

__all__ = [
    "RLTrainer",
    "RewardFunctionScorer",
    "Round",
    "TaskVerifierScorer",
    "build_scorer",
    "concat_groups",
    "informative_batch",
    "score_steps",
    "step_texts",
]
