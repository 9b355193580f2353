"""Supervised fine-tuning losses of masked diffusion LMs: the negative ELBO on the response.

One loss (`sft_loss`, or `sft_nll` for a given noise draw) with two objectives, registered in
`SFT_OBJECTIVES` by `DiffusionSpec.attention` (never by family name); an objective is its noise
draw and the logits the loss reads:

- "full" (LLaDA, Dream; `masked_diffusion_noise`, `masked_diffusion_logits`): LLaDA's SFT
  objective (Nie et al. 2025, arXiv 2502.09992; ML-GSAI/LLaDA `GUIDELINES.md`)

      L = 1/B sum_b 1/|y_b| sum_{i in y_b, masked} CE(logits_{b,i}, y_{b,i}) / p_mask_b,

  one p_mask_b = (1 - eps) t_b + eps per sequence, the prompt never masked, the EOS padding after
  the response part of the answer y_b (trained on: it is how the model learns to stop). Dream's
  logits are re-aligned first (`aligned_logits`: position i-1 predicts token i).

- "block" (SDAR; `block_diffusion_noise`, `block_diffusion_logits`): block diffusion (BD3-LM,
  Arriola et al. 2025, arXiv 2503.09573; SDAR, Cheng et al. 2025, arXiv 2510.06303). One forward
  over `[x_t ; x_0]` (length 2L) under the three-part mask of `block_diffusion_attention_mask`,
  one noise level per block, and the same answer-length-normalised CE/p_mask on the noisy half.

The batch (see `dare.data`): `input_ids [B, L]` = left-padded prompt, response, EOS padding;
`loss_mask [B, L]` bool, True on the answer (response + EOS padding); `attention_mask [B, L]`,
0 on left padding. Rows without any answer token (padding rows) contribute nothing and are left
out of the batch mean.

Every loss returns `(loss, metrics)`; metric keys are namespaced `actor/`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dare.diffusion.noise import (
    DEFAULT_EPS,
    MaskedNoise,
    block_forward_noise,
    block_ids,
    forward_noise,
    response_aligned_positions,
)
from dare.models.spec import DiffusionSpec, aligned_logits
from dare.registry import Registry

# ---------------------------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SftBatch:
    """A checked SFT batch, every field `[B, L]` (build it with `SftBatch.check`)."""

    input_ids: torch.Tensor  # long, clean ids x_0 (the targets)
    answer: torch.Tensor  # bool, response + EOS padding: the only positions ever noised
    valid: torch.Tensor  # bool key validity, False on left padding
    attention_mask: torch.Tensor | None  # as the caller gave it; what the full-attention model sees

    @classmethod
    def check(cls, input_ids: torch.Tensor, loss_mask: torch.Tensor, attention_mask: torch.Tensor | None) -> SftBatch:
        """The batch with the shape checks it must pass (ValueError naming the field)."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [B, L], got shape {tuple(input_ids.shape)}")
        if loss_mask.shape != input_ids.shape:
            raise ValueError(f"loss_mask shape {tuple(loss_mask.shape)} != input_ids shape {tuple(input_ids.shape)}")
        if attention_mask is None:
            valid = torch.ones_like(input_ids, dtype=torch.bool)
        else:
            if attention_mask.shape != input_ids.shape:
                raise ValueError(
                    f"attention_mask must be the 2-D padding mask {tuple(input_ids.shape)}, got {tuple(attention_mask.shape)}"
                )
            valid = attention_mask.bool()
        answer = loss_mask.bool()
        if bool((answer & ~valid).any()):  # a CPU-GPU sync point, once per step
            raise ValueError(
                "loss_mask marks positions that attention_mask hides (padding); the answer must be visible"
            )
        return cls(input_ids, answer, valid, attention_mask)

    def rows(self, start: int, end: int) -> SftBatch:
        """Rows [start, end) (a per-row noise draw sees only its own row)."""
        mask = None if self.attention_mask is None else self.attention_mask[start:end]
        return SftBatch(self.input_ids[start:end], self.answer[start:end], self.valid[start:end], mask)


def padding_position_ids(valid: torch.Tensor) -> torch.Tensor:
    """Left-padding aware positions `[B, L]`: real tokens numbered 0, 1, ...; pads get 0.

    The rule the models apply when given a 2-D padding mask, so training positions (and hence
    SDAR's blocks, position // block_size) match decoding.
    """
    return (valid.long().cumsum(-1) - 1).clamp(min=0)


def block_position_ids(valid: torch.Tensor, answer: torch.Tensor, block_size: int) -> torch.Tensor:
    """Positions for block diffusion: response-aligned blocks (see
    `dare.diffusion.noise.response_aligned_positions`), the prompt being the real tokens before
    the answer."""
    return response_aligned_positions(valid, (valid & ~answer).sum(-1), block_size)


def masked_ce_sum(
    logits: torch.Tensor, target_ids: torch.Tensor, mask: torch.Tensor, p_mask: torch.Tensor
) -> torch.Tensor:
    """Per-sequence importance-weighted CE over masked positions: sum_{i: mask} CE_i / p_mask_i.

    Args:
        logits: `[B, L, V]`, aligned so `logits[:, i]` predicts token i.
        target_ids: `[B, L]` clean ids x_0.
        mask: `[B, L]` bool, positions that were masked.
        p_mask: `[B, L]` masking probability of each position.

    Returns:
        `[B]` float32 sums. CE is computed in fp32 on the masked rows only (no `[B, L, V]` fp32 copy).
    """
    rows, cols = mask.nonzero(as_tuple=True)  # N masked positions
    ce = F.cross_entropy(logits[rows, cols].float(), target_ids[rows, cols], reduction="none")  # [N, V] -> [N]
    weighted = ce / p_mask[rows, cols].float()  # [N]
    return torch.zeros(mask.shape[0], dtype=torch.float32, device=logits.device).index_add(0, rows, weighted)


def answer_normalised_mean(per_seq_sum: torch.Tensor, answer: torch.Tensor) -> torch.Tensor:
    """LLaDA SFT normalisation: each sequence's sum / its answer length, then the mean over the
    sequences that have an answer (all of them in a normal batch, so this is the 1/B of the
    guideline). `[B]`, `[B, L]` -> scalar."""
    answer_len = answer.sum(-1).float()  # [B]
    per_seq = per_seq_sum / answer_len.clamp(min=1.0)  # [B]
    return per_seq.sum() / (answer_len > 0).sum().clamp(min=1)


def _metrics(loss: torch.Tensor, noise: MaskedNoise, answer: torch.Tensor) -> dict[str, float]:
    n_answer = answer.sum().clamp(min=1)
    return {
        "actor/sft_loss": loss.detach().item(),
        "actor/mask_ratio": (noise.mask.sum() / n_answer).item(),
        "actor/answer_tokens": answer.sum(-1).float().mean().item(),
        "actor/mean_p_mask": ((noise.p_mask * answer).sum() / n_answer).item(),
    }


# ---------------------------------------------------------------------------------------------
# Full attention: LLaDA / Dream
# ---------------------------------------------------------------------------------------------


def masked_diffusion_noise(batch: SftBatch, spec: DiffusionSpec, generator: torch.Generator, eps: float) -> MaskedNoise:
    """LLaDA's forward noise (ML-GSAI/LLaDA `GUIDELINES.md`, arXiv 2502.09992 §2.3): t_b ~ U(0, 1),
    p_b = (1 - eps) t_b + eps; every answer token of row b becomes [MASK] with probability p_b
    (the prompt and left padding never do)."""
    return forward_noise(batch.input_ids, batch.answer, spec.mask_token_id, generator, eps=eps)


def masked_diffusion_logits(model: nn.Module, batch: SftBatch, noise: MaskedNoise, spec: DiffusionSpec) -> torch.Tensor:
    """`[B, L, V]` logits of the noisy sequence, aligned so `[:, i]` predicts token i (Dream,
    `spec.shift_logits`, reads the prediction of token i at position i-1)."""
    if spec.shift_logits:
        # position i is predicted from the hidden state at i-1, which must be a real token
        has_prev = torch.zeros_like(batch.valid)
        has_prev[:, 1:] = batch.valid[:, :-1]
        if bool((batch.answer & ~has_prev).any()):
            raise ValueError(
                "with shift_logits (Dream) every answer token needs a real token before it: "
                "start each sequence with at least one prompt token (e.g. BOS)"
            )
    logits = model(noise.noisy_ids, attention_mask=batch.attention_mask).logits  # [B, L, V]
    return aligned_logits(logits, spec)  # logits[:, i] predicts token i


# ---------------------------------------------------------------------------------------------
# Block attention: SDAR
# ---------------------------------------------------------------------------------------------


def _block_size(spec: DiffusionSpec) -> int:
    if spec.block_size is None:
        raise ValueError(f"block diffusion needs spec.block_size; got spec {spec}")
    if spec.shift_logits:
        raise ValueError("block diffusion SFT with shift_logits=True is not supported (no family needs it)")
    return spec.block_size


def block_diffusion_attention_mask(position_ids: torch.Tensor, valid: torch.Tensor, block_size: int) -> torch.Tensor:
    """The `[x_t ; x_0]` training mask of block diffusion: `[B, L]`, `[B, L]` -> `[B, 1, 2L, 2L]` bool.

    Queries and keys 0..L-1 are the noisy copy x_t, L..2L-1 the clean copy x_0; both copies share
    the block ids `position_ids // block_size`. Key j is visible to query i (True) iff key j is a
    real token and one of (BD3-LM, arXiv 2503.09573; SDAR `block_diff_mask`):

    - M_BD:  same half and same block (a noisy block attends to itself bidirectionally);
    - M_OBC: i noisy, j clean, block(i) > block(j) (a noisy block sees strictly earlier clean blocks,
             never the clean copy of itself);
    - M_BC:  both clean, block(i) >= block(j) (block-causal over x_0, the model's default rule).

    Padded queries (valid False) see only themselves, so no attention row is empty (no NaN).

    Args:
        position_ids: `[B, L]` rotary positions of x_0 (also used for x_t).
        valid: `[B, L]` bool, False on padding.
        block_size: tokens per block.
    """
    B, L = position_ids.shape
    device = position_ids.device
    blk = block_ids(position_ids, block_size)
    blk2 = torch.cat([blk, blk], dim=1)  # [B, 2L]
    valid2 = torch.cat([valid, valid], dim=1).bool()  # [B, 2L]
    clean = torch.arange(2 * L, device=device) >= L  # [2L], True on the x_0 half
    q_blk, k_blk = blk2[:, :, None], blk2[:, None, :]  # [B, 2L, 1], [B, 1, 2L]
    q_clean, k_clean = clean[:, None], clean[None, :]  # [2L, 1], [1, 2L]
    m_bd = (q_clean == k_clean) & (q_blk == k_blk)
    m_obc = ~q_clean & k_clean & (q_blk > k_blk)
    m_bc = q_clean & k_clean & (q_blk >= k_blk)
    visible = (m_bd | m_obc | m_bc) & valid2[:, :, None] & valid2[:, None, :]  # [B, 2L, 2L]
    visible = visible | torch.eye(2 * L, dtype=torch.bool, device=device)  # padded queries: self only
    return visible[:, None]  # [B, 1, 2L, 2L]


def block_diffusion_noise(batch: SftBatch, spec: DiffusionSpec, generator: torch.Generator, eps: float) -> MaskedNoise:
    """BD3-LM's forward noise (arXiv 2503.09573): blocks are `position // spec.block_size` with
    left-padding-aware, response-aligned positions (the model's own rule, so training and decoding
    agree); each block k of row b draws p_{b,k} = (1 - eps) t_{b,k} + eps, t_{b,k} ~ U(0, 1), and
    its answer tokens become [MASK] with probability p_{b,k}.

    (SDAR's own recipe draws one t per sequence and divides by the batch's answer tokens; per-block
    t is BD3-LM's, and the per-answer-length normalisation matches the full-attention loss.)
    """
    block_size = _block_size(spec)
    position_ids = block_position_ids(batch.valid, batch.answer, block_size)  # [B, L]
    return block_forward_noise(
        batch.input_ids, batch.answer, position_ids, block_size, spec.mask_token_id, generator, eps=eps
    )


def block_diffusion_logits(model: nn.Module, batch: SftBatch, noise: MaskedNoise, spec: DiffusionSpec) -> torch.Tensor:
    """`[B, L, V]` logits of the noisy half of one forward over `[x_t ; x_0]` `[B, 2L]` (positions
    repeated for both halves, the mask of `block_diffusion_attention_mask`): token i of a noisy
    block is predicted from that block of x_t and the earlier blocks of x_0 (SDAR, arXiv 2510.06303)."""
    block_size = _block_size(spec)
    L = batch.input_ids.shape[1]
    position_ids = block_position_ids(batch.valid, batch.answer, block_size)  # [B, L]
    both = torch.cat([noise.noisy_ids, batch.input_ids], dim=1)  # [B, 2L] = [x_t ; x_0]
    both_pos = torch.cat([position_ids, position_ids], dim=1)  # [B, 2L]
    mask4d = block_diffusion_attention_mask(position_ids, batch.valid, block_size)  # [B, 1, 2L, 2L]
    return model(both, attention_mask=mask4d, position_ids=both_pos).logits[:, :L]  # [B, 2L, V] -> [B, L, V]


# ---------------------------------------------------------------------------------------------
# The objective of an attention kind, and the loss
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SftObjective:
    """What differs between attention kinds: how the answer is noised, and the logits the loss reads."""

    noise: Callable[[SftBatch, DiffusionSpec, torch.Generator, float], MaskedNoise]
    logits: Callable[[nn.Module, SftBatch, MaskedNoise, DiffusionSpec], torch.Tensor]


# keyed by `DiffusionSpec.attention`: trainers and tests select by it, never by family name
SFT_OBJECTIVES: Registry[SftObjective] = Registry("sft objective")
SFT_OBJECTIVES.register("full", SftObjective(masked_diffusion_noise, masked_diffusion_logits))
SFT_OBJECTIVES.register("block", SftObjective(block_diffusion_noise, block_diffusion_logits))


def batch_nll(
    model: nn.Module, batch: SftBatch, noise: MaskedNoise, spec: DiffusionSpec
) -> tuple[torch.Tensor, dict[str, float]]:
    """The SFT loss of a checked batch for a given noise draw:

        L = 1/B' sum_b 1/|y_b| sum_{i: noise.mask} CE(logits_{b,i}, x0_{b,i}) / p_mask_{b,i},

    the logits from `SFT_OBJECTIVES[spec.attention]`, B' the rows with an answer. Only
    `noise.mask` positions enter the loss, so `noise.mask` must lie inside the answer."""
    if bool((noise.mask & ~batch.answer).any()):
        raise ValueError("noise.mask marks positions outside loss_mask; only answer tokens may be noised")
    logits = SFT_OBJECTIVES.get(spec.attention).logits(model, batch, noise, spec)  # [B, L, V]
    loss = answer_normalised_mean(masked_ce_sum(logits, batch.input_ids, noise.mask, noise.p_mask), batch.answer)
    return loss, _metrics(loss, noise, batch.answer)


def sft_nll(
    model: nn.Module,
    input_ids: torch.Tensor,
    noise: MaskedNoise,
    loss_mask: torch.Tensor,
    attention_mask: torch.Tensor | None,
    spec: DiffusionSpec,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The SFT loss for a given noise draw (the deterministic half of `sft_loss`; reuse it to
    evaluate with fixed masks). See `batch_nll`.

    Args:
        model: any dare family; full attention is called as `model(ids, attention_mask=...)`.
        input_ids: `[B, L]` clean ids (the targets).
        noise: a forward-noise draw (noisy ids, mask, p_mask, each `[B, L]`).
        loss_mask: `[B, L]` bool answer positions (normalisation length |y_b|).
        attention_mask: `[B, L]` padding mask (0 on left padding) or None.
        spec: the model's `DiffusionSpec` (attention kind, mask id, logit shift, block size).
    """
    return batch_nll(model, SftBatch.check(input_ids, loss_mask, attention_mask), noise, spec)


def sft_loss(
    model: nn.Module,
    input_ids: torch.Tensor,
    loss_mask: torch.Tensor,
    attention_mask: torch.Tensor | None,
    spec: DiffusionSpec,
    generator: torch.Generator,
    eps: float = DEFAULT_EPS,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The SFT loss of the model's attention kind (module docstring): a noise draw from
    `generator` (`SftObjective.noise`), then `batch_nll`.

    Args:
        input_ids: `[B, L]` left-padded prompt + response + EOS padding.
        loss_mask: `[B, L]` bool, True on the answer (response and EOS padding).
        attention_mask: `[B, L]`, 0 on left padding (None: no padding).
        spec: the model's `DiffusionSpec`; `spec.attention` selects the objective.
        generator: the only source of randomness.
        eps: lower bound of p_mask.

    Returns:
        (scalar loss, metrics `actor/sft_loss`, `actor/mask_ratio`, `actor/answer_tokens`, `actor/mean_p_mask`).
    """
    batch = SftBatch.check(input_ids, loss_mask, attention_mask)
    noise = SFT_OBJECTIVES.get(spec.attention).noise(batch, spec, generator, eps)
    return batch_nll(model, batch, noise, spec)


__all__ = [
    "SFT_OBJECTIVES",
    "SftBatch",
    "SftObjective",
    "answer_normalised_mean",
    "batch_nll",
    "block_diffusion_attention_mask",
    "block_diffusion_logits",
    "block_diffusion_noise",
    "block_position_ids",
    "masked_ce_sum",
    "masked_diffusion_logits",
    "masked_diffusion_noise",
    "padding_position_ids",
    "sft_loss",
    "sft_nll",
]
