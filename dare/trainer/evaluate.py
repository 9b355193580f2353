"""The evaluation run after every stage:

- the built-in check: accuracy of sampled answers on the eval split, through the actor's (or
  rollout workers') own sampler (`evaluate_accuracy`), data-parallel over those workers in the
  recipe's dtype, scored by the run's `eval.scorer` (`dare.rewards.scorers`: the reward
  verifiers; `eval_scorer`);
- the recipe's `eval.benchmarks`: OpenCompass on the stage's checkpoint (`evaluate_benchmarks`,
  `dare.evals`), with the same decoding settings and seed, in the recipe's dtype and split over
  `resources.num_workers` tasks; the pipeline runs it once the training workers are released.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase
from verl import DataProto

from dare.data.formatting import collate_prompts
from dare.rewards.scorers import AutoScorer, Scorer, check_rows, resolve_scorer, score_rows
from dare.trainer.runtime import dp_call

_AUTO = AutoScorer()


def row_scorer(row: dict[str, Any]) -> Callable[[str], float]:
    """The scorer of one row without a recipe (RL stages without `rewards`, distillation's
    teacher accuracy): `auto`'s choice for the row -- its built-in task's verifier, its declared
    data source's, its ground truth's shape's, else exact match."""
    return lambda text: _AUTO.score(row, text)


def eval_scorer(recipe: Any, rows: Sequence[dict[str, Any]]) -> Scorer:
    """The run's scorer for the built-in check (`eval.scorer`; `auto` looks at the stages' reward
    verifiers first), checked against the eval rows before anything is generated (when the check
    is on: `eval.enabled`).

    Raises:
        ValueError: an eval row the scorer cannot score (names the row and the scorer).
    """
    stage_rewards = [(f"stages[{i}]", getattr(s.args, "rewards", None)) for i, s in enumerate(recipe.stages)]
    scorer = resolve_scorer(recipe.eval.scorer, stage_rewards)
    if recipe.eval.enabled:
        check_rows(scorer, rows)
    return scorer


def evaluate_accuracy(
    generate_fn,
    world_size: int,
    rows: Sequence[dict[str, Any]],
    tokenizer: PreTrainedTokenizerBase,
    sampling: dict[str, Any],
    batch_size: int,
    seed: int,
    scorer: Scorer | None = None,
) -> dict[str, Any]:
    """Generate an answer for each row's prompt and score it with `scorer` (default: `auto` per
    row). Returns accuracy, its standard error, timing, a few examples, and which scorer ran
    (`scorer`: its name, names joined by "+" when `auto` picked several; `scorer_from`: why;
    `scorer_errors`: rows whose verifier raised, scored 0)."""
    scorer = scorer or _AUTO
    t0 = time.perf_counter()
    scores, examples, nfe, errors, dtype = [], [], 0, 0, None
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        prompts = collate_prompts(chunk, tokenizer)
        data = DataProto.from_dict(
            tensors={"input_ids": prompts["input_ids"], "attention_mask": prompts["attention_mask"]},
            meta_info={"sampling": sampling, "seed": seed + start},
        )
        out = dp_call(generate_fn, data, world_size)
        responses = out.batch["responses"]
        nfe += int(out.batch["nfe"].max())  # the slowest rank's forward passes
        dtype = out.meta_info.get("dtype", dtype)
        texts = [
            tokenizer.decode(ids[mask.bool()].tolist(), skip_special_tokens=True)
            for ids, mask in zip(responses, out.batch["response_mask"])
        ]
        chunk_scores, chunk_errors = score_rows(scorer, chunk, texts)
        errors += len(chunk_errors)
        for row, text, s in zip(chunk, texts, chunk_scores):
            scores.append(s)
            if len(examples) < 5:
                examples.append({"prompt": row["prompt"], "response": text, "score": s})
    n = len(scores)
    acc = sum(scores) / max(1, n)
    stderr = (acc * (1 - acc) / max(1, n)) ** 0.5
    return {
        "accuracy": acc,
        "stderr": stderr,
        "num_prompts": n,
        "seconds": time.perf_counter() - t0,
        "sampling": sampling,
        "examples": examples,
        "scorer": "+".join(sorted({scorer.pick(row).name for row in rows})) or scorer.name,
        "scorer_from": scorer.source,
        "scorer_errors": errors,
        "workers": world_size,
        "dtype": dtype,  # the sampling model's (the recipe's model.dtype), when the sampler reports it
    }


def benchmark_request(recipe: Any, checkpoint: str | Path, work_dir: str | Path):
    """The `EvalRequest` of a recipe's `eval` block for one checkpoint: the eval decoding settings
    (gen_length = data.gen_length unless eval.sampling sets it), the recipe's seed, and for the
    built-in task the recipe trains on, its difficulty knobs and `data.num_eval` examples (the
    rows of the built-in check, whose first `eval.num_prompts` the check scores)."""
    from dare.config.schema import BUILTIN_PREFIX
    from dare.evals import EvalRequest

    ev, data = recipe.eval, recipe.data
    task_args = {}
    if data.train.startswith(BUILTIN_PREFIX):
        task = data.train[len(BUILTIN_PREFIX) :]
        task_args = {task: dict(data.task_args)} if data.task_args and task in ev.benchmarks else {}
    return EvalRequest(
        model=str(checkpoint), benchmarks=list(ev.benchmarks), work_dir=str(work_dir),
        files=dict(ev.benchmark_files), limit=ev.limit, builtin_examples=data.num_eval,
        sampling={"gen_length": data.gen_length, **ev.sampling}, elbo_samples=ev.elbo_samples, seed=recipe.seed,
        batch_size=ev.batch_size, tokenizer=str(checkpoint), task_args=task_args,
        num_threads=recipe.resources.num_threads or 1, timeout=ev.benchmark_timeout, check_weights=False,
        # the recipe's dtype, data-parallel over the devices the training workers held (run once
        # they are released: dare.trainer.pipeline)
        dtype=recipe.model.dtype, num_workers=recipe.resources.num_workers, device=recipe.resources.device,
    )  # fmt: skip


def evaluate_benchmarks(recipe: Any, checkpoint: str | Path, work_dir: str | Path, label: str) -> dict[str, Any]:
    """Run the recipe's OpenCompass benchmarks on a stage checkpoint. Returns `{benchmark: {score,
    metric, num_examples, sampling, elbo_samples, model, seed, hardware, seconds, output_dir}}`
    (`seconds` is the wall time of the whole OpenCompass run of that stage) and prints one line."""
    from dare.evals import run_benchmarks

    res = run_benchmarks(benchmark_request(recipe, checkpoint, work_dir))
    shared = {
        k: res[k] for k in ("sampling", "elbo_samples", "model", "seed", "limit", "hardware", "seconds", "output_dir")
    }
    out = {name: {**r, **shared} for name, r in res["benchmarks"].items()}
    scores = ", ".join(f"{n} {r['score']:.1f}" for n, r in out.items())
    print(f"dare: opencompass [{label}] {scores} ({res['seconds']:.0f}s, {res['output_dir']})", flush=True)
    return out


def benchmark_report(run_dir: str | Path, recipe: Any, state: dict[str, Any]) -> list[str]:
    """The report's benchmark section: a table of every benchmark across stages (also printed with
    the report), the chart `eval/benchmarks.png` when matplotlib is installed, and the settings."""
    from dare.evals.report import benchmark_table, write_chart

    stages = []
    for i, stage in enumerate(recipe.stages):
        ev = state["eval"].get(str(i + 1)) or {}
        if ev.get("benchmarks"):
            stages.append((f"{i + 1}:{stage.name or stage.algorithm}", ev["benchmarks"]))
    if not stages:
        return []
    lines = ["## OpenCompass benchmarks (score, %)", "", *benchmark_table(stages), ""]
    (Path(run_dir) / "eval").mkdir(parents=True, exist_ok=True)
    chart = write_chart(stages, Path(run_dir) / "eval" / "benchmarks.png")
    if chart is not None:
        lines += ["![benchmarks per stage](eval/benchmarks.png)", ""]
    first = next(iter(stages[-1][1].values()))
    lines += [
        f"Decoding: `{json.dumps(first['sampling'])}` | ELBO samples {first['elbo_samples']} | seed {first['seed']} | "
        f"OpenCompass outputs: `eval/opencompass/` | per-benchmark details: `eval/results.json`",
        "",
    ]
    return lines


def check_benchmark_setup(recipe: Any) -> None:
    """Before a run starts: OpenCompass must be installed when the recipe names benchmarks (names
    and files are checked when the recipe is loaded)."""
    from dare.evals.runner import opencompass_installed

    if recipe.eval.enabled and recipe.eval.benchmarks and not opencompass_installed():
        raise RuntimeError(
            "eval.benchmarks needs opencompass, which is not installed in this environment; "
            "run scripts/install.sh (make install)"
        )


__all__ = [
    "benchmark_report",
    "benchmark_request",
    "check_benchmark_setup",
    "eval_scorer",
    "evaluate_accuracy",
    "evaluate_benchmarks",
    "row_scorer",
]
