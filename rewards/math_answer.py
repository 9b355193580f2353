"""The `math` reward: the final answer of a response against the reference answer, compared for
mathematical equivalence by `math-verify` (Hugging Face's maintained verifier: LaTeX and plain
expressions parsed to sympy, so `\\frac{1}{2}` == `0.5`, `3\\sqrt{2}` == `\\sqrt{18}`,
`\\{1,2\\}` == `\\{2,1\\}`, `x=3` == `3`), not a home-made normaliser.

The final answer of the response is taken from its last `<answer>...</answer>` when it has one
(d1's `<reasoning>...</reasoning><answer>...</answer>` format): a `\\boxed{}` or `####` answer
inside the tags, else the tags' whole (stripped) content. Without answer tags it is the content of
the last `\\boxed{...}` (balanced braces), or else the text after the last `####` (GSM8K style, up
to the end of that line). A response with none of these scores 0 (`pred` None). The ground truth may be the bare answer (`"72"`, `"\\frac{1}{2}"`)
or a full reference solution holding a `\\boxed{}` or `####` answer (MATH / GSM8K rows).

Returns `{"score": 1.0 | 0.0, "acc": same, "pred": the extracted answer or None}`.
"""

from __future__ import annotations

import threading
from typing import Any

from dare.rewards.base import register_reward
from dare.rewards.tag_format import last_tag

_BOXED = ("\\boxed", "\\fbox")


def answer_tag(text: str) -> str | None:
    """The stripped content of the last closed `<answer>...</answer>` in `text` (`last_tag`);
    None if there is none (an unclosed tag, e.g. a truncated response, does not count)."""
    content = last_tag(text, "answer")
    return None if content is None else content.strip()


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` (or `\\fbox{...}`) in `text`, braces balanced;
    None if there is none or it is unclosed."""
    start = max(text.rfind(b) for b in _BOXED)
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0 or text[start:i].strip() not in _BOXED:
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j].strip()
    return None


def final_answer(text: Any) -> str | None:
    """The final answer of a solution text: inside the last `<answer>...</answer>` if present
    (its `\\boxed{}` / `####` answer, else all of it); otherwise the last `\\boxed{}` content,
    else what follows the last `####` on its line; None if none is present (or it is empty)."""
    if not isinstance(text, str):
        return None
    tagged = answer_tag(text)
    if tagged is not None:
        return _boxed_or_hash(tagged) or tagged or None
    return _boxed_or_hash(text)


def _boxed_or_hash(text: str) -> str | None:
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed or None
    if "####" in text:
        answer = text.rsplit("####", 1)[1].strip().split("\n", 1)[0].strip()
        return answer or None
    return None


def reference_answer(ground_truth: Any) -> str | None:
    """The reference answer: a number, a bare answer string, or a solution holding one."""
    if isinstance(ground_truth, bool) or ground_truth is None:
        return None
    if isinstance(ground_truth, (int, float)):
        return str(ground_truth)
    if isinstance(ground_truth, dict):
        ground_truth = ground_truth.get("answer", ground_truth.get("solution"))
    if not isinstance(ground_truth, str):
        return None
    return final_answer(ground_truth) or ground_truth.strip() or None


def answers_equal(reference: str, prediction: str, timeout_s: int = 5) -> bool:
    """Whether two answer strings are mathematically equivalent (math-verify).

    math-verify's own timeouts use SIGALRM, which exists only in a process's main thread; off the
    main thread they are disabled (the reward runner's per-call timeout still applies).
    """
    from math_verify import parse, verify

    t = timeout_s if threading.current_thread() is threading.main_thread() else None
    gold = parse(f"\\boxed{{{reference}}}", parsing_timeout=t)
    pred = parse(f"\\boxed{{{prediction}}}", parsing_timeout=t)
    if not gold or not pred:
        return False
    return bool(verify(gold, pred, timeout_seconds=t))


@register_reward("math")
def math_reward(prompt: str, response: str, ground_truth: Any = None, timeout_s: int = 5) -> dict[str, Any]:
    """1.0 if the response's final answer (`<answer>`, `\\boxed{}` or `####`) equals the reference."""
    pred = final_answer(response)
    ref = reference_answer(ground_truth)
    ok = pred is not None and ref is not None and answers_equal(ref, pred, timeout_s)
    score = 1.0 if ok else 0.0
    return {"score": score, "acc": score, "pred": pred}


__all__ = ["answer_tag", "answers_equal", "final_answer", "last_boxed", "math_reward", "reference_answer"]
