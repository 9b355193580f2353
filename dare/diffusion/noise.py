"""Forward noising of masked diffusion LMs: masking probabilities, masks and noised inputs.

The forward process of a masked diffusion LM with the linear schedule (alpha_t = 1 - t) replaces
each token independently by [MASK] with probability t. Training draws t per sequence (LLaDA,
Nie et al. 2025, arXiv 2502.09992, `GUIDELINES.md`) or per block (BD3-LM, Arriola et al. 2025,
arXiv 2503.09573) and keeps it away from 0 with

    t ~ U(0, 1),    p_mask = (1 - eps) * t + eps,    eps = 1e-3,

so the 1/p_mask importance weight of the ELBO stays bounded.

Only *eligible* positions are ever masked (response tokens in SFT; the prompt and left padding are
never noised). Every function takes an explicit `torch.Generator` and draws its random numbers on
the generator's device, then moves them to the data's device: the same seed gives the same mask on
CPU and GPU, and no global RNG is touched.

Shapes: B batch, L sequence length, K mask samples per sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DEFAULT_EPS = 1e-3


@dataclass(frozen=True)
class MaskedNoise:
    """One draw of the forward process.

    Attributes:
        noisy_ids: `[B, L]` input ids with the masked positions replaced by the mask token.
        mask: `[B, L]` bool, True where a token was replaced by [MASK].
        p_mask: `[B, L]` float, the masking probability each position was drawn with (per sequence
            or per block); the ELBO weights a masked position's loss by `1 / p_mask`.
    """

    noisy_ids: torch.Tensor
    mask: torch.Tensor
    p_mask: torch.Tensor


def uniform01(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """U[0, 1) drawn on the generator's device (so results do not depend on the data's device)."""
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def sample_p_mask(
    batch_size: int,
    generator: torch.Generator,
    *,
    eps: float = DEFAULT_EPS,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Masking probabilities `[B]`: t ~ U(0, 1), p_mask = (1 - eps) t + eps, i.e. p_mask ~ U(eps, 1).

    LLaDA's training recipe (`GUIDELINES.md`, `forward_process`), eps = 1e-3.
    """
    if not 0.0 <= eps < 1.0:
        raise ValueError(f"eps must be in [0, 1), got {eps}")
    t = uniform01((batch_size,), generator, torch.device(device or "cpu"))  # [B]
    return (1.0 - eps) * t + eps


def bernoulli_mask(eligible: torch.Tensor, p_mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mask each eligible position independently with probability `p_mask`.

    Args:
        eligible: `[B, L]` bool, positions that may be masked.
        p_mask: `[B]` (one probability per sequence) or `[B, L]` (per position, e.g. per block).

    Returns:
        `[B, L]` bool mask, False wherever `eligible` is False.
    """
    p_mask = p_mask.to(eligible.device)
    if p_mask.dim() == 1:
        p_mask = p_mask[:, None]  # [B] -> [B, 1]
    u = uniform01(tuple(eligible.shape), generator, eligible.device)  # [B, L]
    return eligible.bool() & (u < p_mask)


def apply_mask(input_ids: torch.Tensor, mask: torch.Tensor, mask_token_id: int) -> torch.Tensor:
    """`[B, L]` ids with `mask` positions replaced by `mask_token_id`."""
    return torch.where(mask, torch.full_like(input_ids, mask_token_id), input_ids)


def forward_noise(
    input_ids: torch.Tensor,
    eligible: torch.Tensor,
    mask_token_id: int,
    generator: torch.Generator,
    *,
    eps: float = DEFAULT_EPS,
    p_mask: torch.Tensor | None = None,
) -> MaskedNoise:
    """Noise a batch with one masking probability per sequence (LLaDA pre-training / SFT).

    Draws p_mask_b = (1 - eps) t_b + eps with t_b ~ U(0, 1) (unless `p_mask` `[B]` is given, e.g. a
    fixed grid for evaluation), then masks every eligible token of sequence b with probability
    p_mask_b. Positions outside `eligible` (prompt, padding) stay clean.

    Args:
        input_ids: `[B, L]` clean token ids x_0.
        eligible: `[B, L]` bool, positions that may be masked.
    """
    B = input_ids.shape[0]
    if p_mask is None:
        p_mask = sample_p_mask(B, generator, eps=eps, device=input_ids.device)  # [B]
    p_mask = p_mask.to(input_ids.device, torch.float32)
    mask = bernoulli_mask(eligible, p_mask, generator)  # [B, L]
    p_full = p_mask[:, None].expand(input_ids.shape)  # [B] -> [B, L]
    return MaskedNoise(apply_mask(input_ids, mask, mask_token_id), mask, p_full)


# ---------------------------------------------------------------------------------------------
# Block diffusion: one noise level per block
# ---------------------------------------------------------------------------------------------


def block_ids(position_ids: torch.Tensor, block_size: int) -> torch.Tensor:
    """Block index of every token, `position // block_size` `[B, L]`.

    The same rule the block-attention models use by default (SDAR; `dare.models.layers`), so the
    blocks trained on are the blocks decoded.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    return torch.div(position_ids, block_size, rounding_mode="floor")


def response_aligned_positions(valid: torch.Tensor, prompt_len: torch.Tensor, block_size: int) -> torch.Tensor:
    """Positions of a block-attention model whose blocks start at the response: `[B, L]`.

    Left-padding aware positions (real tokens 0, 1, ...; pads 0) shifted per row by
    `(-prompt_len) % block_size`, so the first response token sits on a block boundary. RoPE is
    relative, so the shift changes nothing but block membership; it makes every row's response
    blocks line up in a batch of different prompt lengths (batched decoding == one prompt alone).
    Training (block SFT) and decoding (the SDAR sampler) both use it, so the blocks trained on
    are the blocks decoded.
    """
    pos = (valid.long().cumsum(-1) - 1).clamp(min=0)  # [B, L], pads at 0
    return pos + ((-prompt_len) % block_size)[:, None]


def sample_block_p_mask(blocks: torch.Tensor, generator: torch.Generator, *, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """One masking probability per (sequence, block), broadcast to its tokens: `[B, L]` -> `[B, L]`.

    `blocks` are block indices (`block_ids`); each block b of each sequence gets its own
    p = (1 - eps) t + eps, t ~ U(0, 1) (BD3-LM's per-block noise level).
    """
    if not 0.0 <= eps < 1.0:
        raise ValueError(f"eps must be in [0, 1), got {eps}")
    B = blocks.shape[0]
    num_blocks = int(blocks.max()) + 1 if blocks.numel() else 1  # a CPU-GPU sync point
    t = uniform01((B, num_blocks), generator, blocks.device)  # [B, NB]
    p = (1.0 - eps) * t + eps
    return torch.gather(p, 1, blocks.long())  # [B, NB] -> [B, L]


def block_forward_noise(
    input_ids: torch.Tensor,
    eligible: torch.Tensor,
    position_ids: torch.Tensor,
    block_size: int,
    mask_token_id: int,
    generator: torch.Generator,
    *,
    eps: float = DEFAULT_EPS,
) -> MaskedNoise:
    """Noise a batch with one masking probability per block (block diffusion, BD3-LM / SDAR).

    Block of token i is `position_ids[i] // block_size`; every eligible token of block k of
    sequence b is masked with probability p_{b,k} = (1 - eps) t_{b,k} + eps, t_{b,k} ~ U(0, 1).
    """
    p_mask = sample_block_p_mask(block_ids(position_ids, block_size), generator, eps=eps)  # [B, L]
    mask = bernoulli_mask(eligible, p_mask, generator)
    return MaskedNoise(apply_mask(input_ids, mask, mask_token_id), mask, p_mask)


# ---------------------------------------------------------------------------------------------
# Exact mask counts (stratified ELBO) and complementary masks (coupled estimators)
# ---------------------------------------------------------------------------------------------


def mask_exact_count(eligible: torch.Tensor, num_masked: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mask exactly `num_masked[b]` eligible positions of row b, chosen uniformly at random.

    LLaDA's likelihood evaluation (`get_log_likelihood.py`): draw the count l, mask l positions
    uniformly, weight by L/l. Counts above the number of eligible positions are clipped to it.

    Args:
        eligible: `[B, L]` bool.
        num_masked: `[B]` integer counts.

    Returns:
        `[B, L]` bool mask with `min(num_masked[b], eligible[b].sum())` True entries per row.
    """
    eligible = eligible.bool()
    scores = uniform01(tuple(eligible.shape), generator, eligible.device)  # [B, L] in [0, 1)
    scores = torch.where(eligible, scores, torch.full_like(scores, 2.0))  # ineligible rank last
    ranks = scores.argsort(dim=-1).argsort(dim=-1)  # [B, L], rank of each position
    return eligible & (ranks < num_masked.to(eligible.device).long()[:, None])


def stratified_mask_counts(num_eligible: torch.Tensor, num_samples: int, generator: torch.Generator) -> torch.Tensor:
    """Stratified mask counts for `num_samples` Monte-Carlo samples of each sequence: `[B]` -> `[B, K]`.

    LLaDA `get_log_likelihood.py`: with n eligible tokens, draw k ~ U{1..n} and take
    l_j = round(k + j n / K) wrapped into 1..n, for j = 0..K-1. The K counts cover 1..n evenly,
    which lowers the variance of the ELBO estimate B = E_l[(n / l) sum_masked log p]. Rows with
    no eligible token get count 0.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    n = num_eligible.long()  # [B]
    n_safe = n.clamp(min=1).double()
    u = uniform01((n.shape[0],), generator, n.device).double()  # [B]
    k = (u * n_safe).floor() + 1  # [B], uniform on 1..n
    j = torch.arange(num_samples, device=n.device, dtype=torch.float64)  # [K]
    counts = torch.round(k[:, None] + j[None, :] * n_safe[:, None] / num_samples)  # [B, K]
    counts = (counts - 1).remainder(n_safe[:, None]) + 1  # wrap into 1..n
    return counts.long() * (n > 0).long()[:, None]


def complementary_masks(
    eligible: torch.Tensor, t: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A mask and its complement over the eligible positions (Coupled-GRPO, DiffuCoder, arXiv 2506.20639).

    With R ~ U(0, 1) per position: M1 = eligible & (R < t) masks each eligible token with
    probability t, M2 = eligible & ~M1 with probability 1 - t; every eligible token is masked in
    exactly one of the two, so the pair is antithetic.

    Args:
        eligible: `[B, L]` bool.
        t: `[B]` (or a 0-d tensor shared by the batch).

    Returns:
        (M1, M2), each `[B, L]` bool.
    """
    eligible = eligible.bool()
    t = t.to(eligible.device, torch.float32)
    if t.dim() == 1:
        t = t[:, None]  # [B] -> [B, 1]
    r = uniform01(tuple(eligible.shape), generator, eligible.device)  # [B, L]
    first = eligible & (r < t)
    return first, eligible & ~first


__all__ = [
    "response_aligned_positions",
    "DEFAULT_EPS",
    "MaskedNoise",
    "apply_mask",
    "bernoulli_mask",
    "block_forward_noise",
    "block_ids",
    "complementary_masks",
    "forward_noise",
    "mask_exact_count",
    "sample_block_p_mask",
    "sample_p_mask",
    "stratified_mask_counts",
]
