"""Sudoku 4x4: fill the blanks so every row, column and 2x2 box holds 1-4 once.

    prompt:       "1.3..4.2.1..3..1"      (16 cells row by row, '.' = blank)
    response:     "1234341221434321"      (the 16 digits of a completed grid)
    ground_truth: {"puzzle": "1.3..4.2.1..3..1", "solution": "1234341221434321"}

The scorer verifies the answer (16 digits 1-4, each row, column and box a permutation of 1234,
every given kept) rather than comparing with the stored solution, so any valid completion of a
puzzle with several solutions scores 1.0; `solution` is the demonstration, kept for reference.
With `unique=True` (default) generated puzzles have exactly one solution. Canonical key (the
split): the puzzle string.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from functools import cache
from typing import Any

from dare.data.tasks.base import TASKS, Problem, Task, extract_answer

BLANK = "."
_DIGITS = "1234"
# The 12 units (4 rows, 4 columns, 4 boxes) as tuples of cell indices 0..15.
_UNITS = (
    [tuple(4 * r + c for c in range(4)) for r in range(4)]
    + [tuple(4 * r + c for r in range(4)) for c in range(4)]
    + [tuple(4 * (br + r) + bc + c for r in range(2) for c in range(2)) for br in (0, 2) for bc in (0, 2)]
)


def is_valid_grid(grid: str) -> bool:
    """True if `grid` is 16 digits 1-4 whose rows, columns and boxes each hold 1-4 once."""
    if len(grid) != 16 or any(c not in _DIGITS for c in grid):
        return False
    return all(len({grid[i] for i in unit}) == 4 for unit in _UNITS)


@cache
def all_grids() -> tuple[str, ...]:
    """Every valid completed 4x4 grid (there are 288), in lexicographic order."""
    rows = ["".join(p) for p in itertools.permutations(_DIGITS)]
    grids: list[str] = []

    def extend(prefix: str) -> None:  # add rows whose columns do not repeat a digit above them
        if len(prefix) == 16:
            if is_valid_grid(prefix):
                grids.append(prefix)
            return
        for row in rows:
            if all(row[c] not in prefix[c::4] for c in range(4)):
                extend(prefix + row)

    extend("")
    return tuple(grids)


@cache
def _grids_with() -> dict[tuple[int, str], int]:
    """(cell, digit) -> bitset over `all_grids()` of the grids with that digit in that cell."""
    bits = {(i, d): 0 for i in range(16) for d in _DIGITS}
    for k, grid in enumerate(all_grids()):
        for i, d in enumerate(grid):
            bits[i, d] |= 1 << k
    return bits


def solutions(puzzle: str) -> list[str]:
    """All valid completions of `puzzle` (16 cells, '.' for blanks, givens 1-4)."""
    if len(puzzle) != 16 or any(c not in _DIGITS + BLANK for c in puzzle):
        raise ValueError(f"sudoku: a puzzle is 16 characters from '1234.', got {puzzle!r}")
    table = _grids_with()
    match = (1 << len(all_grids())) - 1
    for i, c in enumerate(puzzle):
        if c != BLANK:
            match &= table[i, c]
    return [g for k, g in enumerate(all_grids()) if match >> k & 1]


@TASKS.register("sudoku")
@dataclass(frozen=True)
class Sudoku(Task):
    """Knobs: between `min_blanks` and `max_blanks` blank cells; `unique` keeps only puzzles with
    exactly one solution (4x4 puzzles with up to 12 blanks can be unique)."""

    name = "sudoku"
    symbols = "1234."

    min_blanks: int = 4
    max_blanks: int = 10
    unique: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.min_blanks <= self.max_blanks <= 16:
            raise ValueError(
                f"sudoku: need 1 <= min_blanks <= max_blanks <= 16, got {self.min_blanks}, {self.max_blanks}"
            )
        if self.unique and self.min_blanks > 12:
            raise ValueError(f"sudoku: no 4x4 puzzle with {self.min_blanks} blanks has a unique solution")

    def sample_problem(self, rng: random.Random) -> Problem:
        while True:
            solution = rng.choice(all_grids())
            blanks = set(rng.sample(range(16), rng.randint(self.min_blanks, self.max_blanks)))
            puzzle = "".join(BLANK if i in blanks else c for i, c in enumerate(solution))
            if not self.unique or len(solutions(puzzle)) == 1:
                return Problem(puzzle, puzzle, solution, {"puzzle": puzzle, "solution": solution})

    def answer(self, prompt: str) -> str:
        """The puzzle's solution (the first in lexicographic order if it has several; puzzles are
        unique by default)."""
        found = solutions(prompt.strip())
        if not found:
            raise ValueError(f"sudoku: puzzle {prompt!r} has no solution")
        return found[0]

    def score(self, response: str, ground_truth: Any) -> float:
        answer = extract_answer(response)
        if answer is None or not is_valid_grid(answer):
            return 0.0
        puzzle = ground_truth["puzzle"]
        return 1.0 if all(p == BLANK or p == c for p, c in zip(puzzle, answer)) else 0.0


__all__ = ["Sudoku", "all_grids", "is_valid_grid", "solutions"]
