"""A user-written reward, referenced from a recipe as

    rewards:
      - path: examples/custom_reward/my_reward.py:length_penalty
        weight: 0.5
        args: {max_chars: 64}

A reward is a plain function `fn(prompt, response, ground_truth=None, **extra) -> float | dict`.
Keyword arguments after `ground_truth` are filled from the recipe's `args` (checked against this
signature when the recipe loads) and from the sample's extra data fields that it names. This file
is imported on its own (it needs nothing from dare); it runs in the reward worker processes.
"""

from __future__ import annotations

from typing import Any


def length_penalty(prompt: str, response: str, ground_truth: Any = None, max_chars: int = 64) -> float:
    """1.0 for a response of at most `max_chars` characters, falling linearly to 0.0 at twice
    that length (discourages rambling)."""
    n = len(response.strip())
    if n <= max_chars:
        return 1.0
    return max(0.0, 1.0 - (n - max_chars) / max_chars)


def exact_match(prompt: str, response: str, ground_truth: Any = None, ignore_case: bool = True) -> dict[str, Any]:
    """A dict-valued reward: `score`, plus `acc` (averaged into reward/<label>/acc) and `pred`."""
    pred = response.strip()
    want = "" if ground_truth is None else str(ground_truth).strip()
    ok = pred.lower() == want.lower() if ignore_case else pred == want
    return {"score": float(ok), "acc": float(ok), "pred": pred}


def distinct_ratio(prompts: list[str], responses: list[str], ground_truths: list[Any] | None = None) -> list[float]:
    """A batched reward (lists in, one value per sample out): 1.0 for a response that no other
    response in the batch repeats, else 1/count."""
    counts: dict[str, int] = {}
    for r in responses:
        counts[r] = counts.get(r, 0) + 1
    return [1.0 / counts[r] for r in responses]


# declare the batched one (same as decorating it with dare.rewards.batched)
distinct_ratio.batched = True  # type: ignore[attr-defined]
