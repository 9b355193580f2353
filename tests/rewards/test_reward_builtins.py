"""Built-in rewards on correct, wrong and malformed completions."""

from __future__ import annotations

import pytest

from dare.data.tasks import get_task
from dare.rewards import REWARDS, RewardLoadError, get_reward
from dare.rewards.code_exec import extract_code, parse_tests
from dare.rewards.math_answer import final_answer

BUILTINS = ("addition", "code", "countdown", "format", "judge", "math", "sort", "sudoku")


def test_registry_lists_builtins_and_suggests_names():
    assert set(BUILTINS) <= set(REWARDS.names())
    with pytest.raises(RewardLoadError, match=r"unknown reward 'countdwn'.*did you mean 'countdown'"):
        get_reward("countdwn")
    with pytest.raises(ValueError, match="already registered"):
        REWARDS.register("math", lambda prompt, response, ground_truth=None: 0.0)


def test_one_registry_holds_both_kinds_and_lookups_check_the_kind():
    from dare.rewards import REWARD_KINDS, builtin_reward, register_reward
    from dare.rewards.base import reward_kind, reward_names
    from dare.rewards.differentiable import check_spec

    assert {reward_kind(REWARDS.get(n)) for n in ("linear", "reward_model", "task_match")} == {"differentiable"}
    assert {reward_kind(REWARDS.get(n)) for n in BUILTINS} == {"text"}
    assert set(reward_names("text")) | set(reward_names("differentiable")) == set(REWARDS.names())
    assert builtin_reward("linear", "differentiable") is REWARDS.get("linear")
    # a differentiable reward where a text one is expected, and the other way round: both kinds named
    with pytest.raises(RewardLoadError, match=r"reward 'task_match' is a differentiable reward .* a text reward"):
        get_reward("task_match")
    with pytest.raises(RewardLoadError, match=r"reward 'sort' is a text reward .* a differentiable reward"):
        check_spec("sort")
    with pytest.raises(RewardLoadError, match=r"unknown differentiable reward 'linaer'.*did you mean 'linear'") as e:
        check_spec("linaer")
    assert "countdown" not in str(e.value)  # lists the rewards of the kind asked for
    with pytest.raises(ValueError, match="already registered"):  # one name space for both kinds
        register_reward("sort", kind="differentiable")(lambda: None)
    with pytest.raises(ValueError, match=r"kind must be one of \['differentiable', 'text'\]"):
        register_reward("new_one", kind="image")
    with pytest.raises(ValueError, match="settings of text rewards"):
        register_reward("new_one", kind="differentiable", batched=True)
    assert set(REWARD_KINDS) == {"text", "differentiable"}


def test_last_tag_is_the_last_closed_tag():
    from dare.rewards.math_answer import answer_tag
    from dare.rewards.tag_format import last_tag

    assert last_tag("<a>1</a> x <a> 2 </a>", "a") == " 2 "  # as written
    assert answer_tag("<answer>1</answer> x <answer> 2 </answer>") == "2"  # math's: stripped
    assert last_tag("<a>1</a><a>2", "a") == "1"  # an unclosed last tag does not count
    assert last_tag("<a>x<a>y</a>", "a") == "y"
    assert last_tag("</a>", "a") is None and last_tag("no tags", "a") is None
    fn = get_reward("sort")
    assert fn("sort 21", "<answer>21</answer><answer>12</answer>", "12", answer_tag="answer") == 1.0
    assert fn("sort 21", "<answer>12</answer><answer>21", "12", answer_tag="answer") == 1.0


# -- built-in tasks --------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["countdown", "sudoku", "addition", "sort"])
def test_task_rewards_match_the_task_verifier(task):
    fn = get_reward(task)
    rows = get_task(task).generate("train", n=5, seed=1)
    for row in rows:
        # correct: the task's own demonstration (also with the stop marker a decoder may leave)
        assert fn(row["prompt"], row["response"], row["ground_truth"]) == 1.0
        assert fn(row["prompt"], row["response"] + "<|eos|>", row["ground_truth"]) == 1.0
    # wrong: another row's answer
    assert fn(rows[0]["prompt"], rows[1]["response"], rows[0]["ground_truth"]) == 0.0
    # malformed completions and ground truths score 0, never raise
    for bad in ("", "   ", "<|eos|>", "\x00??", "((((", "1" * 500, None):
        assert fn(rows[0]["prompt"], bad, rows[0]["ground_truth"]) == 0.0
    assert fn(rows[0]["prompt"], rows[0]["response"], None) == 0.0
    assert fn(rows[0]["prompt"], rows[0]["response"], {"unexpected": 1}) in (0.0, 1.0)


def test_countdown_reward_examples():
    fn = get_reward("countdown")
    gt = {"numbers": [3, 8, 1], "target": 24}
    assert fn("24 from 3,8,1", "8*3*1", gt) == 1.0  # any correct expression
    assert fn("24 from 3,8,1", "3*8", gt) == 0.0  # must use every number
    assert fn("24 from 3,8,1", "3*8+1", gt) == 0.0  # wrong value
    assert fn("24 from 3,8,1", "3*8*1=24", gt) == 0.0  # not just an expression
    # answer_tag: the answer is taken from <answer>...</answer>
    tagged = "<think>3 times 8</think><answer>3*8*1</answer>"
    assert fn("", tagged, gt) == 0.0
    assert fn("", tagged, gt, answer_tag="answer") == 1.0
    assert fn("", "3*8*1", gt, answer_tag="answer") == 0.0


# -- math --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "response,truth",
    [
        ("so the answer is \\boxed{\\frac{1}{2}}", "0.5"),
        ("\\boxed{0.5}", "\\frac12"),
        ("\\boxed{3\\sqrt{2}}", "\\sqrt{18}"),
        ("the total is 72 dollars.\n#### 72", "72"),
        ("#### 1,234", "1234"),
        ("\\boxed{\\{2, 1\\}}", "\\{1,2\\}"),
        ("\\boxed{x^2+2x+1}", "(x+1)^2"),
        # reference given as a full solution (GSM8K / MATH rows)
        ("\\boxed{18}", "Natalia sold 48/2 = 24 clips in May ... 48+24 = 72 ... #### 18"),
        ("\\boxed{\\dfrac{3}{4}}", "Hence the probability is $\\boxed{\\frac{3}{4}}$."),
        ("\\boxed{7}", 7),
    ],
)
def test_math_correct(response, truth):
    out = get_reward("math")("q", response, truth)
    assert out["score"] == 1.0 and out["acc"] == 1.0 and out["pred"] is not None


@pytest.mark.parametrize(
    "response,truth",
    [
        ("\\boxed{0.51}", "0.5"),
        ("#### 71", "72"),
        ("\\boxed{x^2+1}", "(x+1)^2"),
        ("\\boxed{2} ... on second thought \\boxed{3}", "2"),  # the last box is the answer
    ],
)
def test_math_wrong(response, truth):
    out = get_reward("math")("q", response, truth)
    assert out["score"] == 0.0 and out["acc"] == 0.0


@pytest.mark.parametrize(
    "response",
    ["72", "the answer is 72", "\\boxed{72", "\\boxed{}", "####", "", None, "\\boxed{\\frac{1}{", "}}}{{{"],
)
def test_math_malformed_scores_zero(response):
    out = get_reward("math")("q", response, "72")
    assert out["score"] == 0.0


def test_math_final_answer_extraction():
    assert final_answer("a \\boxed{1} b \\boxed{\\frac{2}{3}} c") == "\\frac{2}{3}"
    assert final_answer("x \\fbox{5}") == "5"
    assert final_answer("work\n#### 42\nmore text") == "42"
    assert final_answer("no answer") is None


# -- format ------------------------------------------------------------------------------------


def test_format_reward():
    fn = get_reward("format")
    good = "<think>add the numbers</think>\n<answer>7</answer>"
    assert fn("", good) == 1.0
    assert fn("", "  " + good + "\n") == 1.0
    # wrong: order, missing tag, trailing text, empty tag, nested/repeated tags
    assert fn("", "<answer>7</answer><think>x</think>") == 0.0
    assert fn("", "<answer>7</answer>") == 0.0
    assert fn("", good + " extra") == 0.0
    assert fn("", "<think></think><answer>7</answer>") == 0.0
    assert fn("", "<think>a<think>b</think><answer>7</answer>") == 0.0
    assert fn("", "<think>a</think><answer>7</answer><answer>8</answer>") == 0.0
    # malformed
    for bad in ("", "<think>unclosed<answer>7</answer>", "<think>a</think><answer>7</answr>", None):
        assert fn("", bad) == 0.0
    # configurable: other tags, lenient mode, partial credit, a custom pattern
    assert fn("", "<reasoning>r</reasoning><final>1</final>", tags=["reasoning", "final"]) == 1.0
    assert fn("", "blah " + good + " blah", strict=False) == 1.0
    assert fn("", "<think>x</think> no answer", strict=False, partial=True) == 0.5
    assert fn("", "ANSWER: 12", pattern=r"ANSWER: \d+") == 1.0
    assert fn("", "ANSWER: twelve", pattern=r"ANSWER: \d+") == 0.0


# -- code (quick cases; limits and isolation are in test_reward_sandbox.py) ---------------------


def test_code_reward_assert_tests():
    fn = get_reward("code")
    tests = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) == 4"]
    good = "Here you go:\n```python\ndef add(a, b):\n    return a + b\n```\n"
    out = fn("", good, tests)
    assert out == {"score": 1.0, "acc": 1.0, "timeout": 0.0}
    half = "```python\ndef add(a, b):\n    return 3\n```"
    assert fn("", half, tests)["score"] == pytest.approx(1 / 3)
    assert fn("", half, tests, all_or_nothing=True)["score"] == 0.0
    assert fn("", good, {"tests": "assert add(1, 1) == 2\nassert add(0, 0) == 0"})["score"] == 1.0
    # malformed completions: syntax error, no code, other language only, exit() before tests
    assert fn("", "```python\ndef add(a, b) return a+b\n```", tests)["score"] == 0.0
    assert fn("", "", tests)["score"] == 0.0
    assert fn("", "```js\nfunction add(a,b){return a+b}\n```", tests)["score"] == 0.0
    assert fn("", "import os\nos._exit(0)", tests)["score"] == 0.0
    assert fn("", "import sys\nsys.exit(0)", tests)["score"] == 0.0


def test_code_reward_stdio_tests():
    fn = get_reward("code")
    gt = {"inputs": ["1 2\n", "10 -3\n"], "outputs": ["3\n", "7"]}
    good = "a, b = map(int, input().split())\nprint(a + b)"
    assert fn("", good, gt)["score"] == 1.0
    assert fn("", good, [{"input": "2 2", "output": "4"}])["score"] == 1.0
    assert fn("", "print(3)", gt)["score"] == 0.5
    assert fn("", "raise SystemExit(3)", gt)["score"] == 0.0
    with pytest.raises(ValueError, match="code tests must be"):
        parse_tests({"weird": 1})


def test_extract_code():
    assert extract_code("```python\nx = 1\n```\ntext\n```py\ny = 2\n```") == "y = 2\n"
    assert extract_code("x = 1") == "x = 1"
    assert extract_code("x = 1", require_fence=True) is None
    assert extract_code("```bash\nls\n```") is None
    assert extract_code(None) is None
