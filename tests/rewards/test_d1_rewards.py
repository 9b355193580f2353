"""d1's GSM8K rewards on hand-built responses: the format rewards' scores (d1's values / 0.5) and
the `math` reward reading the answer from `<answer>...</answer>`."""

from __future__ import annotations

import pytest

from dare.rewards import get_reward
from dare.rewards.math_answer import answer_tag, final_answer

GOOD = "<reasoning>\n3 boxes of 24 is 72.\n</reasoning>\n<answer>\n72\n</answer>\n"


def score(name: str, response, ground_truth=None) -> float:
    out = get_reward(name)("question", response, ground_truth)
    return out["score"] if isinstance(out, dict) else out


def test_xml_count_scores_each_tag_line_and_penalises_trailing_text():
    assert score("xml_count", GOOD) == pytest.approx(1.0)  # 4 x 0.25, nothing after the answer
    # no trailing newline: "\n</answer>\n" is absent, so d1's third term counts the whole text
    no_nl = GOOD[:-1]
    assert score("xml_count", no_nl) == pytest.approx(1.0 - 0.002 * len(no_nl) + 0.002)
    assert score("xml_count", GOOD + "extra") == pytest.approx(1.0 - 0.002 * 5 * 2)
    assert score("xml_count", "<reasoning>\nx") == pytest.approx(0.25)
    # a tag written twice earns nothing for that tag
    twice = "<reasoning>\na\n</reasoning>\n<reasoning>\nb\n</reasoning>\n<answer>\n72\n</answer>\n"
    assert score("xml_count", twice) == pytest.approx(0.5)
    assert score("xml_count", "72") == 0.0
    assert score("xml_count", None) == 0.0


def test_soft_and_strict_format():
    assert score("soft_format", GOOD) == score("strict_format", GOOD) == 1.0
    one_line = "<reasoning>3 x 24</reasoning> <answer>72</answer> and more"
    assert score("soft_format", one_line) == 1.0
    assert score("strict_format", one_line) == 0.0
    assert score("strict_format", GOOD[:-1]) == 0.0  # needs the newline after </answer>
    assert score("strict_format", "  " + GOOD) == 0.0
    assert score("soft_format", "Sure! " + one_line) == 0.0  # must start with the reasoning
    assert score("soft_format", "<answer>72</answer><reasoning>x</reasoning>") == 0.0
    assert score("soft_format", None) == score("strict_format", None) == 0.0


@pytest.mark.parametrize(
    "response, expected",
    [(GOOD, 1.0), ("<answer> 7 </answer>", 1.0), ("<answer>\n7.5\n</answer>", 0.0), ("<answer>-3</answer>", 0.0),
     ("<answer>\n$72\n</answer>", 0.0), ("<answer></answer>", 0.0), ("42", 1.0), ("<answer>\n12", 1.0)],
)  # fmt: skip
def test_int_answer(response, expected):
    assert score("int_answer", response) == expected


def test_math_reads_the_answer_tag():
    assert answer_tag(GOOD) == "72"
    assert answer_tag("<answer>\n72") is None  # unclosed (truncated) does not count
    assert final_answer("<answer>1</answer> then <answer> \\boxed{\\frac{1}{2}} </answer>") == "\\frac{1}{2}"
    assert final_answer("<answer>so #### 9\n</answer>") == "9"
    # the tags win over a \boxed{} elsewhere in the reasoning
    assert final_answer("<reasoning>maybe \\boxed{5}</reasoning><answer>6</answer>") == "6"
    assert final_answer("reasoning \\boxed{5}") == "5"  # no tags: unchanged behaviour
    gsm8k_truth = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72"
    assert score("math", GOOD, gsm8k_truth) == 1.0
    assert score("math", GOOD.replace("72", "73"), gsm8k_truth) == 0.0
    assert score("math", "<reasoning>\nx\n</reasoning>\n<answer>\n72.0\n</answer>", "72") == 1.0
    assert score("math", "<answer>\n72", "72") == 0.0


def test_the_d1_recipe_reproduces_d1s_reward_scale_and_prompt(tmp_path):
    """recipes/llada/d1_gsm8k.yaml: d1's five rewards with weights that give d1's values (a perfect
    response scores 4.0 as in d1: 4 x 0.5 format + 2.0 correctness), and d1's prompt before the question."""
    import json
    from pathlib import Path

    from dare.config import load_recipe
    from dare.data.formatting import with_system_prompt
    from dare.models import tiny
    from dare.rewards import CombinedReward

    root = Path(__file__).resolve().parents[2]
    tiny("llada").save_pretrained(tmp_path / "ckpt")
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"question": "q", "answer": "#### 72"}) + "\n")
    overrides = [f"model.path={tmp_path / 'ckpt'}", f"data.train={rows}", f"data.eval={rows}",
                 f"eval.benchmark_files.gsm8k={rows}"]  # fmt: skip
    recipe = load_recipe(root / "recipes" / "llada" / "d1_gsm8k.yaml", overrides)
    combined = CombinedReward(recipe.stages[0].args.rewards)
    truth = "Natalia sold 48/2 = 24 clips in May.\n#### 72"
    # d1: xmlcount 0.5 + soft 0.5 + strict 0.5 + int 0.5 + correctness 2.0
    assert combined("q", GOOD, truth)["score"] == pytest.approx(4.0)
    assert combined("q", GOOD.replace("72", "73"), truth)["score"] == pytest.approx(2.0)
    assert combined("q", "72", truth)["score"] == pytest.approx(0.5)  # only d1's int reward
    d = recipe.data
    prompt = with_system_prompt("How many clips?", d.system_prompt, d.system_prompt_placement)
    # d1's data_utils.py: SYSTEM_PROMPT + "\n\n" + question, in the user turn
    d1_prompt = "\nRespond in the following format:\n<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>\n"
    assert prompt == d1_prompt + "\n\nHow many clips?"
