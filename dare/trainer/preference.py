"""The preference stage trainer (DPO, VRPO): the SFT step (`update_on`) on (prompt, chosen, rejected) rows."""

from __future__ import annotations

from verl import DataProto

from dare.data.formatting import collate_preference
from dare.trainer.loop import StageTrainer
from dare.trainer.sft import update_on
from dare.trainer.stage import STAGE_TRAINERS


class PreferenceTrainer(StageTrainer):
    """Per step: the step's preference rows (deterministic, see `BatchStream`) -> chosen and
    rejected collated with one shared layout (`collate_preference`, responses padded with EOS to
    `data.gen_length`) and one noise seed per row -> `actor.update_actor`, which runs the
    algorithm's `prepare` (reference ELBOs) and its loss. Checkpointing and resume as in SFT."""

    def batch(self, step: int) -> DataProto:
        rows = self.stream.rows_at(step)
        b = collate_preference(rows, self.ctx.tokenizer, gen_length=self.ctx.recipe.data.gen_length, truncate=True)
        tensors = {f"{side}_{k}": b[f"{side}_{k}"] for side in ("chosen", "rejected")
                   for k in ("input_ids", "attention_mask", "response_mask")}  # fmt: skip
        tensors["noise_seed"] = self.stream.noise_seeds(step)
        return DataProto.from_dict(tensors=tensors)

    def step(self, step: int) -> dict[str, float]:
        return update_on(self.ctx, self.batch(step))


STAGE_TRAINERS.register("preference", PreferenceTrainer)

__all__ = ["PreferenceTrainer"]
