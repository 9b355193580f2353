"""The per-step decisions of a masked-diffusion algorithm (`Policy`): the block engine
(`dare.sampling.engine`) owns the loop, caches, trajectory and EOS stopping, and calls `plan`,
`propose` and `select` at every step. A policy that `remasks` (MDPO's RCR) may also send decoded
tokens back to mask: the engine then ranks them together with the step's proposals."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch

if TYPE_CHECKING:
    from dare.sampling.config import SamplingConfig


class Policy:
    """Per-step decisions of a masked-diffusion algorithm (see module docstring), for one decode:
    `config` holds its settings, `generator` is the source of every random draw.

    Shapes: N rows, L positions of the current block, V vocabulary.

    Attributes:
        remasks: False (the default): a committed token stays. True (RCR): every step ranks the
            decoded tokens of the response up to the current block's end together with the masked
            positions; `select` then gets the columns [response start, block end), with the
            decoded ones `eligible` too and carrying the confidence they were drawn with, and
            `k` = decoded + planned tokens: it returns the positions that hold a token after the
            step, and the decoded ones it leaves out go back to mask (redrawn at a later step).
    """

    remasks: ClassVar[bool] = False

    def __init__(self, config: SamplingConfig, generator: torch.Generator | None) -> None:
        self.config = config
        self.generator = generator

    def plan(self, remaining: torch.Tensor, step: int, num_steps: int) -> torch.Tensor | None:
        """Tokens to unmask per row `[N]` at `step` of a block with `num_steps` steps, given the
        masks `remaining` per row `[N]`; None when the count is not fixed in advance. The engine
        skips the forward pass of a step that plans zero tokens for every row."""
        return None

    def takes_all(self, step: int, num_steps: int) -> bool:
        """True when `select` at `step` commits every eligible position whatever the logits (the
        engine then knows, without a sync, that the block is done after this step)."""
        return False

    def end_confidence_factor(self, step: int, num_steps: int) -> float | None:
        """The factor on the confidence of a proposed eos token at `step` (EOSER), or None for none."""
        return None

    def propose(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Candidate tokens `[N, L]` and their confidence `[N, L]` (float64; higher = unmask
        first) from processed float64 logits `[N, L, V]`."""
        raise NotImplementedError

    def select(
        self, conf: torch.Tensor, eligible: torch.Tensor, k: torch.Tensor | None, step: int, num_steps: int
    ) -> torch.Tensor:
        """Positions to commit, bool `[N, L]` (the engine ANDs it with `eligible`). `k` is the
        output of `plan` for this step."""
        raise NotImplementedError


__all__ = ["Policy"]
