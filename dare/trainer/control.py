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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
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


@dataclass
class ControlContext:
    """What the control of stage `index` needs from the run (built by the pipeline)."""

    recipe: Any
    index: int  # the stage being controlled
    seconds: float  # its training wall time: the control's budget
    run_dir: Path
    actor: Any  # RayWorkerGroup of ActorWorker
    tokenizer: Any
    sft_rows: list[dict[str, Any]]  # the SFT stages' training rows
    base_dir: str | None
    start_checkpoint: str | None  # stage `index`'s starting checkpoint (None: the initial model)
    stage_checkpoint: str  # stage `index`'s own checkpoint, which the actor is put back on
    evaluate: Callable[[str], dict[str, Any]]  # evaluate the actor's current weights under a label


def run_sft_control(c: ControlContext) -> dict[str, Any]:
    """Train and evaluate the control of stage `c.index` for `c.seconds`; returns its evaluation
    plus `steps`, `seconds` and `lr`."""
    r = c.recipe
    stage = control_stage(r, c.index)
    tok_dir = str(c.run_dir / "tokenizer")
    model = r.to_dict()["model"]
    c.actor.init_model(model, tok_dir, r.seed, c.start_checkpoint, c.base_dir)
    sft_index = last_sft_index(r, c.index)
    ctx = StageContext(
        recipe=r, index=sft_index, stage=stage, dir=c.run_dir / f"control-{c.index + 1}", actor=c.actor,
        tokenizer=c.tokenizer, train_rows=c.sft_rows, base_dir=c.base_dir, start_step=0,
    )  # fmt: skip
    trainer = SFTTrainer(ctx)
    # the SFT stage's stream continues past its own steps (fresh batch order, same demonstrations)
    offset = r.stages[sft_index].steps
    c.actor.init_stage(stage_to_dict(stage), stage.args, 10**6)
    t0, steps = time.perf_counter(), 0
    while time.perf_counter() - t0 < c.seconds:
        trainer.step(offset + steps)
        steps += 1
    spent = time.perf_counter() - t0
    label = f"control of {stage_dir_name(c.index, r.stages[c.index])}"
    print(f"dare: {label}: {steps} SFT steps in {spent:.0f}s (lr {stage.lr:g})", flush=True)
    res = c.evaluate(label)
    c.actor.init_model(model, tok_dir, r.seed, c.stage_checkpoint, c.base_dir)  # back on stage K
    return {**res, "steps": steps, "seconds": spent, "lr": stage.lr}


__all__ = ["ControlContext", "control_stage", "last_sft_index", "run_sft_control"]
