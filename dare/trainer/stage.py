"""Stage plumbing shared by the pipeline and the stage trainers: the context a trainer gets, the
registry of stage trainers (one per stage kind), stage folder names and the training-state
folders (`STAGE/state/step_N`). The pipeline and the trainers both import this module; neither
imports the other, so a stage trainer is added by writing it and registering its kind here.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dare.config import Recipe, StageSpec
from dare.registry import Registry

TRAINER_STATE = "trainer_state.json"


def recipe_hash(recipe: Recipe) -> str:
    return hashlib.sha256(json.dumps(recipe.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:16]


def stage_dir_name(index: int, stage: StageSpec) -> str:
    return f"stage-{index + 1}-{stage.name or stage.algorithm}"


def _no_rollout_workers() -> None:
    """`sync_rollout` of a colocated rollout: the actor generates with its own weights."""


@dataclass
class StageContext:
    """Everything a stage trainer gets: the stage, its data and worker handles, and the one
    callback into the run it needs. Trainers never see the pipeline."""

    recipe: Recipe
    index: int
    stage: StageSpec
    dir: Path
    actor: Any  # RayWorkerGroup of ActorWorker
    tokenizer: Any
    train_rows: list[dict[str, Any]]
    base_dir: str | None
    start_step: int  # steps already done (resume)
    rollout: Any = None  # RayWorkerGroup of RolloutWorker (`resources.rollout: separate`), else None
    # push the actor's weights to the rollout workers (after an update, after a resume)
    sync_rollout: Callable[[], None] = _no_rollout_workers
    # RayWorkerGroup of CriticWorker when the algorithm declares a critic (`critic_spec`), else None
    critic: Any = None
    # RayWorkerGroup of ReferenceWorker (`resources.reference: separate`, attached to the actor), else None
    reference: Any = None

    @property
    def sampler(self) -> Any:
        """The worker group that generates: the separate rollout workers, else the actor."""
        return self.rollout if self.rollout is not None else self.actor


STAGE_TRAINERS: Registry[Any] = Registry("stage kind")


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    tmp.replace(path)  # atomic: a killed run never leaves a half-written file


def save_training_state(ctx: StageContext, step: int) -> None:
    """Write `state/step_N` atomically (temp dir + rename) and keep the last `keep_last`: the
    actor's training state, the critic's (when the stage has one) and `trainer_state.json`."""
    states = ctx.dir / "state"
    final = states / f"step_{step}"
    tmp = states / f".tmp_step_{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    ctx.actor.save_state(str(tmp), ctx.base_dir, True)
    if ctx.critic is not None:  # the critic's weights and AdamW state beside the actor's (resume)
        ctx.critic.save_state(str(tmp))
    write_json(tmp / TRAINER_STATE, {"stage_index": ctx.index, "step": step, "recipe_hash": recipe_hash(ctx.recipe)})
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in sorted(list_states(ctx.dir))[: -ctx.stage.keep_last]:
        shutil.rmtree(states / f"step_{old}", ignore_errors=True)


def list_states(stage_dir: Path) -> list[int]:
    states = stage_dir / "state"
    if not states.is_dir():
        return []
    return sorted(
        int(p.name.split("_")[1])
        for p in states.iterdir()
        if p.name.startswith("step_") and (p / TRAINER_STATE).is_file()
    )


__all__ = [
    "STAGE_TRAINERS",
    "TRAINER_STATE",
    "StageContext",
    "list_states",
    "recipe_hash",
    "save_training_state",
    "stage_dir_name",
    "write_json",
]
