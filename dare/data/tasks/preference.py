"""Synthetic preference pairs from the built-in tasks: `pref-<task>` (pref-sort, pref-addition,
pref-countdown, pref-sudoku, pref-mirror).

Each row is a row of the base task with a correct and an incorrect answer added:

    {"prompt": "sort 31979", "response": "13799", "ground_truth": "13799", "task": "sort",
     "chosen": "13799", "rejected": "17399"}

`chosen` is the task's demonstration; `rejected` is that answer with `edits` small mistakes
(knob `mistakes`: "swap" two adjacent different characters, "substitute" a digit by another digit
of the task, or "any" of the two), redrawn until the base task's verifier scores it 0. The knobs are the base task's plus `edits`;
problems and splits are exactly the base task's (same keys, same rows for the same seed), and
`task` stays the base task's name, so generations are scored by its verifier. The rows serve
`sft` stages (on `response` = chosen), preference stages (`load_dataset_spec(kind="preference")`)
and evaluation.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, fields
from typing import Any

from dare.data.tasks import arithmetic, countdown, mirror, sudoku  # noqa: F401  (the base tasks register first)
from dare.data.tasks.base import TASKS, Task

PREFIX = "pref-"
MAX_TRIES = 100
DIGITS = "0123456789"
MISTAKES = ("any", "swap", "substitute")


def _edit(answer: str, alphabet: str, kind: str, rng: random.Random) -> str:
    """One mistake of `kind`: "swap" (two adjacent different characters), "substitute" (a digit
    replaced by another digit of `alphabet`) or "any" (either, at random). A kind the answer
    does not allow (no two different neighbours, no digit) falls back to the other."""
    swaps = [i for i in range(len(answer) - 1) if answer[i] != answer[i + 1]]
    digits = [i for i, c in enumerate(answer) if c in alphabet] if len(alphabet) > 1 else []
    swap = {"swap": True, "substitute": False, "any": rng.random() < 0.5}[kind]
    if swaps and (swap or not digits):
        i = rng.choice(swaps)
        return answer[:i] + answer[i + 1] + answer[i] + answer[i + 2 :]
    if digits:
        i = rng.choice(digits)
        return answer[:i] + rng.choice([c for c in alphabet if c != answer[i]]) + answer[i + 1 :]
    return answer  # nothing to edit (the caller redraws and eventually raises)


def preference_task(base: type[Task]) -> type[Task]:
    """The `pref-<base.name>` task class: `base`'s knobs and problems, rows with chosen/rejected."""
    base_fields = [f.name for f in fields(base)]

    @dataclass(frozen=True)
    class PreferencePairs(base):  # type: ignore[valid-type, misc]
        # mistakes in each rejected answer
        edits: int = 1
        # their kind: "swap" (two adjacent characters), "substitute" (a digit) or "any"
        mistakes: str = "any"

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.edits < 1:
                raise ValueError(f"{self.name}: edits must be >= 1, got {self.edits}")
            if self.mistakes not in MISTAKES:
                raise ValueError(f"{self.name}: mistakes must be one of {MISTAKES}, got {self.mistakes!r}")

        def wrong_answer(self, row: dict[str, Any], rng: random.Random) -> str:
            """`row["response"]` with `edits` mistakes, scored 0 by the base verifier."""
            answer = row["response"]
            alphabet = "".join(c for c in DIGITS if c in self.symbols)
            for _ in range(MAX_TRIES):
                wrong = answer
                for _ in range(self.edits):
                    wrong = _edit(wrong, alphabet, self.mistakes, rng)
                if wrong != answer and self.score(wrong, row["ground_truth"]) == 0.0:
                    return wrong
            raise ValueError(f"{self.name}: found no wrong answer near {answer!r} in {MAX_TRIES} tries")

        def generate(self, split: str, n: int, seed: int = 0) -> list[dict[str, Any]]:
            rows = base(**{k: getattr(self, k) for k in base_fields}).generate(split, n, seed)
            rng = random.Random(f"{self.name}:{split}:{seed}")  # prefix-stable, like the base rows
            return [{**row, "chosen": row["response"], "rejected": self.wrong_answer(row, rng)} for row in rows]

    PreferencePairs.name = PREFIX + base.name
    PreferencePairs.__name__ = PreferencePairs.__qualname__ = f"Preference{base.__name__}"
    return PreferencePairs


for _name in [n for n in TASKS.names() if not n.startswith(PREFIX)]:
    TASKS.register(PREFIX + _name, preference_task(TASKS.get(_name)))

__all__ = ["PREFIX", "preference_task"]
