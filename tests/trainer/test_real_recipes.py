"""The real-scale recipes (recipes/<family>/*.yaml) rehearsed through `dare run`.

Every recipe is validated by `dare run --dry-run` against the replica of the model it names (Hub id
resolved from the offline cache, config and tokenizer read, rollout sampling and rewards checked).
One recipe per distinct stage path runs end to end (`END_TO_END`: SFT-free RL with the built-in
check and code / math benchmarks, preference with LoRA, RL with a critic worker); the RL objectives
that share the RL trainer's path are covered there and by their in-process learning tests
(tests/algorithms), which keeps the suite's time bounded as objectives are added.

Each recipe runs as shipped (its Hub id, algorithm, rewards, LoRA, system prompt, reference
re-sync, samplers and OpenCompass benchmarks) on a *replica* of the released model it names
(tests/replicas.py: the released config with shrunk dimensions, the released tokenizer layout,
special tokens and chat template, random weights in the released shard naming) installed in a
huggingface_hub cache with the network off, and on small files in the data layouts the recipe
names (GSM8K JSONL, AceCode-style code with tests, MATH JSONL, UltraFeedback-binarized parquet,
HumanEval / MBPP / MATH-500 benchmark files). Only the scale is overridden: steps, batch sizes,
generation lengths, sampling steps, CPU workers. What is checked: the run completes, every stage is
trained, evaluated by the built-in check with the scorer its data calls for, and scored by each of
its OpenCompass benchmarks, and the report is written.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from replicas import RELEASES, install_replica

from dare.cli import main

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted(p for p in (ROOT / "recipes").rglob("*.yaml") if p.parent != ROOT / "recipes")
# (SDAR's coupled-GRPO math recipe shares every step of its path with the TraceRL math recipe but
# the critic; it is dry-run on its replica like every recipe)
END_TO_END = {"llada/d1_gsm8k.yaml", "llada/vrpo_ultrafeedback.yaml", "dream/coupled_grpo_code.yaml",
              "sdar/tracerl_value_math.yaml"}  # fmt: skip
GEN = 32  # the rehearsal's generation length (LLaDA's recipes decode in 32-token blocks)

# a module-scoped Hub cache: keep this file's tests on one pytest-xdist worker
pytestmark = pytest.mark.xdist_group("real_recipes")


# --- data files in the released layouts ---------------------------------------------------------

PAIRS = [(2, 3), (4, 5), (10, 7), (6, 6), (9, 1), (12, 3), (8, 8), (5, 11)]


def gsm8k_rows() -> list[dict]:
    return [{"question": f"Tom has {a} apples and buys {b} more. How many apples does he have?",
             "answer": f"He has {a} + {b} = <<{a}+{b}={a + b}>>{a + b} apples.\n#### {a + b}"} for a, b in PAIRS]  # fmt: skip


def math_rows() -> list[dict]:
    return [{"problem": f"Compute ${a} \\cdot {b}$.", "solution": f"${a} \\cdot {b} = \\boxed{{{a * b}}}$.",
             "answer": str(a * b), "subject": "Prealgebra", "level": 1, "unique_id": f"test/prealgebra/{i}.json"}
            for i, (a, b) in enumerate(PAIRS)]  # fmt: skip


def acecode_rows() -> list[dict]:  # AceCode-87K: a question and a list of assert test cases
    return [{"id": f"oss_{i}", "question": f"Write a function `add_{i}(x)` that returns x + {a}.",
             "test_cases": [f"assert add_{i}(0) == {a}", f"assert add_{i}({b}) == {a + b}"]}
            for i, (a, b) in enumerate(PAIRS)]  # fmt: skip


def humaneval_rows() -> list[dict]:
    return [{"task_id": f"HumanEval/{i}", "prompt": f'def add_{i}(x):\n    """Return x + {a}."""\n',
             "canonical_solution": f"    return x + {a}\n", "entry_point": f"add_{i}",
             "test": f"def check(candidate):\n    assert candidate({b}) == {a + b}\n"}
            for i, (a, b) in enumerate(PAIRS)]  # fmt: skip


def mbpp_rows() -> list[dict]:
    return [{"task_id": 11 + i, "text": f"Write a function add_{i}(x) that returns x + {a}.",
             "code": f"def add_{i}(x):\n    return x + {a}", "test_list": [f"assert add_{i}({b}) == {a + b}"]}
            for i, (a, b) in enumerate(PAIRS)]  # fmt: skip


def ultrafeedback_table():
    """UltraFeedback-binarized preference rows (prompt, chosen and rejected message lists, scores)."""
    import pyarrow as pa

    rows = []
    for i, (a, b) in enumerate(PAIRS):
        prompt = f"What is {a} plus {b}?"
        turn = [{"role": "user", "content": prompt}]
        rows.append({"prompt": prompt, "prompt_id": f"{i:064x}",
                     "chosen": turn + [{"role": "assistant", "content": f"{a} plus {b} is {a + b}."}],
                     "rejected": turn + [{"role": "assistant", "content": f"It is {a + b + 1}."}],
                     "messages": turn + [{"role": "assistant", "content": f"{a} plus {b} is {a + b}."}],
                     "score_chosen": 8.0, "score_rejected": 3.0})  # fmt: skip
    return pa.Table.from_pylist(rows)


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def data_file(path: str, tmp: Path) -> str:
    """A local file in the layout of the recipe's data path (by its name), under `tmp`."""
    target = tmp / Path(path).relative_to("/")
    name = target.name
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        target.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(ultrafeedback_table(), target)
        return str(target)
    if "humaneval" in str(target):
        return write_jsonl(target, humaneval_rows())
    if "mbpp" in str(target):
        return write_jsonl(target, mbpp_rows())
    if "acecode" in str(target):
        return write_jsonl(target, acecode_rows())
    if "math" in str(target):
        return write_jsonl(target, math_rows())
    if "gsm8k" in str(target):
        return write_jsonl(target, gsm8k_rows())
    raise AssertionError(f"no rehearsal data layout for {path}")


# --- the rehearsal ------------------------------------------------------------------------------


def rehearsal_steps(sampling: dict, one_per_step: bool) -> int:
    """Sampling steps at the rehearsal's length: one per token stays one per token, the ascending
    schedule (ASS) takes log2(GEN) steps for its one block, anything else 8."""
    if sampling.get("schedule") == "ascending":
        return GEN.bit_length() - 1
    return GEN if one_per_step else 8


def shrink(raw: dict, tmp: Path) -> list[str]:
    """`dare run` overrides that keep everything a recipe chooses but its scale (and point its
    data paths at the rehearsal files)."""
    out = [f"output_dir={tmp / 'run'}", "resources.device=cpu", "resources.num_workers=1",
           f"data.gen_length={GEN}", "data.max_prompt_length=480", "eval.num_prompts=4", "eval.batch_size=4",
           "eval.limit=2"]  # fmt: skip
    eval_sampling = raw["eval"].get("sampling", {})
    one_per_step = eval_sampling.get("steps") == raw["data"]["gen_length"]
    out.append(f"eval.sampling.steps={rehearsal_steps(eval_sampling, one_per_step)}")
    if "gen_length" in eval_sampling:
        out.append(f"eval.sampling.gen_length={GEN}")
    for key in ("train", "eval"):
        out.append(f"data.{key}={data_file(raw['data'][key], tmp)}")
    for name, path in raw["eval"].get("benchmark_files", {}).items():
        out.append(f"eval.benchmark_files.{name}={data_file(path, tmp)}")
    for i, stage in enumerate(raw["stages"]):
        small = {"steps": 2, "batch_size": 2, "grad_accum": 1, "save_every": 1, "log_every": 1}
        if "num_generations" in stage:
            small["num_generations"] = 2
        if stage.get("mu", 1) > 2:
            small["mu"] = 2
        if stage.get("warmup_steps", 0) > 1:
            small["warmup_steps"] = 1
        if stage.get("ref_sync_every"):
            small["ref_sync_every"] = 1  # a re-sync happens within the two steps
        if "sampling" in stage:  # one token per step (an AR-order rollout) stays one token per step
            one_per_step = stage["sampling"].get("steps") == raw["data"]["gen_length"]
            small["sampling.steps"] = rehearsal_steps(stage["sampling"], one_per_step)
        out += [f"stages.{i}.{k}={v}" for k, v in small.items()]
    return out


def release_of(model_path: str):
    matches = [key for key, rel in RELEASES.items() if rel.repo_id == model_path]
    assert matches, f"no replica layout for {model_path}: add it to tests/replicas.py"
    return matches[0]


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf") / "hub"
    paths = {yaml.safe_load(p.read_text())["model"]["path"] for p in RECIPES}
    for path in sorted(paths):
        install_replica(release_of(path), root, seed=1)
    return root


def recipe_id(path: Path) -> str:
    return path.relative_to(ROOT / "recipes").as_posix()


def test_the_end_to_end_recipes_are_shipped():
    assert END_TO_END <= {recipe_id(p) for p in RECIPES}


def test_the_moe_recipes_are_shipped_and_rehearsed_on_their_replicas():
    """The MoE releases' recipes are dry-run on the llada2.0-mini / sdar-30b-a3b replicas above."""
    moe = {"llada2/sft.yaml": "llada2.0-mini", "llada2/coupled_grpo.yaml": "llada2.0-mini",
           "sdar/sft_30b_a3b.yaml": "sdar-30b-a3b"}  # fmt: skip
    paths = {recipe_id(p): yaml.safe_load(p.read_text())["model"]["path"] for p in RECIPES}
    assert {name: release_of(paths[name]) for name in moe if name in paths} == moe


@pytest.mark.parametrize("recipe", RECIPES, ids=recipe_id)
def test_recipe_validates_against_its_replica(recipe, hub_cache, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    raw = yaml.safe_load(recipe.read_text())
    assert main(["run", str(recipe), *shrink(raw, tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"valid ({len(raw['stages'])} stage(s))" in out
    assert out.count("total (peak per rank)") == len(raw["stages"])  # the memory plan of every stage


@pytest.mark.parametrize("recipe", [p for p in RECIPES if recipe_id(p) in END_TO_END], ids=recipe_id)
def test_recipe_runs_end_to_end_on_its_replica(recipe, hub_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    raw = yaml.safe_load(recipe.read_text())
    assert "/" in raw["model"]["path"] and not Path(raw["model"]["path"]).exists()  # a Hub id, from the cache
    assert main(["run", str(recipe), *shrink(raw, tmp_path)]) == 0

    run = tmp_path / "run"
    results = json.loads((run / "eval" / "results.json").read_text())
    state = json.loads((run / "run_state.json").read_text())
    assert sorted(state["completed"]) == list(range(len(raw["stages"])))
    for i, stage in enumerate(raw["stages"]):
        folder = next(run.glob(f"stage-{i + 1}-*"))
        saved = "adapter_config.json" if raw["model"].get("lora") else "config.json"  # LoRA: the adapter
        assert (folder / "checkpoint" / saved).is_file(), folder
        metrics = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        assert len(metrics) == 2 and all(m["step"] in (1, 2) for m in metrics)
        if stage["kind"] == "rl":
            assert all("reward/mean" in m for m in metrics)
        if stage.get("ref_sync_every"):
            assert metrics[-1]["actor/ref_syncs"] >= 1
        evaluation = results[str(i + 1)]
        assert set(evaluation["benchmarks"]) >= set(raw["eval"]["benchmarks"])
        for name in raw["eval"]["benchmarks"]:
            score = evaluation["benchmarks"][name]["score"]
            assert 0 <= score <= 100 and evaluation["benchmarks"][name]["num_examples"] == 2, (name, evaluation)
    assert (run / "report.md").is_file()
