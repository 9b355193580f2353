"""A density-ratio discriminator on forward-noised sequences (DiDi-Instruct's D_lambda(z_t, t)).

Zheng et al., "Ultra-Fast Language Generation via Discrete Diffusion Divergence Instruct",
arXiv 2509.25035 (haoyangzheng-ai/didi-instruct): the discriminator is initialised from the
teacher's backbone with only its last blocks and final norm trainable, and a new head —
spectral-norm Linear, SiLU, Linear to one logit — reads each position's last hidden state together
with an embedding of the noise level t. Per-token logits `[B, T]` are summed over the response
positions into one sequence logit; trained with BCE (student = 1, teacher = 0) its optimum is
sigmoid(logit) = q_student / (q_student + q_teacher), so the logit estimates the log density ratio
log q_student(z_t) / q_teacher(z_t) (`log_ratio` undoes label smoothing).

The backbone is any dare model family (read through `output_hidden_states`); the input is token
ids or, for gradient guidance, token distributions `[B, T, V]` fed as expected embeddings.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def time_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of noise levels t in [0, 1]: `[B]` -> `[B, dim]`."""
    half = dim // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = 1000.0 * t.float()[:, None] * freqs[None]  # [B, half]
    return torch.cat([angles.sin(), angles.cos()], -1)


def decoder_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The (qualified name, ModuleList) of the model's transformer blocks: the longest ModuleList."""
    best = max(
        ((name, m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList)),
        key=lambda item: len(item[1]),
        default=None,
    )
    if best is None:
        raise ValueError(f"{type(model).__name__}: no ModuleList of transformer blocks found")
    return best


class DiffusionDiscriminator(nn.Module):
    """Backbone (a copy of the teacher) + head on (hidden state, t) -> one logit per position.

    Args:
        teacher: the frozen teacher model; it is deep-copied, never modified.
        unfrozen_blocks: trainable last transformer blocks (plus every non-block parameter other
            than the embeddings, i.e. the final norm); DiDi-Instruct unfreezes 4.
        time_dim: size of the noise-level embedding.
    """

    def __init__(self, teacher: nn.Module, unfrozen_blocks: int = 4, time_dim: int = 32) -> None:
        super().__init__()
        self.backbone = copy.deepcopy(teacher)
        self.backbone.requires_grad_(False)
        prefix, blocks = decoder_blocks(self.backbone)
        first_trainable = max(0, len(blocks) - unfrozen_blocks)
        embeddings = {id(p) for m in (self.backbone.get_input_embeddings(),) for p in m.parameters()}
        out_emb = self.backbone.get_output_embeddings()
        if out_emb is not None:
            embeddings |= {id(p) for p in out_emb.parameters()}
        block_params = {id(p) for p in blocks.parameters()}
        for i, block in enumerate(blocks):
            block.requires_grad_(i >= first_trainable)
        for p in self.backbone.parameters():  # the final norm (and anything else outside blocks/embeddings)
            if id(p) not in block_params and id(p) not in embeddings:
                p.requires_grad_(True)
        hidden = self.backbone.get_input_embeddings().embedding_dim
        self.time_dim = time_dim
        self.head = nn.Sequential(
            nn.utils.parametrizations.spectral_norm(nn.Linear(hidden + time_dim, hidden)),
            nn.SiLU(),
            nn.Linear(hidden, 1),
        )
        nn.init.zeros_(self.head[2].weight)  # log ratio 0 (D = 1/2) before any training
        nn.init.zeros_(self.head[2].bias)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor,
        t: torch.Tensor,
        token_probs: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-position logits `[B, T]` of noised sequences `input_ids [B, T]` (or token
        distributions `token_probs [B, T, V]`, differentiable) at noise levels `t [B]`."""
        if token_probs is not None:
            emb = self.backbone.get_input_embeddings().weight  # [V, d]
            inputs = token_probs.to(emb.dtype) @ emb  # [B, T, d]
            out = self.backbone(inputs_embeds=inputs, attention_mask=attention_mask, output_hidden_states=True)
        else:
            out = self.backbone(input_ids, attention_mask=attention_mask, output_hidden_states=True)
        h = out.hidden_states[-1]  # [B, T, d], after the final norm
        te = time_embedding(t, self.time_dim).to(h.dtype)[:, None].expand(-1, h.shape[1], -1)  # [B, T, time_dim]
        return self.head(torch.cat([h, te], -1)).squeeze(-1)  # [B, T]

    def sequence_logit(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """One logit per sequence `[B]`: the per-position logits summed over `response_mask`."""
        return (self(input_ids, attention_mask, t) * response_mask).sum(-1)


def smoothed_targets(is_student: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """BCE targets with label smoothing eps: 1 - eps/2 for student samples, eps/2 for teacher ones."""
    return is_student.float() * (1.0 - label_smoothing) + label_smoothing / 2


def log_ratio(logit: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """The density ratio estimate log q_student / q_teacher from a discriminator logit.

    With smoothed targets a = 1 - eps/2 (student), b = eps/2 (teacher) the BCE optimum is
    D = (a r + b) / (r + 1) for r = q_student / q_teacher, so r = (D - b) / (a - D); at eps = 0
    this is the logit itself. D is clamped inside (b, a).
    """
    if label_smoothing == 0:
        return logit
    a, b = 1.0 - label_smoothing / 2, label_smoothing / 2
    d = torch.sigmoid(logit.double()).clamp(b + 1e-12, a - 1e-12)
    return (torch.log(d - b) - torch.log(a - d)).to(logit.dtype)


__all__ = ["DiffusionDiscriminator", "decoder_blocks", "log_ratio", "smoothed_targets", "time_embedding"]
