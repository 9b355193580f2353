"""The Qwen2 / Qwen3 decoder stack shared by Dream (Qwen2.5 layout: q/k/v biases) and SDAR (Qwen3
layout: no biases, per-head q_norm / k_norm before RoPE). Module names match the released state
dicts: `model.embed_tokens`, `model.layers.{i}.self_attn.{q,k,v,o}_proj`, `...q_norm`,
`model.layers.{i}.mlp.{gate,up,down}_proj`, `input_layernorm`, `post_attention_layernorm`,
`model.norm`, `lm_head`.

The family files hold the configs, the `PreTrainedModel` classes and what differs (logits shift,
attention kind); this file holds the math they share.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from dare.models.layers import AttentionContext, RMSNorm, attend


class QwenAttention(nn.Module):
    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        layer_idx: int,
        qkv_bias: bool,
        qk_norm: bool,
        eps: float,
    ) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.q_proj = nn.Linear(hidden_size, num_heads * head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(num_heads * head_dim, hidden_size, bias=False)
        if qk_norm:  # Qwen3: RMSNorm over each head's dim, before RoPE
            self.q_norm = RMSNorm(head_dim, eps)
            self.k_norm = RMSNorm(head_dim, eps)
        self.qk_norm = qk_norm

    def forward(self, x: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        B, Q, _ = x.shape
        q = self.q_proj(x).view(B, Q, self.num_heads, self.head_dim)  # [B, Q, H, D]
        k = self.k_proj(x).view(B, Q, self.num_kv_heads, self.head_dim)  # [B, Q, Hkv, D]
        v = self.v_proj(x).view(B, Q, self.num_kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H(kv), Q, D]
        return self.o_proj(attend(self.layer_idx, q, k, v, ctx))


class QwenMLP(nn.Module):
    """down(silu(gate(x)) * up(x)), no biases."""

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class QwenDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config, layer_idx: int, qkv_bias: bool, qk_norm: bool) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = QwenAttention(
            config.hidden_size,
            config.num_attention_heads,
            config.num_key_value_heads,
            config.head_dim,
            layer_idx,
            qkv_bias=qkv_bias,
            qk_norm=qk_norm,
            eps=config.rms_norm_eps,
        )
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = QwenMLP(config.hidden_size, config.intermediate_size)

    def forward(self, x: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), ctx)
        return x + self.mlp(self.post_attention_layernorm(x))


__all__ = ["QwenAttention", "QwenDecoderLayer", "QwenMLP"]
