"""Mirror: copy the prompt's digits in order or reversed -- a task with two correct answers per prompt.

    prompt: "mirror 3071"   response: "3071" or "1703"   ground_truth: "3071"

The prompt lists `num_digits` distinct digits; both the digits in prompt order and the reversed
string are correct (the scorer accepts either, exact match). Each demonstration picks one of the two
at random (reversed with probability `reverse_prob`), so a model trained on them holds two modes per
prompt. That is what makes the task useful for few-step decoding: decoded one token per step the
model commits to one mode, but decoded in one or two steps its per-position marginals (about 50/50
between the modes) are sampled independently and mix them ("3001"), which few-step distillation
(DiDi-Instruct, docs/didi.md) must fix. Canonical key (the split): the prompt digits in order.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from dare.data.tasks.base import TASKS, Problem, Task, extract_answer


@TASKS.register("mirror")
@dataclass(frozen=True)
class Mirror(Task):
    """Knobs: `num_digits` distinct digits per prompt (2-10); demonstrations reversed with
    probability `reverse_prob`."""

    name = "mirror"
    symbols = "0123456789 mirro"

    num_digits: int = 4
    reverse_prob: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 2 <= self.num_digits <= 10:
            raise ValueError(f"mirror: num_digits must be in 2..10, got {self.num_digits}")
        if not 0.0 <= self.reverse_prob <= 1.0:
            raise ValueError(f"mirror: reverse_prob must be in [0, 1], got {self.reverse_prob}")

    def sample_problem(self, rng: random.Random) -> Problem:
        digits = "".join(rng.sample("0123456789", self.num_digits))
        answer = digits[::-1] if rng.random() < self.reverse_prob else digits
        return Problem(digits, f"mirror {digits}", answer, digits)

    def score(self, response: str, ground_truth: Any) -> float:
        answer, digits = extract_answer(response), str(ground_truth)
        return 1.0 if answer is not None and answer in (digits, digits[::-1]) else 0.0


__all__ = ["Mirror"]
