"""A density-ratio discriminator on forward-noised sequences (DiDi-Instruct's D_lambda(z_t, t)).

Zheng et al., "Ultra-Fast Language Generation via Discrete Diffusion Divergence Instruct",
arXiv 2509.25035 (haoyangzheng-ai/didi-instruct): the discriminator is initialised from the
teacher's backbone with only its last blocks and final norm trainable, and a new head —
spectral-norm Linear, SiLU, Linear to one logit — reads each position's last hidden state together
with an embedding of the noise level t. Per-token logits `[B, T]` are summed over the response
positions into one sequence logit; trained with BCE (student = 1, teacher = 0) its optimum is
sigmoid(logit) = q_student / (q_student + q_teacher), so the logit estimates the log density ratio
log q_student(z_t) / q_teacher(z_t) (`log_ratio` undoes label smoothing).

Complementary views (`views >= 2`, dare's default 2). A backbone reading z_t directly sees every
visible token at its own position, and a bidirectional dLLM's hidden state there says little about
whether that token fits the others, and the plain design separates student from teacher samples
poorly (measurements: docs/didi.md). So the
visible response tokens are split at random into `views` groups and the backbone runs once per
group with that group masked; each visible position is read from the pass that hid it, where the
backbone predicts it from the rest. Its per-position logit is the head on that hidden state plus
`surprise_scale` (learnable, initialised to 1) times the backbone's surprise -log p(x_i | view):
summed over the response this starts as the teacher's pseudo-log-likelihood of the visible tokens,
an estimate of -log q_teacher(z_t) up to a constant (informative before any training), and BCE
then trains the head, the scale and the unfrozen blocks as before. Masked and
prompt positions are read from the first pass and carry no surprise. `views = 1` is the plain
design (one pass, no surprise term).

Frozen surprise (`frozen_surprise`, default on): the surprise comes from a frozen copy of the
teacher, not from the trainable backbone. Left to BCE, the backbone's own predictions drift and the
surprise loses what made it useful: the frozen teacher's surprise keeps ranking a student's correct
samples above its wrong ones, the trained backbone's stops doing so and its student does not learn
(docs/didi.md). The learned
part (head, unfrozen blocks, scale, bias) then models what the teacher's pseudo-likelihood misses,
e.g. a student that over-concentrates on one mode.

The backbone is any dare model family (read through `output_hidden_states`); the input is token
ids or, for gradient guidance, token distributions `[B, T, V]` fed as expected embeddings (a
position counts as visible when less than half its mass is on the mask token; its surprise is
then the cross-entropy of its distribution under the view's prediction).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from dare.models.spec import aligned_logits


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
        views: complementary views of the visible response tokens (module docstring); 1 = one
            plain pass.
        frozen_surprise: read the views' surprise term from a frozen copy of the teacher (views >= 2).
        surprise_model: the frozen model that term comes from instead of a new copy of `teacher`
            (a module-like stand-in whose forward returns `.logits`, e.g. the separate reference's
            `RemoteReference`; token ids only: gradient guidance needs a local one).
        copy_teacher: deep-copy `teacher` for the backbone (False: take it, when the caller made a
            copy for this alone).
    """

    def __init__(
        self,
        teacher: nn.Module,
        unfrozen_blocks: int = 4,
        time_dim: int = 32,
        views: int = 2,
        frozen_surprise: bool = True,
        surprise_model: nn.Module | None = None,
        copy_teacher: bool = True,
    ) -> None:
        super().__init__()
        if views < 1:
            raise ValueError(f"views must be >= 1, got {views}")
        # the surprise is read from a frozen copy of the teacher, not from the trainable backbone
        # (which BCE moves away from the teacher: measured, that erased most of the signal). Held
        # outside the module tree, so it is neither trained nor saved; `_apply` moves it along.
        frozen = None
        if frozen_surprise and views > 1:
            frozen = (
                surprise_model if surprise_model is not None else copy.deepcopy(teacher).requires_grad_(False).eval()
            )
        self.backbone = copy.deepcopy(teacher) if copy_teacher else teacher
        self._frozen = (frozen,) if frozen is not None else None
        self.backbone.requires_grad_(False)
        self.spec = teacher.diffusion_spec()
        self.views = views
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
        nn.init.zeros_(self.head[2].weight)  # the head adds nothing before training
        nn.init.zeros_(self.head[2].bias)
        # weight of the backbone's surprise at the visible tokens (views >= 2)
        self.surprise_scale = nn.Parameter(torch.ones(())) if views > 1 else None
        # a sequence-level offset, set from the first batch (`init_bias`): the summed surprise is
        # positive for every sequence, and without it BCE's first steps would shrink the scale
        # (lowering all logits) instead of learning where the threshold lies
        self.bias = nn.Parameter(torch.zeros(()))
        self.register_buffer("bias_initialised", torch.tensor(False))

    def _backbone(
        self, input_ids, attention_mask, token_probs, log_probs: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Last hidden states `[B, T, d]` and (if `log_probs`) aligned log-probs `[B, T, V]` of one
        pass; with `frozen_surprise` the log-probs come from a pass of the frozen teacher."""
        out = self._run(self.backbone, input_ids, attention_mask, token_probs)
        if log_probs and self._frozen is not None:
            grad = token_probs is not None and token_probs.requires_grad  # gradient guidance
            with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
                logits = self._run(self._frozen[0], input_ids, attention_mask, token_probs).logits
        else:
            logits = out.logits
        logp = aligned_logits(logits, self.spec).float().log_softmax(-1) if log_probs else None
        return out.hidden_states[-1], logp

    def _apply(self, fn, recurse: bool = True):  # .to(), .cuda(), .half() reach the frozen copy too
        super()._apply(fn, recurse)
        if self._frozen is not None:
            self._frozen[0]._apply(fn)
        return self

    @staticmethod
    def _run(model: nn.Module, input_ids, attention_mask, token_probs):
        if token_probs is not None:
            emb = model.get_input_embeddings().weight  # [V, d]
            return model(
                inputs_embeds=token_probs.to(emb.dtype) @ emb, attention_mask=attention_mask, output_hidden_states=True
            )
        return model(input_ids, attention_mask=attention_mask, output_hidden_states=True)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor,
        t: torch.Tensor,
        token_probs: torch.Tensor | None = None,
        response_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Per-position logits `[B, T]` of noised sequences `input_ids [B, T]` (or token
        distributions `token_probs [B, T, V]`, differentiable) at noise levels `t [B]`.
        `response_mask [B, T]` marks the positions the views split (required for views >= 2);
        `generator` draws the split."""
        mask_id = self.spec.mask_token_id
        if self.views == 1:
            h, _ = self._backbone(input_ids, attention_mask, token_probs, log_probs=False)
            return self._head(h, t)
        if response_mask is None:
            raise ValueError("DiffusionDiscriminator with views >= 2 needs response_mask")
        if token_probs is not None:
            visible = response_mask.bool() & (token_probs[..., mask_id] < 0.5)  # [B, T]
        else:
            visible = response_mask.bool() & (input_ids != mask_id)
        B, T = visible.shape
        keys = torch.rand(B, T, generator=generator, device=generator.device if generator else None)
        # view of each position: a random permutation of the positions dealt round-robin, so the
        # views of a row differ in size by at most one (non-visible positions are never hidden)
        view = keys.to(visible.device).masked_fill(~visible, 2.0).argsort(-1).argsort(-1) % self.views  # [B, T]
        if token_probs is not None:
            mask_row = torch.zeros_like(token_probs[0, 0])
            mask_row[mask_id] = 1.0  # [V]: a hidden position is the mask token
        h_out, surprise = None, None
        for k in range(self.views):
            hide = visible & (view == k)  # [B, T]
            if token_probs is not None:
                h, logp = self._backbone(None, attention_mask, torch.where(hide[..., None], mask_row, token_probs))
                s_k = -(token_probs.float() * logp).sum(-1)  # [B, T] cross-entropy
            else:
                h, logp = self._backbone(input_ids.masked_fill(hide, mask_id), attention_mask, None)
                s_k = -logp.gather(-1, input_ids[..., None]).squeeze(-1)  # [B, T]
            # positions no view hides (masked, prompt) keep pass 0's hidden state and no surprise
            h_out = h if h_out is None else torch.where(hide[..., None], h, h_out)
            surprise = torch.where(hide, s_k, 0.0 if surprise is None else surprise)
        return self._head(h_out, t) + self.surprise_scale * surprise

    def _head(self, h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        te = time_embedding(t, self.time_dim).to(h.dtype)[:, None].expand(-1, h.shape[1], -1)  # [B, T, time_dim]
        return self.head(torch.cat([h, te], -1)).squeeze(-1)  # [B, T]

    def sequence_logit(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        response_mask: torch.Tensor,
        t: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """One logit per sequence `[B]`: the per-position logits summed over `response_mask`."""
        logits = self(input_ids, attention_mask, t, response_mask=response_mask, generator=generator)
        return (logits * response_mask).sum(-1) + self.bias

    @torch.no_grad()
    def init_bias(self, sequence_logits: torch.Tensor) -> None:
        """Once, before the first BCE step: shift the sequence logits so that the batch's median
        is 0 (a data-dependent init; a no-op after the first call or a restored state)."""
        if not bool(self.bias_initialised):
            self.bias.sub_(sequence_logits.median())
            self.bias_initialised.fill_(True)


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
