"""Countdown: combine the given numbers with + - * (and / if enabled) and parentheses to reach
the target, using **every given number exactly once** (the rule of the TinyZero / d1 countdown
verifier).

    prompt:       "24 from 3,8,1"          (target, then the numbers in random order)
    response:     "3*8*1"                  (one correct expression; any correct one scores 1.0)
    ground_truth: {"numbers": [3, 8, 1], "target": 24}

Scoring never calls `eval`: a recursive-descent parser over the grammar

    expr   := term (('+' | '-') term)*
    term   := factor (('*' | '/') factor)*
    factor := NUMBER | '(' expr ')'

evaluates exactly with `Fraction` (so 7/2*2 is 7; division by zero scores 0). There is no unary
minus, numbers have no leading zeros, spaces between tokens are allowed, and any other character,
an answer longer than 256 characters or parentheses nested deeper than 32 score 0. Division is
always accepted in answers (it is a standard countdown operator); the `operators` knob only
controls which operators the generated demonstrations use. Canonical key (the split): sorted
numbers and the target.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from dare.data.tasks.base import TASKS, Problem, Task, extract_answer

MAX_ANSWER_CHARS = 256
MAX_DEPTH = 32
_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}
_ATOM = 3  # precedence of a number or a parenthesised expression


class _Malformed(Exception):
    pass


def _tokenize(text: str) -> list[str]:
    tokens: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == " ":
            i += 1
        elif c in "0123456789":
            j = i
            while j < len(text) and text[j] in "0123456789":
                j += 1
            number = text[i:j]
            if len(number) > 1 and number[0] == "0":
                raise _Malformed(f"leading zero in {number!r}")
            tokens.append(number)
            i = j
        elif c in "+-*/()":
            tokens.append(c)
            i += 1
        else:
            raise _Malformed(f"character {c!r} is not allowed")
    return tokens


class _Parser:
    """Recursive descent over the tokens; collects the numbers it reads."""

    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.pos = 0
        self.numbers: list[int] = []

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        tok = self.peek()
        if tok is None:
            raise _Malformed("unexpected end of expression")
        self.pos += 1
        return tok

    def expr(self, depth: int) -> Fraction:
        value = self.term(depth)
        while self.peek() in ("+", "-"):
            op = self.take()
            rhs = self.term(depth)
            value = value + rhs if op == "+" else value - rhs
        return value

    def term(self, depth: int) -> Fraction:
        value = self.factor(depth)
        while self.peek() in ("*", "/"):
            op = self.take()
            rhs = self.factor(depth)
            if op == "*":
                value = value * rhs
            elif rhs == 0:
                raise _Malformed("division by zero")
            else:
                value = value / rhs
        return value

    def factor(self, depth: int) -> Fraction:
        tok = self.take()
        if tok == "(":
            if depth >= MAX_DEPTH:
                raise _Malformed("parentheses nested too deep")
            value = self.expr(depth + 1)
            if self.take() != ")":
                raise _Malformed("expected ')'")
            return value
        if tok.isdigit():
            self.numbers.append(int(tok))
            return Fraction(int(tok))
        raise _Malformed(f"unexpected {tok!r}")


def evaluate_expression(text: str) -> tuple[Fraction, list[int]] | None:
    """The exact value of an arithmetic expression and the numbers it uses (in order), or None if
    `text` is not a well-formed expression of the grammar above (or divides by zero)."""
    if not isinstance(text, str) or len(text) > MAX_ANSWER_CHARS:
        return None
    try:
        parser = _Parser(_tokenize(text))
        value = parser.expr(0)
        if parser.peek() is not None:
            return None  # trailing tokens, e.g. an unmatched ')'
    except _Malformed:
        return None
    return value, parser.numbers


@TASKS.register("countdown")
@dataclass(frozen=True)
class Countdown(Task):
    """Knobs: `num_numbers` given numbers drawn uniformly from [`min_number`, `max_number`], a
    positive integer target <= `max_target`, demonstrations built from `operators`."""

    name = "countdown"
    symbols = "0123456789 +-*/(),frmo"

    num_numbers: int = 3
    min_number: int = 1
    max_number: int = 20
    max_target: int = 100
    operators: str = "+-*"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_numbers < 2:
            raise ValueError(f"countdown: num_numbers must be >= 2, got {self.num_numbers}")
        if not 1 <= self.min_number <= self.max_number:
            raise ValueError(f"countdown: need 1 <= min_number <= max_number, got {self.min_number}, {self.max_number}")
        if self.max_target < 1:
            raise ValueError(f"countdown: max_target must be >= 1, got {self.max_target}")
        if not self.operators or set(self.operators) - set(_PREC):
            raise ValueError(f"countdown: operators must be a non-empty subset of '+-*/', got {self.operators!r}")

    def _random_expression(self, numbers: list[int], rng: random.Random) -> tuple[Fraction, str, int]:
        """A random binary tree over `numbers` (in this order): (value, text with the fewest
        parentheses, precedence of the top node)."""
        if len(numbers) == 1:
            return Fraction(numbers[0]), str(numbers[0]), _ATOM
        cut = rng.randint(1, len(numbers) - 1)
        op = rng.choice(self.operators)
        lv, lt, lp = self._random_expression(numbers[:cut], rng)
        rv, rt, rp = self._random_expression(numbers[cut:], rng)
        prec = _PREC[op]
        if lp < prec:
            lt = f"({lt})"
        # a-(b-c) and a/(b*c) need their parentheses; a+(b-c) and a*(b/c) do not.
        if rp < prec or (rp == prec and op in "-/"):
            rt = f"({rt})"
        if op == "+":
            value = lv + rv
        elif op == "-":
            value = lv - rv
        elif op == "*":
            value = lv * rv
        elif rv == 0:
            raise _Malformed("division by zero")  # caught in sample_problem, which redraws
        else:
            value = lv / rv
        return value, f"{lt}{op}{rt}", prec

    def sample_problem(self, rng: random.Random) -> Problem:
        while True:
            numbers = [rng.randint(self.min_number, self.max_number) for _ in range(self.num_numbers)]
            try:
                value, text, _ = self._random_expression(numbers, rng)
            except _Malformed:
                continue
            if value.denominator == 1 and 1 <= value <= self.max_target:
                break
        target = int(value)
        shown = numbers[:]
        rng.shuffle(shown)
        key = ",".join(map(str, sorted(numbers))) + f"={target}"
        prompt = f"{target} from {','.join(map(str, shown))}"
        return Problem(key, prompt, text, {"numbers": shown, "target": target})

    def score(self, response: str, ground_truth: Any) -> float:
        answer = extract_answer(response)
        if not answer:
            return 0.0
        result = evaluate_expression(answer)
        if result is None:
            return 0.0
        value, used = result
        numbers = [int(x) for x in ground_truth["numbers"]]
        if sorted(used) != sorted(numbers):
            return 0.0
        return 1.0 if value == int(ground_truth["target"]) else 0.0


__all__ = ["Countdown", "evaluate_expression"]
