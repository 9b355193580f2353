"""Rewards of the built-in tasks: `countdown`, `sudoku`, `addition`, `sort`.

Each wraps the task's own verifier (`dare.data.tasks.<Task>.score`), so training rewards and
built-in evaluation agree by construction. `ground_truth` is what the task's rows carry:

    countdown  {"numbers": [3, 8, 1], "target": 24}
    sudoku     {"puzzle": "1.3..4.2.1..3..1", "solution": "1234341221434321"}
    addition   "168"
    sort       "13799"

Rows generated with non-default knobs carry them as `task_args` (e.g. `{"direction": "either"}`
for sort), which reach the reward as an extra field, so the scorer is the row's task.

The task scorers are strict: the (stripped) response must be exactly an answer. With
`answer_tag: answer` the answer is taken from the last `<answer>...</answer>` of the response
instead (no tag: score 0), for prompts that ask for tagged output (pair it with the `format`
reward).
"""

from __future__ import annotations

import re
from typing import Any

from dare.data.tasks import row_task
from dare.rewards.base import register_reward


def tagged(text: str, tag: str) -> str | None:
    """The content of the last `<tag>...</tag>` in `text` (None if there is none)."""
    matches = re.findall(rf"<{re.escape(tag)}>(.*?)</{re.escape(tag)}>", text, flags=re.DOTALL)
    return matches[-1] if matches else None


def _score(task: str, response: Any, ground_truth: Any, answer_tag: str | None, task_args: dict | None) -> float:
    if not isinstance(response, str) or ground_truth is None:
        return 0.0
    if answer_tag is not None:
        answer = tagged(response, answer_tag)
        if answer is None:
            return 0.0
        response = answer
    # the row's knobs (e.g. sort's direction); built outside the try: a bad knob is an error, not a 0
    scorer = row_task({"task": task, "task_args": task_args})
    try:
        return float(scorer.score(response, ground_truth))
    except (KeyError, TypeError, ValueError):
        return 0.0  # a malformed ground truth (wrong shape for this task) scores 0, it is no crash


@register_reward("countdown")
def countdown(
    prompt: str, response: str, ground_truth: Any = None, answer_tag: str | None = None, task_args: dict | None = None
) -> float:
    """1.0 if `response` is an expression using every given number once that equals the target."""
    return _score("countdown", response, ground_truth, answer_tag, task_args)


@register_reward("sudoku")
def sudoku(
    prompt: str, response: str, ground_truth: Any = None, answer_tag: str | None = None, task_args: dict | None = None
) -> float:
    """1.0 if `response` is a valid 4x4 grid consistent with the puzzle's givens."""
    return _score("sudoku", response, ground_truth, answer_tag, task_args)


@register_reward("addition")
def addition(
    prompt: str, response: str, ground_truth: Any = None, answer_tag: str | None = None, task_args: dict | None = None
) -> float:
    """1.0 if `response` is exactly the sum."""
    return _score("addition", response, ground_truth, answer_tag, task_args)


@register_reward("sort")
def sort(
    prompt: str, response: str, ground_truth: Any = None, answer_tag: str | None = None, task_args: dict | None = None
) -> float:
    """1.0 if `response` is exactly the sorted digits (or, with `direction: either`, reversed)."""
    return _score("sort", response, ground_truth, answer_tag, task_args)


__all__ = ["addition", "countdown", "sort", "sudoku", "tagged"]
