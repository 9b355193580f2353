"""The Qwen2 / Qwen3 layout shared by Dream (Qwen2.5 layout: q/k/v biases) and SDAR (Qwen3
layout: no biases, per-head q_norm / k_norm before RoPE). Module names match the released state
dicts: `model.embed_tokens`, `model.layers.{i}.self_attn.{q,k,v,o}_proj`, `...q_norm`,
`model.layers.{i}.mlp.{gate,up,down}_proj`, `input_layernorm`, `post_attention_layernorm`,
`model.norm`, `lm_head`.

Part of the shared model kernel (`dare.models.modeling`, docs/models.md): the family files hold
their release's sizes and ids, the class names, and what differs (the layout flags `qkv_bias` /
`qk_norm`, logits shift, attention kind); this file holds what they share: the config fields
(`QwenDiffusionConfig`), the layers, and the two model bodies `QwenBackbone` (`model.*`) and
`QwenLM` (`.model` + `lm_head`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import PreTrainedConfig
from transformers.modeling_layers import GradientCheckpointingLayer

from dare.models.layers import AttentionContext, RMSNorm, attend
from dare.models.modeling import DiffusionBackbone, DiffusionLM


@strict
class QwenDiffusionConfig(PreTrainedConfig):
    """The config.json fields of the Qwen2 / Qwen3 layout that Dream and SDAR share, under the
    names their releases write, with the defaults both releases use. A family config subclasses it
    and declares the sizes and the mask id of its release (defaults reproduce the released
    checkpoint) plus its own fields."""

    keys_to_ignore_at_inference = ["past_key_values"]

    hidden_act: str = "silu"
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    use_cache: bool = False
    tie_word_embeddings: bool = False
    rope_theta: int | float = 1000000.0
    rope_scaling: dict | None = None
    use_sliding_window: bool = False
    sliding_window: int | None = None
    max_window_layers: int | None = 28
    attention_dropout: float | int = 0.0
    pad_token_id: int | None = 151643  # <|endoftext|>, the Qwen2 tokenizer's
    bos_token_id: int | None = 151643
    eos_token_id: int | list[int] | None = 151643

    def __post_init__(self, **kwargs):
        # attention always runs through dare.models.layers.attend (SDPA); a checkpoint's backend
        # choice (SDAR ships "flex_attention", Dream "eager") is accepted and ignored
        kwargs.pop("attn_implementation", None)
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        super().__post_init__(**kwargs)

    @classmethod
    def tiny(cls, vocab_size: int = 64, **overrides) -> QwenDiffusionConfig:
        """A ~0.35M-parameter model (hidden 128, 2 layers, GQA 4/2 heads) for CPU tests; token ids
        at the end of the vocab (mask = V-1, eos = pad = bos = V-2); overrides win."""
        defaults = dict(
            hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, vocab_size=vocab_size, rope_theta=10000.0,
            mask_token_id=vocab_size - 1, eos_token_id=vocab_size - 2, pad_token_id=vocab_size - 2,
            bos_token_id=vocab_size - 2, max_window_layers=2,
        )  # fmt: skip
        return cls(**(defaults | overrides))


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
        self.mlp = self.build_mlp(config, layer_idx)

    def build_mlp(self, config, layer_idx: int) -> nn.Module:
        """The feed-forward of layer `layer_idx` (an MoE layout returns its expert block)."""
        return QwenMLP(config.hidden_size, config.intermediate_size)

    def forward(self, x: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), ctx)
        return x + self.mlp(self.post_attention_layernorm(x))


class QwenBackbone(DiffusionBackbone):
    """embed_tokens -> QwenDecoderLayer x N -> norm. The family sets the layout: `qkv_bias`
    (Qwen2: True) and `qk_norm` (Qwen3: True)."""

    qkv_bias: bool
    qk_norm: bool
    layer_class: type[QwenDecoderLayer] = QwenDecoderLayer
    _no_split_modules = ["QwenDecoderLayer"]

    def __init__(self, config: QwenDiffusionConfig) -> None:
        super().__init__(config)
        config.validate_architecture()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            self.layer_class(config, i, qkv_bias=self.qkv_bias, qk_norm=self.qk_norm)
            for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def decoder(self) -> tuple[nn.ModuleList, nn.Module]:
        return self.layers, self.norm


class QwenLM(DiffusionLM):
    """`.model` (the family's `backbone_class`) + `lm_head`, as the Qwen-layout releases."""

    backbone_class: type[nn.Module]
    _no_split_modules = ["QwenDecoderLayer"]
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: QwenDiffusionConfig) -> None:
        super().__init__(config)
        self.model = self.backbone_class(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head


__all__ = [
    "QwenAttention",
    "QwenBackbone",
    "QwenDecoderLayer",
    "QwenDiffusionConfig",
    "QwenLM",
    "QwenMLP",
]
