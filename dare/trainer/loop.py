"""The loop every stage trainer shares: set up the stage on the actor, resume from the last saved
training state, run the steps, log, checkpoint.

A stage trainer subclasses `StageTrainer` and writes `step(step) -> metrics` (and, if it needs
them, `setup` before the loop, `algorithm_args` to adjust the recipe's arguments, `close` after);
it is registered in `dare.trainer.stage.STAGE_TRAINERS` under a name that an algorithm's
`trainer_name()` returns.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from dare.config.schema import stage_to_dict
from dare.trainer.metrics import MetricsLogger
from dare.trainer.stage import StageContext, list_states, save_training_state
from dare.trainer.stream import BatchStream
from dare.workers.actor import NON_FINITE, check_training_state
from dare.workers.critic import check_critic_state


class TrainingDivergedError(ValueError):
    """A loss or gradient turned NaN/inf: the run stops (a ValueError, so `dare run` reports it as
    `dare: error: ...` like other bad input: rewards, learning rate or data are the usual cause)."""


def _diverged(metrics: dict[str, Any]) -> list[str]:
    """The loss / gradient-norm metrics of a step that are not finite (or the actor's flag)."""
    watched = [k for k in metrics if k == NON_FINITE or k.endswith("loss") or k.endswith("grad_norm")]
    return [
        f"{k}={metrics[k]}" for k in watched
        if k == NON_FINITE or (isinstance(metrics[k], float) and not math.isfinite(metrics[k]))
    ]  # fmt: skip


def check_finite(metrics: dict[str, Any], stage_dir: Path, step: int, total: int) -> None:
    """Stop the run when a step's loss or gradient was not finite; the actor skipped that update,
    so the weights and every saved state are still finite."""
    bad = _diverged(metrics)
    if bad:
        saved = list_states(stage_dir)
        last_saved = saved[-1] if saved else 0
        stage_name = stage_dir.name
        raise TrainingDivergedError(
            f"{stage_name}: step {step}/{total}: the loss or gradient is not finite ({', '.join(bad)}); training "
            f"stopped{' (the diverged update was not applied)' if NON_FINITE in metrics else ''} and nothing of "
            f"this step was saved (last saved state: "
            f"{f'state/step_{last_saved}' if last_saved else 'none'}). Usual causes: a reward or advantage that "
            "is huge or NaN, a learning rate too high, or bad data"
        )


class StageTrainer:
    """Resumable step loop. `step(i)` gets the 0-based step index; all of a step's randomness
    must come from (recipe seed, stage index, step) (`dare.trainer.stream`), so a resumed run
    replays the same steps."""

    def __init__(self, ctx: StageContext) -> None:
        self.ctx = ctx
        self.stream = BatchStream(ctx.train_rows, ctx.stage.batch_size, ctx.recipe.seed, ctx.index)

    def algorithm_args(self) -> Any:
        """The algorithm arguments sent to the actor (the recipe's, unless a trainer fills in
        defaults from the rest of the recipe)."""
        return self.ctx.stage.args

    def setup(self) -> None:
        """Work before the first step (e.g. caching teacher samples)."""

    def step(self, step: int) -> dict[str, float]:
        raise NotImplementedError

    def close(self) -> None:
        """Release what `setup` / `step` opened (reward worker pools ...); runs even on errors."""

    def fit(self) -> None:
        ctx, stage = self.ctx, self.ctx.stage
        self.setup()
        ctx.actor.init_stage(stage_to_dict(stage), self.algorithm_args(), stage.steps)
        logger = MetricsLogger(
            ctx.dir / "metrics.jsonl", stage.steps, stage.log_every, stage_name=ctx.dir.name,
            tensorboard=ctx.recipe.logging.tensorboard, wandb_project=ctx.recipe.logging.wandb_project,
        )  # fmt: skip
        start = ctx.start_step
        if start:
            state = ctx.dir / "state" / f"step_{start}"
            check_training_state(state)  # refused here, with the file named, before any worker reads it
            if ctx.critic is not None:
                check_critic_state(state)
            ctx.actor.load_state(str(state))
            if ctx.critic is not None:  # one critic update per step: the state holds `start` of them
                ctx.critic.load_state(str(state), start)
            ctx.sync_rollout()
            print(f"dare: resumed {ctx.dir.name} at step {start}", flush=True)
        logger.truncate_after(start)  # also drops the steps of a run killed before its first save
        try:
            for step in range(start + 1, stage.steps + 1):
                t0 = time.perf_counter()
                metrics = self.step(step - 1)
                metrics["perf/step_s"] = time.perf_counter() - t0
                check_finite(metrics, ctx.dir, step, stage.steps)
                logger.log(step, metrics)
                if stage.save_every and step % stage.save_every == 0 and step < stage.steps:
                    save_training_state(ctx, step)
        finally:
            self.close()
        if not list_states(ctx.dir) or list_states(ctx.dir)[-1] != stage.steps:
            save_training_state(ctx, stage.steps)
        logger.close()


__all__ = ["StageTrainer", "TrainingDivergedError", "check_finite"]
