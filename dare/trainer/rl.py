"""The online RL stage trainer (d1, coupled-GRPO and any algorithm of kind "rl").

Per step:
    prompts (deterministic rows of the step) -> each repeated num_generations times
    -> rollout (dare's sampler on the rollout workers: colocated actor or synced copy)
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
from verl import DataProto

from dare.config.schema import stage_to_dict
from dare.data.formatting import collate_prompts
from dare.diffusion.rl_losses import compute_advantages
from dare.trainer.evaluate import row_scorer
from dare.trainer.metrics import MetricsLogger, rank_zero_metrics
from dare.trainer.pipeline import STAGE_TRAINERS, StageContext, list_states, save_training_state
from dare.trainer.runtime import dp_call
from dare.trainer.stream import BatchStream, step_generator


class TaskVerifierScorer:
    """Rewards from each row's own verifier (built-in tasks) or exact match with ground truth."""

    def score(self, rows: list[dict[str, Any]], texts: list[str]) -> tuple[list[float], dict[str, float]]:
        return [row_scorer(row)(text) for row, text in zip(rows, texts)], {}

    def close(self) -> None:
        pass


class RewardFunctionScorer:
    """The recipe's reward functions (`dare.rewards`), run in worker processes with a timeout;
    a reward that raises or hangs scores 0 and is counted in `reward/errors` / `reward/timeouts`."""

    def __init__(self, specs: list[dict[str, Any]], num_workers: int, timeout_s: float) -> None:
        from dare.rewards.runner import RewardRunner

        self.runner = RewardRunner(specs, num_workers=num_workers, timeout_s=timeout_s)

    def score(self, rows: list[dict[str, Any]], texts: list[str]) -> tuple[list[float], dict[str, float]]:
        extras = [{k: v for k, v in row.items() if k not in ("prompt", "response", "ground_truth")} for row in rows]
        prompts = [row["prompt"] if isinstance(row["prompt"], str) else str(row["prompt"]) for row in rows]
        scores, metrics, _ = self.runner.score(prompts, texts, [row.get("ground_truth") for row in rows], extras)
        return scores, metrics

    def close(self) -> None:
        self.runner.close()


def build_scorer(args: Any):
    """The built-in verifier when the recipe names no reward functions."""
    if not args.rewards:
        return TaskVerifierScorer()
    return RewardFunctionScorer(args.rewards, args.reward_workers, args.reward_timeout_s)


class RLTrainer:
    def __init__(self, ctx: StageContext, pipeline) -> None:
        self.ctx, self.pipeline = ctx, pipeline
        self.args = ctx.stage.args
        self.stream = BatchStream(ctx.train_rows, ctx.stage.batch_size, ctx.recipe.seed, ctx.index)
        self.sampling = {**self.args.sampling, "gen_length": ctx.recipe.data.gen_length, "num_generations": 1}

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
        sampler = self.pipeline.rollout or ctx.actor
        t0 = time.perf_counter()
        out = dp_call(sampler.generate, prompts, sampler.world_size)
        rollout_s = time.perf_counter() - t0
        responses, rmask = out.batch["responses"], out.batch["response_mask"].bool()
        N, P = prompts.batch["input_ids"].shape
        batch = {
            "input_ids": torch.cat([prompts.batch["input_ids"], responses], 1),  # [N, P+G]
            "attention_mask": torch.cat([prompts.batch["attention_mask"], torch.ones_like(responses)], 1),
            "response_mask": torch.cat([torch.zeros(N, P, dtype=torch.bool), rmask], 1),
        }
        texts = [ctx.tokenizer.decode(r[m].tolist(), skip_special_tokens=True) for r, m in zip(responses, rmask)]
        row_of = [rows[i // G] for i in range(N)]
        metrics = {
            "perf/rollout_s": rollout_s,
            "perf/rollout_tokens_per_s": float(rmask.sum()) / rollout_s,
            "rollout/response_length": float(rmask.sum(-1).float().mean()),
        }
        return DataProto.from_dict(tensors=batch), row_of, metrics, texts

    def step(self, step: int, scorer) -> dict[str, float]:
        ctx, G = self.ctx, self.args.num_generations
        data, row_of, metrics, texts = self.rollout(step)
        t0 = time.perf_counter()
        scores, reward_metrics = scorer.score(row_of, texts)
        metrics["perf/reward_s"] = time.perf_counter() - t0
        scores_t = torch.tensor(scores, dtype=torch.float32)
        uid = np.array([i // G for i in range(len(scores))], dtype=object)
        kwargs = {"norm_adv_by_std_in_grpo": self.args.norm_adv_by_std} if self.args.advantage == "grpo" else {}
        adv, adv_metrics = compute_advantages(self.args.advantage, scores_t, uid, data.batch["response_mask"], **kwargs)
        data.batch["advantages"] = adv
        g = step_generator(ctx.recipe.seed, ctx.index, step, 3)
        data.batch["noise_seed"] = torch.randint(0, 2**62, (len(scores), self.args.mu), generator=g)
        out = ctx.actor.update_actor(data)
        self.pipeline.sync_rollout(ctx.actor)
        metrics.update(rank_zero_metrics(out.meta_info["metrics"]))
        metrics.update(reward_metrics)
        metrics.update(adv_metrics)
        metrics["reward/mean"] = float(scores_t.mean())
        metrics["reward/std"] = float(scores_t.std()) if len(scores) > 1 else 0.0
        return metrics

    def fit(self) -> None:
        ctx, stage = self.ctx, self.ctx.stage
        ctx.actor.init_stage(stage_to_dict(stage), stage.args, stage.steps)
        logger = MetricsLogger(
            ctx.dir / "metrics.jsonl", stage.steps, stage.log_every, stage_name=ctx.dir.name,
            tensorboard=ctx.recipe.logging.tensorboard, wandb_project=ctx.recipe.logging.wandb_project,
        )  # fmt: skip
        start = ctx.start_step
        if start:
            ctx.actor.load_state(str(ctx.dir / "state" / f"step_{start}"))
            self.pipeline.sync_rollout(ctx.actor)
            logger.truncate_after(start)
            print(f"dare: resumed {ctx.dir.name} at step {start}", flush=True)
        scorer = build_scorer(self.args)
        try:
            for step in range(start + 1, stage.steps + 1):
                logger.log(step, self.step(step - 1, scorer))
                if stage.save_every and step % stage.save_every == 0 and step < stage.steps:
                    save_training_state(ctx, step)
        finally:
            scorer.close()
        if not list_states(ctx.dir) or list_states(ctx.dir)[-1] != stage.steps:
            save_training_state(ctx, stage.steps)
        logger.close()


STAGE_TRAINERS.register("rl", RLTrainer)

__all__ = ["RLTrainer", "RewardFunctionScorer", "TaskVerifierScorer", "build_scorer"]
