"""The SFT stage trainer (also used by any stage whose algorithm learns from fixed rows)."""

from __future__ import annotations

from verl import DataProto

from dare.config.schema import stage_to_dict
from dare.data.formatting import collate_sft
from dare.trainer.metrics import MetricsLogger, rank_zero_metrics
from dare.trainer.pipeline import STAGE_TRAINERS, StageContext, list_states, save_training_state
from dare.trainer.stream import BatchStream


class SFTTrainer:
    """Per step: the step's rows (deterministic, see `BatchStream`) -> collated batch with one
    noise seed per row -> `actor.update_actor` (data-parallel) -> metrics; training state saved
    every `save_every` steps and at the end, so a killed run resumes where it stopped."""

    def __init__(self, ctx: StageContext, pipeline=None) -> None:
        self.ctx = ctx
        self.stream = BatchStream(ctx.train_rows, ctx.stage.batch_size, ctx.recipe.seed, ctx.index)

    def batch(self, step: int) -> DataProto:
        rows = self.stream.rows_at(step)
        b = collate_sft(rows, self.ctx.tokenizer, gen_length=self.ctx.recipe.data.gen_length, truncate=True)
        tensors = {
            "input_ids": b["input_ids"],
            "attention_mask": b["attention_mask"],
            "response_mask": b["response_mask"],
            "noise_seed": self.stream.noise_seeds(step),
        }
        return DataProto.from_dict(tensors=tensors)

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
            logger.truncate_after(start)
            print(f"dare: resumed {ctx.dir.name} at step {start}", flush=True)
        for step in range(start + 1, stage.steps + 1):
            out = ctx.actor.update_actor(self.batch(step - 1))
            logger.log(step, rank_zero_metrics(out.meta_info["metrics"]))
            if stage.save_every and step % stage.save_every == 0 and step < stage.steps:
                save_training_state(ctx, step)
        if not list_states(ctx.dir) or list_states(ctx.dir)[-1] != stage.steps:
            save_training_state(ctx, stage.steps)
        logger.close()


STAGE_TRAINERS.register("sft", SFTTrainer)

__all__ = ["SFTTrainer"]
