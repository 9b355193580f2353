"""The after-stage check's scorers (`dare.rewards.scorers`): each verifier on correct, wrong and
malformed answers, `eval.scorer` validation, the `auto` choice, and which scorer the results and
the report record. No Ray, no model: generation is faked where the check needs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from verl import DataProto

from dare.config import RecipeError, build_recipe, load_recipe
from dare.data.tasks import builtin_tokenizer, get_task
from dare.rewards import REWARDS, get_reward
from dare.rewards.scorers import (
    SCORERS,
    AutoScorer,
    check_rows,
    resolve_scorer,
    row_scorer_name,
    score_rows,
)
from dare.trainer.evaluate import eval_scorer, evaluate_accuracy, row_scorer

ROOT = Path(__file__).resolve().parents[2]
GSM_SOLUTION = "Natalia sold 48/2 = 24 clips in May.\nAltogether she sold 48+24 = 72 clips.\n#### 72"


def scorer_score(name: str, ground_truth, text: str, **row) -> float:
    return SCORERS.get(name)().score({"prompt": "q", "ground_truth": ground_truth, **row}, text)


# -- the verifiers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,truth",
    [
        ("She sold 72 clips in all.", GSM_SOLUTION),  # last number vs a worked solution
        ("24 in May, so 48+24 = 72", GSM_SOLUTION),
        ("so the answer is \\boxed{72}", "72"),
        ("\\boxed{72}", GSM_SOLUTION),
        ("work...\n#### 72", 72),
        ("The total is $1,234.", "1234"),
        ("\\boxed{\\$1,234.00}", "#### 1,234"),
        ("72.0", "72"),
        ("\\boxed{50\\%}", "#### 50"),
        ("-5 degrees", "-5"),
        ("see step-2", "2"),  # a hyphen after a word is no minus sign
        ("0.5", "1/2"),
    ],
)
def test_gsm8k_scores_the_final_number(text, truth):
    assert scorer_score("gsm8k", truth, text) == 1.0


@pytest.mark.parametrize(
    "text,truth",
    [
        ("She sold 71 clips.", GSM_SOLUTION),
        ("\\boxed{72} ... no, \\boxed{73}", "72"),  # the last box counts
        ("72 clips, 5 left over", "72"),  # the last number counts
        ("no number at all", "72"),
        ("", "72"),
    ],
)
def test_gsm8k_wrong_or_missing_answers_score_zero(text, truth):
    assert scorer_score("gsm8k", truth, text) == 0.0


def test_exact_never_compares_with_a_whole_worked_solution():
    assert scorer_score("exact", GSM_SOLUTION, "72") == 1.0  # the solution's final answer
    assert scorer_score("exact", GSM_SOLUTION, GSM_SOLUTION) == 1.0
    assert scorer_score("exact", "72", "\\boxed{72}") == 1.0  # a stated final answer
    assert scorer_score("exact", "72", "72<|eos|>junk") == 1.0
    assert scorer_score("exact", "72", "72 clips") == 0.0  # exact means exact
    # no ground truth: the row's demonstration
    assert SCORERS.get("exact")().score({"prompt": "q", "ground_truth": None, "response": "abc"}, " abc ") == 1.0


@pytest.mark.parametrize(
    "text,truth,score",
    [
        ("\\boxed{\\frac{1}{2}}", "0.5", 1.0),
        ("so \\boxed{0.5}", "Hence the answer is $\\boxed{\\frac12}$.", 1.0),
        ("\\boxed{3\\sqrt{2}}", "\\sqrt{18}", 1.0),
        ("\\boxed{0.51}", "0.5", 0.0),
        ("0.5", "0.5", 0.0),  # the math reward needs a boxed / #### answer
    ],
)
def test_math_scorer_is_the_math_reward(text, truth, score):
    assert scorer_score("math", truth, text) == score == get_reward("math")("q", text, truth)["score"]


@pytest.mark.parametrize(
    "text,truth,score",
    [
        ("B", "B", 1.0),
        ("(C) Paris", "C", 1.0),
        ("B. because the sky is blue", "B", 1.0),
        ("Let me think. The answer is (D).", "D", 1.0),
        ("answer: A", "A", 1.0),
        ("B", "(b)", 1.0),
        ("A good question. The answer is a number, so (C)", "C", 1.0),  # no article is an option
        ("A good question, I cannot tell", "A", 0.0),
        ("\\boxed{C}", 2, 1.0),  # MMLU: a 0-based index
        ("I pick (A), no wait, the answer is B", "B", 1.0),
        ("The answer is B", "C", 0.0),
        ("A", 1, 0.0),
        ("I am not sure", "A", 0.0),
        ("", "A", 0.0),
    ],
)
def test_multiple_choice_compares_option_letters(text, truth, score):
    assert scorer_score("multiple_choice", truth, text) == score


def test_code_scorer_runs_the_tests_in_the_sandbox():
    """Two sandbox runs, scored at once (code scores in threads): all tests pass -> 1; wrong -> 0."""
    tests = {"tests": ["assert add(1, 2) == 3", "assert add(2, 2) == 4"]}
    rows = [{"prompt": "write add", "ground_truth": tests}, {"prompt": "write add", "ground_truth": tests}]
    good = "```python\ndef add(a, b):\n    return a + b\n```"
    half = "```python\ndef add(a, b):\n    return 3\n```"  # passes one of two tests: still 0
    scores, errors = score_rows(SCORERS.get("code")(), rows, [good, half])
    assert scores == [1.0, 0.0] and errors == []


def test_task_scorer_is_the_task_verifier():
    task = get_task("sort", direction="either")
    rows = task.generate("eval", n=4, seed=0)
    scorer = SCORERS.get("task")()
    for row in rows:
        reversed_answer = row["ground_truth"][::-1]
        assert scorer.score(row, row["response"]) == 1.0
        assert scorer.score(row, reversed_answer) == task.score(reversed_answer, row["ground_truth"]) == 1.0
        assert scorer.score(row, "0") == 0.0
        assert row_scorer(row)(reversed_answer) == 1.0  # auto: the same verifier
    # the `task` reward serves a mix of built-in tasks (mirror has no reward of its own)
    mirror = get_task("mirror").generate("eval", n=1, seed=0)[0]
    assert get_reward("task")(mirror["prompt"], mirror["response"], mirror["ground_truth"], task="mirror") == 1.0


def test_every_scorer_runs_a_registered_reward():
    for name in SCORERS.names():
        scorer = SCORERS.get(name)()
        assert isinstance(scorer, AutoScorer) or scorer.reward in REWARDS, name


# -- configuration and the auto choice -------------------------------------------------------------


def test_unknown_scorer_fails_at_recipe_load():
    with pytest.raises(RecipeError, match=r"eval\.scorer: unknown eval scorer 'typo'; known: auto, code, exact, gsm8k, "
                       r"math, multiple_choice, task"):  # fmt: skip
        load_recipe(ROOT / "recipes/quickstart.yaml", ["eval.scorer=typo"])
    assert load_recipe(ROOT / "recipes/quickstart.yaml", ["eval.scorer=gsm8k"]).eval.scorer == "gsm8k"


def test_auto_takes_the_stages_verifier_reward_with_its_args():
    s = resolve_scorer("auto", [("stages[0]", None), ("stages[1]", [{"name": "format"}, {"name": "math"}])])
    assert (s.name, s.reward, s.source) == ("math", "math", "auto: stages[1].rewards[1] (math)")
    # code: the check scores all-or-nothing whatever the training reward's partial credit
    s = resolve_scorer("auto", [("stages[0]", [{"name": "code", "args": {"all_or_nothing": False, "cpu_s": 2}}])])
    assert s.name == "code" and s.args == {"all_or_nothing": True, "cpu_s": 2}
    # a task reward keeps its args (the answer is read from the <answer> tag)
    s = resolve_scorer("auto", [("stages[0]", [{"name": "countdown", "args": {"answer_tag": "answer"}}])])
    assert (s.name, s.reward) == ("task", "countdown")
    gt = {"numbers": [3, 8, 1], "target": 24}
    assert s.score({"prompt": "", "ground_truth": gt}, "<think>x</think><answer>3*8*1</answer>") == 1.0
    # no verifier among the rewards (format, a plug-in), or an explicit name: no stage reward used
    plugin = f"{ROOT}/examples/custom_reward/my_reward.py:length_penalty"
    assert isinstance(resolve_scorer("auto", [("stages[0]", [{"name": "format"}, {"path": plugin}])]), AutoScorer)
    s = resolve_scorer("gsm8k", [("stages[0]", [{"name": "math"}])])
    assert (s.name, s.source) == ("gsm8k", "eval.scorer: gsm8k")


def test_shipped_real_scale_recipes_get_a_real_verifier():
    expected = {"llada/d1_gsm8k.yaml": "math", "dream/coupled_grpo_code.yaml": "code",
                "sdar/coupled_grpo_math.yaml": "math"}  # fmt: skip
    for path, name in expected.items():
        stages = yaml.safe_load((ROOT / "recipes" / path).read_text())["stages"]
        scorer = resolve_scorer("auto", [(f"stages[{i}]", s.get("rewards")) for i, s in enumerate(stages)])
        assert scorer.name == name, path


@pytest.mark.parametrize(
    "row,name",
    [
        ({"task": "sort", "ground_truth": "123"}, "task"),  # a built-in task's row
        ({"task": "gsm8k", "ground_truth": "72"}, "gsm8k"),  # a declared scorer name
        ({"data_source": "openai/gsm8k", "ground_truth": "72"}, "gsm8k"),  # verl's parquet layout
        ({"data_source": "HuggingFaceH4/MATH-500", "ground_truth": "72"}, "math"),
        ({"data_source": "cais/mmlu", "ground_truth": 2}, "multiple_choice"),
        ({"data_source": "mbpp", "ground_truth": ["assert f() == 1"]}, "code"),
        ({"data_source": "somewhere", "ability": "math", "ground_truth": "72"}, "math"),
        ({"ground_truth": GSM_SOLUTION}, "gsm8k"),  # the ground truth's shape
        ({"ground_truth": "so $\\boxed{\\frac{1}{2}}$"}, "math"),
        ({"ground_truth": {"tests": "assert f() == 1"}}, "code"),
        ({"ground_truth": [{"input": "1", "output": "1"}]}, "code"),
        ({"ground_truth": "B", "choices": ["w", "x", "y", "z"]}, "multiple_choice"),
        ({"ground_truth": "B"}, "exact"),
        ({"task": "trivia", "ground_truth": "Paris"}, "exact"),  # an unknown declared task
    ],
)
def test_auto_per_row(row, name):
    assert row_scorer_name(row) == name


def test_recipe_auto_scorer_and_row_checks(tmp_path):
    raw = yaml.safe_load((ROOT / "recipes/quickstart.yaml").read_text())
    rows = get_task("sort").generate("eval", n=3, seed=0)
    recipe = build_recipe(raw, "quickstart.yaml")
    assert eval_scorer(recipe, rows).source.startswith("auto: each row's task")  # sort rows, no rewards
    raw["stages"][1]["rewards"] = [{"name": "sort"}, {"name": "format"}]
    scorer = eval_scorer(build_recipe(raw, "quickstart.yaml"), rows)
    assert (scorer.name, scorer.reward, scorer.source) == ("task", "sort", "auto: stages[1].rewards[0] (sort)")
    # a scorer that cannot score the rows fails before anything is generated, naming row and scorer
    file_rows = [{"prompt": "q", "ground_truth": "72"}, {"prompt": "q", "ground_truth": "x"}]
    with pytest.raises(ValueError, match=r"eval.scorer: task: eval row 0 \(and 1 more\) cannot be scored by the "
                       r"'task' scorer: task None is no built-in task"):  # fmt: skip
        check_rows(resolve_scorer("task"), file_rows)
    raw["eval"]["scorer"] = "task"
    with pytest.raises(ValueError, match=r"eval.scorer: task: eval row 0 \(and 1 more\)"):
        eval_scorer(build_recipe(raw, "quickstart.yaml"), file_rows)
    raw["eval"]["enabled"] = False  # no check, no complaint (e.g. preference rows without answers)
    raw["stages"][1]["sft_control"] = False  # (a control needs the check)
    assert eval_scorer(build_recipe(raw, "quickstart.yaml"), file_rows).name == "task"
    with pytest.raises(ValueError, match=r"row 1 cannot be scored by the 'multiple_choice' scorer: ground truth 'x'"):
        check_rows(resolve_scorer("multiple_choice"), [{"prompt": "q", "ground_truth": "A"}, *file_rows[1:]])
    with pytest.raises(ValueError, match="code tests must be"):
        check_rows(resolve_scorer("code"), [{"prompt": "q", "ground_truth": {"weird": 1}}])
    with pytest.raises(ValueError, match="has no ground_truth"):
        check_rows(resolve_scorer("auto"), [{"prompt": "q", "ground_truth": None, "data_source": "openai/gsm8k"}])


# -- what the check reports ------------------------------------------------------------------------


def fake_generate(answers: dict[str, str]):
    """A stand-in for the rollout workers' `generate`: the answer of each (decoded) prompt."""
    tok = builtin_tokenizer()

    def generate(data: DataProto) -> DataProto:
        batch = zip(data.batch["input_ids"], data.batch["attention_mask"])
        prompts = [tok.decode(ids[m.bool()].tolist(), skip_special_tokens=True) for ids, m in batch]
        ids = [tok(answers[p], add_special_tokens=False)["input_ids"] for p in prompts]
        L = max(map(len, ids))
        responses = torch.tensor([x + [tok.pad_token_id] * (L - len(x)) for x in ids])
        mask = torch.tensor([[1] * len(x) + [0] * (L - len(x)) for x in ids])
        nfe = torch.full((len(ids),), L)
        return DataProto.from_dict(tensors={"responses": responses, "response_mask": mask, "nfe": nfe})

    return generate


def test_results_and_report_name_the_scorer(tmp_path):
    from dare.trainer.pipeline import Pipeline

    rows = [{"prompt": "1+1", "ground_truth": "#### 2"}, {"prompt": "2+2", "ground_truth": "so 2+2 = 4\n#### 4"},
            {"prompt": "3+3", "ground_truth": "#### 6"}]  # fmt: skip
    answers = {"1+1": "it is 2", "2+2": "4", "3+3": "5"}
    tok = builtin_tokenizer()
    res = evaluate_accuracy(fake_generate(answers), 1, rows, tok, {"gen_length": 8}, batch_size=2, seed=0)
    assert res["accuracy"] == pytest.approx(2 / 3)
    assert (res["scorer"], res["scorer_errors"]) == ("gsm8k", 0)
    assert res["scorer_from"].startswith("auto: each row's task")
    # exact: "4" is the final answer of its solution (string equality with the solutions, the old
    # check, scored all three 0); "it is 2" is no exact answer
    exact = evaluate_accuracy(fake_generate(answers), 1, rows, tok, {}, 2, 0, resolve_scorer("exact"))
    assert (exact["accuracy"], exact["scorer"], exact["scorer_from"]) == (
        pytest.approx(1 / 3),
        "exact",
        "eval.scorer: exact",
    )
    # a mix of scorers is named as such
    mixed = [*rows[:2], {"prompt": "sort 31", "ground_truth": "13", "task": "sort"}]
    res_mixed = evaluate_accuracy(fake_generate({**answers, "sort 31": "13"}), 1, mixed, tok, {}, 4, 0)
    assert res_mixed["scorer"] == "gsm8k+task" and res_mixed["accuracy"] == 1.0

    recipe = load_recipe(ROOT / "recipes/quickstart.yaml", ["eval.benchmarks=[]"])
    state = {"completed": [0], "eval": {"1": res}, "stage_seconds": {"1": 3.0}}
    Pipeline(recipe, tmp_path)._write_results(state)
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["1"]["scorer"] == "gsm8k"
    report = (tmp_path / "report.md").read_text()
    assert "| eval n | scorer | train s |" in report and "| 66.7 | 27.2 | 3 | gsm8k | 3 |" in report


def test_a_verifier_error_scores_zero_and_is_counted():
    class Broken(AutoScorer):
        def score(self, row, text):
            if text == "boom":
                raise RuntimeError("verifier crashed")
            return 1.0

    rows = [{"prompt": "a", "ground_truth": "1"}, {"prompt": "b", "ground_truth": "1"}]
    scores, errors = score_rows(Broken(), rows, ["ok", "boom"])
    assert scores == [1.0, 0.0] and errors == ["row 1: RuntimeError: verifier crashed"]


def test_a_data_column_cannot_loosen_a_verifiers_limits(monkeypatch):
    """Only `task` / `task_args` reach the verifier from a row: a column named like one of the code
    reward's limits (here: no namespaces, a huge CPU budget) is not passed on."""
    seen = {}

    def spy(prompt, response, ground_truth=None, isolation="auto", cpu_s=5.0, task_args=None):
        seen.update(isolation=isolation, cpu_s=cpu_s, task_args=task_args)
        return 1.0

    monkeypatch.setitem(REWARDS._items, "spy_for_scorer_test", spy)  # registered for this test only
    from dare.rewards.scorers import Scorer

    row = {"prompt": "q", "ground_truth": "t", "isolation": "none", "cpu_s": 1e9, "task_args": {"k": 1}}
    assert Scorer("spy", "spy_for_scorer_test").score(row, "x") == 1.0
    assert seen == {"isolation": "auto", "cpu_s": 5.0, "task_args": {"k": 1}}
