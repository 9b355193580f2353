"""Scorers of the after-stage check: which reward verifier turns a generated answer into 0 / 1.

A scorer is a reward of this package (the same function an RL stage trains on) plus how a row's
fields reach it; there is no second spelling of any verifier. `eval.scorer` in a recipe names one:

    name             reward            scores rows whose ground truth is
    exact            exact_match       the answer itself (else the row's demonstration `response`)
    gsm8k            gsm8k             a number or a `... #### 72` solution (numeric comparison)
    math             math              a MATH answer or a `\\boxed{}` solution (math-verify)
    code             code              tests (`dare.rewards.code_exec` layouts; all must pass)
    multiple_choice  multiple_choice   an option letter or a 0-based option index
    task             task              a built-in task's (the row's `task` field and knobs)
    auto             (one of the above, chosen as follows)

`auto` (the default) takes, in order:

1. the run's verifier reward: the first reward of the recipe's stages (`rewards:` of an RL stage)
   that one of the scorers runs -- with that stage's `args`, so e.g. an `answer_tag` applies. One
   scorer for the whole run, so every row of the report is scored alike. `format`, `judge` and
   plug-in rewards are no verifiers and are skipped;
2. else, per row, the row's declared task: its `task`, `data_source` or `ability` field, read as a
   built-in task name, a scorer name, or a known data source (`openai/gsm8k` -> gsm8k,
   `lighteval/MATH` -> math, `mbpp` -> code, `cais/mmlu` -> multiple_choice, ...: `DATA_SOURCES`);
3. else the ground truth's shape: tests -> code, a solution with `####` -> gsm8k, with
   `\\boxed{}` -> math, an answer letter of a row with `choices` / `options` -> multiple_choice;
4. else exact match (which still compares final answers against a worked solution).

    scorer = resolve_scorer("auto", [("stages[1]", [{"name": "math"}])])
    check_rows(scorer, rows)                    # ValueError naming a row the scorer cannot score
    scores, errors = score_rows(scorer, rows, texts)
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from dare.data.tasks import TASKS, row_task
from dare.registry import Registry
from dare.rewards.answers import is_worked_solution, reference_letter
from dare.rewards.code_exec import parse_tests
from dare.rewards.math_answer import last_boxed, reference_answer
from dare.rewards.spec import LoadedReward, RewardSpec, as_specs
from dare.rewards.tasks import TASK_REWARDS

logger = logging.getLogger("dare.rewards")

# the only row fields a verifier gets besides prompt and ground truth: which built-in task and its
# knobs. Never the others: a data file's column must not set a reward's limits (`cpu_s`,
# `isolation`, ...), which come from the recipe alone
ROW_FIELDS = ("task", "task_args")
# row fields that declare where a row comes from, in the order they are read
DECLARING_FIELDS = ("task", "data_source", "ability")
# a word of a declared data source (split at non-alphanumerics, lower case) starting with a key
# names its scorer: "openai/gsm8k" -> gsm8k, "HuggingFaceH4/MATH-500" -> math, "ai2_arc" -> mc
DATA_SOURCES: dict[str, str] = {
    "gsm": "gsm8k",
    "math": "math",
    "aime": "math",
    "amc": "math",
    "minerva": "math",
    "olympiad": "math",
    "code": "code",
    "humaneval": "code",
    "mbpp": "code",
    "apps": "code",
    "taco": "code",
    "livecodebench": "code",
    "leetcode": "code",
    "mmlu": "multiple_choice",
    "arc": "multiple_choice",
    "gpqa": "multiple_choice",
    "hellaswag": "multiple_choice",
    "mcq": "multiple_choice",
}
# a row with one of these lists is a multiple-choice question
CHOICE_FIELDS = ("choices", "options", "endings")
# sandboxed code runs wait on child processes: score several at once
CODE_THREADS = 8


def ground_truth_of(row: Mapping[str, Any]) -> Any:
    """What a row is scored against: its ground truth, else its demonstration `response`."""
    gt = row.get("ground_truth")
    return row.get("response") if gt is None else gt


# -- what each verifier needs of a row (None: fine; else the reason it cannot be scored) ------------


def _needs_truth(row: Mapping[str, Any]) -> str | None:
    return None if ground_truth_of(row) is not None else "has no ground_truth (nor response) to score against"


def _needs_answer(row: Mapping[str, Any]) -> str | None:
    if reference_answer(ground_truth_of(row)) is None:
        return _needs_truth(row) or f"ground truth {_short(ground_truth_of(row))} holds no answer"
    return None


def _needs_letter(row: Mapping[str, Any]) -> str | None:
    if reference_letter(ground_truth_of(row)) is None:
        reason = f"ground truth {_short(ground_truth_of(row))} is no option letter (A-J) or 0-based index"
        return _needs_truth(row) or reason
    return None


def _needs_tests(row: Mapping[str, Any]) -> str | None:
    if ground_truth_of(row) is None:
        return _needs_truth(row)
    try:
        parse_tests(ground_truth_of(row))
    except (ValueError, TypeError) as e:
        return str(e)
    return None


def _needs_task(row: Mapping[str, Any]) -> str | None:
    task = row.get("task")
    if not isinstance(task, str) or task not in TASKS:
        return f"task {task!r} is no built-in task ({', '.join(TASKS.names())})"
    try:
        row_task(row)
    except (KeyError, TypeError, ValueError) as e:
        return f"task_args {row.get('task_args')!r}: {str(e).strip(chr(39))}"
    return None


# what a row needs, by the reward a scorer runs (the task rewards: a ground truth)
ROW_NEEDS: dict[str, Callable[[Mapping[str, Any]], str | None]] = {
    "gsm8k": _needs_answer,
    "math": _needs_answer,
    "multiple_choice": _needs_letter,
    "code": _needs_tests,
    "task": _needs_task,
}


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- scorers ----------------------------------------------------------------------------------------


class Scorer:
    """One verifier: `score(row, text)` is the reward `reward` (with `args`) on the row's prompt,
    the generated text, the row's ground truth and its `ROW_FIELDS`; a dict's `acc` wins over its
    `score` (code: all tests passed). `source` says why it was chosen (for the report)."""

    def __init__(self, name: str, reward: str, args: Mapping[str, Any] | None = None, source: str = "") -> None:
        self.name, self.reward, self.args = name, reward, dict(args or {})
        self.source = source or f"eval.scorer: {name}"
        self.threads = CODE_THREADS if reward == "code" else 1  # math-verify's timeouts need the main thread
        self._loaded = LoadedReward.from_spec(RewardSpec(name=reward, args=self.args))

    def pick(self, row: Mapping[str, Any]) -> Scorer:
        """The scorer that scores `row` (itself; `AutoScorer` picks per row)."""
        return self

    def problem(self, row: Mapping[str, Any]) -> str | None:
        """Why `row` cannot be scored by this scorer, or None."""
        return ROW_NEEDS.get(self.reward, _needs_truth)(row)

    def score(self, row: Mapping[str, Any], text: str) -> float:
        """The verdict (0..1) on `text` generated for `row`. Exceptions of the reward propagate."""
        prompt = row["prompt"] if isinstance(row["prompt"], str) else str(row["prompt"])
        extra = {k: row[k] for k in ROW_FIELDS if k in row}
        score, info = self._loaded.one(prompt, text, ground_truth_of(row), extra)
        acc = info.get("acc")
        return float(acc) if isinstance(acc, (int, float)) and not isinstance(acc, bool) else score


class AutoScorer(Scorer):
    """`auto` without a verifier reward: each row's declared task, else its ground truth's shape,
    else exact match (see the module docstring)."""

    def __init__(self) -> None:
        self.name, self.reward, self.args, self.threads = "auto", "", {}, 1
        self.source = "auto: each row's task / data_source, else its ground truth's shape, else exact"
        self._scorers: dict[str, Scorer] = {}

    def pick(self, row: Mapping[str, Any]) -> Scorer:
        name = row_scorer_name(row)
        if name not in self._scorers:
            self._scorers[name] = SCORERS.get(name)(source=self.source)
        return self._scorers[name]

    def problem(self, row: Mapping[str, Any]) -> str | None:
        return self.pick(row).problem(row)

    def score(self, row: Mapping[str, Any], text: str) -> float:
        return self.pick(row).score(row, text)


SCORERS: Registry[Callable[..., Scorer]] = Registry("eval scorer")
# reward name -> the scorer that runs it (the rewards `auto` takes from a stage)
VERIFIER_REWARDS: dict[str, str] = {}


def _register(name: str, reward: str, fixed: Mapping[str, Any] | None = None) -> None:
    def make(args: Mapping[str, Any] | None = None, reward_name: str | None = None, source: str = "") -> Scorer:
        # `fixed` wins over a stage's args: the check scores all-or-nothing whatever the training reward
        return Scorer(name, reward_name or reward, {**(args or {}), **(fixed or {})}, source)

    SCORERS.register(name, make)
    VERIFIER_REWARDS[reward] = name


_register("exact", "exact_match")
_register("gsm8k", "gsm8k")
_register("math", "math")
_register("code", "code", {"all_or_nothing": True})
_register("multiple_choice", "multiple_choice")
_register("task", "task")
SCORERS.register("auto", lambda args=None, reward_name=None, source="": AutoScorer())
VERIFIER_REWARDS.update(dict.fromkeys(TASK_REWARDS, "task"))


def declared_scorer(value: Any) -> str | None:
    """The scorer a row's declared task / data source names (see `DATA_SOURCES`), or None."""
    if not isinstance(value, str) or not value:
        return None
    if value in TASKS:
        return "task"
    if value in SCORERS and value != "auto":
        return value
    for word in re.split(r"[^0-9a-z]+", value.lower()):
        for key, name in DATA_SOURCES.items():
            if word.startswith(key):
                return name
    return None


def _is_tests(gt: Any) -> bool:
    if isinstance(gt, Mapping):
        return "tests" in gt or {"inputs", "outputs"} <= set(gt)
    return (
        isinstance(gt, list) and bool(gt) and all(isinstance(t, Mapping) and {"input", "output"} <= set(t) for t in gt)
    )


def row_scorer_name(row: Mapping[str, Any]) -> str:
    """The scorer `auto` gives a row without a verifier reward (steps 2-4 of the module docstring)."""
    for key in DECLARING_FIELDS:
        name = declared_scorer(row.get(key))
        if name is not None:
            return name
    gt = row.get("ground_truth")
    if _is_tests(gt):
        return "code"
    if is_worked_solution(gt):
        return "math" if last_boxed(gt) is not None else "gsm8k"
    if any(isinstance(row.get(k), (list, Mapping)) for k in CHOICE_FIELDS) and reference_letter(gt) is not None:
        return "multiple_choice"
    return "exact"


def resolve_scorer(setting: str, stage_rewards: Sequence[tuple[str, Sequence[Any] | None]] = ()) -> Scorer:
    """The scorer of a run: `setting` (`eval.scorer`) by name, or for `auto` the first verifier
    reward among `stage_rewards` (`(where, the stage's rewards list)` in stage order, e.g.
    `("stages[1]", [{"name": "math"}])`), with that reward's args, else `AutoScorer`.

    Raises:
        KeyError: unknown scorer name (lists the known ones).
    """
    make = SCORERS.get(setting)
    if setting != "auto":
        return make()
    for where, rewards in stage_rewards:
        for i, spec in enumerate(as_specs(rewards) if rewards else []):
            if spec.name in VERIFIER_REWARDS:
                source = f"auto: {where}.rewards[{i}] ({spec.name})"
                return SCORERS.get(VERIFIER_REWARDS[spec.name])(spec.args, spec.name, source)
    return make()


def check_rows(scorer: Scorer, rows: Sequence[Mapping[str, Any]], what: str = "eval") -> None:
    """Before any generation: every row can be scored by `scorer`.

    Raises:
        ValueError: naming the scorer, why it was chosen, the first bad row and the count.
    """
    bad = [(i, reason) for i, row in enumerate(rows) if (reason := scorer.problem(row)) is not None]
    if bad:
        i, reason = bad[0]
        raise ValueError(
            f"{scorer.source}: {what} row {i}{f' (and {len(bad) - 1} more)' if len(bad) > 1 else ''} cannot be "
            f"scored by the {scorer.pick(rows[i]).name!r} scorer: {reason}; set eval.scorer to one that fits "
            f"({', '.join(SCORERS.names())}) or fix the rows"
        )


def score_rows(
    scorer: Scorer, rows: Sequence[Mapping[str, Any]], texts: Sequence[str]
) -> tuple[list[float], list[str]]:
    """Each text's score and the errors: a verifier that raises gives 0 for that row and one
    `"row I: Type: message"` entry (logged once per call). Code runs score `CODE_THREADS` at once."""
    errors: list[str] = []

    def one(i: int) -> float:
        try:
            return scorer.score(rows[i], texts[i])
        except Exception as e:  # one broken verdict must not lose the evaluation of a stage
            errors.append(f"row {i}: {type(e).__name__}: {e}")
            return 0.0

    parallel = [i for i, row in enumerate(rows) if scorer.pick(row).threads > 1]
    scores = [0.0] * len(rows)
    if parallel:
        with ThreadPoolExecutor(max_workers=min(CODE_THREADS, len(parallel))) as pool:
            for i, s in zip(parallel, pool.map(one, parallel)):
                scores[i] = s
    serial = set(range(len(rows))) - set(parallel)
    for i in sorted(serial):
        scores[i] = one(i)
    if errors:
        logger.warning("%s: %d verifier error(s) scored 0; first: %s", scorer.source, len(errors), errors[0])
    return scores, errors


__all__ = [
    "DATA_SOURCES",
    "SCORERS",
    "VERIFIER_REWARDS",
    "AutoScorer",
    "Scorer",
    "check_rows",
    "declared_scorer",
    "ground_truth_of",
    "resolve_scorer",
    "row_scorer_name",
    "score_rows",
]
