"""`Rollout`: the output of `dare.sampling.generate` — sequences, masks, the decoding trajectory
(what trajectory-based RL needs) and speed statistics.

Shapes: N = prompts x num_generations rows (prompt-major), P padded prompt length,
L = gen_length.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dare.sampling.config import SamplingConfig


@dataclass
class Rollout:
    """Generated responses of one `generate` call.

    Attributes:
        sequences: `[N, P+L]` left-padded prompt followed by the response.
        attention_mask: `[N, P+L]` bool, prompt_mask followed by response_mask.
        prompt_ids: `[N, P]` left-padded prompts (pad_token_id on the left).
        prompt_mask: `[N, P]` bool, False on padding.
        response_ids: `[N, L]`; every token after the first end id (eos_token_ids + extra) is the
            first eos id.
        response_mask: `[N, L]` bool, True up to and including the first end id.
        decode_step: `[N, L]` long, the decoding iteration (0-based, counted per row) at which the
            model unmasked each token; tokens of one iteration share a step. -1 outside the
            response mask.
        confidence: `[N, L]` float64, the model's probability of the token when it was unmasked:
            softmax of the processed logits (guidance applied, mask and suppressed ids removed),
            before temperature and top-k/top-p. NaN outside the response mask.
        prompt_index: `[N]` long, the prompt each row answers.
        nfe: number of model forward passes (a guided pass counts once).
        wall_time: seconds spent in `generate`, the device synchronised.
        config: the resolved `SamplingConfig` that produced the rollout.
        extras: algorithm-specific per-token tensors (first_hitting: "hitting_time" `[N, L]`).
        policy_version: the version of the weights that sampled it (a `RolloutBackend` sets it;
            None from a bare `generate` call).
    """

    sequences: torch.Tensor
    attention_mask: torch.Tensor
    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    decode_step: torch.Tensor
    confidence: torch.Tensor
    prompt_index: torch.Tensor
    nfe: int
    wall_time: float
    config: SamplingConfig
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    policy_version: int | None = None

    @property
    def num_tokens(self) -> int:
        """Response tokens generated (inside the response mask)."""
        return int(self.response_mask.sum())

    @property
    def tokens_per_second(self) -> float:
        return self.num_tokens / self.wall_time if self.wall_time > 0 else float("inf")

    @property
    def nfe_per_token(self) -> float:
        """Forward passes per generated token of the whole batch (lower = more parallel)."""
        return self.nfe / max(self.num_tokens, 1)

    def __len__(self) -> int:
        return self.sequences.shape[0]


__all__ = ["Rollout"]
