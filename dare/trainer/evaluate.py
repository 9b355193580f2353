"""The evaluation run after every stage:

- the built-in check: exact-match accuracy of sampled answers on the eval split, through the
  actor's (or rollout workers') own sampler (`evaluate_accuracy`);
- the recipe's `eval.benchmarks`: OpenCompass on the stage's checkpoint (`evaluate_benchmarks`,
  `dare.evals`), with the same decoding settings and seed.
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
from dare.data.tasks import extract_answer, row_task
from dare.trainer.runtime import dp_call


def row_scorer(row: dict[str, Any]) -> Callable[[str], float]:
    """Exact-match scorer of one row: its built-in task's verifier, else string equality with
    the ground truth (or the demonstration)."""
    if row.get("task"):
        task = row_task(row)  # with the row's knobs (e.g. sort's direction: either)
        return lambda text: task.score(text, row["ground_truth"])
    target = str(row.get("ground_truth", row.get("response", ""))).strip()
    return lambda text: float(extract_answer(text) == target)


def evaluate_accuracy(
    generate_fn,
    world_size: int,
    rows: Sequence[dict[str, Any]],
    tokenizer: PreTrainedTokenizerBase,
    sampling: dict[str, Any],
    batch_size: int,
    seed: int,
) -> dict[str, Any]:
    """Generate an answer for each row's prompt and score it. Returns accuracy, its standard
    error, timing and a few examples."""
    t0 = time.perf_counter()
    scores, examples, nfe = [], [], 0
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
        for row, ids, mask in zip(chunk, responses, out.batch["response_mask"]):
            text = tokenizer.decode(ids[mask.bool()].tolist(), skip_special_tokens=True)
            s = row_scorer(row)(text)
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
    "evaluate_accuracy",
    "evaluate_benchmarks",
    "row_scorer",
]
