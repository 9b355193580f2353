"""d1's GSM8K format rewards (dllm-reasoning/d1 `diffu-grpo/reward_func.py`, which takes them from
Will Brown's GRPO demo), for responses in the format its prompt asks for:

    <reasoning>
    ...
    </reasoning>
    <answer>
    ...
    </answer>

Each returns a score in [0, 1] (`xml_count` can go below 0); d1's own values are these times 0.5,
so a recipe reproduces d1 with `weight: 0.5` on each (and `math` with `weight: 2.0` for its
correctness reward, which scores 2.0 on a right answer):

- `xml_count`: 0.25 for each of the four tag lines written once (`<reasoning>\\n`,
  `\\n</reasoning>\\n`, `\\n<answer>\\n`, `\\n</answer>`), minus 0.002 per character after the
  closing answer tag (d1's quirk kept: the third term's penalty counts the characters after the
  last `\\n</answer>\\n`, i.e. the whole text when that is absent).
- `soft_format`: 1 if the response starts with `<reasoning>...</reasoning>`, whitespace, then
  `<answer>...</answer>` (anything may follow).
- `strict_format`: 1 if the whole response is exactly the format above, newlines included, ending
  with a newline after `</answer>` (Python's `$`: one more trailing newline is allowed).
- `int_answer`: 1 if the answer is a non-negative integer written with digits only. The answer is
  d1's: the text after the last `<answer>` up to the next `</answer>` (the whole response when it
  has no `<answer>`), stripped.
"""

from __future__ import annotations

import re
from typing import Any

from dare.rewards.base import register_reward

_SOFT = re.compile(r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>", flags=re.DOTALL)
_STRICT = re.compile(r"^<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\n$", flags=re.DOTALL)
# (tag line, marker after which trailing characters are penalised, offset of that penalty)
_XML_TERMS = (
    ("<reasoning>\n", None, 0),
    ("\n</reasoning>\n", None, 0),
    ("\n<answer>\n", "\n</answer>\n", 0),
    ("\n</answer>", "\n</answer>", 1),
)
TAG_SCORE = 0.25
TRAILING_PENALTY = 0.002  # per character after the closing answer tag


def d1_answer(text: str) -> str:
    """d1's answer extraction: after the last `<answer>`, before the next `</answer>`, stripped."""
    return text.split("<answer>")[-1].split("</answer>")[0].strip()


@register_reward("xml_count")
def xml_count_reward(prompt: str, response: str, ground_truth: Any = None) -> float:
    """0.25 per well-placed tag line minus a penalty for text after the answer (module docstring)."""
    if not isinstance(response, str):
        return 0.0
    score = 0.0
    for tag, marker, offset in _XML_TERMS:
        if response.count(tag) != 1:
            continue
        score += TAG_SCORE
        if marker is not None:
            score -= (len(response.split(marker)[-1]) - offset) * TRAILING_PENALTY
    return score


@register_reward("soft_format")
def soft_format_reward(prompt: str, response: str, ground_truth: Any = None) -> float:
    """1.0 if the response starts with the reasoning block then the answer block, else 0.0."""
    return 1.0 if isinstance(response, str) and _SOFT.match(response) else 0.0


@register_reward("strict_format")
def strict_format_reward(prompt: str, response: str, ground_truth: Any = None) -> float:
    """1.0 if the response is exactly the tag-per-line format, else 0.0."""
    return 1.0 if isinstance(response, str) and _STRICT.match(response) else 0.0


@register_reward("int_answer")
def int_answer_reward(prompt: str, response: str, ground_truth: Any = None) -> float:
    """1.0 if d1's extracted answer is all digits (an integer answer, as GSM8K's are), else 0.0."""
    return 1.0 if isinstance(response, str) and d1_answer(response).isdigit() else 0.0


__all__ = [
    "d1_answer",
    "int_answer_reward",
    "soft_format_reward",
    "strict_format_reward",
    "xml_count_reward",
]
