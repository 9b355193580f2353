"""The online RL stage trainer (d1, coupled-GRPO and any algorithm of kind "rl").

Per step:
    prompts (deterministic rows of the step) -> each repeated num_generations times
    -> rollout (dare's sampler on the rollout workers: colocated actor or synced copy), its
       decoding trajectory kept in the batch (`decode_step`, `decode_block`, `decode_confidence`,
       `decode_num_steps`; `dare.workers.generation`) for objectives that replay it
    -> rewards (built-in verifier or the recipe's reward functions, in parallel, never crashing)
    -> group advantages (verl estimators)
    -> actor.update_actor: mu inner updates, each with one noise plan shared by old/ref/current
    -> sync the separate rollout's weights
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from verl import DataProto

from dare.algorithms.rollout import RolloutSpec
from dare.data.formatting import collate_prompts
from dare.diffusion.rl_losses import compute_advantages
from dare.diffusion.rl_registry import ADVANTAGES
from dare.rewards.spec import RewardSpec
from dare.trainer.evaluate import row_scorer
from dare.trainer.loop import StageTrainer
from dare.trainer.metrics import rank_zero_metrics
from dare.trainer.runtime import dp_call
from dare.trainer.stage import STAGE_TRAINERS, StageContext
from dare.trainer.stream import step_generator
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
        self.scorer = None

    def setup(self) -> None:
        self.scorer = build_scorer(self.args)

    def close(self) -> None:
        if self.scorer is not None:
            self.scorer.close()

    def rollout(self, step: int) -> tuple[DataProto, list[dict[str, Any]], dict[str, float], list[str]]:
        """Sample G completions for each prompt of the step; return the training batch (without
        advantages), the row of each completion, rollout metrics and the decoded completions."""
        ctx, G = self.ctx, self.args.num_generations
        rows = self.stream.rows_at(step)
        p = collate_prompts(rows, ctx.tokenizer)
        seed = int(torch.randint(0, 2**31, (1,), generator=step_generator(ctx.recipe.seed, ctx.index, step, 2)))
        prompts = DataProto.from_dict(
            tensors={"input_ids": p["input_ids"], "attention_mask": p["attention_mask"]},
            meta_info={"sampling": self.sampling, "seed": seed},
        ).repeat(G, interleave=True)  # prompt-major: rows i*G .. i*G+G-1 answer prompt i
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
        }
        texts = [ctx.tokenizer.decode(r[m].tolist(), skip_special_tokens=True) for r, m in zip(responses, rmask)]
        row_of = [rows[i // G] for i in range(N)]
        metrics = {
            "perf/rollout_s": rollout_s,
            "perf/rollout_tokens_per_s": float(rmask.sum()) / rollout_s,
            "rollout/response_length": float(rmask.sum(-1).float().mean()),
        }
        return DataProto.from_dict(tensors=batch), row_of, metrics, texts

    def step(self, step: int) -> dict[str, float]:
        ctx, G = self.ctx, self.args.num_generations
        data, row_of, metrics, texts = self.rollout(step)
        t0 = time.perf_counter()
        scores, reward_metrics = self.scorer.score(row_of, texts)
        metrics["perf/reward_s"] = time.perf_counter() - t0
        scores_t = torch.tensor(scores, dtype=torch.float32)
        uid = np.array([i // G for i in range(len(scores))], dtype=object)
        kwargs = ADVANTAGES.get(self.args.advantage).kwargs(self.args)  # the settings the estimator declares
        adv, adv_metrics = compute_advantages(self.args.advantage, scores_t, uid, data.batch["response_mask"], **kwargs)
        data.batch["advantages"] = adv
        data.batch["group_index"] = torch.arange(len(scores)) // G  # [N], the prompt each row answers
        g = step_generator(ctx.recipe.seed, ctx.index, step, 3)
        data.batch["noise_seed"] = torch.randint(0, 2**62, (len(scores), self.args.mu), generator=g)
        if ctx.critic is not None:  # the algorithm declared a critic: its values go with the batch
            data.batch["scores"] = scores_t
            data.batch["values"] = ctx.critic.compute_values(data).batch["values"]  # [N, P+G]
        out = ctx.actor.update_actor(data)
        ctx.sync_rollout()
        metrics.update(rank_zero_metrics(out.meta_info["metrics"]))
        if ctx.critic is not None:
            metrics.update(rank_zero_metrics(ctx.critic.update_critic(data).meta_info["metrics"]))
        metrics.update(reward_metrics)
        metrics.update(adv_metrics)
        metrics["reward/mean"] = float(scores_t.mean())
        metrics["reward/std"] = float(scores_t.std()) if len(scores) > 1 else 0.0
        return metrics


STAGE_TRAINERS.register("rl", RLTrainer)

__all__ = ["RLTrainer", "RewardFunctionScorer", "TaskVerifierScorer", "build_scorer"]
