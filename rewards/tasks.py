"""Rewards of the built-in tasks: `countdown`, `sudoku`, `addition`, `sort`, and `task` (whichever
built-in task the row names in its `task` field: mixed tasks, `mirror`).

Each wraps the task's own verifier (`dare.data.tasks.<Task>.score`) through `score_task`, which
also scores the after-stage check (`dare.rewards.scorers`), so training rewards and built-in
evaluation agree by construction. `ground_truth` is what the task's rows carry:

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


def score_task(
    task: str, response: Any, ground_truth: Any, answer_tag: str | None = None, task_args: dict | None = None
) -> float:
    """The built-in `task`'s verdict (with its `task_args` knobs) on `response`: 1.0 or 0.0; a
    malformed response or ground truth scores 0. The one scorer of built-in task rows: the task
    rewards below and the after-stage check (`dare.rewards.scorers`) both call it.

    Raises:
        KeyError / TypeError / ValueError: an unknown task or a bad knob (a recipe error, not a 0).
    """
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


@register_reward("countdown", reads=("task_args",))
def countdown(
    prompt: str, response: str, ground_truth: Any = None, answer_tag: str | None = None, task_args: dict | None = None
) -> float:
    """1.0 if `response` is an expression using every given number once that equals the target."""
    return score_task("countdown", response, ground_truth, answer_tag, task_args)


@register_reward("sudoku", reads=("task_args",))
def sudoku(
    prompt: str, response: str, ground_truth: Any = None, answer_tag: str | None = None, task_args: dict | None = None
) -> float:
    """1.0 if `response` is a valid 4x4 grid consistent with the puzzle's givens."""
    return score_task("sudoku", response, ground_truth, answer_tag, task_args)


@register_reward("addition", reads=("task_args",))
def addition(
    prompt: str, response: str, ground_truth: Any = None, answer_tag: str | None = None, task_args: dict | None = None
) -> float:
    """1.0 if `response` is exactly the sum."""
    return score_task("addition", response, ground_truth, answer_tag, task_args)


@register_reward("sort", reads=("task_args",))
def sort(
    prompt: str, response: str, ground_truth: Any = None, answer_tag: str | None = None, task_args: dict | None = None
) -> float:
    """1.0 if `response` is exactly the sorted digits (or, with `direction: either`, reversed)."""
    return score_task("sort", response, ground_truth, answer_tag, task_args)


@register_reward("task", reads=("task", "task_args"))
def row_task_reward(
    prompt: str,
    response: str,
    ground_truth: Any = None,
    task: str | None = None,
    answer_tag: str | None = None,
    task_args: dict | None = None,
) -> float:
    """1.0 if `response` is correct by the row's own built-in task (its `task` and `task_args`
    fields, e.g. a mix of tasks or `mirror`).

    Raises:
        ValueError: the row has no `task` field.
    """
    if not task:
        raise ValueError("the task reward scores built-in task rows: this row has no 'task' field")
    return score_task(task, response, ground_truth, answer_tag, task_args)


__all__ = ["addition", "countdown", "row_task_reward", "score_task", "sort", "sudoku", "tagged"]
