"""Bad benchmark names, missing benchmark files and unloadable checkpoints fail with a clear
message before OpenCompass starts (no config written, no OpenCompass process); and the report's
benchmark table and chart."""

from __future__ import annotations

import json
import subprocess

import pytest

from dare.cli import main
from dare.config import RecipeError, load_recipe
from dare.evals import EvalRequest, run_benchmarks
from dare.evals.report import benchmark_table, write_chart
from dare.evals.runner import CONFIG_NAME
from dare.models import tiny
from dare.models.tokenizer import model_token_ids

# module-scoped fixtures: keep this file's tests on one pytest-xdist worker
pytestmark = pytest.mark.xdist_group("evals")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from dare.data.tasks import builtin_tokenizer

    path = tmp_path_factory.mktemp("ck") / "ckpt"
    tok = builtin_tokenizer()
    tiny("llada", seed=0, **model_token_ids(tok)).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture
def no_opencompass(monkeypatch):
    """Any attempt to start OpenCompass fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"OpenCompass was started: {args}")

    monkeypatch.setattr(subprocess, "run", refuse)


def _cli(capsys, *argv) -> tuple[int, str]:
    rc = main(["eval", *argv])
    return rc, capsys.readouterr().err


def test_cli_refuses_bad_requests_before_opencompass(tmp_path, ckpt, capsys, no_opencompass):
    out = tmp_path / "work"
    gsm = tmp_path / "gsm8k.jsonl"
    cases = [
        (["--model", str(ckpt), "--benchmarks", "sortt"], "unknown benchmark 'sortt'", "did you mean 'sort'?"),
        (["--model", str(ckpt), "--benchmarks", "sort,gsm8k"], "benchmark 'gsm8k' reads a local file", "--file gsm8k=PATH"),
        (["--model", str(ckpt), "--benchmarks", "gsm8k", "--file", f"gsm8k={gsm}"], f"gsm8k file {gsm} does not exist", ""),
        (["--model", str(tmp_path / "nope"), "--benchmarks", "sort"], "not a checkpoint folder", ""),
        # task_args maps a benchmark to its knobs: a bare knob is refused, not silently ignored
        (["--model", str(ckpt), "--benchmarks", "sort", "--task-args", '{"direction": "either"}'],
         "task_args: 'direction' is not a benchmark of this run", '{"sort": {"direction": "either"}}'),
        (["--model", str(ckpt), "--benchmarks", "sort", "--task-args", '{"sort": {"direction": "down"}}'],
         "task_args.sort: sort: direction must be", ""),
        (["--model", str(ckpt), "--benchmarks", "sort", "--task-args", '{"sort": {"max_lenn": 4}}'],
         "task_args.sort: task 'sort' has no knob(s) ['max_lenn']", ""),
    ]  # fmt: skip
    for argv, msg, hint in cases:
        rc, err = _cli(capsys, *argv, "--out", str(out))
        assert rc == 2 and msg in err and hint in err, (argv, err)
    # a file that is not GSM8K-shaped, and a checkpoint whose weights are missing
    gsm.write_text(json.dumps({"question": "1 + 1?", "answer": "2"}) + "\n")
    rc, err = _cli(capsys, "--model", str(ckpt), "--benchmarks", "gsm8k", "--file", f"gsm8k={gsm}", "--out", str(out))
    assert rc == 2 and "is not a gsm8k row" in err and "####" in err, err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((ckpt / "config.json").read_text())
    rc, err = _cli(capsys, "--model", str(broken), "--benchmarks", "sort", "--out", str(out))
    assert rc == 2 and "the checkpoint cannot be loaded" in err and "safetensors" in err, err
    assert not (out / CONFIG_NAME).exists()


def test_unfit_decoding_settings_fail_before_opencompass(tmp_path, ckpt, no_opencompass):
    req = EvalRequest(model=str(ckpt), benchmarks=["sort"], work_dir=str(tmp_path),
                      sampling={"algorithm": "sdar", "gen_length": 8})  # fmt: skip
    with pytest.raises(ValueError, match="sampling: algorithm='sdar' decodes block-attention models"):
        run_benchmarks(req)


def test_recipe_eval_block_is_checked_at_load(tmp_path):
    with pytest.raises(RecipeError, match="eval.benchmarks: unknown benchmark 'hellaswg'.*did you mean 'hellaswag'"):
        load_recipe("recipes/quickstart.yaml", ["eval.benchmarks=[sort,hellaswg]"])
    with pytest.raises(RecipeError, match="give its path: eval.benchmark_files.mmlu"):
        load_recipe("recipes/quickstart.yaml", ["eval.benchmarks=[mmlu]"])
    missing = tmp_path / "mmlu.jsonl"
    with pytest.raises(RecipeError, match=f"eval.benchmark_files.mmlu: mmlu file {missing} does not exist"):
        load_recipe("recipes/quickstart.yaml", ["eval.benchmarks=[mmlu]", f"eval.benchmark_files={{mmlu: {missing}}}"])
    missing.write_text(json.dumps({"question": "2 + 2 =", "choices": ["1", "2", "3", "4"], "answer": 3}) + "\n")
    recipe = load_recipe(
        "recipes/quickstart.yaml", ["eval.benchmarks=[mmlu]", f"eval.benchmark_files={{mmlu: {missing}}}"]
    )
    assert recipe.eval.benchmark_files == {"mmlu": str(missing)}


def test_pipeline_without_opencompass_fails_before_the_run_starts(tmp_path, monkeypatch):
    from dare.evals import runner
    from dare.trainer import Pipeline

    monkeypatch.setattr(runner, "opencompass_installed", lambda: False)
    recipe = load_recipe("recipes/quickstart.yaml", [f"output_dir={tmp_path / 'run'}"])
    with pytest.raises(RuntimeError, match="eval.benchmarks needs opencompass"):
        Pipeline(recipe).run()
    assert not (tmp_path / "run").exists()


def test_benchmark_table_and_chart(tmp_path):
    stages = [
        ("1:sft", {"sort": {"score": 61.7, "metric": "accuracy"}, "gsm8k": {"score": 0.0, "metric": "accuracy"}}),
        ("2:rl", {"sort": {"score": 70.0, "metric": "accuracy"}}),
    ]
    assert benchmark_table(stages) == [
        "| benchmark | metric | 1:sft | 2:rl |",
        "|---|---|---|---|",
        "| sort | accuracy | 61.7 | 70.0 |",
        "| gsm8k | accuracy | 0.0 | - |",
    ]
    png = write_chart(stages, tmp_path / "chart.png")
    assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_builtin_benchmark_scores_with_the_tasks_knobs():
    """OpenCompass's evaluator of a built-in benchmark is the task built with `task_args`: sort
    with `direction: either` accepts the descending answer, the default does not; the dataset
    draws the same rows as the task."""
    from dare.data.tasks import get_task
    from dare.evals.datasets import DareTaskDataset, DareTaskEvaluator

    refs = [json.dumps("1234")] * 3
    preds = ["4321", "1234", "1324"]
    assert DareTaskEvaluator("sort", {"direction": "either"}).score(preds, refs)["accuracy"] == pytest.approx(200 / 3)
    assert DareTaskEvaluator("sort").score(preds, refs)["accuracy"] == pytest.approx(100 / 3)
    ds = DareTaskDataset.load("sort", num_examples=5, seed=0, task_args={"direction": "either"})["test"]
    rows = get_task("sort", direction="either").generate("eval", 5, seed=0)
    assert ds["prompt"] == [r["prompt"] for r in rows]
