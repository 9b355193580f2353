"""User plug-ins (`path/to/file.py:function`), spec validation, weighted combination."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from dare.config.loader import convert
from dare.errors import RecipeError
from dare.rewards import CombinedReward, RewardLoadError, RewardRunner, RewardSpec, as_specs, load_plugin

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "custom_reward" / "my_reward.py"


def write(tmp_path: Path, body: str, name: str = "plug.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def test_example_plugin_loads_and_scores_through_the_runner(monkeypatch):
    monkeypatch.chdir(ROOT)  # recipe paths are relative to the working directory
    ref = "examples/custom_reward/my_reward.py:length_penalty"
    fn = load_plugin(ref)
    assert fn("p", "short", max_chars=8) == 1.0
    assert fn("p", "x" * 12, max_chars=8) == pytest.approx(0.5)
    specs = [
        {"path": ref, "weight": 0.5, "args": {"max_chars": 8}},
        {"path": "examples/custom_reward/my_reward.py:exact_match"},
        {"path": "examples/custom_reward/my_reward.py:distinct_ratio", "label": "diversity"},
    ]
    with RewardRunner(specs, num_workers=1, timeout_s=30) as runner:
        scores, metrics, comp = runner.score(["a", "b", "c"], ["yes", "x" * 12, "yes"], ["YES", "no", "no"])
    assert comp["length_penalty"] == [1.0, 0.5, 1.0]
    assert comp["exact_match"] == [1.0, 0.0, 0.0]
    assert comp["exact_match/acc"] == [1.0, 0.0, 0.0]  # the dict's numeric extras are kept
    assert comp["diversity"] == [0.5, 1.0, 0.5]  # batched: "yes" appears twice
    assert scores == pytest.approx([0.5 + 1 + 0.5, 0.25 + 0 + 1, 0.5 + 0 + 0.5])
    assert metrics["reward/exact_match/acc"] == pytest.approx(1 / 3)
    assert metrics["reward/errors"] == 0 and metrics["reward/timeouts"] == 0


def test_plugin_errors_name_the_file(tmp_path):
    plug = write(
        tmp_path,
        """
        def ok(prompt, response, ground_truth=None, scale=1.0):
            return scale
        def two_args(prompt):
            return 0.0
        NOT_A_FUNCTION = 3
        """,
    )
    assert load_plugin(f"{plug}:ok")("p", "r") == 1.0
    with pytest.raises(
        RewardLoadError, match=rf"{plug}: has no function 'missing'; functions defined there: ok, two_args"
    ):
        load_plugin(f"{plug}:missing")
    with pytest.raises(RewardLoadError, match=rf"{plug}: 'NOT_A_FUNCTION' is a int, not a function"):
        load_plugin(f"{plug}:NOT_A_FUNCTION")
    missing = tmp_path / "nope.py"
    with pytest.raises(RewardLoadError, match=rf"{missing}: reward file not found"):
        load_plugin(f"{missing}:f")
    broken = write(tmp_path, "import not_a_module_xyz\n", "broken.py")
    with pytest.raises(RewardLoadError, match=rf"{broken}: failed to import: ModuleNotFoundError"):
        load_plugin(f"{broken}:f")
    with pytest.raises(RewardLoadError, match="must look like path/to/file.py:function"):
        load_plugin(f"{plug}")
    # signature checks against the reward call and the recipe's args
    with pytest.raises(RewardLoadError, match=rf"{plug}: signature two_args\(prompt\) does not fit"):
        RewardSpec(path=f"{plug}:two_args").load()
    with pytest.raises(RewardLoadError, match=rf"{plug}: signature ok.*unexpected keyword argument 'scal'"):
        RewardSpec(path=f"{plug}:ok", args={"scal": 2}).load()
    assert RewardSpec(path=f"{plug}:ok", args={"scale": 2}).load()("p", "r", scale=2) == 2


def test_spec_validation_through_the_recipe_loader(tmp_path):
    """As an RL algorithm's `rewards: list[RewardSpec]` field: errors name the recipe key."""
    plug = write(tmp_path, "def f(prompt, response, ground_truth=None):\n    return 1.0\n")
    specs = convert(
        list[RewardSpec],
        [{"name": "countdown"}, {"path": f"{plug}:f", "weight": 0.5}],
        "stages[1].rewards",
        "r.yaml",
    )
    assert [s.key for s in specs] == ["countdown", "f"]
    cases = [
        ({"name": "countdwn"}, "stages[1].rewards[0]: unknown reward 'countdwn'"),
        ({"name": "task_match"}, "stages[1].rewards[0]: reward 'task_match' is a differentiable reward"),
        ({"path": f"{plug}:g"}, f"stages[1].rewards[0]: {plug}: has no function 'g'"),
        ({"name": "format", "args": {"tagz": ["a"]}}, "unexpected keyword argument 'tagz'"),
        ({"name": "math", "path": f"{plug}:f"}, "set exactly one of name"),
        ({"name": f"{plug}:f"}, "is a plug-in reference; write it as path"),
        ({"name": "math", "weight": "heavy"}, "expected float"),
        ({"nam": "math"}, "unknown key (did you mean 'name'?)"),
    ]
    for entry, message in cases:
        with pytest.raises(RecipeError) as e:
            convert(list[RewardSpec], [entry], "stages[1].rewards", "r.yaml")
        assert str(e.value).startswith("r.yaml: stages[1].rewards[0]") and message in str(e.value), str(e.value)


def test_as_specs_and_labels():
    specs = as_specs(["countdown", {"name": "format", "weight": 0.1}])
    assert [(s.key, s.weight) for s in specs] == [("countdown", 1.0), ("format", 0.1)]
    with pytest.raises(RewardLoadError, match="two rewards are labelled 'math'"):
        as_specs(["math", "math"])
    assert [s.key for s in as_specs(["math", {"name": "math", "label": "math2"}])] == ["math", "math2"]


def test_combined_reward_weights_components(tmp_path):
    plug = write(tmp_path, "def half(prompt, response, ground_truth=None):\n    return 0.5\n")
    combined = CombinedReward(
        [
            {"name": "countdown", "weight": 2.0},
            {"name": "format", "weight": -1.0},
            {"path": f"{plug}:half", "weight": 3},
        ]
    )
    gt = {"numbers": [3, 8, 1], "target": 24}
    assert combined("24 from 3,8,1", "3*8*1", gt) == {"score": 2.0 + 1.5, "countdown": 1.0, "format": 0.0, "half": 0.5}
    assert combined("", "<think>a</think><answer>1</answer>", gt)["score"] == pytest.approx(-1.0 + 1.5)


def test_extra_fields_reach_rewards_that_declare_them(tmp_path):
    plug = write(
        tmp_path,
        """
        def uses_task(prompt, response, ground_truth=None, task=None):
            return 1.0 if task == "sort" else 0.0
        def takes_all(prompt, response, ground_truth=None, **extra):
            return float(len(extra))
        """,
    )
    specs = [{"path": f"{plug}:uses_task"}, {"path": f"{plug}:takes_all"}]
    runner = RewardRunner(specs, num_workers=0)
    _, _, comp = runner.score(["p", "p"], ["r", "r"], None, [{"task": "sort", "id": 1}, {"task": "math"}])
    assert comp["uses_task"] == [1.0, 0.0]
    assert comp["takes_all"] == [2.0, 1.0]  # `task` and `id`; then `task`


def test_bad_weights_are_rejected():
    with pytest.raises(RewardLoadError, match="weight must be a finite number"):
        as_specs([{"name": "math", "weight": float("nan")}])
    with pytest.raises(RecipeError, match=r"stages\[0\].rewards\[0\].weight: must be a finite number"):
        convert(list[RewardSpec], [{"name": "math", "weight": float("inf")}], "stages[0].rewards", "r.yaml")
