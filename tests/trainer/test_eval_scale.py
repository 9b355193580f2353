"""Evaluation at scale: the built-in check runs data-parallel over the workers in the recipe's dtype
(1 and 2 workers give identical greedy results, bfloat16 reported); the OpenCompass request of a
run carries the recipe's dtype and splits inference over resources.num_workers tasks (one GPU each
on CUDA); the pipeline runs the benchmarks of the stages that lack them, after its workers are gone;
standalone `dare eval` takes the same path: the checkpoint's saved dtype, split over --num-workers tasks."""

import json

import pytest
import ray
import torch

from dare.cli import main
from dare.config import ResourcesSpec, build_recipe
from dare.data.tasks import builtin_tokenizer, get_task
from dare.evals.runner import opencompass_config
from dare.models import tiny
from dare.models.checkpoint import checkpoint_dtype
from dare.models.tokenizer import model_token_ids
from dare.trainer import pipeline as pipeline_mod
from dare.trainer.evaluate import benchmark_request, evaluate_accuracy
from dare.trainer.runtime import release, worker_group
from dare.workers.actor import ActorWorker

MODEL = {"family": "llada", "preset": "tiny", "tokenizer": "builtin", "dtype": "bfloat16", "overrides": {}}
SAMPLING = {"algorithm": "llada", "gen_length": 6, "steps": 6, "block_length": 6}  # temperature 0: greedy


def test_builtin_check_is_the_same_on_one_and_two_workers_in_the_recipe_dtype(tmp_path):
    tok = builtin_tokenizer()
    tok.save_pretrained(tmp_path / "tok")
    rows = get_task("sort").generate("eval", 6, seed=0)
    ray.init(address="local", num_cpus=3, include_dashboard=False, logging_level="ERROR")
    try:
        results = {}
        for n in (1, 2):
            wg = worker_group(ActorWorker, ResourcesSpec(num_workers=n, num_threads=1), name=f"ev{n}")
            wg.init_model(MODEL, str(tmp_path / "tok"), 0, None, None)
            res = evaluate_accuracy(wg.generate, wg.world_size, rows, tok, SAMPLING, batch_size=6, seed=0)
            results[n] = {k: v for k, v in res.items() if k not in ("seconds", "workers")}
            assert res["workers"] == n and res["num_prompts"] == 6
            release(wg)
    finally:
        ray.shutdown()
    assert results[1]["dtype"] == "bfloat16"  # the recipe's, not fp32
    assert any(e["response"] for e in results[1]["examples"])  # something was generated
    assert results[2] == results[1]  # responses, scores, accuracy: identical


def _recipe(**resources):
    return build_recipe({
        "model": {"family": "llada", "preset": "tiny", "tokenizer": "builtin", "dtype": "bfloat16"},
        "data": {"train": "builtin:sort"},
        "eval": {"benchmarks": ["sort"]},
        "resources": {"num_threads": 1, **resources},
        "stages": [{"kind": "sft", "algorithm": "sft", "steps": 2, "batch_size": 4}],
    })  # fmt: skip


def test_opencompass_request_uses_the_recipe_dtype_and_every_worker(tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    cfg = opencompass_config(benchmark_request(_recipe(num_workers=2), tmp_path / "ckpt", tmp_path / "work"))
    model = cfg["models"][0]
    assert model["dtype"] == "bfloat16" and model["run_cfg"] == {"num_gpus": 0} and model["device"] == "cpu"
    infer = cfg["infer"]
    assert infer["partitioner"]["type"].endswith("NumWorkerPartitioner") and infer["partitioner"]["num_worker"] == 2
    assert infer["runner"]["max_num_workers"] == 2
    assert infer["partitioner"]["dataset_size_path"].startswith(str((tmp_path / "work").resolve()))  # not in cwd
    assert cfg["eval"]["partitioner"]["type"].endswith("NaivePartitioner")  # scoring reads the parts back
    one = opencompass_config(benchmark_request(_recipe(num_workers=1), tmp_path / "ckpt", tmp_path / "work"))
    assert (
        one["infer"]["partitioner"]["type"].endswith("NaivePartitioner")
        and one["infer"]["runner"]["max_num_workers"] == 1
    )
    gpu = opencompass_config(
        benchmark_request(_recipe(num_workers=4, device="cuda"), tmp_path / "ckpt", tmp_path / "work")
    )
    assert gpu["models"][0]["run_cfg"] == {"num_gpus": 1} and gpu["infer"]["runner"]["max_num_workers"] == 4


def test_benchmarks_run_for_the_stages_that_lack_them(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(
        pipeline_mod, "evaluate_benchmarks", lambda r, ckpt, work, name: calls.append(name) or {"sort": {}}
    )
    p = pipeline_mod.Pipeline(_recipe(), tmp_path / "run")
    (tmp_path / "run").mkdir()
    state = {"completed": [0], "trained": [0], "eval": {"1": {"accuracy": 0.5}}}
    monkeypatch.setattr(p, "_write_results", lambda s: None)
    p._run_benchmarks(state)
    assert calls == ["stage-1-sft"] and state["eval"]["1"]["benchmarks"] == {"sort": {}}
    p._run_benchmarks(state)  # nothing left to do (a resumed run does not repeat them)
    assert calls == ["stage-1-sft"]


def test_a_split_benchmark_counts_the_rows_of_every_part(tmp_path):
    from dare.evals.runner import _num_predictions

    for i, n in enumerate((3, 2)):  # what NumWorkerPartitioner's tasks write: NAME_0.json, NAME_1.json
        (tmp_path / f"sort_{i}.json").write_text(json.dumps({str(k): {"prediction": ""} for k in range(n)}))
    (tmp_path / "gsm8k.json").write_text(json.dumps({"0": {}}))
    assert _num_predictions(tmp_path, "sort") == 5
    assert _num_predictions(tmp_path, "gsm8k") == 1 and _num_predictions(tmp_path, "mbpp") is None


def _tiny_checkpoint(path, dtype=torch.bfloat16):
    """The tiny LLaDA of MODEL (built-in tokenizer), saved in `dtype` like a released bf16 checkpoint."""
    tok = builtin_tokenizer()
    tiny("llada", seed=0, **model_token_ids(tok)).to(dtype).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _predictions(out):
    """(prompt, prediction) per row of `dare eval --out OUT`'s sort run, in row order (the parts
    sort_0.json, sort_1.json, ... of a split run one after the other)."""
    folder = next(out.glob("2*/predictions/dare"))
    parts = [folder / "sort.json"] if (folder / "sort.json").is_file() else sorted(folder.glob("sort_*.json"))
    rows = []
    for part in parts:
        preds = json.loads(part.read_text())
        rows += [(preds[str(i)]["origin_prompt"], preds[str(i)]["prediction"]) for i in range(len(preds))]
    return parts, rows


def test_dare_eval_splits_over_workers_in_the_checkpoint_dtype(tmp_path, capsys):
    ckpt = _tiny_checkpoint(tmp_path / "ckpt")
    assert checkpoint_dtype(ckpt) == "bfloat16"
    flags = ["--gen-length", "6", "--steps", "6", "--block-length", "6", "--device", "cpu", "--debug"]
    results, predictions = {}, {}
    for n in (1, 2):  # no --dtype: the checkpoint's
        out = tmp_path / f"out{n}"
        argv = ["eval", "--model", str(ckpt), "--benchmarks", "sort", "--limit", "8", "--out", str(out), *flags]
        assert main([*argv, "--num-workers", str(n)]) == 0
        assert f"in bfloat16 on cpu, {n} worker(s)" in capsys.readouterr().out
        results[n] = json.loads((out / "results.json").read_text())
        parts, predictions[n] = _predictions(out)
        assert len(parts) == n  # OpenCompass split the rows over n inference tasks
        assert results[n]["request"]["dtype"] == "bfloat16" and results[n]["request"]["num_workers"] == n
        log = (out / "opencompass.log").read_text()  # what the model in OpenCompass's task really held
        assert "loaded in bfloat16 on cpu" in log and "loaded in float32" not in log
    assert len(predictions[1]) == 8 and any(p for _, p in predictions[1])  # something was generated
    assert predictions[2] == predictions[1]  # per prompt, the same completion
    sort1, sort2 = results[1]["benchmarks"]["sort"], results[2]["benchmarks"]["sort"]
    assert sort2["score"] == sort1["score"] and sort2["num_examples"] == sort1["num_examples"] == 8


def test_checkpoint_dtype_reads_the_config_then_the_weights(tmp_path):
    ckpt = _tiny_checkpoint(tmp_path / "ckpt", torch.float16)
    cfg = json.loads((ckpt / "config.json").read_text())
    assert checkpoint_dtype(ckpt) == "float16"
    cfg.pop("dtype", None)
    (ckpt / "config.json").write_text(json.dumps({**cfg, "torch_dtype": "bfloat16"}))  # older transformers' key
    assert checkpoint_dtype(ckpt) == "bfloat16"
    (ckpt / "config.json").write_text(json.dumps(cfg))  # no key: the stored tensors' dtype
    assert checkpoint_dtype(ckpt) == "float16"
    (ckpt / "config.json").write_text(json.dumps({**cfg, "torch_dtype": "float64"}))
    with pytest.raises(ValueError, match=r"config\.json: torch_dtype 'float64' is not a dtype dare loads"):
        checkpoint_dtype(ckpt)
