"""Addition and sorting: the easy built-in tasks (a tiny model learns them on CPU in minutes).

addition -- multi-digit addition, exact match of the canonical decimal sum (no sign, no leading
zeros, no separators):

    prompt: "123+45"   response: "168"   ground_truth: "168"

Canonical key (the split): the unordered pair of operands, so "45+123" is the same problem.

sort -- sort a list of digits ascending, exact match:

    prompt: "sort 31979"   response: "13799"   ground_truth: "13799"

Canonical key (the split): the multiset of digits, so eval lists are digit multisets never seen
in training.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from dare.data.tasks.base import TASKS, Problem, Task, extract_answer


@TASKS.register("addition")
@dataclass(frozen=True)
class Addition(Task):
    """Knobs: each operand has between `min_digits` and `max_digits` digits (no leading zeros)."""

    name = "addition"
    symbols = "0123456789+"

    min_digits: int = 1
    max_digits: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.min_digits <= self.max_digits:
            raise ValueError(f"addition: need 1 <= min_digits <= max_digits, got {self.min_digits}, {self.max_digits}")

    def _operand(self, rng: random.Random) -> int:
        digits = rng.randint(self.min_digits, self.max_digits)
        return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)

    def sample_problem(self, rng: random.Random) -> Problem:
        a, b = self._operand(rng), self._operand(rng)
        lo, hi = sorted((a, b))
        answer = self.answer(f"{a}+{b}")
        return Problem(f"{lo}+{hi}", f"{a}+{b}", answer, answer)

    def answer(self, prompt: str) -> str:
        """ "123+45" -> "168"."""
        a, sep, b = prompt.strip().partition("+")
        if not sep or not a.isdigit() or not b.isdigit():
            raise ValueError(f"addition: expected a prompt '<int>+<int>', got {prompt!r}")
        return str(int(a) + int(b))

    def score(self, response: str, ground_truth: Any) -> float:
        return 1.0 if extract_answer(response) == str(ground_truth) else 0.0


@TASKS.register("sort")
@dataclass(frozen=True)
class Sort(Task):
    """Knobs: lists of `min_len` to `max_len` digits, each drawn uniformly from 0-9;
    `direction`: "ascending" (one correct answer) or "either" (ascending and descending are both
    correct, demonstrations 50/50: two modes per prompt, the few-step distillation task of
    docs/didi.md -- decoded several positions per step, a model's per-position marginals mix the
    two orders, "1379" / "9731" -> "1771")."""

    name = "sort"
    symbols = "0123456789 sort"

    min_len: int = 3
    max_len: int = 8
    direction: str = "ascending"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.min_len <= self.max_len:
            raise ValueError(f"sort: need 1 <= min_len <= max_len, got {self.min_len}, {self.max_len}")
        if self.direction not in ("ascending", "either"):
            raise ValueError(f"sort: direction must be 'ascending' or 'either', got {self.direction!r}")

    def sample_problem(self, rng: random.Random) -> Problem:
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(self.min_len, self.max_len)))
        answer = self.answer(f"sort {digits}")
        response = answer[::-1] if self.direction == "either" and rng.random() < 0.5 else answer
        return Problem(answer, f"sort {digits}", response, answer)

    def answer(self, prompt: str) -> str:
        """ "sort 31979" -> "13799" (ascending, what the ground truth holds, whatever `direction`)."""
        head, _, digits = prompt.strip().rpartition(" ")
        if head != "sort" or not digits.isdigit():
            raise ValueError(f"sort: expected a prompt 'sort <digits>', got {prompt!r}")
        return "".join(sorted(digits))

    def score(self, response: str, ground_truth: Any) -> float:
        answer, truth = extract_answer(response), str(ground_truth)
        return 1.0 if answer == truth or (self.direction == "either" and answer == truth[::-1]) else 0.0


__all__ = ["Addition", "Sort"]
