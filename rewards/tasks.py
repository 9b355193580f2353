"""Rewards of the built-in tasks: `countdown`, `sudoku`, `addition`, `sort`, and `task` (whichever
built-in task the row names in its `task` field: mixed tasks, `mirror`).

Each is the task's own verifier (`dare.data.tasks.<Task>.score`) called through `score_task`
(`task_reward(name)` builds the per-task ones), which also scores the after-stage check
(`dare.rewards.scorers`), so training rewards and built-in evaluation agree by construction. `ground_truth` is what the task's rows carry:

    countdown  {"numbers": [3, 8, 1], "target": 24}
    sudoku     {"puzzle": "1.3..4.2.1..3..1", "solution": "1234341221434321"}
    addition   "168"
    sort       "13799"

Rows generated with non-default knobs carry them as `task_args` (e.g. `{"direction": "either"}`
for sort), which reach the reward as an extra field, so the scorer is the row's task.

The task scorers are strict: the (stripped) response must be exactly an answer. With
`answer_tag: answer` the answer is taken from the last `<answer>...</answer>` of the response
(`dare.rewards.tag_format.last_tag`) instead (no tag: score 0), for prompts that ask for tagged
output (pair it with the `format` reward).
"""

from __future__ import annotations

from typing import Any

from dare.data.tasks import TASKS, row_task
from dare.rewards.base import RewardFn, register_reward
from dare.rewards.tag_format import last_tag

# the built-in tasks with a reward of their own name (the others, e.g. mirror: the `task` reward)
TASK_REWARDS = ("countdown", "sudoku", "addition", "sort")


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
        answer = last_tag(response, answer_tag)
        if answer is None:
            return 0.0
        response = answer
    # the row's knobs (e.g. sort's direction); built outside the try: a bad knob is an error, not a 0
    scorer = row_task({"task": task, "task_args": task_args})
    try:
        return float(scorer.score(response, ground_truth))
    except (KeyError, TypeError, ValueError):
        return 0.0  # a malformed ground truth (wrong shape for this task) scores 0, it is no crash


def task_reward(task: str) -> RewardFn:
    """The reward of the built-in `task`: `score_task` with the task fixed (its knobs from the
    row's `task_args`, its answer from `answer_tag` when set)."""

    def reward(
        prompt: str,
        response: str,
        ground_truth: Any = None,
        answer_tag: str | None = None,
        task_args: dict | None = None,
    ) -> float:
        return score_task(task, response, ground_truth, answer_tag, task_args)

    summary = (TASKS.get(task).__doc__ or "").strip().splitlines()[0]
    reward.__name__ = task
    reward.__doc__ = f"1.0 if `response` is a correct answer of the built-in task {task!r} ({summary})."
    return reward


for _name in TASK_REWARDS:
    register_reward(_name, reads=("task_args",))(task_reward(_name))


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


__all__ = ["TASK_REWARDS", "row_task_reward", "score_task", "task_reward"]
