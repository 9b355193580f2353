"""The DRAKES stage trainer: reward backpropagation through sampling, no rollout phase.

Per step:
    the step's prompts (deterministic rows, `BatchStream`) + one noise seed per row + the step index
    -> actor.update_actor: in each of `grad_accum` micro-batches the actor's algorithm samples the
       responses with the relaxed sampler, scores them with the differentiable reward, and
       backpropagates -r + alpha * KL; one optimizer step (data-parallel gradients all-reduced)
    -> metrics: reward/mean (hard sample), actor/kl, actor/grad_norm, perf/max_memory_mb,
       perf/step_s
"""

from __future__ import annotations

import dataclasses
import time

import torch
from verl import DataProto

from dare.config.schema import stage_to_dict
from dare.data.formatting import collate_prompts
from dare.rewards.differentiable import with_defaults
from dare.rewards.differentiable.task_match import task_from_data
from dare.trainer.metrics import MetricsLogger, rank_zero_metrics
from dare.trainer.pipeline import STAGE_TRAINERS, StageContext, list_states, save_training_state
from dare.trainer.stream import BatchStream


class DRAKESTrainer:
    def __init__(self, ctx: StageContext, pipeline=None) -> None:
        self.ctx = ctx
        self.stream = BatchStream(ctx.train_rows, ctx.stage.batch_size, ctx.recipe.seed, ctx.index)
        args = ctx.stage.args
        # the algorithm's response length defaults to the recipe's data.gen_length, and a built-in
        # reward's `task` (task_match) to the recipe's `data.train: builtin:<task>`
        reward = with_defaults(args.reward, task=task_from_data(ctx.recipe.data.train))
        self.args = dataclasses.replace(
            args, gen_length=args.gen_length or ctx.recipe.data.gen_length, reward=dataclasses.asdict(reward)
        )

    def batch(self, step: int) -> DataProto:
        p = collate_prompts(self.stream.rows_at(step), self.ctx.tokenizer)
        B = p["input_ids"].shape[0]
        tensors = {
            "input_ids": p["input_ids"],
            "attention_mask": p["attention_mask"],
            "noise_seed": self.stream.noise_seeds(step),  # [B]: the row's Gumbel noise
            "train_step": torch.full((B,), step, dtype=torch.long),  # alpha warm-up
        }
        return DataProto.from_dict(tensors=tensors)

    def fit(self) -> None:
        ctx, stage = self.ctx, self.ctx.stage
        ctx.actor.init_stage(stage_to_dict(stage), self.args, stage.steps)
        logger = MetricsLogger(
            ctx.dir / "metrics.jsonl", stage.steps, stage.log_every, stage_name=ctx.dir.name,
            tensorboard=ctx.recipe.logging.tensorboard, wandb_project=ctx.recipe.logging.wandb_project,
        )  # fmt: skip
        start = ctx.start_step
        if start:
            ctx.actor.load_state(str(ctx.dir / "state" / f"step_{start}"))
            logger.truncate_after(start)
            print(f"dare: resumed {ctx.dir.name} at step {start}", flush=True)
        for step in range(start + 1, stage.steps + 1):
            t0 = time.perf_counter()
            out = ctx.actor.update_actor(self.batch(step - 1))
            metrics = rank_zero_metrics(out.meta_info["metrics"])
            metrics["perf/step_s"] = time.perf_counter() - t0
            logger.log(step, metrics)
            if stage.save_every and step % stage.save_every == 0 and step < stage.steps:
                save_training_state(ctx, step)
        if not list_states(ctx.dir) or list_states(ctx.dir)[-1] != stage.steps:
            save_training_state(ctx, stage.steps)
        logger.close()


STAGE_TRAINERS.register("drakes", DRAKESTrainer)

__all__ = ["DRAKESTrainer"]
