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

import torch
from verl import DataProto

from dare.data.formatting import collate_prompts
from dare.rewards.differentiable import with_defaults
from dare.rewards.differentiable.task_match import task_from_data
from dare.trainer.loop import StageTrainer
from dare.trainer.metrics import rank_zero_metrics
from dare.trainer.stage import STAGE_TRAINERS


class DRAKESTrainer(StageTrainer):
    def algorithm_args(self):
        """The response length defaults to the recipe's data.gen_length, and a built-in reward's
        `task` (task_match) to the recipe's `data.train: builtin:<task>`."""
        args, data = self.ctx.stage.args, self.ctx.recipe.data
        reward = with_defaults(args.reward, task=task_from_data(data.train))
        return dataclasses.replace(
            args, gen_length=args.gen_length or data.gen_length, reward=dataclasses.asdict(reward)
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

    def step(self, step: int) -> dict[str, float]:
        return rank_zero_metrics(self.ctx.actor.update_actor(self.batch(step)).meta_info["metrics"])


STAGE_TRAINERS.register("drakes", DRAKESTrainer)

__all__ = ["DRAKESTrainer"]
