"""`task_match`: a task-aligned differentiable reward for the built-in tasks.

The target response of each row is computed from its prompt tokens (decoded with the built-in
tokenizer) by the task's own `Task.answer` (`dare.data.tasks`, the answer its rows' ground truth
holds) -- sort: the sorted digits; addition: the sum; sudoku: the puzzle's solution -- and laid out as the policy's responses are laid out (answer
tokens, then EOS, then EOS padding to `gen_length`; see `dare.data.formatting.collate_sft`):

    target[b, i]  = token id of the i-th response token (answer + EOS + EOS padding)
    scored[b, i]  = i < len(answer) + 1             (the answer and its terminating EOS; the whole
                                                     response with include_padding=True)
    r_b           = sum_i scored[b, i] * token_probs[b, i, target[b, i]] / sum_i scored[b, i]

i.e. the expected fraction of correct tokens under independent positions. Fed the
straight-through one-hot of a hard sample (DRAKES) its value is the sample's per-token accuracy
over the answer positions (1.0 exactly when the decoded answer is exact-match correct: the
verifier reads the response up to its first EOS); its gradient is d r / d probs = scored / n at
the target entries. With `reduce: prod` the reward is prod_i probs[target_i] over the scored
positions instead: on a hard sample the exact-match indicator itself, but its gradient vanishes
unless at most one position is wrong (useful only near a solved task).

Countdown has many correct answers (any expression reaching the target), so it has no single
target and defines no `answer`; a new task whose prompt determines its answer defines
`answer(prompt)` and is supported. The reward uses the built-in tokenizer (all built-in tasks share it).
"""

from __future__ import annotations

from typing import Any

import torch

from dare.data.tasks import TASKS, builtin_tokenizer, get_task, has_answer
from dare.rewards.base import register_reward
from dare.rewards.differentiable import KIND


class TaskMatchReward:
    """r = mean over the scored positions of token_probs[target] (or their product); see the module docstring."""

    def __init__(self, task: str, include_padding: bool = False, reduce: str = "mean") -> None:
        solver = get_task(task)
        if not has_answer(solver):
            known = ", ".join(name for name, cls in TASKS.items() if has_answer(cls))
            raise KeyError(f"task_match: task {task!r} has no single answer per prompt; tasks with one: {known}")
        self.solve = solver.answer
        if reduce not in ("mean", "prod"):
            raise ValueError(f"task_match: reduce must be 'mean' or 'prod', got {reduce!r}")
        self.task, self.include_padding, self.reduce = task, include_padding, reduce
        self.tokenizer = builtin_tokenizer()
        self._cache: dict[tuple[int, ...], list[int]] = {}

    def answer_ids(self, prompt_ids: list[int]) -> list[int]:
        """Token ids of the target answer + EOS for one prompt's (unpadded) ids."""
        key = tuple(prompt_ids)
        if key not in self._cache:
            tok = self.tokenizer
            prompt = tok.decode(prompt_ids, skip_special_tokens=True)
            answer = self.solve(prompt)
            self._cache[key] = [*tok(answer, add_special_tokens=False)["input_ids"], tok.eos_token_id]
        return self._cache[key]

    def targets(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, L: int) -> tuple[torch.Tensor, torch.Tensor]:
        """target `[B, L]` long and scored `[B, L]` bool for left-padded prompts `[B, P]`."""
        B = prompt_ids.shape[0]
        target = torch.full((B, L), self.tokenizer.eos_token_id, dtype=torch.long)
        scored = torch.zeros(B, L, dtype=torch.bool)
        for b in range(B):
            ids = self.answer_ids(prompt_ids[b][prompt_mask[b].bool()].tolist())[:L]  # truncated like collate_sft
            target[b, : len(ids)] = torch.tensor(ids)
            scored[b, : L if self.include_padding else len(ids)] = True
        return target, scored

    def __call__(
        self, token_probs: torch.Tensor, prompt_ids: torch.Tensor | None = None, prompt_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        if prompt_ids is None:
            raise ValueError("task_match needs the prompt (prompt_ids): the target answer is computed from it")
        B, L, V = token_probs.shape
        if V < len(self.tokenizer):
            raise ValueError(f"task_match: token_probs has V={V} < the built-in tokenizer's {len(self.tokenizer)}")
        pm = torch.ones_like(prompt_ids) if prompt_mask is None else prompt_mask
        target, scored = self.targets(prompt_ids.cpu(), pm.cpu(), L)
        target, scored = target.to(token_probs.device), scored.to(token_probs.device)
        p = token_probs.gather(-1, target.unsqueeze(-1)).squeeze(-1)  # [B, L]: probability of the target token
        if self.reduce == "prod":
            return torch.where(scored, p, torch.ones_like(p)).prod(-1)
        return (p * scored).sum(-1) / scored.sum(-1)


@register_reward("task_match", kind=KIND)
def task_match(task: str | None = None, include_padding: bool = False, reduce: str = "mean") -> TaskMatchReward:
    """The task-aligned reward of a built-in task (`task`: sort, addition, sudoku; a DRAKES stage
    fills it from the recipe's `data.train: builtin:<task>` when unset)."""
    if task is None:
        raise ValueError("task_match: set args.task (sort, addition, sudoku) or train on data.train: builtin:<task>")
    return TaskMatchReward(task, include_padding=include_padding, reduce=reduce)


def task_from_data(train: Any) -> str | None:
    """`sort` from a recipe's `data.train` of `builtin:sort` (a single built-in task), else None."""
    if isinstance(train, str) and train.startswith("builtin:"):
        name = train.removeprefix("builtin:")
        return name if name in TASKS and has_answer(TASKS.get(name)) else None
    return None


__all__ = ["TaskMatchReward", "task_from_data", "task_match"]
