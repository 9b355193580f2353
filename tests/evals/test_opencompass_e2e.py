"""One real OpenCompass run (its CLI, partitioner, LocalRunner and task subprocesses) of a tiny
trained dare model on a built-in task, a local GSM8K-format JSONL and a local ARC-format JSONL
(multiple choice by ELBO), shared by the assertions below through a module-scoped fixture."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from oc_helpers import (
    SAMPLING,
    SORT_ARGS,
    arc_file,
    gsm8k_file,
)  # (pytest puts this folder on sys.path)
from transformers import AutoTokenizer

from dare.data.formatting import collate_prompts
from dare.data.tasks import get_task
from dare.evals import EvalRequest, run_benchmarks
from dare.models.checkpoint import load_policy
from dare.sampling import SamplingConfig, generate
from dare.trainer.evaluate import row_scorer

# module-scoped fixtures: keep this file's tests on one pytest-xdist worker
pytestmark = pytest.mark.xdist_group("evals")

LIMIT = 60


@pytest.fixture(scope="module")
def oc_run(tmp_path_factory, sort_ckpt):
    tmp = tmp_path_factory.mktemp("oc")
    ckpt = sort_ckpt
    req = EvalRequest(
        model=str(ckpt), benchmarks=["sort", "gsm8k", "arc_c"], work_dir=str(tmp / "work"),
        files={"gsm8k": str(gsm8k_file(tmp / "gsm8k.jsonl")), "arc_c": str(arc_file(tmp / "arc.jsonl"))},
        limit=LIMIT, sampling=SAMPLING, seed=0,
        task_args={"sort": SORT_ARGS}, timeout=400,
    )  # fmt: skip
    return run_benchmarks(req), ckpt


def _json(path: Path):
    return json.loads(path.read_text())


def test_scores_are_read_from_opencompass_output(oc_run):
    res, _ = oc_run
    out = Path(res["output_dir"])
    # OpenCompass's own layout: configs, per-task logs, predictions, results, summary
    assert (out / "configs").is_dir() and list((out / "logs" / "infer" / "dare").glob("*.out"))
    for name, n in (("sort", LIMIT), ("gsm8k", 4), ("arc_c", 8)):
        result = _json(out / "results" / "dare" / f"{name}.json")
        assert res["benchmarks"][name]["score"] == pytest.approx(result["accuracy"])
        assert res["benchmarks"][name]["num_examples"] == n
        assert len(_json(out / "predictions" / "dare" / f"{name}.json")) == n
    # the summary OpenCompass writes agrees
    rows = list(csv.reader(next((out / "summary").glob("summary_*.csv")).open()))
    summary = {r[0]: r[-1] for r in rows[1:]}
    assert float(summary["sort"]) == pytest.approx(res["benchmarks"]["sort"]["score"], abs=0.01)
    # a briefly trained model: neither all right nor all wrong, so the comparison below is informative
    assert 10 < res["benchmarks"]["sort"]["score"] < 95
    # gsm8k went through OpenCompass's own post-processing (the '#### N' answer line)
    gsm = _json(out / "results" / "dare" / "gsm8k.json")["details"]
    assert [d["answer"][0] for d in gsm] == ["3", "7", "15", "14"]
    # reproducibility record
    assert res["sampling"] == SAMPLING and res["seed"] == 0 and res["seconds"] > 0 and res["hardware"]["cpu_count"]


def test_builtin_score_equals_dare_exact_match_on_the_same_completions(oc_run):
    res, ckpt = oc_run
    preds = _json(Path(res["output_dir"]) / "predictions" / "dare" / "sort.json")
    completions = [preds[str(i)]["prediction"] for i in range(LIMIT)]
    rows = get_task("sort", **SORT_ARGS).generate("eval", LIMIT, seed=0)
    assert [preds[str(i)]["origin_prompt"] for i in range(LIMIT)] == [r["prompt"] for r in rows]
    # dare's own sampler on the same prompts (greedy) gives the same completions ...
    model, tok = load_policy(ckpt).eval(), AutoTokenizer.from_pretrained(ckpt)
    batch = collate_prompts(rows, tok)
    r = generate(model, (batch["input_ids"], batch["attention_mask"]), SamplingConfig(**SAMPLING), torch.Generator())
    ours = [tok.decode(ids[m].tolist(), skip_special_tokens=True) for ids, m in zip(r.response_ids, r.response_mask)]
    assert ours == completions
    # ... and dare's exact-match scorer on them gives OpenCompass's score
    dare_score = 100 * sum(row_scorer(row)(text) for row, text in zip(rows, completions)) / LIMIT
    assert res["benchmarks"]["sort"]["score"] == pytest.approx(dare_score)


def test_multiple_choice_picks_the_lowest_elbo_ppl(oc_run):
    res, _ = oc_run
    preds = _json(Path(res["output_dir"]) / "predictions" / "dare" / "arc_c.json")
    correct = 0
    for p in preds.values():
        ppl = {label[len("label: ") :]: v["PPL"] for label, v in p.items() if label.startswith("label: ")}
        assert sorted(ppl) == ["A", "B", "C", "D"] and all(0 < x < 50 for x in ppl.values())
        assert p["prediction"] == min(ppl, key=ppl.get)  # OpenCompass ranked by dare's per-token -ELBO
        correct += p["prediction"] == p["gold"]
    assert res["benchmarks"]["arc_c"]["score"] == pytest.approx(100 * correct / len(preds))
