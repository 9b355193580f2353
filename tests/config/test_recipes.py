"""Recipe validation: every error names the recipe file and the key, before anything runs."""

import json
from pathlib import Path

import pytest
import yaml

from dare.config import RecipeError, load_recipe

ROOT = Path(__file__).resolve().parents[2]

BASE = {
    "model": {"family": "llada", "preset": "tiny", "tokenizer": "builtin"},
    "data": {"train": "builtin:sort", "gen_length": 12},
    "eval": {"sampling": {"algorithm": "llada", "steps": 12, "block_length": 12}},
    "stages": [{"kind": "sft", "algorithm": "sft", "steps": 10, "batch_size": 8, "lr": 1e-3}],
}


def write(tmp_path, recipe) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def edit(**changes):
    recipe = json.loads(json.dumps(BASE))
    for dotted, value in changes.items():
        node = recipe
        parts = dotted.split("__")
        for p in parts[:-1]:
            node = node[int(p)] if p.isdigit() else node[p]
        node[parts[-1]] = value
    return recipe


def test_valid_recipe_loads_with_defaults(tmp_path):
    r = load_recipe(write(tmp_path, BASE))
    assert r.stages[0].args.eps == pytest.approx(1e-3)
    assert r.resources.num_workers == 1 and r.eval.num_prompts == 1000


def test_stage_kind_follows_from_the_algorithm(tmp_path):
    recipe = edit()
    recipe["stages"] = [{"algorithm": "sft", "steps": 2}, {"algorithm": "coupled_grpo", "steps": 2},
                        {"algorithm": "d1", "kind": "rl", "steps": 2}]  # fmt: skip
    assert [s.kind for s in load_recipe(write(tmp_path, recipe)).stages] == ["sft", "rl", "rl"]


@pytest.mark.parametrize(
    "recipe,key,message",
    [
        (edit(seeed=1), "seeed", "unknown key (did you mean 'seed'?)"),
        (edit(model__famly="llada"), "model.famly", "did you mean 'family'?"),
        (edit(stages__0__lrr=1e-3), "stages[0].lrr", "did you mean 'lr'?"),
        (edit(stages__0__steps="ten"), "stages[0].steps", "expected int"),
        (edit(stages__0__lr=-1.0), "stages[0].lr", "must be > 0"),
        (edit(stages__0__eps=2.0), "stages[0].eps", "must be in [0, 1)"),
        (edit(stages__0__algorithm="sftt"), "stages[0].algorithm", "did you mean 'sft'?"),
        (edit(stages__0__kind="rl"), "stages[0].kind", "is a 'sft' algorithm, not 'rl'"),
        (
            edit(model__family="gpt"),
            "model.family",
            "unknown model family 'gpt'; known: dream, llada, llada2_moe, sdar, sdar_moe",
        ),
        (edit(stages__0__lr_schedule="cosin"), "stages[0].lr_schedule", "did you mean 'cosine'?"),
        (edit(stages__0__grad_accum=3), "stages[0].grad_accum", "must divide batch_size=8"),
        (edit(data__on_error="ignore"), "data.on_error", "must be one of ['skip', 'fail']"),
        (
            edit(data__train="builtin:pref-sort", data__task_args={"demo_error_rate": 1.5}),
            "data.task_args",
            "demo_error_rate must be a number in [0, 1), got 1.5",
        ),
    ],
)
def test_bad_keys_and_values_name_the_key(tmp_path, recipe, key, message):
    path = write(tmp_path, recipe)
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    assert str(e.value).startswith(f"{path}: {key}: ")
    assert message in str(e.value)


def test_missing_files_are_errors(tmp_path):
    path = write(tmp_path, edit(data__train=str(tmp_path / "nope.jsonl"), data__eval=str(tmp_path / "e.jsonl")))
    with pytest.raises(RecipeError, match=r"data.train: data file .*nope.jsonl does not exist"):
        load_recipe(path)
    path = write(tmp_path, edit(model={"path": str(tmp_path / "ckpt")}))
    with pytest.raises(RecipeError, match=r"model.path: .*ckpt is not a checkpoint folder"):
        load_recipe(path)
    with pytest.raises(FileNotFoundError, match="recipe file not found"):
        load_recipe(tmp_path / "missing.yaml")


def test_block_sft_on_full_attention_family_is_refused(tmp_path):
    path = write(tmp_path, edit(stages__0__algorithm="block_sft"))
    with pytest.raises(RecipeError, match=r"stages\[0\].algorithm: 'block_sft' needs block attention.*'full'"):
        load_recipe(path)


def test_sft_control_needs_an_earlier_sft_stage_and_drakes_refuses_fsdp2(tmp_path):
    path = write(tmp_path, edit(stages__0__sft_control=True))
    with pytest.raises(RecipeError, match=r"stages\[0\].sft_control: needs an earlier sft stage"):
        load_recipe(path)
    drakes = {"kind": "rl", "algorithm": "drakes", "steps": 2, "reward": "task_match"}
    path = write(tmp_path, edit(stages=[BASE["stages"][0], drakes], resources={"strategy": "fsdp2", "num_workers": 2}))
    with pytest.raises(RecipeError, match=r"resources.strategy: stages\[1\] \('drakes'\) does not run on an FSDP2"):
        load_recipe(path)


def test_sampler_that_does_not_fit_the_model_is_refused(tmp_path):
    bad = edit(eval={"sampling": {"algorithm": "llada", "steps": 12, "block_length": 5}})
    with pytest.raises(RecipeError, match=r"eval.sampling: gen_length=12 is not divisible by block_length=5"):
        load_recipe(write(tmp_path, bad))
    sdar = edit(model__family="sdar", eval={"sampling": {"algorithm": "llada"}})
    with pytest.raises(RecipeError, match=r"eval.sampling: .*attention"):
        load_recipe(write(tmp_path, sdar))


def test_overrides(tmp_path):
    path = write(tmp_path, BASE)
    r = load_recipe(path, ["stages.0.lr=1e-4", "output_dir=/tmp/x", "data.task_args.max_len=5"])
    assert r.stages[0].lr == pytest.approx(1e-4) and r.output_dir == "/tmp/x"
    assert r.data.task_args == {"max_len": 5}
    with pytest.raises(RecipeError, match=r"stages.3: no list element 3"):
        load_recipe(path, ["stages.3.lr=1"])
    with pytest.raises(RecipeError, match="key.path=value"):
        load_recipe(path, ["stages.0.lr"])


# one row of each file benchmark, in its release layout (evals/benchmarks.py)
BENCHMARK_ROWS = {
    "gsm8k": {"question": "1+1?", "answer": "1+1=2\n#### 2"},
    "math500": {"problem": "1+1?", "answer": "2"},
    "humaneval": {"task_id": "HumanEval/0", "prompt": "def f():\n", "test": "def check(c):\n    assert c() == 1\n",
                  "entry_point": "f"},
    "mbpp": {"task_id": 1, "text": "Return 1.", "test_list": ["assert f() == 1"]},
}  # fmt: skip


MOE_FAMILIES = {"inclusionAI/LLaDA2.0-mini": "llada2_moe", "JetLM/SDAR-30B-A3B-Chat": "sdar_moe"}


def test_every_shipped_recipe_validates(tmp_path):
    """Every YAML under recipes/ (recursively) has a header and validates. Real-scale recipes name
    a checkpoint (Hub id or folder), data files and benchmark files the test machine does not have:
    they are validated with `model.path` / `data.*` / `eval.benchmark_files.*` overridden by a tiny
    checkpoint of the same family (the folder name: recipes/<family>/...) and small files, as a user
    would run them. Each real-scale recipe runs OpenCompass benchmarks after its stages."""
    from dare.models import tiny

    recipes = sorted((ROOT / "recipes").rglob("*.yaml"))
    assert len(recipes) >= 4, "quickstart + the real-scale recipes"
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"question": "1+1?", "problem": "1+1?", "prompt": "1+1?", "answer": "2",
                                "response": "2", "ground_truth": "2"}) + "\n")  # fmt: skip
    for path in recipes:
        text = path.read_text()
        assert text.startswith("#"), f"{path} must start with a header comment"
        raw = yaml.safe_load(text)
        overrides = []
        if raw["model"].get("path"):
            # the folder names the family, except the MoE releases (recipes/llada2, recipes/sdar's 30B-A3B)
            family = MOE_FAMILIES.get(raw["model"]["path"], path.parent.name)
            ckpt = tmp_path / family
            if not ckpt.is_dir():  # the released models' context (>= 4096), checked against the lengths
                length = {"llada": "max_sequence_length"}.get(family, "max_position_embeddings")
                tiny(family, **{length: 4096}).save_pretrained(ckpt)
            overrides.append(f"model.path={ckpt}")
        for key in ("train", "eval"):
            value = raw.get("data", {}).get(key)
            if value and not value.startswith("builtin:"):
                overrides.append(f"data.{key}={data}")
        for name in raw.get("eval", {}).get("benchmark_files", {}):
            bench = tmp_path / f"{name}.jsonl"
            bench.write_text(json.dumps(BENCHMARK_ROWS[name]) + "\n")
            overrides.append(f"eval.benchmark_files.{name}={bench}")
        recipe = load_recipe(path, overrides)
        assert recipe.stages, path
        if path.parent != ROOT / "recipes":  # real scale: scored by OpenCompass after every stage
            assert recipe.eval.enabled and recipe.eval.benchmarks, f"{path}: set eval.benchmarks"
            assert set(recipe.eval.benchmark_files) == set(recipe.eval.benchmarks), path
