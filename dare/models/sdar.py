"""SDAR (JetLM/SDAR-1.7B/4B/8B-Chat): a block-diffusion LM in the Qwen3 layout (no biases, per-head
q_norm / k_norm before RoPE). Attention is **block-causal**: a token sees every token of its own
block and of earlier blocks (block = position // `block_size`, 4 in the releases), never a later
block. No logits shift.

Weight-compatible with the released checkpoints; `model_type` "sdar". Decoding runs block by block
with the KV cache (`use_cache=True` commits a block, `use_cache=False` reads the cache without
storing, like upstream's `store_kv`). Training passes the explicit `[x_t ; x_0]` mask.
Reference: Cheng et al., "SDAR" (arXiv 2510.06303); JetAstra/SDAR.
"""

from __future__ import annotations

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from dare.models.layers import DiffusionCache, RMSNorm, build_attention_context, run_decoder
from dare.models.qwen_layers import QwenDecoderLayer
from dare.models.spec import DiffusionSpec, spec_from_config


@strict
class SDARConfig(PreTrainedConfig):
    """Qwen3-style config plus `block_size` and `mask_token_id`; defaults reproduce SDAR-8B-Chat."""

    model_type = "sdar"
    keys_to_ignore_at_inference = ["past_key_values"]

    vocab_size: int = 151936
    hidden_size: int = 4096
    intermediate_size: int = 12288
    num_hidden_layers: int = 36
    num_attention_heads: int = 32
    num_key_value_heads: int | None = 8
    head_dim: int = 128
    hidden_act: str = "silu"
    max_position_embeddings: int = 32768
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    use_cache: bool = False
    tie_word_embeddings: bool = False
    rope_theta: int | float = 1000000.0
    rope_scaling: dict | None = None
    attention_bias: bool = False
    use_sliding_window: bool = False
    sliding_window: int | None = None
    max_window_layers: int | None = 28
    attention_dropout: float | int = 0.0
    block_size: int = 4
    mask_token_id: int | None = 151669
    pad_token_id: int | None = 151643
    bos_token_id: int | None = 151643
    eos_token_id: int | list[int] | None = 151643

    def __post_init__(self, **kwargs):
        # attention always runs through dare.models.layers.attend (SDPA); a checkpoint's backend
        # choice (SDAR ships "flex_attention", Dream "eager") is accepted and ignored
        kwargs.pop("attn_implementation", None)
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        super().__post_init__(**kwargs)

    def validate_architecture(self) -> None:
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"SDARConfig: num_attention_heads={self.num_attention_heads} must divide by "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        if self.block_size < 1:
            raise ValueError(f"SDARConfig: block_size must be >= 1, got {self.block_size}")
        if self.attention_bias or self.hidden_act != "silu" or self.rope_scaling is not None or self.use_sliding_window:
            raise ValueError(
                "SDARConfig: only attention_bias=False, hidden_act='silu', rope_scaling=None and "
                f"use_sliding_window=False are supported (got {self.attention_bias!r}, {self.hidden_act!r}, "
                f"{self.rope_scaling!r}, {self.use_sliding_window!r})"
            )

    def diffusion_spec(self) -> DiffusionSpec:
        return spec_from_config(self, shift_logits=False, attention="block", block_size=self.block_size)


def sdar_1_7b() -> SDARConfig:
    return SDARConfig(hidden_size=2048, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                      intermediate_size=6144)  # fmt: skip


def sdar_4b() -> SDARConfig:
    return SDARConfig(hidden_size=2560, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
                      intermediate_size=9728)  # fmt: skip


def sdar_8b() -> SDARConfig:
    return SDARConfig()


def sdar_tiny(vocab_size: int = 64, **overrides) -> SDARConfig:
    """A ~0.35M-parameter SDAR (head_dim 32, GQA 4/2, block_size 4) for CPU tests."""
    fields = dict(
        hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, max_position_embeddings=512, vocab_size=vocab_size,
        rope_theta=10000.0, block_size=4, mask_token_id=vocab_size - 1, eos_token_id=vocab_size - 2,
        pad_token_id=vocab_size - 2, bos_token_id=vocab_size - 2, max_window_layers=2,
    )  # fmt: skip
    fields.update(overrides)
    return SDARConfig(**fields)


class SDARPreTrainedModel(PreTrainedModel):
    config_class = SDARConfig
    config: SDARConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["QwenDecoderLayer"]
    _supports_sdpa = True

    def diffusion_spec(self) -> DiffusionSpec:
        return self.config.diffusion_spec()


class SDARModel(SDARPreTrainedModel):
    """embed_tokens -> block-causal Qwen3 layers -> norm; returns hidden states."""

    def __init__(self, config: SDARConfig) -> None:
        super().__init__(config)
        config.validate_architecture()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            QwenDecoderLayer(config, i, qkv_bias=False, qk_norm=True) for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: DiffusionCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool = False,
        replace_position: int | None = None,
        output_hidden_states: bool = False,
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds  # [B, Q, d]
        ctx = build_attention_context(
            batch_size=x.shape[0], query_len=x.shape[1], device=x.device,
            head_dim=self.config.head_dim, rope_theta=self.config.rope_theta,
            block_size=self.config.block_size, attention_mask=attention_mask, position_ids=position_ids,
            past_key_values=past_key_values, use_cache=use_cache, replace_position=replace_position,
        )  # fmt: skip
        x, hidden = run_decoder(self.layers, self.norm, x, ctx)
        return BaseModelOutputWithPast(
            last_hidden_state=x,
            past_key_values=ctx.cache,
            hidden_states=tuple(hidden) if output_hidden_states else None,
        )


class SDARForCausalLM(SDARPreTrainedModel):
    """The released top-level class (`architectures: ["SDARForCausalLM"]`)."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: SDARConfig) -> None:
        super().__init__(config)
        self.model = SDARModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: DiffusionCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool = False,
        replace_position: int | None = None,
        output_hidden_states: bool = False,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        out = self.model(
            input_ids, attention_mask, position_ids, past_key_values, inputs_embeds, use_cache, replace_position,
            output_hidden_states,
        )  # fmt: skip
        return CausalLMOutputWithPast(
            logits=self.lm_head(out.last_hidden_state),  # [B, Q, V]
            past_key_values=out.past_key_values,
            hidden_states=out.hidden_states,
        )


__all__ = [
    "SDARConfig",
    "SDARForCausalLM",
    "SDARModel",
    "SDARPreTrainedModel",
    "sdar_1_7b",
    "sdar_4b",
    "sdar_8b",
    "sdar_tiny",
]
