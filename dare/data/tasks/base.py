"""The `Task` base class, the task registry and the shared tokenizer of the built-in tasks.

A built-in task generates its own data by code: `generate(split, n, seed)` returns rows

    {"prompt": str, "response": str, "ground_truth": <JSON value>, "task": <task name>}

where `response` is one correct demonstration and `score(response_text, ground_truth)` verifies
any answer (1.0 correct, 0.0 otherwise; malformed answers score 0.0 and never raise).

Splits. Every problem has a canonical key (e.g. the multiset of countdown numbers plus the target,
so a reordering of the same problem is the same problem). A stable hash of `"<task>:<key>"` sends
the key to `eval` with probability `eval_fraction`, else to `train`; the two splits are therefore
disjoint for every seed, and a seed only decides which problems of its split are drawn. Rows
within one call are distinct problems; if the split's problem space runs out, `generate` raises.

Tokenizer. All built-in tasks share one character-level tokenizer over `BUILTIN_SYMBOLS`, so token
ids are the same whichever task (or mix of tasks) a recipe trains on, and a checkpoint trained on
one task can be evaluated on another. Each task lists the `symbols` it uses (a subset, checked by
the tests). `BUILTIN_SYMBOLS` is append-only: reordering it would change the ids of saved models.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from transformers import PreTrainedTokenizerFast

from dare.models.tokenizer import build_tokenizer
from dare.registry import Registry

SPLITS = ("train", "eval")

# Append-only (see the module docstring). ' ' is a symbol too.
BUILTIN_SYMBOLS = "0123456789abcdefghijklmnopqrstuvwxyz +-*/=(),.:"

# Special-token text a decoded response may still carry when decoded without skip_special_tokens.
_STOP_MARKERS = ("<|eos|>", "<|eot|>", "<|pad|>")


def builtin_tokenizer() -> PreTrainedTokenizerFast:
    """The character-level tokenizer shared by every built-in task (a fresh object per call)."""
    return build_tokenizer(BUILTIN_SYMBOLS, level="char")


def extract_answer(text: Any) -> str | None:
    """The answer part of a model response: the text before the first stop marker (`<|eos|>`,
    `<|eot|>`, `<|pad|>`, in case the caller decoded without skipping special tokens), stripped of
    surrounding whitespace. Returns None when `text` is not a string. Scorers apply no other
    leniency: the stripped text must be exactly a well-formed answer."""
    if not isinstance(text, str):
        return None
    for marker in _STOP_MARKERS:
        text = text.split(marker, 1)[0]
    return text.strip()


def split_of(task: str, key: str, eval_fraction: float) -> str:
    """`"eval"` or `"train"`: a stable hash of the problem's canonical key (not Python's salted
    `hash`), so the assignment is the same on every machine and run."""
    digest = hashlib.sha256(f"{task}:{key}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1)
    return "eval" if u < eval_fraction else "train"


@dataclass(frozen=True)
class Problem:
    """One generated problem: its canonical `key` (decides the split), the prompt, one correct
    demonstration, and what the scorer needs."""

    key: str
    prompt: str
    response: str
    ground_truth: Any


@dataclass(frozen=True)
class Task:
    """Base of the built-in tasks. Subclasses are frozen dataclasses whose fields are difficulty
    knobs (with defaults), and implement `sample_problem` and `score`.

    Attributes:
        name: registry name (`builtin:<name>` in a recipe).
        symbols: every character a prompt or response of this task may contain.
        eval_fraction: share of the problem space (by canonical key) held out for `eval`.
    """

    name: ClassVar[str]
    symbols: ClassVar[str]
    eval_fraction: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 < self.eval_fraction < 1.0:
            raise ValueError(f"{self.name}: eval_fraction must be in (0, 1), got {self.eval_fraction!r}")

    def sample_problem(self, rng: random.Random) -> Problem:
        """Draw one problem (any split) from `rng`."""
        raise NotImplementedError

    def score(self, response: str, ground_truth: Any) -> float:
        """1.0 if `response` is a correct answer for `ground_truth`, else 0.0 (never raises on a
        malformed response)."""
        raise NotImplementedError

    def answer(self, prompt: str) -> str:
        """The answer the task's ground truth holds for `prompt`, computed from the prompt alone
        (the target of the differentiable `task_match` reward). Only tasks whose prompt fixes one
        answer define it (`has_answer`); countdown (many expressions reach the target) does not.

        Raises:
            ValueError: a prompt this task does not generate.
            NotImplementedError: the task defines no single answer.
        """
        raise NotImplementedError(f"{self.name}: a prompt of this task has no single answer")

    def knobs(self) -> dict[str, Any]:
        """The knobs set to non-default values: what `get_task(name, **knobs)` needs to rebuild
        this task (its scorer included, e.g. sort's `direction`)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != f.default}

    def generate(self, split: str, n: int, seed: int = 0) -> list[dict[str, Any]]:
        """`n` distinct problems of `split` ("train" or "eval") as rows
        `{"prompt", "response", "ground_truth", "task"}` (plus `"task_args": self.knobs()` when a
        knob is not at its default, so the row's scorer is this task's: `row_task(row)`); the same
        (knobs, split, n, seed) always give the same rows, and a larger `n` extends a smaller one
        (same prefix).

        Raises:
            ValueError: unknown split, negative n, or fewer than n distinct problems found in the
                split (the knobs leave too small a problem space).
        """
        if split not in SPLITS:
            raise ValueError(f"{self.name}: split must be one of {SPLITS}, got {split!r}")
        if n < 0:
            raise ValueError(f"{self.name}: n must be >= 0, got {n}")
        # A str seed is hashed by `random` deterministically (sha512), independent of PYTHONHASHSEED.
        rng = random.Random(f"{self.name}:{split}:{seed}")
        knobs = self.knobs()
        rows: list[dict[str, Any]] = []
        seen: set[str] = set()
        max_draws = 1000 + 200 * n
        for _ in range(max_draws):
            if len(rows) == n:
                break
            p = self.sample_problem(rng)
            if p.key in seen or split_of(self.name, p.key, self.eval_fraction) != split:
                continue
            seen.add(p.key)
            rows.append({"prompt": p.prompt, "response": p.response, "ground_truth": p.ground_truth, "task": self.name})
            if knobs:
                rows[-1]["task_args"] = dict(knobs)
        if len(rows) < n:
            raise ValueError(
                f"{self.name}: found only {len(rows)} distinct {split} problems in {max_draws} draws, "
                f"asked for n={n}; widen the task's difficulty knobs or ask for fewer rows"
            )
        return rows

    def tokenizer(self) -> PreTrainedTokenizerFast:
        """The shared built-in tokenizer (see `builtin_tokenizer`)."""
        return builtin_tokenizer()


TASKS: Registry[type[Task]] = Registry("task")


def get_task(name: str, **knobs: Any) -> Task:
    """The registered task `name`, built with difficulty `knobs` (its dataclass fields).

    Raises:
        KeyError: unknown name (lists the known ones).
        TypeError: a knob the task does not have.
    """
    cls = TASKS.get(name)
    allowed = sorted(f.name for f in fields(cls))
    unknown = sorted(set(knobs) - set(allowed))
    if unknown:
        raise TypeError(f"task {name!r} has no knob(s) {unknown}; its knobs: {allowed}")
    return cls(**knobs)


def has_answer(task: type[Task] | Task) -> bool:
    """Whether `task` defines `Task.answer` (its prompt fixes one answer)."""
    cls = task if isinstance(task, type) else type(task)
    return cls.answer is not Task.answer


def row_task(row: dict[str, Any]) -> Task:
    """The built-in task that generated `row` (its `task` name and `task_args` knobs)."""
    return _cached_task(row["task"], json.dumps(row.get("task_args") or {}, sort_keys=True))


@functools.cache
def _cached_task(name: str, knobs_json: str) -> Task:
    return get_task(name, **json.loads(knobs_json))


__all__ = [
    "BUILTIN_SYMBOLS",
    "SPLITS",
    "TASKS",
    "Problem",
    "Task",
    "builtin_tokenizer",
    "extract_answer",
    "get_task",
    "has_answer",
    "row_task",
    "split_of",
]
