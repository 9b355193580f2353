"""Building blocks shared by the model families: RMSNorm, rotary embeddings, the diffusion KV
cache, attention-mask construction and the SDPA attention kernel.

Part of the shared model kernel (docs/models.md): every family file (llada.py, dream.py, sdar.py)
keeps its own module names (they must match the released state dicts) and calls into these
functions for the math, so the attention rules are written once:

- a key is visible to a query if the key is a real token (2-D padding mask) and, for block
  attention (SDAR), the key's block is not later than the query's block (block = position // size);
- a query always sees itself, so padded queries never produce NaN rows;
- an explicit 4-D mask (bool, True = visible, or additive float) overrides the rule.

Shapes: B batch, Q query length, K key length (cache + new), H heads, Hkv key/value heads, D head dim.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32 and cast back before the weight (Llama / LLaDA / Qwen)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


# ---------------------------------------------------------------------------------------------
# Rotary position embeddings (NeoX / HF-Llama layout: rotate_half over two halves of the head dim)
# ---------------------------------------------------------------------------------------------


def rotary_cos_sin(position_ids: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables in fp32 for integer positions `[B, Q]` -> two `[B, 1, Q, D]` tensors."""
    inv_freq = 1.0 / (
        theta ** (torch.arange(0, head_dim, 2, device=position_ids.device, dtype=torch.float32) / head_dim)
    )
    freqs = position_ids.float()[..., None] * inv_freq  # [B, Q, D/2]
    emb = torch.cat([freqs, freqs], dim=-1)[:, None]  # [B, 1, Q, D]
    return emb.cos(), emb.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate `[B, H, Q, D]` in fp32 (LLaDA's rope_full_precision) and cast back. Tables narrower
    than D (partial rotary, LLaDA2: `[..., R]` with R < D) rotate the first R dims; the rest pass."""
    rot = cos.shape[-1]
    xf = x.float()
    if rot < x.shape[-1]:
        xr, xp = xf[..., :rot], xf[..., rot:]
        return torch.cat([xr * cos + _rotate_half(xr) * sin, xp], dim=-1).to(x.dtype)
    return (xf * cos + _rotate_half(xf) * sin).to(x.dtype)


# ---------------------------------------------------------------------------------------------
# KV cache for diffusion decoding
# ---------------------------------------------------------------------------------------------


class DiffusionCache:
    """Per-layer K/V plus the position and validity of every cached key.

    Three ways to use it, chosen per forward call:

    - **append** (default): the input continues the cached sequence; keys = cache + new. With
      `use_cache=True` the new K/V are stored (SDAR prompt prefill and block commit; Fast-dLLM's
      first full forward of a block). With `use_cache=False` they are used for this call only
      (SDAR denoising steps, Fast-dLLM prefix-cache steps after `crop(block_start)`).
    - **replace** (`replace_position=r`): the input re-computes positions `[r, r+Q)` of a cache
      that already covers the whole sequence; those K/V are overwritten and attention runs over
      the full cache (Fast-dLLM dual cache: prefix and suffix K/V are reused).
    - `crop(n)` keeps the first `n` positions (Fast-dLLM prefix cache).
    """

    def __init__(self) -> None:
        self.keys: list[torch.Tensor] = []  # each [B, Hkv, S, D]
        self.values: list[torch.Tensor] = []
        self.positions: torch.Tensor | None = None  # [B, S] rotary positions of cached keys
        self.valid: torch.Tensor | None = None  # [B, S] bool, False for padding
        # whether a padding mask came with the cached keys (a host-side flag: while it is False and
        # no mask is given, every key is valid without reading `valid` from the device)
        self.padded = False

    def get_seq_length(self) -> int:
        return 0 if self.positions is None else self.positions.shape[1]

    def crop(self, length: int) -> None:
        self.keys = [k[:, :, :length] for k in self.keys]
        self.values = [v[:, :, :length] for v in self.values]
        if self.positions is not None:
            self.positions = self.positions[:, :length]
            self.valid = self.valid[:, :length]

    def update(
        self,
        layer_idx: int,
        k: torch.Tensor,
        v: torch.Tensor,
        store: bool,
        replace_position: int | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the K/V this layer attends over; store or overwrite as asked."""
        if replace_position is not None:
            r, q = replace_position, k.shape[2]
            if torch.is_grad_enabled():  # keep autograd history intact
                keys = torch.cat([self.keys[layer_idx][:, :, :r], k, self.keys[layer_idx][:, :, r + q :]], 2)
                values = torch.cat([self.values[layer_idx][:, :, :r], v, self.values[layer_idx][:, :, r + q :]], 2)
                self.keys[layer_idx], self.values[layer_idx] = keys, values
            else:  # decoding: overwrite in place, no copy of the whole cache
                self.keys[layer_idx][:, :, r : r + q] = k
                self.values[layer_idx][:, :, r : r + q] = v
            return self.keys[layer_idx], self.values[layer_idx]
        if layer_idx < len(self.keys):
            keys = torch.cat([self.keys[layer_idx], k], dim=2)
            values = torch.cat([self.values[layer_idx], v], dim=2)
        else:
            keys, values = k, v
        if store:
            if layer_idx < len(self.keys):
                self.keys[layer_idx], self.values[layer_idx] = keys, values
            else:
                self.keys.append(keys)
                self.values.append(values)
        return keys, values


# ---------------------------------------------------------------------------------------------
# Attention context: positions, masks and cache bookkeeping for one forward call
# ---------------------------------------------------------------------------------------------


@dataclass
class AttentionContext:
    """What every attention layer of one forward call needs."""

    cos: torch.Tensor  # [B, 1, Q, D]
    sin: torch.Tensor  # [B, 1, Q, D]
    mask: torch.Tensor | None  # [B, 1, Q, K] bool (True = visible) or additive; None = all visible
    cache: DiffusionCache | None
    store: bool
    replace_position: int | None
    # what MoE blocks of this call report (one `dare.models.moe.Routing` per MoE layer, in order)
    routing: list = field(default_factory=list)


def _default_positions(valid: torch.Tensor, offset: torch.Tensor | int = 0) -> torch.Tensor:
    """Left-padding aware positions: real tokens are numbered 0, 1, ... (plus offset); pads get
    the offset (their value is irrelevant, they are masked out)."""
    return offset + (valid.long().cumsum(-1) - 1).clamp(min=0)


def full_attention_mask(valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For a bidirectional forward without a cache over a left-padded batch `valid` `[B, T]`: the
    explicit mask `[B, 1, T, T]` and positions `[B, T]` that `build_attention_context` builds from the
    2-D mask (keys = valid tokens, a query always sees itself). A decode loop builds them once and
    passes them at every step, so no forward reads the mask's content from the device."""
    T = valid.shape[1]
    eye = torch.eye(T, dtype=torch.bool, device=valid.device)
    return (valid.bool()[:, None, :] | eye)[:, None], _default_positions(valid)


def block_visibility(q_pos: torch.Tensor, k_pos: torch.Tensor, block_size: int) -> torch.Tensor:
    """Block-causal rule: `[B, Q]`, `[B, K]` -> `[B, Q, K]` bool, key block <= query block."""
    return (k_pos // block_size)[:, None, :] <= (q_pos // block_size)[:, :, None]


def build_attention_context(
    *,
    batch_size: int,
    query_len: int,
    device: torch.device,
    head_dim: int,
    rope_theta: float,
    block_size: int | None,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    past_key_values: DiffusionCache | None = None,
    use_cache: bool = False,
    replace_position: int | None = None,
) -> AttentionContext:
    """Resolve positions, key validity and the attention mask for a forward call.

    `attention_mask` is either a 2-D padding mask over the new tokens `[B, Q]` or over all keys
    `[B, S+Q]` (S cached), or an explicit 4-D mask `[B, 1, Q, K]` used as-is.
    `block_size=None` means bidirectional attention (LLaDA, Dream).
    """
    B, Q = batch_size, query_len
    cache = past_key_values
    if cache is None and (use_cache or replace_position is not None):
        if replace_position is not None:
            raise ValueError("replace_position needs past_key_values covering the whole sequence")
        cache = DiffusionCache()
    S = cache.get_seq_length() if cache is not None else 0
    explicit_4d = attention_mask is not None and attention_mask.dim() == 4

    # --- validity of the new tokens and of all keys --------------------------------------
    if attention_mask is not None and attention_mask.dim() == 2:
        mask2d = attention_mask.to(device=device, dtype=torch.bool)
        if replace_position is not None:
            if mask2d.shape[1] != S:
                raise ValueError(f"attention_mask has width {mask2d.shape[1]}; expected the cache length {S}")
            new_valid = mask2d[:, replace_position : replace_position + Q]
        elif mask2d.shape[1] == S + Q:
            new_valid = mask2d[:, S:]
        elif mask2d.shape[1] == Q:
            new_valid = mask2d
        else:
            raise ValueError(
                f"attention_mask has width {mask2d.shape[1]}; expected {Q} (new tokens) or {S + Q} (cache + new)"
            )
    elif attention_mask is not None and not explicit_4d:
        raise ValueError(
            f"attention_mask must be 2-D [B, L] or 4-D [B, 1, Q, K], got shape {tuple(attention_mask.shape)}"
        )
    elif replace_position is not None:
        new_valid = cache.valid[:, replace_position : replace_position + Q]
    else:
        new_valid = torch.ones(B, Q, dtype=torch.bool, device=device)

    if position_ids is None:
        if replace_position is not None:
            position_ids = cache.positions[:, replace_position : replace_position + Q]
        elif S > 0:
            last = torch.where(cache.valid, cache.positions, torch.full_like(cache.positions, -1)).amax(-1)
            position_ids = _default_positions(new_valid, (last + 1)[:, None])
        else:
            position_ids = _default_positions(new_valid)
    position_ids = position_ids.to(device)

    if replace_position is not None:
        k_pos, k_valid = cache.positions, cache.valid.clone()
        k_valid[:, replace_position : replace_position + Q] = new_valid
        own = torch.arange(replace_position, replace_position + Q, device=device)
    elif S > 0:
        k_pos = torch.cat([cache.positions, position_ids], dim=1)
        k_valid = torch.cat([cache.valid, new_valid], dim=1)
        own = torch.arange(S, S + Q, device=device)
    else:
        k_pos, k_valid = position_ids, new_valid
        own = torch.arange(Q, device=device)

    # every key is valid, known on the host (no device read): no mask given and none cached
    no_padding = attention_mask is None and (cache is None or S == 0 or not cache.padded)
    if cache is not None and use_cache and replace_position is None:
        cache.positions, cache.valid = k_pos, k_valid
        cache.padded = (S > 0 and cache.padded) or attention_mask is not None

    # --- the mask ---------------------------------------------------------------------------
    if explicit_4d:
        mask = attention_mask
    elif block_size is None and (no_padding or bool(k_valid.all())):
        # everything visible: let SDPA take its fastest path (the device read only when a padding
        # mask was given: a decode loop passes none for an unpadded batch, so its steps never sync)
        mask = None
    else:
        visible = k_valid[:, None, :].expand(B, Q, k_valid.shape[1])  # [B, Q, K]
        if block_size is not None:
            visible = visible & block_visibility(position_ids, k_pos, block_size)
        # a query always sees itself: padded queries then give finite (ignored) outputs
        visible = visible.clone()
        visible[:, torch.arange(Q, device=device), own] = True
        mask = visible[:, None]  # [B, 1, Q, K]

    cos, sin = rotary_cos_sin(position_ids, head_dim, rope_theta)
    return AttentionContext(
        cos=cos, sin=sin, mask=mask, cache=cache, store=use_cache, replace_position=replace_position
    )


def attend(
    layer_idx: int,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    ctx: AttentionContext,
) -> torch.Tensor:
    """Rotary + cache + SDPA. q `[B, H, Q, D]`, k/v `[B, Hkv, Q, D]` -> `[B, Q, H*D]`."""
    q = apply_rotary(q, ctx.cos, ctx.sin)
    k = apply_rotary(k, ctx.cos, ctx.sin)
    if ctx.cache is not None:
        k, v = ctx.cache.update(layer_idx, k, v, ctx.store, ctx.replace_position)  # [B, Hkv, K, D]
    mask = ctx.mask
    if mask is not None and mask.dtype != torch.bool:
        mask = mask.to(q.dtype)
    # GQA: SDPA repeats the Hkv heads itself; bidirectional, so never is_causal
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=k.shape[1] != q.shape[1])
    B, H, Q, D = out.shape
    return out.transpose(1, 2).reshape(B, Q, H * D)  # [B, H, Q, D] -> [B, Q, H*D]


def run_decoder(
    blocks: nn.ModuleList, norm: nn.Module, x: torch.Tensor, ctx: AttentionContext
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run the decoder blocks and the final norm. Returns the normed hidden states `[B, Q, d]`
    and every block's input plus the final output (for `output_hidden_states`)."""
    hidden = []
    for block in blocks:
        hidden.append(x)
        x = block(x, ctx)
    x = norm(x)
    hidden.append(x)
    return x, hidden


__all__ = [
    "AttentionContext",
    "DiffusionCache",
    "RMSNorm",
    "apply_rotary",
    "attend",
    "block_visibility",
    "build_attention_context",
    "full_attention_mask",
    "rotary_cos_sin",
    "run_decoder",
]
