"""The pipeline runner: stages in order, checkpoints, resume, evaluation after each stage, report.

Run directory layout:

    RUN/recipe.yaml                  the resolved recipe (what `--resume` reads)
    RUN/tokenizer/                   the tokenizer every stage uses
    RUN/base/                        initial weights of a preset model (base of LoRA adapters)
    RUN/stage-K-NAME/state/step_N/   training state: policy + optimizer/scheduler (+ critic) + trainer_state.json
    RUN/stage-K-NAME/checkpoint/     the stage's final HF checkpoint (or PEFT adapter) + tokenizer
    RUN/stage-K-NAME/metrics.jsonl   one line per step
    RUN/run_state.json               stages trained (checkpoint written) and completed (evaluated too)
    RUN/eval/results.json            evaluation of every stage
    RUN/report.md                    table of the stages
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
import time
from pathlib import Path
from typing import Any

import ray
import yaml

from dare.algorithms import ALGORITHMS
from dare.config import Recipe, StageSpec, build_recipe
from dare.config.schema import BUILTIN_PREFIX
from dare.data.formatting import apply_system_prompt, limit_prompts
from dare.data.loading import load_dataset_spec
from dare.trainer.curves import write_training_curves
from dare.trainer.evaluate import (
    benchmark_report,
    check_benchmark_setup,
    eval_scorer,
    evaluate_accuracy,
    evaluate_benchmarks,
)
from dare.trainer.metrics import read_metrics
from dare.trainer.runtime import release, start_ray, worker_group, worker_nodes
from dare.trainer.stage import (
    STAGE_TRAINERS,
    StageContext,
    list_states,
    recipe_hash,
    stage_dir_name,
    write_json,
)
from dare.workers.actor import ActorWorker, check_training_state
from dare.workers.builder import load_tokenizer
from dare.workers.critic import CriticWorker, check_critic_state
from dare.workers.reference import ReferenceWorker, placement
from dare.workers.rollout import RolloutWorker

# the row format each stage kind reads from a data file (dare.data.loading kinds)
ROW_KINDS = {"sft": "sft", "rl": "prompt", "preference": "preference", "distill": "prompt"}
RUN_STATE = "run_state.json"


def reference_group(actor, resources: Any, name: str = "reference"):
    """The separate reference workers (`resources.reference: separate`), one per actor rank. Over
    several nodes, reference rank i goes on actor rank i's node: each reference forward ships its
    logits [N, L, V] to its actor rank, which must not cross the network.

    Raises:
        RuntimeError: an actor rank's node has no room for its reference rank (names the node).
    """
    on_nodes = worker_nodes(actor) if resources.nodes > 1 else None
    try:
        return worker_group(ReferenceWorker, resources, name=name, on_nodes=on_nodes)
    except RuntimeError as e:
        raise RuntimeError(
            f"resources.reference: separate puts reference rank i on actor rank i's node: {e}; spread the workers "
            "over more nodes (resources.nodes) or keep the reference in the actor (resources.reference: colocated)"
        ) from None


class Pipeline:
    """Runs a recipe end to end (or resumes a stopped run)."""

    def __init__(self, recipe: Recipe, run_dir: str | Path | None = None, overwrite: bool = False) -> None:
        self.recipe = recipe
        self.run_dir = Path(run_dir or recipe.output_dir)
        self.scorer = None  # the built-in check's (eval.scorer), resolved with the eval rows
        self.overwrite = overwrite  # delete an existing run in run_dir first
        self.rollout = None
        self.reference = None  # the separate reference workers (resources.reference: separate)

    @classmethod
    def resume(cls, run_dir: str | Path) -> Pipeline:
        run_dir = Path(run_dir)
        path = run_dir / "recipe.yaml"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; {run_dir} is not a dare run directory")
        return cls(build_recipe(yaml.safe_load(path.read_text()), path), run_dir)

    # -------------------------------------------------------------- state

    def _run_state(self) -> dict[str, Any]:
        p = self.run_dir / RUN_STATE
        if not p.is_file():
            return {"completed": [], "trained": [], "eval": {}}
        try:
            return json.loads(p.read_text())
        except json.JSONDecodeError as e:  # written atomically by dare: damaged by something else
            raise ValueError(f"{p}: not valid JSON ({e}); the run state is damaged") from None

    def _save_run_state(self, state: dict[str, Any]) -> None:
        write_json(self.run_dir / RUN_STATE, state)

    # -------------------------------------------------------------- running

    def run(self) -> dict[str, Any]:
        r = self.recipe
        check_benchmark_setup(r)  # OpenCompass installed (names / files were checked at load)
        self._prepare_run_dir()
        state = self._run_state()
        completed: list[int] = state["completed"]
        # stages whose checkpoint is written; a stage is `completed` once its built-in check is saved
        # too (its OpenCompass benchmarks run after the workers are released: `_run_benchmarks`)
        trained: list[int] = state.setdefault("trained", list(completed))
        self._check_resume_state(trained)  # a damaged / planted state file fails before Ray starts
        t_start = time.perf_counter()

        tokenizer = load_tokenizer(_model_dict(r))
        tok_dir = self.run_dir / "tokenizer"
        if not tok_dir.is_dir():
            tmp = self.run_dir / ".tokenizer.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tokenizer.save_pretrained(tmp)
            tmp.rename(tok_dir)  # a killed save never leaves a half tokenizer that a rerun would trust

        start_ray(r.resources)
        actor = self.rollout = self.reference = None
        try:
            actor = worker_group(ActorWorker, r.resources, name="actor", **r.resources.sharding_kwargs())
            self._run_stages(actor, tokenizer, tok_dir, state, trained)
        finally:  # no workers outlive the run (an in-process caller can run again)
            release(self.rollout)
            release(self.reference)
            release(actor)
        self._run_benchmarks(state)  # on the devices the workers held, now free
        state["total_seconds"] = state.get("total_seconds", 0.0) + time.perf_counter() - t_start
        self._save_run_state(state)
        self._write_results(state)
        return state

    def _run_stages(self, actor, tokenizer, tok_dir: Path, state: dict[str, Any], trained: list[int]) -> None:
        r, completed = self.recipe, state["completed"]
        init_from = self.checkpoint_of(max(trained)) if trained else None
        base_dir = self._base_dir()
        n_params = actor.init_model(_model_dict(r), str(tok_dir), r.seed, init_from, base_dir)[0]
        if r.resources.rollout == "separate":
            self.rollout = worker_group(RolloutWorker, r.resources, name="rollout")
            self.rollout.init_model(_model_dict(r), str(tok_dir), r.seed, init_from)
        if placement(r.resources) == "separate":
            self.reference = reference_group(actor, r.resources)
            self.reference.init_model(_model_dict(r), str(tok_dir), r.seed, init_from)
            actor.attach_reference(self.reference.workers)
        print(
            f"dare: run {self.run_dir} | {r.model.family or r.model.path} | trainable params {n_params:,}", flush=True
        )

        eval_rows = self._eval_rows(tokenizer)
        self.scorer = eval_scorer(r, eval_rows)  # checked against the rows before any training
        if r.eval.enabled and r.eval.before_first_stage and "0" not in state["eval"]:
            state["eval"]["0"] = self.evaluate(actor, tokenizer, eval_rows, "start")
            self._save_run_state(state)

        for index, stage in enumerate(r.stages):
            if index in completed:
                self._maybe_control(state, actor, tokenizer, eval_rows, index, base_dir)  # a run killed in it
                continue
            name = stage_dir_name(index, stage)
            if index in trained:  # killed after training, before its evaluation was saved
                print(f"dare: {name} is trained; evaluating it", flush=True)
            else:
                self._train_stage(actor, tokenizer, index, stage, base_dir, state, trained)
            if r.eval.enabled:  # the built-in check, data-parallel on the actor's workers
                state["eval"][str(index + 1)] = self.evaluate(actor, tokenizer, eval_rows, name)
                self._save_run_state(state)
                self._write_results(state)  # the stage's results and report rows, before it counts as done
            completed.append(index)
            self._save_run_state(state)
            self._maybe_control(state, actor, tokenizer, eval_rows, index, base_dir)

    def _run_benchmarks(self, state: dict[str, Any]) -> None:
        """OpenCompass on every evaluated stage's checkpoint that has no benchmark results yet,
        after the training workers are released: in the recipe's dtype, data-parallel over
        `resources.num_workers` tasks (one device each on CUDA). A resumed run fills in what a
        stopped one left out."""
        r = self.recipe
        if not (r.eval.enabled and r.eval.benchmarks):
            return
        for index in sorted(state["completed"]):
            res = state["eval"].get(str(index + 1))
            if res is None or "benchmarks" in res:
                continue
            name = stage_dir_name(index, r.stages[index])
            res["benchmarks"] = evaluate_benchmarks(
                r, self.checkpoint_of(index), self.run_dir / "eval" / "opencompass" / name, name
            )
            self._save_run_state(state)
            self._write_results(state)

    def _train_stage(self, actor, tokenizer, index: int, stage: StageSpec, base_dir: str | None,
                     state: dict[str, Any], trained: list[int]) -> None:  # fmt: skip
        """Train stage `index` (from its last saved state) and write its checkpoint."""
        r = self.recipe
        sdir = self.run_dir / stage_dir_name(index, stage)
        steps_done = list_states(sdir)
        critic = self._critic(index, stage)
        ctx = StageContext(
            recipe=r, index=index, stage=stage, dir=sdir, actor=actor, tokenizer=tokenizer,
            train_rows=self.train_rows(stage.kind, tokenizer), base_dir=base_dir, start_step=steps_done[-1] if steps_done else 0,
            rollout=self.rollout, sync_rollout=functools.partial(self.sync_rollout, actor), critic=critic,
            reference=self.reference,
        )  # fmt: skip
        t0 = time.perf_counter()
        try:
            STAGE_TRAINERS.get(ALGORITHMS.get(stage.algorithm).trainer_name())(ctx).fit()
        finally:
            release(critic)
        ckpt = sdir / "checkpoint"
        actor.save_state(str(ckpt), base_dir, False)
        tokenizer.save_pretrained(ckpt)
        trained.append(index)
        state.setdefault("stage_seconds", {})[str(index + 1)] = time.perf_counter() - t0
        self._save_run_state(state)

    def _critic(self, index: int, stage: StageSpec):
        """The critic worker (one rank) of a stage whose algorithm declares one, built from the
        stage's starting policy; None otherwise."""
        if ALGORITHMS.get(stage.algorithm).critic_spec(stage.args) is None:
            return None
        r = self.recipe
        critic = worker_group(CriticWorker, dataclasses.replace(r.resources, num_workers=1, nodes=1), name="critic")
        start = self.checkpoint_of(index - 1) if index > 0 else None
        critic.init_stage(_model_dict(r), str(self.run_dir / "tokenizer"), r.seed, start, stage.algorithm, stage.args)
        return critic

    # -------------------------------------------------------------- run folder

    def _started(self) -> bool:
        """Whether anything of a run was done in the folder (a stage began or an evaluation was
        saved); a folder holding only what a failed start wrote is not a started run."""
        return (self.run_dir / RUN_STATE).is_file() or any(self.run_dir.glob("stage-*"))

    def _prepare_run_dir(self) -> None:
        """Create the run folder and its `recipe.yaml`. A folder of another recipe is refused once
        that run has started; one whose run failed to start is taken over (its tokenizer and base
        weights, written for the other recipe, are removed)."""
        if self.overwrite:
            clear_run_dir(self.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        recipe_file = self.run_dir / "recipe.yaml"
        if recipe_file.is_file() and _saved_recipe_hash(recipe_file) == recipe_hash(self.recipe):
            return
        if recipe_file.is_file():
            if self._started():
                raise ValueError(
                    f"{self.run_dir} holds a run of a different recipe; continue it with `dare run --resume "
                    f"{self.run_dir}`, choose another output_dir, or replace it with `dare run RECIPE --overwrite` "
                    "(deletes that run)"
                )
            print(
                f"dare: {self.run_dir}: its earlier run never started; reusing the folder for this recipe", flush=True
            )
            for stale in ("tokenizer", "base", ".tokenizer.tmp"):
                shutil.rmtree(self.run_dir / stale, ignore_errors=True)
        tmp = recipe_file.with_suffix(".yaml.tmp")
        tmp.write_text(yaml.safe_dump(self.recipe.to_dict(), sort_keys=False))
        tmp.replace(recipe_file)

    def _check_resume_state(self, trained: list[int]) -> None:
        """The training state the first unfinished stage resumes from, checked on the driver."""
        for index, stage in enumerate(self.recipe.stages):
            if index in trained:
                continue
            sdir = self.run_dir / stage_dir_name(index, stage)
            steps = list_states(sdir)
            if steps:
                check_training_state(sdir / "state" / f"step_{steps[-1]}")
                if ALGORITHMS.get(stage.algorithm).critic_spec(stage.args) is not None:
                    check_critic_state(sdir / "state" / f"step_{steps[-1]}")
            return

    def _maybe_control(self, state, actor, tokenizer, eval_rows, index: int, base_dir: str | None) -> None:
        """The stage's compute-matched SFT control (`sft_control`), unless already evaluated."""
        key = str(index + 1)
        if not self.recipe.stages[index].sft_control or key in state.setdefault("control", {}):
            return
        from dare.trainer.control import ControlContext, run_sft_control

        control = ControlContext(
            recipe=self.recipe, index=index, seconds=state["stage_seconds"][key], run_dir=self.run_dir, actor=actor,
            tokenizer=tokenizer, sft_rows=self.train_rows("sft", tokenizer), base_dir=base_dir,
            start_checkpoint=self.checkpoint_of(index - 1) if index > 0 else None,
            stage_checkpoint=self.checkpoint_of(index),
            evaluate=lambda label: self.evaluate(actor, tokenizer, eval_rows, label),
        )  # fmt: skip
        state["control"][key] = run_sft_control(control)
        self._save_run_state(state)

    def checkpoint_of(self, index: int) -> str:
        return str(self.run_dir / stage_dir_name(index, self.recipe.stages[index]) / "checkpoint")

    def _base_dir(self) -> str | None:
        """Folder holding the base weights LoRA adapters point at (a preset's initial weights are
        written there by the actor before it adds the adapter)."""
        if not self.recipe.model.lora:
            return None
        if self.recipe.model.path:  # a Hub id: its snapshot folder in the cache
            from dare.models.hub import resolve_checkpoint

            return str(resolve_checkpoint(self.recipe.model.path).resolve())
        return str((self.run_dir / "base").resolve())

    # -------------------------------------------------------------- data

    def train_rows(self, kind: str, tokenizer) -> list[dict[str, Any]]:
        """A stage's training rows. For a built-in task, RL and distill stages get the
        `num_rl_prompts` problems that follow the `num_train` demonstrations (generation is
        prefix-stable), so they train on prompts the SFT stage never saw. `data.max_prompt_length`
        applies (`dare.data.limit_prompts`)."""
        d = self.recipe.data
        builtin = d.train.startswith(BUILTIN_PREFIX)
        rl = kind in ("rl", "distill") and builtin
        n = (d.num_train + d.num_rl_prompts if rl else d.num_train) if builtin else None
        rows = load_dataset_spec(
            d.train, split="train", n=n, seed=self.recipe.seed, kind=ROW_KINDS.get(kind, "sft"),
            columns=d.columns or None, on_error=d.on_error, task_kwargs=d.task_args or None,
        )  # fmt: skip
        rows = apply_system_prompt(rows[d.num_train :] if rl else rows, d.system_prompt, d.system_prompt_placement)
        return limit_prompts(rows, tokenizer, d.max_prompt_length, d.long_prompts, f"data.train ({d.train})")[0]

    def _eval_rows(self, tokenizer) -> list[dict[str, Any]]:
        d = self.recipe.data
        source = d.eval or d.train
        rows = load_dataset_spec(
            source, split="eval", n=d.num_eval if source.startswith(BUILTIN_PREFIX) else None,
            seed=self.recipe.seed, kind="prompt", columns=d.columns or None, on_error=d.on_error,
            task_kwargs=d.task_args or None,
        )  # fmt: skip
        rows = apply_system_prompt(rows[: self.recipe.eval.num_prompts], d.system_prompt, d.system_prompt_placement)
        return limit_prompts(rows, tokenizer, d.max_prompt_length, d.long_prompts, f"eval rows ({source})")[0]

    # -------------------------------------------------------------- evaluation and report

    def sampling(self) -> dict[str, Any]:
        return {"gen_length": self.recipe.data.gen_length, **self.recipe.eval.sampling}

    def sync_rollout(self, actor) -> None:
        """Push the actor's weights to the separate rollout workers (no-op when colocated)."""
        if self.rollout is not None:
            self.rollout.set_weights(ray.put(actor.get_weights()[0]))

    def evaluate(self, actor, tokenizer, rows, label: str) -> dict[str, Any]:
        self.sync_rollout(actor)
        sampler = self.rollout or actor
        res = evaluate_accuracy(
            sampler.generate, sampler.world_size, rows, tokenizer, self.sampling(), self.recipe.eval.batch_size,
            self.recipe.seed, self.scorer,
        )  # fmt: skip
        print(
            f"dare: eval [{label}] accuracy {100 * res['accuracy']:.1f}% "
            f"(± {100 * res['stderr']:.1f}, n={res['num_prompts']}, scorer {res['scorer']}, {res['seconds']:.0f}s)",
            flush=True,
        )
        return res

    def _write_results(self, state: dict[str, Any]) -> None:
        (self.run_dir / "eval").mkdir(exist_ok=True)
        results = dict(state["eval"])
        if state.get("control"):  # compute-matched SFT controls, keyed by the stage they control
            results["control"] = state["control"]
        write_json(self.run_dir / "eval" / "results.json", results)
        write_report(self.run_dir, self.recipe, state)


def write_report(run_dir: Path, recipe: Recipe, state: dict[str, Any]) -> Path:
    lines = [
        f"# dare run report: {run_dir.name}",
        "",
        f"Recipe: `{recipe.source or 'recipe.yaml'}` | model: {recipe.model.family or recipe.model.path} | "
        f"seed {recipe.seed} | total {state.get('total_seconds', 0):.0f} s",
        "",
        "| stage | kind | algorithm | steps | accuracy (%) | ± s.e. | eval n | scorer | train s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows = [("0", "start", "-", "-", "-")] + [
        (str(i + 1), stage_dir_name(i, s), s.kind, s.algorithm, str(s.steps)) for i, s in enumerate(recipe.stages)
    ]
    for key, name, kind, algo, steps in rows:
        ev = state["eval"].get(key)
        if ev is None:
            continue
        secs = state.get("stage_seconds", {}).get(key)
        lines.append(
            f"| {name} | {kind} | {algo} | {steps} | {100 * ev['accuracy']:.1f} | {100 * ev['stderr']:.1f} | "
            f"{ev['num_prompts']} | {ev.get('scorer', '-')} | {'-' if secs is None else f'{secs:.0f}'} |"
        )
        ctl = state.get("control", {}).get(key)
        if ctl is not None:
            lines.append(
                f"| control: {name}'s start + SFT for its wall time | sft | sft (lr {ctl['lr']:g}, constant) | "
                f"{ctl['steps']} | {100 * ctl['accuracy']:.1f} | {100 * ctl['stderr']:.1f} | {ctl['num_prompts']} | "
                f"{ctl.get('scorer', '-')} | {ctl['seconds']:.0f} |"
            )
    lines += ["", f"Decoding: `{json.dumps(next(iter(state['eval'].values()), {}).get('sampling', {}))}`", ""]
    lines += benchmark_report(run_dir, recipe, state)
    printed = len(lines)
    lines += curves_report(run_dir, recipe)
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    print("\n".join(lines[4:printed]), flush=True)
    return path


def curves_report(run_dir: Path, recipe: Recipe) -> list[str]:
    """The report's training-curves section: `eval/training.png` from the stages' metrics."""
    stages = [(stage_dir_name(i, s), read_metrics(run_dir / stage_dir_name(i, s) / "metrics.jsonl"))
              for i, s in enumerate(recipe.stages)]  # fmt: skip
    if write_training_curves([(n, rows) for n, rows in stages if rows], run_dir / "eval" / "training.png") is None:
        return []
    return ["## Training curves (loss, reward, KL per step)", "", "![training curves](eval/training.png)", ""]


def _saved_recipe_hash(path: Path) -> str | None:
    """The hash of a run folder's saved recipe (None if it no longer builds: not this recipe)."""
    try:
        return recipe_hash(build_recipe(yaml.safe_load(path.read_text()), path))
    except (ValueError, KeyError, TypeError, FileNotFoundError, yaml.YAMLError):
        return None


def clear_run_dir(run_dir: Path) -> None:
    """Delete a dare run folder (`dare run --overwrite`); a folder that is not one (no
    `recipe.yaml`) and is not empty is refused, never deleted."""
    if not run_dir.exists():
        return
    if not (run_dir / "recipe.yaml").is_file():
        if run_dir.is_dir() and not any(run_dir.iterdir()):
            return
        raise ValueError(f"--overwrite: {run_dir} is not a dare run folder (no recipe.yaml); not deleting it")
    shutil.rmtree(run_dir)
    print(f"dare: --overwrite: deleted the earlier run in {run_dir}", flush=True)


def _model_dict(recipe: Recipe) -> dict[str, Any]:
    return recipe.to_dict()["model"]


__all__ = ["Pipeline", "clear_run_dir", "reference_group", "write_report"]
