"""LLaDA2.0 / LLaDA2.1 (inclusionAI/LLaDA2.0-mini, LLaDA2.1-mini): block-diffusion LMs on a
Bailing (Ling 2.0) MoE body.

The two releases share config.json and the model body (their modeling files differ only in
`generate`: 2.1 adds token editing, argmax at temperature 0, post-steps and its EOS stop), so
one family serves both; what differs is a decoding choice, not a model one.

The body: fused `attention.query_key_value` (heads split [Q, K, V]), per-head `query_layernorm` /
`key_layernorm` before RoPE, **partial RoPE** (the first `head_dim * partial_rotary_factor` dims
of each head), `attention.dense`; dense SwiGLU `mlp` in the first `first_k_dense_replace` layers,
then `dare.models.moe.SparseMoeBlock` with the `sigmoid_group_topk` router (sigmoid scores,
`expert_bias` for selection, group-limited top-k, `routed_scaling_factor`) and `shared_experts`.
Attention is **block-causal** with `block_size` (32, the released `generate`'s block length and
dFactory's training block); no logits shift. The released forward builds no mask of its own that
a caller can rely on (a 2-D mask gives causal attention on eager and bidirectional on SDPA), so
dare applies the block rule by default and takes an explicit 4-D mask as given.

Weight-compatible with the releases (`model.word_embeddings`, `model.layers.{i}.attention.*`,
`mlp.gate.{weight,expert_bias}`, `mlp.experts.{e}.*`, `mlp.shared_experts.*`, `model.norm`,
`lm_head`); `model_type` "llada2_moe". The released config.json has no `mask_token_id`, `eos_token_id`
or `block_size`: the defaults are the release tokenizer's `<|mask|>` 156895 and `<|endoftext|>`
156892, and 32. The forward returns `MoELMOutput` (`aux_loss`, `z_loss`, `router_stats`); the
release itself trains its router with the expert bias, not with an aux loss.
"""

from __future__ import annotations

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, PreTrainedConfig
from transformers.modeling_layers import GradientCheckpointingLayer

from dare.models.family import ModelFamily, register_family
from dare.models.layers import AttentionContext, RMSNorm, attend
from dare.models.modeling import DiffusionBackbone
from dare.models.moe import (
    GroupLimitedSigmoidRouter,
    MoEOutputs,
    SparseMoeBlock,
    SwiGLUExperts,
    check_moe_routing,
    family_router,
    feed_forward,
)
from dare.models.qwen_layers import QwenLM, QwenMLP
from dare.models.spec import DiffusionSpec, spec_from_config


@strict
class LLaDA2MoeConfig(PreTrainedConfig):
    """The released config.json fields, under their names; defaults reproduce LLaDA2.0/2.1-mini."""

    model_type = "llada2_moe"
    keys_to_ignore_at_inference = ["past_key_values"]

    vocab_size: int = 157184
    hidden_size: int = 2048
    intermediate_size: int = 5120
    num_hidden_layers: int = 20
    num_attention_heads: int = 16
    num_key_value_heads: int = 4
    head_dim: int = 128
    hidden_act: str = "silu"
    max_position_embeddings: int = 32768
    rms_norm_eps: float = 1e-6
    rope_theta: int | float = 600000.0
    rope_scaling: dict | None = None
    partial_rotary_factor: float = 0.5
    rotary_dim: int | None = 64
    use_qkv_bias: bool = False
    use_bias: bool = False
    use_qk_norm: bool = True
    use_rmsnorm: bool = True
    norm_head: bool = False
    norm_softmax: bool = False
    using_split_qkv_in_self_attention: bool = False
    num_experts: int = 256
    num_shared_experts: int | None = 1
    num_experts_per_tok: int = 8
    moe_intermediate_size: int = 512
    first_k_dense_replace: int = 1
    n_group: int = 8
    topk_group: int = 4
    routed_scaling_factor: float = 2.5
    score_function: str = "sigmoid"
    moe_router_enable_expert_bias: bool = True
    norm_topk_prob: bool = True
    router_dtype: str = "fp32"
    output_router_logits: bool = False
    embedding_dropout: float = 0.0
    attention_dropout: float = 0.0
    output_dropout: float = 0.0
    initializer_range: float = 0.02
    max_window_layers: int = 28
    sliding_window: int | None = 4096
    use_sliding_window: bool = False
    tie_word_embeddings: bool = False
    use_cache: bool = False
    pad_token_id: int | None = 156892  # <|endoftext|>
    eos_token_id: int | list[int] | None = 156892
    bos_token_id: int | None = None
    mask_token_id: int | None = 156895  # <|mask|>
    block_size: int = 32
    # dare's training-time option, not in the releases: "expert_choice" (EC-DLM) replaces the router
    moe_routing: str = "token_choice"

    def __post_init__(self, **kwargs):
        kwargs.pop("attn_implementation", None)  # attention always runs through layers.attend (SDPA)
        super().__post_init__(**kwargs)

    @property
    def rope_dims(self) -> int:
        """Head dims RoPE rotates (the released attention's `rope_dim`)."""
        return int(self.head_dim * self.partial_rotary_factor)

    def validate_architecture(self) -> None:
        """Refuse what the released forward does not compute (it ignores these fields and always
        runs sigmoid routing, qk-norm, RMSNorm, plain RoPE, full-width SwiGLU heads)."""
        fixed = {
            "score_function": (self.score_function, "sigmoid"), "use_qk_norm": (self.use_qk_norm, True),
            "use_rmsnorm": (self.use_rmsnorm, True), "norm_head": (self.norm_head, False),
            "hidden_act": (self.hidden_act, "silu"), "rope_scaling": (self.rope_scaling, None),
            "use_sliding_window": (self.use_sliding_window, False),
        }  # fmt: skip
        bad = {k: v for k, (v, ok) in fixed.items() if v != ok}
        if bad:
            raise ValueError(f"LLaDA2MoeConfig: unsupported values {bad} (the released checkpoints use {fixed})")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"LLaDA2MoeConfig: num_attention_heads={self.num_attention_heads} must divide by "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        if self.rope_dims % 2 or not 0 < self.rope_dims <= self.head_dim:
            raise ValueError(
                f"LLaDA2MoeConfig: head_dim={self.head_dim} * partial_rotary_factor={self.partial_rotary_factor} "
                "must be an even number of dims in (0, head_dim]"
            )
        if self.rotary_dim is not None and self.rotary_dim != self.rope_dims:
            raise ValueError(
                f"LLaDA2MoeConfig: rotary_dim={self.rotary_dim} disagrees with head_dim * partial_rotary_factor = "
                f"{self.rope_dims} (the released forward uses the latter)"
            )
        if self.block_size < 1:
            raise ValueError(f"LLaDA2MoeConfig: block_size must be >= 1, got {self.block_size}")
        check_moe_routing(self)

    def is_moe_layer(self, layer_idx: int) -> bool:
        return self.num_experts > 0 and layer_idx >= self.first_k_dense_replace

    def diffusion_spec(self) -> DiffusionSpec:
        return spec_from_config(self, shift_logits=False, attention="block", block_size=self.block_size)


def llada2_mini() -> LLaDA2MoeConfig:
    """LLaDA2.0-mini / LLaDA2.1-mini sizes (16B total, 1.4B active)."""
    return LLaDA2MoeConfig()


def llada2_tiny(vocab_size: int = 64, **overrides) -> LLaDA2MoeConfig:
    """A tiny LLaDA2 for CPU tests: hidden 64, 2 layers (layer 0 dense), GQA 4/2 heads of 16 dims
    (8 rotated), 8 experts of width 32 in 4 groups (2 kept), top-2, one shared expert, block 4;
    token ids at the end of the vocab (mask = V-1, eos = pad = V-2)."""
    defaults = dict(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, rotary_dim=8, max_position_embeddings=512, rope_theta=10000.0,
        num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, n_group=4, topk_group=2, block_size=4,
        mask_token_id=vocab_size - 1, eos_token_id=vocab_size - 2, pad_token_id=vocab_size - 2,
    )  # fmt: skip
    return LLaDA2MoeConfig(**(defaults | overrides))


class LLaDA2Attention(nn.Module):
    """query_key_value (fused, heads [Q | K | V]) -> per-head RMSNorm on q, k -> partial RoPE ->
    SDPA -> dense."""

    def __init__(self, config: LLaDA2MoeConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads, self.head_dim = (
            config.num_attention_heads, config.num_key_value_heads, config.head_dim,
        )  # fmt: skip
        width = (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
        self.query_key_value = nn.Linear(config.hidden_size, width, bias=config.use_qkv_bias)
        self.query_layernorm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.key_layernorm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.dense = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=config.use_bias)

    def forward(self, x: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        B, Q, _ = x.shape
        qkv = self.query_key_value(x).view(B, Q, self.num_heads + 2 * self.num_kv_heads, self.head_dim)
        q, k, v = qkv.split([self.num_heads, self.num_kv_heads, self.num_kv_heads], dim=2)  # [B, Q, h, D]
        q, k = self.query_layernorm(q), self.key_layernorm(k)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, h, Q, D]
        return self.dense(attend(self.layer_idx, q, k, v, ctx))


class LLaDA2DecoderLayer(GradientCheckpointingLayer):
    """x + attention(input_layernorm(x)), then + mlp(post_attention_layernorm(.)): dense SwiGLU
    or the MoE block (routed + shared experts)."""

    def __init__(self, config: LLaDA2MoeConfig, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attention = LLaDA2Attention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = self.build_mlp(config, layer_idx)

    @staticmethod
    def build_mlp(config: LLaDA2MoeConfig, layer_idx: int) -> nn.Module:
        if not config.is_moe_layer(layer_idx):
            return QwenMLP(config.hidden_size, config.intermediate_size)
        router = family_router(config, GroupLimitedSigmoidRouter(
            config.hidden_size, config.num_experts, config.num_experts_per_tok, n_group=config.n_group,
            topk_group=config.topk_group, routed_scaling_factor=config.routed_scaling_factor,
            fp32=config.router_dtype == "fp32",
        ))  # fmt: skip
        experts = SwiGLUExperts(config.num_experts, config.hidden_size, config.moe_intermediate_size)
        shared = None
        if config.num_shared_experts:
            shared = QwenMLP(config.hidden_size, config.moe_intermediate_size * config.num_shared_experts)
        return SparseMoeBlock(router, experts, shared)

    def forward(self, x: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        x = x + self.attention(self.input_layernorm(x), ctx)
        return x + feed_forward(self.mlp, self.post_attention_layernorm(x), ctx)


class LLaDA2MoeModel(DiffusionBackbone):
    """word_embeddings -> block-causal LLaDA2 layers -> norm (`AutoModel` of the releases)."""

    config_class = LLaDA2MoeConfig
    # FSDP wraps whole decoder layers, so a layer's experts, router and attention stay together
    _no_split_modules = ["LLaDA2DecoderLayer"]

    def __init__(self, config: LLaDA2MoeConfig) -> None:
        super().__init__(config)
        config.validate_architecture()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(LLaDA2DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.word_embeddings = value

    def decoder(self) -> tuple[nn.ModuleList, nn.Module]:
        return self.layers, self.norm

    def attention_block_size(self) -> int:
        return self.config.block_size

    def rotary_dim(self) -> int:
        return self.config.rope_dims


class LLaDA2MoeModelLM(MoEOutputs, QwenLM):
    """The released top-level class (`architectures: ["LLaDA2MoeModelLM"]`): `.model` + `lm_head`."""

    config_class = LLaDA2MoeConfig
    backbone_class = LLaDA2MoeModel
    _no_split_modules = ["LLaDA2DecoderLayer"]
    _tied_weights_keys = {"lm_head.weight": "model.word_embeddings.weight"}


register_family(
    ModelFamily(
        "llada2_moe", LLaDA2MoeModelLM, llada2_tiny,
        {AutoModel: LLaDA2MoeModel, AutoModelForCausalLM: LLaDA2MoeModelLM},
    )
)  # fmt: skip

__all__ = [
    "LLaDA2Attention",
    "LLaDA2DecoderLayer",
    "LLaDA2MoeConfig",
    "LLaDA2MoeModel",
    "LLaDA2MoeModelLM",
    "llada2_mini",
    "llada2_tiny",
]
