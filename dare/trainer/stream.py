"""Deterministic batch streams: the rows and noise seeds of step `s` are a pure function of
(seed, stage index, s), so a resumed run replays exactly the batches an uninterrupted run sees,
whatever the number of workers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def step_generator(seed: int, stage_index: int, step: int, salt: int = 0) -> torch.Generator:
    # distinct, reproducible streams per (seed, stage, step, purpose)
    return torch.Generator().manual_seed(((seed * 1_000_003 + stage_index) * 1_000_033 + step) * 7 + salt)


class BatchStream:
    """Epoch-wise shuffled rows: global row index g = step * batch_size + i lives in epoch
    g // N at position perm_epoch[g % N]."""

    def __init__(self, rows: Sequence[Any], batch_size: int, seed: int, stage_index: int) -> None:
        if not rows:
            raise ValueError("the training set is empty")
        self.rows, self.batch_size, self.seed, self.stage_index = rows, batch_size, seed, stage_index
        self._perms: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 7919 + self.stage_index * 104729 + epoch)
            self._perms[epoch] = torch.randperm(len(self.rows), generator=g).tolist()
        return self._perms[epoch]

    def rows_at(self, step: int) -> list[Any]:
        n = len(self.rows)
        out = []
        for i in range(self.batch_size):
            g = step * self.batch_size + i
            out.append(self.rows[self._perm(g // n)[g % n]])
        return out

    def noise_seeds(self, step: int) -> torch.Tensor:
        """One seed per row for the estimator's noise `[B]` (see `dare.algorithms.base.row_generators`)."""
        return torch.randint(
            0, 2**62, (self.batch_size,), generator=step_generator(self.seed, self.stage_index, step, 1)
        )


__all__ = ["BatchStream", "step_generator"]
