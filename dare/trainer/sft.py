"""The SFT stage trainer (also used by any stage whose algorithm learns from fixed rows)."""

from __future__ import annotations

from verl import DataProto

from dare.data.formatting import collate_sft
from dare.trainer.loop import StageTrainer
from dare.trainer.metrics import rank_zero_metrics
from dare.trainer.stage import STAGE_TRAINERS, StageContext


class SFTTrainer(StageTrainer):
    """Per step: the step's rows (deterministic, see `BatchStream`) -> collated batch with one
    noise seed per row -> `actor.update_actor` (data-parallel) -> metrics; training state saved
    every `save_every` steps and at the end, so a killed run resumes where it stopped."""

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

    def step(self, step: int) -> dict[str, float]:
        return update_on(self.ctx, self.batch(step))


def update_on(ctx: StageContext, batch: DataProto) -> dict[str, float]:
    """One data-parallel optimizer step of the actor on a collated batch; the global metrics. The
    step of every trainer that learns from fixed rows (SFT, preference)."""
    return rank_zero_metrics(ctx.actor.update_actor(batch).meta_info["metrics"])


STAGE_TRAINERS.register("sft", SFTTrainer)

__all__ = ["SFTTrainer", "update_on"]
