"""Final-answer rewards for real data: `gsm8k` (numbers), `multiple_choice` (option letters) and
`exact_match` (string equality of final answers).

`gsm8k` -- the response's final answer is the content of its last `\\boxed{}`, else the text after
its last `####`, else the last number it contains (the "flexible" extraction of GSM8K
harnesses); the reference is the row's answer or the final answer of a worked solution
(`"... #### 72"`). Both are compared as numbers, ignoring thousands separators, `$`, `%`, a
trailing period and trailing zeros (`"$1,234.00"` == `"1234"`); an answer that is no number is compared as
text after the same clean-up.

`multiple_choice` -- the response's option letter (A-J): the letter of its last `\\boxed{}`, else of
its last "answer is X" / "answer: (X)", else a letter that opens the response ("B", "(B) Paris",
"B. Paris"; not "A good..."), else its last "(X)". Letters are upper case. The reference is a letter or a 0-based option index (MMLU's
`answer: 2` is "C").

`exact_match` -- the stripped response (up to a stop marker), or its final answer when it states
one (`\\boxed{}` / `####`), equals the reference; against a worked solution, the solution's final
answer (never the whole solution text).

Each returns `{"score": 1.0 | 0.0, "acc": same, "pred": the extracted answer or None}`.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Any

from dare.data.tasks import extract_answer
from dare.rewards.base import register_reward
from dare.rewards.math_answer import final_answer, last_boxed, reference_answer

# a number as written in prose: optional sign and $, digits with thousands separators, decimals
_NUMBER = re.compile(r"(?:(?<![\w.])-)?\$?\d[\d,]*(?:\.\d+)?")
LETTERS = "ABCDEFGHIJ"
# upper-case letters only: "the answer is a number" names no option
_ANSWER_IS = re.compile(rf"(?i:answer)\s*(?:is|:)?\s*:?\s*\(?\s*([{LETTERS}])\s*\)?(?![A-Za-z])")
# "(B) ...", "B. ...", "B) ...", "B: ...", "B" -- not "A good question"
_LEADING = re.compile(rf"^(?:\(([{LETTERS}])\)|([{LETTERS}])(?:[.):]|$))")
_PAREN = re.compile(rf"\(([{LETTERS}])\)")


def _result(ok: bool, pred: str | None) -> dict[str, Any]:
    score = 1.0 if ok else 0.0
    return {"score": score, "acc": score, "pred": pred}


# -- numbers (GSM8K) --------------------------------------------------------------------------------


def clean_number(text: str) -> str:
    """`text` without `$` and `%` (plain or escaped), thousands separators, spaces and a trailing
    period."""
    for mark in ("\\$", "$", "\\%", "%", ",", "\\!"):
        text = text.replace(mark, "")
    return re.sub(r"\s+", "", text).rstrip(".").replace("\u2212", "-")


def numeric_answer(text: Any) -> str | None:
    """The final answer of a GSM8K-style response: last `\\boxed{}`, else after the last `####`,
    else the last number in the text; None if there is none."""
    text = extract_answer(text)
    if not text:
        return None
    answer = final_answer(text)
    if answer is not None:
        return answer
    numbers = _NUMBER.findall(text)
    return numbers[-1].strip() if numbers else None


def same_number(reference: str, prediction: str) -> bool:
    """Whether two answers are the same number after `clean_number` (as text when either is not
    a number)."""
    a, b = clean_number(reference), clean_number(prediction)
    try:
        return Fraction(a) == Fraction(b)  # exact: "72.0" == "72", "0.5" == "1/2"
    except (ValueError, ZeroDivisionError):
        return a == b and a != ""


@register_reward("gsm8k")
def gsm8k_reward(prompt: str, response: str, ground_truth: Any = None) -> dict[str, Any]:
    """1.0 if the response's final number (boxed, after `####`, or the last one) equals the
    reference's (see the module docstring)."""
    pred = numeric_answer(response)
    ref = reference_answer(ground_truth)
    return _result(pred is not None and ref is not None and same_number(ref, pred), pred)


# -- option letters (multiple choice) ---------------------------------------------------------------


def choice_letter(text: Any) -> str | None:
    """The option letter a response gives (see the module docstring); None if it gives none."""
    text = extract_answer(text)
    if not text:
        return None
    boxed = last_boxed(text)
    if boxed is not None:
        m = re.fullmatch(rf"\(?\s*(?:\\text\{{)?([{LETTERS}])\}}?\s*\)?\.?", boxed.strip())
        return m.group(1) if m else None
    said = _ANSWER_IS.findall(text)
    if said:
        return said[-1]
    m = _LEADING.match(text)
    if m:
        return m.group(1) or m.group(2)
    parens = _PAREN.findall(text)
    return parens[-1] if parens else None


def reference_letter(ground_truth: Any) -> str | None:
    """The correct option's letter from a letter (`"C"`, `"(C)"`), a 0-based index (`2`, as in
    MMLU), or a dict holding either under `answer`; None for anything else."""
    if isinstance(ground_truth, dict):
        ground_truth = ground_truth.get("answer")
    if isinstance(ground_truth, bool):
        return None
    if isinstance(ground_truth, int):
        return LETTERS[ground_truth] if 0 <= ground_truth < len(LETTERS) else None
    if isinstance(ground_truth, str):
        m = re.fullmatch(rf"\(?\s*([{LETTERS}])\s*\)?\.?", ground_truth.strip(), flags=re.IGNORECASE)
        return m.group(1).upper() if m else None
    return None


@register_reward("multiple_choice")
def multiple_choice_reward(prompt: str, response: str, ground_truth: Any = None) -> dict[str, Any]:
    """1.0 if the response's option letter is the reference's (see the module docstring)."""
    pred = choice_letter(response)
    ref = reference_letter(ground_truth)
    return _result(pred is not None and pred == ref, pred)


# -- exact match ------------------------------------------------------------------------------------


def is_worked_solution(ground_truth: Any) -> bool:
    """A reference that is a solution holding its final answer (`####` or `\\boxed{}`)."""
    return isinstance(ground_truth, str) and final_answer(ground_truth) is not None


@register_reward("exact_match")
def exact_match_reward(prompt: str, response: str, ground_truth: Any = None) -> dict[str, Any]:
    """1.0 if the stripped response (or its stated final answer) equals the reference or the
    final answer of a worked solution (never the whole solution text)."""
    text = extract_answer(response)
    if text is None or ground_truth is None:
        return _result(False, text)
    ref = final_answer(ground_truth) if is_worked_solution(ground_truth) else str(ground_truth).strip()
    pred = final_answer(text)  # a response that states a final answer is judged by it
    pred = text if pred is None or text == ref else pred
    return _result(pred == ref, pred)


__all__ = [
    "choice_letter",
    "clean_number",
    "exact_match_reward",
    "gsm8k_reward",
    "is_worked_solution",
    "multiple_choice_reward",
    "numeric_answer",
    "reference_letter",
    "same_number",
]
