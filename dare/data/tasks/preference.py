"""Synthetic preference pairs from the built-in tasks: `pref-<task>` (pref-sort, pref-addition,
pref-countdown, pref-sudoku, pref-mirror).

Each row is a row of the base task with a correct and an incorrect answer added:

    {"prompt": "sort 31979", "response": "13799", "ground_truth": "13799", "task": "sort",
     "chosen": "13799", "rejected": "17399"}

`chosen` is the task's demonstration; `rejected` is that answer with `edits` small mistakes
(knob `mistakes`: "swap" two adjacent different characters, "substitute" a digit by another digit
of the task, "any" of the two, or "reverse" the whole answer -- for sort, the descending order),
redrawn until the base task's verifier scores it 0. The knobs are the base task's plus `edits`,
`mistakes` and `demo_error_rate`;
problems and splits are exactly the base task's (same keys, same rows for the same seed), and
`task` stays the base task's name, so generations are scored by its verifier. The rows serve
`sft` stages (on `response` = chosen), preference stages (`load_dataset_spec(kind="preference")`)
and evaluation.

Noisy demonstrations (knob `demo_error_rate`, default 0): in the train split, each row's `response`
(the SFT demonstration) is, with this probability, its `rejected` answer instead of the correct one,
so SFT learns the mix of right and wrong answers while the pairs (chosen always correct, rejected
always wrong) say which is which: the preference signal carries information the demonstrations
lack. `chosen`, `rejected` and `ground_truth` are unchanged, and so is the eval split (its
`response` stays correct; evaluation scores with the verifier either way).
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
MISTAKES = ("any", "reverse", "swap", "substitute")


def _edit(answer: str, alphabet: str, kind: str, rng: random.Random) -> str:
    """One mistake of `kind`: "swap" (two adjacent different characters), "substitute" (a digit
    replaced by another digit of `alphabet`), "any" (either, at random) or "reverse" (the answer
    backwards). A kind the answer does not allow (no two different neighbours, no digit, a
    palindrome) falls back to another."""
    if kind == "reverse" and answer[::-1] != answer:
        return answer[::-1]
    swaps = [i for i in range(len(answer) - 1) if answer[i] != answer[i + 1]]
    digits = [i for i, c in enumerate(answer) if c in alphabet] if len(alphabet) > 1 else []
    swap = {"swap": True, "substitute": False, "any": rng.random() < 0.5, "reverse": False}[kind]
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
        # their kind: "swap" (two adjacent characters), "substitute" (a digit), "any" or "reverse"
        mistakes: str = "any"
        # share of train-split demonstrations (`response`) replaced by their rejected answer
        demo_error_rate: float = 0.0

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.edits < 1:
                raise ValueError(f"{self.name}: edits must be >= 1, got {self.edits}")
            if self.mistakes not in MISTAKES:
                raise ValueError(f"{self.name}: mistakes must be one of {MISTAKES}, got {self.mistakes!r}")
            if self.mistakes == "reverse" and self.edits != 1:
                raise ValueError(f"{self.name}: mistakes 'reverse' needs edits 1 (a second reversal undoes it)")
            rate = self.demo_error_rate
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
                raise ValueError(f"{self.name}: demo_error_rate must be a number in [0, 1), got {rate!r}")

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
            out = [{**row, "chosen": row["response"], "rejected": self.wrong_answer(row, rng)} for row in rows]
            if split == "train" and self.demo_error_rate > 0:
                # its own stream: the pairs are the same at every rate, and the draws prefix-stable
                noise = random.Random(f"{self.name}:{split}:{seed}:demo_errors")
                for row in out:
                    if noise.random() < self.demo_error_rate:
                        row["response"] = row["rejected"]
            return out

    PreferencePairs.name = PREFIX + base.name
    PreferencePairs.__name__ = PreferencePairs.__qualname__ = f"Preference{base.__name__}"
    return PreferencePairs


for _name in [n for n in TASKS.names() if not n.startswith(PREFIX)]:
    TASKS.register(PREFIX + _name, preference_task(TASKS.get(_name)))

__all__ = ["PREFIX", "preference_task"]
