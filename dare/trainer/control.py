"""The compute-matched SFT control of a stage (`sft_control: true` on a stage).

Is an RL stage's gain more than what the same compute spent on more SFT would have bought? After
stage K (and its evaluation) the actor is reset to stage K's *starting* checkpoint and trained
with the recipe's last SFT stage before K (its data, batch size and its final learning rate, held
constant) for as long as stage K took in wall time, then evaluated like any stage; the actor is
then put back on stage K's checkpoint, so later stages are unaffected. Nothing of the control is
kept but its evaluation (`run_state.json` and `eval/results.json` under "control", and a report row).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from dare.config.schema import stage_to_dict
from dare.trainer.sft import SFTTrainer
from dare.trainer.stage import StageContext, stage_dir_name


def last_sft_index(recipe: Any, index: int) -> int:
    """The index of the last SFT stage before stage `index` (validation guarantees one)."""
    return max(i for i, s in enumerate(recipe.stages[:index]) if s.kind == "sft")


def control_stage(recipe: Any, index: int):
    """The SFT stage spec the control of stage `index` trains with."""
    sft = recipe.stages[last_sft_index(recipe, index)]
    final_lr = sft.lr * (sft.min_lr_ratio if sft.lr_schedule != "constant" else 1.0) or sft.lr
    return dataclasses.replace(
        sft, name=f"sft-control-{index + 1}", lr=final_lr, lr_schedule="constant", warmup_steps=0, save_every=0
    )


def run_sft_control(pipeline: Any, actor: Any, tokenizer: Any, eval_rows: list, index: int, seconds: float,
                    base_dir: str | None) -> dict[str, Any]:  # fmt: skip
    """Train and evaluate the control of stage `index` for `seconds`; returns its evaluation
    plus `steps` and `seconds`."""
    r = pipeline.recipe
    stage = control_stage(r, index)
    start_ckpt = pipeline.checkpoint_of(index - 1) if index > 0 else None
    tok_dir = str(pipeline.run_dir / "tokenizer")
    model = r.to_dict()["model"]
    actor.init_model(model, tok_dir, r.seed, start_ckpt, base_dir)
    sft_index = last_sft_index(r, index)
    ctx = StageContext(
        recipe=r, index=sft_index, stage=stage, dir=pipeline.run_dir / f"control-{index + 1}", actor=actor,
        tokenizer=tokenizer, train_rows=pipeline.train_rows("sft", tokenizer), base_dir=base_dir, start_step=0,
    )  # fmt: skip
    trainer = SFTTrainer(ctx, pipeline)
    # the SFT stage's stream continues past its own steps (fresh batch order, same demonstrations)
    offset = r.stages[sft_index].steps
    actor.init_stage(stage_to_dict(stage), stage.args, 10**6)
    t0, steps = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        trainer.step(offset + steps)
        steps += 1
    spent = time.perf_counter() - t0
    label = f"control of {stage_dir_name(index, r.stages[index])}"
    print(f"dare: {label}: {steps} SFT steps in {spent:.0f}s (lr {stage.lr:g})", flush=True)
    res = pipeline.evaluate(actor, tokenizer, eval_rows, label)
    actor.init_model(model, tok_dir, r.seed, pipeline.checkpoint_of(index), base_dir)  # back on stage K
    return {**res, "steps": steps, "seconds": spent, "lr": stage.lr}


__all__ = ["control_stage", "last_sft_index", "run_sft_control"]
