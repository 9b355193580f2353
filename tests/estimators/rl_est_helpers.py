"""Shared helpers of the estimator / RL-loss tests: a hand-built RL batch and hand log-probs."""

from __future__ import annotations

import torch

V = 64
EOS = PAD = V - 2  # the tiny presets' eos = pad = V-2, mask = V-1


def make_rl_batch(prompt_lens=(3, 5, 6), resp_lens=(4, 9, 10), P=6, R=10, seed=0) -> dict[str, torch.Tensor]:
    """An RL batch as the trainer passes it: left-padded prompt, then R generated tokens; the
    response is `resp_len` tokens, the last one EOS, followed by EOS to the end (resp_len == R:
    no EOS generated, the response fills the window). response_mask covers the response
    including its first EOS."""
    g = torch.Generator().manual_seed(seed)
    B, L = len(prompt_lens), P + R
    ids = torch.full((B, L), PAD, dtype=torch.long)
    attn = torch.zeros(B, L, dtype=torch.long)
    resp = torch.zeros(B, L, dtype=torch.bool)
    for b, (p, r) in enumerate(zip(prompt_lens, resp_lens)):
        ids[b, P - p : P] = torch.randint(0, V - 2, (p,), generator=g)
        ids[b, P:] = torch.randint(0, V - 2, (R,), generator=g)
        if r < R:
            ids[b, P + r - 1 :] = EOS  # first EOS at P + r - 1, EOS after it
        attn[b, P - p :] = 1
        resp[b, P : P + r] = True
    return {"input_ids": ids, "attention_mask": attn, "response_mask": resp, "uid": torch.arange(B) // 2}


def hand_positions(valid_row: torch.Tensor, prompt_len: int, block_size: int) -> torch.Tensor:
    """Response-aligned positions of one row, with a loop: real tokens 0, 1, ... shifted so the
    response starts on a block boundary; pads 0 (+ the shift)."""
    shift = (-prompt_len) % block_size
    pos, n = [], 0
    for v in valid_row.tolist():
        pos.append((n if v else 0) + shift)
        n += int(v)
    return torch.tensor(pos)
